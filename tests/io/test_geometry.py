"""DICOM series geometry: regular stacks load with one step for affine and spacing; broken ones are refused
with the slices and positions named, or resampled onto a regular grid when asked."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from monai.transforms import LoadImage

from medvision.errors import GeometryError, HeaderError, InputError
from medvision.io import DicomReader, load
from medvision.io.geometry import check_stack, resample_stack, tolerance
from tests.conftest import pydicom_file, write_dicom, write_enhanced

IOP = np.array([1.0, 0, 0, 0, 1, 0])


def write_series(
    folder: Path,
    zs: list[float],
    *,
    rng: np.random.Generator | None = None,
    shifts: dict[int, tuple[float, float]] | None = None,
    tweak: Callable[[int, pydicom.Dataset], None] | None = None,
) -> np.ndarray:
    """A CT series, one slice per z (mm), InstanceNumber against the spatial order; the stored values back."""
    rng = rng or np.random.default_rng(0)
    stored = rng.integers(-1000, 1000, size=(len(zs), 16, 20)).astype(np.int16)
    uid = pydicom.uid.generate_uid()
    for k, z in enumerate(zs):
        dx, dy = (shifts or {}).get(k, (0.0, 0.0))
        path = write_dicom(
            folder / f"s{k:03d}.dcm",
            stored[k],
            modality="CT",
            series_uid=uid,
            position=(-10.0 + dx, 20.0 + dy, z),
            instance_number=len(zs) - k,
            spacing=(0.8, 0.7),
        )
        if tweak is not None:
            ds = pydicom.dcmread(path)
            tweak(k, ds)
            ds.save_as(path)
    return stored


def _refused(path: Path, **options) -> GeometryError:
    with pytest.raises(GeometryError) as err:
        load(path, **options)
    return err.value


# --- regular stacks -------------------------------------------------------------------------------------


def test_regular_series_affine_and_spacing_share_one_step(tmp_path) -> None:
    # Positions jitter by 0.004 mm (DS rounding): within tolerance, and the step is (last - first) / (n - 1).
    zs = [100.0, 102.504, 105.0, 107.496, 110.0, 112.5]
    stored = write_series(tmp_path / "s", zs)
    array, meta = load(tmp_path / "s")
    assert array.shape == (20, 16, 6)
    np.testing.assert_array_equal(array[..., 1].T, stored[1])
    affine = np.asarray(meta["affine"])
    assert meta["spacing_mm"][2] == pytest.approx(np.linalg.norm(affine[:3, 2])) == pytest.approx(2.5)
    assert meta["slice_spacing_mm"] == meta["spacing_mm"][2]
    assert meta["resampled"] is False and not meta.get("notes")
    # Every acquired slice lies within tolerance of the affine's slice plane.
    for k, z in enumerate(zs):
        assert abs((affine @ [0, 0, k, 1])[2] - z) <= tolerance(2.5)


def test_check_stack_sorts_and_keeps_the_mean_step() -> None:
    positions = np.array([[0, 0, 6.0], [0, 0, 0.0], [0, 0, 2.0], [0, 0, 4.0]])
    geo = check_stack("s", ["a", "b", "c", "d"], positions, IOP)
    assert geo.order.tolist() == [1, 2, 3, 0]
    np.testing.assert_allclose(geo.step, [0, 0, 2.0])
    assert geo.n_out == 4 and not geo.resampled


# --- refused along the normal ---------------------------------------------------------------------------


def test_missing_slice_named_with_positions(tmp_path) -> None:
    write_series(tmp_path / "s", [0, 2.5, 5, 10, 12.5, 15])
    err = _refused(tmp_path / "s")
    assert "slices 3 and 4 along the normal" in err.reason
    assert "s002.dcm at (-10, 20, 5)" in err.reason and "s003.dcm at (-10, 20, 10)" in err.reason
    assert "are 5 mm apart, the others 2.5 mm" in err.reason and err.reason.endswith("a slice is missing")
    assert "--allow-irregular" in err.fix


def test_several_missing_slices_are_counted(tmp_path) -> None:
    write_series(tmp_path / "s", [0, 2, 4, 12, 14, 16])
    assert err_reason(tmp_path / "s").endswith("3 slices are missing")


def err_reason(path: Path) -> str:
    return _refused(path).reason


def test_uneven_steps(tmp_path) -> None:
    write_series(tmp_path / "s", [0, 2, 4, 7, 9, 11])
    reason = err_reason(tmp_path / "s")
    assert "slices 3 and 4" in reason and "are 3 mm apart, the others 2 mm" in reason
    assert "uneven slice spacing" in reason


def test_step_just_outside_tolerance_is_refused_just_inside_is_not(tmp_path) -> None:
    tol = tolerance(2.0)  # 0.03 mm
    write_series(tmp_path / "in", [0, 2, 4, 6 + 0.8 * tol, 8, 10])
    load(tmp_path / "in")
    write_series(tmp_path / "out", [0, 2, 4, 6 + 1.5 * tol, 8, 10])
    assert "uneven slice spacing" in err_reason(tmp_path / "out")


def test_duplicate_positions_refused_even_when_resampling(tmp_path) -> None:
    write_series(tmp_path / "s", [0, 2, 2, 4, 6])
    for irregular in ("refuse", "resample"):
        err = _refused(tmp_path / "s", irregular=irregular)
        assert "share one position (-10, 20, 2)" in err.reason and "EchoNumbers" in err.fix


# --- refused off the normal line ------------------------------------------------------------------------


def test_in_plane_shift_of_one_slice(tmp_path) -> None:
    write_series(tmp_path / "s", [0, 2, 4, 6, 8], shifts={2: (1.5, 0.0)})
    for irregular in ("refuse", "resample"):
        err = _refused(tmp_path / "s", irregular=irregular)
        assert "slice 3 along the normal (s002.dcm at (-8.5, 20, 4)) is shifted 1.5 mm in-plane" in err.reason


def test_gantry_tilt_refused_naming_the_element_and_dcm2niix(tmp_path) -> None:
    tilt = 12.0

    def tweak(k: int, ds: pydicom.Dataset) -> None:
        ds.GantryDetectorTilt = f"{tilt:g}"

    zs = [2.5 * k for k in range(6)]
    write_series(tmp_path / "s", zs, shifts={k: (0.0, z * math.tan(math.radians(tilt))) for k, z in enumerate(zs)},
                 tweak=tweak)
    for irregular in ("refuse", "resample"):
        err = _refused(tmp_path / "s", irregular=irregular)
        assert "(0018,1120) GantryDetectorTilt is 12 degrees" in err.reason
        assert "run at 12.00 degrees to the slice normal" in err.reason
        assert "dcm2niix" in err.fix and "_Tilt_" in err.fix


def test_sheared_stack_without_tilt_element_is_refused_too(tmp_path) -> None:
    zs = [2.0 * k for k in range(5)]
    write_series(tmp_path / "s", zs, shifts={k: (0.1 * z, 0.0) for k, z in enumerate(zs)})
    assert "(0018,1120) GantryDetectorTilt is absent and the slice positions run at 5.71 degrees" in err_reason(
        tmp_path / "s"
    )


# --- mixed slices ---------------------------------------------------------------------------------------


def test_tilted_slice_orientation(tmp_path) -> None:
    c, s = math.cos(math.radians(5)), math.sin(math.radians(5))

    def tweak(k: int, ds: pydicom.Dataset) -> None:
        if k == 3:
            ds.ImageOrientationPatient = ["1", "0", "0", "0", f"{c:.6f}", f"{s:.6f}"]

    write_series(tmp_path / "s", [0, 2, 4, 6, 8], tweak=tweak)
    reason = err_reason(tmp_path / "s")
    assert "(0020,0037) ImageOrientationPatient of slice s003.dcm is tilted 5.00 degrees" in reason


def test_mixed_sizes(tmp_path) -> None:
    write_series(tmp_path / "s", [0, 2, 4, 6])
    write_dicom(
        tmp_path / "s" / "odd.dcm",
        np.zeros((10, 12), np.int16),
        modality="CT",
        series_uid=pydicom.dcmread(tmp_path / "s" / "s000.dcm").SeriesInstanceUID,
        position=(-10.0, 20.0, 8.0),
        spacing=(0.8, 0.7),
    )
    reason = err_reason(tmp_path / "s")
    assert "(0028,0010) Rows / (0028,0011) Columns: slice odd.dcm is 10x12, 4 other slice(s) 16x20" in reason


def test_one_rgb_slice_in_a_grey_series(tmp_path) -> None:
    def tweak(k: int, ds: pydicom.Dataset) -> None:
        if k == 2:  # a colour screenshot stored into the series
            ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
            ds.PixelData = np.zeros((16, 20, 3), np.uint8).tobytes()

    write_series(tmp_path / "s", [0, 2, 4, 6], tweak=tweak)
    reason = err_reason(tmp_path / "s")
    assert "(0028,0002) SamplesPerPixel: slice s002.dcm has 3 (colour), 3 other slice(s) 1 (grey)" in reason


def test_mixed_pixel_spacing(tmp_path) -> None:
    def tweak(k: int, ds: pydicom.Dataset) -> None:
        if k == 1:
            ds.PixelSpacing = ["0.9", "0.7"]

    write_series(tmp_path / "s", [0, 2, 4, 6], tweak=tweak)
    reason = err_reason(tmp_path / "s")
    assert "(0028,0030) PixelSpacing of slice s001.dcm is 0.9 x 0.7 mm, the other slices 0.8 x 0.7 mm" in reason


def test_non_finite_position_refused(tmp_path) -> None:
    def tweak(k: int, ds: pydicom.Dataset) -> None:
        if k == 2:
            ds.ImagePositionPatient = ["-10", "20", "nan"]

    write_series(tmp_path / "s", [0, 2, 4, 6], tweak=tweak)
    with pytest.raises(HeaderError) as err:
        load(tmp_path / "s")
    assert "(0020,0032) ImagePositionPatient" in err.value.reason


# --- resampling ------------------------------------------------------------------------------------------


def test_resample_fills_the_gap_linearly_and_says_so(tmp_path) -> None:
    zs = [0, 2.5, 5, 10, 12.5, 15]
    stored = write_series(tmp_path / "s", zs)
    array, meta = load(tmp_path / "s", irregular="resample")
    assert array.shape == (20, 16, 7)
    assert meta["resampled"] is True and meta["n_slices"] == 7
    assert any("resampled along the slice normal onto a regular 2.5 mm grid (6 acquired slices -> 7" in n
               for n in meta["notes"])
    affine = np.asarray(meta["affine"])
    assert meta["spacing_mm"][2] == pytest.approx(np.linalg.norm(affine[:3, 2])) == pytest.approx(2.5)
    # Acquired slices are kept as they are, at their own positions; the missing one is their mean.
    for k, z in enumerate(zs):
        out = int(round(z / 2.5))
        assert (affine @ [0, 0, out, 1])[2] == pytest.approx(z)
        np.testing.assert_array_equal(array[..., out].T, stored[k])
    np.testing.assert_allclose(array[..., 3].T, (stored[2].astype(np.float64) + stored[3]) / 2)


def test_resample_uneven_steps_interpolates_by_distance() -> None:
    stack = np.stack([np.full((2, 2), v, np.float32) for v in (0.0, 10.0, 40.0)])
    geo = check_stack("s", ["a", "b", "c"], np.array([[0, 0, 0.0], [0, 0, 1.0], [0, 0, 4.0]]), IOP,
                      irregular="resample")
    # median step 2.0 mm: grid 0, 2, 4 -> values 0, 10 + (40 - 10) / 3, 40
    assert geo.n_out == 3 and geo.spacing == pytest.approx(2.0)
    np.testing.assert_allclose(resample_stack(stack, geo)[:, 0, 0], [0.0, 20.0, 40.0])


def test_resample_keeps_both_ends_of_the_stack() -> None:
    # 0, 2, 4, 7, 9, 11 mm: a grid of median steps from 0 would end at 10 mm and lose the last slice.
    along = [0.0, 2.0, 4.0, 7.0, 9.0, 11.0]
    stack = np.stack([np.full((2, 2), v, np.float32) for v in along])
    geo = check_stack("s", list("abcdef"), np.array([[0, 0, z] for z in along]), IOP, irregular="resample")
    assert geo.n_out == 7 and geo.spacing == pytest.approx(11.0 / 6)  # the step nearest 2 mm that fits
    values = resample_stack(stack, geo)[:, 0, 0]
    np.testing.assert_allclose(values, np.linspace(0.0, 11.0, 7), atol=1e-5)  # values equal positions here
    assert values[-1] == pytest.approx(11.0)


def test_reader_option_through_monai_loadimage(tmp_path) -> None:
    write_series(tmp_path / "s", [0, 2, 4, 8, 10])
    with pytest.raises(GeometryError):
        LoadImage(reader=DicomReader(), image_only=True)(str(tmp_path / "s"))
    image = LoadImage(reader=DicomReader(irregular="resample"), image_only=True)(str(tmp_path / "s"))
    assert tuple(image.shape) == (20, 16, 6)
    with pytest.raises(ValueError, match="irregular"):
        DicomReader(irregular="sometimes")


# --- multi-frame ----------------------------------------------------------------------------------------


def test_multiframe_gap_refused_and_resampled(tmp_path) -> None:
    frames = np.random.default_rng(1).integers(0, 1000, size=(5, 12, 10)).astype(np.uint16)
    path = write_enhanced(tmp_path / "mf.dcm", frames, [12.0, 9.0, 3.0, 0.0, -3.0])
    err = _refused(path)
    assert "slices 3 and 4 along the normal (frame 3 at (-5, 7, 3), frame 2 at (-5, 7, 9))" in err.reason
    assert "a slice is missing" in err.reason
    array, meta = load(path, irregular="resample")
    assert array.shape == (10, 12, 6) and meta["resampled"] is True
    np.testing.assert_allclose(array[..., 3].T, (frames[2].astype(np.float64) + frames[1]) / 2)  # z = 6 mm
    np.testing.assert_array_equal(array[..., 0].T, frames[4])
    assert meta["spacing_mm"] == pytest.approx([0.6, 0.5, 3.0])


def test_multiframe_duplicate_frames_refused(tmp_path) -> None:
    frames = np.zeros((3, 4, 4), np.uint16)
    path = write_enhanced(tmp_path / "mf.dcm", frames, [0.0, 3.0, 3.0])
    assert "share one position (-5, 7, 3)" in _refused(path).reason


# --- pydicom's own broken series --------------------------------------------------------------------------


def test_pydicom_dicomdir_ct2_is_four_slices_of_a_182_slice_series(tmp_path) -> None:
    # 77654033/CT2 keeps 4 files (InstanceNumber 18, 180, 181, 182; z -99.48, 103.02, 104.27, 105.52) of a
    # 1.25 mm series: the old reader reported 1.25 mm with an affine step of 68 mm.
    folder = pydicom_file("77654033/CT2/17106").parent
    err = _refused(folder)
    assert "slices 1 and 2 along the normal (17106 at (-125, -128.1, -99.48), 17136 at (-125, -128.1, 103))" in (
        err.reason
    )
    assert "are 202.5 mm apart, the others 1.25 mm" in err.reason and "161 slices are missing" in err.reason


# --- options: CLI, config, detection chain ---------------------------------------------------------------


def test_inspect_allow_irregular(tmp_path) -> None:
    from typer.testing import CliRunner

    from medvision.cli import app

    write_series(tmp_path / "s", [0, 2, 4, 8, 10])
    refused = CliRunner().invoke(app, ["inspect", str(tmp_path / "s")])
    assert refused.exit_code == 3
    assert "error: " in refused.output and "a slice is missing" in refused.output
    assert "Traceback" not in refused.output and "unexpected" not in refused.output
    done = CliRunner().invoke(app, ["inspect", "--json", "--allow-irregular", str(tmp_path / "s")])
    assert done.exit_code == 0, done.output
    info = json.loads(done.stdout.strip().splitlines()[-1])
    assert info["shape"] == [20, 16, 6] and info["spacing_mm"] == [0.7, 0.8, 2.0]
    assert any("resampled along the slice normal onto a regular 2 mm grid" in note for note in info["notes"])
    text = CliRunner().invoke(app, ["inspect", "--allow-irregular", str(tmp_path / "s")])
    assert text.exit_code == 0 and "note: resampled along the slice normal" in text.output


def test_config_and_detection_chain_take_the_option(tmp_path) -> None:
    from pydantic import ValidationError

    from medvision.config import VolumeConfig
    from medvision.data.detection_transforms import LoadVolumed

    assert VolumeConfig().irregular == "refuse"
    assert VolumeConfig(irregular="resample").irregular == "resample"
    with pytest.raises(ValidationError):
        VolumeConfig(irregular="interpolate")
    write_series(tmp_path / "s", [0, 2, 4, 8, 10])
    with pytest.raises(InputError, match="a slice is missing"):
        LoadVolumed("image")({"image": str(tmp_path / "s")})
    image = LoadVolumed("image", irregular="resample")({"image": str(tmp_path / "s")})["image"]
    assert tuple(image.shape) == (20, 16, 6)
    # The chain a registered detector predicts behind (no option: refuse) fails that volume with the typed error.
    from medvision.data.detection_transforms import detection_transforms

    item = {"image": str(tmp_path / "s"), "boxes": np.zeros((0, 6)), "box_labels": np.zeros(0, int)}
    with pytest.raises(GeometryError, match="a slice is missing"):
        detection_transforms(spacing=2.0)(dict(item))
    out = detection_transforms(spacing=2.0, irregular="resample")(dict(item))
    assert tuple(out["image"].shape) == (1, 8, 7, 6)


def test_near_unit_cosines_are_normalised_so_spacing_equals_the_affine(tmp_path) -> None:
    # deid-data's ctbrain1.dcm: the column cosine (0, 0.98796, -0.151524) has length 0.999.
    path = write_dicom(
        tmp_path / "one.dcm", np.zeros((8, 6), np.uint16), modality="CT", position=(-106.79, -250.5, 148.66),
        orientation=(1, 0, 0, 0, 0.98796, -0.151524), spacing=(0.5, 0.25),
    )
    _, meta = load(path)
    affine = np.asarray(meta["affine"])
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), [0.25, 0.5, 1.0])
    assert meta["spacing_mm"] == pytest.approx([0.25, 0.5])


def test_multiframe_frame_with_its_own_tilted_orientation_refused(tmp_path) -> None:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    path = write_enhanced(tmp_path / "mf.dcm", np.zeros((4, 6, 6), np.uint16), [0.0, 3.0, 6.0, 9.0])
    ds = pydicom.dcmread(path)
    c, s = math.cos(math.radians(5)), math.sin(math.radians(5))
    ds.PerFrameFunctionalGroupsSequence[2].PlaneOrientationSequence = Sequence([Dataset()])
    ds.PerFrameFunctionalGroupsSequence[2].PlaneOrientationSequence[0].ImageOrientationPatient = [1, 0, 0, 0, c, s]
    ds.save_as(path)
    assert "ImageOrientationPatient of slice frame 3 is tilted 5.00 degrees" in _refused(path).reason


def test_malformed_rows_in_one_slice_named(tmp_path) -> None:
    from pydicom.dataelem import DataElement

    def tweak(k: int, ds: pydicom.Dataset) -> None:
        if k == 1:  # the fuzz harness's flipped header byte: Rows with two values
            ds[0x00280010] = DataElement(0x00280010, "US", [16, 3])

    write_series(tmp_path / "s", [0, 2, 4, 6], tweak=tweak)
    with pytest.raises(HeaderError, match=r"\(0028,0010\) Rows is '16\\3', not an integer") as err:
        load(tmp_path / "s")
    assert err.value.where.endswith("s001.dcm")


def test_unreadable_slice_refused_not_skipped(tmp_path) -> None:
    # Skipping it would drop the last slice silently: the series would load 2 mm shorter.
    write_series(tmp_path / "s", [0, 2, 4, 6])
    last = tmp_path / "s" / "s003.dcm"
    data = bytearray(last.read_bytes())
    at = data.index(b"\x20\x00\x0e\x00")  # (0020,000E) SeriesInstanceUID, explicit VR 'UI'
    data[at + 4 : at + 6] = b"\x55\xff"  # a VR that is no VR
    last.write_bytes(bytes(data))
    with pytest.raises(InputError) as err:
        load(tmp_path / "s")
    assert err.value.where.endswith("s003.dcm") and "(0020,000E) SeriesInstanceUID" in err.value.reason


def test_training_header_check_follows_the_irregular_setting(tmp_path) -> None:
    # data.volume.irregular reaches the header check that runs before training, and the header's shape and
    # affine are those of the volume the reader then builds.
    from medvision.data.detection import check_volumes, read_volume_header

    write_series(tmp_path / "s", [0, 2.5, 5, 10, 12.5, 15])
    item = {"image": str(tmp_path / "s"), "boxes": [], "box_labels": [], "source": "gap"}
    kept, problems = check_volumes([item], skip_bad=True)
    assert not kept and "a slice is missing" in problems[0][1]
    kept, problems = check_volumes([item], skip_bad=True, irregular="resample")
    assert len(kept) == 1 and not problems
    header = read_volume_header(tmp_path / "s", irregular="resample")
    array, meta = load(tmp_path / "s", irregular="resample")
    assert header.shape == array.shape == (20, 16, 7)
    np.testing.assert_allclose(header.affine, np.asarray(meta["affine"]), atol=1e-9)
