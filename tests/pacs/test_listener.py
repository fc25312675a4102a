"""``medvision listen`` against a real Orthanc: Orthanc sends a study, the listener reports it and stores back.

Orthanc knows the listener as the modality ``listener`` (added through its REST API) and sends a new CR/DX
study to it (``POST /modalities/listener/store``); the listener writes each instance, waits ``study_timeout``,
runs the report with an in-memory classifier and sends the SR and SC back by C-STORE. Also: an AE title not on
the allow-list is rejected, a study left in the queue by an earlier process is resumed, a failing study does
not stop the listener, and SIGTERM ends ``medvision listen`` with status 0.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from medvision.pacs import DimseStore, PacsAddress, RetryPolicy
from medvision.pacs.listener import DONE, FAILED, PENDING, RECEIVING, Listener
from tests.pacs.conftest import CALLING_AET, ORTHANC_AET, Orthanc, free_port, require_orthanc, write_image

LISTENER_AET = "MEDVISION-LSN"
PATIENT_ID, PATIENT_NAME = "LSTN0001", "Test^Pacs"
DCIODVFY = shutil.which("dciodvfy")


def _classifier() -> tuple[Any, dict[str, Any]]:
    import torch

    class Mean(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(1, 2, 3))[:, None] * 4.0

    metadata = {"backbone": "mean", "image_size": 32, "mean": 0.5, "std": 0.25, "threshold": 0.5,
                "intended_use": "test", "name": "mean-model", "version": 1}  # fmt: skip
    return Mean(), metadata


def _study(root: Path, seed: int, n: int = 2) -> tuple[str, list[Path]]:
    """A new CR study (n instances) and a DX instance, dated outside the other tests' date range."""
    rng = np.random.default_rng(seed)
    study, cr, dx = generate_uid(), generate_uid(), generate_uid()
    day = dt.date(2026, 12, 1)
    files = [
        write_image(root / study / f"cr{i}.dcm", modality="CR", study_uid=study, series_uid=cr, number=i, date=day,
                    rng=rng, patient_id=PATIENT_ID)
        for i in range(1, n + 1)
    ] + [write_image(root / study / "dx.dcm", modality="DX", study_uid=study, series_uid=dx, number=n + 1, date=day,
                     rng=rng, patient_id=PATIENT_ID)]  # fmt: skip
    for path in files:  # a secondary capture needs the picture's orientation
        ds = dcmread(path)
        ds.PatientOrientation = ["P", "F"]
        ds.save_as(path, enforce_file_format=True)
    return study, files


def _wait(what: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s")


def _finished(listener: Listener, uid: str) -> Callable[[], dict | None]:
    def check() -> dict | None:
        entry = listener.state(uid)
        return entry if entry and entry["state"] in (DONE, FAILED) and "processed_at" in entry else None

    return check


def _orthanc_id(orthanc: Orthanc, study_uid: str) -> str:
    r = orthanc.rest("POST", "/tools/lookup", data=study_uid)
    r.raise_for_status()
    [hit] = [h for h in r.json() if h["Type"] == "Study"]
    return str(hit["ID"])


def _send_to(address_port: int, files: list[Path], calling: str = ORTHANC_AET) -> list[Any]:
    address = PacsAddress("dimse", "127.0.0.1", address_port, ae_title=LISTENER_AET)
    return DimseStore(address, calling_aet=calling, timeout=10, retry=RetryPolicy(attempts=1)).send(files)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Callable[..., Listener]]:
    """Start listeners (on free ports, ``study_timeout`` 1 s); all stopped at the end."""
    started: list[Listener] = []

    def start(out: Path | None = None, **kw: Any) -> Listener:
        kw.setdefault("study_timeout", 1.0)
        kw.setdefault("poll_interval", 0.1)
        kw.setdefault("port", free_port())
        listener = Listener(out or tmp_path / "out", aet=LISTENER_AET, **kw)
        listener.start()
        started.append(listener)
        return listener

    yield start
    for listener in started:
        listener.stop()


