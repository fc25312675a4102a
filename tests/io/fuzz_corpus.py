"""Fuzzing ``medvision.io.load``: corpus, seeded mutators, the boundary contract and a guarded worker.

Used by ``tests/io/test_fuzz.py`` (short, in ``make test``) and ``tests/io/fuzz_campaign.py``
(``make fuzz``, bounded by time). Nothing here is a medvision API; it is test tooling.

* **Corpus**: the DICOM files pydicom ships (plus ``pydicom-data``'s and ``deid-data``'s when installed),
  nibabel's NIfTI/CIFTI test files, and 5-slice DICOM series built from pydicom's CT/MR slices.
* **Mutators**: deterministic for a given ``random.Random``: truncation, byte flips in the header and the
  pixel data, bad element values written raw (pydicom's writer refuses ``'abc'`` for a DS), missing
  elements, broken Modality LUTs, false transfer-syntax claims, broken encapsulation, broken series,
  NIfTI header fields (offsets from nibabel's own header dtypes), corrupt gzip streams, wrong suffixes.
* **Contract** (:func:`check_path`): ``load`` either raises a :class:`~medvision.errors.MedvisionError`
  whose one line names the path and never says "unexpected", or returns a finite array, a finite affine
  with nonzero columns, ``spacing_mm`` equal to the affine's column norms, a consistent shape, and a
  summary that ``json.dumps(..., allow_nan=False)`` accepts.
* **Worker** (:class:`Runner`): one forked process per run (forkserver, medvision preloaded) so that a
  hang can be killed, a crash seen, and memory measured per input (peak RSS reset through
  ``/proc/self/clear_refs``, address space capped with ``RLIMIT_AS``).
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
import logging
import math
import os
import random
import resource
import shutil
import struct
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Outcomes that break the contract; ``ok`` and ``typed`` are the two allowed ones.
FAILURES = ("untyped", "badmessage", "nonfinite", "mismatch", "accepted", "memory", "hang", "crash")
OUTCOMES = ("ok", "typed", *FAILURES)

DEFAULT_MAX_VOXELS = 64 * 1024 * 1024
MIB = 1024 * 1024

# ------------------------------------------------------------------------------------------------ corpus


@dataclass(frozen=True)
class Seed:
    """One unmutated input: a DICOM file, a NIfTI file or a DICOM series folder."""

    name: str
    path: Path
    kind: str  # "dicom", "nifti" or "series"
    raw_bytes: int  # uncompressed size, for the memory bound
    tags: frozenset[str] = frozenset()


@dataclass
class Case:
    """One input to check: a seed, or a seed changed by one mutation."""

    index: int
    seed: Seed
    mutation: str
    recipe: str
    path: Path
    expect_same_as: str | None = None  # a seed name whose result this case must reproduce exactly
    expect_refused: bool = False  # a broken series the issue says must be refused (never loaded)
    outcome: str = ""
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def memory_bound(self) -> int:
        """Bytes of memory (peak RSS growth, address space) that loading this input may take."""
        return 256 * MIB + 16 * self.seed.raw_bytes


def _dicom_tags(path: Path) -> set[str]:
    import pydicom

    tags = set()
    with path.open("rb") as fh:
        head = fh.read(132)
    if head[128:132] == b"DICM":
        tags.add("preamble")
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - an unreadable seed is still a seed
        return tags
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is not None and ts.is_compressed:
        tags.add("encapsulated")
    if ts is not None and ts.is_deflated:
        tags.add("deflated")
    if "Rows" in ds:
        tags.add("image")
    return tags


def _gz_size(path: Path) -> int:
    with path.open("rb") as fh:
        fh.seek(-4, os.SEEK_END)
        return struct.unpack("<I", fh.read(4))[0]


def _accepted(path: Path) -> bool:
    """Whether medvision's ``reader_for`` would read ``path`` as DICOM or NIfTI."""
    from medvision.io import DicomReader, NiftiReader, reader_for

    try:
        return isinstance(reader_for(path), DicomReader | NiftiReader)
    except Exception:  # noqa: BLE001
        return False


def _dicom_sources(max_file_bytes: int) -> list[tuple[str, Path]]:
    from pydicom.data import get_testdata_files

    found: list[tuple[str, Path]] = []
    for name in sorted(get_testdata_files()):
        path = Path(name)
        if not path.is_file() or path.suffix.lower() not in (".dcm", "") or path.stat().st_size > max_file_bytes:
            continue
        origin = "pydicom-data" if "data_store" in path.parts else "pydicom"
        found.append((f"{origin}:{path.name}", path))
    try:  # deid-data: real (de-identified) CT, US, animal images
        import deid_data

        for path in sorted((Path(deid_data.__file__).parent / "data").rglob("*.dcm")):
            if path.stat().st_size <= max_file_bytes:
                found.append((f"deid-data:{path.parent.name}/{path.name}", path))
    except ImportError:
        pass
    return found


def _nifti_sources() -> list[tuple[str, Path]]:
    import nibabel

    folder = Path(nibabel.__file__).parent / "tests" / "data"
    return [(f"nibabel:{p.name}", p) for p in sorted(folder.iterdir()) if p.name.endswith((".nii", ".nii.gz"))]


def _rgb_from(ds: Any) -> Any:
    """A copy of a grey slice as 8-bit RGB (for mixed samples-per-pixel series)."""
    out = copy.deepcopy(ds)
    grey = ds.pixel_array.astype(np.float64)
    grey = ((grey - grey.min()) / max(float(np.ptp(grey)), 1.0) * 255).astype(np.uint8)
    out.SamplesPerPixel = 3
    out.PhotometricInterpretation = "RGB"
    out.PlanarConfiguration = 0
    out.BitsAllocated = out.BitsStored = 8
    out.HighBit = 7
    out.PixelRepresentation = 0
    out.PixelData = np.repeat(grey[..., None], 3, axis=-1).tobytes()
    for kw in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"):
        if kw in out:
            del out[kw]
    return out


