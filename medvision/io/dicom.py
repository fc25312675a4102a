"""DICOM reading: single files, multi-frame files and series folders.

:class:`DicomReader` is a MONAI :class:`~monai.data.ImageReader`, so ``LoadImage(reader=DicomReader())``
and ``LoadImaged`` use it. It follows MONAI's array conventions (spatial axes ``x = column``,
``y = row``, ``z = slice``; affine in RAS millimetres), and differs from MONAI's stock
``PydicomReader`` where that reader is wrong for clinical data:

* series slices are sorted by ImagePositionPatient projected on the slice normal, not by
  InstanceNumber, and must form a regular grid (:mod:`medvision.io.geometry`: a missing slice, uneven
  steps, duplicate positions, gantry tilt or mixed slices are refused, or unevenly spaced slices resampled
  with ``irregular="resample"``); the affine and the slice spacing share one step;
* a folder holding several series is refused with their UIDs, or resolved by a selection rule;
* Rescale Slope/Intercept (or a Modality LUT) is applied and MONOCHROME1 is inverted, so that larger
  always means brighter; the VOI window is kept in the metadata for a windowing transform;
* a header that asks for more voxels than ``max_voxels`` is refused before any pixel is decoded.
"""

from __future__ import annotations

import io
import math
import os
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import ImageReader
from monai.utils import MetaKeys, SpaceKeys

from medvision.constants import DEFAULT_MAX_VOXELS, KIND_DICOM_FILE, KIND_DICOM_SERIES
from medvision.errors import (
    CorruptDataError,
    HeaderError,
    InputError,
    MedvisionError,
    SeriesSelectionError,
    SizeLimitError,
    UnsupportedFormatError,
)
from medvision.io._boundary import _first_line, guarded
from medvision.io.geometry import SliceInfo, StackGeometry, check_alike, check_irregular, check_stack, resample_stack

PathLike = str | os.PathLike

# Elements larger than this are read from disk only when touched, so that the size guard runs on the
# header before pixel data is loaded.
_DEFER_SIZE = "64 KB"

_IMAGE_SOP_HINT = "medvision loads images only (CR, DX, CT, MR, SC and other pixel-data objects)"


def _pydicom():
    import pydicom

    return pydicom


class _Refused:
    """What :meth:`DicomReader.read` returns for a DICOM path it refuses: any use raises the typed error."""

    __slots__ = ("error",)

    def __init__(self, error: MedvisionError) -> None:
        self.error = error

    def __getattr__(self, name: str) -> Any:
        raise self.error


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
    #: The checked slice geometry of a series (sort order, regular step, resampling plan).
    geometry: StackGeometry | None = None


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
        with _SizedFile(path) as fh:
            ds = pydicom.dcmread(fh, **kwargs)
    except pydicom.errors.InvalidDicomError:
        ds = None
    except (PermissionError, IsADirectoryError) as exc:
        reason = f"cannot open file ({exc.strerror or exc})"
        raise InputError(path, reason, "check the path and its permissions") from exc
    except zlib.error as exc:
        # pydicom inflates a deflated dataset whole while reading it: a cut or non-deflated body fails here.
        raise CorruptDataError(
            path,
            f"the dataset cannot be inflated ({_said(exc)}): {_element('TransferSyntaxUID')} says "
            "Deflated Explicit VR Little Endian, but the body is truncated or not deflate-compressed",
            _FIX_DATA,
        ) from exc
    except MemoryError as exc:
        raise SizeLimitError(
            path, "ran out of memory while reading the DICOM header: it is corrupt or too large", _FIX_DATA
        ) from exc
    except Exception as exc:  # noqa: BLE001 - EOFError, struct.error, ... from a damaged header: all named here
        raise CorruptDataError(
            path, f"not a readable DICOM file ({type(exc).__name__}: {_said(exc)})", _FIX_DATA
        ) from exc
    if ds is None:
        # No preamble: some exports omit the 128-byte preamble and 'DICM' prefix. Accept those only when
        # the forced parse yields a plausible image header, so that text renamed to .dcm is refused.
        try:
            with _SizedFile(path) as fh:
                ds = pydicom.dcmread(fh, force=True, **kwargs)
            plausible = "SOPClassUID" in ds or ("Rows" in ds and "Columns" in ds)
        except Exception:  # noqa: BLE001 - any failure of a forced parse means "not DICOM"
            plausible = False
        if not plausible:
            raise InputError(
                path,
                "not a DICOM file (no 'DICM' prefix and no readable DICOM header)",
                "check that the file is DICOM, not text or another format",
            )
    _check_vrs(ds, path, size)
    return ds


class _SizedFile(io.BufferedReader):
    """A binary file whose ``read(n)`` never asks for more bytes than the file has left.

    CPython's ``read(n)`` allocates ``n`` bytes before reading. pydicom reads the file meta, and elements
    shorter than the deferral size, with the length their header states: a corrupt length (4 GB in the
    file meta's OB element) would allocate gigabytes to read a few bytes. pydicom treats a
    ``BufferedReader`` like ``open(path, "rb")``: same name, deferred values re-read from the path.
    """

    def __init__(self, path: PathLike) -> None:
        super().__init__(io.FileIO(os.fspath(path), "rb"))
        self._size = os.fstat(self.fileno()).st_size

    def read(self, size: int | None = -1, /) -> bytes:
        if size is not None and size > 0:
            size = min(size, max(self._size - self.tell(), 0))
        return super().read(size)


def _check_vrs(ds: Any, path: PathLike, size: int | None = None) -> None:
    """Refuse a top-level element whose value representation is not a DICOM VR, or (``size``: the file's
    bytes) a deferred element whose stated length runs past the end of the file: a corrupt header.

    pydicom converts element values lazily and reads deferred ones (over 64 KB) only when touched, re-opening
    the file with plain ``open``: such an element would otherwise fail later, far from here, wherever it is
    first touched, and a corrupt length would first allocate that many bytes. The raw elements are scanned
    without converting or reading them. The pixel data are left to :func:`check_pixel_module`, which names
    a truncation with the bytes the header promises.
    """
    from pydicom.valuerep import VR

    known = {vr.value for vr in VR}  # with the ambiguous ones ('OB or OW') of implicit-VR files
    meta = getattr(ds, "file_meta", None)
    try:
        syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    except Exception:  # noqa: BLE001 - a damaged file meta is named later, by _transfer_syntax
        syntax = None
    if getattr(syntax, "is_transfer_syntax", False) and syntax.is_deflated:
        size = None  # value_tell counts in the inflated stream, not in the file
    for tag in ds.keys():
        elem = ds.get_item(tag, keep_deferred=True)  # (without keep_deferred pydicom reads deferred values)
        vr = elem.VR
        if vr is not None and vr not in known:
            raise HeaderError(
                path,
                f"{_tag_name(elem.tag)} has an unknown value representation {vr!r}: the header is corrupt",
                _FIX_DATA,
            )
        length, tell = getattr(elem, "length", None), getattr(elem, "value_tell", None)
        deferred = elem.value is None and length not in (None, 0, 0xFFFFFFFF) and tell is not None
        if size is not None and deferred and tag not in _PIXEL_TAGS and tell + length > size:
            raise HeaderError(
                path,
                f"{_tag_name(elem.tag)} states {length:,} bytes, past the end of the {size:,}-byte file: "
                "the header is corrupt or the file truncated",
                _FIX_DATA,
            )