def test_orthanc_sends_a_study_and_gets_its_sr_and_sc_back(
    orthanc: Orthanc, running: Callable[..., Listener], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    study_uid, files = _study(tmp_path / "upload", seed=21)
    for path in files:
        orthanc.upload(path)
    store = DimseStore(orthanc.dimse, calling_aet=CALLING_AET, timeout=10, retry=RetryPolicy(attempts=2))
    caplog.set_level(logging.INFO, logger="medvision")
    listener = running(store=store, allowed_aets=[ORTHANC_AET], classifier=_classifier())
    calls: list[Path] = []

    def process(study_dir: Path) -> dict[str, Any]:
        calls.append(study_dir)
        return listener.report_study(study_dir)

    listener.process = process
    r = orthanc.rest("PUT", "/modalities/listener",
                     json={"AET": LISTENER_AET, "Host": "127.0.0.1", "Port": listener.port})  # fmt: skip
    assert r.status_code == 200, r.text
    assert orthanc.rest("POST", "/modalities/listener/echo", data="{}").status_code == 200
    r = orthanc.rest("POST", "/modalities/listener/store", data=_orthanc_id(orthanc, study_uid), timeout=30)
    assert r.status_code == 200, r.text

    # every instance on disk, with its file meta, named by its SOP Instance UID
    received = sorted((listener.out / "incoming" / study_uid).glob("*.dcm"))
    assert sorted(p.stem for p in received) == sorted(str(dcmread(p).SOPInstanceUID) for p in files)
    assert all(dcmread(p).file_meta.TransferSyntaxUID for p in received)

    entry = _wait(_finished(listener, study_uid))
    time.sleep(1.5)  # longer than study_timeout: no second processing
    assert calls == [listener.out / "incoming" / study_uid]
    assert (entry["state"], entry["count"], entry["reason"]) == (DONE, 3, None), entry
    assert json.loads((listener.out / "queue" / f"{study_uid}.json").read_text())["state"] == DONE
    result = entry["result"]
    assert result["studies"] >= 1 and result["failed"] == 0, result
    report = listener.out / "reports" / study_uid
    written = [report / f for f in result["files"]]
    assert {dcmread(p).Modality for p in written} >= {"SR"} and len(written) >= 2, result
    assert any(dcmread(p).SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" for p in written), result  # the SC
    assert [s["ok"] for s in result["stored"]] == [True] * len(written), result

    # back in Orthanc, in the same study
    for path in written:
        assert orthanc.has_instance(str(dcmread(path).SOPInstanceUID))
    r = orthanc.rest("POST", "/tools/find", json={"Level": "Series", "Query": {"StudyInstanceUID": study_uid,
                                                                                "Modality": "SR"}})  # fmt: skip
    assert len(r.json()) >= 1

    # dciodvfy: no errors in the SR and SC written
    if DCIODVFY is not None:
        for path in written:
            out = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60, check=False)
            errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]
            assert errors == [], (path.name, errors)

    # one line for the study, no patient identifier in any line
    lines = [r.getMessage() for r in caplog.records]
    [line] = [m for m in lines if m.startswith(f"study {study_uid}: 3 instances, flagged ")]
    assert "stored ok" in line
    assert not [m for m in lines if PATIENT_ID in m or "Test^Pacs" in m or "Pacs" in m.split(study_uid)[-1]]


def test_an_ae_title_off_the_allow_list_is_rejected(
    running: Callable[..., Listener], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from pynetdicom import AE

    listener = running(allowed_aets=[ORTHANC_AET], process=lambda _d: {})
    caplog.set_level(logging.INFO, logger="medvision")
    for calling, accepted in (("STRANGER", False), (ORTHANC_AET, True)):
        ae = AE(ae_title=calling)
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", listener.port, ae_title=LISTENER_AET)
        assert assoc.is_established == accepted and assoc.is_rejected != accepted
        if accepted:
            assert assoc.send_c_echo().Status == 0
            assoc.release()
    assert any("'STRANGER'" in r.getMessage() and "rejected" in r.getMessage() for r in caplog.records)
    _uid, files = _study(tmp_path / "upload", seed=22, n=1)
    assert [o.ok for o in _send_to(listener.port, files, calling="STRANGER")] == [False, False]
    assert not any((listener.out / "incoming").iterdir())


def test_a_restart_resumes_the_studies_left_in_the_queue(running: Callable[..., Listener], tmp_path: Path) -> None:
    out = tmp_path / "out"
    states = {}
    for seed, state in ((23, PENDING), (24, RECEIVING), (25, DONE)):
        uid, files = _study(tmp_path / "upload", seed=seed, n=1)
        for path in files:
            target = out / "incoming" / uid / f"{dcmread(path).SOPInstanceUID}.dcm"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target)
        (out / "queue").mkdir(parents=True, exist_ok=True)
        entry = {"study_uid": uid, "state": state, "count": 2, "last_instance": time.time()}
        (out / "queue" / f"{uid}.json").write_text(json.dumps(entry))
        states[uid] = state
    processed: list[str] = []
    listener = running(out, process=lambda d: processed.append(d.name) or {"flagged": 0}, study_timeout=30)
    for uid, state in states.items():
        if state == DONE:
            continue
        entry = _wait(_finished(listener, uid), timeout=10)  # resumed at once, not after study_timeout
        assert entry["state"] == DONE and entry["result"] == {"flagged": 0}
    assert sorted(processed) == sorted(u for u, s in states.items() if s != DONE)


