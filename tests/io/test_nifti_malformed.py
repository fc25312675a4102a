"""The NIfTI reader's boundary contract: malformed headers, damaged gzip streams and the affine rule.

Every fixture is a file nibabel ships (``anatomical.nii``, ``example4d.nii.gz``, ...) or a small array saved
by nibabel, with header fields edited in the stored bytes; expected values come from nibabel itself.
"""

from __future__ import annotations

import gzip
import struct
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.transforms import LoadImage, LoadImaged

from medvision.errors import (
    CorruptDataError,
    GeometryError,
    HeaderError,
    InputError,
    SizeLimitError,
    UnsupportedFormatError,
)
from medvision.io import NiftiReader, load
from tests.conftest import nibabel_file


def _edited(src: Path, dst: Path, **fields: object) -> Path:
    """Copy ``src`` to ``dst`` (gzip or not, by suffix) with header fields set as stored, unrepaired."""
    raw = src.read_bytes()
    if src.name.endswith(".gz"):
        raw = gzip.decompress(raw)
    klass = nib.Nifti2Header if 540 in struct.unpack("<i", raw[:4]) + struct.unpack(">i", raw[:4]) else nib.Nifti1Header
    size = klass.template_dtype.itemsize
    header = klass(raw[:size], check=False)
    for name, value in fields.items():
        header[name] = value
    raw = header.binaryblock + raw[size:]
    dst.write_bytes(gzip.compress(raw, mtime=0) if dst.name.endswith(".gz") else raw)
    return dst


def _anatomical(tmp_path: Path, name: str = "a.nii", **fields: object) -> Path:
    return _edited(nibabel_file("anatomical.nii"), tmp_path / name, **fields)


def _load_error(path: Path, kind: type[Exception], *words: str) -> str:
    with pytest.raises(kind) as info:
        load(path)
    text = info.value.one_line()
    assert text.startswith(str(path)), text
    for word in words:
        assert word in text, text
    return text


# --- the affine rule, and notes when the standard's fallback is taken -------------------------------------


def test_sform_is_used_and_spacing_is_its_column_norms() -> None:
    path = nibabel_file("anatomical.nii")
    array, meta = load(path)
    header = nib.load(path).header
    np.testing.assert_allclose(meta["affine"], header.get_sform())
    assert meta["affine_source"] == "sform"
    assert meta["notes"] == []
    assert meta["spacing_mm"] == pytest.approx(np.linalg.norm(header.get_sform()[:3, :3], axis=0).tolist())


@pytest.mark.parametrize("name", ["a.nii", "a.nii.gz"])
def test_qform_fallback_when_sform_code_is_zero(tmp_path: Path, name: str) -> None:
    path = _anatomical(tmp_path, name, sform_code=0, srow_x=[np.nan] * 4)  # an unused sform may hold anything
    array, meta = load(path)
    np.testing.assert_allclose(meta["affine"], nib.load(path).header.get_qform())
    np.testing.assert_allclose(array, nib.load(nibabel_file("anatomical.nii")).get_fdata())
    assert meta["affine_source"] == "qform"
    assert meta["notes"] == ["sform_code is 0: the affine comes from the qform (qform_code 2)"]
    assert meta["spacing_mm"] == pytest.approx([2.0, 2.0, 2.0])


def test_pixdim_only_affine_when_no_code_is_set(tmp_path: Path) -> None:
    path = _anatomical(tmp_path, sform_code=0, qform_code=0, pixdim=[1, 1.5, 2.5, 3.0, 0, 0, 0, 0])
    _, meta = load(path)
    np.testing.assert_allclose(meta["affine"], nib.load(path).header.get_base_affine())
    assert meta["affine_source"] == "pixdim"
    assert "NIfTI method 1" in meta["notes"][0]
    assert meta["spacing_mm"] == pytest.approx([1.5, 2.5, 3.0])


def test_pixdim_disagreeing_with_sform_is_noted(tmp_path: Path) -> None:
    path = _anatomical(tmp_path, qform_code=0, pixdim=[-1, 1, 1, 1, 0, 0, 0, 0])
    _, meta = load(path)
    np.testing.assert_allclose(meta["affine"], nib.load(nibabel_file("anatomical.nii")).affine)
    assert meta["spacing_mm"] == pytest.approx([2.0, 2.0, 2.0])  # MONAI's header "rectify" would have kept 1 mm
    assert "differ from the sform's voxel size" in meta["notes"][0]