# --- Header values, checked: every failure names the element as tag and keyword -----------------

# GDCM's DirectionCosines::IsValid (used by ITK's GDCMImageIO): squared norms within 1e-3 of 1, |dot| < 1e-3.
_IOP_TOLERANCE = 1e-3
_F32_MAX = float(np.finfo(np.float32).max)
# Plausibility bounds, far outside any scanner's (microscopy ~1e-4 mm .. dose grids ~10 mm per pixel): values
# beyond them are finite but corrupt, and 1e308 mm overflows the affine's column norms to inf.
_MIN_SPACING_MM, _MAX_SPACING_MM = 1e-6, 1e4
_MAX_POSITION_MM = 1e7
_FIX_HEADER = "correct the element (e.g. with dcmodify) or re-export the image from the scanner or PACS"
_FIX_DATA = "re-export or re-copy the file"


def _said(exc: BaseException) -> str:
    """What a library's exception says, on one line, for a message: without the word "unexpected", which the
    CLI keeps for errors medvision did not foresee (pydicom says "Unexpected tag ... at offset ...")."""
    return re.sub(r"(?i)\bunexpected\s*", "", _first_line(exc)) or type(exc).__name__


def _tag_name(tag: Any) -> str:
    """``(0028,0030) PixelSpacing``: a tag as error messages name it."""
    from pydicom.datadict import keyword_for_tag
    from pydicom.tag import Tag

    tag = Tag(tag)
    keyword = keyword_for_tag(tag)
    return f"({tag.group:04X},{tag.element:04X})" + (f" {keyword}" if keyword else "")


def _element(keyword: str) -> str:
    """``(0028,1053) RescaleSlope``: an element, by keyword, as error messages name it."""
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    return keyword if tag is None else f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {keyword}"


def _source(ds: Any, path: PathLike | None) -> PathLike:
    """The file an error is about: ``path``, else the file pydicom read ``ds`` from."""
    if path is not None:
        return path
    name = getattr(ds, "filename", None)
    return name if isinstance(name, str | os.PathLike) and name else "DICOM dataset"


def _shown(value: Any) -> str:
    """A value as DICOM writes it (multiple values joined by backslashes), shortened for messages."""
    if isinstance(value, bytes):
        text = value.decode("latin-1", "replace").strip(" \x00")
    elif isinstance(value, str) or not isinstance(value, Sequence):
        text = str(value)
    else:
        text = "\\".join(str(v) for v in value)
    text = "".join(c if c.isprintable() else "?" for c in text)  # one printable line, whatever the bytes
    return text if len(text) <= 60 else text[:57] + "..."


def _value(holder: Any, keyword: str, path: PathLike, what: str) -> Any:
    """``holder.get(keyword)``; pydicom converts the raw value on this first access, so a value that is
    not of its VR ('abc' in a DS) fails here and is reported with the element and what was expected."""
    try:
        return holder.get(keyword)
    except Exception as exc:  # noqa: BLE001 - ValueError, TypeError, NotImplementedError from pydicom's conversion
        raw = holder.get_item(keyword)
        shown = _shown(raw.value) if raw is not None and isinstance(raw.value, bytes) else _said(exc)
        raise HeaderError(path, f"{_element(keyword)} is '{shown}', not {what}", _FIX_HEADER) from exc


def _numbers(holder: Any, keyword: str, path: PathLike, count: int, what: str) -> list[float] | None:
    """The ``count`` values of a numeric element as finite floats; None when absent or empty.

    Raises:
        HeaderError: present with another number of values, a value that is not a number, NaN or inf.
    """
    value = _value(holder, keyword, path, what)
    if value is None or (isinstance(value, str | bytes) and not value.strip()):
        return None
    values = list(value) if isinstance(value, Sequence) and not isinstance(value, str | bytes) else [value]
    if not values:
        return None
    try:
        floats = [float(v) for v in values]
    except (TypeError, ValueError):
        floats = []
    if len(floats) != count or not all(math.isfinite(f) for f in floats):
        raise HeaderError(path, f"{_element(keyword)} is '{_shown(values)}', not {what}", _FIX_HEADER)
    return floats


def _integer(
    holder: Any,
    keyword: str,
    path: PathLike,
    *,
    default: int | None = None,
    allowed: tuple[int, ...] = (),
    low: int = 0,
) -> int | None:
    """An integer element; ``default`` when absent or empty, HeaderError when malformed or out of range."""
    what = f"one of {', '.join(map(str, allowed))}" if allowed else f"an integer >= {low}"  # (messages only)
    value = _value(holder, keyword, path, what)
    if value is None or (isinstance(value, str | bytes) and not value.strip()):
        return default
    try:
        number = int(value)
        ok = number == float(value) and (number in allowed if allowed else number >= low)
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise HeaderError(path, f"{_element(keyword)} is '{_shown(value)}', not {what}", _FIX_HEADER)
    return number


def _required_integer(ds: Any, keyword: str, path: PathLike, **kwargs: Any) -> int:
    number = _integer(ds, keyword, path, **kwargs)
    if number is None:
        raise HeaderError(path, f"{_element(keyword)} is missing; it is required to decode the pixel data", _FIX_HEADER)
    return number


def _n_frames(ds: Any, path: PathLike | None = None) -> int:
    """NumberOfFrames (1 when absent; 0 counts as 1, as pydicom's ``get_nr_frames`` does)."""
    return max(_integer(ds, "NumberOfFrames", _source(ds, path), default=1) or 1, 1)


def check_size(ds: Any, path: PathLike, max_voxels: int, n_files: int = 1) -> int:
    """Refuse a header that asks for more than ``max_voxels`` voxels, before any allocation.

    Returns:
        The number of voxels the header asks for.
    """
    if "Rows" not in ds or "Columns" not in ds:
        return 0
    rows = _integer(ds, "Rows", path, default=0) or 0
    cols = _integer(ds, "Columns", path, default=0) or 0
    samples = _integer(ds, "SamplesPerPixel", path, default=1) or 1
    frames = _n_frames(ds, path)
    voxels = rows * cols * frames * samples * n_files
    if voxels > max_voxels:
        raise SizeLimitError(
            path,
            f"header asks for {voxels:,} voxels ({rows}x{cols}, {frames} frame(s), "
            f"{n_files} file(s)), over the limit of {max_voxels:,}",
            "raise max_voxels (--max-voxels) if the image is genuine",
        )
    return voxels


