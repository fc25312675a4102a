"""medvision's DICOM volumes against dcm2niix, the reference DICOM-to-NIfTI converter (Debian package).

Regular series and multi-frame files: the same world coordinates and the same voxel values (both reoriented
to the closest canonical RAS with nibabel; dcm2niix's scl_slope/scl_inter applied by nibabel). Series that
dcm2niix warns about (varying interslice distance, gantry tilt, mixed orientations): medvision refuses them,
or resamples when asked, with the acquired slices where they were acquired.
"""

from __future__ import annotations

import math
import random
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medvision.demo.mri import write_mri
from medvision.errors import GeometryError
from medvision.io import load
from tests.conftest import pydicom_file, write_enhanced
from tests.io.test_geometry import write_series

DCM2NIIX = shutil.which("dcm2niix")
pytestmark = pytest.mark.skipif(
    DCM2NIIX is None, reason="dcm2niix is not installed (`make system-deps` installs the Debian package)"
)
PYDICOM_DATA = pydicom_file("CT_small.dcm").parent


def dcm2niix(src: Path, out: Path) -> tuple[dict[str, nib.Nifti1Image], str]:
    """Run ``dcm2niix -z n -b n -o OUT -f out IN``; its NIfTI files by name and its printed output."""
    out.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [str(DCM2NIIX), "-z", "n", "-b", "n", "-o", str(out), "-f", "out", str(src)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return {p.name: nib.load(p) for p in sorted(out.glob("*.nii"))}, done.stdout + done.stderr


def canonical(array: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    return nib.as_closest_canonical(nib.Nifti1Image(np.asarray(array, dtype=np.float32), np.asarray(affine)))


def assert_same_volume(path: Path, reference: nib.Nifti1Image, **options) -> dict:
    """medvision's load of ``path`` and dcm2niix's NIfTI: same grid in RAS mm, same values."""
    array, meta = load(path, **options)
    mine, ref = canonical(array, meta["affine"]), nib.as_closest_canonical(reference)
    assert mine.shape == ref.shape
    np.testing.assert_allclose(mine.affine, ref.affine, atol=1e-3)
    np.testing.assert_allclose(mine.get_fdata(), ref.get_fdata(), rtol=1e-5, atol=1e-3)
    assert meta["spacing_mm"] == pytest.approx(list(ref.header.get_zooms()[:3]), abs=1e-4)
    return meta


@pytest.fixture(scope="module")
def demo_series(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("demo")
    records = write_mri(root, seed=2, n_volumes=2, n_dicom=2)
    return [root / "mri" / r["dicom"] for r in records if r["dicom"]]


def test_demo_mr_series_match_dcm2niix(demo_series: list[Path], tmp_path: Path) -> None:
    assert len(demo_series) == 2
    for k, folder in enumerate(demo_series):
        images, _ = dcm2niix(folder, tmp_path / f"out{k}")
        assert list(images) == ["out.nii"]
        meta = assert_same_volume(folder, images["out.nii"])
        assert meta["n_slices"] == len(list(folder.glob("*.dcm"))) and meta["resampled"] is False


def test_scrambled_instance_numbers_change_nothing(demo_series: list[Path], tmp_path: Path) -> None:
    folder = tmp_path / "scrambled"
    files = sorted(demo_series[0].glob("*.dcm"))
    numbers = list(range(1, len(files) + 1))
    random.Random(7).shuffle(numbers)
    for path, number in zip(files, numbers, strict=True):
        ds = pydicom.dcmread(path)
        ds.InstanceNumber = number
        ds.save_as(folder / f"im{number:04d}.dcm" if folder.exists() else _mkdir(folder) / f"im{number:04d}.dcm")
    images, _ = dcm2niix(folder, tmp_path / "out")
    assert_same_volume(folder, images["out.nii"])
    original, _ = load(demo_series[0])
    np.testing.assert_array_equal(load(folder)[0], original)


def _mkdir(folder: Path) -> Path:
    folder.mkdir(parents=True)
    return folder


def test_multiframe_matches_dcm2niix(tmp_path: Path) -> None:
    frames = np.random.default_rng(3).integers(0, 1000, size=(5, 12, 10)).astype(np.uint16)
    path = write_enhanced(_mkdir(tmp_path / "in") / "mf.dcm", frames, [12.0, 9.0, 6.0, 3.0, 0.0], slope=2.0)
    images, _ = dcm2niix(tmp_path / "in", tmp_path / "out")
    assert_same_volume(path, images["out.nii"])


def test_pydicom_ct_series_matches_dcm2niix(tmp_path: Path) -> None:
    folder = PYDICOM_DATA / "dicomdirtests" / "98892001" / "CT5N"
    images, _ = dcm2niix(folder, tmp_path / "out")
    meta = assert_same_volume(folder, images["out.nii"])
    assert meta["spacing_mm"][2] == pytest.approx(2.5)


# --- what dcm2niix warns about, medvision refuses (or resamples when asked) ----------------------------


@pytest.mark.parametrize(
    ("zs", "needle", "on_grid"),
    [([0, 2.5, 5, 10, 12.5, 15, 17.5], "a slice is missing", 7), ([0, 2, 4, 7, 9, 11], "uneven slice spacing", 2)],
)
def test_irregular_series_refused_or_resampled(tmp_path: Path, zs: list[float], needle: str, on_grid: int) -> None:
    stored = write_series(tmp_path / "in", zs)
    images, said = dcm2niix(tmp_path / "in", tmp_path / "out")
    assert "Interslice distance varies" in said
    with pytest.raises(GeometryError, match=needle):
        load(tmp_path / "in")
    array, meta = load(tmp_path / "in", irregular="resample")
    assert meta["resampled"] is True and any("resampled along the slice normal" in n for n in meta["notes"])
    # dcm2niix's out.nii keeps the acquired slices (under a single, wrong step); medvision's regular grid holds
    # each of them at its own position.
    reference = images["out.nii"]
    affine = np.asarray(meta["affine"])
    step = float(np.linalg.norm(affine[:3, 2]))
    checked = 0
    for k, z in enumerate(zs):
        index = (z - zs[0]) / step
        if abs(index - round(index)) < 1e-6:
            i = int(round(index))
            assert (affine @ [0, 0, i, 1])[2] == pytest.approx(z)
            np.testing.assert_allclose(array[..., i].T, stored[k])
            # the same slice in dcm2niix's file, both in canonical (RAS) in-plane order
            theirs = nib.as_closest_canonical(reference.slicer[:, :, k : k + 1]).get_fdata()[..., 0]
            mine = canonical(array[..., i : i + 1], affine).get_fdata()[..., 0]
            np.testing.assert_allclose(mine, theirs, atol=1e-3)
            checked += 1
    # uneven: the grid runs from 0 to 11 mm in 6 steps of 11/6 mm, so only the first and last slices lie on it
    assert checked == on_grid


def test_pydicom_ct2_refused_where_dcm2niix_warns(tmp_path: Path) -> None:
    folder = PYDICOM_DATA / "dicomdirtests" / "77654033" / "CT2"
    _, said = dcm2niix(folder, tmp_path / "out")
    assert "Interslice distance varies" in said
    with pytest.raises(GeometryError, match="161 slices are missing"):
        load(folder)


def test_gantry_tilt_refused_and_dcm2niix_tilt_output_loads(tmp_path: Path) -> None:
    tilt = 15.0
    zs = [2.5 * k for k in range(8)]

    def tweak(k: int, ds: pydicom.Dataset) -> None:
        ds.GantryDetectorTilt = f"{tilt:g}"

    write_series(tmp_path / "in", zs, shifts={k: (0.0, z * math.tan(math.radians(tilt))) for k, z in enumerate(zs)},
                 tweak=tweak)
    images, said = dcm2niix(tmp_path / "in", tmp_path / "out")
    assert "gantry tilt" in said.lower()
    # dcm2niix's plain output carries a sheared affine; medvision refuses to make one.
    sheared = images["out.nii"].affine[:3, :3]
    assert abs(float(np.dot(sheared[:, 1], sheared[:, 2]))) > 0.1
    with pytest.raises(GeometryError, match=r"\(0018,1120\) GantryDetectorTilt is 15 degrees") as err:
        load(tmp_path / "in")
    assert "_Tilt_" in err.value.fix
    tilted = [name for name in images if "_Tilt_" in name]
    assert tilted, f"dcm2niix wrote no tilt-corrected file: {sorted(images)}"
    array, meta = load(tmp_path / "out" / tilted[0])  # the fix the error gives works
    assert array.ndim == 3 and np.isfinite(np.asarray(meta["affine"])).all()


@pytest.mark.parametrize("series", ["98892001/CT2N", "98892003/MR700"])
def test_mixed_orientation_series_refused(tmp_path: Path, series: str) -> None:
    # dcm2niix stacks CT2N's two perpendicular slices as a "45 degree gantry tilt" and splits MR700 into
    # seven single slices; medvision refuses both, naming the slice whose orientation differs.
    folder = PYDICOM_DATA / "dicomdirtests" / series
    images, said = dcm2niix(folder, tmp_path / "out")
    assert "gantry tilt" in said.lower() or len(images) > 1
    with pytest.raises(GeometryError, match=r"\(0020,0037\) ImageOrientationPatient of slice \d+ is tilted"):
        load(folder)
