"""End-to-end training on a tiny DICOM set: MLflow evidence, determinism, kill-and-resume, DDP, bad input."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from sklearn.metrics import roc_auc_score

from medvision.config import load_config
from medvision.engine import TrainingError, evaluate_registered, train_classification
from medvision.errors import DataError
from tests.engine.conftest import metric_history, write_config

REPO = Path(__file__).resolve().parents[2]


def _client(tmp: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}")


_history = metric_history


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cxr_manifest):
    tmp = tmp_path_factory.mktemp("train")
    cfg = load_config(write_config(tmp, cxr_manifest))
    result = train_classification(cfg, progress=False)
    return tmp, cfg, result


def test_run_holds_the_evidence(trained, cxr_manifest) -> None:
    tmp, cfg, result = trained
    client = _client(tmp)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.backbone"] == "resnet18" and run.data.params["train.epochs"] == "3"
    assert run.data.tags["weights_source"] == "none"
    for tag in ("dataset_digest", "git_commit", "medvision_version", "git_dirty"):
        assert run.data.tags[tag]
    assert [s for s, _ in _history(client, result.run_id, "val_auroc")] == [0, 1, 2]
    assert [s for s, _ in _history(client, result.run_id, "train_loss")] == [0, 1, 2]
    for key in (
        "test_auroc",
        "test_auroc_ci_low",
        "test_auroc_ci_high",
        "test_auprc",
        "test_sensitivity",
        "test_specificity",
        "test_ppv",
        "test_npv",
        "test_ece",
        "test_brier",
    ):
        assert key in run.data.metrics, key
    artifacts = {f.path for f in client.list_artifacts(result.run_id, "evidence")}
    for name in (
        "predictions.csv",
        "metrics.json",
        "roc.png",
        "pr.png",
        "calibration.png",
        "confusion_matrix.png",
        "model_card.md",
    ):
        assert f"evidence/{name}" in artifacts
    assert {f.path for f in client.list_artifacts(result.run_id, "config")} >= {"config/resolved_config.yaml"}
    version = client.get_model_version_by_alias("pneumonia-classifier", "candidate")
    assert version.run_id == result.run_id


def test_predictions_match_logged_auroc_and_carry_no_identifiers(trained, cxr_manifest) -> None:
    tmp, _, result = trained
    local = Path(
        mlflow.artifacts.download_artifacts(
            run_id=result.run_id,
            artifact_path="evidence",
            dst_path=str(tmp / "dl"),
            tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}",
        )
    )
    rows = list(csv.DictReader((local / "predictions.csv").open()))
    labels = np.array([int(r["label"]) for r in rows])
    logits = np.array([float(r["logit"]) for r in rows])
    assert roc_auc_score(labels, logits) == pytest.approx(
        _client(tmp).get_run(result.run_id).data.metrics["test_auroc"]
    )
    manifest = list(csv.DictReader(cxr_manifest.open()))
    secrets = {r["patient_id"] for r in manifest} | {r["study_uid"] for r in manifest}
    everything = "\n".join(
        p.read_text(errors="ignore") for p in local.iterdir() if p.suffix in (".csv", ".json", ".md")
    )
    params = json.dumps(_client(tmp).get_run(result.run_id).data.params)
    for secret in secrets:
        assert secret not in everything and secret not in params
    assert all(len(r["study_hash"]) == 16 for r in rows)


def test_evaluate_registered_model_reproduces_test_auroc(trained, tmp_path) -> None:
    tmp, cfg, result = trained
    mlflow.set_tracking_uri(f"sqlite:///{tmp / 'mlflow.db'}")
    local = Path(
        mlflow.artifacts.download_artifacts(
            run_id=result.run_id, artifact_path="evidence/predictions.csv", dst_path=str(tmp_path)
        )
    )
    n_test = len(list(csv.DictReader(local.open())))
    report = evaluate_registered("models:/pneumonia-classifier@candidate", "csv", cfg.data.path, n_bootstraps=20)
    assert report["n"] == 32 and n_test < report["n"]
    assert 0.0 <= report["auroc"] <= 1.0 and report["threshold"] == pytest.approx(
        json.loads((Path(result.output_dir) / "evidence" / "metrics.json").read_text())["operating_point"]["threshold"]
    )


def test_same_config_and_seed_give_same_metrics(trained, tmp_path, cxr_manifest) -> None:
    _, _, first = trained
    cfg = load_config(write_config(tmp_path, cxr_manifest, tracking__register_as=None))
    again = train_classification(cfg, progress=False)
    for key in ("test_auroc", "test_auprc", "best_val_auroc", "test_brier"):
        assert again.metrics[key] == pytest.approx(first.metrics[key], abs=1e-6), key


_KILL_SCRIPT = """
import os, signal, sys
import medvision.engine.classification as engine
from medvision.config import load_config
real_step, calls = engine._train_step, [0]
def step(*args, **kwargs):
    calls[0] += 1
    if calls[0] == int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)  # a crash mid-epoch, no clean-up
    return real_step(*args, **kwargs)
