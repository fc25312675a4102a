"""Datalists for 3D tumour detection: MONAI detection JSON, decathlon (MSD) JSON with label masks, and CSV.

Every loader returns ``list[dict]``, one dict per volume, with the same keys and no ``None`` values:

========== ============================================================================================
key        value
========== ============================================================================================
image      absolute path (str) of the NIfTI file or the DICOM series folder (or DICOM file)
mask       absolute path (str) of the NIfTI label mask, ``""`` when there is none
boxes      list of ``[x0, y0, z0, x1, y1, z1]`` in voxel indices of the image array as
           :mod:`medvision.io` loads it (MONAI order: x = first array axis, ...), see *Box convention*
box_labels list of int, one per box; 0 = tumour
label      1 if the volume has at least one box, else 0 (used for patient-level splits)
patient_id str: the entry's ``patient_id``, else the image's name without suffix (one volume per
           patient, as in the Medical Segmentation Decathlon and BraTS; give ``patient_id`` where a
           patient has several scans)
split      ``"train"``, ``"val"`` or ``"test"`` when the source fixes it, else ``""``
source     where the item came from, for messages (``"detection.json:training[3]"``, ``"boxes.csv:12"``)
problem    ``""``, or why the item cannot be used (a mask or image that could not be read while
           loading); :func:`check_volumes` reports it, so that one bad volume does not stop the loading
========== ============================================================================================

Box convention (the demo's ``detection.json`` uses the same):

* **Voxel boxes** are MONAI's ``StandardMode`` ``xyzxyz``: ``[x0, y0, z0, x1, y1, z1]`` in array
  indices, minimum inclusive and maximum exclusive. A lesion whose voxels are
  ``mask[i0:i1, j0:j1, k0:k1]`` has the box ``[i0, j0, k0, i1, j1, k1]`` (:func:`boxes_from_mask`).
* **World boxes** (``"box_coordinates": "world"``) are RAS millimetres (``"world LPS"`` for LPS),
  defined as MONAI's ``AffineBoxToWorldCoordinated`` defines them: the two voxel-box corners mapped
  through the image affine, then min/max per axis. They are converted to voxel boxes when the datalist
  is loaded, with the affine of the image as :mod:`medvision.io` loads it (only the header is read),
  by the exact inverse (MONAI's ``AffineBoxToImageCoordinated``); a world box written from a voxel
  box of the same image therefore comes back unchanged. Because that convention maps box corners as if
  they were voxel centres, a world box carries a half-voxel offset along the writer's index axes; read
  into a differently oriented grid of the same scan (say its DICOM series, whose axes are flipped),
  it can be off by one voxel there.

Formats (``fmt`` of :func:`load_detection_datalist`):

``detection``
    MONAI's detection datalist: ``training`` / ``validation`` / ``test`` lists of
    ``{"image": "./x.nii.gz", "box": [[...], ...], "label": [0, ...]}``; optional per entry ``mask``,
    ``patient_id``, ``split``. Top-level keys declare the boxes: ``box_mode`` (a MONAI 3D box mode:
    ``xyzxyz``, ``xxyyzz``, ``xyxyzz``, ``xyzwhd``, ``cccwhd``) and ``box_coordinates`` (text whose first
    word is ``voxel``/``image`` or ``world``/``RAS``/``LPS``; ``LPS`` anywhere in it means LPS). Both
    are required when any entry has a box, since MONAI's own LUNA16 lists (world ``cccwhd``) and the
    demo (voxel ``xyzxyz``) differ and a guess would misplace every box. Test entries without ``box``
    are unlabelled and left out.
``decathlon``
    MSD ``dataset.json``: ``training`` (and optional ``validation``) lists of
    ``{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}``; the boxes are the connected
    components of ``label > 0`` (:func:`boxes_from_mask`), so edema / enhancing / necrotic labels of
    BraTS count as one tumour. MSD's ``test`` list has no masks and is left out.
``csv``
    Columns ``image`` and at least one of ``mask``, ``boxes`` (voxel ``xyzxyz``, JSON), ``boxes_voxel``
    (same) or ``boxes_world_mm`` (RAS mm); optional ``box_labels`` (JSON), ``patient_id``, ``split``. A
    non-blank boxes cell (``[]`` included) is used as given; otherwise the boxes come from the mask. The
    demo's ``mri/manifest.csv`` loads as is.

Multi-sequence volumes (MSD Task01 / BraTS: a 4D NIfTI ``x, y, z, c`` with FLAIR, T1w, t1gd, T2w) keep their
sequences as channels. Their names come from the ``modality`` dict of the datalist JSON (MSD's
``{"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}``, :func:`sequence_names`); :func:`check_volumes`
records each volume's channel count (``n_channels``) and :func:`resolve_sequences` refuses a data set whose
volumes have different counts and resolves ``data.volume.channels``.

A datalist in which no volume has a box (every mask empty) is refused: there is nothing to learn from.
A single empty mask is fine: a tumour-free volume is a valid negative.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from medvision.constants import (
    BOX_LABELS,
    BOXES,
    DEFAULT_MAX_VOXELS,
    IMAGE,
    KIND_DICOM_SERIES,
    KIND_NIFTI,
    LABEL,
    MASK,
    NIFTI_SUFFIXES,
    PATIENT_ID,
)
from medvision.data.datalist import box_list, datalist_name, join_problems, parse_split
from medvision.errors import ConfigError, DataError, InputError, SequenceError

PathLike = str | os.PathLike

FORMATS = ("detection", "decathlon", "csv")
#: MONAI's 3D box modes that a detection JSON may declare.
BOX_MODES = ("xyzxyz", "xxyyzz", "xyxyzz", "xyzwhd", "cccwhd")
#: Key of the per-item problem text (``""`` when the item is fine).
PROBLEM = "problem"
#: Key of the channel (sequence) count that :func:`check_volumes` adds to the items it keeps.
N_CHANNELS = "n_channels"
#: Tolerance (voxels) of the bounds check: world boxes converted to voxels are not exact integers.
BOUNDS_TOLERANCE = 1e-3
#: Decimals kept of a converted world box (float noise of the inverse affine).
ROUND_DECIMALS = 4

CSV_BOX_COLUMNS = {"boxes": "voxel", "boxes_voxel": "voxel", "boxes_world_mm": "world", "boxes_world": "world"}
CSV_COLUMNS = ("image", "mask", *CSV_BOX_COLUMNS, "box_labels", "patient_id", "split")
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


# ---- boxes from masks ---------------------------------------------------------------------------------------


def boxes_from_mask(mask_array: Any, *, min_voxels: int = 1, connectivity: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of the connected components of ``mask > 0``: one box per lesion.

    Box ``[x0, y0, z0, x1, y1, z1]`` = min inclusive, max exclusive per axis (``max index + 1``): the
    component lies inside ``mask[x0:x1, y0:y1, z0:z1]``. Boxes come in the order in which
    ``scipy.ndimage.label`` numbers the components (C-order scan of each component's first voxel).

    Args:
        mask_array: 3D array (numpy or torch; a leading channel of size 1 is dropped). Any value > 0
            is tumour, so instance masks (value k = lesion k) and multi-class masks (BraTS 1/2/3) work.
        min_voxels: drop components with fewer voxels (noise specks).
        connectivity: 1 (faces, 6-neighbourhood), 2 (faces and edges, 18) or 3 (also corners, 26).

    Returns:
        ``(boxes (K, 6) float32, labels (K,) int64 of 0 = tumour)``; an empty mask gives ``K = 0``.

    Raises:
        ValueError: a mask that is not 3D, or a bad ``min_voxels``/``connectivity``.

    Example:
        >>> mask = np.zeros((8, 8, 8), dtype=np.uint8)
        >>> mask[1:3, 2:5, 3:4] = 1
        >>> boxes, labels = boxes_from_mask(mask)
        >>> boxes.tolist(), labels.tolist()
        ([[1.0, 2.0, 3.0, 3.0, 5.0, 4.0]], [0])
    """
    array = np.asarray(mask_array.detach().cpu() if hasattr(mask_array, "detach") else mask_array)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise ValueError(f"expected a 3D mask, got shape {tuple(array.shape)}")
    if connectivity not in (1, 2, 3):
        raise ValueError(f"connectivity must be 1, 2 or 3, got {connectivity!r}")
    if int(min_voxels) < 1:
        raise ValueError(f"min_voxels must be >= 1, got {min_voxels!r}")
    labelled, n = ndi.label(array > 0, structure=ndi.generate_binary_structure(3, connectivity))
    boxes: list[list[float]] = []
    if n:
        sizes = np.bincount(labelled.reshape(-1), minlength=n + 1)
        for index, region in enumerate(ndi.find_objects(labelled), start=1):
            if region is None or sizes[index] < min_voxels:
                continue
            boxes.append([float(s.start) for s in region] + [float(s.stop) for s in region])
    out = np.asarray(boxes, dtype=np.float32).reshape(-1, 6)
    return out, np.zeros(len(out), dtype=np.int64)


