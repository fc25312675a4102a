"""Synthetic brain MRI volumes with implanted tumours, written as NIfTI and as DICOM MR series.

Each volume starts from the MNI152 T1 template that nilearn ships inside its package (no
download), then gets a random smooth deformation, 0 to 2 irregular tumours inside the brain,
a multiplicative bias field and Rician noise.

Multi-sequence volumes (``n_sequences=4``, as MSD Task01 / BraTS: :data:`SEQUENCES` FLAIR, T1w, t1gd,
T2w, written as one 4D NIfTI ``x, y, z, sequence``): the single-sequence volume is the t1gd sequence (every
tumour enhances); T1w is the same anatomy without any tumour; FLAIR and T2w get their own contrast (from the
template's intensities) and show each tumour with probability :data:`SHOWN_PROBABILITY`, independently. A
model that reads only the first sequence (FLAIR) therefore cannot find every tumour. The extra sequences come
from random streams of their own, so the single-sequence data set stays byte for byte what it was.

Conventions:

* Voxel boxes are ``[i0, j0, k0, i1, j1, k1]`` in indices of the NIfTI array, minimum inclusive
  and maximum exclusive: tumour ``k`` lies in ``mask[i0:i1, j0:j1, k0:k1] == k``.
* World boxes are the voxel-box corners mapped through the NIfTI affine (RAS, millimetres),
  then sorted per axis: the same as MONAI's ``AffineBoxToWorldCoordinated`` applied to the
  voxel box. A voxel index is the centre of that voxel.
* The DICOM series stores the same integers as the NIfTI file with the same rescale slope.
  Its in-plane axes are flipped where needed so that the rows run towards the patient's
  posterior and the columns towards the patient's left (the usual axial display); the headers
  (LPS) describe exactly where every pixel is.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage
from scipy import ndimage as ndi

from medvision.demo._common import (
    INSTITUTION,
    MANUFACTURER,
    age_on,
    demo_uid,
    dicom_date,
    format_ds,
    random_date,
    random_patient,
    random_time,
    rng_for,
    smooth_field,
    soft_step,
)

#: Rescale slopes to choose from: powers of two, exact in float32 (NIfTI) and in DS (DICOM).
SLOPES = (0.0625, 0.125, 0.25, 0.5, 1.0)
#: How many volumes have 0, 1 or 2 tumours.
N_TUMOUR_WEIGHTS = (0.25, 0.45, 0.30)
#: Sequence names of a multi-sequence volume, in channel order (MSD Task01).
SEQUENCES = ("FLAIR", "T1w", "t1gd", "T2w")
#: The sequence that shows every tumour (the single-sequence volume).
ENHANCING = "t1gd"
#: Probability that a tumour shows in FLAIR, and (independently) in T2w.
SHOWN_PROBABILITY = {"FLAIR": 0.5, "T2w": 0.5}
#: LPS = diag(-1, -1, 1) @ RAS.
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class Template:
    """The MNI152 T1 template (2 mm) with its brain mask.

    Attributes:
        image: Template intensities (float32, about 0..1).
        mask: Brain mask.
        depth: Distance of every brain voxel to the outside of the mask, in voxels.
        affine: Voxel to RAS millimetres.
    """

    image: np.ndarray
    mask: np.ndarray
    depth: np.ndarray
    affine: np.ndarray


@lru_cache(maxsize=1)
def load_template() -> Template:
    """Load the MNI152 T1 template and brain mask at 2 mm from nilearn's package data.

    ``nilearn.datasets.load_mni152_template`` and ``load_mni152_brain_mask`` read files that
    ship inside the nilearn wheel (``nilearn/datasets/data``); nothing is downloaded.
    """
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

    image = load_mni152_template(resolution=2)
    mask_img = load_mni152_brain_mask(resolution=2)
    if not np.allclose(image.affine, mask_img.affine) or image.shape != mask_img.shape:
        raise RuntimeError("nilearn's MNI152 template and brain mask do not share a grid")
    data = np.asarray(image.get_fdata(dtype=np.float32))
    mask = np.asarray(mask_img.get_fdata(dtype=np.float32)) > 0
    depth = ndi.distance_transform_edt(mask).astype(np.float32)
    for array in (data, mask, depth):
        array.setflags(write=False)
    return Template(data, mask, depth, np.array(image.affine, dtype=np.float64))


@dataclass
class Tumour:
    """One implanted tumour.

    Attributes:
        index: Value of the tumour in the mask (1-based).
        kind: ``"solid"`` (hyper-intense) or ``"ring"`` (bright rim, dark core).
        box_voxel: ``[i0, j0, k0, i1, j1, k1]``, max exclusive.
        box_world_mm: ``[x0, y0, z0, x1, y1, z1]`` in RAS mm (see the module docstring).
        centre_world_mm: Centroid of the tumour voxels, RAS mm.
        n_voxels: Number of mask voxels.
        volume_mm3: ``n_voxels`` times the voxel volume.
        diameter_mm: Diameter of the sphere with the same volume.
    """

    index: int
    kind: str
    box_voxel: list[int]
    box_world_mm: list[float]
    centre_world_mm: list[float]
    n_voxels: int
    volume_mm3: float
    diameter_mm: float
    #: Multi-sequence volumes: the sequences in which the tumour shows (``None`` for a single sequence).
    shown_in: list[str] | None = None

    def as_dict(self) -> dict:
        """JSON-ready fields."""
        extra = {} if self.shown_in is None else {"shown_in": list(self.shown_in)}
        return {
            "index": self.index,
            "kind": self.kind,
            "box_voxel": self.box_voxel,
            "box_world_mm": self.box_world_mm,
            "centre_world_mm": self.centre_world_mm,
            "n_voxels": self.n_voxels,
            "volume_mm3": self.volume_mm3,
            "diameter_mm": self.diameter_mm,
            **extra,
        }


@dataclass
class MriCase:
    """One synthetic brain volume.

    Attributes:
        index: 1-based volume number.
        stored: Stored integers (int16), shape ``(i, j, k)``; real value = ``stored * slope``. Of a
            multi-sequence volume: its t1gd sequence (what the DICOM series holds).
        sequences: Multi-sequence volumes: all sequences ``(i, j, k, len(SEQUENCES))`` (int16, same slope);
            ``None`` for a single-sequence volume.
        slope: Rescale slope (intercept is 0).
        mask: Tumour instance mask (uint8, 0 background, ``k`` for tumour ``k``).
        affine: Voxel to RAS mm.
    """

    index: int
    seed: int
    stored: np.ndarray
    slope: float
    mask: np.ndarray
    affine: np.ndarray
    tumours: list[Tumour] = field(default_factory=list)
    sequences: np.ndarray | None = None
    patient_id: str = ""
    patient_name: str = ""
    sex: str = "O"
    birth_date: str = ""
    age_years: int = 0
    study_date: str = ""
    study_time: str = ""
    accession_number: str = ""

    @property
    def name(self) -> str:
        """``BRAIN_001`` and so on."""
        return f"BRAIN_{self.index:03d}"


def _rotation(rng: np.random.Generator, max_angle: float) -> np.ndarray:
    """A rotation by up to ``max_angle`` radians about each axis."""
    ax, ay, az = rng.uniform(-max_angle, max_angle, size=3)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rx @ ry @ rz


def _deform(rng: np.random.Generator, template: Template) -> tuple[np.ndarray, np.ndarray]:
    """Warp the template and its brain depth map with a random smooth deformation.

    A small global rotation and scaling plus a coarse random displacement field (interpolated
    smoothly to every voxel), sampled with ``scipy.ndimage.map_coordinates`` (order 1).

    Returns:
        ``(image, depth)`` in the deformed space (float32).
    """
    shape = template.image.shape
    centre = (np.array(shape, dtype=np.float32) - 1) / 2
    grid = np.indices(shape, dtype=np.float32).reshape(3, -1) - centre[:, None]
    matrix = (_rotation(rng, np.deg2rad(6.0)) * rng.uniform(0.94, 1.06, size=3)[None, :]).astype(np.float32)
    coords = matrix @ grid + centre[:, None]
    strength = rng.uniform(1.0, 2.0)  # voxels (2 mm each)
    for axis in range(3):
        coords[axis] += strength * smooth_field(rng, shape, (5, 6, 5)).reshape(-1)
    image = ndi.map_coordinates(template.image, coords, order=1, mode="constant", cval=0.0)
    depth = ndi.map_coordinates(template.depth, coords, order=1, mode="constant", cval=0.0)
    return image.reshape(shape).astype(np.float32), depth.reshape(shape).astype(np.float32)


def _unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _implant(
    rng: np.random.Generator,
    image: np.ndarray,
    depth: np.ndarray,
    affine: np.ndarray,
    n_tumours: int,
    blends: list[tuple[tuple[slice, ...], np.ndarray, np.ndarray]] | None = None,
) -> tuple[np.ndarray, list[Tumour]]:
    """Implant up to ``n_tumours`` irregular ellipsoids inside the brain (in place on ``image``).

    Each tumour has semi-axes of 4 to 15 mm, a random orientation and a surface bumped by a few
    low-frequency waves. It is kept only if it lies wholly inside the brain and at least two
    voxels away from the other tumours, so that every tumour is one connected component.

    Args:
        blends: when given, gets ``(window, weight, texture)`` of every kept tumour (to draw the tumour into
            other sequences); collecting them draws nothing from ``rng``.

    Returns:
        ``(mask, tumours)``.
    """
    shape = image.shape
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
    mask = np.zeros(shape, dtype=np.uint8)
    tumours: list[Tumour] = []
    for _attempt in range(60):
        if len(tumours) == n_tumours:
            break
        base = rng.uniform(4.0, 13.0)
        axes_mm = np.clip(base * rng.uniform(0.75, 1.25, size=3), 4.0, 15.0)
        bump = rng.uniform(0.08, 0.2)
        reach = axes_mm.max() * (1 + bump) / spacing.min()
        candidates = np.flatnonzero(depth.reshape(-1) >= reach + 2.0)
        if candidates.size == 0:
            continue
        centre = np.array(np.unravel_index(int(candidates[rng.integers(candidates.size)]), shape))
        half = int(np.ceil(reach)) + 2
        lo = np.maximum(centre - half, 0)
        hi = np.minimum(centre + half + 1, shape)
        window = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        offsets = [(np.arange(a, b) - c) * s for a, b, c, s in zip(lo, hi, centre, spacing, strict=True)]
        rel = np.stack(np.meshgrid(*offsets, indexing="ij"), axis=-1)  # mm
        rot = _rotation(rng, np.pi)
        local = rel @ rot  # coordinates in the tumour's frame
        q = np.sqrt(((local / axes_mm) ** 2).sum(axis=-1))
        dirs = local / np.maximum(np.linalg.norm(local, axis=-1, keepdims=True), 1e-6)
        waves = np.zeros(q.shape)
        for d, freq, phase in zip(
            _unit_vectors(rng, 3), rng.uniform(2.0, 5.0, 3), rng.uniform(0, 2 * np.pi, 3), strict=True
        ):
            waves += np.cos(freq * (dirs @ d) + phase) / 3.0
        rho = q / (1.0 + bump * waves)
        inside = rho <= 1.0
        labels, n_parts = ndi.label(inside)
        if n_parts > 1:
            sizes = np.bincount(labels.reshape(-1))[1:]
            inside = labels == 1 + int(np.argmax(sizes))
        if inside.sum() < 8 or (depth[window][inside] < 1.0).any():
            continue
        near = ndi.binary_dilation(inside, structure=np.ones((3, 3, 3), bool), iterations=2)
        if (mask[window][near] != 0).any():
            continue

        k = len(tumours) + 1
        weight = np.clip((1.1 - rho) / 0.2, 0.0, 1.0)
        kind = "ring" if rng.random() < 0.4 else "solid"
        texture = 1.0 + 0.05 * rng.standard_normal(q.shape)
        if kind == "solid":
            value = rng.uniform(1.0, 1.45) * texture
        else:
            core_frac = rng.uniform(0.45, 0.7)
            rim, core = rng.uniform(1.15, 1.5), rng.uniform(0.15, 0.35)
            value = (core + (rim - core) * soft_step((rho - core_frac) / 0.08)) * texture
        region = image[window]
        region[...] = (1.0 - weight) * region + weight * value
        mask[window][inside] = k
        if blends is not None:
            blends.append((window, weight, texture))

        idx = np.argwhere(inside) + lo
        vmin, vmax = idx.min(axis=0), idx.max(axis=0) + 1
        corners = np.array([[vmin[0], vmin[1], vmin[2], 1.0], [vmax[0], vmax[1], vmax[2], 1.0]]) @ affine.T
        world = np.concatenate([corners[:, :3].min(axis=0), corners[:, :3].max(axis=0)])
        centroid = affine[:3, :3] @ idx.mean(axis=0) + affine[:3, 3]
        n_vox = int(inside.sum())
        volume = n_vox * voxel_mm3
        tumours.append(
            Tumour(
                index=k,
                kind=kind,
                box_voxel=[int(v) for v in (*vmin, *vmax)],
                box_world_mm=[round(float(v), 3) for v in world],
                centre_world_mm=[round(float(v), 3) for v in centroid],
                n_voxels=n_vox,
                volume_mm3=round(volume, 3),
                diameter_mm=round(float((6.0 * volume / np.pi) ** (1.0 / 3.0)), 3),
            )
        )
    return mask, tumours


def _rician(rng: np.random.Generator, signal: np.ndarray, sigma: float) -> np.ndarray:
    noise = rng.standard_normal((2, *signal.shape), dtype=np.float32) * sigma
    return np.sqrt((signal + noise[0]) ** 2 + noise[1] ** 2)


def _other_sequences(
    seed: int,
    index: int,
    base: np.ndarray,
    blends: list[tuple[tuple[slice, ...], np.ndarray, np.ndarray]],
    tumours: list[Tumour],
    bias: np.ndarray,
) -> dict[str, np.ndarray]:
    """FLAIR, T1w and T2w signal (before quantisation) of a volume whose tumour-free anatomy is ``base``.

    T1w is ``base`` (no tumour shows); FLAIR (grey matter bright, CSF and white matter dark) and T2w (CSF
    bright, white matter dark) are smooth functions of the template's T1 intensities, and each tumour shows in
    them with :data:`SHOWN_PROBABILITY`, drawn into the same voxels with the same blending weights as in t1gd.
    Every draw comes from the stream ``mri-sequences`` of the volume. Records where each tumour shows in
    ``Tumour.shown_in``.
    """
    rng = rng_for(seed, "mri-sequences", index)
    head = np.clip(base / 0.1, 0.0, 1.0)
    contrast = {
        "FLAIR": head * (0.3 + 0.6 * np.exp(-(((base - 0.55) / 0.2) ** 2))),
        "T1w": base.copy(),
        "T2w": head * np.clip(1.15 - base, 0.1, 1.0),
    }
    for t in tumours:
        t.shown_in = [ENHANCING]
    for name in ("FLAIR", "T2w"):
        image = contrast[name]
        for (window, weight, texture), tumour in zip(blends, tumours, strict=True):
            if rng.random() < SHOWN_PROBABILITY[name]:
                region = image[window]
                region[...] = (1.0 - weight) * region + weight * (rng.uniform(1.1, 1.4) * texture)
                tumour.shown_in.append(name)
    for t in tumours:
        t.shown_in = [n for n in SEQUENCES if n in t.shown_in]
    out = {}
    for name in ("FLAIR", "T1w", "T2w"):
        gain = rng.uniform(700.0, 1100.0)
        out[name] = _rician(rng, (contrast[name] * bias * gain).astype(np.float32), rng.uniform(0.012, 0.03) * gain)
    return out


def synth_brain(seed: int, index: int, n_sequences: int = 1) -> MriCase:
    """Make volume ``index`` (1-based) of the data set with seed ``seed``.

    Args:
        seed: Data set seed.
        index: Volume number; each volume has its own streams.
        n_sequences: 1 (a T1 volume with enhancing tumours) or ``len(SEQUENCES)`` (FLAIR, T1w, t1gd, T2w; the
            t1gd sequence is the single-sequence volume, see the module docstring).

    Returns:
        The case (pixels, mask, tumours, synthetic patient).
    """
    if n_sequences not in (1, len(SEQUENCES)):
        raise ValueError(f"n_sequences must be 1 or {len(SEQUENCES)}, got {n_sequences}")
    template = load_template()
    rng = rng_for(seed, "mri-volume", index)
    image, depth = _deform(rng, template)
    base = image.copy() if n_sequences > 1 else None

    affine = template.affine.copy()
    affine[:3, 3] += np.round(rng.uniform(-4.0, 4.0, size=3) * 4) / 4  # exact quarter millimetres

    trng = rng_for(seed, "mri-tumours", index)
    n_tumours = int(trng.choice(3, p=np.array(N_TUMOUR_WEIGHTS)))
    blends: list[tuple[tuple[slice, ...], np.ndarray, np.ndarray]] | None = [] if n_sequences > 1 else None
    mask, tumours = _implant(trng, image, depth, affine, n_tumours, blends)

    bias = np.exp(rng.uniform(0.08, 0.18) * smooth_field(rng, image.shape, (4, 4, 4)))
    gain = rng.uniform(700.0, 1100.0)
    sigma = rng.uniform(0.012, 0.03) * gain
    signal = image * bias * gain
    noise = rng.standard_normal((2, *image.shape), dtype=np.float32) * sigma
    values = np.sqrt((signal + noise[0]) ** 2 + noise[1] ** 2)
    sequences = None
    if base is not None and blends is not None:
        others = _other_sequences(seed, index, base, blends, tumours, bias)
        channels = np.stack([values if name == ENHANCING else others[name] for name in SEQUENCES], axis=-1)
        top = float(channels.max())
        slope = next((s for s in SLOPES if top / s < 30000), SLOPES[-1])
        sequences = np.clip(np.rint(channels / slope), 0, 32767).astype(np.int16)
        stored = np.ascontiguousarray(sequences[..., SEQUENCES.index(ENHANCING)])
    else:
        top = float(values.max())
        slope = next((s for s in SLOPES if top / s < 30000), SLOPES[-1])
        stored = np.clip(np.rint(values / slope), 0, 32767).astype(np.int16)

    prng = rng_for(seed, "mri-patient", index)
    day = random_date(prng)
    patient = random_patient(prng, f"DEMO2{index:04d}", f"Demo^M{index:04d}", day)
    return MriCase(
        index=index,
        seed=seed,
        stored=stored,
        slope=float(slope),
        mask=mask,
        affine=affine,
        tumours=tumours,
        sequences=sequences,
        patient_id=patient.patient_id,
        patient_name=patient.patient_name,
        sex=patient.sex,
        birth_date=dicom_date(patient.birth_date),
        age_years=age_on(patient.birth_date, day),
        study_date=dicom_date(day),
        study_time=random_time(prng),
        accession_number=f"ACC{int(prng.integers(10**7, 10**8))}",
    )


def nifti_bytes(data: np.ndarray, affine: np.ndarray, slope: float | None = None) -> bytes:
    """A gzipped NIfTI-1 file, byte-identical for identical inputs (no time stamp, no name).

    Args:
        data: Array to store as is (its dtype is the on-disk dtype).
        affine: Voxel to RAS mm, written as both qform and sform (code 1, scanner).
        slope: ``scl_slope`` (intercept 0); ``None`` for no scaling.
    """
    img = nib.Nifti1Image(data, affine)
    img.set_data_dtype(data.dtype)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    img.header["descrip"] = b"medvision demo (synthetic)"
    if slope is not None:
        img.header.set_slope_inter(slope, 0.0)
    return gzip.compress(img.to_bytes(), compresslevel=1, mtime=0)


@dataclass(frozen=True)
class DicomFrame:
    """How a NIfTI volume maps onto DICOM axial slices.

    Attributes:
        flip: For the ``i`` and ``j`` axes, whether they are reversed in the DICOM pixels.
        affine: The NIfTI affine after those flips (voxel to RAS).
        row_cosine: LPS direction along a row (increasing column index).
        column_cosine: LPS direction down a column (increasing row index).
        pixel_spacing: ``[between rows, between columns]`` in mm.
        slice_spacing: Distance between slices in mm.
    """

    flip: tuple[bool, bool]
    affine: np.ndarray
    row_cosine: np.ndarray
    column_cosine: np.ndarray
    pixel_spacing: tuple[float, float]
    slice_spacing: float

    def slice_pixels(self, volume: np.ndarray, k: int) -> np.ndarray:
        """The 2D pixel array (rows = ``j``, columns = ``i``) of slice ``k``."""
        flipped = volume
        for axis, do in enumerate(self.flip):
            if do:
                flipped = np.flip(flipped, axis=axis)
        return np.ascontiguousarray(flipped[:, :, k].T)

    def position(self, k: int) -> np.ndarray:
        """ImagePositionPatient (LPS mm) of slice ``k``: the centre of its pixel (0, 0)."""
        return RAS_TO_LPS @ (self.affine[:3, :3] @ np.array([0.0, 0.0, k]) + self.affine[:3, 3])


def dicom_frame(affine: np.ndarray, shape: tuple[int, ...]) -> DicomFrame:
    """Derive the DICOM slice geometry of a volume from its NIfTI affine.

    In-plane axes whose LPS direction points mostly negative are flipped so that the images show
    in the usual orientation; positions and cosines follow from the flipped affine, with the
    sign change from RAS (NIfTI) to LPS (DICOM) on x and y.

    Args:
        affine: Voxel to RAS mm; columns must be orthogonal.
        shape: Volume shape ``(i, j, k)``.
    """
    m = np.asarray(affine, dtype=np.float64)
    cols = m[:3, :3]
    gram = cols.T @ cols
    if not np.allclose(gram, np.diag(np.diag(gram)), atol=1e-6):
        raise ValueError("the affine has non-orthogonal axes; a DICOM series cannot represent it")
    flipped = m.copy()
    flip = []
    for axis in (0, 1):
        lps = RAS_TO_LPS @ cols[:, axis]
        do = bool(lps[np.argmax(np.abs(lps))] < 0)
        flip.append(do)
        if do:
            flipped[:3, 3] += cols[:, axis] * (shape[axis] - 1)
            flipped[:3, axis] = -cols[:, axis]
    spacing = np.sqrt((cols**2).sum(axis=0))
    row = RAS_TO_LPS @ flipped[:3, 0] / spacing[0]
    column = RAS_TO_LPS @ flipped[:3, 1] / spacing[1]
    return DicomFrame(
        flip=(flip[0], flip[1]),
        affine=flipped,
        row_cosine=row,
        column_cosine=column,
        pixel_spacing=(float(spacing[1]), float(spacing[0])),
        slice_spacing=float(spacing[2]),
    )


def write_dicom_series(case: MriCase, folder: Path) -> int:
    """Write ``case`` as one MR Image Storage file per axial slice.

    InstanceNumber runs against the spatial order (reversed or shuffled) and the file names
    follow yet another shuffled order, so only ImagePositionPatient sorts the slices right.

    Args:
        case: The volume.
        folder: Output folder (created).

    Returns:
        Number of files written.
    """
    folder.mkdir(parents=True, exist_ok=True)
    seed, n = case.seed, case.stored.shape[2]
    rng = rng_for(seed, "mri-dicom", case.index)
    frame = dicom_frame(case.affine, case.stored.shape)
    instance = np.arange(n, 0, -1) if rng.random() < 0.5 else rng.permutation(n) + 1
    file_number = rng.permutation(n) + 1
    signed = bool(rng.random() < 0.5)
    real = case.stored[::2, ::2, ::2].astype(np.float64) * case.slope
    head = real[real > 0.25 * np.percentile(real, 99.5)]
    centre, top = np.percentile(head, [50, 99])
    study_uid = demo_uid(seed, "mri", case.index, "study")
    series_uid = demo_uid(seed, "mri", case.index, "series")
    frame_uid = demo_uid(seed, "mri", case.index, "frame-of-reference")
    normal = np.cross(frame.row_cosine, frame.column_cosine)
    for k in range(n):
        sop_uid = demo_uid(seed, "mri", case.index, "slice", k)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = sop_uid
        for prefix in ("Study", "Series", "Acquisition", "Content"):
            setattr(ds, f"{prefix}Date", case.study_date)
            setattr(ds, f"{prefix}Time", case.study_time)
        ds.AccessionNumber = case.accession_number
        ds.Modality = "MR"
        ds.Manufacturer = MANUFACTURER
        ds.InstitutionName = INSTITUTION
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "MR BRAIN"
        ds.SeriesDescription = "T1 MPRAGE AX (synthetic)"
        ds.ManufacturerModelName = "Synthetic MR"
        ds.PatientName = case.patient_name
        ds.PatientID = case.patient_id
        ds.PatientBirthDate = case.birth_date
        ds.PatientSex = case.sex
        ds.PatientAge = f"{case.age_years:03d}Y"
        ds.BodyPartExamined = "BRAIN"
        # MPRAGE: an inversion-prepared (IR, MP) spoiled (SP) gradient echo (GR); IR in ScanningSequence is
        # what makes InversionTime apply. ScanOptions (type 2) stays empty: IR is not one of its defined terms.
        ds.ScanningSequence = ["GR", "IR"]
        ds.SequenceVariant = ["SP", "MP"]
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "3D"
        ds.SliceThickness = format_ds(frame.slice_spacing)
        ds.SpacingBetweenSlices = format_ds(frame.slice_spacing)
        ds.RepetitionTime = "2300"
        ds.EchoTime = "2.98"
        ds.InversionTime = "900"
        ds.FlipAngle = "9"
        ds.MagneticFieldStrength = "3"
        ds.ImagingFrequency = "123.2"
        ds.EchoTrainLength = 1
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = 2
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = int(instance[k])
        ds.ImagePositionPatient = [format_ds(v) for v in frame.position(k)]
        ds.ImageOrientationPatient = [format_ds(v) for v in (*frame.row_cosine, *frame.column_cosine)]
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = format_ds(float(frame.position(k) @ normal))
        ds.ImageLaterality = "U"  # the brain is an unpaired body part
        ds.BurnedInAnnotation = "NO"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        pixels = frame.slice_pixels(case.stored, k)
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelSpacing = [format_ds(v) for v in frame.pixel_spacing]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1 if signed else 0
        ds.WindowCenter = format_ds(centre, 1)
        ds.WindowWidth = format_ds(2 * (top - centre), 1)
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = format_ds(case.slope)
        ds.RescaleType = "US"
        ds.PixelData = pixels.astype("<i2" if signed else "<u2").tobytes()
        ds["PixelData"].VR = "OW"
        ds.save_as(folder / f"IM{int(file_number[k]):04d}.dcm", enforce_file_format=True)
    return n


def write_mri(
    root: str | Path,
    seed: int = 0,
    n_volumes: int = 40,
    n_dicom: int = 4,
    progress: Callable[[str], None] | None = None,
    n_sequences: int = 1,
) -> list[dict]:
    """Make and write the brain volumes under ``root/mri``.

    Args:
        root: Output root: ``mri/imagesTr``, ``mri/labelsTr`` and ``mri/dicom`` go below it.
        seed: Data set seed.
        n_volumes: Number of volumes.
        n_dicom: How many of the first volumes are also written as DICOM series.
        progress: Called with a short message now and then.
        n_sequences: 1, or ``len(SEQUENCES)`` for 4D NIfTI volumes (FLAIR, T1w, t1gd, T2w); their DICOM series
            hold the t1gd sequence.

    Returns:
        One record per volume: ``name``, ``patient_id``, ``sex``, ``age``, ``study_uid``,
        ``affine``, ``tumours`` (:class:`Tumour` list), ``image``, ``mask`` and ``dicom`` (paths
        relative to ``root/mri``; ``dicom`` is ``None`` when not written), ``n_dicom_files``.
    """
    if not 0 <= n_volumes <= 999:
        raise ValueError(f"n_mri must be in [0, 999], got {n_volumes}")
    if not 0 <= n_dicom <= n_volumes:
        raise ValueError(f"n_mri_dicom must be in [0, n_mri={n_volumes}], got {n_dicom}")
    base = Path(root) / "mri"
    for sub in ("imagesTr", "labelsTr"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    for index in range(1, n_volumes + 1):
        case = synth_brain(seed, index, n_sequences)
        image_rel, mask_rel = f"imagesTr/{case.name}.nii.gz", f"labelsTr/{case.name}.nii.gz"
        voxels = case.sequences if case.sequences is not None else case.stored
        (base / image_rel).write_bytes(nifti_bytes(voxels, case.affine, case.slope))
        (base / mask_rel).write_bytes(nifti_bytes(case.mask, case.affine))
        dicom_rel, n_files = None, 0
        if index <= n_dicom:
            dicom_rel = f"dicom/{case.name}"
            n_files = write_dicom_series(case, base / dicom_rel)
        records.append(
            {
                "name": case.name,
                "patient_id": case.patient_id,
                "sex": case.sex,
                "age": case.age_years,
                "study_uid": demo_uid(seed, "mri", case.index, "study"),
                "affine": case.affine.tolist(),
                "tumours": case.tumours,
                "image": image_rel,
                "mask": mask_rel,
                "dicom": dicom_rel,
                "n_dicom_files": n_files,
            }
        )
        if progress is not None and (index % 10 == 0 or index == n_volumes):
            progress(f"mri: {index}/{n_volumes} volumes")
    return records
