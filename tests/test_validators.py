"""Every kind of DICOM object medvision writes passes dciodvfy with 0 errors; its SRs read with dsrdump (issue 12).

The objects are built with the package's own writers at small sizes: the demo radiographs (DX for
presentation in MONOCHROME1 and MONOCHROME2, CR) and a whole demo MR series (:mod:`medvision.demo`), the
classification and detection SRs (:mod:`medvision.reporting.sr`) and the key-picture secondary captures
(:mod:`medvision.reporting.sc`). ``dciodvfy`` (dicom3tools) checks each against its IOD; its warnings are
allowed, its errors are not. ``dsrdump`` (dcmtk) must read every SR and show its finding.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

DCIODVFY, DSRDUMP = shutil.which("dciodvfy"), shutil.which("dsrdump")
if DCIODVFY is None or DSRDUMP is None:
    pytest.skip(
        "dciodvfy (dicom3tools) or dsrdump (dcmtk) is not installed; `make system-deps` (a step of `make test`)"
        " installs them",
        allow_module_level=True,
    )

CLASSIFIER = {"name": "pneumonia-classifier", "version": 3, "run_id": "0123456789abcdef"}
DETECTOR = {"name": "tumor-detector", "version": 2, "run_id": "fedcba9876543210"}


def _errors(path: Path) -> list[str]:
    """The ``Error`` lines of ``dciodvfy path``."""
    result = subprocess.run([str(DCIODVFY), str(path)], capture_output=True, text=True, timeout=60, check=False)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def _assert_valid(paths: list[Path]) -> None:
    assert paths
    found = {str(p): errors for p in paths if (errors := _errors(p))}
    report = "\n".join(f"{p}:\n  " + "\n  ".join(errors) for p, errors in found.items())
    assert not found, f"dciodvfy found errors in {len(found)} of {len(paths)} files:\n{report}"


def _dsrdump(path: Path) -> str:
    result = subprocess.run([str(DSRDUMP), str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, f"dsrdump {path} exited with {result.returncode}:\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo data set: 4 radiograph patients (DX and CR, both photometrics), one MR series."""
    from medvision.demo import write_demo_data

    out = tmp_path_factory.mktemp("validators") / "demo"
    write_demo_data(out, seed=1, n_cxr_patients=4, n_mri=1, n_mri_dicom=1)
    return out


def _radiographs(demo: Path) -> dict[str, list[Path]]:
    """Radiograph files by ``"DX MONOCHROME1"`` and so on."""
    kinds: dict[str, list[Path]] = {}
    for path in sorted((demo / "cxr" / "dicom").rglob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        kinds.setdefault(f"{ds.Modality} {ds.PhotometricInterpretation}", []).append(path)
    return kinds


def _mr_series(demo: Path) -> list[Path]:
    return sorted((demo / "mri" / "dicom" / "BRAIN_001").glob("*.dcm"))


def _header(path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)


@pytest.mark.parametrize("kind", ["DX MONOCHROME1", "DX MONOCHROME2", "CR"])
def test_demo_radiographs_pass_dciodvfy(demo: Path, kind: str) -> None:
    paths = [p for k, files in _radiographs(demo).items() if k.startswith(kind) for p in files]
    assert paths, f"the demo set has no {kind} radiograph; choose other demo counts"
    _assert_valid(paths)
    for path in paths:
        assert _header(path).BurnedInAnnotation == "NO"


def test_demo_mr_series_passes_dciodvfy(demo: Path) -> None:
    paths = _mr_series(demo)
    assert len(paths) > 50  # the whole series
    _assert_valid(paths)
    header = _header(paths[0])
    assert header.BurnedInAnnotation == "NO" and "IR" in header.ScanningSequence and "InversionTime" in header


def test_demo_dx_carries_no_rescale_and_passes_dciodvfy(tmp_path: Path) -> None:
    """The DX Image Module allows only RescaleSlope 1 and RescaleIntercept 0 (issue 12): every study draws a
    rescale, CR files carry it and DX files the identity, with the window in stored units."""
    from medvision.demo.radiographs import cxr_dataset, plan_cxr_studies, render_cxr, stored_pixels

    studies = plan_cxr_studies(0, 12)
    assert any((s.rescale_slope, s.rescale_intercept) != (1.0, 0.0) for s in studies if s.modality == "CR")
    assert all((s.rescale_slope, s.rescale_intercept) == (1.0, 0.0) for s in studies if s.modality == "DX")
    # P0011/ST01 drew the pair (2.0, 0.0), which its DX file carried before issue 12 was fixed.
    study = next(s for s in studies if (s.patient_index, s.study_index) == (11, 1))
    assert study.modality == "DX"
    path = tmp_path / "dx.dcm"
    cxr_dataset(study, render_cxr(study)).save_as(path, enforce_file_format=True)
    _assert_valid([path])
    ds = pydicom.dcmread(path)
    assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, 0.0)
    # The window spans the 2nd to 98th percentile of the stored values (drawn without the opacities).
    p_lo, p_hi = np.percentile(stored_pixels(study, render_cxr(study, opacities=False))[::4, ::4], [2.0, 98.0])
    assert float(ds.WindowCenter) == pytest.approx((p_lo + p_hi) / 2, abs=0.05)
    assert float(ds.WindowWidth) == pytest.approx(p_hi - p_lo, abs=0.05)


