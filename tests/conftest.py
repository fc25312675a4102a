"""Shared fixtures: small DICOM/NIfTI writers and the real files pydicom and nibabel ship."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MEDVISION_OFFLINE", "1")  # never try a download from the tests


def pydicom_file(name: str) -> Path:
    """A test file shipped inside pydicom's wheel (never downloaded)."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:  # pragma: no cover - the wheel ships these
        pytest.fail(f"pydicom test file {name} is not in the installed wheel")
    return Path(path)


def nibabel_file(name: str) -> Path:
    """A test file shipped inside nibabel's wheel."""
    import nibabel

    path = Path(nibabel.__file__).parent / "tests" / "data" / name
    assert path.exists(), path
    return path


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    modality: str = "DX",
    photometric: str = "MONOCHROME2",
    bits_stored: int = 16,
    series_uid: str | None = None,
    study_uid: str | None = None,
    position: tuple[float, float, float] | None = None,
    orientation: tuple[float, ...] | None = None,
    instance_number: int = 1,
    spacing: tuple[float, float] = (0.2, 0.2),
    slope: float | None = None,
    intercept: float | None = None,
    syntax: str | None = None,
) -> Path:
    """Write a single-frame grey DICOM image with synthetic, non-identifying headers."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop_class = {
        "CT": "1.2.840.10008.5.1.4.1.1.2",
        "MR": "1.2.840.10008.5.1.4.1.1.4",
        "CR": "1.2.840.10008.5.1.4.1.1.1",
    }.get(modality, "1.2.840.10008.5.1.4.1.1.1.1")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.Modality = modality
    ds.PatientID = "TEST0001"
    ds.PatientSex = "F"
    ds.PatientAge = "042Y"
    ds.ViewPosition = "PA" if modality in ("DX", "CR") else ""
    ds.InstanceNumber = instance_number
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    ds.PixelSpacing = [f"{spacing[0]:g}", f"{spacing[1]:g}"]
    if position is not None:
        ds.ImagePositionPatient = [f"{v:g}" for v in position]
        ds.ImageOrientationPatient = [f"{v:g}" for v in (orientation or (1, 0, 0, 0, 1, 0))]
    if slope is not None:
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleIntercept = f"{intercept or 0:g}"
    ds.WindowCenter = "1000"
    ds.WindowWidth = "2000"
    ds.PixelData = np.ascontiguousarray(pixels.astype(np.int16 if pixels.dtype.kind == "i" else np.uint16)).tobytes()
    if syntax is not None:
        ds.compress(syntax)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def mlflow_globals(monkeypatch: pytest.MonkeyPatch):
    """RunTracker points MLflow's global tracking URI at a test's store; undo that afterwards."""
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    if mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


def write_enhanced(
    path: Path, frames: np.ndarray, zs: list[float], *, slope: float = 1.0, intercept: float = 0.0
) -> Path:
    """An Enhanced MR Image file: frame f at z = zs[f], geometry in the functional groups."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = generate_uid(), generate_uid(), "MR"
    ds.PatientID, ds.PatientName = "TEST0001", "Test^Geometry"
    ds.Rows, ds.Columns, ds.NumberOfFrames = frames.shape[1], frames.shape[2], frames.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    shared = Dataset()
    shared.PlaneOrientationSequence = Sequence([Dataset()])
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PixelMeasuresSequence = Sequence([Dataset()])
    shared.PixelMeasuresSequence[0].PixelSpacing = [0.5, 0.6]
    shared.PixelMeasuresSequence[0].SliceThickness = 3
    shared.PixelValueTransformationSequence = Sequence([Dataset()])
    shared.PixelValueTransformationSequence[0].RescaleSlope = slope
    shared.PixelValueTransformationSequence[0].RescaleIntercept = intercept
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for z in zs:
        item = Dataset()
        item.PlanePositionSequence = Sequence([Dataset()])
        item.PlanePositionSequence[0].ImagePositionPatient = [-5, 7, z]
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.PixelData = frames.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="session")
def registered_classifier(tmp_path_factory) -> str:
    """A tiny trained classifier registered as pneumonia-classifier@candidate (the report's and the listener's
    tests); returns the tracking URI."""
    import mlflow

    from medvision.config import load_config
    from medvision.engine import train_classification
    from tests.engine.conftest import make_cxr_set, write_config

    tmp = tmp_path_factory.mktemp("report-model")
    manifest = make_cxr_set(tmp / "cxr", n_patients=8)
    cfg = load_config(write_config(tmp, manifest, train__epochs=1, evaluate__bootstrap=10))
    try:
        train_classification(cfg, progress=False)
    finally:
        if mlflow.active_run() is not None:
            mlflow.end_run()
    return f"sqlite:///{tmp / 'mlflow.db'}"
