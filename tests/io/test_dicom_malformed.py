"""The DICOM single-file boundary: every malformed file the issue lists is refused with a typed error naming the
element (tag and keyword), the fallbacks that are allowed are taken and said in ``meta["notes"]``, and the
well-formed files pydicom ships still load with pydicom's values.

Fixtures are pydicom's own test files, re-saved or byte-patched in ``tmp_path``.
"""

from __future__ import annotations

import io
import json
import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_fragments
from pydicom.pixels import apply_modality_lut
from pydicom.sequence import Sequence
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid

from medvision.errors import CorruptDataError, HeaderError, InputError, SizeLimitError, UnsupportedFormatError
from medvision.io import load, load_radiograph_tensor
from medvision.io.dicom import normalised_meta, read_dataset, to_brightness
from medvision.io.fast import area_resize
from tests.conftest import pydicom_file, write_dicom


def _ds(name: str = "CT_small.dcm") -> pydicom.Dataset:
    return pydicom.dcmread(pydicom_file(name))


def _save(ds: pydicom.Dataset, path: Path, patch: tuple[bytes, bytes] | None = None) -> Path:
    """Save ``ds``; ``patch`` replaces one byte string by another of the same length in the written file, to
    put values in that pydicom (rightly) refuses to write, such as 'abc' in a DS element."""
    ds.save_as(path, enforce_file_format=False)
    if patch is not None:
        old, new = patch
        data = path.read_bytes()
        assert len(old) == len(new) and data.count(old) == 1, (old, new)
        path.write_bytes(data.replace(old, new))
    return path


def _set(keyword: str, value: object, patch: tuple[bytes, bytes] | None = None, name: str = "CT_small.dcm"):
    def build(tmp: Path) -> Path:
        ds = _ds(name)
        holder = ds.file_meta if keyword == "TransferSyntaxUID" else ds
        if value is None:
            del holder[keyword]
        else:
            setattr(holder, keyword, value)
        return _save(ds, tmp / f"{keyword}.dcm", patch)

    return build


def _pixel_data(data: bytes, name: str = "CT_small.dcm"):
    def build(tmp: Path) -> Path:
        ds = _ds(name)
        ds.PixelData = data
        return _save(ds, tmp / "pixels.dcm")

    return build


def _deflate_claimed_on_plain_data(tmp: Path) -> Path:
    """CT_small's plain explicit-little body behind a file meta that says Deflated."""
    from pydicom.filewriter import write_file_meta_info

    data = pydicom_file("CT_small.dcm").read_bytes()
    group_length = struct.unpack("<I", data[140:144])[0]
    meta = _ds().file_meta
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buf = io.BytesIO()
    buf.write(data[:132])
    write_file_meta_info(buf, meta, enforce_standard=True)
    path = tmp / "deflate_plain.dcm"
    path.write_bytes(buf.getvalue() + data[144 + group_length :])
    return path


def _truncated_deflate(tmp: Path) -> Path:
    data = pydicom_file("image_dfl.dcm").read_bytes()
    path = tmp / "deflate_cut.dcm"
    path.write_bytes(data[: len(data) - 2000])
    return path


def _modality_lut(descriptor: list[int], lut: bytes):
    def build(tmp: Path) -> Path:
        ds = _ds()
        del ds.RescaleSlope, ds.RescaleIntercept
        item = Dataset()
        item.LUTDescriptor = descriptor
        item.ModalityLUTType = "HU"
        item["LUTData"] = pydicom.DataElement(0x00283006, "OW", lut)
        ds.ModalityLUTSequence = Sequence([item])
        return _save(ds, tmp / "lut.dcm")

    return build


def _rle_2frame_one_fragment(tmp: Path) -> Path:
    ds = _ds("SC_rgb_rle_2frame.dcm")
    start = ds.PixelData.find(b"\xfe\xff\x00\xe0", 8)  # after the (empty) basic offset table
    fragments = list(generate_fragments(ds.PixelData[start:]))
    ds.PixelData = encapsulate(fragments[:1])
    return _save(ds, tmp / "rle_one_fragment.dcm")


