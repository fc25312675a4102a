"""A local Orthanc (Debian's ``orthanc`` and ``orthanc-dicomweb``) as a plain child process: for ``make pacs``,
``benchmarks/bench_pacs.py`` and the tests in ``tests/pacs``.

Orthanc runs on loopback ports (free ones unless given), with its storage, index and configuration in one folder,
HTTP basic authentication on (one user, a random password unless given), the DICOMweb plugin loaded and the
called AE title checked. Nothing here is a system service and nothing listens beyond 127.0.0.1.

``python -m medvision.pacs.orthanc`` (``make pacs``) runs one in the foreground for people to try medvision as a
PACS node: the demo studies uploaded, Orthanc Explorer (its web viewer) on loopback, ``medvision listen`` known as
the modality ``medvision``, and a routing rule (a Lua ``OnStableStudy`` callback) that sends every new study to it.

Example:
    >>> server = Orthanc(Path("orthanc-data"), modalities={"medvision": ("MEDVISION", 11112)})  # doctest: +SKIP
    >>> server.start(); server.upload(Path("study/cr1.dcm")); server.stop()  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medvision.errors import PacsError
from medvision.pacs.uris import Credentials, PacsAddress

__all__ = ["ORTHANC_AET", "PLUGIN", "Orthanc", "free_port", "orthanc_binary", "orthanc_missing"]

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
#: The routing rule: a stable study goes to the modality (Orthanc's Lua API). medvision's own results that come
#: back make the study change and stable again, so it is sent once more: the listener accepts those results
#: without reporting them, and an instance it already holds unchanged does not make it report the study again.
_ROUTE = """function OnStableStudy(studyId, tags, metadata)
  print('routing study ' .. studyId .. ' to MODALITY')
  RestApiPost('/modalities/MODALITY/store', studyId)
end
"""
ORTHANC_AET = "ORTHANC"
USER = "medvision"


def orthanc_binary() -> str | None:
    """Debian installs ``Orthanc`` in /usr/sbin, which is not on every user's PATH."""
    return shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/local/sbin")


def orthanc_missing() -> str | None:
    """Why a local Orthanc cannot start here (``None``: it can)."""
    if orthanc_binary() is None:
        return "Debian's orthanc is not installed (make system-deps installs orthanc and orthanc-dicomweb)"
    if not PLUGIN.exists():
        return f"{PLUGIN} is missing (make system-deps installs orthanc-dicomweb)"
    return None