engine._train_step = step
engine.train_classification(load_config(sys.argv[1]), progress=False)
"""


def test_killed_mid_epoch_resumes_into_the_same_run(trained, tmp_path, cxr_manifest) -> None:
    _, _, uninterrupted = trained
    config = write_config(tmp_path, cxr_manifest, tracking__register_as=None)
    # 16 train images, batch 8 -> 2 batches per epoch; the 4th step is in the middle of epoch 2.
    killed = subprocess.run(
        [sys.executable, "-c", _KILL_SCRIPT, str(config), "4"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    client = _client(tmp_path)
    [run] = client.search_runs([client.get_experiment_by_name("test-pneumonia").experiment_id])
    assert [s for s, _ in _history(client, run.info.run_id, "val_auroc")] == [0]
    resumed = train_classification(load_config(config), resume=True, progress=False)
    assert resumed.run_id == run.info.run_id
    history = _history(client, run.info.run_id, "val_auroc")
    assert [s for s, _ in history] == [0, 1, 2]  # every epoch logged once
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    # The resumed run repeats the uninterrupted one exactly (per-epoch reseeding).
    assert resumed.metrics["test_auroc"] == pytest.approx(uninterrupted.metrics["test_auroc"], abs=1e-6)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(tmp_path, cxr_manifest, monkeypatch) -> None:
    import medvision.engine.classification as engine

    real, calls = engine._train_step, [0]

    def step(*args, **kwargs):
        calls[0] += 1
        return float("nan") if calls[0] == 3 else real(*args, **kwargs)

    monkeypatch.setattr(engine, "_train_step", step)
    cfg = load_config(write_config(tmp_path, cxr_manifest, tracking__register_as=None))
    with pytest.raises(TrainingError, match="loss became NaN at epoch 2, batch 1") as err:
        train_classification(cfg, progress=False)
    assert "last.pt" in str(err.value)
    [kept] = (tmp_path / "outputs" / "test-pneumonia" / "runs").glob("*/checkpoints/last.pt")
    assert str(kept) in str(err.value)


def test_unreadable_images_listed_before_training(tmp_path, cxr_manifest) -> None:
    rows = list(csv.DictReader(cxr_manifest.open()))
    rows[0]["image"] = "missing/one.dcm"
    rows[1]["image"] = "missing/two.dcm"
    bad = cxr_manifest.parent / "bad_manifest.csv"
    with bad.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    cfg = load_config(write_config(tmp_path, bad, tracking__register_as=None, train__epochs=1))
    with pytest.raises(DataError) as err:
        train_classification(cfg, progress=False)
    assert "one.dcm" in str(err.value) and "two.dcm" in str(err.value)
    cfg = load_config(
        write_config(tmp_path, bad, tracking__register_as=None, train__epochs=1, data__skip_unreadable=True)
    )
    result = train_classification(cfg, progress=False)
    assert _client(tmp_path).get_run(result.run_id).data.metrics["skipped_unreadable"] == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_gloo(tmp_path, cxr_manifest) -> None:
    config = write_config(tmp_path, cxr_manifest, tracking__register_as=None, train__epochs=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(_free_port()),
            "--module",
            "medvision.cli",
            "train",
            str(config),
            "--no-progress",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = _client(tmp_path)
    runs = client.search_runs([client.get_experiment_by_name("test-pneumonia").experiment_id])
    assert len(runs) == 1  # only rank 0 tracks
    assert runs[0].data.tags["world_size"] == "2"
    assert [s for s, _ in _history(client, runs[0].info.run_id, "val_auroc")] == [0, 1]
    assert "test_auroc" in runs[0].data.metrics


def test_model_card_carries_data_metrics_and_provenance(trained) -> None:
    tmp, _, result = trained
    card = (Path(result.output_dir) / "evidence" / "model_card.md").read_text()
    run = _client(tmp).get_run(result.run_id)
    assert f"**Digest:** {run.data.tags['dataset_digest']}" in card
    assert f"| AUROC | {run.data.metrics['test_auroc']:.3f} (95% CI" in card
    assert "# Model card: pneumonia-classifier v1" in card and result.run_id in card
    assert "not for diagnostic use without review by a radiologist" in card
    assert "| test | 8 | 4 |" in card  # images and patients of the test split
