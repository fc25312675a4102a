"""Experiment review against a real SQLite store filled by two short real training runs."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mlflow import MlflowClient
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from medvision.cli import app
from medvision.config import load_config
from medvision.engine import train_classification
from medvision.errors import TrackingError
from medvision.metrics import delong_test
from medvision.models import create_model
from medvision.tracking import review
from medvision.tracking.registry import log_classifier
from medvision.tracking.run import RunTracker
from tests.engine.conftest import make_cxr_set, write_config

EXPERIMENT = "review-test"
MODEL = "pneumonia-classifier"
#: Run A, then run B: same data and output folder (so the same study-hash salt), other seed and settings.
RUN_SETTINGS = (
    {"train__seed": 0},
    {"train__seed": 2, "model__drop_rate": 0.3, "train__lr": 1e-4},
)


@contextmanager
def mlflow_state() -> Iterator[None]:
    """Undo what RunTracker does to MLflow's global tracking URI (and MLFLOW_TRACKING_URI)."""
    import mlflow

    previous = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        yield
    finally:
        if mlflow.active_run() is not None:
            mlflow.end_run()
        mlflow.set_tracking_uri(None)
        if previous is not None:
            os.environ["MLFLOW_TRACKING_URI"] = previous


def train_two_runs(root: Path, experiment: str = EXPERIMENT) -> tuple[str, list[Any]]:
    """Train runs A and B into ``root/mlflow.db`` (registered as versions 1 and 2); ``(uri, results)``."""
    manifest = make_cxr_set(root / "cxr")
    results = []
    with mlflow_state():
        for settings in RUN_SETTINGS:
            cfg = load_config(write_config(root, manifest, experiment=experiment, train__epochs=2, **settings))
            results.append(train_classification(cfg, progress=False))
    return f"sqlite:///{root / 'mlflow.db'}", results


def download_predictions(uri: str, run_id: str, folder: Path) -> list[dict[str, str]]:
    path = MlflowClient(tracking_uri=uri).download_artifacts(run_id, "evidence/predictions.csv", str(folder))
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[Any]]:
    return train_two_runs(tmp_path_factory.mktemp("review"))


def _tiny_version(uri: str, *, metrics: dict[str, float], tags: dict[str, str], experiment: str) -> int:
    """Register a tiny logged model from a run that logged only ``metrics`` and ``tags``; its version."""
    with mlflow_state(), RunTracker(uri, experiment) as run:
        run.set_tags(tags)
        if metrics:
            run.log_metrics(metrics)
        info = log_classifier(
            create_model("resnet18", weights="none", in_channels=1, num_classes=1),
            input_example=np.zeros((1, 1, 32, 32), np.float32),
            metadata={"task": "classification"},
            registered_name=MODEL,
            alias="tiny",
        )
    return int(info["version"])