_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
_RLE_LOSSLESS = "1.2.840.10008.1.2.5"
# Set on a dataset whose transfer syntax medvision inferred (see _transfer_syntax), for meta["notes"].
_SYNTAX_INFERRED = "_medvision_syntax_inferred"
# Set on a dataset by check_pixel_module: the notes of its last check.
_PIXEL_NOTES = "_medvision_pixel_notes"


def _pixel_keyword(ds: Any) -> str | None:
    return next((k for k in _PIXEL_KEYWORDS if k in ds), None)


def _encapsulated(ds: Any) -> bool:
    """Whether the pixel data are encapsulated (undefined length or a first item tag), without reading them."""
    elem = ds.get_item("PixelData", keep_deferred=True) if "PixelData" in ds else None
    if elem is None:
        return False
    if getattr(elem, "length", None) == 0xFFFFFFFF or getattr(elem, "is_undefined_length", False):
        return True
    value = elem.value
    return isinstance(value, bytes) and value[:4] == b"\xfe\xff\x00\xe0"


def _transfer_syntax(ds: Any, path: PathLike | None = None) -> Any:
    """The dataset's (0002,0010) TransferSyntaxUID, checked; inferred when the file meta lacks it.

    Without it pydicom still parses the dataset (it detects implicit/explicit VR and byte order from the
    bytes: ``ds.original_encoding``) but refuses to decode the pixels. Native pixel data depend on nothing
    more than that encoding, so the syntax is inferred from it, as pydicom parsed the header, written into the
    file meta so that pydicom decodes, and said in ``meta["notes"]``. Encapsulated (compressed) pixel data
    cannot be decoded without the codec's UID: refused.

    Raises:
        HeaderError: the UID is not a UID, or it is missing and cannot be inferred.
        UnsupportedFormatError: a well-formed UID that is no transfer syntax pydicom knows.
    """
    from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    where = _source(ds, path)
    meta = getattr(ds, "file_meta", None)
    ts = _value(meta, "TransferSyntaxUID", where, "a UID") if meta is not None else None
    element = _element("TransferSyntaxUID")
    if ts:
        if not isinstance(ts, UID) or not ts.is_valid:  # (a corrupt VR leaves bytes or several values)
            raise HeaderError(where, f"{element} is '{_shown(ts)}', not a valid UID", _FIX_DATA)
        if not ts.is_transfer_syntax:
            raise UnsupportedFormatError(
                where,
                f"{element} {ts} is not a transfer syntax pydicom knows (a private syntax or a damaged file meta)",
                "convert the file to a standard transfer syntax (e.g. 'gdcmconv --raw') or re-export it",
            )
        return ts
    encoding = tuple(getattr(ds, "original_encoding", (None, None)) or (None, None))
    inferred = {
        (True, True): ImplicitVRLittleEndian,
        (False, True): ExplicitVRLittleEndian,
        (False, False): ExplicitVRBigEndian,
    }.get(encoding)
    if inferred is None or _encapsulated(ds):
        why = "the pixel data are compressed (encapsulated), so their codec is unknown" if inferred else (
            "the dataset's encoding matches no transfer syntax"
        )
        raise HeaderError(
            where,
            f"no {element} in the file meta, and {why}",
            "re-export the file with its file meta information (e.g. 'dcmconv' or 'gdcmconv')",
        )
    if meta is None:
        from pydicom.dataset import FileMetaDataset

        ds.file_meta = meta = FileMetaDataset()
    meta.TransferSyntaxUID = inferred
    setattr(ds, _SYNTAX_INFERRED, True)
    return inferred


def check_pixel_module(ds: Any, path: PathLike | None = None) -> list[str]:
    """Check, before decoding, the Image Pixel elements pydicom needs and the bytes they promise.

    Refuses (HeaderError, naming the element) a missing or out-of-range Rows, Columns, SamplesPerPixel,
    PhotometricInterpretation, BitsAllocated, BitsStored, PixelRepresentation, PlanarConfiguration (colour) or
    NumberOfFrames. For native (uncompressed) pixel data it is also the allocation guard: the bytes that
    Rows x Columns x SamplesPerPixel x BitsAllocated/8 x NumberOfFrames promise (pydicom's
    ``get_expected_length``) must be the bytes the element holds and the file has; otherwise CorruptDataError
    naming (7FE0,0010) PixelData with both figures. So a header promising gigabytes in a small file fails
    before any allocation, and colour data declared with SamplesPerPixel 1 no longer load as extra grey
    frames. Accepted: the odd-length pad byte, and trailing padding shorter than one frame (pydicom ignores
    it too; pydicom's own MR_small_padded.dcm has 128 bytes), which is returned as a note.

    Returns:
        Notes on what was accepted (trailing padding), for ``meta["notes"]``.
    """
    where = _source(ds, path)
    keyword = _pixel_keyword(ds)
    notes = [] if keyword is None else _pixel_module_notes(ds, where, keyword)
    setattr(ds, _PIXEL_NOTES, notes)  # for normalised_meta, which would otherwise repeat the check
    return list(notes)