def test_classification_sr_passes_dciodvfy_and_reads_with_dsrdump(demo: Path, tmp_path: Path) -> None:
    from medvision.reporting.sr import classification_sr, write_sr

    for kind in ("DX", "CR"):
        source = next(files[0] for k, files in _radiographs(demo).items() if k.startswith(kind))
        header = _header(source)
        sr = classification_sr([header], [(header, 0.8312, True)], model=CLASSIFIER, threshold=0.42)
        path = write_sr(sr, tmp_path / f"{kind}.dcm")
        _assert_valid([path])
        text = _dsrdump(path)
        assert '(233604007,SCT,"Pneumonia")' in text  # the finding
        assert '"Probability")="0.8312"' in text and '(52101004,SCT,"Present")' in text
        assert "UNVERIFIED" in text and "pneumonia-classifier" in text


def test_detection_sr_passes_dciodvfy_and_reads_with_dsrdump(demo: Path, tmp_path: Path) -> None:
    from medvision.reporting.sr import detection_sr, write_sr

    headers = [_header(p) for p in _mr_series(demo)]
    middle = sorted(headers, key=lambda h: float(h.ImagePositionPatient[2]))[len(headers) // 2]
    centre = np.array([float(v) for v in middle.ImagePositionPatient]) * [-1, -1, 1] + [-40.0, 60.0, 0.0]  # RAS
    box = {"world_mm": [*(centre - 10).tolist(), *(centre + 10).tolist()], "size_mm": [20, 20, 20], "score": 0.9}
    sr = detection_sr(headers, [box], model=DETECTOR, threshold=0.5, volume_score=0.9, flagged=True)
    path = write_sr(sr, tmp_path / "mr.dcm")
    _assert_valid([path])
    text = _dsrdump(path)
    assert '(108369006,SCT,"Neoplasm")' in text  # the finding
    assert '"Width")="20.0"' in text and "SCOORD3D" in text and "POLYGON" in text
    assert "UNVERIFIED" in text and "tumor-detector" in text


@pytest.mark.parametrize("source", ["DX", "CR", "MR"])
def test_secondary_capture_passes_dciodvfy(demo: Path, tmp_path: Path, source: str) -> None:
    from PIL import Image

    from medvision.reporting.sc import KEY_SLICE_ORIENTATION, key_picture_sc, write_sc

    if source == "MR":
        header, orientation, picture = _header(_mr_series(demo)[0]), KEY_SLICE_ORIENTATION, tmp_path / "key.jpg"
    else:
        path = next(files[0] for k, files in _radiographs(demo).items() if k.startswith(source))
        header, picture = _header(path), tmp_path / "key.png"
        orientation = header.PatientOrientation
    pixels = (np.random.default_rng(0).random((48, 96, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(picture)
    sc = key_picture_sc(header, picture, model=CLASSIFIER, patient_orientation=orientation, description="key picture")
    _assert_valid([write_sc(sc, tmp_path / "sc.dcm")])
