"""NIfTI reading compared with nibabel's own decoding of nibabel's shipped files."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from monai.transforms import LoadImage

from medvision.errors import InputError, SizeLimitError
from medvision.io import NiftiReader, load
from tests.conftest import nibabel_file


@pytest.mark.parametrize("name", ["anatomical.nii", "example4d.nii.gz", "standard.nii.gz", "functional.nii"])
def test_values_and_affine_equal_nibabel(name: str) -> None:
    img = nib.load(nibabel_file(name))
    array, meta = load(nibabel_file(name))
    np.testing.assert_allclose(array, img.get_fdata(), rtol=1e-6)
    np.testing.assert_allclose(meta["affine"], img.affine)
    assert meta["kind"] == "nifti"
    assert meta["spacing_mm"] == pytest.approx(list(img.header.get_zooms()[:3]), rel=1e-5)


def test_reorientation_to_ras_matches_nibabel() -> None:
    path = nibabel_file("example4d.nii.gz")  # stored with a non-RAS affine
    canonical = nib.as_closest_canonical(nib.load(path))
    array, meta = load(path, reorient_ras=True)
    np.testing.assert_allclose(array, canonical.get_fdata(), rtol=1e-6)
    np.testing.assert_allclose(meta["affine"], canonical.affine)
    assert meta["orientation_code"] == "RAS"


def test_loadimage_uses_the_reader() -> None:
    image = LoadImage(reader=NiftiReader(), image_only=True, ensure_channel_first=True)(
        str(nibabel_file("anatomical.nii"))
    )
    assert tuple(image.shape) == (1, 33, 41, 25)


def test_nan_filled_volume_refused(tmp_path) -> None:
    path = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(np.full((8, 8, 4), np.nan, dtype=np.float32), np.eye(4)), path)
    with pytest.raises(InputError, match="256 of 256 voxels are NaN"):
        load(path)


def test_partly_nan_volume_refused_unless_allowed(tmp_path) -> None:
    data = np.ones((4, 4, 4), dtype=np.float32)
    data[0, 0, 0] = np.nan
    path = tmp_path / "partnan.nii"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    with pytest.raises(InputError, match="1 of 64"):
        load(path)
    reader = NiftiReader(allow_nonfinite=True)
    array, _ = reader.get_data(reader.read(path))
    assert array[0, 0, 0] == 0 and array.sum() == 63


def test_oversized_nifti_header_refused(tmp_path) -> None:
    path = tmp_path / "big.nii"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), dtype=np.uint8), np.eye(4)), path)
    with pytest.raises(SizeLimitError, match="64 voxels"):
        load(path, max_voxels=10)


def test_corrupt_gzip(tmp_path) -> None:
    good = tmp_path / "good.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((20, 20, 20)).astype(np.float32), np.eye(4)), good)
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(good.read_bytes()[:-4000])
    with pytest.raises(InputError, match="bad.nii.gz"):
        load(bad)