def _pixel_module_notes(ds: Any, where: PathLike, keyword: str) -> list[str]:
    from pydicom.pixels.utils import get_expected_length

    rows = _required_integer(ds, "Rows", where, low=1)
    cols = _required_integer(ds, "Columns", where, low=1)
    samples = _required_integer(ds, "SamplesPerPixel", where, low=1)
    photometric = _value(ds, "PhotometricInterpretation", where, "a photometric interpretation")
    if not str(photometric or "").strip():
        reason = f"{_element('PhotometricInterpretation')} is missing; it is required to decode the pixel data"
        raise HeaderError(where, reason, _FIX_HEADER)
    bits = _required_integer(ds, "BitsAllocated", where, allowed=(1, 8, 16, 32, 64))
    if keyword == "PixelData":
        stored = _required_integer(ds, "BitsStored", where, low=1)
        if stored > bits:
            reason = f"{_element('BitsStored')} is {stored}, more than {_element('BitsAllocated')} {bits}"
            raise HeaderError(where, reason, _FIX_HEADER)
        _required_integer(ds, "PixelRepresentation", where, allowed=(0, 1))
    if samples > 1:
        _required_integer(ds, "PlanarConfiguration", where, allowed=(0, 1))
    frames = _n_frames(ds, where)
    ts = _transfer_syntax(ds, where)
    if ts.is_compressed:
        return []
    element = _element(keyword)  # (messages only)
    elem = ds.get_item(keyword, keep_deferred=True)  # the raw element: a deferred value stays on disk
    declared = getattr(elem, "length", None)
    if declared == 0xFFFFFFFF or getattr(elem, "is_undefined_length", False):
        raise CorruptDataError(
            where,
            f"{element} is encapsulated (undefined length), but {_element('TransferSyntaxUID')} {ts} ({ts.name}) "
            "is a native (uncompressed) syntax",
            _FIX_DATA,
        )
    if elem.value is not None:  # already read: a small element, or a deflated dataset inflated in memory
        actual = len(elem.value)
    elif declared and ts.is_deflated:  # deferred within the inflated stream: value_tell is no file offset
        actual = declared  # (a cut deflate stream fails while inflating, in read_dataset)
    elif declared:  # deferred: its bytes are still in the file, from value_tell on
        try:
            actual = max(0, min(declared, os.stat(ds.filename).st_size - elem.value_tell))
        except (TypeError, OSError):
            actual = declared
    else:
        actual = 0
    expected = get_expected_length(ds, "bytes")
    extra = actual - expected
    if extra == 0 or (extra == 1 and expected % 2):
        return []
    layout = f"{rows}x{cols}, {samples} sample(s) of {bits} bits, {frames} frame(s)"
    if actual < expected:
        if actual == 0:
            reason = f"{element} is empty (0 bytes); the header promises {expected:,} bytes ({layout})"
        elif declared is not None and actual < declared:
            reason = (
                f"{element} is truncated: the file ends {actual:,} bytes into it; "
                f"the header promises {expected:,} bytes ({layout})"
            )
        else:
            reason = f"{element} holds {actual:,} bytes, the header promises {expected:,} ({layout}): truncated data"
        raise CorruptDataError(where, reason, _FIX_DATA)
    frame_bytes = max(expected // frames, 1)
    if extra >= frame_bytes:
        raise CorruptDataError(
            where,
            f"{element} holds {actual:,} bytes, {actual / expected:.3g} times the {expected:,} the header promises "
            f"({layout}): e.g. colour data declared with {_element('SamplesPerPixel')} 1, or a wrong "
            f"{_element('NumberOfFrames')}",
            "correct the header (e.g. with dcmodify) or re-export the image",
        )
    return [f"{element} has {extra:,} bytes of trailing padding after the {expected:,} the header promises: ignored"]


def decode_stored(ds: Any, path: PathLike, *, view_only: bool = False) -> np.ndarray:
    """Decode the stored pixel values (frames, rows, cols[, samples]) with pydicom and its plugins.

    With ``view_only`` native (uncompressed) pixel data comes back as a read-only view of the file's
    bytes, without a copy (pydicom's ``view_only`` option).
    """
    keyword = _pixel_keyword(ds)
    if keyword is None:
        sop = ds.get("SOPClassUID")
        name = getattr(sop, "name", sop) if sop else "unknown SOP class"
        raise InputError(path, f"no pixel data ({name})", _IMAGE_SOP_HINT)
    ts = _transfer_syntax(ds, path)
    check_pixel_module(ds, path)
    element = _element(keyword)
    if ts.is_compressed:
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
    # RLE goes through pydicom's own NumPy decoder, not pylibjpeg-rle: on a damaged stream that Rust extension
    # panics (index out of bounds; found by the fuzz harness), which prints a Rust backtrace on stderr past any
    # Python handler. pydicom's decoder checks its bounds and raises; it costs ~13 ms instead of ~1 ms per
    # 512 x 512 16-bit frame.
    plugin = {"decoding_plugin": "pydicom"} if ts == _RLE_LOSSLESS else {}
    try:
        if view_only or plugin:
            from pydicom.pixels import pixel_array

            arr = pixel_array(ds, view_only=view_only, **plugin)
        else:
            arr = ds.pixel_array
    except MemoryError as exc:
        raise SizeLimitError(
            path,
            f"ran out of memory while decoding {element}: the image is larger than this machine can hold",
            "lower --max-voxels to refuse such files before decoding",
        ) from exc
    except StopIteration as exc:  # pydicom's fragment generator, on broken encapsulation (no message)
        raise CorruptDataError(
            path,
            f"{element} encapsulation is broken: fewer compressed fragments than the {_n_frames(ds, path)} "
            "frame(s) the header declares",
            _FIX_DATA,
        ) from exc
    except (ValueError, EOFError, OSError, zlib.error) as exc:
        text = _said(exc)
        if "encapsulated" in text or "Basic Offset Table" in text or "fragment" in text:
            raise CorruptDataError(path, f"{element} encapsulation is broken ({text})", _FIX_DATA) from exc
        if "length" in text or "truncat" in text.lower() or isinstance(exc, EOFError):
            raise CorruptDataError(path, f"{element} is truncated or incomplete ({text})", _FIX_DATA) from exc
        raise CorruptDataError(path, f"{element} cannot be decoded ({text})", _FIX_DATA) from exc
    except NotImplementedError as exc:
        raise UnsupportedFormatError(
            path, f"{element} cannot be decoded ({_said(exc)})", "convert the file with gdcmconv --raw"
        ) from exc
    except RuntimeError as exc:
        # pydicom: "Unable to decode as exceptions were raised by all available plugins:" + one line per plugin.
        # The decoder is installed (checked above), so the compressed stream itself is damaged.
        details = "; ".join(line.strip() for line in str(exc).splitlines()[1:] if line.strip())
        details = re.sub(r"(?i)\bunexpected\s*", "", details) or _said(exc)
        raise CorruptDataError(
            path,
            f"{element} cannot be decoded as {getattr(ts, 'name', ts)} ({details[:300]})",
            "re-export the file; if another viewer opens it, convert it with 'gdcmconv --raw'",
        ) from exc
    except Exception as exc:  # noqa: BLE001 - struct.error, IndexError, ... from a damaged pixel stream
        raise CorruptDataError(
            path, f"{element} cannot be decoded ({type(exc).__name__}: {_said(exc)})", _FIX_DATA
        ) from exc
    except BaseException as exc:
        # A Rust decoder's panic arrives as pyo3's PanicException, a BaseException: typed here, anything else
        # (KeyboardInterrupt, SystemExit) goes on.
        if type(exc).__name__ != "PanicException":
            raise
        raise CorruptDataError(
            path, f"{element} cannot be decoded (the decoder failed: {_said(exc)})", _FIX_DATA
        ) from exc
    samples = _integer(ds, "SamplesPerPixel", path, default=1) or 1
    if _n_frames(ds, path) == 1 and arr.ndim == (2 if samples == 1 else 3):
        arr = arr[None]
    return arr


def _rescale(ds: Any, path: PathLike | None = None) -> tuple[float, float]:
    """Rescale slope and intercept, from the top level or the (shared) functional groups, checked.

    Raises:
        HeaderError: a slope or intercept that is not one finite number, a slope of 0, or a pair that takes
            the stored value range beyond float32 (slope 1e308: every voxel would become inf).
    """
    where = _source(ds, path)
    for holder in (ds, *_functional_group_items(ds, "PixelValueTransformationSequence", path=where)):
        if "RescaleSlope" in holder or "RescaleIntercept" in holder:
            slope_values = _numbers(holder, "RescaleSlope", where, 1, "a finite number")
            intercept_values = _numbers(holder, "RescaleIntercept", where, 1, "a finite number")
            slope = 1.0 if slope_values is None else slope_values[0]
            intercept = 0.0 if intercept_values is None else intercept_values[0]
            if slope == 0.0:
                raise HeaderError(
                    where, f"{_element('RescaleSlope')} is '0': every pixel would get the same value", _FIX_HEADER
                )
            smin, smax = stored_value_range(ds, where)
            for end in (smin * slope + intercept, smax * slope + intercept):
                if not math.isfinite(end) or abs(end) > _F32_MAX:
                    raise HeaderError(
                        where,
                        f"{_element('RescaleSlope')} {slope:g} and {_element('RescaleIntercept')} {intercept:g} take "
                        f"the stored range {smin}..{smax} to {end:g}, beyond the float32 range",
                        _FIX_HEADER,
                    )
            return slope, intercept
    return 1.0, 0.0


def _functional_group_items(ds: Any, sequence: str, frame: int = 0, path: PathLike | None = None) -> list[Any]:
    where = _source(ds, path)
    items = []
    for group_name, index in (("SharedFunctionalGroupsSequence", 0), ("PerFrameFunctionalGroupsSequence", frame)):
        groups = _sequence(ds, group_name, where)
        if groups and len(groups) > index and sequence in groups[index]:
            inner = _sequence(groups[index], sequence, where)
            if inner:
                items.append(inner[0])
    return items


def _sequence(holder: Any, keyword: str, path: PathLike) -> Any:
    """A sequence element's items (None when absent); HeaderError when a corrupt header made it something else."""
    from pydicom.sequence import Sequence as DicomSequence

    value = _value(holder, keyword, path, "a sequence")
    if value is None or isinstance(value, DicomSequence):
        return value
    reason = f"{_element(keyword)} is not a sequence ('{_shown(value)}'): the header is corrupt"
    raise HeaderError(path, reason, _FIX_DATA)


def stored_value_range(ds: Any, path: PathLike | None = None) -> tuple[float, float]:
    """Smallest and largest stored value that BitsStored and PixelRepresentation allow."""
    where = _source(ds, path)
    bits = _integer(ds, "BitsStored", where, low=1) or _integer(ds, "BitsAllocated", where, low=1) or 16
    bits = min(bits, 64)
    if _integer(ds, "PixelRepresentation", where, default=0) == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _modality_lut_bits(ds: Any, path: PathLike) -> int | None:
    """Bits per entry of a Modality LUT (None without one), after checking what pydicom will read.

    pydicom's ``apply_modality_lut`` trusts the descriptor: 99 bits per entry gives numpy dtype 'uint99'
    (TypeError), an entry count that LUTData does not hold gives struct.error. Both are named here.
    """
    seq = _sequence(ds, "ModalityLUTSequence", path)
    if not seq:
        return None
    where_lut = f"in {_element('ModalityLUTSequence')}"
    desc = _numbers(seq[0], "LUTDescriptor", path, 3, f"three integers (entries, first value, bits) {where_lut}")
    if desc is None:
        raise HeaderError(path, f"{_element('LUTDescriptor')} is missing {where_lut}", _FIX_HEADER)
    entries, first, bits = desc
    if any(v != int(v) for v in desc) or bits not in (8, 16) or not 0 <= entries <= 65535:
        shown = "\\".join(f"{v:g}" for v in desc)
        raise HeaderError(
            path,
            f"{_element('LUTDescriptor')} {where_lut} is '{shown}', not entries (0..65535, 0 = 65536), "
            "first value and 8 or 16 bits per entry",
            _FIX_HEADER,
        )
    n_entries = int(entries) or 65536
    data = _value(seq[0], "LUTData", path, "LUT entries")
    if data is None:
        raise HeaderError(path, f"{_element('LUTData')} is missing {where_lut}", _FIX_HEADER)
    if isinstance(data, bytes):
        count = len(data) // 2  # OW: pydicom reads 16-bit words whatever the nominal depth
    else:
        count = len(data) if isinstance(data, Sequence) and not isinstance(data, str) else 1
    if count != n_entries:
        raise HeaderError(
            path,
            f"{_element('LUTData')} {where_lut} holds {count:,} entries, {_element('LUTDescriptor')} promises "
            f"{n_entries:,}",
            _FIX_HEADER,
        )
    return int(bits)


def to_brightness(stored: np.ndarray, ds: Any, dtype: Any = np.float32, path: PathLike | None = None) -> np.ndarray:
    """Apply the modality transform and invert MONOCHROME1, so that larger always means brighter.

    Rescale is done in ``dtype`` (float32) rather than pydicom's float64 ``apply_modality_lut`` for
    speed on large radiographs; a Modality LUT sequence goes through pydicom's function. MONOCHROME1 is
    mirrored about the middle of the nominal output range (from BitsStored), so the result does not
    depend on the pixel content.

    The result is finite: integer stored values with a checked slope and intercept (:func:`_rescale`
    bounds the whole stored range within float32) or a checked LUT cannot give NaN or inf, so only float
    pixel data (FloatPixelData, DoubleFloatPixelData) are scanned for them.

    Raises:
        HeaderError: a malformed rescale or Modality LUT, named.
        CorruptDataError: float pixel data holding NaN or inf.
    """
    where = _source(ds, path)
    lut_bits = _modality_lut_bits(ds, where)
    if lut_bits is not None:
        from pydicom.pixels import apply_modality_lut

        try:
            out = apply_modality_lut(stored, ds).astype(dtype)
        except Exception as exc:  # noqa: BLE001 - what the checks above did not foresee, still named
            raise HeaderError(
                where,
                f"{_element('ModalityLUTSequence')} cannot be applied ({type(exc).__name__}: {_said(exc)})",
                _FIX_HEADER,
            ) from exc
        lo, hi = 0.0, float(2**lut_bits - 1)
    else:
        slope, intercept = _rescale(ds, where)
        out = stored.astype(dtype, copy=True)
        if slope != 1.0:
            out *= slope
        if intercept != 0.0:
            out += intercept
        smin, smax = stored_value_range(ds, where)
        lo, hi = sorted((smin * slope + intercept, smax * slope + intercept))
    if stored.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(out)))
        if bad:
            raise CorruptDataError(
                where, f"{_element(_pixel_keyword(ds) or 'PixelData')} holds {bad:,} NaN or infinite values", _FIX_DATA
            )
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        np.subtract(lo + hi, out, out=out)
    return out


