"""NIfTI reading through nibabel, as MONAI's :class:`~monai.data.NibabelReader` with guards.

MONAI's reader does the loading and (with ``as_closest_canonical=True``) the reorientation to RAS;
this subclass is the trust boundary for ``.nii`` and ``.nii.gz`` files:

* the header is read as stored (nibabel's ``check=False``: no silent repairs) and validated before any
  voxel is read: ``dim``, ``datatype`` (RGB, RGBA, complex and CIFTI-2 refused), ``vox_offset``,
  ``scl_slope``/``scl_inter``, ``pixdim``, the qform and the sform; each failure names the field;
* the affine follows the NIfTI rule (nibabel's ``get_best_affine``): the sform when ``sform_code > 0``,
  else the qform when ``qform_code > 0``, else the pixdim-only "method 1" affine; ``meta["affine_source"]``
  says which, ``meta["notes"]`` says when a fallback or a standard repair was taken;
* the bytes the header promises are checked against the file's size (``.nii``) or the gzip ISIZE
  trailer (``.nii.gz``) before anything is allocated, as is the voxel limit;
* a ``.nii.gz`` is decompressed once, with every gzip member's CRC-32 and length verified (RFC 1952),
  and nibabel reads the voxels from those verified bytes: a corrupt stream never yields changed voxels.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import NibabelReader
from monai.utils import MetaKeys, ensure_tuple

from medvision.constants import DEFAULT_MAX_VOXELS, KIND_NIFTI
from medvision.errors import (
    CorruptDataError,
    GeometryError,
    HeaderError,
    InputError,
    MedvisionError,
    SizeLimitError,
    UnsupportedFormatError,
)
from medvision.io._boundary import guarded

PathLike = str | os.PathLike

_REEXPORT = "re-export the file from the source scanner or tool"
_RECOPY = "re-copy or re-export the file (the gzip stream is damaged)"
_TRUNCATED = "re-copy or re-export the file (it is truncated)"
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20  # bytes read, and at most decompressed, per step of the gzip pass
#: NIfTI datatypes that medvision does not read as a grey volume (nibabel decodes them as structured or
#: complex arrays, which no model here takes).
_UNSUPPORTED_DATATYPES = {
    128: "NIFTI_TYPE_RGB24 (RGB colour voxels)",
    2304: "NIFTI_TYPE_RGBA32 (RGBA colour voxels)",
    32: "NIFTI_TYPE_COMPLEX64 (complex voxels)",
    1792: "NIFTI_TYPE_COMPLEX128 (complex voxels)",
    2048: "NIFTI_TYPE_COMPLEX256 (complex voxels)",
}
#: CIFTI-2 intent codes (NIFTI_INTENT_CONNECTIVITY_*: 3000-3099, CIFTI-2 specification, appendix A).
_CIFTI_INTENTS = range(3000, 3100)


@dataclass
class _Checked:
    """What the header validation found out about one file (kept for :meth:`NiftiReader.get_data`)."""

    path: Path
    klass: type
    gzipped: bool
    promised_bytes: int  # vox_offset + the voxel bytes
    affine_source: str
    notes: list[str] = field(default_factory=list)


class NiftiReader(NibabelReader):
    """MONAI reader for ``.nii`` and ``.nii.gz`` that validates the header and verifies gzip streams.

    Args:
        max_voxels: refuse headers asking for more voxels than this.
        as_closest_canonical: reorient to RAS (nibabel's ``as_closest_canonical``).
        allow_nonfinite: accept NaN/Inf voxels (replaced by 0) instead of refusing the file.
        dtype: output dtype.

    Raises (from :meth:`read` and :meth:`get_data`, all :class:`~medvision.errors.InputError`):
        HeaderError: a header field that is malformed, non-finite or invalid (the field is named).
        UnsupportedFormatError: CIFTI-2, RGB/RGBA or complex voxels.
        CorruptDataError: a truncated file, a damaged gzip stream or a failed CRC-32/length check.
        GeometryError: an affine that is singular (a voxel axis of length 0, or two parallel axes).
        SizeLimitError: more voxels than ``max_voxels``.

    Example:
        >>> import nibabel, pathlib
        >>> path = pathlib.Path(nibabel.__file__).parent / "tests" / "data" / "anatomical.nii"
        >>> reader = NiftiReader()
        >>> array, meta = reader.get_data(reader.read(path))
        >>> array.shape, meta["affine_source"]
        ((33, 41, 25), 'sform')
    """

    def __init__(
        self,
        *,
        max_voxels: int = DEFAULT_MAX_VOXELS,
        as_closest_canonical: bool = False,
        allow_nonfinite: bool = False,
        dtype: Any = np.float32,
    ) -> None:
        super().__init__(as_closest_canonical=as_closest_canonical)
        self.dtype = dtype
        self.max_voxels = max_voxels
        self.allow_nonfinite = allow_nonfinite

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs: Any) -> Any:
        """Validate each header (voxels stay on disk) and return nibabel image(s), as MONAI's reader does.

        Unlike MONAI's reader this does not call ``correct_nifti_header_if_necessary``: that helper
        silently swaps the sform for the qform (or rewrites pixdim) when they disagree, where the NIfTI
        standard says the sform rules; the disagreement is reported in ``meta["notes"]`` instead.
        """
        names = [data] if isinstance(data, str | os.PathLike) else list(data)
        self.filenames = tuple(ensure_tuple(names))
        options = {**self.kwargs, **kwargs}
        images = []
        for name in names:
            path = Path(name)
            checked = self._check_file(path)
            # The class comes from sizeof_hdr, as checked: nib.load's sniffing reads past a small gzip
            # stream's end and then says only "Cannot work out file type".
            try:
                with guarded(path, "reading the NIfTI header", _REEXPORT):
                    img = checked.klass.from_filename(path, **options)
            except CorruptDataError:
                if checked.gzipped:
                    _gunzip_verified(path, keep=0)  # names the gzip damage, if that is the cause
                raise
            _check_affine(path, np.asarray(img.affine, dtype=np.float64), _spatial_rank(img.header), "the affine")
            img._medvision_checked = checked  # what get_data needs: no second header pass
            images.append(img)
        return images if len(names) > 1 else images[0]

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        """Voxels and metadata; refuses NaN/Inf unless ``allow_nonfinite``.

        A ``.nii.gz`` is decompressed once here with its CRC-32 and length verified, and nibabel reads
        the voxels from those bytes (nibabel's own gzip reader stops at the last voxel byte and so never
        reaches the CRC).
        """
        images = list(img) if isinstance(img, list | tuple) else [img]
        checks = []
        verified = []
        streams = []
        for index, one in enumerate(images):
            checked = getattr(one, "_medvision_checked", None)
            if checked is None:  # an image not made by read(): validate its file now
                checked = self._check_file(Path(one.get_filename() or self.filenames[index]))
            checks.append(checked)
            if checked.gzipped:
                stream, _ = _gunzip_verified(checked.path, keep=checked.promised_bytes)
                streams.append(stream)
                with guarded(checked.path, "reading the verified NIfTI stream", _REEXPORT):
                    one = checked.klass.from_stream(stream)
            verified.append(one)
        self.filenames = tuple(str(c.path) for c in checks)  # MONAI's get_data pairs images with these
        path = checks[0].path
        with guarded(path, "decoding the NIfTI voxel data", _REEXPORT):
            array, meta = super().get_data(verified if isinstance(img, list | tuple) else verified[0])
            for stream in streams:  # nibabel copied the voxels out; free the decompressed bytes before the cast
                stream.close()
            with np.errstate(over="ignore", invalid="ignore"):  # overflow to inf is refused just below
                array = np.asarray(array, dtype=self.dtype)
        finite = np.isfinite(array)
        if not finite.all():
            bad = int(array.size - np.count_nonzero(finite))
            if not self.allow_nonfinite or bad == array.size:
                raise InputError(
                    path,
                    f"{bad:,} of {array.size:,} voxels are NaN or infinite",
                    "clean the volume (e.g. set NaN to 0) or pass allow_nonfinite=True",
                )
            array = np.where(finite, array, 0).astype(array.dtype)
        n_spatial = len(meta[MetaKeys.SPATIAL_SHAPE])
        if array.ndim > n_spatial + 1:  # (x, y, z, 1, c) and the like: validated to one non-singleton axis
            rest = [s for s in array.shape[n_spatial:] if s > 1] or [1]
            array = array.reshape(*array.shape[:n_spatial], *rest)
        affine = np.asarray(meta[MetaKeys.AFFINE], dtype=np.float64)
        zooms = _check_affine(path, affine, n_spatial, "the affine")
        meta.update(
            {
                "kind": KIND_NIFTI,
                "path": str(path),
                "modality": "",
                "photometric": "",
                "study_uid": "",
                "series_uid": "",
                "spacing_mm": [float(z) for z in zooms],
                "n_slices": int(meta[MetaKeys.SPATIAL_SHAPE][2]) if n_spatial >= 3 else 1,
                "orientation_code": "".join(_axcodes(affine)),
                "affine_source": checks[0].affine_source,
                "notes": list(checks[0].notes),
            }
        )
        return array, meta

    def _check_file(self, path: Path) -> _Checked:
        """Validate the stored header of ``path`` and the bytes it promises; nothing is decoded."""
        if not path.exists():
            raise InputError(path, "file not found", "check the path")
        size = path.stat().st_size
        if size == 0:
            raise InputError(path, "empty file (0 bytes)", "re-export or re-copy the file")
        gzipped = path.name.lower().endswith(".gz")
        with open(path, "rb") as handle:
            magic = handle.read(2)
        if gzipped and magic != _GZIP_MAGIC:
            raise CorruptDataError(
                path, "named .gz but not gzip-compressed (no gzip magic bytes 1f 8b)", "rename it to .nii"
            )
        if not gzipped and magic == _GZIP_MAGIC:
            raise UnsupportedFormatError(path, "gzip-compressed but named .nii", "rename it to .nii.gz")
        header = _read_raw_header(path, gzipped)
        checked = _validate_header(path, header, gzipped)
        voxels = _voxel_count(header)
        shape = _shape(header)
        if not gzipped and size < checked.promised_bytes:
            # Checked before anything is allocated: a header can promise gigabytes in a 130-byte file.
            raise CorruptDataError(
                path,
                f"the header promises {checked.promised_bytes:,} bytes (vox_offset {int(header['vox_offset'])} + "
                f"dim {list(shape)} x {header.get_data_dtype().itemsize} bytes per voxel) "
                f"but the file holds {size:,}",
                "the file is truncated or its dim/datatype fields are corrupt; re-copy or re-export it",
            )
        if voxels > self.max_voxels:
            raise SizeLimitError(
                path,
                f"header asks for {voxels:,} voxels {shape}, over the limit of {self.max_voxels:,}",
                "raise max_voxels (--max-voxels) if the volume is genuine",
            )
        _check_extensions(path, header, gzipped)
        if gzipped:
            _check_isize(path, size, checked.promised_bytes)
        return checked


def _read_raw_header(path: Path, gzipped: bool) -> Any:
    """The header as stored (``check=False``: nibabel repairs nothing), NIfTI-1 or NIfTI-2 by ``sizeof_hdr``."""
    import nibabel as nib

    opener = gzip.open if gzipped else open
    try:
        with opener(path, "rb") as handle:
            first = handle.read(4)
            if len(first) < 4:
                raise CorruptDataError(path, "the file ends inside the NIfTI header", _TRUNCATED)
            sizes = {int.from_bytes(first, "little"), int.from_bytes(first, "big")}
            if 348 in sizes:
                klass = nib.Nifti1Header
            elif 540 in sizes:
                klass = nib.Nifti2Header
            else:
                found = int.from_bytes(first, "little")
                raise HeaderError(
                    path,
                    f"sizeof_hdr is {found}, not 348 (NIfTI-1) or 540 (NIfTI-2): not a NIfTI file, or its header is "
                    "corrupt",
                    "check that this is a NIfTI file; re-export it as .nii or .nii.gz",
                )
            handle.seek(0)
            need = klass.template_dtype.itemsize
            block = handle.read(need)
            if len(block) < need:
                reason = f"the file ends inside the NIfTI header ({len(block)} of {need} bytes)"
                raise CorruptDataError(path, reason, _TRUNCATED)
            return klass(block, check=False)  # extensions are checked by _check_extensions
    except MedvisionError:
        raise
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise _gzip_error(path, exc) from exc
    except OSError as exc:
        raise InputError(path, f"cannot read the file ({type(exc).__name__}: {exc})", "check the path") from exc


def _gzip_error(path: Path, exc: BaseException) -> CorruptDataError:
    kind = "zlib.error" if isinstance(exc, zlib.error) else type(exc).__name__
    return CorruptDataError(path, f"not a readable NIfTI file: the gzip stream cannot be read ({kind}: {exc})", _RECOPY)


def _check_extensions(path: Path, header: Any, gzipped: bool) -> None:
    """Walk the header extensions' ``esize`` chain before nibabel reads them.

    nibabel reads each extension with ``read(esize - 8)``: a corrupt esize makes it allocate gigabytes
    (MemoryError), read a negative length (ValueError) or, past ``vox_offset``, parse the voxels as
    extensions. Each esize must be above 8 and end at or before ``vox_offset``, and the bytes must exist.
    """
    start = int(header["sizeof_hdr"]) + 4
    end = int(header["vox_offset"])
    try:
        _walk_extensions(path, header, gzipped, start, end)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise _gzip_error(path, exc) from exc


def _walk_extensions(path: Path, header: Any, gzipped: bool, start: int, end: int) -> None:
    order = "big" if header.endianness == ">" else "little"
    opener = gzip.open if gzipped else open
    with opener(path, "rb") as handle:
        handle.seek(start - 4)
        flag = handle.read(4)
        if len(flag) < 4 or flag[:1] == b"\0":  # no extensions (nibabel's test too)
            return
        position, number = start, 1
        while end - position >= 16:
            head = handle.read(8)
            if len(head) < 8:
                raise CorruptDataError(path, f"the file ends inside header extension {number}", _TRUNCATED)
            esize = int.from_bytes(head[:4], order, signed=True)
            if not 8 < esize <= end - position:
                raise HeaderError(
                    path,
                    f"header extension {number} has esize {esize}: not between 16 and the {end - position} bytes "
                    f"left before vox_offset {end}",
                    _REEXPORT,
                )
            position += esize
            if handle.seek(position) != position:
                raise CorruptDataError(path, f"the file ends inside header extension {number}", _TRUNCATED)
            number += 1


def _shape(header: Any) -> tuple[int, ...]:
    dim = header["dim"]
    return tuple(int(d) for d in dim[1 : int(dim[0]) + 1])


def _voxel_count(header: Any) -> int:
    return math.prod(_shape(header))  # Python ints: int16 dims cannot overflow here


def _spatial_rank(header: Any) -> int:
    return min(int(header["dim"][0]), 3)


def _refuse_cifti(path: Path, code: int, name: str) -> None:
    if code in _CIFTI_INTENTS:
        raise UnsupportedFormatError(
            path,
            f"a CIFTI-2 file (intent_code {code} {name}): a connectivity or surface-data matrix, not an image volume",
            "medvision reads image volumes; open CIFTI-2 files with nibabel.cifti2 or Connectome Workbench",
        )


def _validate_header(path: Path, header: Any, gzipped: bool) -> _Checked:
    """Refuse a header whose fields are nonsense; name the field. Returns what get_data needs."""
    import nibabel as nib

    magic = header["magic"].item()
    version = 2 if int(header["sizeof_hdr"]) == 540 else 1
    if magic != f"n+{version}".encode():
        shown = magic.decode("latin-1", "replace")
        if magic == f"ni{version}".encode():
            raise UnsupportedFormatError(
                path,
                f"magic is {shown!r}: the header of a .hdr/.img pair, not a single-file NIfTI",
                "load the .hdr/.img pair with nibabel and save it as .nii.gz",
            )
        reason = f"magic is {shown!r}, not 'n+{version}' (sizeof_hdr {int(header['sizeof_hdr'])}): a corrupt header"
        raise HeaderError(path, reason, _REEXPORT)
    if version == 2:
        eol = [int(b) & 0xFF for b in header["eol_check"]]
        if eol not in ([13, 10, 26, 10], [0, 0, 0, 0]):  # nibabel accepts all-zero too
            raise HeaderError(
                path,
                f"eol_check is {bytes(eol).hex(' ')}, not 0d 0a 1a 0a: the file was changed by a text-mode "
                "transfer (line-ending conversion) or is corrupt",
                "copy the file again in binary mode",
            )
    _refuse_cifti(path, int(header["intent_code"]), header["intent_name"].item().decode("latin-1").strip("\0 "))
    dim = header["dim"]
    ndim = int(dim[0])
    if not 1 <= ndim <= 7:
        raise HeaderError(path, f"dim[0] (number of dimensions) is {ndim}, not 1..7: a corrupt header", _REEXPORT)
    for axis in range(1, ndim + 1):
        if int(dim[axis]) < 1:
            raise HeaderError(
                path,
                f"dim[{axis}] is {int(dim[axis])} (dim {[int(d) for d in dim[: ndim + 1]]}): "
                f"{'an empty volume' if int(dim[axis]) == 0 else 'a negative size'}",
                _REEXPORT,
            )
    extra = [int(d) for d in dim[4 : ndim + 1] if int(d) > 1]
    if len(extra) > 1:
        raise UnsupportedFormatError(
            path,
            f"dim {[int(d) for d in dim[: ndim + 1]]} has {len(extra)} non-spatial axes of more than one element; "
            "medvision reads x, y, z and at most one channel (sequence) axis",
            "save one volume (x, y, z) or one multi-sequence volume (x, y, z, c) per file",
        )
    code = int(header["datatype"])
    if code in _UNSUPPORTED_DATATYPES:
        raise UnsupportedFormatError(
            path,
            f"datatype {code} is {_UNSUPPORTED_DATATYPES[code]}; medvision reads grey-level volumes",
            "convert the volume to a grey-level (scalar) datatype, e.g. with nibabel or fslmaths",
        )
    if code not in nib.nifti1.data_type_codes.value_set() or nib.nifti1.data_type_codes.dtype[code].itemsize == 0:
        raise HeaderError(path, f"datatype {code} is not a NIfTI voxel type that can be read", _REEXPORT)
    itemsize = header.get_data_dtype().itemsize

    offset = float(header["vox_offset"])
    minimum = int(header["sizeof_hdr"]) + 4  # the header and its 4 extension bytes (348 + 4 or 540 + 4)
    if not math.isfinite(offset) or offset < minimum:
        raise HeaderError(
            path,
            f"vox_offset is {offset:g}: the voxel data cannot start inside the {minimum}-byte single-file header",
            _REEXPORT,
        )
    promised = int(offset) + _voxel_count(header) * itemsize

    slope, inter = float(header["scl_slope"]), float(header["scl_inter"])
    if math.isinf(slope):
        raise HeaderError(path, f"scl_slope is {slope}, not a finite number", _REEXPORT)
    # NaN or 0 scl_slope means "no scaling" (NIfTI standard; nibabel writes NaN for float data).
    if math.isfinite(slope) and slope != 0 and not math.isfinite(inter):
        raise HeaderError(path, f"scl_inter is {inter} while scl_slope is {slope:g}: not a finite number", _REEXPORT)

    notes: list[str] = []
    if ndim > 4:
        notes.append(
            f"dim {[int(d) for d in dim[: ndim + 1]]}: the singleton axes after z are dropped; "
            "the non-spatial axis left is the channel axis"
        )
    source = _affine_source(path, header, notes)
    return _Checked(
        path=path,
        klass=nib.Nifti2Image if int(header["sizeof_hdr"]) == 540 else nib.Nifti1Image,
        gzipped=gzipped,
        promised_bytes=promised,
        affine_source=source,
        notes=notes,
    )


def _affine_source(path: Path, header: Any, notes: list[str]) -> str:
    """Which affine the NIfTI rule picks, after checking the fields it is made of.

    The rule (NIfTI-1 standard, nibabel's ``get_best_affine``): the sform when ``sform_code > 0``, else
    the qform when ``qform_code > 0``, else "method 1" (pixdim only). An invalid sform with a nonzero
    ``sform_code`` is refused even when the qform is valid: the writer declared the sform authoritative,
    the standard gives no fallback for a bad one, and nibabel, FSL and SPM would all use it, so guessing
    with the qform could silently disagree with every other tool.
    """
    valid_codes = set(type(header)._field_recoders["sform_code"].value_set())
    codes = {}
    for name in ("sform_code", "qform_code"):
        code = int(header[name])
        if code not in valid_codes:
            # nibabel resets an unknown code to 0 while loading; say so instead of doing it silently.
            notes.append(f"{name} {code} is not a NIfTI code (0-5); treated as 0 as nibabel does")
            code = 0
        codes[name] = code
    rank = _spatial_rank(header)
    pixdim = np.asarray(header["pixdim"], dtype=np.float64)
    for axis in range(1, rank + 1):
        if not np.isfinite(pixdim[axis]):
            raise HeaderError(path, f"pixdim[{axis}] is {pixdim[axis]}, not a finite voxel size", _REEXPORT)
    sform_used = codes["sform_code"] > 0
    if codes["qform_code"] > 0 or not sform_used:
        # The pixdim then makes the voxel size (qform and method 1): nibabel would turn 0 into 1 mm and a
        # negative size into its absolute value, both guesses.
        for axis in range(1, rank + 1):
            if pixdim[axis] <= 0:
                where = "the qform" if codes["qform_code"] > 0 else "the pixdim-only affine"
                shown = ", ".join(f"{v:g}" for v in pixdim[1 : rank + 1])
                raise HeaderError(
                    path,
                    f"voxel spacing {'missing or zero' if pixdim[axis] == 0 else 'negative'} ({shown} mm): "
                    f"pixdim[{axis}] is {pixdim[axis]:g}, and {where} needs a voxel size above 0",
                    "set the voxel size (pixdim) in the header, or re-export the file",
                )
    if codes["qform_code"] > 0:
        _check_qform(path, header, pixdim, notes)
    if sform_used:
        rows = {name: np.asarray(header[name], dtype=np.float64) for name in ("srow_x", "srow_y", "srow_z")}
        for name, row in rows.items():
            if not np.isfinite(row).all():
                raise HeaderError(
                    path,
                    f"{name} is {row.tolist()}, not finite (sform_code {codes['sform_code']})",
                    "re-export the file; if its qform is right, set sform_code to 0 to use the qform",
                )
        sform = np.vstack([rows["srow_x"], rows["srow_y"], rows["srow_z"], [0, 0, 0, 1]])
        zooms = _check_affine(path, sform, rank, "the sform (srow_x/srow_y/srow_z)")
        stored = pixdim[1 : rank + 1]
        if np.any(stored <= 0):
            notes.append(f"pixdim[1:{rank + 1}] is {_fmt(stored)}; the spacing comes from the sform {_fmt(zooms)}")
        elif not np.allclose(stored, zooms, rtol=1e-3, atol=1e-4):
            notes.append(
                f"pixdim[1:{rank + 1}] {_fmt(stored)} differ from the sform's voxel size {_fmt(zooms)}; "
                "the spacing comes from the sform, as the NIfTI standard says"
            )
        return "sform"
    if codes["qform_code"] > 0:
        notes.append(f"sform_code is 0: the affine comes from the qform (qform_code {codes['qform_code']})")
        return "qform"
    notes.append(
        "sform_code and qform_code are both 0: no orientation is stored; the affine is built from pixdim only "
        "(NIfTI method 1), so left/right and the origin are not known"
    )
    return "pixdim"


def _check_qform(path: Path, header: Any, pixdim: np.ndarray, notes: list[str]) -> None:
    fields = ("quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z")
    values = {name: float(header[name]) for name in fields}
    for name, value in values.items():
        if not math.isfinite(value):
            raise HeaderError(
                path,
                f"{name} is {value}, not finite (qform_code {int(header['qform_code'])})",
                "re-export the file; if its sform is right, set qform_code to 0",
            )
    for name in fields[:3]:
        if abs(values[name]) > 1 + 1e-5:  # checked first: squaring a huge value would overflow
            raise HeaderError(
                path,
                f"{name} is {values[name]:g}: above 1, not part of a rotation quaternion",
                "re-export the file; if its sform is right, set qform_code to 0",
            )
    norm2 = values["quatern_b"] ** 2 + values["quatern_c"] ** 2 + values["quatern_d"] ** 2
    if norm2 > 1 + 1e-5:  # nibabel's own tolerance is float32 eps x 3; this allows float32 round-off only
        raise HeaderError(
            path,
            f"quatern_b/c/d give b\u00b2+c\u00b2+d\u00b2 = {norm2:.6g} > 1: not a rotation quaternion",
            "re-export the file; if its sform is right, set qform_code to 0",
        )
    if pixdim[0] not in (-1.0, 1.0):
        notes.append(f"pixdim[0] (qfac) is {pixdim[0]:g}, not 1 or -1; taken as 1 as the NIfTI standard says")


def _check_affine(path: Path, affine: np.ndarray, rank: int, what: str) -> list[float]:
    """Refuse a non-finite or singular affine; return its column norms (the voxel spacing) for ``rank`` axes."""
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise HeaderError(path, f"{what} is not finite: {np.round(affine, 4).tolist()}", _REEXPORT)
    columns = affine[:3, :rank]
    zooms = np.sqrt((columns**2).sum(axis=0))
    for axis, zoom in enumerate(zooms):
        if zoom <= 0:
            shown = ", ".join(f"{z:g}" for z in zooms)
            raise GeometryError(
                path,
                f"voxel spacing missing or zero ({shown} mm): {what} gives voxel axis {axis + 1} a length of 0",
                _REEXPORT,
            )
    # Columns are finite and nonzero here, so the SVD behind matrix_rank converges.
    if np.linalg.matrix_rank(columns / zooms, tol=1e-6) < rank:
        raise GeometryError(path, f"{what} is singular: two voxel axes point the same way {_fmt(columns.T)}", _REEXPORT)
    return [float(z) for z in zooms]


def _fmt(values: np.ndarray) -> str:
    return str(np.round(np.asarray(values, dtype=np.float64), 4).tolist())


def _check_isize(path: Path, size: int, promised: int) -> None:
    """First, cheap check of a ``.nii.gz``: the ISIZE trailer (uncompressed length mod 2**32, RFC 1952).

    ISIZE belongs to the last gzip member only, so a mismatch may be a multi-member or zero-padded file;
    then one counting pass (CRC-checked, nothing kept) decides.
    """
    if size < 18:  # 10-byte gzip header + 8-byte trailer
        raise CorruptDataError(path, f"{size} bytes is too short for a gzip stream", _RECOPY)
    with open(path, "rb") as handle:
        handle.seek(-4, os.SEEK_END)
        isize = int.from_bytes(handle.read(4), "little")
    if isize == promised % 2**32 or (promised < 2**32 and isize >= promised):
        return
    _, total = _gunzip_verified(path, keep=0)
    if total < promised:
        raise CorruptDataError(
            path,
            f"the gzip stream holds {total:,} bytes uncompressed but the header promises {promised:,}",
            "the file is truncated or its dim/datatype fields are corrupt; re-copy or re-export it",
        )


def _gunzip_verified(path: Path, keep: int) -> tuple[io.BytesIO, int]:
    """Decompress the whole of ``path`` once, verifying each member's CRC-32 and ISIZE; keep ``keep`` bytes.

    Written with :mod:`zlib` because neither :mod:`gzip` nor nibabel's reader checks the CRC unless the
    stream is read to its end, and nibabel stops at the last voxel byte. zlib's gzip mode (``wbits=31``)
    checks CRC-32 and length at each member's end. Output is bounded: at most ``_CHUNK`` bytes per step and
    ``keep`` bytes in all, so a stream larger than its header says cannot exhaust memory.

    Returns:
        The kept bytes (position 0) and the total uncompressed length.
    """
    out = io.BytesIO()
    state = {"total": 0, "member": 1, "fed": False, "padding": False}
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)

    def feed(chunk: bytes) -> None:
        nonlocal inflater
        while True:
            if state["padding"]:  # zero bytes after the last member are allowed (gzip(1), Python's gzip)
                if chunk.strip(b"\0"):
                    raise CorruptDataError(
                        path, f"data after the end of gzip member {state['member'] - 1} is not a gzip member", _RECOPY
                    )
                return
            state["fed"] = state["fed"] or bool(chunk)
            try:
                data = inflater.decompress(chunk, _CHUNK)
            except zlib.error as exc:
                raise CorruptDataError(path, _zlib_reason(exc, state["member"]), _RECOPY) from exc
            if out.tell() < keep:
                out.write(data[: keep - out.tell()])
            state["total"] += len(data)
            if inflater.eof:  # CRC-32 and ISIZE of this member were checked by zlib
                chunk = inflater.unused_data
                state["member"] += 1
                inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
                state["fed"] = False
                if not chunk:
                    return
                state["padding"] = not chunk.strip(b"\0")
            elif inflater.unconsumed_tail:
                chunk = inflater.unconsumed_tail
            elif len(data) < _CHUNK:
                return
            else:
                chunk = b""  # output was capped at _CHUNK: drain what zlib still holds

    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK):
            feed(block)
    if state["fed"] or state["member"] == 1:
        raise CorruptDataError(
            path,
            f"the gzip stream ends early (member {state['member']}, after {state['total']:,} uncompressed bytes): "
            "a truncated file",
            _RECOPY,
        )
    out.seek(0)
    return out, state["total"]


def _zlib_reason(exc: zlib.error, member: int) -> str:
    text = str(exc)
    if "incorrect data check" in text:
        return f"gzip CRC-32 check failed (member {member}): the compressed data are corrupt"
    if "incorrect length check" in text:
        return f"gzip length check (ISIZE) failed (member {member}): the compressed data are corrupt"
    if "incorrect header check" in text and member > 1:
        return f"data after the end of gzip member {member - 1} is not a gzip member"
    return f"the gzip stream is corrupt (member {member}; zlib.error: {text})"


def _axcodes(affine: np.ndarray) -> tuple[str, ...]:
    import nibabel as nib

    return tuple(str(c) for c in nib.aff2axcodes(affine))
