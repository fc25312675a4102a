"""A real Orthanc (Debian's ``orthanc`` and ``orthanc-dicomweb``) for the PACS tests, and the studies uploaded to it.

Orthanc runs as a plain child process (no system service) on free loopback ports, with its storage, index and
config in a temporary folder: HTTP basic authentication on (a test user with a random password), DICOMweb
plugin loaded, the called AE title checked, and medvision's test AE title registered for C-FIND, C-GET and
C-STORE. ``make test`` installs the packages (``make system-deps``); without the binary the tests are skipped
and say so.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import requests

from medvision.pacs import Credentials, PacsAddress

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
ORTHANC_AET = "ORTHANC"
CALLING_AET = "MEDVISION-TEST"
USER = "medvision-test"


def orthanc_binary() -> str | None:
    """Debian installs ``Orthanc`` in /usr/sbin, which is not on every user's PATH."""
    return shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/local/sbin")


def _die_with_parent() -> None:
    """In the child: SIGTERM when pytest dies (killed by a timeout), so no Orthanc outlives the tests (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Orthanc:
    """One Orthanc process: its ports, credentials, folders; start, stop and a REST helper."""

    root: Path
    password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    http_port: int = field(default_factory=free_port)
    dicom_port: int = field(default_factory=free_port)
    tls: dict[str, str] | None = None  # {"cert", "key", "ca"}: DICOM TLS (HTTP stays plain, see test_tls.py)
    proc: subprocess.Popen | None = None

    @property
    def credentials(self) -> Credentials:
        return Credentials(username=USER, password=self.password)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> PacsAddress:
        return PacsAddress("dicomweb", "127.0.0.1", self.http_port, path="/dicom-web")

    @property
    def dimse(self) -> PacsAddress:
        return PacsAddress("dimse", "127.0.0.1", self.dicom_port, tls=bool(self.tls), ae_title=ORTHANC_AET)

    def config(self) -> dict:
        storage = self.root / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        cfg = {
            "Name": "medvision-tests",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": ORTHANC_AET,
            "DicomCheckCalledAet": True,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {USER: self.password},
            "DicomModalities": {
                "medvision": {
                    "AET": CALLING_AET,
                    "Host": "127.0.0.1",
                    "Port": free_port(),
                    "AllowEcho": True,
                    "AllowFind": True,
                    "AllowGet": True,
                    "AllowMove": False,
                    "AllowStore": True,
                }
            },
            "DicomAlwaysAllowStore": False,
            "Plugins": [str(PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "SaveJobs": False,
            "HttpTimeout": 10,
            "DicomScpTimeout": 10,
        }
        if self.tls:
            # Not "SslEnabled": Debian 12's Orthanc 1.10.1 crashes (SIGSEGV) on its first HTTPS request.
            cfg.update(
                {
                    "DicomTlsEnabled": True,
                    "DicomTlsCertificate": self.tls["cert"],
                    "DicomTlsPrivateKey": self.tls["key"],
                    "DicomTlsTrustedCertificates": self.tls["ca"],
                    "DicomTlsRemoteCertificateRequired": False,
                }
            )
        return cfg

    def start(self, timeout: float = 20.0) -> None:
        binary = orthanc_binary()
        assert binary, "Orthanc is not installed"
        config = self.root / "orthanc.json"
        config.write_text(json.dumps(self.config(), indent=1))
        self.log = self.root / "orthanc.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [binary, str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"Orthanc exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                r = self.rest("GET", "/system", timeout=1)
                if r.status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        self.stop()
        pytest.fail(f"Orthanc did not answer /system within {timeout} s:\n{self.log_tail()}")

    def stop(self, graceful: bool = True) -> None:
        """SIGTERM (Orthanc takes about 3 s to close its servers), or SIGKILL for a throw-away instance."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM if graceful else signal.SIGKILL)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def rest(self, method: str, path: str, **kw) -> requests.Response:
        kw.setdefault("timeout", 10)
        return requests.request(method, self.base + path, auth=(USER, self.password), **kw)

    def upload(self, path: Path) -> None:
        r = self.rest("POST", "/instances", data=path.read_bytes())
        assert r.status_code == 200, (r.status_code, r.text)
        assert r.json()["Status"] in ("Success", "AlreadyStored"), r.text

    def has_instance(self, sop_uid: str) -> bool:
        r = self.rest("POST", "/tools/find", json={"Level": "Instance", "Query": {"SOPInstanceUID": sop_uid}})
        r.raise_for_status()
        return len(r.json()) == 1


def require_orthanc() -> None:
    if orthanc_binary() is None:
        pytest.skip("Debian's orthanc is not installed (make system-deps installs orthanc and orthanc-dicomweb)")
    if not PLUGIN.exists():
        pytest.skip(f"{PLUGIN} is missing (make system-deps installs orthanc-dicomweb)")


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