# ---- headers ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VolumeHeader:
    """What a header says about a volume, read without decoding voxels.

    Attributes:
        path: the file or folder.
        kind: ``"nifti"``, ``"dicom-series"`` or ``"dicom-file"``.
        shape: spatial shape in MONAI order (x, y[, z]) as :mod:`medvision.io` loads the array.
        n_channels: channels (the 4th NIfTI axis, e.g. the four MR sequences of MSD Task01), else 1.
        affine: 4x4 voxel index -> RAS mm, as the reader puts it in the metadata; a missing spacing
            shows as a zero column.
    """

    path: str
    kind: str
    shape: tuple[int, ...]
    n_channels: int
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm per spatial axis (column norms of the affine)."""
        n = len(self.shape)
        return tuple(float(v) for v in np.sqrt((self.affine[:3, :n] ** 2).sum(axis=0)))


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def _nifti_header(path: Path, max_voxels: int) -> VolumeHeader:
    from medvision.io import NiftiReader

    img = NiftiReader(max_voxels=max_voxels).read(str(path))  # header only; size guard
    shape = tuple(int(s) for s in img.header.get_data_shape())
    if len(shape) > 4:
        raise InputError(
            path,
            f"{len(shape)}D NIfTI {shape} (expected x, y, z and at most one channel axis)",
            "save one 3D volume (or x, y, z, channel) per file",
        )
    spatial = shape[:3]
    channels = shape[3] if len(shape) == 4 else 1
    affine = np.array(img.affine, dtype=np.float64)
    # nibabel repairs a zero pixdim to 1 while loading (a fake 1 mm voxel); look at the stored header.
    from nibabel.openers import ImageOpener

    with ImageOpener(str(path)) as handle:
        raw = type(img.header).from_fileobj(handle, check=False)
    if int(raw["sform_code"]) == 0:  # the affine comes from pixdim (qform or no orientation at all)
        pixdim = np.asarray(raw["pixdim"][1 : 1 + len(spatial)], dtype=np.float64)
        bad = ~np.isfinite(pixdim) | (pixdim <= 0)
        affine[:3, : len(spatial)][:, bad] = 0.0
    return VolumeHeader(str(path), KIND_NIFTI, spatial, channels, affine)


def _dicom_header(path: Path, max_voxels: int, irregular: str = "refuse") -> VolumeHeader:
    # The private helpers build the affine exactly as DicomReader.get_data does, from headers only.
    from medvision.io import DicomReader
    from medvision.io.dicom import _lps_affine, _orientation, pixel_spacing

    reader = DicomReader(max_voxels=max_voxels, irregular=irregular)
    img = reader.read(str(path))
    first = img.datasets[0]
    if img.kind == KIND_DICOM_SERIES:
        spacing_rc = pixel_spacing(first) or (0.0, 0.0)
        # The checked geometry: its regular step and slice count (more slices than files when resampled).
        geometry = img.geometry
        affine = _lps_affine(_orientation(first), geometry.origin, spacing_rc, geometry.step)
        affine[:2] *= -1  # LPS -> RAS, as the reader does
        shape = (int(first.Columns), int(first.Rows), int(geometry.n_out))
        return VolumeHeader(str(path), img.kind, shape, 1, affine)
    frames = int(first.get("NumberOfFrames", 1) or 1)
    samples = int(first.get("SamplesPerPixel", 1) or 1)
    if frames <= 1:
        shape2 = (int(first.get("Columns", 0) or 0), int(first.get("Rows", 0) or 0))
        return VolumeHeader(str(path), img.kind, shape2, samples, np.eye(4))
    # A multi-frame file: the frame geometry is spread over functional groups; let the reader work it out.
    _, meta = reader.get_data(img)
    affine = np.asarray(meta["affine"], dtype=np.float64)
    if meta.get("slice_spacing_mm") is None:
        affine[:3, 2] = 0.0  # no per-frame positions: the slice spacing is unknown
    if pixel_spacing(first) is None:
        affine[:3, :2] = 0.0
    shape = tuple(int(s) for s in meta["spatial_shape"])
    return VolumeHeader(str(path), img.kind, shape, samples, affine)


def read_volume_header(
    path: PathLike, *, max_voxels: int = DEFAULT_MAX_VOXELS, irregular: str = "refuse"
) -> VolumeHeader:
    """Shape and affine of a NIfTI file or a DICOM series (or file) from its header(s) only.

    Raises:
        InputError: the path is missing or not a readable NIfTI/DICOM volume.

    Example:
        >>> import nibabel, pathlib
        >>> header = read_volume_header(pathlib.Path(nibabel.__file__).parent / "tests/data/anatomical.nii")
        >>> header.shape, header.n_channels
        ((33, 41, 25), 1)
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found", "check the path in the datalist")
    if path.is_file() and _is_nifti(path):
        return _nifti_header(path, max_voxels)
    return _dicom_header(path, max_voxels, irregular)