def test_qfac_zero_and_unknown_code_are_noted(tmp_path: Path) -> None:
    path = _anatomical(tmp_path, sform_code=9, pixdim=[0, 2, 2, 2, 0, 0, 0, 0])
    _, meta = load(path)
    assert meta["affine_source"] == "qform"
    np.testing.assert_allclose(meta["affine"], nib.load(path).affine)  # nibabel: code 9 -> 0, qfac 0 -> 1
    assert any("sform_code 9 is not a NIfTI code" in note for note in meta["notes"])
    assert any("pixdim[0] (qfac) is 0" in note for note in meta["notes"])


# --- non-finite or invalid geometry is refused, naming the field ------------------------------------------


@pytest.mark.parametrize(
    ("fields", "kind", "words"),
    [
        ({"pixdim": [-1, 2, np.nan, 2, 0, 0, 0, 0]}, HeaderError, ["pixdim[2] is nan"]),
        ({"pixdim": [-1, 2, 2, np.inf, 0, 0, 0, 0]}, HeaderError, ["pixdim[3] is inf"]),
        ({"sform_code": 0, "pixdim": [-1, 2, 0, 2, 0, 0, 0, 0]}, HeaderError, ["(2, 0, 2 mm)", "pixdim[2] is 0"]),
        ({"sform_code": 0, "qform_code": 0, "pixdim": [1, -2, 2, 2, 0, 0, 0, 0]}, HeaderError, ["pixdim[1] is -2"]),
        ({"srow_y": [0, np.nan, 0, -20]}, HeaderError, ["srow_y is [0.0, nan, 0.0, -20.0]", "sform_code to 0"]),
        ({"srow_x": [0] * 4, "srow_y": [0] * 4, "srow_z": [0] * 4}, GeometryError, ["sform", "length of 0"]),
        ({"srow_x": [-2, 0, -2, 0], "srow_z": [0] * 4}, GeometryError, ["sform", "singular"]),  # axis k along i
        ({"sform_code": 0, "quatern_b": np.nan}, HeaderError, ["quatern_b is nan"]),
        ({"sform_code": 0, "qoffset_y": np.inf}, HeaderError, ["qoffset_y is inf"]),
        ({"sform_code": 0, "quatern_b": 0.9, "quatern_c": 0.9}, HeaderError, ["not a rotation quaternion"]),
        ({"scl_slope": np.inf}, HeaderError, ["scl_slope is inf"]),
        ({"scl_slope": 2.0, "scl_inter": np.nan}, HeaderError, ["scl_inter is nan"]),
        ({"vox_offset": 0}, HeaderError, ["vox_offset is 0"]),
        ({"dim": [9, 33, 41, 25, 1, 1, 1, 1]}, HeaderError, ["dim[0]", "is 9"]),
        ({"dim": [3, 33, -41, 25, 1, 1, 1, 1]}, HeaderError, ["dim[2] is -41"]),
        ({"dim": [3, 33, 0, 25, 1, 1, 1, 1]}, HeaderError, ["dim[2] is 0", "empty"]),
        ({"magic": b"xyz"}, HeaderError, ["magic is 'xyz'"]),
        ({"magic": b"ni1"}, UnsupportedFormatError, [".hdr/.img pair"]),
        ({"datatype": 99}, HeaderError, ["datatype 99"]),
        ({"datatype": 128, "bitpix": 24}, UnsupportedFormatError, ["NIFTI_TYPE_RGB24"]),
        ({"datatype": 2304, "bitpix": 32}, UnsupportedFormatError, ["NIFTI_TYPE_RGBA32"]),
        ({"datatype": 32, "bitpix": 64}, UnsupportedFormatError, ["NIFTI_TYPE_COMPLEX64"]),
        ({"intent_code": 3001, "intent_name": b"ConnDense"}, UnsupportedFormatError, ["CIFTI-2", "3001 ConnDense"]),
    ],
)
def test_bad_header_field_is_refused_and_named(tmp_path: Path, fields: dict, kind: type, words: list[str]) -> None:
    for name in ("a.nii", "a.nii.gz"):
        path = _anatomical(tmp_path, name, **fields)
        _load_error(path, kind, *words)
        # the same check runs when only the header is read (discovery, datalist checks)
        with pytest.raises(kind):
            NiftiReader().read(str(path))


