"""One entry point over the readers: pick the reader for a path, load it, summarise it."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import ImageReader

from medvision.constants import DEFAULT_MAX_VOXELS, IMAGE_SUFFIXES, NIFTI_SUFFIXES
from medvision.errors import InputError
from medvision.io._boundary import guarded
from medvision.io.dicom import DicomReader, _looks_like_dicom
from medvision.io.image2d import RadiographImageReader
from medvision.io.nifti import NiftiReader

PathLike = str | os.PathLike


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def reader_for(
    path: PathLike,
    *,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    series_uid: str | None = None,
    series_rule: str = "error",
    reorient_ras: bool = False,
    irregular: str = "refuse",
) -> ImageReader:
    """The medvision reader for ``path``: NIfTI by suffix, PNG/JPEG by suffix, DICOM otherwise.

    ``irregular`` (DICOM series and multi-frame files): ``"refuse"`` unevenly spaced slices, or
    ``"resample"`` them onto a regular grid (:class:`~medvision.io.DicomReader`).

    Raises:
        InputError: the path does not exist or is of a format medvision does not read.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file or folder", "check the path")
    if path.is_file() and _is_nifti(path):
        return NiftiReader(max_voxels=max_voxels, as_closest_canonical=reorient_ras)
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        return RadiographImageReader(max_voxels=max_voxels)
    if path.is_dir() or _looks_like_dicom(path) or path.is_file():
        # Files of unknown suffix are tried as DICOM; the reader says clearly when they are not.
        return DicomReader(max_voxels=max_voxels, series_uid=series_uid, series_rule=series_rule, irregular=irregular)
    raise InputError(path, "neither a file nor a folder", "pass a DICOM file, a series folder or a NIfTI file")


def load(path: PathLike, **options: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """Load a DICOM file, a DICOM series folder, a NIfTI volume or a PNG/JPEG radiograph.

    Args:
        path: what to load.
        **options: passed to :func:`reader_for` (``max_voxels``, ``series_uid``, ``series_rule``,
            ``reorient_ras``, ``irregular``).

    Returns:
        The array in MONAI's axis order (x, y[, z][, channel]) and its metadata (MONAI keys plus
        medvision's normalised keys such as ``modality``, ``study_uid``, ``spacing_mm``, ``kind``).

    Example:
        >>> from pydicom.data import get_testdata_file
        >>> array, meta = load(get_testdata_file("CT_small.dcm"))
        >>> meta["modality"], array.shape
        ('CT', (128, 128))
    """
    # The trust boundary: whatever a reader did not name itself leaves as a typed error about this path
    # (reader_for too: a path the OS refuses to stat, e.g. a name too long, raises OSError).
    with guarded(path, "reading the image"):
        reader = reader_for(path, **options)
        return reader.get_data(reader.read(str(path)))


def _finite(value: Any) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None


def summarise(array: np.ndarray, meta: dict[str, Any]) -> dict[str, Any]:
    """The facts ``medvision inspect`` prints for one loaded image, JSON-ready with every number finite.

    ``json.dumps(summary, allow_nan=False)`` always succeeds: voxel statistics are taken over the finite
    voxels and ``non_finite_voxels`` counts the others (a float NIfTI volume may hold NaN by design); any
    other number that is not finite becomes ``None`` (JSON null). ``notes`` lists the fallbacks the reader
    took (a spacing assumed, a transfer syntax inferred, a qform used ...).
    """
    spatial = [int(s) for s in np.asarray(meta.get("spatial_shape", array.shape))]
    values = np.asarray(array, dtype=np.float64) if array.dtype != np.float64 else array
    finite = np.isfinite(values)
    n_bad = int(values.size - np.count_nonzero(finite))
    if n_bad:
        values = values[finite]
    if values.size:
        low, high, mean = _finite(values.min()), _finite(values.max()), _finite(values.mean())
    else:
        low = high = mean = None
    return {
        "path": meta.get("path"),
        "kind": meta.get("kind"),
        "modality": meta.get("modality") or None,
        "photometric": meta.get("photometric") or None,
        "shape": spatial,
        "spacing_mm": [_finite(round(float(s), 6)) for s in meta.get("spacing_mm", [])],
        "dtype": str(array.dtype),
        "min": low,
        "max": high,
        "mean": mean,
        "non_finite_voxels": n_bad,
        "study_uid": meta.get("study_uid") or None,
        "series_uid": meta.get("series_uid") or None,
        "n_slices": int(meta.get("n_slices", 1)),
        "transfer_syntax": meta.get("transfer_syntax") or None,
        "orientation": meta.get("orientation_code") or None,
        "notes": [str(note) for note in meta.get("notes") or []],
    }