def _series_datasets(source: Path, n: int = 5, step: float = 2.5) -> list[Any]:
    """``n`` slices of one series from one slice, positions ``step`` mm apart along the normal."""
    import pydicom
    from pydicom.uid import generate_uid

    base = pydicom.dcmread(source)
    iop = np.array([float(v) for v in base.ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    origin = np.array([float(v) for v in base.ImagePositionPatient])
    series_uid = generate_uid(entropy_srcs=[str(source), "series"])
    out = []
    for k in range(n):
        ds = copy.deepcopy(base)
        ds.SeriesInstanceUID = series_uid
        uid = generate_uid(entropy_srcs=[str(source), str(k)])
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [f"{v:.4f}" for v in origin + k * step * normal]
        if "SliceLocation" in ds:
            ds.SliceLocation = f"{float(np.dot(origin + k * step * normal, normal)):.4f}"
        out.append(ds)
    return out


def write_series(folder: Path, datasets: list[Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k, ds in enumerate(datasets):
        ds.save_as(folder / f"slice_{k:03d}.dcm")
    return folder


def build_corpus(
    work: Path,
    *,
    max_file_bytes: int = 8 * MIB,
    dicom: bool = True,
    nifti: bool = True,
    series: bool = True,
    name_filter: Callable[[str], bool] | None = None,
) -> list[Seed]:
    """The seeds: shipped DICOM and NIfTI test files medvision would read, and series built in ``work``."""
    seeds: list[Seed] = []
    keep = name_filter or (lambda _name: True)
    if dicom:
        for name, path in _dicom_sources(max_file_bytes):
            if keep(name) and _accepted(path):
                with warnings.catch_warnings():  # some shipped files are damaged on purpose
                    warnings.simplefilter("ignore")
                    tags = frozenset(_dicom_tags(path))
                seeds.append(Seed(name, path, "dicom", path.stat().st_size, tags))
    if nifti:
        for name, path in _nifti_sources():
            if keep(name) and _accepted(path):
                gz = path.name.endswith(".gz")
                size = _gz_size(path) if gz else path.stat().st_size
                seeds.append(Seed(name, path, "nifti", size, frozenset({"gz"} if gz else set())))
    if series:
        from pydicom.data import get_testdata_file

        for source in ("CT_small.dcm", "MR_small.dcm"):
            name = f"series:{source}x5"
            if not keep(name):
                continue
            src = Path(get_testdata_file(source, download=False))
            folder = write_series(work / "seeds" / source.replace(".dcm", "_x5"), _series_datasets(src))
            seeds.append(Seed(name, folder, "series", 5 * src.stat().st_size, frozenset({"source:" + str(src)})))
    return seeds


# ---------------------------------------------------------------------------------------------- mutators

# A mutator returns the mutated path and its recipe, and for a broken series whether it must be refused.
Mutator = Callable[[random.Random, Seed, Path], tuple[Path, str] | tuple[Path, str, bool]]


def _pixel_offset(data: bytes) -> int | None:
    """Offset of the last (7FE0,0010) PixelData tag, little or big endian."""
    pos = max(data.rfind(b"\xe0\x7f\x10\x00"), data.rfind(b"\x7f\xe0\x00\x10"))
    return pos if pos >= 0 else None


def _header_len(seed: Seed, data: bytes) -> int:
    if seed.kind == "nifti":
        return 540 if struct.unpack("<i", data[:4])[0] in (540, 469893120) else 348
    off = _pixel_offset(data)
    return off if off else len(data)


def _out(out_dir: Path, seed: Seed, suffix: str | None = None) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    name = seed.path.name
    if suffix is not None:
        name = (name[: -len(".nii.gz")] if name.endswith(".nii.gz") else Path(name).stem) + suffix
    return out_dir / name


def _file_bytes(seed: Seed) -> bytes:
    data = seed.path.read_bytes()
    return gzip.decompress(data) if "gz" in seed.tags else data


def _write_like_seed(seed: Seed, out: Path, data: bytes) -> Path:
    out.write_bytes(gzip.compress(data, mtime=0) if "gz" in seed.tags else data)
    return out


def mut_truncate(rng: random.Random, seed: Seed, out_dir: Path) -> tuple[Path, str]:
    data = seed.path.read_bytes()
    if rng.random() < 0.5:
        cut = rng.randrange(0, min(len(data), _header_len(seed, _file_bytes(seed)) + 16))
    else:
        cut = rng.randrange(0, len(data))
    out = _out(out_dir, seed)
    out.write_bytes(data[:cut])
    return out, f"truncate raw file at byte {cut} of {len(data)}"


def _flip(rng: random.Random, data: bytes, lo: int, hi: int, n: int) -> tuple[bytes, list[str]]:
    buf = bytearray(data)
    done = []
    for _ in range(n):
        pos = rng.randrange(lo, max(hi, lo + 1))
        if pos >= len(buf):
            continue
        new = rng.choice((buf[pos] ^ (1 << rng.randrange(8)), rng.randrange(256), 0x00, 0xFF))
        done.append(f"{pos}:{buf[pos]:02x}->{new:02x}")
        buf[pos] = new
    return bytes(buf), done


def mut_flip_header(rng: random.Random, seed: Seed, out_dir: Path) -> tuple[Path, str]:
    data = _file_bytes(seed)
    start = 132 if "preamble" in seed.tags else 0
    data, done = _flip(rng, data, start, _header_len(seed, data), rng.choice((1, 1, 2, 4, 8)))
    return _write_like_seed(seed, _out(out_dir, seed), data), f"flip header bytes {', '.join(done)}"


def mut_flip_pixels(rng: random.Random, seed: Seed, out_dir: Path) -> tuple[Path, str]:
    data = _file_bytes(seed)
    lo = _header_len(seed, data) + (12 if seed.kind == "dicom" else 0)
    if lo >= len(data):
        lo = 0
    data, done = _flip(rng, data, lo, len(data), rng.choice((1, 4, 16, 64)))
    return _write_like_seed(seed, _out(out_dir, seed), data), f"flip pixel bytes {', '.join(done[:8])}"


class _pydicom_lenient:
    """pydicom with value validation off, so that invalid values can be written and read back."""

    def __enter__(self) -> Any:
        from pydicom import config

        self._saved = (config.settings.reading_validation_mode, config.settings.writing_validation_mode)
        config.settings.reading_validation_mode = config.IGNORE
        config.settings.writing_validation_mode = config.IGNORE
        return self

    def __exit__(self, *exc: Any) -> None:
        from pydicom import config

        config.settings.reading_validation_mode, config.settings.writing_validation_mode = self._saved


def _set_raw(ds: Any, keyword: str, value: bytes | int | None, holder: Any = None) -> None:
    """Set ``keyword`` to raw bytes (text VRs) or an int (binary VRs), or delete it (``None``).

    Raw bytes because pydicom refuses to encode a DS of ``'abc'`` even with validation off.
    """
    from pydicom.datadict import dictionary_VR
    from pydicom.dataelem import DataElement, RawDataElement
    from pydicom.tag import Tag

    holder = ds if holder is None else holder
    tag = Tag(keyword)
    if value is None:
        if tag in holder:
            del holder[tag]
        return
    vr = dictionary_VR(tag)
    if isinstance(value, bytes):
        if len(value) % 2:
            value += b" "
        implicit = getattr(ds, "is_implicit_VR", None)
        holder[tag] = RawDataElement(tag, vr, len(value), value, 0, bool(implicit), True)
    else:
        holder[tag] = DataElement(tag, vr.split(" or ")[0], value)


_TEXT_VALUES = (b"", b"abc", b"nan", b"NaN", b"inf", b"-inf", b"1e308", b"-1e308", b"0", b"-0", b"1e-300", b"-1", b"1")
_DICOM_FIELDS = {
    # keyword: (values multiplicity, kind)
    "RescaleSlope": (1, "text"),
    "RescaleIntercept": (1, "text"),
    "PixelSpacing": (2, "text"),
    "ImagerPixelSpacing": (2, "text"),
    "SliceThickness": (1, "text"),
    "ImagePositionPatient": (3, "text"),
    "ImageOrientationPatient": (6, "text"),
    "WindowCenter": (1, "text"),
    "WindowWidth": (1, "text"),
    "NumberOfFrames": (1, "text"),
    "Rows": (1, "us"),
    "Columns": (1, "us"),
    "BitsAllocated": (1, "us"),
    "BitsStored": (1, "us"),
    "HighBit": (1, "us"),
    "SamplesPerPixel": (1, "us"),
    "PixelRepresentation": (1, "us"),
    "PlanarConfiguration": (1, "us"),
}
_US_VALUES = (0, 1, 2, 3, 4, 7, 8, 12, 16, 24, 32, 33, 64, 255, 256, 4096, 32767, 65535)


def _bad_multi(rng: random.Random, n: int) -> bytes:
    """A multi-valued text element with one bad value, too few or too many values."""
    shape = rng.choice(("one", "all", "short", "long", "orth"))
    good = [b"1", b"0", b"0", b"0", b"1", b"0"][:n] if n == 6 else [b"1"] * n
    if shape == "one":
        good[rng.randrange(n)] = rng.choice(_TEXT_VALUES)
    elif shape == "all":
        good = [rng.choice(_TEXT_VALUES)] * n
    elif shape == "short":
        good = good[: max(n - 1, 1)] if n > 1 else [b""]
    elif shape == "long":
        good = good + [b"1"]
    elif n == 6:  # orientation that is not orthonormal
        good = rng.choice(([b"1", b"0", b"0", b"1", b"0", b"0"], [b"2", b"0", b"0", b"0", b"2", b"0"], [b"0"] * 6))
    return b"\\".join(good)


def mut_dicom_tag(rng: random.Random, seed: Seed, out_dir: Path) -> tuple[Path, str]:
    import pydicom

    keyword = rng.choice(sorted(_DICOM_FIELDS))
    n, kind = _DICOM_FIELDS[keyword]
    if kind == "us":
        value: bytes | int | None = rng.choice(_US_VALUES)
    elif n > 1:
        value = _bad_multi(rng, n)
    else:
        value = rng.choice(_TEXT_VALUES + (b"1000000", b"1\\2"))
    with _pydicom_lenient():
        ds = pydicom.dcmread(seed.path, force=True)
        holder = ds
        groups = ds.get("SharedFunctionalGroupsSequence")
        frames = ds.get("PerFrameFunctionalGroupsSequence")
        if frames and keyword == "ImagePositionPatient" and rng.random() < 0.7:
            which = rng.randrange(len(frames))
            item = frames[which]
            if "PlanePositionSequence" in item and item.PlanePositionSequence:
                holder = item.PlanePositionSequence[0]
                keyword = "ImagePositionPatient"
        elif groups and rng.random() < 0.5 and keyword in ("PixelSpacing", "ImageOrientationPatient", "RescaleSlope"):
            seq = {
                "PixelSpacing": "PixelMeasuresSequence",
                "ImageOrientationPatient": "PlaneOrientationSequence",
                "RescaleSlope": "PixelValueTransformationSequence",
            }[keyword]
            if seq in groups[0] and groups[0][seq]:
                holder = groups[0][seq][0]
        _set_raw(ds, keyword, value, holder)
        out = _out(out_dir, seed)
        ds.save_as(out, enforce_file_format=False)
    where = "" if holder is ds else " (in a functional group)"
    return out, f"set {keyword}{where} to {value!r}"


_MISSING = (
    "PlanarConfiguration",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "PhotometricInterpretation",
    "SamplesPerPixel",
    "Rows",
    "Columns",
    "PixelSpacing",
    "ImageOrientationPatient",
    "ImagePositionPatient",
    "RescaleSlope",
    "PixelData",
    "SOPClassUID",
)


def mut_dicom_missing(rng: random.Random, seed: Seed, out_dir: Path) -> tuple[Path, str]:
    import pydicom

    keyword = rng.choice(_MISSING)
    with _pydicom_lenient():
        ds = pydicom.dcmread(seed.path, force=True)
        if keyword == "PixelData" and rng.random() < 0.5:
            ds.PixelData = b""
            recipe = "set PixelData to zero length"
        else:
            _set_raw(ds, keyword, None)
            recipe = f"delete {keyword}"
        out = _out(out_dir, seed)
        ds.save_as(out, enforce_file_format=False)
    return out, recipe


def mut_lut(rng: random.Random, seed: Seed, out_dir: Path) -> tuple[Path, str]:
    """A Modality LUT Sequence with a bad descriptor or data (the 'uint99' / struct.error cases)."""
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    entries = rng.choice((0, 1, 256, 4096, 65535))
    first = rng.choice((0, -100, 100, 65535))
    bits = rng.choice((8, 16, 0, 99, 33))
    data_len = rng.choice((entries, max(entries - 1, 0), entries + 7, 0, 3))
    with _pydicom_lenient():
        ds = pydicom.dcmread(seed.path, force=True)
        item = Dataset()
        # the ambiguous VRs ("US or SS", "US or OW") are written as US: negative values as two's complement
        item.add_new("LUTDescriptor", "US", [entries, first & 0xFFFF, bits])
        item.ModalityLUTType = "HU"
        if rng.random() > 0.3:
            item.add_new("LUTData", "US", [rng.randrange(0, 65536) for _ in range(min(data_len, 4096))])
        ds.ModalityLUTSequence = Sequence([item])
        out = _out(out_dir, seed)
        ds.save_as(out, enforce_file_format=False)
    return out, f"ModalityLUTSequence descriptor [{entries}, {first}, {bits}], {min(data_len, 4096)} LUT values"


_SYNTAXES = {
    "deflate": "1.2.840.10008.1.2.1.99",
    "jpeg-baseline": "1.2.840.10008.1.2.4.50",
    "jpeg2000": "1.2.840.10008.1.2.4.90",
    "rle": "1.2.840.10008.1.2.5",
    "implicit": "1.2.840.10008.1.2",
    "explicit": "1.2.840.10008.1.2.1",
    "big-endian": "1.2.840.10008.1.2.2",
    "garbage": "1.2.3.4.5.6.7.8.9",
    "not-a-uid": "not a uid!",
    "empty": "",
}


def _split_meta(data: bytes) -> tuple[bytes, Any, bytes]:
    """(preamble, file meta dataset, body bytes) of a Part 10 file."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import _read_file_meta_info, read_preamble

    fp = DicomBytesIO(data)
    preamble = read_preamble(fp, False) or b"\0" * 128
    meta = _read_file_meta_info(fp)
    return preamble, meta, data[fp.tell() :]


def _join_meta(preamble: bytes, meta: Any, body: bytes) -> bytes:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    fp.write(preamble + b"DICM")
    enforce = "TransferSyntaxUID" in meta and bool(meta.TransferSyntaxUID)
    if not enforce and "FileMetaInformationGroupLength" in meta:
        del meta.FileMetaInformationGroupLength
    write_file_meta_info(fp, meta, enforce_standard=enforce)
    return fp.getvalue() + body


def mut_transfer_syntax(rng: random.Random, seed: Seed, out_dir: Path) -> tuple[Path, str]:
    """Claim another transfer syntax in the file meta, leaving the data set bytes as they are."""
    data = seed.path.read_bytes()
    with _pydicom_lenient():
        preamble, meta, body = _split_meta(data)
        choice = rng.choice(sorted(_SYNTAXES) + ["missing"])
        if choice == "missing":
            if "TransferSyntaxUID" in meta:
                del meta.TransferSyntaxUID
            recipe = "delete (0002,0010) TransferSyntaxUID"
        else:
            meta.TransferSyntaxUID = _SYNTAXES[choice]
            recipe = f"claim TransferSyntaxUID {_SYNTAXES[choice]!r} ({choice}) over the unchanged data set"
        if "deflated" in seed.tags and rng.random() < 0.5:
            body = body[: rng.randrange(len(body))]
            recipe += f", body truncated to {len(body)} bytes"
        out = _out(out_dir, seed)
        out.write_bytes(_join_meta(preamble, meta, body))
    return out, recipe


def mut_deflate_stream(rng: random.Random, seed: Seed, out_dir: Path) -> tuple[Path, str]:
    """Corrupt a deflated data set: flipped bytes or a truncated stream (zlib.error)."""
    data = seed.path.read_bytes()
    with _pydicom_lenient():
        preamble, meta, body = _split_meta(data)
    start = len(data) - len(body)
    if rng.random() < 0.5:
        cut = start + rng.randrange(len(body))
        out = _out(out_dir, seed)
        out.write_bytes(data[:cut])
        return out, f"truncate deflated data set at byte {cut} of {len(data)}"
    flipped, done = _flip(rng, data, start, len(data), rng.choice((1, 2, 8)))
    out = _out(out_dir, seed)
    out.write_bytes(flipped)
    return out, f"flip deflated bytes {', '.join(done)}"


def mut_encapsulation(rng: random.Random, seed: Seed, out_dir: Path) -> tuple[Path, str]:
    """Break encapsulated pixel data: offset table, item tags, item lengths, delimiter, fragments."""
    data = bytearray(seed.path.read_bytes())
    off = _pixel_offset(bytes(data))
    if off is None:
        raise ValueError("no pixel data tag")
    items = []
    pos = off + 12
    while True:
        found = data.find(b"\xfe\xff\x00\xe0", pos)
        if found < 0:
            break
        items.append(found)
        length = struct.unpack("<I", data[found + 4 : found + 8])[0]
        pos = found + 8 + length if length != 0xFFFFFFFF else found + 8
    if not items:
        raise ValueError("no items")
    how = rng.choice(("bot-length", "bot-offsets", "item-tag", "item-length", "no-delimiter", "cut-fragment", "empty"))
    if how == "bot-length":
        value = rng.choice((0xFFFFFFF0, 0xFFFFFFFF, 3, 4 * 1024 * 1024))
        data[items[0] + 4 : items[0] + 8] = struct.pack("<I", value)
        recipe = f"basic offset table length set to {value}"
    elif how == "bot-offsets":
        n = struct.unpack("<I", data[items[0] + 4 : items[0] + 8])[0] // 4
        if n == 0:
            # add a lying offset table of one entry
            data[items[0] + 4 : items[0] + 8] = struct.pack("<I", 4)
            data[items[0] + 8 : items[0] + 8] = struct.pack("<I", rng.randrange(1 << 32))
            recipe = "basic offset table given one random offset"
        else:
            for i in range(n):
                p = items[0] + 8 + 4 * i
                data[p : p + 4] = struct.pack("<I", rng.randrange(1 << 32))
            recipe = f"basic offset table's {n} offsets randomised"
    elif how == "item-tag":
        which = rng.randrange(len(items))
        data[items[which] : items[which] + 4] = bytes(rng.randrange(256) for _ in range(4))
        recipe = f"item tag {which} of {len(items)} overwritten"
    elif how == "item-length":
        which = rng.randrange(len(items))
        value = rng.choice((0xFFFFFFFF, 0x7FFFFFFF, 1, 3, 0))
        data[items[which] + 4 : items[which] + 8] = struct.pack("<I", value)
        recipe = f"item {which} of {len(items)} length set to {value}"
    elif how == "no-delimiter":
        end = data.rfind(b"\xfe\xff\xdd\xe0")
        if end > 0:
            del data[end:]
        recipe = "sequence delimiter removed"
    elif how == "cut-fragment":
        which = rng.randrange(1, len(items)) if len(items) > 1 else 0
        cut = items[which] + 8 + rng.randrange(0, 64)
        del data[cut:]
        recipe = f"file cut inside fragment {which} (byte {cut})"
    else:
        data[items[0] :] = b"\xfe\xff\x00\xe0\x00\x00\x00\x00\xfe\xff\xdd\xe0\x00\x00\x00\x00"
        recipe = "encapsulated pixel data reduced to an empty offset table and no fragment"
    out = _out(out_dir, seed)
    out.write_bytes(bytes(data))
    return out, recipe


def mut_rename(rng: random.Random, seed: Seed, out_dir: Path) -> tuple[Path, str]:
    """Right bytes, wrong suffix: DICOM named .nii(.gz), NIfTI named .dcm, plain NIfTI named .nii.gz."""
    if seed.kind == "dicom":
        suffix = rng.choice((".nii", ".nii.gz"))
    elif "gz" in seed.tags:
        suffix = rng.choice((".nii", ".dcm"))
    else:
        suffix = rng.choice((".nii.gz", ".dcm"))
    out = _out(out_dir, seed, suffix)
    shutil.copyfile(seed.path, out)
    return out, f"copy named with suffix {suffix}"


# NIfTI header fields: (field, index or None, values). Offsets come from nibabel's own header dtypes.
_NAN, _INF = float("nan"), float("inf")
_NIFTI_FIELDS: list[tuple[str, int | None, tuple[Any, ...]]] = [
    ("dim", 0, (0, -1, 1, 2, 3, 5, 7, 8, 9, 32767)),
    ("dim", 1, (0, -1, 1, 2, 1000, 32767)),
    ("dim", 2, (0, -1, 1000, 32767)),
    ("dim", 3, (0, -5, 1, 1000, 32767)),
    ("dim", 4, (0, 2, 3, 1000)),
    ("dim", 5, (0, 2, 3)),
    ("datatype", None, (0, 1, 2, 4, 8, 16, 32, 64, 128, 255, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304, 7)),
    ("bitpix", None, (0, 1, 7, 8, 16, 24, 32, 64, 128)),
    ("pixdim", 0, (_NAN, _INF, 0.0, -1.0, 2.0)),
    ("pixdim", 1, (_NAN, _INF, -_INF, 0.0, -1.0, 1e38, 1e-38)),
    ("pixdim", 2, (_NAN, _INF, 0.0, -2.0, 1e38)),
    ("pixdim", 3, (_NAN, _INF, 0.0, -3.0, 1e38)),
    ("vox_offset", None, (_NAN, _INF, -352.0, 0.0, 100.0, 351.0, 353.0, 1e9, 4294967296.0)),
    ("scl_slope", None, (_NAN, _INF, -_INF, 0.0, 1e38, -1e38, 1e-38)),
    ("scl_inter", None, (_NAN, _INF, 1e38)),
    ("qform_code", None, (0, 1, 2, 3, 4, 5, -1, 32767)),
    ("sform_code", None, (0, 1, 2, 3, 4, 5, -1, 32767)),
    ("quatern_b", None, (_NAN, _INF, 1.0, 2.0, 0.9)),
    ("quatern_c", None, (_NAN, 1.0, 2.0)),
    ("quatern_d", None, (_NAN, 2.0)),
    ("qoffset_x", None, (_NAN, _INF, 1e38)),
    ("srow_x", 0, (_NAN, _INF, 0.0, 1e38)),
    ("srow_y", 1, (_NAN, 0.0, -_INF)),
    ("srow_z", 2, (_NAN, 0.0, 1e-30)),
    ("srow_z", 3, (_NAN, _INF)),
    ("intent_code", None, (0, 2, 1002, 1007, 1011, 2001, 2003, 3000, 3001, 3006, 3010, 9999)),
    ("intent_p1", None, (_NAN, _INF)),
    ("xyzt_units", None, (0, 1, 3, 255)),
    ("cal_max", None, (_NAN, _INF)),
    ("sizeof_hdr", None, (0, 347, 349, 540, 1000)),
    ("magic", None, (b"n+1\0", b"ni1\0", b"n+2\0", b"xxxx", b"\0\0\0\0")),
]


def _nifti_dtype(data: bytes) -> tuple[np.dtype, str]:
    import nibabel as nib

    for endian in ("<", ">"):
        size = struct.unpack(endian + "i", data[:4])[0]
        if size == 540:
            return nib.nifti2.header_dtype, endian
        if size == 348:
            return nib.nifti1.header_dtype, endian
    return nib.nifti1.header_dtype, "<"


def _set_field(data: bytearray, dtype: np.dtype, endian: str, name: str, index: int | None, value: Any) -> None:
    ftype, offset = dtype.fields[name][:2]
    base = ftype.base if ftype.shape else ftype
    if index is not None:
        offset += index * base.itemsize
    if base.kind == "S" or isinstance(value, bytes):
        data[offset : offset + len(value)] = value
        return
    packed = np.array(value).astype(base.newbyteorder(endian)).tobytes()
    data[offset : offset + len(packed)] = packed


def mut_nifti_header(rng: random.Random, seed: Seed, out_dir: Path) -> tuple[Path, str]:
    data = bytearray(_file_bytes(seed))
    dtype, endian = _nifti_dtype(bytes(data))
    changes = []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        name, index, values = rng.choice(_NIFTI_FIELDS)
        if name == "srow_y":
            index = rng.randrange(4)
        value = rng.choice(values)
        if name == "magic" and dtype.itemsize == 540:
            value = value[:4] + b"\r\n\032\n"
        if name == "sizeof_hdr":
            value = int(value)
        _set_field(data, dtype, endian, name, index, value)
        changes.append(f"{name}{'' if index is None else f'[{index}]'}={value!r}")
    if rng.random() < 0.15:  # an all-zero sform (sform_code kept)
        for row in ("srow_x", "srow_y", "srow_z"):
            for i in range(4):
                _set_field(data, dtype, endian, row, i, 0.0)
        changes.append("srow_x/y/z all zero")
    return _write_like_seed(seed, _out(out_dir, seed), bytes(data)), "set NIfTI header " + ", ".join(changes)


def mut_nifti_size(rng: random.Random, seed: Seed, out_dir: Path) -> tuple[Path, str]:
    """A header that promises more voxels than the file holds (within the voxel limit), or the reverse."""
    data = bytearray(_file_bytes(seed))
    dtype, endian = _nifti_dtype(bytes(data))
    dims = rng.choice(((3, 400, 400, 400), (3, 256, 256, 256), (4, 64, 64, 64, 16), (3, 2, 2, 2), (2, 4096, 4096)))
    for i, d in enumerate(dims):
        _set_field(data, dtype, endian, "dim", i, d)
    for i in range(len(dims), 8):
        _set_field(data, dtype, endian, "dim", i, 1)
    keep = rng.choice((len(data), 352, 352 + 130, len(data) // 2))
    out = _write_like_seed(seed, _out(out_dir, seed), bytes(data[:keep]))
    return out, f"set dim to {dims} and keep {keep} of {len(data)} bytes"


def mut_nifti_extension(rng: random.Random, seed: Seed, out_dir: Path) -> tuple[Path, str]:
    """A header extension (bytes 348-351 flag it) whose esize lies: huge, negative, odd, past vox_offset."""
    data = bytearray(_file_bytes(seed))
    dtype, endian = _nifti_dtype(bytes(data))
    start = dtype.itemsize  # extension flag right after the header
    esize = rng.choice((0, 7, 8, 16, -16, 0x7FFFFFF0, 1 << 20, len(data)))
    ecode = rng.choice((0, 4, 6, 32, 44, 99999))
    data[start : start + 4] = bytes([1, 0, 0, 0])
    ext = struct.pack(endian + "ii", esize, ecode) + bytes(rng.randrange(256) for _ in range(8))
    data[start + 4 : start + 4 + len(ext)] = ext
    out = _write_like_seed(seed, _out(out_dir, seed), bytes(data))
    return out, f"extension flag set, first extension esize={esize} ecode={ecode} over the bytes after the header"


def mut_gzip(rng: random.Random, seed: Seed, out_dir: Path) -> tuple[Path, str]:
    """Corrupt the gzip container: deflate bytes, CRC, ISIZE, truncation, trailing garbage."""
    data = bytearray(seed.path.read_bytes())
    how = rng.choice(("flip-deflate", "crc", "isize", "truncate", "trailing", "second-member", "header-flag"))
    if how == "flip-deflate":
        lo, hi = 10, len(data) - 8
        data, done = _flip(rng, bytes(data), lo + (hi - lo) // 4, hi, rng.choice((1, 2, 4)))
        recipe = f"flip deflate-stream bytes {', '.join(done)}"
    elif how == "crc":
        pos = len(data) - 8 + rng.randrange(4)
        data[pos] ^= 1 << rng.randrange(8)
        recipe = f"flip a bit of the CRC32 trailer (byte {pos})"
    elif how == "isize":
        value = rng.choice((0, 1, 0xFFFFFFFF, struct.unpack("<I", data[-4:])[0] + 1))
        data[-4:] = struct.pack("<I", value)
        recipe = f"set the ISIZE trailer to {value}"
    elif how == "truncate":
        cut = rng.randrange(10, len(data))
        del data[cut:]
        recipe = f"truncate the gzip file at byte {cut} of {len(seed.path.read_bytes())}"
    elif how == "trailing":
        data += bytes(rng.randrange(256) for _ in range(rng.choice((1, 7, 64))))
        recipe = "append garbage after the gzip stream"
    elif how == "second-member":
        data += gzip.compress(b"\0" * 1000, mtime=0)
        recipe = "append a second gzip member (1000 zero bytes)"
    else:
        data[3] = rng.choice((0x04, 0x08, 0x10, 0xE0))
        recipe = f"set the gzip FLG byte to {data[3]:#x}"
    out = _out(out_dir, seed)
    out.write_bytes(bytes(data))
    return out, recipe


def _series_source(seed: Seed) -> Path:
    return Path(next(t for t in seed.tags if t.startswith("source:"))[len("source:") :])


def mut_series(rng: random.Random, seed: Seed, out_dir: Path) -> tuple[Path, str, bool]:
    """Break a 5-slice series: gap, duplicate, uneven step, size, RGB slice, NaN position, tilt, orientation."""
    from pydicom.uid import generate_uid

    datasets = _series_datasets(_series_source(seed))
    how = rng.choice(
        ("gap", "duplicate", "uneven", "size", "rgb", "rgb-alone", "nan-position", "tilt", "orientation", "no-ipp")
        + ("other-series",)
    )
    k = rng.randrange(1, 4)
    with _pydicom_lenient():
        if how == "gap":
            del datasets[k]
            recipe = f"slice {k} of 5 removed (a gap)"
        elif how == "duplicate":
            dup = copy.deepcopy(datasets[k])
            dup.SOPInstanceUID = generate_uid(entropy_srcs=["dup", str(k)])
            dup.file_meta.MediaStorageSOPInstanceUID = dup.SOPInstanceUID
            datasets.append(dup)
            recipe = f"slice {k} duplicated (same position, new SOPInstanceUID)"
        elif how == "uneven":
            ipp = [float(v) for v in datasets[k].ImagePositionPatient]
            iop = np.array([float(v) for v in datasets[k].ImageOrientationPatient])
            ipp = np.array(ipp) + 1.0 * np.cross(iop[:3], iop[3:])
            datasets[k].ImagePositionPatient = [f"{v:.4f}" for v in ipp]
            recipe = f"slice {k} moved 1.0 mm along the normal (uneven steps)"
        elif how == "size":
            ds = datasets[k]
            arr = ds.pixel_array[:-8, :]
            ds.Rows = arr.shape[0]
            ds.PixelData = arr.tobytes()
            recipe = f"slice {k} made {arr.shape[0]}x{arr.shape[1]} (mixed sizes)"
        elif how == "rgb":
            datasets[k] = _rgb_from(datasets[k])
            recipe = f"slice {k} replaced by an 8-bit RGB copy (mixed samples per pixel)"
        elif how == "rgb-alone":
            datasets = [_rgb_from(datasets[k])]
            recipe = "a series folder holding one RGB slice"
        elif how == "nan-position":
            _set_raw(datasets[k], "ImagePositionPatient", rng.choice((b"nan\\0\\0", b"0\\0\\nan", b"inf\\0\\0")))
            recipe = f"slice {k} ImagePositionPatient non-finite"
        elif how == "tilt":
            angle = rng.choice((5.0, 15.0, 30.0))
            for i, ds in enumerate(datasets):
                ipp = np.array([float(v) for v in ds.ImagePositionPatient])
                ipp[1] += i * 2.5 * math.tan(math.radians(angle))
                ds.ImagePositionPatient = [f"{v:.4f}" for v in ipp]
            recipe = f"positions sheared by a {angle} degree gantry tilt (orientation unchanged)"
        elif how == "orientation":
            _set_raw(datasets[k], "ImageOrientationPatient", rng.choice((b"0\\1\\0\\0\\0\\-1", b"1\\0\\0\\0\\0\\-1")))
            recipe = f"slice {k} orientation changed"
        elif how == "other-series":
            datasets[k].SeriesInstanceUID = generate_uid(entropy_srcs=["other", str(k)])
            recipe = f"slice {k} given another SeriesInstanceUID (two series in one folder)"
        else:
            _set_raw(datasets[k], "ImagePositionPatient", None)
            recipe = f"slice {k} ImagePositionPatient deleted"
        folder = out_dir / seed.path.name
        write_series(folder, datasets)
    # issue 11: gap, uneven steps, duplicates, mixed sizes or samples, bad positions are refused; a tilt
    # may be corrected as dcm2niix does, and one RGB slice alone is a valid single image
    return folder, recipe, how not in ("tilt", "rgb-alone")


def mut_series_file(rng: random.Random, seed: Seed, out_dir: Path) -> tuple[Path, str]:
    """One slice of a valid series damaged by a single-file mutation."""
    folder = out_dir / seed.path.name
    shutil.copytree(seed.path, folder)
    files = sorted(folder.iterdir())
    victim = files[rng.randrange(len(files))]
    sub = Seed(seed.name + "/" + victim.name, victim, "dicom", victim.stat().st_size, frozenset({"preamble", "image"}))
    mutator = rng.choice((mut_truncate, mut_flip_header, mut_flip_pixels, mut_dicom_tag, mut_dicom_missing))
    tmp = out_dir / "_slice"
    path, recipe = mutator(rng, sub, tmp)
    shutil.move(path, victim)
    shutil.rmtree(tmp, ignore_errors=True)
    return folder, f"{victim.name}: {mutator.__name__[4:]}: {recipe}"


def mut_scramble(rng: random.Random, seed: Seed, out_dir: Path) -> tuple[Path, str]:
    """Shuffle InstanceNumber and the file names: the loaded volume must not change."""
    import pydicom

    folder = out_dir / seed.path.name
    folder.mkdir(parents=True)
    files = sorted(seed.path.iterdir())
    numbers = list(range(1, len(files) + 1))
    rng.shuffle(numbers)
    names = [f"{rng.randrange(10**8):08d}_{i}.dcm" for i in range(len(files))]
    for src, number, name in zip(files, numbers, names, strict=True):
        ds = pydicom.dcmread(src)
        ds.InstanceNumber = number
        ds.save_as(folder / name)
    recipe = f"InstanceNumber shuffled to {numbers}, files renamed"
    if rng.random() < 0.5:  # files a folder export often carries beside the slices are skipped
        (folder / "README.txt").write_text("exported by a PACS\n")
        (folder / ".DS_Store").write_bytes(bytes(rng.randrange(256) for _ in range(64)))
        recipe += ", README.txt and .DS_Store added"
    return folder, recipe


def mut_stacked(rng: random.Random, seed: Seed, out_dir: Path) -> tuple[Path, str]:
    """Two or three single-file mutations applied one after the other (a bad value, then a truncation...)."""
    current, recipes = seed, []
    path = seed.path
    for step in range(rng.choice((2, 3))):
        names = [m for m in applicable(current) if m not in _NOT_STACKED]
        name = rng.choice(names)
        path, recipe, *_ = MUTATORS[name][0](rng, current, out_dir / f"step{step}")
        recipes.append(f"{name}: {recipe}")
        current = Seed(seed.name, path, seed.kind, seed.raw_bytes, seed.tags)
    final = out_dir / path.name
    shutil.move(path, final)
    for step_dir in out_dir.glob("step*"):
        shutil.rmtree(step_dir, ignore_errors=True)
    return final, " | then ".join(recipes)


_NOT_STACKED = ("stacked", "rename", "series", "series-file", "scramble")

MUTATORS: dict[str, tuple[Mutator, Callable[[Seed], bool]]] = {
    "truncate": (mut_truncate, lambda s: s.kind != "series"),
    "flip-header": (mut_flip_header, lambda s: s.kind != "series"),
    "flip-pixels": (mut_flip_pixels, lambda s: s.kind != "series"),
    "dicom-tag": (mut_dicom_tag, lambda s: s.kind == "dicom"),
    "dicom-missing": (mut_dicom_missing, lambda s: s.kind == "dicom"),
    "modality-lut": (mut_lut, lambda s: s.kind == "dicom" and "image" in s.tags),
    "transfer-syntax": (mut_transfer_syntax, lambda s: s.kind == "dicom" and "preamble" in s.tags),
    "deflate-stream": (mut_deflate_stream, lambda s: "deflated" in s.tags),
    "encapsulation": (mut_encapsulation, lambda s: "encapsulated" in s.tags and "deflated" not in s.tags),
    "rename": (mut_rename, lambda s: s.kind != "series"),
    "nifti-header": (mut_nifti_header, lambda s: s.kind == "nifti"),
    "nifti-size": (mut_nifti_size, lambda s: s.kind == "nifti"),
    "nifti-extension": (mut_nifti_extension, lambda s: s.kind == "nifti"),
    "gzip": (mut_gzip, lambda s: "gz" in s.tags),
    "series": (mut_series, lambda s: s.kind == "series"),
    "series-file": (mut_series_file, lambda s: s.kind == "series"),
    "scramble": (mut_scramble, lambda s: s.kind == "series"),
    "stacked": (mut_stacked, lambda s: s.kind != "series"),
}


def applicable(seed: Seed) -> list[str]:
    return [name for name, (_, ok) in MUTATORS.items() if ok(seed)]


def make_case(index: int, seed: Seed, mutation: str, rng: random.Random, work: Path) -> Case:
    """Apply ``mutation`` to ``seed`` in ``work/<index>/``; ``mutation == 'none'`` checks the seed itself."""
    if mutation == "none":
        return Case(index, seed, "none", "unmutated", seed.path)
    out_dir = work / f"{index:06d}"
    with warnings.catch_warnings():  # pydicom warns about every damaged file it reads or writes here
        warnings.simplefilter("ignore")
        path, recipe, *refused = MUTATORS[mutation][0](rng, seed, out_dir)
    expect = seed.name if mutation == "scramble" else None
    return Case(index, seed, mutation, recipe, path, expect_same_as=expect, expect_refused=bool(refused and refused[0]))


def case_rng(run_seed: int, index: int) -> random.Random:
    return random.Random(f"medvision-fuzz:{run_seed}:{index}")


# ---------------------------------------------------------------------------------------------- contract


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def _medvision_frame(exc: BaseException) -> str:
    """The innermost medvision frame of the exception (or of its causes): ``file:line in func``."""
    for item in _chain(exc):
        frames = [f for f in traceback.extract_tb(item.__traceback__) if f"{os.sep}medvision{os.sep}" in f.filename]
        frames = [f for f in frames if not f.filename.endswith("_boundary.py")] or frames
        if frames:
            f = frames[-1]
            rel = f.filename[f.filename.rfind(f"medvision{os.sep}") :]
            return f"{rel}:{f.lineno} in {f.name}"
    return "(no medvision frame)"


def _root_frame(exc: BaseException) -> str:
    """Where the original exception was raised (any library): ``package/file.py:line in func``."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    f = frames[-1]
    parts = Path(f.filename).parts
    return f"{'/'.join(parts[-2:])}:{f.lineno} in {f.name}"


def _root(exc: BaseException) -> BaseException:
    return _chain(exc)[-1]


def _rss() -> tuple[int, int]:
    """(current RSS, peak RSS since the last reset) in bytes, from /proc (falls back to getrusage)."""
    try:
        values = {}
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    values[line.split(":")[0]] = int(line.split()[1]) * 1024
        return values["VmRSS"], values["VmHWM"]
    except (OSError, KeyError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return peak, peak


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _vm_size() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def check_result(array: Any, meta: dict[str, Any]) -> str | None:
    """What is wrong with a loaded result, or ``None``."""
    from medvision.io import summarise

    array = np.asarray(array)
    if array.size == 0:
        return f"empty array {array.shape}"
    if array.dtype.kind in "fc" and not np.isfinite(array).all():
        return f"{int(np.count_nonzero(~np.isfinite(array)))} non-finite voxels"
    affine = np.asarray(meta.get("affine"), dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        return f"affine not a finite 4x4: {affine.tolist()}"
    spatial = [int(s) for s in np.asarray(meta.get("spatial_shape", ()))]
    if not spatial or tuple(array.shape[: len(spatial)]) != tuple(spatial) or array.ndim > len(spatial) + 1:
        return f"array shape {array.shape} inconsistent with spatial_shape {spatial}"
    norms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    n = min(len(spatial), 3)
    if not (norms[:n] > 0).all():
        return f"affine has a zero column: norms {norms.tolist()}"
    spacing = np.asarray(meta.get("spacing_mm", ()), dtype=np.float64)
    if spacing.shape != (len(spatial),) or not np.isfinite(spacing).all() or not (spacing > 0).all():
        return f"spacing_mm {spacing.tolist()} not finite and positive for {len(spatial)} spatial axes"
    if not np.allclose(spacing[:n], norms[:n], rtol=1e-4, atol=0):
        return f"spacing_mm {spacing.tolist()} differs from the affine's column norms {norms[:n].tolist()}"
    notes = meta.get("notes", [])
    if not isinstance(notes, list) or not all(isinstance(s, str) for s in notes):
        return f"meta['notes'] is not a list of strings: {notes!r}"
    try:
        json.dumps(summarise(array, meta), allow_nan=False)
    except ValueError as exc:
        return f"summarise() is not strict JSON ({exc})"
    return None


def digest(array: Any, meta: dict[str, Any]) -> str:
    array = np.ascontiguousarray(array)
    h = hashlib.sha1(str((array.shape, str(array.dtype))).encode())
    h.update(array.tobytes())
    h.update(np.round(np.asarray(meta["affine"], dtype=np.float64), 4).tobytes())
    return h.hexdigest()


_PROGRAMMING_ERRORS = (NameError, ImportError, SyntaxError)  # UnboundLocalError is a NameError


def check_path(path: str | Path, *, max_voxels: int = DEFAULT_MAX_VOXELS) -> dict[str, Any]:
    """Load ``path`` and judge the outcome against the contract (no time or memory checks here)."""
    from medvision.errors import MedvisionError
    from medvision.io import load

    path = str(path)
    result: dict[str, Any] = {}
    try:
        array, meta = load(path, max_voxels=max_voxels)
    except KeyboardInterrupt:
        raise
    except MedvisionError as exc:
        line = exc.one_line()
        root = _root(exc)
        catch_all = any(f.filename.endswith("_boundary.py") for f in traceback.extract_tb(exc.__traceback__)[-1:])
        result.update(
            exc_type=type(exc).__name__,
            message=line[:500],
            # for the catch-all, where the original exception came from is what a fix needs
            frame=_medvision_frame(root if catch_all else exc),
            root_type=type(root).__name__ if root is not exc else "",
            root_frame=_root_frame(root) if root is not exc else "",
            catch_all=catch_all,
        )
        if root is not exc:
            result["traceback"] = "".join(traceback.format_exception(root))[-4000:]
        bug = next((e for e in _chain(exc) if isinstance(e, _PROGRAMMING_ERRORS)), None)
        if bug is not None:
            # a typo in a reader turns every file into a "typed" error through the catch-all: that is a bug
            result["outcome"] = "untyped"
            result["message"] = f"programming error behind a typed error: {type(bug).__name__}: {bug} ({line[:200]})"
        elif any(isinstance(e, MemoryError) for e in _chain(exc)):
            result["outcome"] = "memory"
        elif path not in line or "unexpected" in line.lower():
            result["outcome"] = "badmessage"
        else:
            result["outcome"] = "typed"
        return result
    except BaseException as exc:  # noqa: BLE001 - anything else breaks the contract
        result.update(
            outcome="memory" if isinstance(exc, MemoryError) else "untyped",
            exc_type=type(exc).__name__,
            message=" ".join(str(exc).split())[:500],
            frame=_medvision_frame(exc),
            root_type=type(_root(exc)).__name__,
            root_frame=_root_frame(_root(exc)),
            traceback="".join(traceback.format_exception(exc))[-4000:],
        )
        return result
    try:
        problem = check_result(array, meta)
    except Exception as exc:  # noqa: BLE001 - summarise() or the checks themselves failed on this result
        problem = f"checking the result raised {type(exc).__name__}: {exc}"
        result["traceback"] = "".join(traceback.format_exception(exc))[-4000:]
    if problem:
        result.update(outcome="nonfinite", message=problem, exc_type="", frame="")
    else:
        result.update(outcome="ok", digest=digest(array, meta), shape=list(np.asarray(array).shape))
    return result


# ------------------------------------------------------------------------------------------------ worker


def _worker_main(conn: Any) -> None:
    """Loop: receive (path, max_voxels, memory bound), load under the bounds, send the verdict."""
    warnings.simplefilter("ignore")
    for name in ("nibabel", "pydicom"):  # both log a line per damaged header they repair
        logging.getLogger(name).setLevel(logging.CRITICAL)
    os.environ.setdefault("MEDVISION_OFFLINE", "1")
    import medvision.io  # noqa: F401 - preloaded by the forkserver; imported here when it is not

    can_reset = _reset_peak()
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        if request is None:
            return
        if request == "ping":
            conn.send("pong")
            continue
        path, max_voxels, bound = request
        rss_before, _ = _rss()
        if can_reset:
            _reset_peak()
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        try:
            resource.setrlimit(resource.RLIMIT_AS, (_vm_size() + bound, hard))
        except (ValueError, OSError):
            pass
        start = time.perf_counter()
        try:
            result = check_path(path, max_voxels=max_voxels)
        finally:
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        result["seconds"] = round(time.perf_counter() - start, 3)
        _, peak = _rss()
        result["rss_growth_mib"] = round((peak - rss_before) / MIB, 1)
        if peak - rss_before > bound and result["outcome"] in ("ok", "typed"):
            result["outcome"] = "memory"
            result["message"] = f"peak RSS grew {(peak - rss_before) / MIB:.0f} MiB (bound {bound / MIB:.0f} MiB)"
        conn.send(result)


class Runner:
    """Checks inputs in a worker process that can be killed (hang) and whose death is seen (crash)."""

    def __init__(self, *, timeout: float = 20.0, max_voxels: int = DEFAULT_MAX_VOXELS) -> None:
        import multiprocessing as mp

        self.timeout = timeout
        self.max_voxels = max_voxels
        self.ctx = mp.get_context("forkserver")
        self.ctx.set_forkserver_preload(["medvision.io", "tests.io.fuzz_corpus"])
        self.proc: Any = None
        self.conn: Any = None
        self.restarts = 0

    def _start(self) -> None:
        parent, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_worker_main, args=(child,), daemon=True)
        self.proc.start()
        child.close()
        self.conn = parent
        self.conn.send("ping")
        if not self.conn.poll(300):
            raise RuntimeError("fuzz worker did not start within 300 s")
        assert self.conn.recv() == "pong"

    def _stop(self) -> None:
        if self.proc is not None:
            if self.proc.is_alive():
                self.proc.kill()
            self.proc.join(10)
            self.conn.close()
        self.proc = self.conn = None

    def close(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            try:
                self.conn.send(None)
                self.proc.join(5)
            except OSError:
                pass
        self._stop()

    def __enter__(self) -> Runner:
        self._start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def check(self, case: Case) -> dict[str, Any]:
        if self.proc is None or not self.proc.is_alive():
            self._stop()
            self._start()
            self.restarts += 1
        self.conn.send((str(case.path), self.max_voxels, case.memory_bound))
        if self.conn.poll(self.timeout):
            try:
                return self.conn.recv()
            except (EOFError, OSError):
                self.proc.join(5)
                code = self.proc.exitcode
                self._stop()
                return {"outcome": "crash", "exc_type": "", "message": f"worker died (exit code {code})", "frame": ""}
        self._stop()
        return {"outcome": "hang", "exc_type": "", "message": f"no answer within {self.timeout:.0f} s", "frame": ""}


# ----------------------------------------------------------------------------------------------- running


def judge(case: Case, verdict: dict[str, Any], references: dict[str, dict[str, Any]]) -> None:
    """Record the verdict on the case; a case that must reproduce its seed is compared with it."""
    case.outcome = verdict["outcome"]
    case.detail = verdict
    if case.mutation == "none":
        references[case.seed.name] = verdict
    if case.expect_refused and case.outcome == "ok":
        case.outcome = "accepted"
        message = f"loaded a series that must be refused ({case.recipe}), shape {verdict.get('shape')}"
        case.detail = {**verdict, "message": message}
    if case.expect_same_as and case.outcome in ("ok", "typed"):
        ref = references.get(case.expect_same_as)
        if ref is not None and (ref["outcome"], ref.get("digest")) != (case.outcome, verdict.get("digest")):
            case.outcome = "mismatch"
            case.detail = {
                **verdict,
                "message": f"differs from the unmutated series: {ref['outcome']} {ref.get('digest', '')[:10]} vs "
                f"{verdict['outcome']} {verdict.get('digest', '')[:10]} ({verdict.get('message', '')})",
            }


def group_key(case: Case) -> tuple[str, str, str, str]:
    d = case.detail
    message = d.get("message", "")
    # numbers and paths vary from input to input; the kind of failure does not
    pattern = message.replace(str(case.path), "<path>")
    pattern = " ".join("#" if any(ch.isdigit() for ch in w) else w for w in pattern.split())[:160]
    return case.outcome, d.get("exc_type", ""), d.get("frame", ""), pattern


def owner(case: Case) -> str:
    frame = case.detail.get("frame", "")
    if case.seed.kind == "series" or "sort_slices" in frame or "geometry" in frame:
        return "C (series geometry)"
    if case.seed.kind == "nifti" or "nifti" in frame or str(case.path).endswith((".nii", ".nii.gz")):
        return "B (NIfTI)"
    return "A (DICOM files)"


def save_failure(case: Case, folder: Path) -> Path:
    """Copy a failing input under ``folder`` with its recipe and verdict; returns the copy."""
    target = folder / f"{case.index:06d}-{case.outcome}"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    copy = target / case.path.name
    if case.path.is_dir():
        shutil.copytree(case.path, copy)
    else:
        shutil.copyfile(case.path, copy)
    info = {
        "seed": case.seed.name,
        "seed_path": str(case.seed.path),
        "mutation": case.mutation,
        "recipe": case.recipe,
        "reproduce": f".venv/bin/python -c \"import medvision.io as m; m.load('{copy}')\"",
        **{k: v for k, v in case.detail.items() if k != "traceback"},
    }
    (target / "case.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    if case.detail.get("traceback"):
        (target / "traceback.txt").write_text(case.detail["traceback"])
    return copy


def findings_markdown(cases: list[Case], saved: dict[int, Path], header: str) -> str:
    """The outstanding failures grouped by cause, one reproducer each (for /tmp/fuzz_findings.md)."""
    groups: dict[tuple[str, str, str, str], list[Case]] = {}
    for case in cases:
        if case.outcome in FAILURES:
            groups.setdefault(group_key(case), []).append(case)
    lines = [header, ""]
    if not groups:
        lines += ["No outstanding failures.", ""]
    by_owner: dict[str, list[tuple[tuple[str, str, str, str], list[Case]]]] = {}
    for key, members in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        by_owner.setdefault(owner(members[0]), []).append((key, members))
    for who in sorted(by_owner):
        lines += [f"## Engineer {who}", ""]
        for (outcome, exc_type, frame, pattern), members in by_owner[who]:
            ex = members[0]
            mutations = sorted({m.mutation for m in members})
            lines.append(f"### {outcome}: {exc_type or '-'} at {frame or '-'} ({len(members)} input(s))")
            lines.append(f"- message: `{pattern}`")
            seed_names = sorted({m.seed.name for m in members})
            lines.append(f"- mutations: {', '.join(mutations)}; seeds ({len(seed_names)}): {', '.join(seed_names[:4])}")
            lines.append(f"- example: seed `{ex.seed.name}`, {ex.mutation}: {ex.recipe}")
            roots = sorted({f"{m.detail.get('root_type', '')} at {m.detail.get('root_frame')}" for m in members})
            roots = [r for r in roots if not r.endswith((" at ", " at None"))]
            if roots:
                lines.append(f"- raised first by: {'; '.join(roots[:3])}")
            if ex.index in saved:
                code = f"import medvision.io as m; m.load('{saved[ex.index]}')"
                lines.append(f'- reproduce: `.venv/bin/python -c "{code}"`')
            lines.append("")
    refused = [c for c in cases if c.mutation == "none" and c.outcome == "typed" and "image" in c.seed.tags]
    if refused:
        lines += ["## Unmutated image seeds that are refused (check these are meant to be refused)", ""]
        for case in refused[:40]:
            text = case.detail.get("message", "").replace(str(case.path), "").lstrip(": ")
            lines.append(f"- `{case.seed.name}`: {case.detail.get('exc_type')}: {text[:200]}")
        lines.append("")
    catch_all: dict[str, list[Case]] = {}
    for case in cases:
        if case.outcome == "typed" and case.detail.get("catch_all"):
            catch_all.setdefault(f"{case.detail.get('root_type')} at {case.detail.get('frame')}", []).append(case)
    if catch_all:
        lines += ["## Typed only by the catch-all `guarded()` (allowed, but the field is not named)", ""]
        for where, members in sorted(catch_all.items(), key=lambda kv: -len(kv[1]))[:25]:
            ex = members[0]
            lines.append(f"- {len(members)}x {where}: e.g. `{ex.seed.name}` {ex.mutation}: {ex.recipe[:140]}")
        lines.append("")
    return "\n".join(lines) + "\n"


def counts_table(cases: list[Case]) -> str:
    """Outcome counts per mutation class, as a text table."""
    classes = sorted({c.mutation for c in cases})
    rows = [["mutation", *OUTCOMES, "total"]]
    for cls in [*classes, "ALL"]:
        members = [c for c in cases if cls in ("ALL", c.mutation)]
        rows.append([cls, *[str(sum(c.outcome == o for c in members)) for o in OUTCOMES], str(len(members))])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    )


def cleanup(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


__all__ = [
    "FAILURES",
    "MUTATORS",
    "OUTCOMES",
    "Case",
    "Runner",
    "Seed",
    "applicable",
    "build_corpus",
    "case_rng",
    "check_path",
    "counts_table",
    "findings_markdown",
    "judge",
    "make_case",
    "save_failure",
]


def pick(run_seed: int, index: int, seeds: list[Seed]) -> tuple[random.Random, Seed, str]:
    """The seed and mutation class of case ``index``: a class uniformly, then a seed it applies to."""
    rng = case_rng(run_seed, index)
    classes = sorted({m for s in seeds for m in applicable(s)})
    mutation = rng.choice(classes)
    seed = rng.choice([s for s in seeds if MUTATORS[mutation][1](s)])
    return rng, seed, mutation


@dataclass
class RunResult:
    cases: list[Case]
    skipped: dict[str, int]
    saved: dict[int, Path]
    seconds: float


def run_fuzz(
    seeds: list[Seed],
    work: Path,
    *,
    run_seed: int = 0,
    seconds: float = 60.0,
    max_cases: int | None = None,
    timeout: float = 20.0,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    failures_dir: Path | None = None,
    max_saved: int = 100,
    progress: Callable[[str], None] | None = None,
) -> RunResult:
    """Check every seed unmutated, then mutated cases until ``seconds`` or ``max_cases`` run out."""
    start = time.monotonic()
    cases: list[Case] = []
    skipped: dict[str, int] = {}
    saved: dict[int, Path] = {}
    references: dict[str, dict[str, Any]] = {}
    case_dir = work / "cases"
    last_report = start

    def record(case: Case, verdict: dict[str, Any]) -> None:
        judge(case, verdict, references)
        cases.append(case)
        if case.outcome in FAILURES and failures_dir is not None and len(saved) < max_saved:
            saved[case.index] = save_failure(case, failures_dir)

    with Runner(timeout=timeout, max_voxels=max_voxels) as runner:
        for i, seed in enumerate(seeds):
            case = make_case(i, seed, "none", case_rng(run_seed, i), case_dir)
            record(case, runner.check(case))
        index = len(seeds)
        while time.monotonic() - start < seconds and (max_cases is None or index - len(seeds) < max_cases):
            rng, seed, mutation = pick(run_seed, index, seeds)
            try:
                case = make_case(index, seed, mutation, rng, case_dir)
            except Exception:  # noqa: BLE001 - a mutation that does not apply to this seed's bytes
                skipped[mutation] = skipped.get(mutation, 0) + 1
                shutil.rmtree(case_dir / f"{index:06d}", ignore_errors=True)
                index += 1
                continue
            record(case, runner.check(case))
            shutil.rmtree(case_dir / f"{index:06d}", ignore_errors=True)
            index += 1
            if progress is not None and time.monotonic() - last_report > 30:
                last_report = time.monotonic()
                bad = sum(c.outcome in FAILURES for c in cases)
                progress(f"{time.monotonic() - start:6.0f} s: {len(cases)} inputs checked, {bad} failing")
    return RunResult(cases, skipped, saved, time.monotonic() - start)