def _die_with_parent() -> None:
    """In the child: SIGTERM when the parent dies, so that no Orthanc outlives it (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Orthanc:
    """One Orthanc process: its ports, credentials, folder; start, stop, upload and a REST helper.

    Args:
        root: the folder of its storage, index, configuration and log.
        modalities: the DICOM nodes Orthanc knows, ``{name: (AE title, port)}`` on 127.0.0.1, each allowed to
            echo, find, get, move and store.
        tls: ``{"cert", "key", "ca"}`` PEM files for DICOM TLS (HTTP stays plain: Debian 12's Orthanc 1.10.1
            crashes on its first HTTPS request).
        explorer: serve Orthanc Explorer, its web viewer (``make pacs``).
        route_to: a routing rule: every study, once stable (no new instance for ``stable_age`` seconds), is
            sent to this modality (one of ``modalities``), as a hospital routes new studies to an AI node.
        stable_age: seconds without a new instance after which Orthanc calls a study stable.
    """

    root: Path
    password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    user: str = USER
    http_port: int = field(default_factory=free_port)
    dicom_port: int = field(default_factory=free_port)
    modalities: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    tls: dict[str, str] | None = None
    explorer: bool = False
    route_to: str | None = None
    stable_age: int = 60
    proc: subprocess.Popen | None = None

    @property
    def credentials(self) -> Credentials:
        return Credentials(username=self.user, password=self.password)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> PacsAddress:
        return PacsAddress("dicomweb", "127.0.0.1", self.http_port, path="/dicom-web")

    @property
    def dimse(self) -> PacsAddress:
        return PacsAddress("dimse", "127.0.0.1", self.dicom_port, tls=bool(self.tls), ae_title=ORTHANC_AET)

    @property
    def log(self) -> Path:
        return self.root / "orthanc.log"

    def config(self) -> dict[str, Any]:
        storage = self.root / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        cfg: dict[str, Any] = {
            "Name": "medvision-local",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": ORTHANC_AET,
            "DicomCheckCalledAet": True,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {self.user: self.password},
            "DicomModalities": {
                name: {"AET": aet, "Host": "127.0.0.1", "Port": port, "AllowEcho": True, "AllowFind": True,
                       "AllowGet": True, "AllowMove": True, "AllowStore": True}
                for name, (aet, port) in self.modalities.items()
            },  # fmt: skip
            "DicomAlwaysAllowStore": False,
            "Plugins": [str(PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
            "OrthancExplorerEnabled": self.explorer,
            "WebDavEnabled": False,
            "SaveJobs": False,
            "HttpTimeout": 10,
            "DicomScpTimeout": 10,
        }
        if self.route_to is not None:
            if self.route_to not in self.modalities:
                raise PacsError("Orthanc", f"cannot route to {self.route_to!r}: not a modality", "name one of them")
            script = self.root / "route.lua"
            script.write_text(_ROUTE.replace("MODALITY", self.route_to))
            cfg["LuaScripts"] = [str(script)]
        cfg["StableAge"] = self.stable_age
        if self.tls:
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
        """Write the configuration, start Orthanc and wait until its REST API answers.

        Raises:
            PacsError: Orthanc is not installed, exits, or does not answer within ``timeout`` (its log's end
                is in the message).
        """
        missing = orthanc_missing()
        if missing:
            raise PacsError("Orthanc", missing, "run make system-deps (as root)")
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "orthanc.json"
        config.write_text(json.dumps(self.config(), indent=1))
        os.chmod(config, 0o600)  # it holds the password
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(orthanc_binary()), str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PacsError("Orthanc", f"exited with status {self.proc.returncode}:\n{self.log_tail()}",
                                f"see {self.log}")  # fmt: skip
            if self.ready():
                return
            time.sleep(0.05)
        self.stop()
        raise PacsError("Orthanc", f"did not answer /system within {timeout:g} s:\n{self.log_tail()}",
                        f"see {self.log}")  # fmt: skip

    def ready(self) -> bool:
        import requests

        try:
            return self.rest("GET", "/system", timeout=1).status_code == 200
        except requests.RequestException:
            return False

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

    def rest(self, method: str, path: str, **kw: Any) -> Any:
        """One request to Orthanc's REST API (a ``requests.Response``)."""
        import requests

        kw.setdefault("timeout", 10)
        return requests.request(method, self.base + path, auth=(self.user, self.password), **kw)

    def upload(self, path: Path) -> str:
        """Store one DICOM file through the REST API (``POST /instances``); its Orthanc instance id.

        Raises:
            PacsError: Orthanc refuses it.
        """
        r = self.rest("POST", "/instances", data=Path(path).read_bytes())
        if r.status_code != 200 or r.json().get("Status") not in ("Success", "AlreadyStored"):
            raise PacsError("Orthanc", f"refused {path} ({r.status_code}: {r.text[:200]})", f"see {self.log}")
        return str(r.json()["ID"])

    def upload_all(self, paths: Iterable[Path]) -> int:
        count = 0
        for path in paths:
            self.upload(path)
            count += 1
        return count

    def has_instance(self, sop_uid: str) -> bool:
        r = self.rest("POST", "/tools/find", json={"Level": "Instance", "Query": {"SOPInstanceUID": sop_uid}})
        r.raise_for_status()
        return len(r.json()) == 1

    def study_id(self, study_uid: str) -> str:
        """Orthanc's id of a study, by its StudyInstanceUID."""
        r = self.rest("POST", "/tools/lookup", data=study_uid)
        r.raise_for_status()
        hits = [h for h in r.json() if h["Type"] == "Study"]
        if not hits:
            raise PacsError("Orthanc", f"has no study {study_uid}", "upload it first")
        return str(hits[0]["ID"])


# --- make pacs --------------------------------------------------------------------------------------------


def _demo_files(data: Path) -> list[Path]:
    """The demo set's DICOM studies: radiographs and MR series (NIfTI volumes have no place in a PACS)."""
    return sorted((data / "cxr" / "dicom").rglob("*.dcm")) + sorted((data / "mri" / "dicom").rglob("*.dcm"))