def test_nibabel_alone_gives_a_nan_affine_that_medvision_refuses(tmp_path: Path) -> None:
    path = _anatomical(tmp_path, srow_x=[np.nan, 0, 0, 0])
    assert not np.isfinite(nib.load(path).affine).all()  # what a caller of nibabel alone would get
    _load_error(path, HeaderError, "srow_x")


def test_huge_slope_gives_infinite_voxels_refused(tmp_path: Path) -> None:
    # finite in the float32 header field, but int16 x 1e38 overflows float32
    _load_error(_anatomical(tmp_path, scl_slope=1e38), InputError, "voxels are NaN or infinite")


def test_cifti2_file_refused() -> None:
    path = nibabel_file("row_major.dconn.nii")
    _load_error(path, UnsupportedFormatError, "CIFTI-2", "intent_code 3001")


def test_rgb_and_complex_images_saved_by_nibabel_refused(tmp_path: Path) -> None:
    rgb = np.zeros((4, 4, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), tmp_path / "rgb.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.complex64), np.eye(4)), tmp_path / "cplx.nii")
    _load_error(tmp_path / "rgb.nii.gz", UnsupportedFormatError, "datatype 128")
    _load_error(tmp_path / "cplx.nii", UnsupportedFormatError, "datatype 32")


def test_invalid_sform_is_refused_even_with_a_valid_qform(tmp_path: Path) -> None:
    # A decision (see _affine_source): the writer declared the sform authoritative; nibabel would use it.
    path = _anatomical(tmp_path, srow_x=[np.inf, 0, 0, 0])
    assert np.isfinite(nib.load(path).header.get_qform()).all()
    _load_error(path, HeaderError, "srow_x", "set sform_code to 0 to use the qform")


def test_wrong_container_and_not_nifti(tmp_path: Path) -> None:
    gz = tmp_path / "g.nii"
    gz.write_bytes(gzip.compress(nibabel_file("anatomical.nii").read_bytes()))
    _load_error(gz, UnsupportedFormatError, "rename it to .nii.gz")
    plain = tmp_path / "p.nii.gz"
    plain.write_bytes(nibabel_file("anatomical.nii").read_bytes())
    _load_error(plain, CorruptDataError, "not gzip-compressed")
    junk = tmp_path / "j.nii"
    junk.write_bytes(b"\x07" * 400)
    _load_error(junk, HeaderError, "sizeof_hdr")
    short = tmp_path / "s.nii"
    short.write_bytes(nibabel_file("anatomical.nii").read_bytes()[:200])
    _load_error(short, CorruptDataError, "ends inside the NIfTI header")


# --- allocation guard -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["big.nii", "big.nii.gz"])
def test_header_promising_gigabytes_in_a_tiny_file_fails_fast(tmp_path: Path, name: str) -> None:
    # 2048 x 2048 x 100 float32 = 1.6 GB promised (under the voxel limit); the file holds the header only.
    src = tmp_path / "src.nii"
    src.write_bytes(nibabel_file("anatomical.nii").read_bytes()[:352])
    path = _edited(src, tmp_path / name, dim=[3, 2048, 2048, 100, 1, 1, 1, 1], datatype=16, bitpix=32)
    assert path.stat().st_size < 400
    tracemalloc.start()
    try:
        _load_error(path, CorruptDataError, "promises 1,677,721,952 bytes" if name.endswith(".nii") else "promises")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20, f"{peak:,} bytes allocated before refusing"


def test_truncated_plain_nifti_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "cut.nii"
    path.write_bytes(nibabel_file("anatomical.nii").read_bytes()[:-100])
    _load_error(path, CorruptDataError, "promises 68,002 bytes", "holds 67,902")


def test_voxel_limit_applies_to_gzip_too(tmp_path: Path) -> None:
    with pytest.raises(SizeLimitError, match="33,825 voxels"):
        load(_anatomical(tmp_path, "a.nii.gz"), max_voxels=1000)


# --- gzip integrity ---------------------------------------------------------------------------------------


def _stored_gzip(raw: bytes) -> bytes:
    """A gzip stream of stored (uncompressed) deflate blocks: a changed byte still decompresses."""
    return gzip.compress(raw, compresslevel=0, mtime=0)


def test_changed_voxel_byte_caught_by_crc(tmp_path: Path) -> None:
    raw = nibabel_file("anatomical.nii").read_bytes()
    blob = bytearray(_stored_gzip(raw))
    blob[len(blob) // 2] ^= 0xFF  # a voxel byte inside a stored block
    path = tmp_path / "flip.nii.gz"
    path.write_bytes(bytes(blob))
    # nibabel alone reads changed voxels without a word (its gzip reader stops before the CRC)
    changed = nib.load(path).get_fdata()
    assert not np.array_equal(changed, nib.load(nibabel_file("anatomical.nii")).get_fdata())
    _load_error(path, CorruptDataError, "CRC-32 check failed")


def test_bad_crc_and_bad_length_trailers(tmp_path: Path) -> None:
    good = gzip.compress(nibabel_file("anatomical.nii").read_bytes(), mtime=0)
    crc, isize = struct.unpack("<II", good[-8:])
    bad_crc = tmp_path / "crc.nii.gz"
    bad_crc.write_bytes(good[:-8] + struct.pack("<II", crc ^ 1, isize))
    bad_len = tmp_path / "len.nii.gz"
    bad_len.write_bytes(good[:-8] + struct.pack("<II", crc, isize + 4096))
    _load_error(bad_crc, CorruptDataError, "CRC-32")
    _load_error(bad_len, CorruptDataError, "length check (ISIZE)")


def test_truncated_and_damaged_gzip(tmp_path: Path) -> None:
    data = nib.load(nibabel_file("example4d.nii.gz"))
    good = nibabel_file("example4d.nii.gz").read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(good[: len(good) // 2])
    _load_error(cut, CorruptDataError)
    noisy = bytearray(good)
    noisy[len(good) // 2 : len(good) // 2 + 64] = bytes(64)
    bad = tmp_path / "noisy.nii.gz"
    bad.write_bytes(bytes(noisy))
    _load_error(bad, CorruptDataError, "gzip")
    trailing = tmp_path / "trailing.nii.gz"
    trailing.write_bytes(good + b"not gzip")
    _load_error(trailing, CorruptDataError, "not a gzip member")
    assert data.shape == (128, 96, 24, 2)


def test_multi_member_and_zero_padded_gzip_load_as_nibabel(tmp_path: Path) -> None:
    raw = gzip.decompress(nibabel_file("example4d.nii.gz").read_bytes())
    expected = nib.load(nibabel_file("example4d.nii.gz")).get_fdata()
    multi = tmp_path / "multi.nii.gz"
    multi.write_bytes(gzip.compress(raw[:5000], mtime=0) + gzip.compress(raw[5000:], mtime=0))
    padded = tmp_path / "padded.nii.gz"
    padded.write_bytes(gzip.compress(raw, mtime=0) + bytes(512))
    for path in (multi, padded):
        array, meta = load(path)
        np.testing.assert_array_equal(array, expected)
        np.testing.assert_allclose(meta["affine"], nib.load(nibabel_file("example4d.nii.gz")).affine)


def test_zlib_stream_larger_than_header_says_is_bounded(tmp_path: Path) -> None:
    # 64 MB of zeros after the voxels: verified (CRC) but never kept in memory.
    raw = nibabel_file("anatomical.nii").read_bytes() + bytes(64 * 2**20)
    path = tmp_path / "long.nii.gz"
    path.write_bytes(gzip.compress(raw, mtime=0))
    tracemalloc.start()
    try:
        array, _ = load(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(array, nib.load(nibabel_file("anatomical.nii")).get_fdata())
    assert peak < 16 * 2**20, f"{peak:,} bytes"


# --- what must keep working -------------------------------------------------------------------------------


def test_four_d_multichannel_keeps_its_channel_axis() -> None:
    path = nibabel_file("example4d.nii.gz")
    reader = NiftiReader()
    array, meta = reader.get_data(reader.read(str(path)))
    img = nib.load(path)
    assert array.shape == (128, 96, 24, 2)
    np.testing.assert_array_equal(array, img.get_fdata())
    assert meta["original_channel_dim"] == -1
    assert list(meta["spatial_shape"]) == [128, 96, 24]
    assert meta["spacing_mm"] == pytest.approx(np.linalg.norm(img.affine[:3, :3], axis=0).tolist())


def test_nifti2_equals_nibabel() -> None:
    path = nibabel_file("example_nifti2.nii.gz")
    array, meta = load(path)
    np.testing.assert_array_equal(array, nib.load(path).get_fdata())
    np.testing.assert_allclose(meta["affine"], nib.load(path).affine)


def test_loadimaged_reads_verified_gzip(tmp_path: Path) -> None:
    path = str(nibabel_file("example4d.nii.gz"))
    out = LoadImaged(keys="image", reader=NiftiReader(), image_only=True)({"image": path})
    np.testing.assert_array_equal(np.asarray(out["image"]), nib.load(path).get_fdata())
    canonical = LoadImage(reader=NiftiReader(as_closest_canonical=True), image_only=True)(path)
    np.testing.assert_allclose(np.asarray(canonical), nib.as_closest_canonical(nib.load(path)).get_fdata())


# --- found by the fuzz harness (tests/io/fuzz_corpus.py) ---------------------------------------------------


def test_corrupt_extension_size_is_named_not_allocated(tmp_path: Path) -> None:
    raw = gzip.decompress(nibabel_file("example4d.nii.gz").read_bytes())  # two extensions, from byte 352
    endian = nib.load(nibabel_file("example4d.nii.gz")).header.endianness
    for esize, words in ((0x7FFFFFF0, ["extension 1 has esize 2147483632"]), (-64, ["esize -64"])):
        blob = bytearray(raw)
        blob[352:356] = struct.pack(f"{endian}i", esize)
        path = tmp_path / f"ext{esize}.nii.gz"
        path.write_bytes(gzip.compress(bytes(blob), mtime=0))
        tracemalloc.start()
        try:
            _load_error(path, HeaderError, *words)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 20 * 2**20


def test_magic_must_match_the_header_version(tmp_path: Path) -> None:
    _load_error(_anatomical(tmp_path, magic=b"n+2"), HeaderError, "magic is 'n+2', not 'n+1' (sizeof_hdr 348)")


def test_nifti2_eol_check_and_huge_quaternion(tmp_path: Path) -> None:
    raw = gzip.decompress(nibabel_file("example_nifti2.nii.gz").read_bytes())
    header = nib.Nifti2Header(raw[:540], check=False)
    header["eol_check"] = (13, 10, 0x85 - 256, 10)
    (tmp_path / "eol.nii").write_bytes(header.binaryblock + raw[540:])
    _load_error(tmp_path / "eol.nii", HeaderError, "eol_check is 0d 0a 85 0a")
    header = nib.Nifti2Header(raw[:540], check=False)
    header["quatern_c"] = 1e300  # float64 in NIfTI-2: squaring it overflows Python floats
    (tmp_path / "quat.nii").write_bytes(header.binaryblock + raw[540:])
    _load_error(tmp_path / "quat.nii", HeaderError, "quatern_c is 1e+300")


def test_gzip_damage_in_a_small_stream_is_named(tmp_path: Path) -> None:
    # nib.load's type sniffing reads past the end of a small stream and says only "Cannot work out file type"
    good = nibabel_file("standard.nii.gz").read_bytes()
    path = tmp_path / "small.nii.gz"
    path.write_bytes(good + b"garbage after the stream")
    _load_error(path, CorruptDataError, "not a gzip member")
    path.write_bytes(good[:-8] + struct.pack("<II", 1, 0xFFFFFFFF))
    _load_error(path, CorruptDataError, "CRC-32")


def test_five_d_vector_volume_loads_as_x_y_z_c(tmp_path: Path) -> None:
    data = np.asarray(nib.load(nibabel_file("example4d.nii.gz")).dataobj)  # (128, 96, 24, 2)
    path = tmp_path / "vector.nii.gz"
    nib.save(nib.Nifti1Image(data[:, :, :, None, :], nib.load(nibabel_file("example4d.nii.gz")).affine), path)
    array, meta = load(path)
    assert array.shape == (128, 96, 24, 2)
    np.testing.assert_array_equal(array, data)
    assert "singleton axes after z are dropped" in meta["notes"][0]
    cifti_like = _edited(nibabel_file("row_major.dconn.nii"), tmp_path / "not_cifti.nii", intent_code=0)
    _load_error(cifti_like, UnsupportedFormatError, "2 non-spatial axes")


def test_get_data_on_another_reader_and_a_list_of_files(tmp_path: Path) -> None:
    path = nibabel_file("anatomical.nii")
    array, meta = NiftiReader().get_data(NiftiReader().read(str(path)))  # get_data does not need read's state
    np.testing.assert_array_equal(array, nib.load(path).get_fdata())
    second = _anatomical(tmp_path, "b.nii.gz")
    stacked = LoadImage(reader=NiftiReader(), image_only=True)([str(path), str(second)])
    assert tuple(stacked.shape) == (2, 33, 41, 25)
    np.testing.assert_array_equal(np.asarray(stacked[1]), nib.load(path).get_fdata())