def _orientation(ds: Any, path: PathLike | None = None) -> np.ndarray | None:
    """ImageOrientationPatient (top level, else functional groups) as 6 floats; None when absent.

    Raises:
        HeaderError: present but not six finite numbers, or the row and column cosines are not unit vectors
            at right angles within GDCM's tolerance (squared norms and dot product within 1e-3).

    Returns:
        The cosines, each vector normalised to unit length (a change below 5e-4 allowed by the tolerance).
    """
    where = _source(ds, path)
    for holder in (ds, *_functional_group_items(ds, "PlaneOrientationSequence", path=where)):
        iop = _numbers(holder, "ImageOrientationPatient", where, 6, "six finite numbers (row and column cosines)")
        if iop is None:
            continue
        row, col = np.asarray(iop[:3]), np.asarray(iop[3:])
        norm_r, norm_c, dot = float(row @ row), float(col @ col), float(row @ col)
        if abs(norm_r - 1) >= _IOP_TOLERANCE or abs(norm_c - 1) >= _IOP_TOLERANCE or abs(dot) >= _IOP_TOLERANCE:
            raise HeaderError(
                where,
                f"{_element('ImageOrientationPatient')} is '{_shown(iop)}': the row and column cosines must be "
                f"unit vectors at right angles (tolerance {_IOP_TOLERANCE:g}); their lengths are "
                f"{math.sqrt(norm_r):.4g} and {math.sqrt(norm_c):.4g}, their dot product {dot:.4g}",
                _FIX_HEADER,
            )
        # Within the tolerance the difference is rounding in the written decimals: normalised (as GDCM's
        # DirectionCosines::Normalize), so that the affine's column norms are exactly the pixel spacings.
        return np.concatenate([row / math.sqrt(norm_r), col / math.sqrt(norm_c)])
    return None


