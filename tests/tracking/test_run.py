"""RunTracker against a real MLflow SQLite store (one per module, to pay the migration once)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from medvision.errors import TrackingError
from medvision.tracking.run import MAX_PARAM_VAL_LENGTH, RunTracker, flatten_config


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    import mlflow

    folder = tmp_path_factory.mktemp("mlflow-run")
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    yield f"sqlite:///{folder}/mlflow.db", folder
    if mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(None)
    if previous is not None:
        os.environ["MLFLOW_TRACKING_URI"] = previous


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in _client(uri).get_metric_history(run_id, key))


def _artifact_text(uri: str, run_id: str, path: str, dst: Path) -> str:
    local = _client(uri).download_artifacts(run_id, path, str(dst))
    return Path(local).read_text(encoding="utf-8")


def test_flatten_config() -> None:
    cfg = {
        "task": "classification",
        "data": {"split": {"by": "patient", "val": 0.15, "seed": 0}, "image_size": 224, "cache_dir": None},
        "model": {"weights": "imagenet", "stats": [0.449, 0.226], "extra": {}},
        "tracking": {"required": True},
    }
    flat = flatten_config(cfg)
    assert flat == {
        "task": "classification",
        "data.split.by": "patient",
        "data.split.val": "0.15",
        "data.split.seed": "0",
        "data.image_size": "224",
        "data.cache_dir": "null",
        "model.weights": "imagenet",
        "model.stats": "[0.449, 0.226]",
        "model.extra": "{}",
        "tracking.required": "true",
    }
    assert flatten_config({"a": {"b": 1}}, prefix="cfg.") == {"cfg.a.b": "1"}


def test_run_logs_and_reads_back(store: tuple[str, Path], tmp_path: Path) -> None:
    uri, folder = store
    csv = tmp_path / "cases.csv"
    csv.write_text("case,score\nc1,0.9\n", encoding="utf-8")
    plots = tmp_path / "plots"
    (plots / "sub").mkdir(parents=True)
    (plots / "roc.txt").write_text("roc", encoding="utf-8")
    (plots / "sub" / "pr.txt").write_text("pr", encoding="utf-8")
    cfg = {"data": {"split": {"val": 0.15}}, "train": {"lr": 1e-4, "epochs": 3}, "model": {"size": [224, 224]}}

    with RunTracker(uri, "run-test", run_name="first", tags={"task": "classification"}) as run:
        assert run.active and not run.resumed
        logged = run.log_params(flatten_config(cfg))
        assert logged["data.split.val"] == "0.15"
        for step in range(3):
            got = run.log_metrics(
                {
                    "train_loss": 1.0 / (step + 1),
                    "val_auroc": np.float32(0.5 + step / 10),
                    "lr": torch.tensor(1e-4),
                    "note": "not a number",
                    "flag": True,
                    "vector": np.zeros(3),
                },
                step=step,
            )
            assert set(got) == {"train_loss", "val_auroc", "lr"}
        run.log_metrics({"ece": float("nan")})
        run.set_tags({"weights_source": "random-init (test)", "n": 3})
        run.log_artifact(csv, "eval")
        run.log_artifact(plots)
        run.log_text("# Summary\n", "reports/summary.md")
        run.log_dict({"threshold": 0.42, "mean": (0.449,), "path": Path("/x")}, "eval/op.json")
        run.log_dict({"a": [1, 2]}, "config/resolved.yaml")
        run_id = run.run_id
        assert run.artifact_uri.startswith((folder / "mlartifacts" / "run-test").resolve().as_uri())
    assert not run.active

    fetched = _client(uri).get_run(run_id)
    assert fetched.info.status == "FINISHED"
    assert fetched.info.run_name == "first"
    assert fetched.data.params == flatten_config(cfg)
    assert fetched.data.tags["task"] == "classification"
    assert fetched.data.tags["weights_source"] == "random-init (test)"
    assert fetched.data.tags["n"] == "3"
    assert _history(uri, run_id, "train_loss") == [(0, 1.0), (1, 0.5), (2, pytest.approx(1 / 3))]
    assert [s for s, _ in _history(uri, run_id, "val_auroc")] == [0, 1, 2]
    assert _history(uri, run_id, "lr")[0][1] == pytest.approx(1e-4)
    assert "note" not in fetched.data.metrics and "flag" not in fetched.data.metrics
    assert math.isnan(fetched.data.metrics["ece"])

    out = tmp_path / "out"
    out.mkdir()
    assert _artifact_text(uri, run_id, "eval/cases.csv", out) == csv.read_text()
    assert _artifact_text(uri, run_id, "plots/sub/pr.txt", out) == "pr"
    assert _artifact_text(uri, run_id, "reports/summary.md", out) == "# Summary\n"
    assert json.loads(_artifact_text(uri, run_id, "eval/op.json", out)) == {
        "threshold": 0.42,
        "mean": [0.449],
        "path": "/x",
    }
    assert yaml.safe_load(_artifact_text(uri, run_id, "config/resolved.yaml", out)) == {"a": [1, 2]}


def test_long_values_are_truncated_and_batched(store: tuple[str, Path]) -> None:
    uri, _ = store
    params = {f"p{i:03d}": i for i in range(250)}
    params["long"] = "x" * (MAX_PARAM_VAL_LENGTH + 500)
    with RunTracker(uri, "run-test") as run:
        run.log_params(params)
        run.log_metrics({f"m{i}": float(i) for i in range(1200)}, step=1)
        run.set_tags({"big": "y" * 9000})
        run_id = run.run_id
    data = _client(uri).get_run(run_id).data
    assert len(data.params) == 251
    assert len(data.params["long"]) == MAX_PARAM_VAL_LENGTH and data.params["long"].endswith("[truncated]")
    assert len(data.metrics) == 1200
    assert len(data.tags["big"]) == 8000


def test_resume_continues_the_same_run(store: tuple[str, Path]) -> None:
    uri, _ = store
    params = flatten_config({"train": {"epochs": 4, "lr": 0.001}})
    with pytest.raises(RuntimeError, match="crash"):
        with RunTracker(uri, "run-test", run_name="crashy") as run:
            run.log_params(params)
            for step in range(2):
                run.log_metrics({"train_loss": 1.0 - step / 10}, step=step)
            run_id = run.run_id
            raise RuntimeError("crash")
    assert _client(uri).get_run(run_id).info.status == "FAILED"

    with RunTracker(uri, "run-test", run_id=run_id, tags={"resumed": "yes"}) as resumed:
        assert resumed.start() == run_id and resumed.resumed
        assert resumed.log_params(params) == {}  # same values: nothing to log, no error
        first = resumed.last_step("train_loss")
        assert first == 1
        for step in range(first + 1, 4):
            resumed.log_metrics({"train_loss": 1.0 - step / 10}, step=step)
        assert resumed.last_step("never_logged") is None

    fetched = _client(uri).get_run(run_id)
    assert fetched.info.status == "FINISHED"
    assert fetched.data.tags["resumed"] == "yes"
    assert [s for s, _ in _history(uri, run_id, "train_loss")] == [0, 1, 2, 3]


def test_resume_with_a_changed_param(store: tuple[str, Path]) -> None:
    uri, _ = store
    with RunTracker(uri, "run-test") as run:
        run.log_params({"train.epochs": 4})
        run_id = run.run_id
    with RunTracker(uri, "run-test", run_id=run_id) as resumed:
        with pytest.raises(TrackingError) as info:
            resumed.log_params({"train.epochs": 8, "train.lr": 0.1})
        assert info.value.where == "params.train.epochs"
        assert "'4', now '8'" in info.value.reason
        assert resumed.log_params({"train.epochs": 8}, on_conflict="prefix") == {"resumed.train.epochs": "8"}
        assert resumed.log_params({"train.epochs": 8}, on_conflict="prefix") == {}
    params = _client(uri).get_run(run_id).data.params
    assert params == {"train.epochs": "4", "resumed.train.epochs": "8"}  # train.lr was not logged either


def test_keyboard_interrupt_ends_killed(store: tuple[str, Path]) -> None:
    uri, _ = store
    with pytest.raises(KeyboardInterrupt):
        with RunTracker(uri, "run-test") as run:
            run_id = run.run_id
            raise KeyboardInterrupt
    assert _client(uri).get_run(run_id).info.status == "KILLED"


def test_errors(store: tuple[str, Path], tmp_path: Path) -> None:
    uri, _ = store
    idle = RunTracker(uri, "run-test")
    with pytest.raises(TrackingError, match="not active"):
        idle.log_metrics({"a": 1.0})
    with pytest.raises(TrackingError, match="no run with this id"):
        RunTracker(uri, "run-test", run_id="0" * 32).start()
    with RunTracker(uri, "run-test") as run:
        with pytest.raises(TrackingError, match="already active"):
            RunTracker(uri, "run-test").start()
        with pytest.raises(TrackingError, match="no such file"):
            run.log_artifact(tmp_path / "missing.csv")
        with pytest.raises(TrackingError, match="250"):
            run.log_params({"k" * 300: 1})