def volume_problems(header: VolumeHeader) -> list[str]:
    """Why a volume cannot go through the 3D pipeline: 2D, a single slice, or a missing/zero spacing.

    Example:
        >>> volume_problems(VolumeHeader("a.nii", "nifti", (4, 4, 4), 1, np.diag([1.0, 0.0, 1.0, 1.0])))[0][:40]
        'voxel spacing missing or zero (1, 0, 1 m'
        >>> volume_problems(VolumeHeader("a.nii", "nifti", (64, 64, 1), 1, np.eye(4)))[0][:46]
        'a 2D image given to the 3D detection pipeline '
    """
    if len(header.shape) < 3 or min(header.shape) <= 1:
        return [
            f"a 2D image given to the 3D detection pipeline (shape {header.shape}); "
            "use a 3D volume (NIfTI or a DICOM series folder)"
        ]
    affine = header.affine
    spacing = header.spacing
    if not np.isfinite(affine).all() or min(spacing) < 1e-6 or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        shown = ", ".join(f"{s:g}" for s in spacing)
        return [
            f"voxel spacing missing or zero ({shown} mm); set the voxel size in the header "
            "(NIfTI pixdim/sform, DICOM PixelSpacing and slice positions)"
        ]
    return []


def box_problems(boxes: Sequence[Sequence[float]], shape: Sequence[int]) -> list[str]:
    """Boxes that are not inside ``[0, shape]`` or are empty, named by their index in the item.

    Example:
        >>> box_problems([[0, 0, 0, 4, 4, 4], [2, 2, 2, 9, 4, 4]], (8, 8, 8))
        ['box 1 [2, 2, 2, 9, 4, 4] lies outside the image (voxel bounds [0, 8) x [0, 8) x [0, 8))']
    """
    problems = []
    limits = np.asarray(shape[:3], dtype=np.float64)
    for index, box in enumerate(boxes):
        b = np.asarray(box, dtype=np.float64)
        text = "[" + ", ".join(f"{v:g}" for v in b) + "]"
        if b.shape != (6,) or not np.isfinite(b).all() or (b[3:] <= b[:3]).any():
            problems.append(f"box {index} {text} is not [x0, y0, z0, x1, y1, z1] with x1 > x0, y1 > y0, z1 > z0")
        elif (b[:3] < -BOUNDS_TOLERANCE).any() or (b[3:] > limits + BOUNDS_TOLERANCE).any():
            bounds = " x ".join(f"[0, {int(s)})" for s in limits)
            problems.append(f"box {index} {text} lies outside the image (voxel bounds {bounds})")
    return problems


# ---- parsing ------------------------------------------------------------------------------------------------


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def parse_boxes_3d(value: Any, mode: str = "xyzxyz") -> list[list[float]]:
    """Boxes in ``mode`` (list or its JSON text; ``""``/``None`` = none) -> ``[[x0, y0, z0, x1, y1, z1], ...]``.

    Raises:
        ValueError: not JSON, not a list of 6-number lists, or empty boxes (max <= min, size <= 0).

    Example:
        >>> parse_boxes_3d("[[1, 2, 3, 4, 5, 6]]")
        [[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]]
        >>> parse_boxes_3d([[5, 5, 5, 2, 4, 6]], "cccwhd")
        [[4.0, 3.0, 2.0, 6.0, 7.0, 8.0]]
    """
    value = box_list(value, "[[x0, y0, z0, x1, y1, z1], ...]", "a list of 6-number boxes")
    raw = []
    for box in value:
        if not (isinstance(box, list | tuple) and len(box) == 6 and all(_is_number(v) for v in box)):
            raise ValueError(f"box {box!r} (expected 6 numbers in box mode {mode})")
        raw.append([float(v) for v in box])
    if not raw:
        return []
    array = np.asarray(raw, dtype=np.float64)
    if mode in ("xyzwhd", "cccwhd") and (array[:, 3:] <= 0).any():
        bad = raw[int(np.flatnonzero((array[:, 3:] <= 0).any(axis=1))[0])]
        raise ValueError(f"box {bad!r} has a size <= 0 (box mode {mode}: last three numbers are w, h, d)")
    if mode != "xyzxyz":
        from monai.data.box_utils import convert_box_mode

        array = np.asarray(convert_box_mode(array, src_mode=mode, dst_mode="xyzxyz"), dtype=np.float64)
    for box, src in zip(array, raw, strict=True):
        if (box[3:] <= box[:3]).any():
            raise ValueError(
                f"box {src!r} has max <= min on some axis in box mode {mode} (for xyzxyz: "
                "corners [x0, y0, z0, x1, y1, z1], not [x, y, z, width, height, depth])"
            )
    return [[float(v) for v in box] for box in array]


