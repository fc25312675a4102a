"""DICOM reading, compared value for value with pydicom's own decoding of pydicom's own files."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from monai.data import PydicomReader
from monai.transforms import LoadImage
from pydicom.pixels import apply_modality_lut

from medvision.errors import InputError, SeriesSelectionError, SizeLimitError, UnsupportedFormatError
from medvision.io import DicomReader, load
from tests.conftest import pydicom_file, write_dicom, write_enhanced

# (file, transfer syntax family) — every compressed family the issue names, from pydicom's wheel.
PYDICOM_FILES = [
    ("CT_small.dcm", "explicit little"),
    ("MR_small.dcm", "explicit little"),
    ("MR_small_implicit.dcm", "implicit little"),
    ("MR_small_bigendian.dcm", "explicit big"),
    ("MR_small_RLE.dcm", "RLE"),
    ("MR_small_jp2klossless.dcm", "JPEG 2000 lossless"),
    ("MR_small_jpeg_ls_lossless.dcm", "JPEG-LS lossless"),
    ("JPEGLSNearLossless_16.dcm", "JPEG-LS near-lossless"),
    ("JPGExtended.dcm", "JPEG extended 12-bit"),
    ("SC_rgb_jpeg.dcm", "JPEG baseline"),
    ("SC_rgb_jpeg_gdcm.dcm", "JPEG lossless SV1"),
    ("693_J2KI.dcm", "JPEG 2000"),
    ("JPEG2000.dcm", "JPEG 2000"),
    ("image_dfl.dcm", "deflated"),
]


def _pydicom_reference(name: str) -> tuple[np.ndarray, pydicom.Dataset]:
    ds = pydicom.dcmread(pydicom_file(name))
    return apply_modality_lut(ds.pixel_array, ds).astype(np.float64), ds


@pytest.mark.parametrize(("name", "family"), PYDICOM_FILES)
def test_values_equal_pydicom(name: str, family: str) -> None:
    expected, ds = _pydicom_reference(name)
    array, meta = load(pydicom_file(name))
    # medvision uses MONAI's axis order (x = column, y = row): transpose back to pydicom's (row, col).
    got = np.swapaxes(array, 0, 1)
    assert got.shape == expected.shape, family
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-3)
    assert meta["modality"] == str(ds.get("Modality", ""))
    assert meta["study_uid"] == str(ds.get("StudyInstanceUID", ""))
    assert meta["transfer_syntax"] == ds.file_meta.TransferSyntaxUID


@pytest.mark.parametrize(
    "variant",
    [
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
        "MR_small_expb.dcm",
        "MR_small_padded.dcm",
    ],
)
def test_transfer_syntax_variants_of_mr_small_decode_identically(variant: str) -> None:
    reference, _ = load(pydicom_file("MR_small.dcm"))
    array, meta = load(pydicom_file(variant))
    np.testing.assert_array_equal(array, reference)
    assert meta["n_slices"] == 1


def test_rescale_slope_intercept_applied(tmp_path, rng) -> None:
    stored = rng.integers(0, 4096, size=(40, 30)).astype(np.uint16)
    path = write_dicom(tmp_path / "ct.dcm", stored, modality="CT", bits_stored=12, slope=2.0, intercept=-1024)
    array, meta = load(path)
    np.testing.assert_allclose(array.T, stored * 2.0 - 1024)
    assert (meta["rescale_slope"], meta["rescale_intercept"]) == (2.0, -1024.0)
    assert meta["window_center"] == [1000.0] and meta["window_width"] == [2000.0]


def test_monochrome1_is_inverted_so_larger_is_brighter(tmp_path, rng) -> None:
    stored = rng.integers(0, 4096, size=(32, 48)).astype(np.uint16)
    mono2, _ = load(write_dicom(tmp_path / "m2.dcm", stored, bits_stored=12))
    mono1, meta = load(write_dicom(tmp_path / "m1.dcm", stored, bits_stored=12, photometric="MONOCHROME1"))
    assert meta["photometric"] == "MONOCHROME1"
    # Mirrored about the middle of the 12-bit range: stored 0 (white in MONOCHROME1) becomes 4095.
    np.testing.assert_allclose(mono1, 4095 - mono2)
    brightest = np.unravel_index(np.argmin(stored), stored.shape)
    assert mono1.T[brightest] == mono1.max()


def test_compressed_writes_round_trip(tmp_path, rng) -> None:
    from pydicom.uid import JPEG2000Lossless, RLELossless

    stored = rng.integers(0, 2**14, size=(64, 80)).astype(np.uint16)
    for syntax in (RLELossless, JPEG2000Lossless):
        array, meta = load(write_dicom(tmp_path / f"{syntax.name}.dcm", stored, bits_stored=14, syntax=syntax))
        np.testing.assert_array_equal(array.T, stored)
        assert meta["transfer_syntax"] == syntax


def _write_series(folder, rng, n=6, order=None, series_uid=None, normal_sign=1.0):
    stored = rng.integers(0, 1000, size=(n, 16, 20)).astype(np.uint16)
    uid = series_uid or pydicom.uid.generate_uid()
    order = order if order is not None else list(range(n))
    for file_index, k in enumerate(order):
        # InstanceNumber deliberately runs against the spatial order.
        write_dicom(
            folder / f"slice{file_index:03d}.dcm",
            stored[k],
            modality="CT",
            series_uid=uid,
            position=(-10.0, 20.0, normal_sign * 2.5 * k + 100.0),
            instance_number=n - k,
            spacing=(0.8, 0.7),
        )
    return stored, uid


def test_series_sorted_by_position_not_instance_number(tmp_path, rng) -> None:
    stored, uid = _write_series(tmp_path / "series", rng, order=[3, 0, 5, 1, 4, 2])
    array, meta = load(tmp_path / "series")
    assert meta["kind"] == "dicom-series"
    assert array.shape == (20, 16, 6)
    np.testing.assert_array_equal(np.moveaxis(array, (0, 1, 2), (2, 1, 0)), stored)
    assert meta["slice_spacing_mm"] == pytest.approx(2.5)
    assert meta["spacing_mm"] == pytest.approx([0.7, 0.8, 2.5])
    # Voxel (i, j, k) maps to pydicom's ImagePositionPatient of slice k, in RAS (x and y negated).
    affine = meta["affine"]
    for k in range(6):
        world = affine @ np.array([2, 3, k, 1.0])
        expected_lps = np.array([-10.0 + 2 * 0.7, 20.0 + 3 * 0.8, 100.0 + 2.5 * k])
        np.testing.assert_allclose(world[:3], expected_lps * [-1, -1, 1])
    # MONAI's stock PydicomReader sorts by InstanceNumber and gets this series backwards.
    monai_array = LoadImage(reader=PydicomReader(), image_only=True)(str(tmp_path / "series"))
    assert not np.array_equal(np.asarray(monai_array)[..., 0], array[..., 0])


def test_series_descending_positions_sorted_along_normal(tmp_path, rng) -> None:
    stored, _ = _write_series(tmp_path / "s", rng, normal_sign=-1.0)
    array, meta = load(tmp_path / "s")
    # Along +z the last written slice (most negative z) comes first.
    np.testing.assert_array_equal(array[..., 0].T, stored[-1])
    assert meta["slice_spacing_mm"] == pytest.approx(2.5)


def test_folder_with_two_series_names_them(tmp_path, rng) -> None:
    _, uid_a = _write_series(tmp_path / "study" / "a", rng, n=3)
    _, uid_b = _write_series(tmp_path / "study" / "b", rng, n=5)
    with pytest.raises(SeriesSelectionError) as err:
        load(tmp_path / "study")
    assert uid_a in str(err.value) and uid_b in str(err.value) and "series_uid" in str(err.value)
    array, _ = load(tmp_path / "study", series_rule="largest")
    assert array.shape[-1] == 5
    array, meta = load(tmp_path / "study", series_uid=uid_a)
    assert array.shape[-1] == 3 and meta["series_uid"] == uid_a


def test_folder_skips_non_dicom_files(tmp_path, rng) -> None:
    _write_series(tmp_path / "s", rng, n=4)
    (tmp_path / "s" / "notes.txt").write_text("not dicom")
    (tmp_path / "s" / ".hidden.dcm").write_bytes(b"junk")
    array, _ = load(tmp_path / "s")
    assert array.shape[-1] == 4


def test_empty_folder_says_no_dicom(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("x")
    with pytest.raises(InputError, match="does not seem to contain DICOM"):
        load(tmp_path / "empty")


def test_multiframe_rgb_keeps_samples_last() -> None:
    ds = pydicom.dcmread(pydicom_file("SC_rgb_rle_2frame.dcm"))
    array, meta = load(pydicom_file("SC_rgb_rle_2frame.dcm"))
    assert array.shape == (100, 100, 2, 3)
    np.testing.assert_array_equal(np.moveaxis(array, (0, 1, 2), (2, 1, 0)), ds.pixel_array)
    assert list(meta["spatial_shape"]) == [100, 100, 2]


def test_reader_works_inside_monai_loadimage() -> None:
    image = LoadImage(reader=DicomReader(), image_only=True, ensure_channel_first=True)(
        str(pydicom_file("CT_small.dcm"))
    )
    expected, _ = _pydicom_reference("CT_small.dcm")
    assert tuple(image.shape) == (1, 128, 128)
    np.testing.assert_allclose(np.asarray(image[0]).T, expected)
    assert image.meta["modality"] == "CT"
    assert image.affine.shape == (4, 4)


@pytest.mark.parametrize(
    ("name", "error", "needle"),
    [
        ("MR_truncated.dcm", InputError, "truncated"),
        ("rtplan.dcm", InputError, "no pixel data"),
        ("test-SR.dcm", InputError, "no pixel data"),
    ],
)
def test_bad_pydicom_files(name, error, needle) -> None:
    with pytest.raises(error, match=needle) as err:
        load(pydicom_file(name))
    assert name in str(err.value)


def test_unsupported_transfer_syntax(tmp_path) -> None:
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.102"  # MPEG-4 AVC/H.264
    ds.PixelData = encapsulate([b"\x00" * 128])
    path = tmp_path / "video.dcm"
    ds.save_as(path)
    with pytest.raises(UnsupportedFormatError, match="1.2.840.10008.1.2.4.102"):
        load(path)


def test_oversized_header_refused_before_decoding(tmp_path, rng) -> None:
    path = write_dicom(tmp_path / "huge.dcm", rng.integers(0, 10, size=(8, 8)).astype(np.uint16))
    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns, ds.NumberOfFrames = 60000, 60000, 100  # pixel data stays 128 bytes
    ds.save_as(path)
    with pytest.raises(SizeLimitError, match="360,000,000,000 voxels"):
        load(path)
    with pytest.raises(SizeLimitError):
        load(path, max_voxels=10)


def test_text_file_named_dcm(tmp_path) -> None:
    path = tmp_path / "notes.dcm"
    path.write_text("patient notes, not an image\n" * 20)
    with pytest.raises(InputError, match="not a DICOM file"):
        load(path)


def test_empty_file(tmp_path) -> None:
    path = tmp_path / "empty.dcm"
    path.write_bytes(b"")
    with pytest.raises(InputError, match="empty file"):
        load(path)


def test_truncated_copy_of_a_good_file(tmp_path) -> None:
    data = pydicom_file("CT_small.dcm").read_bytes()
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[: len(data) - 5000])
    with pytest.raises(InputError, match="truncated"):
        load(path)


def test_enhanced_multiframe_uses_functional_groups(tmp_path, rng) -> None:
    """Enhanced MR: geometry and rescale live in the functional groups; frames stored in reverse order."""
    frames = rng.integers(0, 1000, size=(4, 12, 10)).astype(np.uint16)
    # frame f lies at z = 30 - 3 f: stored from top to bottom
    path = write_enhanced(tmp_path / "enhanced.dcm", frames, [30.0, 27.0, 24.0, 21.0], slope=2.0, intercept=-5.0)

    array, meta_out = load(path)
    assert array.shape == (10, 12, 4)
    # Sorted along +z: the last stored frame comes first; rescale from the shared functional group.
    np.testing.assert_allclose(array[..., 0].T, frames[3] * 2.0 - 5)
    np.testing.assert_allclose(array[..., 3].T, frames[0] * 2.0 - 5)
    assert meta_out["slice_spacing_mm"] == pytest.approx(3.0)
    assert meta_out["spacing_mm"] == pytest.approx([0.6, 0.5, 3.0])
    assert meta_out["affine"][2, 3] == pytest.approx(21.0)