def _unknown_vr(tmp: Path) -> Path:
    data = pydicom_file("CT_small.dcm").read_bytes()
    at = data.find(b"\x28\x00\x30\x00DS")  # (0028,0030) PixelSpacing, explicit VR 'DS'
    path = tmp / "unknown_vr.dcm"
    path.write_bytes(data[: at + 4] + b"ZZ" + data[at + 6 :])
    return path


def _colour_declared_grey(tmp: Path) -> Path:
    """pydicom's native RGB example, relabelled as one grey sample per pixel (3x the bytes the header promises)."""
    ds = _ds("examples_rgb_color.dcm")
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    del ds.PlanarConfiguration
    return _save(ds, tmp / "rgb_as_grey.dcm")


def _no_syntax_compressed(tmp: Path) -> Path:
    ds = _ds("MR_small_RLE.dcm")
    del ds.file_meta.TransferSyntaxUID
    path = tmp / "rle_no_syntax.dcm"
    ds.save_as(path, enforce_file_format=False, implicit_vr=False, little_endian=True)
    return path


def _copy(name: str):
    def build(tmp: Path) -> Path:
        path = tmp / name
        path.write_bytes(pydicom_file(name).read_bytes())
        return path

    return build


IOP = (b"1.0\\0\\0\\0\\1\\0", ["1.0", "0", "0", "0", "1", "0"])
IPP = (b"1.5\\2.5\\3.5", ["1.5", "2.5", "3.5"])
# (case id, builder, error class, text the one-line message must hold: the element's tag and keyword)
MALFORMED: list[tuple[str, Callable[[Path], Path], type, str]] = [
    ("no-rows-no-syntax (pydicom meta_missing_tsyntax.dcm)", _copy("meta_missing_tsyntax.dcm"), HeaderError,
     "(0028,0010) Rows is missing"),
    ("no-syntax-compressed", _no_syntax_compressed, HeaderError, "no (0002,0010) TransferSyntaxUID"),
    ("no-BitsAllocated", _set("BitsAllocated", None), HeaderError, "(0028,0100) BitsAllocated is missing"),
    ("no-PixelRepresentation", _set("PixelRepresentation", None), HeaderError,
     "(0028,0103) PixelRepresentation is missing"),
    ("no-PlanarConfiguration", _set("PlanarConfiguration", None, name="SC_rgb_small_odd.dcm"), HeaderError,
     "(0028,0006) PlanarConfiguration is missing"),
    ("BitsAllocated-12", _set("BitsAllocated", 12), HeaderError, "(0028,0100) BitsAllocated is '12'"),
    ("NumberOfFrames-1A (pydicom badVR.dcm)", _copy("badVR.dcm"), HeaderError, "(0028,0008) NumberOfFrames is '1A'"),
    ("PixelSpacing-one-value", _set("PixelSpacing", ["0.5"]), HeaderError, "(0028,0030) PixelSpacing is '0.5'"),
    ("PixelSpacing-text", _set("PixelSpacing", ["0.25", "0.5"], (b"0.25\\0.5", b"abcd\\0.5")), HeaderError,
     "(0028,0030) PixelSpacing is 'abcd\\0.5'"),
    ("PixelSpacing-inf", _set("PixelSpacing", ["0.25", "0.5"], (b"0.25\\0.5", b"inf \\0.5")), HeaderError,
     "(0028,0030) PixelSpacing is 'inf\\0.5'"),
    ("PixelSpacing-zero", _set("PixelSpacing", ["0", "0.5"]), HeaderError, "(0028,0030) PixelSpacing is '0.0\\0.5'"),
    ("RescaleSlope-text", _set("RescaleSlope", "1.2345", (b"1.2345", b"abcdef")), HeaderError,
     "(0028,1053) RescaleSlope is 'abcdef', not a finite number"),
    ("RescaleSlope-nan", _set("RescaleSlope", "1.2345", (b"1.2345", b"nan   ")), HeaderError,
     "(0028,1053) RescaleSlope is 'nan', not a finite number"),
    ("RescaleSlope-inf", _set("RescaleSlope", "1.2345", (b"1.2345", b"inf   ")), HeaderError,
     "(0028,1053) RescaleSlope is 'inf', not a finite number"),
    ("RescaleSlope-1e308", _set("RescaleSlope", "1e308"), HeaderError, "beyond the float32 range"),
    ("RescaleSlope-0", _set("RescaleSlope", "0"), HeaderError, "(0028,1053) RescaleSlope is '0'"),
    ("RescaleIntercept-nan", _set("RescaleIntercept", "-1024", (b"-1024 ", b"nan   ")), HeaderError,
     "(0028,1052) RescaleIntercept is 'nan'"),
    ("ImagePositionPatient-text", _set("ImagePositionPatient", IPP[1], (IPP[0], b"1.5\\abc\\3.5")),
     HeaderError, "(0020,0032) ImagePositionPatient is '1.5\\abc\\3.5'"),
    ("ImagePositionPatient-nan", _set("ImagePositionPatient", IPP[1], (IPP[0], b"1.5\\nan\\3.5")),
     HeaderError, "(0020,0032) ImagePositionPatient is '1.5\\nan\\3.5'"),
    ("ImageOrientationPatient-nan", _set("ImageOrientationPatient", IOP[1], (IOP[0], b"nan\\0\\0\\0\\1\\0")),
     HeaderError, "(0020,0037) ImageOrientationPatient is 'nan\\0\\0\\0\\1\\0'"),
    ("ImageOrientationPatient-not-unit", _set("ImageOrientationPatient", ["2", "0", "0", "0", "1", "0"]), HeaderError,
     "(0020,0037) ImageOrientationPatient is '2.0\\0.0\\0.0\\0.0\\1.0\\0.0': the row and column cosines must be unit"),
    ("ImageOrientationPatient-parallel", _set("ImageOrientationPatient", ["1", "0", "0", "1", "0", "0"]), HeaderError,
     "their dot product 1"),
    ("deflate-claimed-on-plain-data", _deflate_claimed_on_plain_data, CorruptDataError,
     "(0002,0010) TransferSyntaxUID says Deflated"),
    ("deflate-truncated", _truncated_deflate, CorruptDataError, "incomplete or truncated stream"),
    ("syntax-unknown-uid", _set("TransferSyntaxUID", "1.2.3.4.5"), UnsupportedFormatError,
     "(0002,0010) TransferSyntaxUID 1.2.3.4.5 is not a transfer syntax"),
    ("syntax-not-a-uid", _set("TransferSyntaxUID", "hello"), HeaderError,
     "(0002,0010) TransferSyntaxUID is 'hello', not a valid UID"),
    ("modality-lut-uint99", _modality_lut([4, 0, 99], b"\x01\x00" * 4), HeaderError,
     "(0028,3002) LUTDescriptor in (0028,3000) ModalityLUTSequence is '4\\0\\99'"),
    ("modality-lut-short-data", _modality_lut([400, 0, 16], b"\x00" * 10), HeaderError,
     "(0028,3006) LUTData in (0028,3000) ModalityLUTSequence holds 5 entries, (0028,3002) LUTDescriptor promises 400"),
    ("pixel-data-empty", _pixel_data(b""), CorruptDataError, "(7FE0,0010) PixelData is empty (0 bytes)"),
    ("pixel-data-short", _pixel_data(b"\x00" * 1000), CorruptDataError,
     "(7FE0,0010) PixelData holds 1,000 bytes, the header promises 32,768"),
    ("colour-declared-grey", _colour_declared_grey, CorruptDataError,
     "(7FE0,0010) PixelData holds 230,400 bytes, 3 times the 76,800 the header promises"),
    ("encapsulation-fewer-fragments-than-frames", _rle_2frame_one_fragment, CorruptDataError,
     "(7FE0,0010) PixelData encapsulation is broken"),
    ("rle-garbage-fragment", _pixel_data(encapsulate([b"\x01" * 64]), "MR_small_RLE.dcm"), CorruptDataError,
     "(7FE0,0010) PixelData cannot be decoded as RLE Lossless"),
    ("unknown-VR", _unknown_vr, HeaderError, "(0028,0030) PixelSpacing has an unknown value representation 'ZZ'"),
]