def parse_box_labels(value: Any, n_boxes: int) -> list[int]:
    """Box classes (list or JSON text) for ``n_boxes`` boxes; missing/blank -> all 0 (tumour).

    Example:
        >>> parse_box_labels(None, 2), parse_box_labels("[0, 1]", 2)
        ([0, 0], [0, 1])
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return [0] * n_boxes
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"box labels {value!r} are not JSON (expected [0, ...])") from None
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value] * n_boxes
    ok = isinstance(value, list | tuple) and all(_is_number(v) and float(v) == int(v) and v >= 0 for v in value)
    if not ok:
        raise ValueError(f"box labels {value!r} (expected a list of class numbers >= 0, 0 = tumour)")
    if len(value) != n_boxes:
        raise ValueError(f"{len(value)} box label(s) for {n_boxes} box(es)")
    return [int(v) for v in value]


def parse_coordinates(text: Any) -> str:
    """``"voxel"``, ``"world"`` (RAS mm) or ``"world-lps"`` from a ``box_coordinates`` declaration.

    Example:
        >>> parse_coordinates("voxel indices (i, j, k) of the NIfTI array"), parse_coordinates("RAS millimetres")
        ('voxel', 'world')
        >>> parse_coordinates("world LPS")
        'world-lps'
    """
    words = str(text or "").replace(",", " ").replace(":", " ").replace("(", " ").lower().split()
    if not words:
        raise ValueError("empty box_coordinates")
    if words[0] in ("voxel", "voxels", "image", "index", "indices"):
        return "voxel"
    if words[0] in ("world", "ras", "lps", "mm", "millimetres", "millimeters", "physical"):
        return "world-lps" if "lps" in words else "world"
    raise ValueError(f"box_coordinates {text!r} (expected 'voxel', 'world' (RAS mm) or 'world LPS')")


def world_to_voxel(boxes: Sequence[Sequence[float]], affine: np.ndarray, *, lps: bool = False) -> list[list[float]]:
    """World ``xyzxyz`` boxes (mm) -> voxel boxes of the array whose affine (voxel -> RAS mm) is given.

    The inverse of MONAI's ``AffineBoxToWorldCoordinated`` (both corners through the inverse affine,
    then min/max per axis), rounded to 4 decimals.

    Example:
        >>> world_to_voxel([[-25.5, -77.75, -22.0, -1.5, -53.75, -2.0]],
        ...                np.array([[2, 0, 0, -95.5], [0, 2, 0, -137.75], [0, 0, 2, -68], [0, 0, 0, 1.0]]))
        [[35.0, 30.0, 23.0, 47.0, 42.0, 33.0]]
    """
    if not len(boxes):
        return []
    from monai.apps.detection.transforms.box_ops import apply_affine_to_boxes

    to_ras = _RAS_TO_LPS if lps else np.eye(4)  # LPS -> RAS flips x and y, as RAS -> LPS does
    inverse = np.linalg.inv(np.asarray(affine, dtype=np.float64)) @ to_ras
    out = apply_affine_to_boxes(np.asarray(boxes, dtype=np.float64), inverse)
    return [[round(float(v), ROUND_DECIMALS) + 0.0 for v in box] for box in np.asarray(out)]


# ---- items --------------------------------------------------------------------------------------------------


def _stem(path: str) -> str:
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem if Path(path).suffix.lower() in (".dcm", ".dicom", ".ima") else name


def make_detection_item(
    image: PathLike,
    *,
    boxes: list[list[float]],
    box_labels: list[int],
    source: str,
    mask: PathLike | str = "",
    patient_id: Any = "",
    split: Any = "",
    problem: str = "",
) -> dict[str, Any]:
    """One detection item with every key present and no ``None``.

    Example:
        >>> item = make_detection_item("/d/BRAIN_001.nii.gz", boxes=[[1, 2, 3, 4, 5, 6]], box_labels=[0], source="x")
        >>> item["label"], item["patient_id"], item["mask"]
        (1, 'BRAIN_001', '')
    """
    image_path = os.path.normpath(os.path.abspath(os.fspath(image)))
    pid = "" if patient_id is None else str(patient_id).strip()
    return {
        IMAGE: image_path,
        MASK: os.path.normpath(os.path.abspath(os.fspath(mask))) if mask else "",
        BOXES: [[float(v) for v in box] for box in boxes],
        BOX_LABELS: [int(v) for v in box_labels],
        LABEL: int(bool(boxes)),
        PATIENT_ID: pid or _stem(image_path),
        "split": parse_split(split),
        "source": source,
        PROBLEM: problem,
    }


def _resolve(base: Path, value: Any) -> str:
    return os.path.normpath(os.path.join(base, os.fspath(str(value).strip())))


def _boxes_from_mask_file(mask: str, min_voxels: int, connectivity: int, max_voxels: int) -> list[list[float]]:
    """Boxes of a NIfTI label mask; raises InputError/ValueError with the reason."""
    from medvision.io import NiftiReader

    path = Path(mask)
    if not path.exists():
        raise InputError(path, "mask file not found", "check the mask path")
    if not _is_nifti(path):
        raise InputError(path, "mask is not a NIfTI file (.nii, .nii.gz)", "save the label mask as NIfTI")
    reader = NiftiReader(max_voxels=max_voxels, dtype=np.float32)
    array, _ = reader.get_data(reader.read(str(path)))
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3 or min(array.shape) <= 1:
        raise InputError(path, f"mask of shape {tuple(array.shape)} is not a 3D volume", "use a 3D label mask")
    boxes, _ = boxes_from_mask(array, min_voxels=min_voxels, connectivity=connectivity)
    return boxes.tolist()


class _Builder:
    """Shared state of one loading run: where the file is, the options, the problems found."""

    def __init__(self, path: Path, *, min_voxels: int, connectivity: int, max_voxels: int) -> None:
        self.path = path
        self.base = path.parent.absolute()
        self.min_voxels = min_voxels
        self.connectivity = connectivity
        self.max_voxels = max_voxels
        self.problems: list[str] = []  # datalist text problems: raised together at the end
        self.empty_masks = 0

    def item(
        self,
        entry: dict[str, Any],
        where: str,
        *,
        image: Any,
        boxes: Any = None,
        coordinates: str = "voxel",
        mode: str = "xyzxyz",
        box_labels: Any = None,
        mask: Any = None,
        source: str | None = None,
    ) -> dict[str, Any] | None:
        """Parse one entry; a text problem goes to ``self.problems``, a volume problem into the item."""
        if not isinstance(image, str) or not image.strip():
            self.problems.append(f"{where}: image {image!r} (expected one path)")
            return None
        if mask is not None and not isinstance(mask, str):
            self.problems.append(f"{where}: mask {mask!r} (expected one path)")
            return None
        image_path = _resolve(self.base, image)
        mask_path = _resolve(self.base, mask) if isinstance(mask, str) and mask.strip() else ""
        source = source or f"{self.path.name}:{where}"
        problem = ""
        try:
            parsed = None if boxes is None else parse_boxes_3d(boxes, mode)
            labels = parse_box_labels(box_labels, len(parsed)) if parsed is not None else None
            split = parse_split(entry.get("split"))
        except ValueError as exc:
            self.problems.append(f"{where}: {exc}")
            return None
        if parsed is None:  # boxes from the mask
            labels = []
            try:
                parsed = _boxes_from_mask_file(mask_path, self.min_voxels, self.connectivity, self.max_voxels)
                labels = [0] * len(parsed)
                self.empty_masks += not parsed
            except (InputError, ValueError) as exc:
                parsed, problem = [], f"boxes from the mask: {_reason(exc)}"
        elif coordinates != "voxel" and parsed:
            try:
                header = read_volume_header(image_path, max_voxels=self.max_voxels)
                bad = volume_problems(header)
                if bad:
                    raise ValueError(bad[0])
                parsed = world_to_voxel(parsed, header.affine, lps=coordinates == "world-lps")
            except (InputError, ValueError, np.linalg.LinAlgError) as exc:
                parsed, labels, problem = [], [], f"world boxes cannot be converted to voxels: {_reason(exc)}"
        return make_detection_item(
            image_path,
            boxes=parsed,
            box_labels=labels or [],
            source=source,
            mask=mask_path,
            patient_id=entry.get(PATIENT_ID),
            split=split,
            problem=problem,
        )

    def finish(self, items: list[dict[str, Any]], what: str, fix: str) -> list[dict[str, Any]]:
        if self.problems:
            raise DataError(self.path, f"{len(self.problems)} bad {what}: {join_problems(self.problems)}", fix)
        if not items:
            raise DataError(self.path, "the datalist holds no labelled volumes", "add one entry per volume")
        if not any(item[BOXES] for item in items):
            unusable = [f"{item['source']}: {item[PROBLEM]}" for item in items if item[PROBLEM]]
            detail = f"; {len(unusable)} could not be read: {join_problems(unusable, 5)}" if unusable else ""
            raise DataError(
                self.path,
                f"no volume has a tumour box ({self.empty_masks} of {len(items)} mask(s) are empty{detail}); "
                "a detector cannot learn from negatives only",
                "check the mask paths and values (tumour voxels must be > 0), or the boxes",
            )
        return items


def _reason(exc: Exception) -> str:
    return exc.one_line() if isinstance(exc, InputError) else str(exc)


def _read_json(path: Path) -> Any:
    if not path.exists():
        raise DataError(path, "datalist not found", "check data.path")
    if not path.is_file():
        raise DataError(path, "is a folder, expected a JSON datalist", "point data.path at the file")
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(path, f"not a readable JSON file ({exc})", "check the JSON syntax") from exc


_LISTS = {"training": "train", "validation": "val", "test": "test"}


def _entries(doc: Any, path: Path, example: str) -> list[tuple[str, str, int, Any]]:
    """``(list name, split, index, entry)`` of the training/validation/test lists."""
    if not isinstance(doc, dict) or not any(isinstance(doc.get(name), list) for name in _LISTS):
        raise DataError(path, "no 'training', 'validation' or 'test' list", f"expected {example}")
    fixed = "validation" in doc or bool(doc.get("test"))
    out = []
    for name, split in _LISTS.items():
        entries = doc.get(name) or []
        if not isinstance(entries, list):
            raise DataError(path, f"'{name}' is not a list", f"expected {example}")
        out.extend((name, split if fixed else "", i, e) for i, e in enumerate(entries))
    return out


def load_detection_json(
    path: PathLike,
    *,
    box_mode: str | None = None,
    box_coordinates: str | None = None,
    min_voxels: int = 1,
    connectivity: int = 3,
    max_voxels: int = DEFAULT_MAX_VOXELS,
) -> list[dict[str, Any]]:
    """Items from a MONAI detection datalist (see the module docstring, format ``detection``).

    Args:
        path: the JSON file; image paths are relative to its folder.
        box_mode: the box mode when the file does not declare ``box_mode``.
        box_coordinates: ``"voxel"``, ``"world"`` or ``"world LPS"`` when the file does not declare
            ``box_coordinates``.
        min_voxels: for entries that give a ``mask`` but no ``box`` (boxes from the mask).
        connectivity: as :func:`boxes_from_mask`.
        max_voxels: size guard of the header reads.

    Raises:
        DataError: a missing file, an undeclared or unknown box mode/coordinate system, bad entries (all
            listed in one error), or no box at all.
        ConfigError: an argument that contradicts the file's declaration.

    Example:
        >>> items = load_detection_json("data/demo/mri/detection.json")  # doctest: +SKIP
    """
    path = Path(path)
    doc = _read_json(path)
    entries = _entries(doc, path, '{"box_mode": "xyzxyz", "box_coordinates": "voxel", "training": [...]}')
    declared = {"box_mode": doc.get("box_mode"), "box_coordinates": doc.get("box_coordinates")}
    given = {"box_mode": box_mode, "box_coordinates": box_coordinates}
    for key in declared:
        if given[key] is not None and declared[key] is not None:
            a, b = str(given[key]).strip().lower(), str(declared[key]).strip().lower()
            same = a == b if key == "box_mode" else parse_coordinates(a) == parse_coordinates(b)
            if not same:
                raise ConfigError(
                    f"data.{key}", f"{given[key]!r} contradicts the file's {key} {declared[key]!r}", "drop the setting"
                )
    mode = str(declared["box_mode"] or given["box_mode"] or "").strip().lower()
    coordinates_text = declared["box_coordinates"] or given["box_coordinates"]
    has_boxes = any(isinstance(e, dict) and e.get("box", e.get("boxes")) for _, _, _, e in entries)
    if has_boxes and (not mode or coordinates_text is None):
        missing = [k for k, v in (("box_mode", mode), ("box_coordinates", coordinates_text)) if not v]
        raise DataError(
            path,
            f"the file does not declare {' and '.join(missing)}, so the boxes cannot be placed",
            'add top-level keys such as "box_mode": "xyzxyz" and "box_coordinates": "voxel" (or "world" for RAS mm, '
            '"world LPS")',
        )
    mode = mode or "xyzxyz"
    if mode not in BOX_MODES:
        raise DataError(path, f"box_mode {mode!r} is not a 3D box mode", f"use one of {', '.join(BOX_MODES)}")
    try:
        coordinates = parse_coordinates(coordinates_text) if coordinates_text is not None else "voxel"
    except ValueError as exc:
        raise DataError(path, str(exc), "declare 'voxel', 'world' or 'world LPS'") from None
    builder = _Builder(path, min_voxels=min_voxels, connectivity=connectivity, max_voxels=max_voxels)
    items: list[dict[str, Any]] = []
    for name, split, i, entry in entries:
        where = f"{name}[{i}]"
        if not isinstance(entry, dict):
            if name != "test":
                builder.problems.append(f"{where}: {entry!r} (expected an object with image, box and label)")
            continue
        boxes = entry.get("box", entry.get("boxes"))
        if boxes is None and not entry.get(MASK):
            if name != "test":  # unlabelled test entries are for inference only
                builder.problems.append(f"{where}: no 'box' list (use [] for a tumour-free volume) and no mask")
            continue
        if split and not entry.get("split"):
            entry = {**entry, "split": split}
        item = builder.item(
            entry,
            where,
            image=entry.get("image"),
            boxes=boxes,
            coordinates=coordinates,
            mode=mode,
            box_labels=entry.get("label"),
            mask=entry.get(MASK),
        )
        if item is not None:
            items.append(item)
    return builder.finish(items, "entries", "give every entry an image path and a box list with one label per box")


def load_decathlon_masks(
    path: PathLike, *, min_voxels: int = 1, connectivity: int = 3, max_voxels: int = DEFAULT_MAX_VOXELS
) -> list[dict[str, Any]]:
    """Items from an MSD-style ``dataset.json`` with label masks; boxes from :func:`boxes_from_mask`.

    Every mask is read once (voxels included) to find its connected components.

    Example:
        >>> items = load_decathlon_masks("Task01_BrainTumour/dataset.json")  # doctest: +SKIP
    """
    path = Path(path)
    doc = _read_json(path)
    entries = _entries(doc, path, '{"training": [{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}]}')
    builder = _Builder(path, min_voxels=min_voxels, connectivity=connectivity, max_voxels=max_voxels)
    items: list[dict[str, Any]] = []
    for name, split, i, entry in entries:
        where = f"{name}[{i}]"
        if not isinstance(entry, dict) or entry.get(LABEL) is None:
            if name != "test":  # MSD's test list: image paths without masks
                builder.problems.append(f"{where}: {entry!r} (expected an object with image and label mask paths)")
            continue
        if split and not entry.get("split"):
            entry = {**entry, "split": split}
        item = builder.item(entry, where, image=entry.get("image"), mask=entry.get(LABEL))
        if item is not None:
            items.append(item)
    return builder.finish(items, "entries", "give every entry an image path and a label mask path")


def load_detection_csv(
    path: PathLike, *, min_voxels: int = 1, connectivity: int = 3, max_voxels: int = DEFAULT_MAX_VOXELS
) -> list[dict[str, Any]]:
    """Items from a CSV with ``image`` and ``mask`` and/or a boxes column (see the module docstring).

    Example:
        >>> items = load_detection_csv("data/demo/mri/manifest.csv")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "CSV datalist not found" if not path.exists() else "is not a file", "check data.path")
    builder = _Builder(path, min_voxels=min_voxels, connectivity=connectivity, max_voxels=max_voxels)
    items: list[dict[str, Any]] = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            box_columns = [c for c in CSV_BOX_COLUMNS if c in columns]
            if "image" not in columns or not (box_columns or MASK in columns):
                raise DataError(
                    path,
                    f"needs the column image and a mask or boxes column (header: {', '.join(columns) or 'none'})",
                    f"allowed columns: {', '.join(CSV_COLUMNS)}",
                )
            reader.fieldnames = columns
            for row in reader:
                line = reader.line_num
                if not any((v or "").strip() for k, v in row.items() if isinstance(v, str)):
                    continue
                column = next((c for c in box_columns if (row.get(c) or "").strip()), None)
                if column is None and not (row.get(MASK) or "").strip():
                    builder.problems.append(f"row {line}: neither a mask nor boxes")
                    continue
                item = builder.item(
                    row,
                    f"row {line}",
                    source=f"{path.name}:{line}",
                    image=row.get("image"),
                    boxes=row.get(column) if column else None,
                    coordinates=CSV_BOX_COLUMNS[column] if column else "voxel",
                    box_labels=row.get("box_labels"),
                    mask=row.get(MASK) or None,
                )
                if item is not None:
                    items.append(item)
    except UnicodeDecodeError as exc:
        raise DataError(path, f"not UTF-8 text ({exc.reason})", "save the CSV as UTF-8") from exc
    except csv.Error as exc:
        raise DataError(path, f"not a readable CSV file ({exc})", "check the quoting of the file") from exc
    return builder.finish(items, "row(s)", "fix the listed rows (row = line number in the file)")


