"""A real Orthanc (Debian's ``orthanc`` and ``orthanc-dicomweb``) for the PACS tests, and the studies uploaded to it.

Orthanc runs as a plain child process (no system service) on free loopback ports, with its storage, index and
config in a temporary folder: HTTP basic authentication on (a test user with a random password), DICOMweb
plugin loaded, the called AE title checked, and medvision's test AE title registered for C-FIND, C-GET and
C-STORE. ``make test`` installs the packages (``make system-deps``); without the binary the tests are skipped
and say so.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from medvision.pacs.orthanc import ORTHANC_AET, free_port, orthanc_missing
from medvision.pacs.orthanc import Orthanc as LocalOrthanc

__all__ = ["CALLING_AET", "ORTHANC_AET", "USER", "Orthanc", "PacsStudies", "free_port", "require_orthanc",
           "write_image"]  # fmt: skip

CALLING_AET = "MEDVISION-TEST"
USER = "medvision-test"


@dataclass
class Orthanc(LocalOrthanc):
    """The tests' Orthanc: user ``medvision-test``, and medvision's test AE title registered as ``medvision``."""

    user: str = USER
    modalities: Mapping[str, tuple[str, int]] = field(default_factory=lambda: {"medvision": (CALLING_AET, free_port())})


def require_orthanc() -> None:
    missing = orthanc_missing()
    if missing:
        pytest.skip(missing)


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory, pacs_studies: PacsStudies):
    """A running Orthanc holding :func:`pacs_studies`; stopped at the end of the session."""
    require_orthanc()
    server = Orthanc(tmp_path_factory.mktemp("orthanc"))
    server.start()
    try:
        for path in pacs_studies.all_files:
            server.upload(path)
        yield server
    finally:
        server.stop()


# --- the studies -------------------------------------------------------------------------------------------


@dataclass
class PacsStudies:
    """Uploaded files by study: ``radiographs`` (CR 2 + DX 1, 2026-11-25), ``mri`` (MR 3, RLE, 2026-11-26),
    ``ct`` (pydicom's CT_small.dcm, 2004)."""

    radiographs: list[Path]
    mri: list[Path]
    ct: list[Path]

    @property
    def all_files(self) -> list[Path]:
        return self.radiographs + self.mri + self.ct

    @staticmethod
    def uid(path: Path, keyword: str = "StudyInstanceUID") -> str:
        from pydicom import dcmread

        return str(dcmread(path, stop_before_pixels=True).get(keyword))


def write_image(
    path: Path,
    *,
    modality: str,
    study_uid: str,
    series_uid: str,
    number: int,
    date: dt.date,
    rng: np.random.Generator,
    patient_id: str,
    syntax: str | None = None,
) -> Path:
    """A small synthetic grey image (64 x 48, 12 bits) with non-identifying headers."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop_class = {
        "CR": "1.2.840.10008.5.1.4.1.1.1",
        "DX": "1.2.840.10008.5.1.4.1.1.1.1",
        "MR": "1.2.840.10008.5.1.4.1.1.4",
    }[modality]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.StudyDate = ds.SeriesDate = date.strftime("%Y%m%d")
    ds.StudyTime = "101500"
    ds.Modality = modality
    ds.PatientID, ds.PatientName, ds.PatientSex = patient_id, "Test^Pacs", "O"
    ds.AccessionNumber, ds.StudyID, ds.ReferringPhysicianName = f"ACC{number}", "1", ""
    ds.SeriesNumber, ds.InstanceNumber = 1 if modality != "DX" else 2, number
    ds.Rows, ds.Columns = 48, 64
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if modality == "MR":
        ds.ImagePositionPatient = [0, 0, float(number)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [1, 1]
    ds.PixelData = rng.integers(0, 4096, size=(48, 64), dtype=np.uint16).tobytes()
    if syntax is not None:
        ds.compress(syntax)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="session")
def pacs_studies(tmp_path_factory: pytest.TempPathFactory) -> PacsStudies:
    from pydicom.data import get_testdata_file
    from pydicom.uid import RLELossless, generate_uid

    root = tmp_path_factory.mktemp("pacs-upload")
    rng = np.random.default_rng(14)
    cxr_study, cr_series, dx_series = generate_uid(), generate_uid(), generate_uid()
    day = dt.date(2026, 11, 25)
    radiographs = [
        write_image(root / "cxr" / f"cr{i}.dcm", modality="CR", study_uid=cxr_study, series_uid=cr_series, number=i,
                    date=day, rng=rng, patient_id="PACS0001")
        for i in (1, 2)
    ] + [
        write_image(root / "cxr" / "dx1.dcm", modality="DX", study_uid=cxr_study, series_uid=dx_series, number=3,
                    date=day, rng=rng, patient_id="PACS0001")
    ]  # fmt: skip
    mr_study, mr_series = generate_uid(), generate_uid()
    mri = [
        write_image(root / "mri" / f"mr{i}.dcm", modality="MR", study_uid=mr_study, series_uid=mr_series, number=i,
                    date=day + dt.timedelta(days=1), rng=rng, patient_id="PACS0002", syntax=RLELossless)
        for i in (1, 2, 3)
    ]  # fmt: skip
    ct = Path(get_testdata_file("CT_small.dcm", download=False))
    return PacsStudies(radiographs=radiographs, mri=mri, ct=[ct])
