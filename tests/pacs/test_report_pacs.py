"""``medvision report`` wired to a real Orthanc: studies in by DICOMweb or DIMSE, SR and SC out by STOW-RS or C-STORE.

Each test uses its own studies (its own StudyDate) on one Orthanc of this module, so that what one test stores
never shows in another's query (the session Orthanc of ``conftest.py`` is shared with the library's tests, which
count the instances of their studies: nothing is stored there).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pydicom import dcmread

from medvision.config import ReportConfig
from medvision.pacs import DicomwebSource
from medvision.pacs.uris import ENV_PASSWORD, ENV_USER
from medvision.reporting.batch import format_summary, run_report
from medvision.reporting.pacs import resend
from tests.pacs.conftest import CALLING_AET, USER, Orthanc, free_port, require_orthanc, write_image
from tests.reporting.conftest import FakeDetector

DATES = {"dicomweb": dt.date(2026, 11, 20), "dimse": dt.date(2026, 11, 21), "outage": dt.date(2026, 11, 22)}


class Mean(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(1, 2, 3))[:, None] * 4.0


def _classifier(version: int = 1) -> tuple[torch.nn.Module, dict]:
    metadata = {"backbone": "mean", "image_size": 32, "keep_aspect": True, "mean": 0.5, "std": 0.25,
                "temperature": 1.0, "threshold": 0.5, "intended_use": "test", "name": "mean-model",
                "version": version}  # fmt: skip
    return Mean(), metadata


def _write_studies(root: Path, day: dt.date, rng: np.random.Generator) -> list[Path]:
    """Two radiograph studies of one image each (CR, DX), chest, oriented (so each gets a secondary capture)."""
    from pydicom.uid import generate_uid

    paths = []
    for n, modality in enumerate(("CR", "DX"), start=1):
        path = write_image(root / f"{modality.lower()}{n}.dcm", modality=modality, study_uid=generate_uid(),
                           series_uid=generate_uid(), number=n, date=day, rng=rng,
                           patient_id=f"RPT{day:%d}{n}")  # fmt: skip
        ds = dcmread(path)
        ds.PatientOrientation, ds.BodyPartExamined = ["L", "F"], "CHEST"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def uploads(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("report-uploads")
    rng = np.random.default_rng(23)
    for name, day in DATES.items():
        _write_studies(root / name, day, rng)
    return {name: root / name for name in DATES}


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory, uploads: dict[str, Path]):
    require_orthanc()
    server = Orthanc(tmp_path_factory.mktemp("report-orthanc"))
    server.start()
    try:
        for folder in uploads.values():
            for path in sorted(folder.glob("*.dcm")):
                server.upload(path)
        yield server
    finally:
        server.stop(graceful=False)


@pytest.fixture(autouse=True)
def _quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDVISION_CHROMIUM", "/nonexistent/chromium")  # no PDF: seconds saved, rows unchanged


def _env_credentials(monkeypatch: pytest.MonkeyPatch, pacs: Orthanc) -> None:
    monkeypatch.setenv(ENV_USER, USER)
    monkeypatch.setenv(ENV_PASSWORD, pacs.password)


def _query(name: str) -> str:
    return f"StudyDate={DATES[name]:%Y%m%d}"


def _rows(out: Path) -> list[dict]:
    return json.loads((out / "results.json").read_text())["rows"]


def _client(pacs: Orthanc):
    return DicomwebSource(pacs.dicomweb, credentials=pacs.credentials, timeout=10)._client


def _instances(pacs: Orthanc, study_uid: str, modality: str) -> list[str]:
    """SOP Instance UIDs of ``modality`` in the study, by QIDO-RS."""
    client = _client(pacs)
    series = client.search_for_series(study_instance_uid=study_uid, search_filters={"Modality": modality})
    uids = []
    for s in series:
        series_uid = s["0020000E"]["Value"][0]
        hits = client.search_for_instances(study_instance_uid=study_uid, series_instance_uid=series_uid)
        uids += [h["00080018"]["Value"][0] for h in hits]
    return sorted(uids)


def _check_stored(pacs: Orthanc, out: Path, rows: list[dict]) -> None:
    """Every row ok and stored; Orthanc holds its SR and SC, in the source study, once."""
    assert rows and all(r["status"] == "ok" and r["stored"] == "ok" for r in rows), rows
    client = _client(pacs)
    for row in rows:
        for key in ("sr_path", "secondary_capture_path"):
            local = dcmread(out / row[key], stop_before_pixels=True)
            assert local.Modality in ("SR", "OT")  # QIDO on the study with Modality=SR (OT): this object, once
            assert _instances(pacs, row["study_uid"], local.Modality) == [local.SOPInstanceUID]
            held = client.retrieve_instance(row["study_uid"], local.SeriesInstanceUID, local.SOPInstanceUID)
            assert held.StudyInstanceUID == row["study_uid"] and held.SOPClassUID == local.SOPClassUID


def test_dicomweb_in_and_out_equals_the_folder_report_and_a_rerun_updates(
    pacs: Orthanc, uploads: dict[str, Path], tmp_path: Path
) -> None:
    creds = tmp_path / "pacs.json"
    creds.write_text(json.dumps({"username": USER, "password": pacs.password}))
    creds.chmod(0o600)
    address = str(pacs.dicomweb)
    config = ReportConfig(input=address, query=_query("dicomweb"), out=tmp_path / "report", credentials=creds,
                          store=address, secondary_capture=True, store_base_delay=0.0)  # fmt: skip
    summary = run_report(config, classifier=_classifier(), detector=FakeDetector(), progress=False)
    out = tmp_path / "report"
    rows = _rows(out)
    assert summary["studies_read"] == 2 and summary["stored_failed"] == 0
    assert all(r["source"].startswith(f"{address}/{r['study_uid']}/") for r in rows)
    assert (tmp_path / "report.pacs-cache").is_dir() and not (out / "report.pacs-cache").exists()
    for name in ("results.json", "results.csv", "index.html"):
        assert pacs.password not in (out / name).read_text()
    _check_stored(pacs, out, rows)

    # The same files in a folder: the same rows, but for where they came from and whether they were sent.
    folder = run_report(ReportConfig(input=uploads["dicomweb"], out=tmp_path / "folder", secondary_capture=True),
                        classifier=_classifier(), detector=FakeDetector(), progress=False)  # fmt: skip
    assert folder["stored_failed"] == 0
    plain = _rows(tmp_path / "folder")
    assert all(r["stored"] is None for r in plain)
    drop = lambda r: {k: v for k, v in r.items() if k not in ("source", "stored")}  # noqa: E731
    assert [drop(r) for r in rows] == [drop(r) for r in plain]

    # A re-run (a cold cache) stores the same SOP Instance UIDs again: an update, never a second copy. The
    # studies now also hold medvision's SR and SC: they are left out of the retrieve, so the rows are the same.
    again = run_report(config.model_copy(update={"pacs_cache": tmp_path / "cold"}), classifier=_classifier(),
                       detector=FakeDetector(), progress=False)  # fmt: skip
    assert again["stored_failed"] == 0 and again["studies_read"] == 2
    rerun = _rows(out)
    assert rerun == rows
    assert sorted(p.parent.parent.name for p in (tmp_path / "cold").rglob("*.dcm")) == sorted(
        r["study_uid"] for r in rows
    )  # one source instance per study, no SR or SC
    _check_stored(pacs, out, rerun)


def test_dimse_in_and_out(pacs: Orthanc, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    address = str(pacs.dimse)
    config = ReportConfig(input=address, query=_query("dimse"), out=tmp_path / "r",
                          calling_aet=CALLING_AET, store=address, secondary_capture=True, store_base_delay=0.0,
                          pacs_cache=tmp_path / "cache")  # fmt: skip
    summary = run_report(config, classifier=_classifier(), detector=FakeDetector(), progress=False)
    rows = _rows(tmp_path / "r")
    assert summary["studies_read"] == 2 and len(list((tmp_path / "cache").iterdir())) == 2
    assert all(r["source"].startswith(f"{address}/") for r in rows)
    with (tmp_path / "r" / "results.csv").open() as fh:
        assert [r["stored"] for r in csv.DictReader(fh)] == ["ok", "ok"]
    _check_stored(pacs, tmp_path / "r", rows)

    # Again with a cold cache: series-level C-FIND finds medvision's SR and SC series, the C-GET leaves them out.
    from medvision.pacs import DimseSource

    source = DimseSource(pacs.dimse, calling_aet=CALLING_AET)
    study = rows[0]["study_uid"]
    first = sorted(p.relative_to(tmp_path / "cache") for p in (tmp_path / "cache" / study).rglob("*.dcm"))
    assert [p.relative_to(tmp_path / "cold") for p in source.retrieve(study, tmp_path / "cold")] == first
    assert source.skipped == 2 and source.fetched == 1


def test_outage_keeps_the_objects_and_resend_stores_them(
    pacs: Orthanc, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from medvision.cli import app
    from medvision.errors import PacsError

    _env_credentials(monkeypatch, pacs)
    # One study cannot be retrieved: a failed row with the reason; the other goes on.
    real = DicomwebSource.retrieve
    found = {}

    def flaky(self, study_uid, cache_dir):
        found.setdefault("first", study_uid)
        if study_uid != found["first"]:
            raise PacsError(str(self.address), "WADO-RS: HTTP 503 Service Unavailable", "retry later")
        return real(self, study_uid, cache_dir)

    monkeypatch.setattr(DicomwebSource, "retrieve", flaky)
    closed = f"dicomweb+http://127.0.0.1:{free_port()}/dicom-web"  # the PACS is down when the SRs are sent
    out = tmp_path / "report"
    config = ReportConfig(input=str(pacs.dicomweb), query=_query("outage"), out=out, store=closed,
                          secondary_capture=True, store_attempts=2, store_base_delay=0.01)  # fmt: skip
    summary = run_report(config, classifier=_classifier(version=2), detector=FakeDetector(), progress=False)
    rows = _rows(out)
    ok = [r for r in rows if r["status"] == "ok"]
    (lost,) = [r for r in rows if r["status"] == "failed"]
    assert lost["study_uid"] != found["first"] and "HTTP 503" in lost["reason"] and lost["stored"] == "not_applicable"
    assert len(ok) == 1 and ok[0]["stored"].startswith("failed: sr/") and "cannot connect" in ok[0]["stored"]
    assert "(after 2 attempts)" in ok[0]["stored"]
    assert summary["stored_failed"] == 1
    assert format_summary(summary).count(f"1 not stored (medvision report --resend {out})") == 1
    sops = [dcmread(out / ok[0][k], stop_before_pixels=True).SOPInstanceUID
            for k in ("sr_path", "secondary_capture_path")]  # fmt: skip
    assert not any(pacs.has_instance(sop) for sop in sops)

    # Still down: the resend says so, exit status 3, nothing changes but the reason.
    runner = CliRunner()
    result = runner.invoke(app, ["report", "--resend", str(out), "--store", closed, "--store-attempts", "1"])
    assert result.exit_code == 3 and "1 not stored" in result.stdout, result.output
    assert _rows(out)[0]["stored"].startswith("failed: ")

    # Back up: the objects go, the results say so (JSON and CSV).
    result = runner.invoke(app, ["report", "--resend", str(out), "--store", str(pacs.dicomweb)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"resend: 1 row(s) sent, 1 stored, 0 not stored -> {out}"
    doc = json.loads((out / "results.json").read_text())
    assert [r["stored"] for r in doc["rows"]] == ["ok", "not_applicable"] and doc["summary"]["stored_failed"] == 0
    with (out / "results.csv").open() as fh:
        assert [r["stored"] for r in csv.DictReader(fh)] == ["ok", "not_applicable"]
    assert all(pacs.has_instance(sop) for sop in sops)
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    # Nothing left to send: a second resend sends nothing.
    assert resend(out, str(pacs.dicomweb), calling_aet="MEDVISION")["rows"] == 0


def test_while_the_pacs_is_down_each_study_is_tried_once(tmp_path: Path) -> None:
    """No PACS needed: a store that confirms nothing, then everything."""
    from medvision.pacs import RetryPolicy, StoreOutcome
    from medvision.reporting.pacs import ReportSender

    class Store:
        retry = RetryPolicy(attempts=3)
        up = False
        attempts: list[int] = []

        def send(self, paths):
            self.attempts.append(self.retry.attempts)
            status = "stored" if self.up else "failed: cannot connect (after 3 attempts)"
            return [StoreOutcome(Path(p), "1.2", self.up, status, 1) for p in paths]

    store = Store()
    sender = ReportSender(store, tmp_path)
    row = {"sr_path": "sr/a.dcm", "secondary_capture_path": None}
    assert sender(row) == "failed: sr/a.dcm: cannot connect (after 3 attempts)"
    assert sender(row).startswith("failed: ") and sender({"sr_path": None}) == "not_applicable"
    store.up = True
    assert sender(row) == "ok" and sender(row) == "ok"
    assert store.attempts == [3, 1, 1, 3] and store.retry.attempts == 3