_LOADERS: dict[str, Callable[..., list[dict[str, Any]]]] = {
    "detection": load_detection_json,
    "decathlon": load_decathlon_masks,
    "csv": load_detection_csv,
}


def load_detection_datalist(fmt: str, path: PathLike, **options: Any) -> list[dict[str, Any]]:
    """Read a 3D detection datalist into item dicts (keys, box convention and formats: module docstring).

    Args:
        fmt: ``"detection"`` (MONAI detection JSON), ``"decathlon"`` (MSD dataset.json with label masks) or
            ``"csv"`` (config key ``data.format``).
        path: the JSON or CSV file; paths inside are relative to its folder.
        **options: ``min_voxels``, ``connectivity`` (boxes from masks), ``max_voxels`` (header size guard);
            for ``detection`` also ``box_mode`` and ``box_coordinates`` for files that do not declare them.

    Returns:
        One dict per volume, in the order of the source.

    Raises:
        ConfigError: an unknown ``fmt``.
        DataError: a missing or unreadable file, bad entries (all listed in one error), or no box at all.
            A volume or mask that cannot be read does not raise here: its item carries a ``problem``
            that :func:`check_volumes` reports.

    Example:
        >>> from medvision.demo import write_demo_data  # doctest: +SKIP
        >>> items = load_detection_datalist("detection", "data/demo/mri/detection.json")  # doctest: +SKIP
        >>> sorted(items[0])  # doctest: +SKIP
        ['box_labels', 'boxes', 'image', 'label', 'mask', 'patient_id', 'problem', 'source', 'split']
    """
    loader = _LOADERS.get(str(fmt).strip().lower())
    if loader is None:
        raise ConfigError(
            "data.format", f"unknown detection datalist format {fmt!r}", f"use one of {', '.join(FORMATS)}"
        )
    return loader(path, **options)


