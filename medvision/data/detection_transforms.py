"""MONAI dictionary transforms for 3D tumour detection: the boxes follow every spatial transform.

The chain that :func:`detection_transforms` builds (items from :mod:`medvision.data.detection`)::

    LoadVolumed                NIfTI (NiftiReader) or DICOM series (DicomReader), picked by path;
                               refuses a 2D image or a missing/zero spacing                  \\
    EnsureChannelFirstd        (C, x, y, z); MSD's 4D NIfTI keeps its sequences as channels  |
    SelectSequencesd           the sequences asked for (data.volume.channels, the model's)   |
                               and refuses a volume without them (when a selection is given) |
    EnsureTyped                image float32 MetaTensor; boxes float32, box_labels int64     |
    StandardizeEmptyBoxd       no boxes -> shape (0, 6)                                      |
    ShiftBoxd(-0.5)            box corners -> voxel-centre coordinates                       |
    AffineBoxToWorldCoordinated   boxes -> RAS mm with the loaded affine                     |  deterministic
    Orientationd("RAS")        image only; its affine follows                               |
    intensity                  CT: ScaleIntensityRanged on the HU window -> [0, 1], clipped  |
                               MR: ClipForegroundPercentilesd + NormalizeIntensityd(nonzero) |
    Spacingd(spacing)          image only, bilinear; its affine follows                      |
    AffineBoxToImageCoordinated   boxes -> voxel indices of the new grid                     |
    ShiftBoxd(+0.5)            voxel-centre coordinates -> box corners                       |
    ClipBoxToImaged            clip to the image, drop boxes (and labels) left empty         /
    RandZoomBoxd               zoom image and boxes together, same size     \\
    ClipBoxToImaged                                                        |
    RandFlipBoxd x3            one per axis                                |  train=True only
    RandRotateBox90d           in the x-y (axial) plane                    |
    EnsureTyped                image float32                               /

Decisions:

* Boxes are never resampled as masks: they go to world coordinates before the image is reoriented and
  resampled, and come back with the image's new affine (as MONAI's detection tutorial does), so that any
  combination of flips, axis permutations and spacing changes is followed exactly.
* Boxes are ``[min, max)`` in voxel indices (corners of voxels), while an affine maps voxel *centres*.
  MONAI's ``AffineBoxTo*Coordinated`` map the box numbers as they are, which shifts a box by one voxel
  when an axis is flipped (LPS -> RAS). :class:`ShiftBoxd` moves the boxes by half a voxel into
  voxel-centre coordinates around the world round trip, which makes flips exact and resampling correct to
  the voxel edge. Every step is invertible (``Compose.inverse`` maps predicted boxes back).
* Intensity runs on the native grid after reorientation, before resampling (as nnU-Net normalises
  before resampling): the statistics come from the acquired voxels, and the zero background of
  skull-stripped MR stays zero for ``NormalizeIntensityd(nonzero=True)``.
* MR: the foreground is the nonzero voxels (skull-stripped MSD / BraTS volumes have an exact zero
  background); the percentiles are taken over the foreground only, per channel, so that a large
  background does not pull the lower percentile to 0. A volume with a noisy background counts it as
  foreground.
* ``MedvisionCompose(log_stats=False)``: MONAI would log the whole sample (patient id included) when a
  transform fails, and the medvision error behind MONAI's ``RuntimeError`` is re-raised.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.apps.detection.transforms.dictionary import (
    AffineBoxToImageCoordinated,
    AffineBoxToWorldCoordinated,
    ClipBoxToImaged,
    RandFlipBoxd,
    RandRotateBox90d,
    RandZoomBoxd,
    StandardizeEmptyBoxd,
)
from monai.config import KeysCollection
from monai.transforms import (
    EnsureChannelFirstd,
    EnsureTyped,
    InvertibleTransform,
    LoadImaged,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    ScaleIntensityRanged,
    Spacingd,
)
from monai.transforms.transform import Transform

from medvision.constants import BOX_LABELS, BOXES, DEFAULT_MAX_VOXELS, IMAGE, NIFTI_SUFFIXES
from medvision.data.detection import read_volume_header, volume_problems
from medvision.data.transforms import MedvisionCompose
from medvision.errors import ConfigError, InputError, SequenceError
from medvision.io import DicomReader, NiftiReader

MODALITIES = ("CT", "MR")
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))

#: Default augmentation (``augment`` of :func:`detection_transforms`).
DEFAULT_DETECTION_AUGMENT: dict[str, Any] = {
    "enabled": True,
    "flip_prob": 0.5,
    "rotate90_prob": 0.5,
    "zoom_prob": 0.3,
    "zoom": (0.9, 1.1),
}


class LoadVolumed(LoadImaged):
    """``LoadImaged`` with medvision's readers, picked by path, and a check that the result is a 3D volume.

    ``.nii``/``.nii.gz`` go to :class:`~medvision.io.NiftiReader`, everything else (a series folder, a
    ``.dcm`` file) to :class:`~medvision.io.DicomReader`. The reader's errors come through unchanged.

    Args:
        keys: the key(s) holding a path.
        max_voxels: size guard applied to the header before decoding.
        allow_missing_keys: skip absent keys instead of failing.

    Raises:
        InputError: an unreadable file, a 2D image or a single slice, a missing or zero voxel spacing.

    Example:
        >>> import nibabel, pathlib
        >>> path = pathlib.Path(nibabel.__file__).parent / "tests" / "data" / "anatomical.nii"
        >>> tuple(LoadVolumed(keys="image")({"image": str(path)})["image"].shape)
        (33, 41, 25)
    """

    def __init__(
        self,
        keys: KeysCollection = IMAGE,
        *,
        max_voxels: int = DEFAULT_MAX_VOXELS,
        allow_missing_keys: bool = False,
        irregular: str = "refuse",  # DicomReader: refuse or resample unevenly spaced slices (data.volume.irregular)
    ) -> None:
        self.nifti_reader = NiftiReader(max_voxels=max_voxels)
        self.dicom_reader = DicomReader(max_voxels=max_voxels, irregular=irregular)
        with warnings.catch_warnings():
            # MONAI's LoadImage also builds its stock readers; one warns about a GPU codec that medvision never uses.
            warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader", category=UserWarning)
            super().__init__(
                keys, reader=self.nifti_reader, dtype=np.float32, image_only=True, allow_missing_keys=allow_missing_keys
            )

    def reader_for(self, path: str | os.PathLike) -> Any:
        """The NIfTI reader for ``.nii``/``.nii.gz`` files, the DICOM reader otherwise."""
        is_nifti = Path(path).name.lower().endswith(NIFTI_SUFFIXES) and not Path(path).is_dir()
        return self.nifti_reader if is_nifti else self.dicom_reader

    def __call__(self, data: Mapping[Hashable, Any], reader: Any = None) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            path = d[key]
            if not isinstance(path, str | os.PathLike):
                raise InputError(
                    str(key), f"expected a file path, got {type(path).__name__}", "put LoadVolumed first in the chain"
                )
            if not Path(path).exists():
                raise InputError(path, "file not found", "check the path in the datalist")
            picked = reader or self.reader_for(path)
            if picked is self.nifti_reader:
                # nibabel turns a zero pixdim into 1 mm while loading; only the stored header shows it.
                problems = volume_problems(read_volume_header(path, max_voxels=self.nifti_reader.max_voxels))
                if problems:
                    reason, _, fix = problems[0].partition("; ")
                    raise InputError(path, reason, fix or None)
            image = self._loader(path, picked)
            check_volume(image, path)
            d[key] = image
        return d


def check_volume(image: Any, path: str | os.PathLike) -> None:
    """Refuse a loaded image that is not a 3D volume with a usable voxel spacing.

    Raises:
        InputError: a 2D image, a single slice, or a singular affine / zero spacing.
    """
    meta = getattr(image, "meta", {})
    if str(meta.get("kind", "")).startswith("dicom") and (
        meta.get("pixel_spacing_mm") is None or (meta.get("n_slices", 1) > 1 and meta.get("slice_spacing_mm") is None)
    ):
        raise InputError(
            path,
            "voxel spacing missing (no PixelSpacing, or no slice positions)",
            "re-export the series with PixelSpacing and ImagePositionPatient",
        )
    spatial = [int(s) for s in np.asarray(meta.get("spatial_shape", image.shape))]
    if len(spatial) < 3 or min(spatial) <= 1:
        raise InputError(
            path,
            f"a 2D image given to the 3D detection pipeline (shape {tuple(spatial)})",
            "use a 3D volume (NIfTI or a DICOM series folder)",
        )
    affine = np.asarray(meta.get("affine", np.eye(4)), dtype=np.float64)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if not np.isfinite(affine).all() or spacing.min() < 1e-6 or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InputError(
            path,
            f"voxel spacing missing or zero ({', '.join(f'{s:g}' for s in spacing)} mm)",
            "set the voxel size in the header (NIfTI pixdim/sform, DICOM PixelSpacing and slice positions)",
        )


class SelectSequencesd(MapTransform):
    """Keep the sequences (channels) ``channels`` of a ``(C, x, y, z)`` image, in that order; refuse a volume
    without them.

    Args:
        keys: the image key(s).
        channels: channel indices to keep; ``None`` keeps every channel.
        expected: the channel count the volume must have (``None``: any count that holds ``channels``).
        wanted: what asks for the sequences, for the message (``"the model ... expects 4 sequences (FLAIR,
            T1w, t1gd, T2w)"``).
        fix: what to do about a volume without them.

    Raises:
        SequenceError: naming the file, its channel count and ``wanted``.

    Example:
        >>> image = torch.arange(3.0).reshape(3, 1, 1, 1)
        >>> SelectSequencesd("image", [2, 0])({"image": image})["image"].flatten().tolist()
        [2.0, 0.0]
    """

    def __init__(
        self,
        keys: KeysCollection,
        channels: Sequence[int] | None = None,
        *,
        expected: int | None = None,
        wanted: str = "",
        fix: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.channels = None if channels is None else [int(c) for c in channels]
        self.expected = None if expected is None else int(expected)
        self.wanted = wanted or (
            f"expected {self.expected} sequence(s)" if self.expected else f"asked for channels {self.channels}"
        )
        self.fix = fix

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            n = int(image.shape[0])
            missing = self.channels is not None and (max(self.channels, default=-1) >= n)
            if missing or (self.expected is not None and n != self.expected):
                path = str(getattr(image, "meta", {}).get("filename_or_obj", key))
                has = "1 sequence (a 3D volume)" if n == 1 else f"{n} sequences (channels of a 4D volume)"
                raise SequenceError(path, f"has {has}; {self.wanted}", self.fix)
            if self.channels is not None and self.channels != list(range(n)):
                d[key] = image[self.channels]
        return d


class ShiftBoxd(MapTransform, InvertibleTransform):
    """Add ``offset`` to every box coordinate (invertible).

    With ``offset=-0.5`` a ``[min, max)`` voxel box (voxel corners) becomes a box in voxel-centre
    coordinates, the coordinates an affine maps; ``+0.5`` goes back.

    Example:
        >>> ShiftBoxd("boxes", -0.5)({"boxes": torch.tensor([[1.0, 2, 3, 4, 5, 6]])})["boxes"].tolist()
        [[0.5, 1.5, 2.5, 3.5, 4.5, 5.5]]
    """

    def __init__(self, box_keys: KeysCollection, offset: float, allow_missing_keys: bool = False) -> None:
        super().__init__(box_keys, allow_missing_keys)
        self.offset = float(offset)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = d[key] + self.offset
            self.push_transform(d, key, extra_info={"offset": self.offset})
        return d

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            transform = self.get_most_recent_transform(d, key)
            d[key] = d[key] - transform["extra_info"]["offset"]
            self.pop_transform(d, key)
        return d


def clip_foreground_percentiles(image: torch.Tensor, lower: float, upper: float) -> torch.Tensor:
    """Clip the nonzero voxels of each channel to their own ``[lower, upper]`` percentiles; zeros stay 0.

    Example:
        >>> x = torch.tensor([[0.0, 1.0, 2.0, 3.0, 100.0]])
        >>> clip_foreground_percentiles(x, 0, 50).tolist()
        [[0.0, 1.0, 2.0, 2.5, 2.5]]
    """
    out = image.clone()
    for c in range(out.shape[0]):
        channel = out[c]
        foreground = channel != 0
        if not bool(foreground.any()):
            continue
        values = channel[foreground].detach().cpu().numpy().astype(np.float64)
        lo, hi = (float(v) for v in np.percentile(values, [lower, upper]))
        channel[foreground] = channel[foreground].clamp(lo, hi)
    return out


class ClipForegroundPercentilesd(MapTransform):
    """Dictionary version of :func:`clip_foreground_percentiles`.

    Example:
        >>> d = ClipForegroundPercentilesd("image", 0, 50)({"image": torch.tensor([[0.0, 1, 2, 3, 100]])})
        >>> d["image"].tolist()
        [[0.0, 1.0, 2.0, 2.5, 2.5]]
    """

    def __init__(self, keys: KeysCollection, lower: float, upper: float, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.lower, self.upper = float(lower), float(upper)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = clip_foreground_percentiles(d[key], self.lower, self.upper)
        return d


def _pair(value: Any, key: str, example: str) -> tuple[float, float]:
    ok = (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value)
        and value[0] < value[1]
    )
    if not ok:
        raise ConfigError(key, f"{value!r} is not a range (low, high) with low < high", f"use e.g. {example}")
    return float(value[0]), float(value[1])


def _spacing(spacing: Any) -> tuple[float, float, float]:
    values = [spacing] * 3 if isinstance(spacing, int | float) and not isinstance(spacing, bool) else spacing
    ok = (
        isinstance(values, list | tuple)
        and len(values) == 3
        and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in values)
    )
    if not ok:
        raise ConfigError(
            "data.spacing", f"{spacing!r} is not 3 positive voxel sizes in mm", "use e.g. [2.0, 2.0, 2.0]"
        )
    return float(values[0]), float(values[1]), float(values[2])


def _augment_settings(augment: Mapping[str, Any] | None) -> dict[str, Any]:
    settings = dict(DEFAULT_DETECTION_AUGMENT)
    for key, value in (augment or {}).items():
        if key not in DEFAULT_DETECTION_AUGMENT:
            raise ConfigError(
                f"augment.{key}", "unknown augmentation setting", f"use {', '.join(DEFAULT_DETECTION_AUGMENT)}"
            )
        settings[key] = value
    for key in ("flip_prob", "rotate90_prob", "zoom_prob"):
        value = settings[key]
        if not (isinstance(value, int | float) and not isinstance(value, bool) and 0.0 <= value <= 1.0):
            raise ConfigError(
                f"augment.{key}", f"{value!r} is outside [0, 1]", f"use e.g. {DEFAULT_DETECTION_AUGMENT[key]}"
            )
    zoom = settings["zoom"]
    ok = (
        isinstance(zoom, list | tuple)
        and len(zoom) == 2
        and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in zoom)
        and 0 < zoom[0] <= zoom[1]
    )
    if not ok:
        raise ConfigError(
            "augment.zoom", f"{zoom!r} is not a zoom range (low, high) with 0 < low <= high", "use e.g. [0.9, 1.1]"
        )
    low, high = float(zoom[0]), float(zoom[1])
    settings["zoom"] = (low, high)
    return settings


def detection_transforms(
    *,
    spacing: Sequence[float] | float = (2.0, 2.0, 2.0),
    modality: str = "MR",
    ct_window: Sequence[float] = (-1000, 400),
    mr_percentiles: Sequence[float] = (1, 99),
    train: bool = False,
    augment: Mapping[str, Any] | None = None,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    channels: Sequence[int] | None = None,
    expect_channels: int | None = None,
    sequences_wanted: str = "",
    sequences_fix: str | None = None,
    irregular: str = "refuse",
) -> MedvisionCompose:
    """The MONAI chain from a detection item to a RAS volume at ``spacing`` with its boxes (module docstring).

    Args:
        spacing: output voxel size in mm (x, y, z), or one number for isotropic voxels.
        modality: ``"CT"`` (Hounsfield window) or ``"MR"`` (percentile clip and z-score in the foreground).
        ct_window: HU range mapped to [0, 1] (values outside are clipped).
        mr_percentiles: lower and upper percentile of the foreground voxels to clip to.
        train: add the random augmentation (boxes follow it).
        augment: overrides of :data:`DEFAULT_DETECTION_AUGMENT`: ``flip_prob`` (per axis), ``rotate90_prob``
            (x-y plane; use an isotropic in-plane ``spacing``), ``zoom_prob``, ``zoom`` (range);
            ``{"enabled": False}`` turns it off.
        max_voxels: size guard of the loader.
        irregular: DICOM series with uneven slice steps: ``"refuse"`` or ``"resample"`` (data.volume.irregular).
        channels: the sequences (channel indices of the loaded volume) to keep, in this order; ``None``
            (default) keeps every channel (a 3D volume is one).
        expect_channels: the channel count every volume must have (the training set's); ``None``: not checked.
        sequences_wanted, sequences_fix: the reason and fix of the :class:`~medvision.errors.SequenceError`
            for a volume without those sequences (see :class:`SelectSequencesd`).

    Returns:
        A :class:`~medvision.data.transforms.MedvisionCompose`. Its output ``image`` is a float32
        MetaTensor ``(C, x, y, z)`` with the RAS affine of the new grid; ``boxes`` a float32 tensor ``(K, 6)``
        (``xyzxyz``, ``[min, max)`` voxel indices of that grid); ``box_labels`` an int64 tensor ``(K,)``.

    Raises:
        ConfigError: a bad spacing, modality, window, percentiles or augmentation setting.

    Example:
        >>> chain = detection_transforms(spacing=2.0, modality="CT", train=True)
        >>> [type(t).__name__ for t in chain.transforms][:3]
        ['LoadVolumed', 'EnsureChannelFirstd', 'EnsureTyped']
    """
    pixdim = _spacing(spacing)
    kind = str(modality).strip().upper()
    kind = {"MRI": "MR"}.get(kind, kind)
    if kind not in MODALITIES:
        raise ConfigError("data.modality", f"unknown modality {modality!r}", f"use one of {', '.join(MODALITIES)}")
    window = _pair(ct_window, "data.ct_window", "[-1000, 400]")
    percentiles = _pair(mr_percentiles, "data.mr_percentiles", "[1, 99]")
    if not (0.0 <= percentiles[0] and percentiles[1] <= 100.0):
        raise ConfigError("data.mr_percentiles", f"{mr_percentiles!r} is outside [0, 100]", "use e.g. [1, 99]")
    settings = _augment_settings(augment)

    image, boxes, labels = IMAGE, BOXES, BOX_LABELS
    intensity: list[Transform]
    if kind == "CT":
        intensity = [ScaleIntensityRanged(image, a_min=window[0], a_max=window[1], b_min=0.0, b_max=1.0, clip=True)]
    else:
        intensity = [
            ClipForegroundPercentilesd(image, *percentiles),
            NormalizeIntensityd(image, nonzero=True, channel_wise=True),
        ]
    chain: list[Transform] = [
        LoadVolumed(image, max_voxels=max_voxels, irregular=irregular),
        EnsureChannelFirstd(image),
        *(
            [SelectSequencesd(image, channels, expected=expect_channels, wanted=sequences_wanted, fix=sequences_fix)]
            if channels is not None or expect_channels is not None
            else []
        ),
        EnsureTyped(image, dtype=torch.float32),
        EnsureTyped(boxes, dtype=torch.float32, track_meta=False),
        EnsureTyped(labels, dtype=torch.long, track_meta=False),
        StandardizeEmptyBoxd(box_keys=boxes, box_ref_image_keys=image),
        ShiftBoxd(boxes, -0.5),
        AffineBoxToWorldCoordinated(box_keys=boxes, box_ref_image_keys=image),
        Orientationd(image, axcodes="RAS", labels=RAS_LABELS),
        *intensity,
        Spacingd(image, pixdim=pixdim, mode="bilinear"),
        AffineBoxToImageCoordinated(box_keys=boxes, box_ref_image_keys=image),
        ShiftBoxd(boxes, 0.5),
        ClipBoxToImaged(box_keys=boxes, label_keys=labels, box_ref_image_keys=image, remove_empty=True),
    ]
    if train and settings["enabled"]:
        low, high = settings["zoom"]
        if settings["zoom_prob"] > 0 and (low, high) != (1.0, 1.0):
            chain += [
                RandZoomBoxd(
                    image_keys=image,
                    box_keys=boxes,
                    box_ref_image_keys=image,
                    prob=float(settings["zoom_prob"]),
                    min_zoom=low,
                    max_zoom=high,
                    mode="trilinear",
                    padding_mode="constant",
                    keep_size=True,
                ),
                ClipBoxToImaged(box_keys=boxes, label_keys=labels, box_ref_image_keys=image, remove_empty=True),
            ]
        chain += [
            RandFlipBoxd(
                image_keys=image,
                box_keys=boxes,
                box_ref_image_keys=image,
                prob=float(settings["flip_prob"]),
                spatial_axis=axis,
            )
            for axis in range(3)
        ]
        chain += [
            RandRotateBox90d(
                image_keys=image,
                box_keys=boxes,
                box_ref_image_keys=image,
                prob=float(settings["rotate90_prob"]),
                max_k=3,
                spatial_axes=(0, 1),
            ),
            EnsureTyped(image, dtype=torch.float32),
        ]
    return MedvisionCompose(chain, log_stats=False)