def _position(ds: Any, frame: int | None = None, path: PathLike | None = None) -> np.ndarray | None:
    """ImagePositionPatient of the file or of one frame (functional groups); None when absent.

    Raises:
        HeaderError: present but not three finite numbers.
    """
    where = _source(ds, path)
    holders = [ds] if frame is None else _functional_group_items(ds, "PlanePositionSequence", frame, path=where)[-1:]
    for holder in holders:
        ipp = _numbers(holder, "ImagePositionPatient", where, 3, "three finite numbers (x, y, z in mm)")
        if ipp is not None:
            if max(abs(v) for v in ipp) > _MAX_POSITION_MM:
                raise HeaderError(
                    where,
                    f"{_element('ImagePositionPatient')} is '{_shown(ipp)}': more than {_MAX_POSITION_MM:g} mm "
                    "from the origin",
                    _FIX_HEADER,
                )
            return np.asarray(ipp)
    return None


def _spacing_and_source(ds: Any, path: PathLike | None = None) -> tuple[tuple[float, float] | None, str | None]:
    where = _source(ds, path)
    holders = [ds, *_functional_group_items(ds, "PixelMeasuresSequence", path=where)]
    what = "two finite numbers > 0 (row, column spacing in mm)"
    for key in ("PixelSpacing", "ImagerPixelSpacing"):
        for holder in holders:
            value = _numbers(holder, key, where, 2, what)
            if value is None:
                continue
            if min(value) <= 0:
                raise HeaderError(where, f"{_element(key)} is '{_shown(value)}', not {what}", _FIX_HEADER)
            if not _MIN_SPACING_MM <= min(value) <= max(value) <= _MAX_SPACING_MM:
                raise HeaderError(
                    where,
                    f"{_element(key)} is '{_shown(value)}', outside {_MIN_SPACING_MM:g}..{_MAX_SPACING_MM:g} mm",
                    _FIX_HEADER,
                )
            return (value[0], value[1]), key
    return None, None