# ---- checks before training ---------------------------------------------------------------------------------


def check_volumes(
    items: Sequence[dict[str, Any]],
    *,
    skip_bad: bool = False,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    irregular: str = "refuse",
) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Check every volume from its header(s) before training, and report all problems together.

    Problems: a missing or unreadable image or mask; a 2D image (or a single slice) given to the 3D
    pipeline; a voxel spacing that is missing or zero (singular affine, NIfTI pixdim 0, DICOM without
    PixelSpacing); a box outside the image bounds (named by its index); a mask whose shape or affine differs
    from the image's; the ``problem`` a loader recorded. Only headers are read (DICOM pixel data stays on
    disk), except for multi-frame DICOM files, whose frame geometry the reader decodes.

    Args:
        items: detection items (:func:`load_detection_datalist`).
        skip_bad: drop the bad items and go on instead of raising.
        max_voxels: size guard of the header reads.
        irregular: ``"resample"`` accepts DICOM series with gaps or uneven steps (the reader resamples them,
            ``data.volume.irregular``); ``"refuse"`` lists them as problems.

    Returns:
        ``(good items (copies, with ``n_channels``: the image's channel / sequence count), [(item, reason),
        ...])`` where ``item`` is ``"<source> (<image>)"``.

    Raises:
        DataError: there are problems and ``skip_bad`` is false; it lists all of them (the first 20 in the
            message, all in its ``problems`` attribute).

    Example:
        >>> ok, problems = check_volumes([])
        >>> ok, problems
        ([], [])
    """
    kept: list[dict[str, Any]] = []
    problems: list[tuple[str, str]] = []
    for item in items:
        name = f"{item.get('source') or '?'} ({item.get(IMAGE, '?')})"
        reasons, header = _item_problems(item, max_voxels, irregular)
        if reasons:
            problems.append((name, "; ".join(reasons)))
        else:
            kept.append({**item, N_CHANNELS: int(header.n_channels) if header is not None else 1})
    if problems and not skip_bad:
        error = DataError(
            datalist_name(items),
            f"{len(problems)} volume(s) cannot be used for 3D detection: "
            f"{join_problems([f'{name}: {reason}' for name, reason in problems])}",
            "fix or remove them, or skip them (skip_bad=True)",
        )
        error.problems = problems  # type: ignore[attr-defined]
        raise error
    return kept, problems


def _item_problems(
    item: dict[str, Any], max_voxels: int, irregular: str = "refuse"
) -> tuple[list[str], VolumeHeader | None]:
    """The item's problems, and the image header when it could be read."""
    if item.get(PROBLEM):
        return [str(item[PROBLEM])], None
    try:
        header = read_volume_header(item[IMAGE], max_voxels=max_voxels, irregular=irregular)
    except InputError as exc:
        return [f"image: {exc.reason}" + (f"; {exc.fix}" if exc.fix else "")], None
    return _volume_item_problems(item, header, max_voxels), header


