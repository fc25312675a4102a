"""The PHI guard: salted hashes, matching rules, and RunTracker refusing identifiers (real MLflow store)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from medvision.errors import TrackingError
from medvision.tracking import phi
from medvision.tracking.phi import PhiGuard, new_salt, salted_hash
from medvision.tracking.run import RunTracker
from tests.conftest import write_dicom

PATIENT = "PAT-000123"
STUDY_UID = "1.2.826.0.1.3680043.8.498.1234567"
ITEMS = [
    {"image": "a.png", "label": 1, "meta": {"patient_id": PATIENT, "study_uid": STUDY_UID, "patient_sex": "F"}},
    {"image": "b.png", "patient_id": "PAT-000456", "PatientName": "Doe^Jane", "AccessionNumber": "ACC99887"},
    {"image": "c.png", "label": 0, "meta": {"patient_id": "", "series_uid": "1.2.3.4.5.6", "accession": "7"}},
]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import mlflow

    folder = tmp_path_factory.mktemp("mlflow-phi")
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    yield f"sqlite:///{folder}/mlflow.db"
    if mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(None)
    if previous is not None:
        os.environ["MLFLOW_TRACKING_URI"] = previous


@pytest.fixture
def guard() -> PhiGuard:
    return PhiGuard.from_items(ITEMS)


def test_salted_hash() -> None:
    assert salted_hash(PATIENT, "salt-a") == salted_hash(PATIENT, "salt-a")
    assert salted_hash(PATIENT, "salt-a") != salted_hash(PATIENT, "salt-b")
    assert salted_hash(PATIENT, "salt-a") != salted_hash("PAT-000456", "salt-a")
    digest = salted_hash(PATIENT, "salt-a")
    assert len(digest) == 16 and int(digest, 16) >= 0
    import hashlib

    assert digest == hashlib.sha256(("salt-a" + PATIENT).encode()).hexdigest()[:16]
    assert new_salt() != new_salt() and len(new_salt()) == 32


def test_from_items_collects_identifiers(guard: PhiGuard) -> None:
    for text in (PATIENT, STUDY_UID, "PAT-000456", "Doe^Jane", "Jane Doe", "ACC99887", "1.2.3.4.5.6"):
        assert guard.contains(f"x {text} y"), text
    # short values ("F", "7") and empty ones are ignored
    assert not guard.contains("sex F, accession 7, label 1")


def test_matching_rules() -> None:
    guard = PhiGuard(["P0001", "1234", "1.2.3.4", "UNKNOWN", "M", "", None, "0000"])
    assert guard.contains("data/P0001_view1.png") and guard.contains("p0001")
    assert not guard.contains("P00012") and not guard.contains("XP0001")
    assert guard.contains("id 1234,") and not guard.contains("lr 0.1234") and not guard.contains("12345")
    assert guard.contains("uid=1.2.3.4/") and not guard.contains("1.2.3.45") and not guard.contains("1.2.3.4.5")
    assert not guard.contains("group unknown") and not guard.contains("0000")
    assert len(guard) == 3
    assert guard.redact("P0001/1.2.3.4.dcm") == "[redacted]/[redacted].dcm"
    assert len(PhiGuard([])) == 0 and not PhiGuard([]).contains("anything")


def test_scan_file_across_chunk_boundaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(phi, "_CHUNK_CHARS", 7)
    guard = PhiGuard(["P0001"])
    cases = {
        "xxxxxxxxxxxxxxxxx,P0001,yyyyyyyyyyyyyyyy": True,
        "xxxxx P0001": True,
        "xxxxx/P0001.": True,
        "xxxxxP0001": False,
        "P0001": True,
        "xxxxxxxxxxxxxxxxxP00012yyyyyyyyyyyyyyyy": False,
        "xxxxxxxxxxxxxxxxxxxxP0001yyyyy": False,
        "éééééééé P0001 éééééé": True,
    }
    for i, (content, hit) in enumerate(cases.items()):
        path = tmp_path / f"f{i}.csv"
        path.write_text(content, encoding="utf-8")
        if hit:
            with pytest.raises(TrackingError):
                guard.scan_file(path)
        else:
            guard.scan_file(path)


def _assert_refused(info: pytest.ExceptionInfo[TrackingError], *hidden: str) -> None:
    message = str(info.value)
    assert "patient identifier would reach MLflow" in message
    for value in hidden:
        assert value not in message
        assert value.lower() not in message.lower()


def test_tracker_refuses_identifiers(store: str, guard: PhiGuard, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    csv = tmp_path / "per_case.csv"
    csv.write_text(f"patient,score\n{PATIENT},0.9\n", encoding="utf-8")
    folder = tmp_path / "evidence"
    folder.mkdir()
    (folder / "ok.txt").write_text("fine", encoding="utf-8")
    (folder / "cases.json").write_text(f'{{"study": "{STUDY_UID}"}}', encoding="utf-8")
    dicom = write_dicom(tmp_path / "scan.dcm", np.zeros((8, 8), np.uint16))  # PatientID TEST0001

    uri = store
    with RunTracker(uri, "phi", phi_guard=guard) as run:
        with pytest.raises(TrackingError) as info:
            run.log_params({"data.first_image": f"/data/{PATIENT}/img.png", "train.lr": 0.1})
        _assert_refused(info, PATIENT)
        assert info.value.where == "params.data.first_image"
        with pytest.raises(TrackingError) as info:
            run.log_params({f"case.{PATIENT}": 1})
        _assert_refused(info, PATIENT)
        assert info.value.where == "params.case.[redacted]"
        with pytest.raises(TrackingError) as info:
            run.set_tags({"note": f"worst case Jane Doe ({STUDY_UID})"})
        _assert_refused(info, "Jane Doe", STUDY_UID)
        with pytest.raises(TrackingError) as info:
            run.log_metrics({f"auroc_{PATIENT}": 0.5})
        _assert_refused(info, PATIENT)
        with pytest.raises(TrackingError) as info:
            run.log_text(f"hardest: {PATIENT}", "notes.md")
        _assert_refused(info, PATIENT)
        with pytest.raises(TrackingError) as info:
            run.log_dict({"cases": [{"accession": "ACC99887"}]}, "cases.yaml")
        _assert_refused(info, "ACC99887")
        with pytest.raises(TrackingError) as info:
            run.log_artifact(csv, "eval")
        _assert_refused(info, PATIENT)
        assert info.value.where == "artifact eval/per_case.csv"
        with pytest.raises(TrackingError) as info:
            run.log_artifact(folder)
        _assert_refused(info, STUDY_UID)

        run.log_params({"train.lr": 0.1, "data.path": "data/demo/cxr/manifest.csv"})
        run.log_text("AUROC 0.91", "summary.md")
        run.log_artifact(dicom)  # its PatientID is not one of this guard's identifiers
        run.phi_guard = PhiGuard(["TEST0001"])
        with pytest.raises(TrackingError) as info:
            run.log_artifact(dicom, "dicom")  # DICOM headers are searched as bytes
        _assert_refused(info, "TEST0001")
        run_id = run.run_id

    client = MlflowClient(tracking_uri=uri)
    data = client.get_run(run_id).data
    assert data.params == {"train.lr": "0.1", "data.path": "data/demo/cxr/manifest.csv"}
    assert "note" not in data.tags and not data.metrics
    logged = sorted(a.path for a in client.list_artifacts(run_id))
    assert logged == ["scan.dcm", "summary.md"]


def test_names_of_runs_are_checked(store: str, guard: PhiGuard) -> None:
    with pytest.raises(TrackingError) as info:
        RunTracker(store, "phi", run_name=f"debug-{PATIENT}", phi_guard=guard).start()
    _assert_refused(info, PATIENT)