def serve_demo(
    root: Path,
    data: Path,
    *,
    http_port: int = 8042,
    dicom_port: int = 4242,
    listener: tuple[str, int] = ("MEDVISION", 11112),
    route: bool = True,
    stable_age: int = 10,
) -> Orthanc:
    """Start Orthanc for people to try (explorer on, the demo studies of ``data`` uploaded); returns it running.

    The password is new at each start and written, with the user, to ``<root>/credentials.json`` (mode 600):
    the file ``medvision report --credentials`` reads.
    """
    files = _demo_files(data)
    if not files:
        raise PacsError("make pacs", f"{data} holds no demo DICOM study", "run make demo-data first")
    server = Orthanc(
        root, http_port=http_port, dicom_port=dicom_port, modalities={"medvision": listener}, explorer=True,
        route_to="medvision" if route else None, stable_age=stable_age,
    )  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    creds = root / "credentials.json"
    creds.touch(mode=0o600)
    os.chmod(creds, 0o600)
    creds.write_text(json.dumps({"username": server.user, "password": server.password}))
    server.start()
    try:
        from tqdm import tqdm

        for path in tqdm(files, desc="uploading the demo studies", unit=" files", file=sys.stderr, leave=False):
            server.upload(path)
    except BaseException:
        server.stop()
        raise
    return server


def _instructions(server: Orthanc, root: Path, n_studies: int, listener: tuple[str, int], route: bool) -> str:
    web = f"dicomweb+http://127.0.0.1:{server.http_port}/dicom-web"
    dimse = f"dimse://{ORTHANC_AET}@127.0.0.1:{server.dicom_port}"
    creds = root / "credentials.json"
    aet, port = listener
    routing = (
        f"Routing rule: every study, {server.stable_age} s after its last instance, goes to {aet} at 127.0.0.1:{port}."
        if route else "No routing rule (--no-route)."
    )  # fmt: skip
    return f"""
Orthanc is running with {n_studies} demo studies (Ctrl-C stops it; its data stay in {root}).
  web viewer:  http://127.0.0.1:{server.http_port}/app/explorer.html  (user {server.user}, password in {creds})
  DICOMweb:    {web}
  DIMSE:       {dimse}
{routing}

Try, from another terminal:
  .venv/bin/medvision report --input {web} --credentials {creds} \\
      --query "ModalitiesInStudy=CR" --store {web} --secondary-capture --out outputs/report-pacs
  .venv/bin/medvision listen --aet {aet} --port {port} --out outputs/listener --allow-aet {ORTHANC_AET} \\
      --store {dimse} --classifier models:/pneumonia-classifier@candidate
  (make demo registers the classifier; with the listener running, upload a study or press "Send to modality"
   in the viewer, and the SR and the secondary capture appear in the study.)
"""


def main(argv: list[str] | None = None) -> int:
    """``python -m medvision.pacs.orthanc``: a local Orthanc with the demo studies, until Ctrl-C or SIGTERM."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m medvision.pacs.orthanc", description=main.__doc__)
    parser.add_argument("--data", type=Path, default=Path("data/demo"), help="the demo data set (make demo-data)")
    parser.add_argument("--root", type=Path, default=Path("outputs/pacs"), help="Orthanc's storage and config")
    parser.add_argument("--http-port", type=int, default=8042)
    parser.add_argument("--dicom-port", type=int, default=4242)
    parser.add_argument("--listener-aet", default="MEDVISION")
    parser.add_argument("--listener-port", type=int, default=11112)
    parser.add_argument("--no-route", action="store_true", help="no routing rule to the listener")
    parser.add_argument("--stable-age", type=int, default=10, help="seconds after which a study is stable")
    args = parser.parse_args(argv)
    listener = (args.listener_aet, args.listener_port)
    try:
        server = serve_demo(
            args.root.resolve(), args.data, http_port=args.http_port, dicom_port=args.dicom_port, listener=listener,
            route=not args.no_route, stable_age=args.stable_age,
        )  # fmt: skip
    except PacsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    studies = len(server.rest("GET", "/studies").json())
    print(_instructions(server, args.root.resolve(), studies, listener, not args.no_route), flush=True)
    stop = {"now": False}

    def on_signal(*_args: Any) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        while not stop["now"] and server.proc is not None and server.proc.poll() is None:
            time.sleep(0.5)
    finally:
        server.stop()
    if server.proc is not None and server.proc.returncode not in (0, -signal.SIGTERM):
        print(f"Orthanc exited with status {server.proc.returncode}; see {server.log}", flush=True)
        return 1
    print("Orthanc stopped.", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