def pixel_spacing(ds: Any, path: PathLike | None = None) -> tuple[float, float] | None:
    """(row spacing, column spacing) in mm: PixelSpacing, then ImagerPixelSpacing, then functional groups.

    Returns None when none is present (a caller that falls back to 1 mm says so in ``meta["notes"]``;
    :func:`normalised_meta` adds that note).

    Raises:
        HeaderError: a spacing that is present but not two finite numbers > 0 (one value, text, 0, inf).
    """
    return _spacing_and_source(ds, path)[0]


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

    Files that are not DICOM (no 'DICM' prefix) are skipped; a folder with no DICOM file raises. A DICOM file
    whose header cannot be read is refused with the reason :func:`read_dataset` gives, naming the file:
    skipping it would drop a slice silently (a missing first or last slice leaves no gap to detect).
    """
    pydicom = _pydicom()
    folder = Path(folder)
    groups: dict[str, list[tuple[Path, Any]]] = {}
    for path in _list_files(folder):
        try:
            if not pydicom.misc.is_dicom(path):
                continue
        except OSError:  # unreadable (permissions, a broken link): not a file of the series
            continue
        ds = read_dataset(path, stop_before_pixels=True)
        with guarded(path, "reading the DICOM header", "remove the file from the folder or re-copy it"):
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


def _gantry_tilt(ds: Any) -> float | None:
    try:
        value = ds.get("GantryDetectorTilt")
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None


def sort_slices(
    folder: PathLike, members: list[tuple[Path, Any]], irregular: str = "refuse"
) -> tuple[list[tuple[Path, Any]], StackGeometry]:
    """Sort slices along the slice normal (row cosine x column cosine), never by InstanceNumber, and check
    that they form one regular volume (:mod:`medvision.io.geometry`: same size, samples, spacing and
    orientation; on one line along the normal; equal steps within 0.01 mm + 1 % of the median step).

    Args:
        folder: the series folder, for errors.
        members: ``(path, header)`` of each slice.
        irregular: ``"refuse"`` a gap or uneven steps, or plan to ``"resample"`` them onto a regular grid.

    Returns:
        The sorted members and their :class:`~medvision.io.geometry.StackGeometry`.

    Raises:
        GeometryError: the slices do not form a regular volume (the reason names slices and positions).
        HeaderError: a slice lacks, or has a malformed, ImagePositionPatient or ImageOrientationPatient.
    """
    infos = [
        SliceInfo(
            path.name,
            _position(ds),
            _orientation(ds),
            (_integer(ds, "Rows", path, default=0) or 0, _integer(ds, "Columns", path, default=0) or 0),
            _integer(ds, "SamplesPerPixel", path, default=1) or 1,
            pixel_spacing(ds),
        )
        for path, ds in members
    ]
    check_alike(folder, infos)
    geometry = check_stack(
        folder,
        [info.name for info in infos],
        np.stack([info.position for info in infos]),  # type: ignore[misc] - check_alike refused None
        infos[0].orientation,  # type: ignore[arg-type]
        pixel_spacing=infos[0].pixel_spacing,
        irregular=irregular,
        gantry_tilt=_gantry_tilt(members[0][1]),
    )
    return [members[i] for i in geometry.order], geometry


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
    """Numbers of a (multi-valued) element such as WindowCenter; None when absent, malformed or not finite."""
    if value is None or value == "":
        return None
    values = value if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        return None
    return numbers if numbers and all(math.isfinite(v) for v in numbers) else None


def _text(ds: Any, keyword: str, notes: list[str]) -> str:
    """A descriptive text element; one that cannot be decoded is left empty, with a note (not worth a refusal)."""
    try:
        return str(ds.get(keyword, "") or "")
    except Exception as exc:  # noqa: BLE001 - a value pydicom cannot convert: reported in the notes
        notes.append(f"{_element(keyword)} cannot be read ({type(exc).__name__}: {_said(exc)}): left empty")
        return ""


def normalised_meta(ds: Any, path: PathLike | None = None) -> dict[str, Any]:
    """The header facts medvision uses, under stable names (no raw DICOM JSON), every number finite.

    Fallbacks taken are listed in ``notes`` (present only when there are some): a transfer syntax inferred,
    a pixel spacing assumed or taken from ImagerPixelSpacing, trailing pixel-data padding, window values
    ignored. Geometry and rescale elements that are present but malformed raise :class:`HeaderError`.
    """
    where = _source(ds, path)
    notes: list[str] = []
    ts = _transfer_syntax(ds, where)
    if getattr(ds, _SYNTAX_INFERRED, False):
        notes.append(
            f"no {_element('TransferSyntaxUID')} in the file meta: {ts.name} inferred from the dataset's encoding "
            "(as pydicom parsed it)"
        )
    checked = getattr(ds, _PIXEL_NOTES, None)  # decode_stored (or DicomReader.read) checked it already
    notes += list(checked) if checked is not None else check_pixel_module(ds, where)
    slope, intercept = _rescale(ds, where)
    sop = _text(ds, "SOPClassUID", notes)
    spacing_rc, spacing_source = _spacing_and_source(ds, where)
    if spacing_rc is None:
        notes.append(
            f"no {_element('PixelSpacing')} or {_element('ImagerPixelSpacing')}: 1 mm per pixel assumed"
        )
    elif spacing_source == "ImagerPixelSpacing":
        notes.append(
            f"pixel spacing from {_element('ImagerPixelSpacing')} (at the detector, not corrected for magnification)"
        )
    iop = _orientation(ds, where)
    windows = {}
    for key, keyword in (("window_center", "WindowCenter"), ("window_width", "WindowWidth")):
        try:
            raw = ds.get(keyword)
        except Exception:  # noqa: BLE001 - a malformed VOI window is not needed to load the image
            raw = "?"
        windows[key] = _multi_value(raw)
        if raw not in (None, "") and windows[key] is None:
            notes.append(f"{_element(keyword)} is '{_shown(raw)}', not finite numbers: ignored")
    try:
        has_voi_lut = bool(ds.get("VOILUTSequence"))
    except Exception:  # noqa: BLE001 - as above
        has_voi_lut = False
    from pydicom.uid import UID

    meta = {
        "modality": _text(ds, "Modality", notes),
        "photometric": _text(ds, "PhotometricInterpretation", notes),
        "sop_class": UID(sop).name if sop else "",
        "transfer_syntax": str(ts or ""),
        "transfer_syntax_name": getattr(ts, "name", ""),
        "study_uid": _text(ds, "StudyInstanceUID", notes),
        "series_uid": _text(ds, "SeriesInstanceUID", notes),
        "patient_id": _text(ds, "PatientID", notes),
        "patient_sex": _text(ds, "PatientSex", notes),
        "patient_age": _age_years(_text(ds, "PatientAge", notes)),
        "view_position": _text(ds, "ViewPosition", notes),
        "body_part": _text(ds, "BodyPartExamined", notes),
        "pixel_spacing_mm": list(spacing_rc) if spacing_rc else None,
        "orientation": iop.tolist() if iop is not None else None,
        "rows": _integer(ds, "Rows", where, default=0),
        "columns": _integer(ds, "Columns", where, default=0),
        "bits_stored": _integer(ds, "BitsStored", where, default=0),
        "rescale_slope": slope,
        "rescale_intercept": intercept,
        "window_center": windows["window_center"],
        "window_width": windows["window_width"],
        "voi_lut_function": _text(ds, "VOILUTFunction", notes),
        "has_voi_lut": has_voi_lut,
        "manufacturer": _text(ds, "Manufacturer", notes),
    }
    if notes:
        meta["notes"] = notes
    return meta


class DicomReader(ImageReader):
    """MONAI image reader for DICOM files, multi-frame files and series folders.

    Args:
        max_voxels: refuse headers asking for more voxels than this.
        series_uid: pick this series when a folder holds several.
        series_rule: ``"error"`` (default: refuse a folder with several series, naming them) or
            ``"largest"`` (take the series with most files).
        dtype: output array dtype.
        irregular: a series (or multi-frame file) whose slices are not equally spaced along the normal:
            ``"refuse"`` (default: GeometryError naming the slices) or ``"resample"`` onto a regular grid
            (linear along the normal, step = the median step; ``meta["resampled"]`` and ``meta["notes"]``
            say so). Duplicate positions, tilt, in-plane shifts and mixed slices are refused either way.

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
        irregular: str = "refuse",
    ) -> None:
        super().__init__()
        if series_rule not in ("error", "largest"):
            raise ValueError(f"series_rule must be 'error' or 'largest', got {series_rule!r}")
        self.max_voxels = max_voxels
        self.series_uid = series_uid
        self.series_rule = series_rule
        self.dtype = dtype
        self.irregular = check_irregular(irregular)

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        """Directories, ``.dcm``/``.dicom``/``.ima`` files and suffix-less files that carry 'DICM'."""
        names = [filename] if isinstance(filename, str | os.PathLike) else list(filename)
        return all(_looks_like_dicom(Path(n)) for n in names)

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs: Any) -> DicomImage:
        """Read the header(s) of a file or series folder; pixel data stays on disk until ``get_data``.

        A DICOM path that medvision refuses comes back as a refused image whose ``get_data`` (or any attribute)
        raises the typed error, rather than raising here: MONAI's ``LoadImage`` would otherwise fall back to its
        stock readers and load what medvision refused. Paths that do not look like DICOM raise here.
        """
        if not isinstance(data, str | os.PathLike):
            if len(data) != 1:
                raise ValueError("DicomReader reads one file or one series folder at a time")
            data = data[0]
        path = Path(data)
        try:
            return self._read(path, **kwargs)
        except MedvisionError as exc:
            if not _looks_like_dicom(path):
                raise  # not DICOM: MONAI's LoadImage may try its other readers
            # MONAI's LoadImage falls back to its stock readers when ``read`` raises: a series medvision refused
            # (a missing slice, say) would then load silently through PydicomReader, sorted by InstanceNumber.
            # The refusal is handed back instead and raised by ``get_data`` (or by any use of the result).
            return _Refused(exc)  # type: ignore[return-value]

    def _read(self, path: Path, **kwargs: Any) -> DicomImage:
        # MONAI's LoadImage calls read/get_data directly (not through loader.load): same typed-error contract.
        with guarded(path, "reading the DICOM header(s)"):
            if not path.is_dir():
                return self._read_file(path)
            groups = scan_folder(path)
            members = select_series(path, groups, kwargs.get("series_uid", self.series_uid), self.series_rule)
            if len(members) == 1:
                return self._read_file(members[0][0])
            check_size(members[0][1], path, self.max_voxels, n_files=len(members))
            ordered, geometry = sort_slices(path, members, kwargs.get("irregular", self.irregular))
            if geometry.resampled:  # the resampled grid may hold more slices than the files
                check_size(members[0][1], path, self.max_voxels, n_files=max(geometry.n_out, len(members)))
            return DicomImage(
                path,
                [ds for _, ds in ordered],
                [p for p, _ in ordered],
                KIND_DICOM_SERIES,
                positions=geometry.positions,
                slice_spacing=geometry.spacing,
                notes=list(geometry.notes),
                geometry=geometry,
            )

    def _read_file(self, path: Path) -> DicomImage:
        ds = read_dataset(path)
        check_size(ds, path, self.max_voxels)
        # Before any pixel is read: the Image Pixel elements, and the bytes they promise against the file's
        # (normalised_meta repeats the check cheaply and puts what it accepted in meta["notes"]).
        check_pixel_module(ds, path)
        return DicomImage(path, [ds], [path], KIND_DICOM_FILE)

    def get_data(self, img: DicomImage) -> tuple[np.ndarray, dict]:
        """Decode pixels and build MONAI metadata plus medvision's normalised metadata."""
        if isinstance(img, _Refused):
            raise img.error
        with guarded(img.source, "decoding the DICOM pixel data"):
            return self._get_data(img)

    def _get_data(self, img: DicomImage) -> tuple[np.ndarray, dict]:
        first = img.datasets[0]
        meta = normalised_meta(first)
        spacing_rc = pixel_spacing(first) or (1.0, 1.0)
        iop = _orientation(first)
        notes = list(img.notes)
        resampled = False
        if img.kind == KIND_DICOM_SERIES:
            geometry = img.geometry
            if geometry is None:  # a DicomImage built by hand: check it now
                _, geometry = sort_slices(img.source, list(zip(img.paths, img.datasets, strict=True)), self.irregular)
            # The folder scan read headers only; each slice's pixels are read here, once.
            slices = []
            for p in img.paths:
                ds = read_dataset(p)
                slices.append(to_brightness(decode_stored(ds, p)[0], ds, self.dtype))
            stack = resample_stack(np.stack(slices), geometry, self.dtype)
            # One regular step for the affine and for spacing_mm (they used to differ: median vs mean).
            origin, step = geometry.origin, geometry.step
            resampled = geometry.resampled
            meta["n_slices"] = int(stack.shape[0])
            meta["slice_spacing_mm"] = geometry.spacing
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
                    # The same checks as for a series, on the frames' functional-group geometry.
                    rows, cols = stack.shape[1], stack.shape[2]  # decoded: the header's Rows and Columns
                    samples_pp = stack.shape[3] if stack.ndim == 4 else 1
                    infos = [
                        SliceInfo(
                            f"frame {i + 1}",
                            frame_positions[i],
                            _frame_orientation(img.source, first, i, iop),
                            (rows, cols),
                            samples_pp,
                            _frame_spacing(first, i, pixel_spacing(first)),
                        )
                        for i in range(n)
                    ]
                    check_alike(img.source, infos)
                    geometry = check_stack(
                        img.source,
                        [info.name for info in infos],
                        np.stack(frame_positions),  # type: ignore[arg-type]
                        iop,
                        pixel_spacing=pixel_spacing(first),
                        irregular=self.irregular,
                        gantry_tilt=_gantry_tilt(first),
                    )
                    stack = resample_stack(stack[geometry.order], geometry, self.dtype)
                    origin, step = geometry.origin, geometry.step
                    resampled = geometry.resampled
                    notes += geometry.notes
                    meta["n_slices"] = int(stack.shape[0])
                    meta["slice_spacing_mm"] = geometry.spacing
                else:
                    meta["slice_spacing_mm"] = None
        if img.kind == KIND_DICOM_SERIES or meta.get("slice_spacing_mm") is not None:
            meta["resampled"] = resampled
        if notes:
            meta["notes"] = [*meta.get("notes", []), *notes]
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


