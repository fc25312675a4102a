"""The demo MRI DICOM series, loaded and reoriented to RAS, equals its NIfTI twin voxel for voxel."""

from __future__ import annotations

import numpy as np
import pytest
from monai.transforms import Compose, EnsureChannelFirst, LoadImage, Orientation

from medvision.demo import write_demo_data
from medvision.io import DicomReader, NiftiReader, load


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    write_demo_data(out, seed=3, n_cxr_patients=3, n_mri=2, n_mri_dicom=2)
    return out


@pytest.mark.parametrize("case", ["BRAIN_001", "BRAIN_002"])
def test_series_equals_nifti_in_ras(demo, case) -> None:
    ras = Orientation(axcodes="RAS")
    series = ras(
        Compose([LoadImage(reader=DicomReader(), image_only=True), EnsureChannelFirst()])(
            str(demo / "mri" / "dicom" / case)
        )
    )
    nifti = ras(
        Compose([LoadImage(reader=NiftiReader(), image_only=True), EnsureChannelFirst()])(
            str(demo / "mri" / "imagesTr" / f"{case}.nii.gz")
        )
    )
    np.testing.assert_allclose(np.asarray(series), np.asarray(nifti), atol=1e-3)
    np.testing.assert_allclose(np.asarray(series.affine), np.asarray(nifti.affine), atol=1e-4)


def test_every_demo_radiograph_loads(demo) -> None:
    rows: list[str] = []
    manifest = (demo / "cxr" / "manifest.csv").read_text().splitlines()[1:]
    for line in manifest:
        rel = line.split(",")[0]
        array, meta = load(demo / "cxr" / rel)
        assert array.ndim == 2 and meta["modality"] in ("DX", "CR")
        assert meta["photometric"] in ("MONOCHROME1", "MONOCHROME2")
        rows.append(meta["transfer_syntax"])
    assert len(rows) == len(manifest) > 0
