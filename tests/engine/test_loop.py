"""The one training loop: the task registry, per-run output folders, one checkpoint format, the monitored metric."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from medvision.config import load_config
from medvision.engine.loop import CHECKPOINT_FORMAT, RunPaths, Task, _monitor
from medvision.engine.tasks import TASKS, get_task, train
from medvision.errors import ConfigError, InputError
from tests.engine.test_detection_train import make_tumour_set, write_detection_config

pytestmark = pytest.mark.usefixtures("mlflow_globals")


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def test_both_tasks_are_registered_and_follow_the_protocol(tmp_path: Path) -> None:
    datalist = make_tumour_set(tmp_path / "data", n=4)
    cfg = load_config(write_detection_config(tmp_path, datalist))
    task = get_task(cfg)
    assert set(TASKS) >= {"classification", "detection"}
    assert task.name == "detection" and isinstance(task, Task)
    assert _monitor(task, cfg) == ("val_cpm", "max")


def test_early_stop_metric_comes_from_the_config_and_must_belong_to_the_task(tmp_path: Path) -> None:
    datalist = make_tumour_set(tmp_path / "data", n=4)
    config = write_detection_config(tmp_path, datalist)
    cfg = load_config(config, ["train.early_stop.metric=val_auroc"])
    with pytest.raises(ConfigError, match="train.early_stop.metric") as info:
        train(cfg, progress=False)
    assert "val_cpm" in info.value.fix  # the metrics the task has
    assert not (tmp_path / "outputs").exists()  # refused before any work


def test_every_run_has_its_own_folder_and_resume_continues_the_latest(tmp_path: Path) -> None:
    datalist = make_tumour_set(tmp_path / "data", n=12, seed=1)
    config = write_detection_config(tmp_path, datalist, epochs=1, max_batches_per_epoch=1)
    first = train(load_config(config), progress=False)
    assert first.output_dir == tmp_path / "outputs" / "test-tumour" / "runs" / first.run_id
    assert (first.output_dir / "evidence" / "metrics.json").exists()
    assert (first.output_dir / "checkpoints" / "best.pt").exists()
    before = _digest(first.output_dir)
    second = train(load_config(config), progress=False)
    assert second.run_id != first.run_id and second.output_dir != first.output_dir
    assert _digest(first.output_dir) == before  # nothing of the first run was overwritten
    experiment = tmp_path / "outputs" / "test-tumour"
    assert (experiment / "latest").read_text().strip() == second.run_id
    state = torch.load(second.output_dir / "checkpoints" / "last.pt", weights_only=True)
    assert state["format"] == CHECKPOINT_FORMAT and state["task"] == "detection" and state["metric"] == "val_cpm"

    # --resume with more epochs continues the latest run, into the same MLflow run and the same folder.
    resumed = train(load_config(config, ["train.epochs=2"]), resume=True, progress=False)
    assert resumed.run_id == second.run_id and resumed.output_dir == second.output_dir and resumed.epochs_run == 2


def test_an_old_checkpoint_is_refused_with_what_to_do(tmp_path: Path) -> None:
    datalist = make_tumour_set(tmp_path / "data", n=12, seed=1)
    config = write_detection_config(tmp_path, datalist, epochs=1, max_batches_per_epoch=1)
    experiment = tmp_path / "outputs" / "test-tumour"
    # Before the one loop: <experiment>/checkpoints/last.pt, no runs/ folder.
    (experiment / "checkpoints").mkdir(parents=True)
    torch.save({"epoch": 0, "best_metric": 0.5}, experiment / "checkpoints" / "last.pt")
    with pytest.raises(InputError, match="earlier medvision") as info:
        train(load_config(config), resume=True, progress=False)
    assert "without --resume" in info.value.fix
    # A run folder whose last.pt has no format version (written by the two loops of before).
    paths = RunPaths(experiment)
    paths.open_run("0123456789abcdef")
    paths.last.parent.mkdir(parents=True)
    torch.save({"epoch": 0, "best_metric": 0.5, "model": {}}, paths.last)
    with pytest.raises(InputError, match=f"format 1 .* format {CHECKPOINT_FORMAT}"):
        train(load_config(config), resume=True, progress=False)
    # Nothing to resume at all.
    with pytest.raises(InputError, match="no run to resume"):
        train(load_config(config, [f"train.output_dir={tmp_path / 'empty'}"]), resume=True, progress=False)