def _frame_orientation(path: Path, ds: Any, frame: int, default: np.ndarray) -> np.ndarray:
    """ImageOrientationPatient of one frame (per-frame PlaneOrientationSequence), else the shared one."""
    groups = ds.get("PerFrameFunctionalGroupsSequence")
    item = groups[frame] if groups and len(groups) > frame else None
    seq = item.get("PlaneOrientationSequence") if item is not None else None
    if not seq:
        return default
    values = _numbers(seq[0], "ImageOrientationPatient", path, 6, "six finite numbers (row and column cosines)")
    return default if values is None else np.asarray(values, dtype=np.float64)


def _frame_spacing(ds: Any, frame: int, default: tuple[float, float] | None) -> tuple[float, float] | None:
    """PixelSpacing of one frame (per-frame PixelMeasuresSequence), else the shared one."""
    groups = ds.get("PerFrameFunctionalGroupsSequence")
    item = groups[frame] if groups and len(groups) > frame else None
    seq = item.get("PixelMeasuresSequence") if item is not None else None
    if not seq or "PixelSpacing" not in seq[0]:
        return default
    try:
        value = [float(v) for v in seq[0].PixelSpacing]
    except (TypeError, ValueError):
        return None  # check_alike names the frame whose spacing differs
    return (value[0], value[1]) if len(value) == 2 else None


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