def test_a_failing_study_is_marked_failed_and_the_listener_keeps_serving(
    running: Callable[..., Listener], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first, first_files = _study(tmp_path / "upload", seed=26, n=1)
    second, second_files = _study(tmp_path / "upload", seed=27, n=1)

    def process(study_dir: Path) -> dict[str, Any]:
        if study_dir.name == first:
            raise RuntimeError("the model broke")
        return {"flagged": 1}

    caplog.set_level(logging.INFO, logger="medvision")
    listener = running(process=process)
    assert [o.ok for o in _send_to(listener.port, first_files)] == [True, True]
    failed = _wait(_finished(listener, first))
    assert failed["state"] == FAILED and failed["reason"] == "RuntimeError: the model broke"
    assert [o.ok for o in _send_to(listener.port, second_files)] == [True, True]
    done = _wait(_finished(listener, second))
    assert done["state"] == DONE and done["count"] == 2
    lines = [r.getMessage() for r in caplog.records]
    assert f"study {first}: 2 instances, failed: RuntimeError: the model broke" in lines
    assert f"study {second}: 2 instances, flagged 1, stored: no store" in lines


def test_medvision_listen_stops_on_sigterm_with_status_0(tmp_path: Path) -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "medvision.cli", "listen", "--out", str(tmp_path / "out"), "--port", str(port),
           "--aet", LISTENER_AET, "--study-timeout", "1"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:

        def listening() -> bool:
            assert proc.poll() is None, proc.communicate()
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", port)) == 0

        _wait(listening, timeout=60)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert f"listening as {LISTENER_AET}" in err and "stopping" in err


def test_a_demo_study_sent_to_medvision_listen_comes_back_as_an_sr_and_sc_that_pass_dciodvfy(
    registered_classifier: str, tmp_path: Path
) -> None:
    """The whole route with the demo writer's radiograph and a trained, registered classifier.

    Orthanc (its own, so nothing else sees the study) sends the study to ``medvision listen`` (a separate
    process, as deployed); the listener reports it and stores the SR and SC back by C-STORE; the objects
    Orthanc now holds are downloaded from it and checked with dciodvfy. Then Orthanc forwards those results to
    the listener, as a routing rule would: they are accepted but neither written nor reported again.
    """
    from medvision.demo import write_demo_data

    require_orthanc()
    if DCIODVFY is None:
        pytest.skip("dciodvfy is not installed (make system-deps installs dicom3tools)")
    write_demo_data(tmp_path / "demo", 5, n_cxr_patients=1, n_mri=0, n_mri_dicom=0)
    source = sorted((tmp_path / "demo" / "cxr" / "dicom").rglob("*.dcm"))[0]
    study_uid = str(dcmread(source, stop_before_pixels=True).StudyInstanceUID)
    port = free_port()
    server = Orthanc(tmp_path / "orthanc", modalities={"listener": (LISTENER_AET, port)})
    server.start()
    out, log_path = tmp_path / "listener", tmp_path / "listen.log"
    cmd = [sys.executable, "-m", "medvision.cli", "listen", "--out", str(out), "--port", str(port),
           "--aet", LISTENER_AET, "--allow-aet", ORTHANC_AET, "--study-timeout", "1", "--store", str(server.dimse),
           "--classifier", "models:/pneumonia-classifier@candidate",
           "--tracking-uri", registered_classifier]  # fmt: skip
    proc = None
    try:
        server.upload(source)
        with open(log_path, "w") as log_file:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log_file, text=True)

        def listening() -> bool:
            assert proc.poll() is None, log_path.read_text()
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", port)) == 0

        _wait(listening, timeout=120)
        r = server.rest("POST", "/modalities/listener/store", data=server.study_id(study_uid), timeout=60)
        assert r.status_code == 200, r.text
        queue = out / "queue" / f"{study_uid}.json"

        def finished() -> dict | None:
            entry = json.loads(queue.read_text()) if queue.exists() else {}
            return entry if entry.get("state") in (DONE, FAILED) else None

        entry = _wait(finished, timeout=180)
        assert entry["state"] == DONE, (entry, log_path.read_text())
        stored = entry["result"]["stored"]
        assert len(stored) == 2 and all(s["ok"] for s in stored), stored

        # What Orthanc holds now: downloaded from it, in the demo study, with the model's provenance, valid.
        classes = []
        for s in stored:
            [hit] = [h for h in server.rest("POST", "/tools/lookup", data=s["sop_instance_uid"]).json()
                     if h["Type"] == "Instance"]  # fmt: skip
            held = tmp_path / "held" / f"{s['sop_instance_uid']}.dcm"
            held.parent.mkdir(exist_ok=True)
            held.write_bytes(server.rest("GET", f"/instances/{hit['ID']}/file").content)
            ds = dcmread(held)
            assert ds.StudyInstanceUID == study_uid and ds.Manufacturer == "medvision"
            assert b"pneumonia-classifier" in held.read_bytes()
            classes.append(ds.SOPClassUID)
            check = subprocess.run([DCIODVFY, str(held)], capture_output=True, text=True, timeout=60, check=False)
            errors = [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")]
            assert errors == [], (held.name, errors)
        assert sorted(classes) == ["1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.88.34"]

        # A routing rule forwards the results to the listener: accepted, not written, not reported again.
        ids = [h["ID"] for s in stored for h in server.rest("POST", "/tools/lookup", data=s["sop_instance_uid"]).json()]
        r = server.rest("POST", "/modalities/listener/store", json={"Resources": ids}, timeout=60)
        assert r.status_code == 200, r.text
        time.sleep(2.5)  # longer than --study-timeout
        assert [p.stem for p in (out / "incoming" / study_uid).glob("*.dcm")] == [dcmread(source).SOPInstanceUID]
        assert json.loads(queue.read_text())["processed_at"] == entry["processed_at"]
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        assert proc.returncode == 0
        text = log_path.read_text()
        assert text.count(f"study {study_uid}: 1 instances, flagged ") == 1 and "stored ok (2 files)" in text
        assert text.count("medvision's own result; accepted, not reported") == 2
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        server.stop(graceful=False)


def test_make_pacs_routes_every_demo_study_to_the_listener_once(
    running: Callable[..., Listener], tmp_path: Path
) -> None:
    """``make pacs`` (``python -m medvision.pacs.orthanc``): demo studies uploaded, instructions printed, and its
    routing rule sends each study to the listener, which reports it and stores the results back. Those results
    make the study stable again, so Orthanc sends it once more: it is not reported a second time."""
    from medvision.demo import write_demo_data

    require_orthanc()
    write_demo_data(tmp_path / "demo", 6, n_cxr_patients=1, n_mri=0, n_mri_dicom=0)
    studies = {str(dcmread(p, stop_before_pixels=True).StudyInstanceUID)
               for p in (tmp_path / "demo" / "cxr" / "dicom").rglob("*.dcm")}  # fmt: skip
    http, dicom, port = free_port(), free_port(), free_port()
    root = tmp_path / "pacs"
    cmd = [sys.executable, "-m", "medvision.pacs.orthanc", "--data", str(tmp_path / "demo"), "--root", str(root),
           "--http-port", str(http), "--dicom-port", str(dicom), "--listener-aet", LISTENER_AET,
           "--listener-port", str(port), "--stable-age", "1"]  # fmt: skip
    store = DimseStore(PacsAddress("dimse", "127.0.0.1", dicom, ae_title=ORTHANC_AET), calling_aet=LISTENER_AET,
                       timeout=10, retry=RetryPolicy(attempts=3, base_delay=0.5))  # fmt: skip
    listener = running(store=store, allowed_aets=[ORTHANC_AET], classifier=_classifier(), port=port)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        printed = []
        while proc.stdout is not None and not any("Try, from another terminal" in line for line in printed):
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "".join(printed)
            printed.append(line)
        text = "".join(printed)
        assert f"running with {len(studies)} demo studies" in text
        assert f"http://127.0.0.1:{http}/app/explorer.html" in text and f"dimse://ORTHANC@127.0.0.1:{dicom}" in text
        creds = json.loads((root / "credentials.json").read_text())
        assert (root / "credentials.json").stat().st_mode & 0o077 == 0 and creds["password"] not in text

        entries = {uid: _wait(_finished(listener, uid), timeout=120) for uid in studies}
        assert all(e["state"] == DONE and all(s["ok"] for s in e["result"]["stored"]) for e in entries.values())
        time.sleep(4)  # the stored results make each study stable again (1 s): Orthanc sends it again
        assert {uid: listener.state(uid)["processed_at"] for uid in studies} == {
            uid: e["processed_at"] for uid, e in entries.items()
        }
        orthanc_log = (root / "orthanc.log").read_text()
        assert orthanc_log.count("routing study") >= 2 * len(studies), orthanc_log[-2000:]
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "Orthanc stopped." in rest
    finally:
        if proc.poll() is None:
            proc.kill()