@pytest.mark.parametrize(("case", "build", "error", "needle"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_file_is_refused_naming_the_element(tmp_path, case, build, error, needle) -> None:
    path = build(tmp_path)
    with pytest.raises(InputError) as err:
        load(path)
    assert type(err.value) is error, (case, err.value.one_line())
    line = err.value.one_line()
    assert line.startswith(f"{path}: "), line
    assert needle in line, line
    assert "\n" not in line and "; " in line  # one line, with a fix


def test_missing_transfer_syntax_is_inferred_for_native_data_with_a_note(tmp_path) -> None:
    ds = _ds()
    del ds.file_meta.TransferSyntaxUID
    path = tmp_path / "no_syntax.dcm"
    ds.save_as(path, enforce_file_format=False, implicit_vr=False, little_endian=True)
    assert "TransferSyntaxUID" not in pydicom.dcmread(path).file_meta
    array, meta = load(path)
    reference = _ds()
    expected = apply_modality_lut(reference.pixel_array, reference)
    np.testing.assert_allclose(array.T, expected)
    assert meta["transfer_syntax"] == ExplicitVRLittleEndian
    assert any("no (0002,0010) TransferSyntaxUID" in n and "Explicit VR Little Endian" in n for n in meta["notes"])


def test_missing_pixel_spacing_falls_back_to_1mm_with_a_note(tmp_path) -> None:
    array, meta = load(_set("PixelSpacing", None)(tmp_path))
    assert meta["spacing_mm"] == [1.0, 1.0] and meta["pixel_spacing_mm"] is None
    assert meta["notes"] == ["no (0028,0030) PixelSpacing or (0018,1164) ImagerPixelSpacing: 1 mm per pixel assumed"]
    # A well-formed file takes no fallback and carries no notes.
    assert "notes" not in load(pydicom_file("CT_small.dcm"))[1]


def test_imager_pixel_spacing_is_used_and_said(tmp_path) -> None:
    ds = _ds()
    del ds.PixelSpacing
    ds.ImagerPixelSpacing = ["0.3", "0.4"]
    _, meta = load(_save(ds, tmp_path / "imager.dcm"))
    assert meta["spacing_mm"] == [0.4, 0.3]
    assert any("(0018,1164) ImagerPixelSpacing" in note for note in meta["notes"])


def test_orientation_within_gdcm_tolerance_loads(tmp_path) -> None:
    # Cosines written with 4 decimals (|norm^2 - 1| ~ 2e-4): valid for GDCM/ITK, so valid here.
    path = _set("ImageOrientationPatient", ["0.7071", "0.7071", "0", "0", "0", "1"])(tmp_path)
    _, meta = load(path)
    # ... and normalised, so that the affine's column norms are the pixel spacings to float precision.
    assert meta["orientation"] == pytest.approx([0.5**0.5, 0.5**0.5, 0, 0, 0, 1], abs=1e-12)
    norms = np.linalg.norm(np.asarray(meta["affine"])[:3, :2], axis=0)
    np.testing.assert_allclose(norms, meta["spacing_mm"][:2], rtol=1e-12)


def test_implausible_spacing_and_position_are_refused(tmp_path) -> None:
    with pytest.raises(HeaderError) as err:
        load(_set("PixelSpacing", ["1e308", "1e308"])(tmp_path))
    assert "(0028,0030) PixelSpacing is '1e+308\\1e+308', outside 1e-06..10000 mm" in err.value.one_line()
    with pytest.raises(HeaderError, match=r"\(0020,0032\) ImagePositionPatient is .*more than 1e\+07 mm"):
        load(_set("ImagePositionPatient", ["1e300", "0", "0"])(tmp_path))


def test_padding_accepted_with_a_note_and_values_unchanged() -> None:
    reference, _ = load(pydicom_file("MR_small.dcm"))
    array, meta = load(pydicom_file("MR_small_padded.dcm"))  # 128 bytes after the 8,192 promised
    np.testing.assert_array_equal(array, reference)
    assert meta["notes"] == [
        "(7FE0,0010) PixelData has 128 bytes of trailing padding after the 8,192 the header promises: ignored"
    ]
    # The odd-length pad byte is no padding worth a note.
    assert "notes" not in load(pydicom_file("SC_rgb_small_odd.dcm"))[1]


def test_truncated_deferred_pixel_data_is_refused_before_decoding(tmp_path, rng) -> None:
    # 300 x 300 x 2 bytes is over the 64 KB deferral size: the pixel bytes are only in the file, not in memory.
    path = write_dicom(tmp_path / "big.dcm", rng.integers(0, 4000, (300, 300)).astype(np.uint16))
    data = path.read_bytes()
    path.write_bytes(data[:-1000])
    with pytest.raises(CorruptDataError, match=r"\(7FE0,0010\) PixelData is truncated: the file ends 179,000 bytes"):
        load(path)


def test_header_promising_more_than_the_file_allocates_nothing(tmp_path) -> None:
    """The allocation guard: 4000 x 4000 x 16 bits (32 MB) promised, 32 KB present: refused before decoding."""
    ds = _ds()
    ds.Rows = ds.Columns = 4000
    path = _save(ds, tmp_path / "promise.dcm")
    tracemalloc.start()
    try:
        with pytest.raises(CorruptDataError, match="the header promises 32,000,000"):
            load(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8_000_000, peak


def test_memory_error_inside_pydicom_is_typed(tmp_path, monkeypatch) -> None:
    def no_memory(self):
        raise MemoryError

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(no_memory))
    with pytest.raises(SizeLimitError, match=r"ran out of memory while decoding \(7FE0,0010\) PixelData"):
        load(pydicom_file("CT_small.dcm"))

    def no_memory_read(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(pydicom, "dcmread", no_memory_read)
    with pytest.raises(SizeLimitError, match="ran out of memory while reading the DICOM header"):
        read_dataset(pydicom_file("CT_small.dcm"))


def test_float_pixel_data_with_nan_is_refused(tmp_path) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.30"  # Parametric Map
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.BitsAllocated = 4, 5, 1, "MONOCHROME2", 32
    values = np.arange(20, dtype=np.float32).reshape(4, 5)
    ds.FloatPixelData = values.tobytes()
    ds.save_as(tmp_path / "finite.dcm", enforce_file_format=True)
    array, _ = load(tmp_path / "finite.dcm")
    np.testing.assert_array_equal(array.T, values)
    values[1, 2] = np.nan
    ds.FloatPixelData = values.tobytes()
    ds.save_as(tmp_path / "nan.dcm", enforce_file_format=True)
    with pytest.raises(CorruptDataError, match=r"\(7FE0,0008\) FloatPixelData holds 1 NaN or infinite values"):
        load(tmp_path / "nan.dcm")


def test_valid_modality_lut_gives_pydicom_values(tmp_path) -> None:
    lut = (np.arange(4096) // 2).astype(np.uint16)
    path = _modality_lut([4096, 0, 16], lut.tobytes())(tmp_path)
    ds = pydicom.dcmread(path)
    expected = apply_modality_lut(ds.pixel_array, ds)
    array, _ = load(path)
    np.testing.assert_allclose(array.T, expected)


def test_normalised_meta_is_finite_and_ignores_bad_windows_with_a_note(tmp_path) -> None:
    ds = _ds()
    ds.WindowCenter, ds.WindowWidth = "40.000", "400"
    path = _save(ds, tmp_path / "window.dcm", (b"40.000", b"nan   "))
    ds = read_dataset(path)
    meta = normalised_meta(ds)
    assert meta["window_center"] is None and meta["window_width"] == [400.0]
    assert any("(0028,1050) WindowCenter is 'nan'" in note for note in meta["notes"])
    json.dumps(meta, allow_nan=False)  # every number finite


def test_to_brightness_names_the_file_from_the_dataset(tmp_path) -> None:
    path = _set("RescaleSlope", "1.2345", (b"1.2345", b"nan   "))(tmp_path)
    ds = pydicom.dcmread(path)
    with pytest.raises(HeaderError) as err:
        to_brightness(ds.pixel_array, ds)
    assert err.value.one_line().startswith(f"{path}: (0028,1053) RescaleSlope is 'nan'")


def _pydicom_decodable() -> list[str]:
    import glob
    import os
    import warnings

    names = []
    folder = os.path.dirname(pydicom_file("CT_small.dcm"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in sorted(glob.glob(os.path.join(folder, "*.dcm"))):
            try:
                ds = pydicom.dcmread(path)
                ds.pixel_array  # noqa: B018 - pydicom itself decodes it
            except Exception:  # noqa: BLE001, S112 - pydicom cannot decode it: not a well-formed image file
                continue
            names.append(os.path.basename(path))
    return names


@pytest.mark.parametrize("name", _pydicom_decodable())
def test_every_file_pydicom_decodes_still_loads_with_pydicom_values(name: str) -> None:
    """pydicom's own well-formed image files pass the new checks unchanged (except pydicom's deliberately
    broken badVR.dcm, whose NumberOfFrames '1A' pydicom decodes as 1 frame after a warning)."""
    ds = pydicom.dcmread(pydicom_file(name))
    if name == "badVR.dcm":
        with pytest.raises(HeaderError, match=r"\(0028,0008\) NumberOfFrames is '1A'"):
            load(pydicom_file(name))
        return
    expected = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    array, meta = load(pydicom_file(name))
    samples = int(ds.get("SamplesPerPixel", 1))
    # MONAI order (x, y[, frames])[, samples] back to pydicom's ([frames,] rows, cols[, samples]).
    spatial = array.ndim - (1 if samples > 1 else 0)
    got = np.moveaxis(array, list(range(spatial)), list(range(spatial))[::-1])
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        return  # inverted on purpose (larger = brighter); covered in test_dicom.py
    if name.startswith("rtdose") or "PerFrameFunctionalGroupsSequence" in ds:
        got = np.sort(got.reshape(-1))
        expected = np.sort(expected.reshape(-1))
    np.testing.assert_allclose(got.reshape(expected.shape), expected, rtol=1e-6, atol=1e-3)
    json.dumps({k: v for k, v in meta.items() if k in ("notes", "spacing_mm", "orientation")}, allow_nan=False)


# --- the fast radiograph path: same contract -------------------------------------------------------------


def test_fast_path_refuses_what_load_refuses(tmp_path) -> None:
    for build, needle in (
        (_set("RescaleSlope", "1.2345", (b"1.2345", b"nan   ")), "(0028,1053) RescaleSlope is 'nan'"),
        (_pixel_data(b""), "(7FE0,0010) PixelData is empty"),
        (_set("PixelSpacing", ["0.25", "0.5"], (b"0.25\\0.5", b"inf \\0.5")), "(0028,0030) PixelSpacing is 'inf\\0.5'"),
        (_modality_lut([4, 0, 99], b"\x01\x00" * 4), "(0028,3002) LUTDescriptor"),
    ):
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        folder.mkdir()
        with pytest.raises(InputError) as err:
            load_radiograph_tensor(build(folder), size=32)
        assert needle in err.value.one_line()


def test_fast_path_notes_an_assumed_spacing(tmp_path, rng) -> None:
    stored = rng.integers(0, 4000, (40, 30)).astype(np.uint16)
    path = write_dicom(tmp_path / "a.dcm", stored, bits_stored=12)
    ds = pydicom.dcmread(path)
    del ds.PixelSpacing
    ds.save_as(path)
    tensor, meta = load_radiograph_tensor(path, size=16)
    assert bool(torch.isfinite(tensor).all())
    assert meta["spacing_mm"] == [1.0, 1.0]
    assert meta["notes"] == ["no (0028,0030) PixelSpacing or (0018,1164) ImagerPixelSpacing: 1 mm per pixel assumed"]


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_fast_path_applies_a_non_linear_modality_lut_before_resizing(tmp_path, photometric) -> None:
    """A Modality LUT need not be linear, so it cannot commute with the area average: it is applied first."""
    lut = (np.arange(4096, dtype=np.float64) ** 2 / 4096).astype(np.uint16)  # a square law
    ds = _ds()
    del ds.RescaleSlope, ds.RescaleIntercept
    ds.PixelRepresentation = 0
    ds.PhotometricInterpretation = photometric
    ds.PixelData = (np.abs(ds.pixel_array.astype(np.int32)) % 4096).astype(np.uint16).tobytes()
    item = Dataset()
    item.LUTDescriptor, item.ModalityLUTType = [4096, 0, 16], "US"
    item["LUTData"] = pydicom.DataElement(0x00283006, "OW", lut.tobytes())
    ds.ModalityLUTSequence = Sequence([item])
    path = _save(ds, tmp_path / "lut.dcm")
    tensor, _ = load_radiograph_tensor(path, size=32)
    reference = pydicom.dcmread(path)
    bright = apply_modality_lut(reference.pixel_array, reference).astype(np.float32)
    if photometric == "MONOCHROME1":
        bright = 65535 - bright
    scaled = (bright - bright.min()) / (bright.max() - bright.min())
    expected = area_resize(torch.from_numpy(scaled), 32).transpose(-1, -2)
    torch.testing.assert_close(tensor, expected, atol=1e-5, rtol=0)


def test_corrupt_length_in_the_file_meta_allocates_nothing(tmp_path) -> None:
    """A file-meta OB element claiming 805 MB: pydicom reads it without deferral; the read is bounded by the file."""
    data = bytearray(pydicom_file("CT_small.dcm").read_bytes())
    at = data.find(b"\x02\x00\x01\x00OB\x00\x00")  # (0002,0001) FileMetaInformationVersion
    data[at + 8 : at + 12] = struct.pack("<I", 0x30000000)
    path = tmp_path / "meta_length.dcm"
    path.write_bytes(bytes(data))
    tracemalloc.start()
    try:
        with pytest.raises(InputError):
            load(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16_000_000, peak


def test_damaged_rle_stream_does_not_panic(tmp_path) -> None:
    """Found by the fuzz harness: one flipped byte made pylibjpeg-rle (Rust) panic, past every Python handler.
    pydicom's own RLE decoder is used instead; a lossless stream with a flipped byte decodes (differently)."""
    data = bytearray(pydicom_file("rtdose_rle_1frame.dcm").read_bytes())
    assert data[2048] == 0x09
    data[2048] = 0x19
    path = tmp_path / "rle_flipped.dcm"
    path.write_bytes(bytes(data))
    try:
        array, _ = load(path)
    except InputError:
        return
    assert array.shape == (10, 10) and np.isfinite(array).all()


def test_a_decoder_panic_is_typed(monkeypatch) -> None:
    import pydicom.pixels

    class PanicException(BaseException):  # what pyo3 raises for a Rust panic
        pass

    def panic(*args, **kwargs):
        raise PanicException("index out of bounds: the len is 400 but the index is 400")

    monkeypatch.setattr(pydicom.pixels, "pixel_array", panic)
    with pytest.raises(CorruptDataError, match=r"\(7FE0,0010\) PixelData cannot be decoded \(the decoder failed"):
        load(pydicom_file("MR_small_RLE.dcm"))


def test_deferred_element_with_a_length_past_the_file_end_is_refused_without_allocating(tmp_path) -> None:
    """Found by the fuzz harness: an implicit-VR length flipped to 512 MB defers the element, and pydicom's
    deferred read (plain ``open``) would allocate it when the element is first touched."""
    data = bytearray(pydicom_file("MR_small_implicit.dcm").read_bytes())
    at = data.find(b"\x28\x00\x30\x00")  # (0028,0030) PixelSpacing: tag, then a 4-byte length (implicit VR)
    data[at + 4 : at + 8] = struct.pack("<I", 0x20000000)
    path = tmp_path / "length.dcm"
    path.write_bytes(bytes(data))
    tracemalloc.start()
    try:
        with pytest.raises(HeaderError) as err:
            load(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "(0028,0030) PixelSpacing states 536,870,912 bytes, past the end of the" in err.value.one_line()
    assert peak < 16_000_000, peak


def test_functional_groups_that_are_not_a_sequence_are_named(tmp_path) -> None:
    ds = _ds()
    ds["SharedFunctionalGroupsSequence"] = pydicom.DataElement(0x52009229, "OB", b"\x01\x02\x03\x04")
    with pytest.raises(HeaderError, match=r"\(5200,9229\) SharedFunctionalGroupsSequence is not a sequence"):
        load(_save(ds, tmp_path / "groups.dcm"))