def _volume_item_problems(item: dict[str, Any], header: VolumeHeader, max_voxels: int) -> list[str]:
    reasons = volume_problems(header)
    if reasons:
        return reasons
    reasons += box_problems(item.get(BOXES) or [], header.shape)
    labels = item.get(BOX_LABELS)
    if labels is not None and len(labels) != len(item.get(BOXES) or []):
        reasons.append(f"{len(labels)} box label(s) for {len(item.get(BOXES) or [])} box(es)")
    if item.get(MASK):
        try:
            mask = read_volume_header(item[MASK], max_voxels=max_voxels)
        except InputError as exc:
            return [*reasons, f"mask: {exc.reason}"]
        if tuple(mask.shape) != tuple(header.shape):
            reasons.append(f"mask shape {mask.shape} differs from the image shape {header.shape}")
        elif not np.allclose(mask.affine, header.affine, atol=1e-2):
            reasons.append("mask affine differs from the image affine (the mask is on another grid)")
    return reasons


# ---- sequences (channels) -----------------------------------------------------------------------------------


def sequence_names(fmt: str, path: PathLike) -> list[str] | None:
    """The sequence names of a JSON datalist's ``modality`` dict, in channel order; ``None`` without one.

    MSD Task01 writes ``"modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}``: channel ``i`` of
    every 4D image is sequence ``modality[str(i)]``. A CSV datalist has no names (``None``).

    Example:
        >>> sequence_names("csv", "manifest.csv") is None
        True
    """
    if str(fmt).strip().lower() not in ("detection", "decathlon"):
        return None
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    modality = doc.get("modality") if isinstance(doc, dict) else None
    if not isinstance(modality, dict) or not modality:
        return None
    try:
        keyed = sorted((int(str(k)), str(v)) for k, v in modality.items())
    except ValueError:
        return None
    if [k for k, _ in keyed] != list(range(len(keyed))):
        return None
    return [v for _, v in keyed]