@contextmanager
def fake_run(uri: str, *, tags: dict[str, str], predictions: list[dict[str, str]] | None, tmp: Path) -> Iterator[str]:
    with mlflow_state(), RunTracker(uri, "review-fakes") as run:
        run.set_tags(tags)
        if predictions is not None:
            path = tmp / "predictions.csv"
            with path.open("w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=list(predictions[0]))
                writer.writeheader()
                writer.writerows(predictions)
            run.log_artifact(path, "evidence")
        run_id = run.run_id
    yield str(run_id)


# ---------------------------------------------------------------------------------------------- list / show


def test_list_runs_has_both_runs_with_their_logged_metrics(store) -> None:
    uri, results = store
    client = MlflowClient(tracking_uri=uri)
    rows = review.list_runs(uri, EXPERIMENT)
    assert {r["run_id"] for r in rows} == {r.run_id for r in results}
    by_id = {r["run_id"]: r for r in rows}
    for version, result in enumerate(results, start=1):
        row, run = by_id[result.run_id], client.get_run(result.run_id)
        assert row["test_auroc"] == run.data.metrics["test_auroc"]
        for key in ("test_auroc_ci_low", "test_auroc_ci_high", "test_sensitivity", "test_specificity", "test_ece"):
            assert row[key] == run.data.metrics[key], key
        assert row["best_val_auroc"] == run.data.metrics["best_val_auroc"]
        assert row["test_cpm"] is None and row["test_map"] is None
        for tag in ("backbone", "weights_source", "dataset_digest"):
            assert row[tag] == run.data.tags[tag]
        assert row["status"] == "FINISHED" and row["start_time"].endswith("Z")
        assert row["run_name"] == run.info.run_name
        assert [(m["name"], m["version"]) for m in row["models"]] == [(MODEL, version)]
        assert review.registered_version(row, MODEL) == version
    assert by_id[results[1].run_id]["models"][0]["aliases"] == ["candidate"]
    aurocs = [r["test_auroc"] for r in rows]
    assert aurocs == sorted(aurocs, reverse=True)
    assert [r["run_id"] for r in review.top_runs(rows, 1)] == [rows[0]["run_id"]]


def test_unknown_experiment_and_missing_store_are_clear_errors(store, tmp_path) -> None:
    uri, _ = store
    with pytest.raises(TrackingError, match=rf"no such experiment .*{EXPERIMENT}"):
        review.list_runs(uri, "nope")
    missing = tmp_path / "none" / "mlflow.db"
    with pytest.raises(TrackingError, match="there is no tracking store"):
        review.list_runs(f"sqlite:///{missing}", EXPERIMENT)
    assert not missing.exists()


def test_show_run_has_params_metrics_tags_artifacts(store) -> None:
    uri, results = store
    info = review.show_run(uri, results[0].run_id)
    assert info["params"]["model.backbone"] == "resnet18" and info["params"]["train.seed"] == "0"
    assert info["metrics"]["test_auroc"] == results[0].metrics["test_auroc"]
    assert info["tags"]["dataset_digest"] and "mlflow.runName" in info["system_tags"]
    assert {"evidence/predictions.csv", "evidence/metrics.json", "config/resolved_config.yaml"} <= set(
        info["artifacts"]
    )
    assert info["experiment"] == EXPERIMENT and info["models"][0]["version"] == 1
    with pytest.raises(TrackingError, match="run 0123456789abcdef: there is no such run"):
        review.show_run(uri, "0123456789abcdef")


def test_predictions_evidence_and_history(store) -> None:
    uri, results = store
    pred = review.load_predictions(uri, results[0].run_id)
    assert pred["label"].dtype == np.int64 and pred["logit"].dtype == np.float64
    assert pred["study_hash"].size == results[0].metrics["test_n"]
    assert roc_auc_score(pred["label"], pred["logit"]) == pytest.approx(results[0].metrics["test_auroc"])
    assert {"sex", "age_band", "view", "split", "decision", "probability"} <= set(pred)

    calibration = review.calibration_table(uri, [r.run_id for r in results])
    assert calibration[0]["ece_after"] == pytest.approx(results[0].metrics["test_ece"])
    assert calibration[0]["brier_before"] == pytest.approx(results[0].metrics["test_brier_uncalibrated"])
    subgroups = review.subgroup_table(uri, [results[0].run_id])
    assert {s["attribute"] for s in subgroups} == {"sex", "age_band", "view"}

    history = review.metric_history(uri, results[0].run_id)
    assert history["val_auroc"]["step"].tolist() == [0, 1]
    assert history["train_loss"]["value"].size == 2


# ---------------------------------------------------------------------------------------------- compare


def test_compare_runs_matches_a_direct_computation(store, tmp_path) -> None:
    uri, results = store
    run_a, run_b = results[0].run_id, results[1].run_id
    result = review.compare_runs(uri, run_a, run_b, n_bootstraps=200, seed=0)

    rows_a = download_predictions(uri, run_a, tmp_path / "a")
    rows_b = download_predictions(uri, run_b, tmp_path / "b")
    auroc_a = roc_auc_score([int(r["label"]) for r in rows_a], [float(r["logit"]) for r in rows_a])
    auroc_b = roc_auc_score([int(r["label"]) for r in rows_b], [float(r["logit"]) for r in rows_b])
    assert result["auroc_diff"] == auroc_a - auroc_b
    assert result["auroc_a"] == auroc_a and result["auroc_b"] == auroc_b

    by_hash_b = {r["study_hash"]: r for r in rows_b}
    assert set(by_hash_b) == {r["study_hash"] for r in rows_a}  # same output_dir: the same salt
    y = np.array([int(r["label"]) for r in rows_a])
    a = np.array([float(r["logit"]) for r in rows_a])
    b = np.array([float(by_hash_b[r["study_hash"]]["logit"]) for r in rows_a])
    direct = delong_test(y, a, b)
    assert result["p_value"] == pytest.approx(direct["p_value"], rel=1e-12, abs=1e-15)
    assert result["n"] == len(rows_a) and result["n_pos"] == int(y.sum())
    assert result["ci_low"] <= result["ci_high"]
    assert 0.0 < result["bootstrap_p_value"] <= 1.0 and "DeLong" in result["method"]

    swapped = review.compare_runs(uri, run_b, run_a, n_bootstraps=200, seed=0)
    assert swapped["auroc_diff"] == pytest.approx(-result["auroc_diff"])
    assert swapped["p_value"] == pytest.approx(result["p_value"])


def test_cli_compare_json_gives_the_same_numbers(store) -> None:
    uri, results = store
    run_a, run_b = results[0].run_id, results[1].run_id
    expected = review.compare_runs(uri, run_a, run_b, n_bootstraps=300, seed=3)
    args = ["runs", "compare", run_a, run_b, "--tracking-uri", uri, "--bootstrap", "300", "--seed", "3", "--json"]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    got = json.loads(out.stdout)
    for key in ("auroc_a", "auroc_b", "auroc_diff", "ci_low", "ci_high", "p_value", "bootstrap_p_value", "n"):
        assert got[key] == expected[key], key
    text = CliRunner().invoke(app, ["runs", "compare", run_a, run_b, "--tracking-uri", uri, "--bootstrap", "300"])
    assert text.exit_code == 0 and "DeLong p" in text.stdout and run_a in text.stdout


def test_compare_refuses_other_data_other_salt_and_missing_predictions(store, tmp_path) -> None:
    uri, results = store
    run_a = results[0].run_id
    rows = download_predictions(uri, run_a, tmp_path / "a")
    digest = MlflowClient(tracking_uri=uri).get_run(run_a).data.tags["dataset_digest"]

    with fake_run(uri, tags={"dataset_digest": "0" * 16}, predictions=rows, tmp=tmp_path) as other_data:
        with pytest.raises(TrackingError, match="different data") as err:
            review.compare_runs(uri, run_a, other_data)
        assert run_a in str(err.value) and other_data in str(err.value) and digest in str(err.value)

    salted = [{**r, "study_hash": r["study_hash"][::-1]} for r in rows]
    with fake_run(uri, tags={"dataset_digest": digest}, predictions=salted, tmp=tmp_path) as other_salt:
        with pytest.raises(TrackingError, match="share no test study") as err:
            review.compare_runs(uri, run_a, other_salt)
        assert "train.output_dir" in str(err.value) and other_salt in str(err.value)

    with fake_run(uri, tags={"dataset_digest": digest}, predictions=rows[1:], tmp=tmp_path) as fewer:
        with pytest.raises(TrackingError, match="1 only in"):
            review.compare_runs(uri, run_a, fewer)

    with fake_run(uri, tags={}, predictions=None, tmp=tmp_path) as empty:
        with pytest.raises(TrackingError, match=rf"run {empty}: has no evidence/predictions.csv"):
            review.load_predictions(uri, empty)
        out = CliRunner().invoke(app, ["runs", "compare", run_a, empty, "--tracking-uri", uri])
        assert out.exit_code == 3 and out.stderr.startswith("error: run ") and empty in out.stderr


# ---------------------------------------------------------------------------------------------- promote


def test_promote_refuses_a_version_without_test_metrics(store) -> None:
    uri, _ = store
    version = _tiny_version(uri, metrics={}, tags={}, experiment="review-tiny")
    for force in (False, True):
        with pytest.raises(TrackingError, match="has no test_auroc metric"):
            review.promote(uri, MODEL, version, force=force)
    out = CliRunner().invoke(
        app, ["runs", "promote", MODEL, str(version), "--alias", "champion", "--tracking-uri", uri]
    )
    assert out.exit_code == 3 and "has no test_auroc" in out.stderr
    with pytest.raises(TrackingError, match="no such model version"):
        review.promote(uri, MODEL, 99)


def test_promote_moves_the_alias_and_refuses_a_worse_version_unless_forced(store) -> None:
    uri, results = store
    client = MlflowClient(tracking_uri=uri)
    best = max((1, 2), key=lambda v: results[v - 1].metrics["test_auroc"])
    best_auroc = results[best - 1].metrics["test_auroc"]
    digest = client.get_run(results[0].run_id).data.tags["dataset_digest"]
    worse = _tiny_version(
        uri, metrics={"test_auroc": best_auroc - 0.2}, tags={"dataset_digest": digest}, experiment="review-tiny"
    )

    first = review.promote(uri, MODEL, best)
    assert first["version"] == best and first["alias"] == "champion" and first["test_auroc"] == best_auroc
    assert int(client.get_model_version_by_alias(MODEL, "champion").version) == best

    out = CliRunner().invoke(app, ["runs", "promote", MODEL, str(worse), "--alias", "champion", "--tracking-uri", uri])
    assert out.exit_code == 3 and "is worse than that of the current champion" in out.stderr
    assert int(client.get_model_version_by_alias(MODEL, "champion").version) == best

    out = CliRunner().invoke(
        app, ["runs", "promote", MODEL, str(worse), "--alias", "champion", "--force", "--tracking-uri", uri]
    )
    assert out.exit_code == 0, out.output
    assert f"-> version {worse} (was version {best})" in out.stdout
    assert int(client.get_model_version_by_alias(MODEL, "champion").version) == worse

    back = review.promote(uri, MODEL, best)
    assert back["previous_version"] == worse and back["previous_test_auroc"] == pytest.approx(best_auroc - 0.2)
    assert back["forced"] is False and int(client.get_model_version_by_alias(MODEL, "champion").version) == best
    again = review.promote(uri, MODEL, best)
    assert again["changed"] is False and again["previous_version"] == best


# ---------------------------------------------------------------------------------------------- CLI list/show


def test_cli_list_and_show(store) -> None:
    uri, results = store
    runner = CliRunner()
    out = runner.invoke(app, ["runs", "list", "--experiment", EXPERIMENT, "--tracking-uri", uri, "--json"])
    assert out.exit_code == 0, out.output
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert {r["run_id"] for r in rows} == {r.run_id for r in results}
    assert {r["run_id"]: r["test_auroc"] for r in rows} == {r.run_id: r.metrics["test_auroc"] for r in results}

    out = runner.invoke(app, ["runs", "list", "--experiment", EXPERIMENT, "--tracking-uri", uri])
    assert out.exit_code == 0 and "AUROC [95% CI]" in out.stdout
    assert "resnet18-0" in out.stdout and "resnet18-2" in out.stdout and f"{MODEL} v1" in out.stdout

    out = runner.invoke(app, ["runs", "show", results[1].run_id, "--tracking-uri", uri, "--json"])
    assert out.exit_code == 0
    info = json.loads(out.stdout)
    assert info["run_id"] == results[1].run_id and info["params"]["model.drop_rate"] == "0.3"
    out = runner.invoke(app, ["runs", "show", results[1].run_id, "--tracking-uri", uri])
    assert out.exit_code == 0 and "evidence/predictions.csv" in out.stdout and "test_auroc = " in out.stdout

    out = runner.invoke(app, ["runs", "list", "--experiment", "nope", "--tracking-uri", uri])
    assert out.exit_code == 3 and out.stderr.startswith("error: experiment 'nope': there is no such experiment")
    assert len(out.stderr.strip().splitlines()) == 1
