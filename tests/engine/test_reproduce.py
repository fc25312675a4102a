"""`medvision train --from-run RUN_ID`: the logged config, any --set, a new run with the same numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from medvision.cli import app
from medvision.config import load_config
from medvision.engine import config_from_run, train_classification
from medvision.errors import TrackingError
from tests.engine.conftest import metric_history, write_config

runner = CliRunner()

# Per-epoch metrics that depend on the data, the seed and the code only (not on the wall clock).
EPOCH_KEYS = ("train_loss", "val_loss", "val_auroc", "lr")


pytestmark = pytest.mark.usefixtures("mlflow_globals")


@pytest.fixture(scope="module")
def original(tmp_path_factory, cxr_manifest):
    tmp = tmp_path_factory.mktemp("original")
    config = write_config(tmp, cxr_manifest, experiment="reproduce", train__epochs=2)
    result = train_classification(load_config(config), progress=False, config_path=config)
    return tmp, config, result


_history = metric_history


def test_run_records_how_to_repeat_it(original) -> None:
    tmp, config, result = original
    run = MlflowClient(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}").get_run(result.run_id)
    tags = run.data.tags
    assert tags["config_path"] == str(config.resolve())
    assert tags["command"] and tags["working_dir"] and tags["platform"]
    for key in ("seed", "git_commit", "git_dirty", "dataset_digest", "medvision_version", "weights_source"):
        assert tags[key], key
    assert "reproduces" not in tags


def test_from_run_repeats_the_run_with_identical_metrics(original, tmp_path: Path) -> None:
    tmp, _config, first = original
    store = f"sqlite:///{tmp / 'mlflow.db'}"
    out = tmp_path / "repeat-outputs"  # another output folder (and hash salt): the metrics do not depend on it
    result = runner.invoke(
        app,
        [
            "train",
            "--from-run",
            first.run_id[:8],  # a unique prefix, as `medvision runs list` prints it
            "--set",
            f"tracking.uri={store}",
            "--set",
            f"train.output_dir={out}",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, (result.output, result.exception)
    client = MlflowClient(tracking_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("reproduce").experiment_id])
    repeats = [r for r in runs if r.data.tags.get("reproduces") == first.run_id]
    assert len(repeats) == 1
    second = repeats[0]
    assert second.info.run_id != first.run_id and second.info.status == "FINISHED"
    assert json.loads(second.data.tags["reproduces_overrides"]) == [f"tracking.uri={store}", f"train.output_dir={out}"]
    assert second.data.params["train.output_dir"] == str(out)
    assert (out / "reproduce" / "runs" / second.info.run_id / "evidence" / "predictions.csv").exists()

    original_run = client.get_run(first.run_id)
    assert second.data.metrics["test_auroc"] == original_run.data.metrics["test_auroc"]
    finals = {k: v for k, v in original_run.data.metrics.items() if k.startswith("test_") or k == "best_val_auroc"}
    assert finals and {k: second.data.metrics[k] for k in finals} == finals
    for key in EPOCH_KEYS:
        assert _history(client, second.info.run_id, key) == _history(client, first.run_id, key), key
    assert [s for s, _ in _history(client, second.info.run_id, "val_auroc")] == [0, 1]
    # The same data, the same config apart from the override.
    assert second.data.tags["dataset_digest"] == original_run.data.tags["dataset_digest"]
    same = {k: v for k, v in original_run.data.params.items() if k != "train.output_dir"}
    assert {k: second.data.params[k] for k in same} == same


def test_from_run_reads_the_store_the_overrides_name(original, tmp_path: Path) -> None:
    tmp, _config, first = original
    cfg, store = config_from_run(first.run_id, [f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}", "train.epochs=5"])
    assert store == f"sqlite:///{tmp / 'mlflow.db'}" and cfg.tracking.uri == store
    assert cfg.train.epochs == 5 and cfg.experiment == "reproduce"
    # Without an override the run is looked up in $MLFLOW_TRACKING_URI, and the repeat goes there too.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", store)
        cfg, found = config_from_run(first.run_id)
    assert found == store and cfg.tracking.uri == store and cfg.train.epochs == 2


def test_from_run_errors(original, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tmp, config, first = original
    store = f"sqlite:///{tmp / 'mlflow.db'}"
    with pytest.raises(TrackingError, match="no run with this id"):
        config_from_run("0" * 32, [f"tracking.uri={store}"])
    monkeypatch.chdir(tmp_path)  # no ./mlflow.db here
    with pytest.raises(TrackingError, match="no tracking store"):
        config_from_run(first.run_id)
    assert not (tmp_path / "mlflow.db").exists()

    neither = runner.invoke(app, ["train"])
    assert neither.exit_code == 3 and "either a CONFIG file or --from-run" in neither.stderr
    both = runner.invoke(app, ["train", str(config), "--from-run", first.run_id])
    assert both.exit_code == 3 and "not both" in both.stderr
    resume = runner.invoke(app, ["train", "--from-run", first.run_id, "--resume"])
    assert resume.exit_code == 3 and resume.stderr.startswith("error: --from-run: ")
    clash = runner.invoke(app, ["train", str(config), "--tracking-uri", store, "--set", "tracking.uri=sqlite:///x.db"])
    assert clash.exit_code == 3 and "error: --tracking-uri: " in clash.stderr and "disagrees" in clash.stderr