@dataclass(frozen=True)
class Sequences:
    """The sequences a detector is trained on.

    Attributes:
        n_channels: channels (sequences) of every volume of the data set (1 for 3D volumes).
        available: names of those channels (the datalist's ``modality`` dict, else ``"0"``, ``"1"``, ...).
        channels: the channel indices given to the detector, in order; ``None`` = all, as they are.
        names: the names of the sequences given to the detector, in order.
    """

    n_channels: int
    available: list[str]
    channels: list[int] | None
    names: list[str]

    @property
    def count(self) -> int:
        """Sequences per input (the detector's ``sequences``)."""
        return len(self.names)


def _channel_list(items: Sequence[dict[str, Any]], n: int, limit: int = 5) -> str:
    names = [Path(str(i.get(IMAGE, "?"))).name for i in items if int(i.get(N_CHANNELS, 1)) == n]
    shown = ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
    return f"{n} in {len(names)} volume(s) ({shown})"


def resolve_sequences(
    items: Sequence[dict[str, Any]], asked: Sequence[int | str] | None, names: Sequence[str] | None = None
) -> Sequences:
    """Check that every volume has the same sequences and resolve ``data.volume.channels`` against them.

    Args:
        items: items kept by :func:`check_volumes` (they carry ``n_channels``).
        asked: ``data.volume.channels``: names (matched without regard to case) or indices; ``None`` = all.
        names: the datalist's sequence names (:func:`sequence_names`); used when their number matches.

    Raises:
        DataError: volumes with different channel counts (listed by count).
        SequenceError: a sequence asked for that the volumes do not have (naming a volume, its sequences and
            those asked for).
        ConfigError: a sequence asked for twice, or an empty list.

    Example:
        >>> items = [{"image": "/d/a.nii.gz", "n_channels": 4}, {"image": "/d/b.nii.gz", "n_channels": 4}]
        >>> s = resolve_sequences(items, ["t1gd", 0], ["FLAIR", "T1w", "t1gd", "T2w"])
        >>> s.channels, s.names
        ([2, 0], ['t1gd', 'FLAIR'])
    """
    counts = sorted({int(i.get(N_CHANNELS, 1)) for i in items})
    if len(counts) > 1:
        raise DataError(
            datalist_name(items),
            "the volumes have different numbers of sequences (channels): "
            + "; ".join(_channel_list(items, n) for n in counts),
            "give every volume the same sequences in the same order (a 4D NIfTI x, y, z, sequence), or list only "
            "volumes with the same sequences",
        )
    n = counts[0] if counts else 1
    available = [str(v) for v in names] if names is not None and len(names) == n else [str(i) for i in range(n)]
    if asked is None:
        return Sequences(n, available, None, list(available))
    if not len(asked):
        raise ConfigError("data.volume.channels", "is an empty list", "name at least one sequence, or use null (all)")
    lower = {name.lower(): i for i, name in enumerate(available)}
    chosen: list[int] = []
    unknown: list[str] = []
    for value in asked:
        if isinstance(value, int) and not isinstance(value, bool):
            index = value if 0 <= value < n else None
        elif str(value).strip().lower() in lower:
            index = lower[str(value).strip().lower()]
        elif str(value).strip().isdigit() and int(str(value).strip()) < n:
            index = int(str(value).strip())
        else:
            index = None
        if index is None:
            unknown.append(repr(value))
        else:
            chosen.append(index)
    if unknown:
        first = str(items[0].get(IMAGE, "?")) if items else datalist_name(items)
        has = ", ".join(f"{i} {name}" if name != str(i) else str(i) for i, name in enumerate(available))
        raise SequenceError(
            first,
            f"has {n} sequence(s) ({has}); data.volume.channels asks for {', '.join(map(repr, asked))}: "
            f"{', '.join(unknown)} not among them",
            "name sequences of the data set by name (the datalist's modality dict) or by index 0.."
            f"{n - 1}, or drop data.volume.channels (every sequence)",
        )
    if len(set(chosen)) != len(chosen):
        raise ConfigError("data.volume.channels", f"{list(asked)!r} names a sequence twice", "name each once")
    return Sequences(n, available, chosen, [available[i] for i in chosen])
