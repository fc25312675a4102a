"""DICOM reading: single files, multi-frame files and series folders.

:class:`DicomReader` is a MONAI :class:`~monai.data.ImageReader`, so ``LoadImage(reader=DicomReader())``
and ``LoadImaged`` use it. It follows MONAI's array conventions (spatial axes ``x = column``,
``y = row``, ``z = slice``; affine in RAS millimetres), and differs from MONAI's stock
``PydicomReader`` where that reader is wrong for clinical data:

* series slices are sorted by ImagePositionPatient projected on the slice normal, not by
  InstanceNumber, and the slice spacing comes from those positions;
* a folder holding several series is refused with their UIDs, or resolved by a selection rule;
* Rescale Slope/Intercept (or a Modality LUT) is applied and MONOCHROME1 is inverted, so that larger
  always means brighter; the VOI window is kept in the metadata for a windowing transform;
* a header that asks for more voxels than ``max_voxels`` is refused before any pixel is decoded.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import ImageReader
from monai.utils import MetaKeys, SpaceKeys

from medvision.constants import DEFAULT_MAX_VOXELS, KIND_DICOM_FILE, KIND_DICOM_SERIES
from medvision.errors import InputError, SeriesSelectionError, SizeLimitError, UnsupportedFormatError

PathLike = str | os.PathLike

# Elements larger than this are read from disk only when touched, so that the size guard runs on the
# header before pixel data is loaded.
_DEFER_SIZE = "64 KB"

_IMAGE_SOP_HINT = "medvision loads images only (CR, DX, CT, MR, SC and other pixel-data objects)"


def _pydicom():
    import pydicom

    return pydicom


@dataclass
class DicomImage:
    """What :meth:`DicomReader.read` returns: the datasets of one image, sorted, with their paths."""

    source: Path
    datasets: list[Any]
    paths: list[Path]
    kind: str
    positions: np.ndarray | None = None
    slice_spacing: float | None = None
    notes: list[str] = field(default_factory=list)


def read_dataset(path: PathLike, *, stop_before_pixels: bool = False, defer: bool = True) -> Any:
    """Read one DICOM file with pydicom, turning every failure into an :class:`InputError`.

    Args:
        path: the file.
        stop_before_pixels: read the header only.
        defer: leave large elements (pixel data) on disk until they are touched.

    Returns:
        The pydicom ``Dataset``.

    Example:
        >>> from pydicom.data import get_testdata_file
        >>> read_dataset(get_testdata_file("CT_small.dcm")).Modality
        'CT'
    """
    pydicom = _pydicom()
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InputError(path, f"cannot open file ({exc.strerror or exc})", "check the path") from exc
    if size == 0:
        raise InputError(path, "empty file (0 bytes)", "re-export or re-copy the file")
    kwargs: dict[str, Any] = {"stop_before_pixels": stop_before_pixels}
    if defer and not stop_before_pixels:
        kwargs["defer_size"] = _DEFER_SIZE
    try:
        return pydicom.dcmread(path, **kwargs)
    except pydicom.errors.InvalidDicomError:
        pass
    except (EOFError, OSError, ValueError, KeyError, TypeError, AttributeError, NotImplementedError) as exc:
        raise InputError(
            path, f"not a readable DICOM file ({type(exc).__name__}: {exc})", "re-export the file"
        ) from exc
    # No preamble: some exports omit the 128-byte preamble and 'DICM' prefix. Accept those only when
    # the forced parse yields a plausible image header, so that text renamed to .dcm is refused.
    try:
        ds = pydicom.dcmread(path, force=True, **kwargs)
        plausible = "SOPClassUID" in ds or ("Rows" in ds and "Columns" in ds)
    except Exception:  # noqa: BLE001 - any failure of a forced parse means "not DICOM"
        plausible = False
    if not plausible:
        raise InputError(
            path,
            "not a DICOM file (no 'DICM' prefix and no readable DICOM header)",
            "check that the file is DICOM, not text or another format",
        )
    return ds


def _n_frames(ds: Any) -> int:
    try:
        return max(int(ds.get("NumberOfFrames", 1) or 1), 1)
    except (TypeError, ValueError):
        return 1


def check_size(ds: Any, path: PathLike, max_voxels: int, n_files: int = 1) -> int:
    """Refuse a header that asks for more than ``max_voxels`` voxels, before any allocation.

    Returns:
        The number of voxels the header asks for.
    """
    if "Rows" not in ds or "Columns" not in ds:
        return 0
    rows, cols = int(ds.Rows or 0), int(ds.Columns or 0)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    voxels = rows * cols * _n_frames(ds) * samples * n_files
    if voxels > max_voxels:
        raise SizeLimitError(
            path,
            f"header asks for {voxels:,} voxels ({rows}x{cols}, {_n_frames(ds)} frame(s), "
            f"{n_files} file(s)), over the limit of {max_voxels:,}",
            "raise max_voxels (--max-voxels) if the image is genuine",
        )
    return voxels


def _transfer_syntax(ds: Any) -> Any:
    meta = getattr(ds, "file_meta", None)
    return getattr(meta, "TransferSyntaxUID", None) if meta is not None else None


def decode_stored(ds: Any, path: PathLike, *, view_only: bool = False) -> np.ndarray:
    """Decode the stored pixel values (frames, rows, cols[, samples]) with pydicom and its plugins.

    With ``view_only`` native (uncompressed) pixel data comes back as a read-only view of the file's
    bytes, without a copy (pydicom's ``view_only`` option).
    """
    pydicom = _pydicom()
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        sop = ds.get("SOPClassUID")
        name = getattr(sop, "name", sop) if sop else "unknown SOP class"
        raise InputError(path, f"no pixel data ({name})", _IMAGE_SOP_HINT)
    ts = _transfer_syntax(ds)
    if ts is not None and ts.is_compressed:
        from pydicom.pixels import get_decoder

        try:
            decoder = get_decoder(ts)
        except NotImplementedError as exc:
            raise UnsupportedFormatError(
                path,
                f"unsupported transfer syntax {ts} ({ts.name})",
                "convert the file to an uncompressed or JPEG/JPEG-LS/JPEG 2000/RLE syntax "
                "(e.g. 'gdcmconv --raw' or 'dcmdjpeg')",
            ) from exc
        if not decoder.is_available:
            missing = "; ".join(decoder.missing_dependencies) or "a decoder plugin"
            raise UnsupportedFormatError(path, f"no decoder installed for {ts.name}", f"install {missing}")
    try:
        if view_only:
            from pydicom.pixels import pixel_array

            arr = pixel_array(ds, view_only=True)
        else:
            arr = ds.pixel_array
    except (ValueError, EOFError, OSError) as exc:
        text = str(exc)
        if "length" in text or "truncat" in text.lower() or isinstance(exc, EOFError):
            raise InputError(
                path,
                f"pixel data is truncated or incomplete ({text.splitlines()[0]})",
                "re-export or re-copy the file",
            ) from exc
        raise InputError(path, f"pixel data cannot be decoded ({text.splitlines()[0]})", "re-export the file") from exc
    except (NotImplementedError, RuntimeError) as exc:
        raise UnsupportedFormatError(
            path, f"pixel data cannot be decoded ({str(exc).splitlines()[0]})", "convert the file with gdcmconv --raw"
        ) from exc
    except pydicom.errors.InvalidDicomError as exc:  # pragma: no cover - defensive
        raise InputError(path, f"invalid pixel data ({exc})", "re-export the file") from exc
    if _n_frames(ds) == 1 and arr.ndim == (2 if int(ds.get("SamplesPerPixel", 1) or 1) == 1 else 3):
        arr = arr[None]
    return arr


def _rescale(ds: Any) -> tuple[float, float]:
    """Rescale slope and intercept, from the top level or the (shared) functional groups."""
    for holder in (ds, *_functional_group_items(ds, "PixelValueTransformationSequence")):
        if "RescaleSlope" in holder or "RescaleIntercept" in holder:
            return float(holder.get("RescaleSlope", 1.0) or 1.0), float(holder.get("RescaleIntercept", 0.0) or 0.0)
    return 1.0, 0.0


def _functional_group_items(ds: Any, sequence: str, frame: int = 0) -> list[Any]:
    items = []
    for group_name, index in (("SharedFunctionalGroupsSequence", 0), ("PerFrameFunctionalGroupsSequence", frame)):
        groups = ds.get(group_name)
        if groups and len(groups) > index and sequence in groups[index] and groups[index][sequence]:
            items.append(groups[index][sequence][0])
    return items


def stored_value_range(ds: Any) -> tuple[float, float]:
    """Smallest and largest stored value that BitsStored and PixelRepresentation allow."""
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16)
    if int(ds.get("PixelRepresentation", 0) or 0) == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def to_brightness(stored: np.ndarray, ds: Any, dtype: Any = np.float32) -> np.ndarray:
    """Apply the modality transform and invert MONOCHROME1, so that larger always means brighter.

    Rescale is done in ``dtype`` (float32) rather than pydicom's float64 ``apply_modality_lut`` for
    speed on large radiographs; a Modality LUT sequence goes through pydicom's function. MONOCHROME1 is
    mirrored about the middle of the nominal output range (from BitsStored), so the result does not
    depend on the pixel content.
    """
    if ds.get("ModalityLUTSequence"):
        from pydicom.pixels import apply_modality_lut

        out = apply_modality_lut(stored, ds).astype(dtype)
        lo, hi = 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    else:
        slope, intercept = _rescale(ds)
        out = stored.astype(dtype, copy=True)
        if slope != 1.0:
            out *= slope
        if intercept != 0.0:
            out += intercept
        smin, smax = stored_value_range(ds)
        lo, hi = sorted((smin * slope + intercept, smax * slope + intercept))
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        np.subtract(lo + hi, out, out=out)
    return out


def _orientation(ds: Any) -> np.ndarray | None:
    for holder in (ds, *_functional_group_items(ds, "PlaneOrientationSequence")):
        iop = holder.get("ImageOrientationPatient")
        if iop is not None and len(iop) == 6:
            return np.asarray([float(v) for v in iop])
    return None


def _position(ds: Any, frame: int | None = None) -> np.ndarray | None:
    holders = [ds] if frame is None else _functional_group_items(ds, "PlanePositionSequence", frame)[-1:]
    for holder in holders:
        ipp = holder.get("ImagePositionPatient")
        if ipp is not None and len(ipp) == 3:
            return np.asarray([float(v) for v in ipp])
    return None


def pixel_spacing(ds: Any) -> tuple[float, float] | None:
    """(row spacing, column spacing) in mm: PixelSpacing, then ImagerPixelSpacing, then functional groups."""
    holders = [ds, *_functional_group_items(ds, "PixelMeasuresSequence")]
    for key in ("PixelSpacing", "ImagerPixelSpacing"):
        for holder in holders:
            value = holder.get(key)
            if value is not None and len(value) == 2 and all(float(v) > 0 for v in value):
                return float(value[0]), float(value[1])
    return None


def _series_key(ds: Any) -> str:
    return str(ds.get("SeriesInstanceUID", "") or "")


def _list_files(folder: Path) -> list[Path]:
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith(".") or name.upper() == "DICOMDIR":
                continue
            files.append(Path(root) / name)
    return files


def scan_folder(folder: PathLike) -> dict[str, list[tuple[Path, Any]]]:
    """Read the headers of every DICOM file below ``folder`` and group them by SeriesInstanceUID.

    Files that are not DICOM are skipped; a folder with no DICOM file raises.
    """
    pydicom = _pydicom()
    folder = Path(folder)
    groups: dict[str, list[tuple[Path, Any]]] = {}
    for path in _list_files(folder):
        try:
            if not pydicom.misc.is_dicom(path):
                continue
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - a bad file in a folder is skipped, the series goes on
            continue
        if "Rows" not in ds:
            continue  # SR, presentation states, ... : not part of an image series
        groups.setdefault(_series_key(ds), []).append((path, ds))
    if not groups:
        raise InputError(
            folder,
            "the folder does not seem to contain DICOM image files",
            "point to a folder of .dcm slices or to a single file",
        )
    return groups


def select_series(
    folder: PathLike, groups: dict[str, list[tuple[Path, Any]]], series_uid: str | None, rule: str
) -> list[tuple[Path, Any]]:
    """Pick one series out of ``groups`` by UID or by ``rule`` (``"error"`` or ``"largest"``)."""
    if series_uid is not None:
        if series_uid not in groups:
            raise SeriesSelectionError(
                folder, f"no series with SeriesInstanceUID {series_uid}", f"choose one of {sorted(groups)}"
            )
        return groups[series_uid]
    if len(groups) == 1:
        return next(iter(groups.values()))
    if rule == "largest":
        return max(groups.values(), key=lambda members: (len(members), _series_key(members[0][1])))
    described = ", ".join(
        f"{uid} ({members[0][1].get('Modality', '?')}, {len(members)} file(s)"
        f"{', ' + str(members[0][1].get('SeriesDescription')) if members[0][1].get('SeriesDescription') else ''})"
        for uid, members in sorted(groups.items())
    )
    raise SeriesSelectionError(
        folder,
        f"the folder holds {len(groups)} series: {described}",
        "pass one series folder, or select one with series_uid=UID (--series UID) or series_rule='largest'",
    )


def sort_slices(folder: PathLike, members: list[tuple[Path, Any]]) -> tuple[list[tuple[Path, Any]], np.ndarray, float]:
    """Sort slices along the slice normal (row cosine x column cosine), never by InstanceNumber.

    Returns:
        The sorted members, their positions (N, 3) in LPS mm, and the slice spacing in mm (median step).
    """
    first = members[0][1]
    iop = _orientation(first)
    if iop is None:
        raise InputError(
            folder, "slices have no ImageOrientationPatient", "the series cannot be stacked; load its files one by one"
        )
    normal = np.cross(iop[:3], iop[3:])
    keyed = []
    for path, ds in members:
        ipp = _position(ds)
        if ipp is None:
            raise InputError(path, "slice has no ImagePositionPatient", "re-export the series with geometry tags")
        this_iop = _orientation(ds)
        if this_iop is None or not np.allclose(this_iop, iop, atol=1e-3):
            raise InputError(path, "slice orientation differs from the rest of the series", "split the series")
        if (ds.Rows, ds.Columns) != (first.Rows, first.Columns):
            raise InputError(
                path, f"slice is {ds.Rows}x{ds.Columns}, the series {first.Rows}x{first.Columns}", "split the series"
            )
        keyed.append((float(np.dot(ipp, normal)), path, ds, ipp))
    keyed.sort(key=lambda item: item[0])
    along = np.array([k[0] for k in keyed])
    steps = np.diff(along)
    if len(steps) and np.min(steps) < 1e-3:
        dup = [str(keyed[i][1].name) for i in np.flatnonzero(steps < 1e-3)[:3]]
        raise InputError(
            folder,
            f"several slices share one position (e.g. {', '.join(dup)}): echoes or time points mixed in one series",
            "split the series by EchoNumbers/TemporalPositionIdentifier before loading",
        )
    spacing = float(np.median(steps)) if len(steps) else float(first.get("SliceThickness", 1.0) or 1.0)
    positions = np.stack([k[3] for k in keyed])
    return [(k[1], k[2]) for k in keyed], positions, spacing


def _lps_affine(
    iop: np.ndarray | None, origin: np.ndarray | None, spacing_rc: tuple[float, float], slice_step: np.ndarray | None
) -> np.ndarray:
    """Affine from array index (x = column, y = row, z = slice) to LPS mm."""
    affine = np.eye(4)
    row_spacing, col_spacing = spacing_rc
    if iop is None:
        affine[0, 0], affine[1, 1] = col_spacing, row_spacing
        if slice_step is not None:
            affine[2, 2] = float(np.linalg.norm(slice_step)) or 1.0
        return affine
    affine[:3, 0] = iop[:3] * col_spacing
    affine[:3, 1] = iop[3:] * row_spacing
    affine[:3, 2] = slice_step if slice_step is not None else np.cross(iop[:3], iop[3:])
    if origin is not None:
        affine[:3, 3] = origin
    return affine


def _age_years(value: Any) -> float | None:
    text = str(value or "").strip().upper()
    if len(text) < 2 or not text[:-1].isdigit():
        return None
    scale = {"Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}.get(text[-1])
    return None if scale is None else round(int(text[:-1]) * scale, 3)


def _multi_value(value: Any) -> list[float] | None:
    if value is None or value == "":
        return None
    values = value if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        return None


def normalised_meta(ds: Any) -> dict[str, Any]:
    """The header facts medvision uses, under stable names (no raw DICOM JSON)."""
    ts = _transfer_syntax(ds)
    slope, intercept = _rescale(ds)
    sop = ds.get("SOPClassUID")
    spacing_rc = pixel_spacing(ds)
    iop = _orientation(ds)
    return {
        "modality": str(ds.get("Modality", "") or ""),
        "photometric": str(ds.get("PhotometricInterpretation", "") or ""),
        "sop_class": getattr(sop, "name", str(sop or "")),
        "transfer_syntax": str(ts or ""),
        "transfer_syntax_name": getattr(ts, "name", ""),
        "study_uid": str(ds.get("StudyInstanceUID", "") or ""),
        "series_uid": str(ds.get("SeriesInstanceUID", "") or ""),
        "patient_id": str(ds.get("PatientID", "") or ""),
        "patient_sex": str(ds.get("PatientSex", "") or ""),
        "patient_age": _age_years(ds.get("PatientAge")),
        "view_position": str(ds.get("ViewPosition", "") or ""),
        "body_part": str(ds.get("BodyPartExamined", "") or ""),
        "pixel_spacing_mm": list(spacing_rc) if spacing_rc else None,
        "orientation": iop.tolist() if iop is not None else None,
        "rows": int(ds.get("Rows", 0) or 0),
        "columns": int(ds.get("Columns", 0) or 0),
        "bits_stored": int(ds.get("BitsStored", 0) or 0),
        "rescale_slope": slope,
        "rescale_intercept": intercept,
        "window_center": _multi_value(ds.get("WindowCenter")),
        "window_width": _multi_value(ds.get("WindowWidth")),
        "voi_lut_function": str(ds.get("VOILUTFunction", "") or ""),
        "has_voi_lut": bool(ds.get("VOILUTSequence")),
        "manufacturer": str(ds.get("Manufacturer", "") or ""),
    }


class DicomReader(ImageReader):
    """MONAI image reader for DICOM files, multi-frame files and series folders.

    Args:
        max_voxels: refuse headers asking for more voxels than this.
        series_uid: pick this series when a folder holds several.
        series_rule: ``"error"`` (default: refuse a folder with several series, naming them) or
            ``"largest"`` (take the series with most files).
        dtype: output array dtype.

    Example:
        >>> from monai.transforms import LoadImage
        >>> from pydicom.data import get_testdata_file
        >>> img = LoadImage(reader=DicomReader(), image_only=True)(get_testdata_file("CT_small.dcm"))
        >>> tuple(img.shape)
        (128, 128)
    """

    def __init__(
        self,
        *,
        max_voxels: int = DEFAULT_MAX_VOXELS,
        series_uid: str | None = None,
        series_rule: str = "error",
        dtype: Any = np.float32,
    ) -> None:
        super().__init__()
        if series_rule not in ("error", "largest"):
            raise ValueError(f"series_rule must be 'error' or 'largest', got {series_rule!r}")
        self.max_voxels = max_voxels
        self.series_uid = series_uid
        self.series_rule = series_rule
        self.dtype = dtype

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        """Directories, ``.dcm``/``.dicom``/``.ima`` files and suffix-less files that carry 'DICM'."""
        names = [filename] if isinstance(filename, str | os.PathLike) else list(filename)
        return all(_looks_like_dicom(Path(n)) for n in names)

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs: Any) -> DicomImage:
        """Read the header(s) of a file or series folder; pixel data stays on disk until ``get_data``."""
        if not isinstance(data, str | os.PathLike):
            if len(data) != 1:
                raise ValueError("DicomReader reads one file or one series folder at a time")
            data = data[0]
        path = Path(data)
        if path.is_dir():
            groups = scan_folder(path)
            members = select_series(path, groups, kwargs.get("series_uid", self.series_uid), self.series_rule)
            if len(members) == 1:
                return self._read_file(members[0][0])
            check_size(members[0][1], path, self.max_voxels, n_files=len(members))
            ordered, positions, spacing = sort_slices(path, members)
            return DicomImage(
                path,
                [ds for _, ds in ordered],
                [p for p, _ in ordered],
                KIND_DICOM_SERIES,
                positions=positions,
                slice_spacing=spacing,
            )
        return self._read_file(path)

    def _read_file(self, path: Path) -> DicomImage:
        ds = read_dataset(path)
        check_size(ds, path, self.max_voxels)
        return DicomImage(path, [ds], [path], KIND_DICOM_FILE)

    def get_data(self, img: DicomImage) -> tuple[np.ndarray, dict]:
        """Decode pixels and build MONAI metadata plus medvision's normalised metadata."""
        first = img.datasets[0]
        meta = normalised_meta(first)
        spacing_rc = pixel_spacing(first) or (1.0, 1.0)
        iop = _orientation(first)
        if img.kind == KIND_DICOM_SERIES:
            # The folder scan read headers only; each slice's pixels are read here, once.
            slices = []
            for p in img.paths:
                ds = read_dataset(p)
                slices.append(to_brightness(decode_stored(ds, p)[0], ds, self.dtype))
            stack = np.stack(slices)
            origin = img.positions[0]
            step = (img.positions[-1] - img.positions[0]) / (len(img.positions) - 1) if len(img.positions) > 1 else None
            meta["n_slices"] = len(img.datasets)
            meta["slice_spacing_mm"] = img.slice_spacing
            # All slices' instance UIDs are kept so a report can reference them.
            meta["sop_instance_uids"] = [str(ds.get("SOPInstanceUID", "")) for ds in img.datasets]
        else:
            stack = to_brightness(decode_stored(first, img.source), first, self.dtype)
            origin, step = _position(first), None
            n = stack.shape[0]
            meta["n_slices"] = n
            meta["sop_instance_uids"] = [str(first.get("SOPInstanceUID", ""))]
            if n > 1:
                frame_positions = [_position(first, i) for i in range(n)]
                if all(p is not None for p in frame_positions) and iop is not None:
                    pos = np.stack(frame_positions)
                    normal = np.cross(iop[:3], iop[3:])
                    order = np.argsort(pos @ normal, kind="stable")
                    stack, pos = stack[order], pos[order]
                    origin, step = pos[0], (pos[-1] - pos[0]) / (n - 1)
                    meta["slice_spacing_mm"] = float(np.linalg.norm(step))
                else:
                    meta["slice_spacing_mm"] = None
        samples = int(first.get("SamplesPerPixel", 1) or 1)
        # (frames, rows, cols[, samples]) -> MONAI order (cols, rows[, frames])[, samples]
        array = np.moveaxis(stack, (0, 1, 2), (2, 1, 0))
        if array.shape[2] == 1:
            array = array[:, :, 0]
        array = np.ascontiguousarray(array)
        spatial_ndim = array.ndim - (1 if samples > 1 else 0)
        affine = _lps_affine(iop, origin, spacing_rc, step if spatial_ndim == 3 else None)
        affine[:2] *= -1  # LPS -> RAS, as MONAI's readers do by default
        meta.update(
            {
                "kind": img.kind,
                "path": str(img.source),
                MetaKeys.AFFINE: affine,
                MetaKeys.ORIGINAL_AFFINE: affine.copy(),
                MetaKeys.SPATIAL_SHAPE: np.asarray(array.shape[:spatial_ndim]),
                MetaKeys.SPACE: SpaceKeys.RAS,
                MetaKeys.ORIGINAL_CHANNEL_DIM: -1 if samples > 1 else float("nan"),
                "spacing_mm": [spacing_rc[1], spacing_rc[0]]
                + ([meta.get("slice_spacing_mm") or 1.0] if spatial_ndim == 3 else []),
            }
        )
        return array, meta


def _looks_like_dicom(path: Path) -> bool:
    if path.is_dir():
        return True
    suffix = path.suffix.lower()
    if suffix in (".dcm", ".dicom", ".ima"):
        return True
    if suffix == "" and path.is_file():
        try:
            with path.open("rb") as fh:
                fh.seek(128)
                return fh.read(4) == b"DICM"
        except OSError:
            return False
    return False
