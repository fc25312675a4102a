"""One training loop for every task: :func:`fit` runs a :class:`Task`, :func:`train` picks it from :data:`TASKS`.

The tasks are registered in :mod:`medvision.engine.tasks` (which imports this module, never the other way).
The loop owns what every task repeats: tracking checked before any work, seeding, the optimizer and
scheduler, resuming from ``last.pt`` into the same MLflow run, per-epoch reseeding (so a resumed run
repeats an uninterrupted one exactly), the validation schedule, the best checkpoint and early stopping on
the metric ``train.early_stop.metric`` names, the epoch line, DDP with rank-0-only validation, and the
run's own output folder. A task owns what differs: its data, its model, its batches and step, its
validation metrics, and its evidence and registration.

Why a plain loop rather than MONAI's ``SupervisedTrainer`` (ignite): resuming mid-run into the same MLflow
run, per-epoch reseeding, queued MLflow delivery, DDP with early stopping broadcast to every rank, and the
detector's per-epoch slice sampling (which a fixed-length dataset does not express) are each a few lines
here and would each be a custom ignite handler there.

Local outputs. Every run gets a folder of its own, ``<train.output_dir>/<experiment>/runs/<run id>/`` with
``checkpoints/`` (``last.pt``, ``best.pt``) and ``evidence/``; nothing of an earlier run is overwritten.
``<experiment>/latest`` names the last run started there, which ``--resume`` continues, and
``<experiment>/hash_salt.txt`` is the secret salt of the study hashes in the evidence (shared by the runs
of one folder, so that their predictions can be compared study by study).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from medvision.config import ExperimentConfig
from medvision.engine.checkpoint import load_checkpoint, save_checkpoint
from medvision.engine.distributed import DistContext, barrier, broadcast, cleanup, init_distributed
from medvision.engine.provenance import dataset_digest, log_run_start
from medvision.errors import ConfigError, InputError, MedvisionError

__all__ = [
    "CHECKPOINT_FORMAT",
    "RunPaths",
    "Task",
    "TrainResult",
    "TrainingError",
    "fit",
    "resolve_weights",
    "seed_everything",
]

log = logging.getLogger("medvision.train")

#: The version of ``last.pt`` / ``best.pt``; a checkpoint without it was written before the one loop.
CHECKPOINT_FORMAT = 2


class TrainingError(MedvisionError):
    """Training cannot go on (for example a NaN loss)."""


@dataclass
class TrainResult:
    """What a finished training run leaves behind (``output_dir`` is the run's own folder)."""

    run_id: str | None
    output_dir: Path
    metrics: dict[str, float] = field(default_factory=dict)
    model_uri: str | None = None
    model_version: str | None = None
    weights_source: str = ""
    epochs_run: int = 0
    tracking_uri: str | None = None
    #: The data digest the run was tagged with (computed once, by the loop).
    dataset_digest: str = ""


@dataclass
class RunPaths:
    """Where a run keeps its files on local disk (module docstring)."""

    experiment_dir: Path
    run_dir: Path | None = None

    @property
    def latest_file(self) -> Path:
        return self.experiment_dir / "latest"

    @property
    def checkpoints(self) -> Path:
        if self.run_dir is None:  # pragma: no cover - the loop sets run_dir before it saves
            raise RuntimeError("the run folder is not known yet")
        return self.run_dir / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.pt"

    @property
    def evidence(self) -> Path:
        return self.checkpoints.parent / "evidence"

    def open_run(self, run_id: str) -> None:
        """Take ``runs/<run_id>`` as this run's folder and record it as the latest one."""
        self.run_dir = self.experiment_dir / "runs" / run_id
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.latest_file.with_suffix(".tmp")
        tmp.write_text(run_id + "\n")
        os.replace(tmp, self.latest_file)

    def resume_run(self) -> str:
        """The run ``latest`` names (its folder becomes this run's); an error when there is nothing to resume."""
        if not self.latest_file.exists():
            old = self.experiment_dir / "checkpoints" / "last.pt"
            if old.exists():
                raise InputError(
                    old,
                    "this checkpoint was written by an earlier medvision (one folder for every run, before"
                    " runs/<run id>/) and cannot be resumed",
                    "start a new run without --resume",
                )
            raise InputError(
                self.latest_file, "no run to resume in this folder", "run without --resume to start a new run"
            )
        run_id = self.latest_file.read_text().strip()
        self.run_dir = self.experiment_dir / "runs" / run_id
        return run_id


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch; deterministic kernels where torch has them."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def progress_bar(iterable: Any, *, total: int, desc: str, enabled: bool) -> Iterator[Any]:
    """``iterable`` with a tqdm bar when ``enabled``."""
    if not enabled:
        yield from iterable
        return
    # Plain tqdm, not tqdm.auto: tqdm.auto imports IPython, and with it imported the demo trained to
    # different numbers than with --no-progress (found by comparing the two); the bar must not change results.
    from tqdm import tqdm

    yield from tqdm(iterable, total=total, desc=desc, leave=False, mininterval=1.0, dynamic_ncols=True)


def make_optimizer(cfg: ExperimentConfig, params: Any) -> torch.optim.Optimizer:
    """The optimizer ``train.optimizer`` names, with ``train.lr`` and ``train.weight_decay``."""
    t = cfg.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=0.9, weight_decay=t.weight_decay, nesterov=True)
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)


def hash_salt(folder: Path) -> str:
    """A per-output-folder secret salt for study hashes; kept on local disk, never sent to MLflow."""
    from medvision.tracking import new_salt

    path = folder / "hash_salt.txt"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(new_salt())
    return path.read_text().strip()


def resolve_weights(weights: Any) -> Any:
    """``model.weights`` for :func:`~medvision.models.create_model`: an MLflow model URI (``models:/...``,
    ``runs:/...``) becomes its state dict (:class:`~medvision.models.weights.StateDictWeights`, source
    ``mlflow:<uri>``), read through the tracking room's registry; anything else is passed on as it is."""
    if isinstance(weights, str) and weights.startswith(("models:/", "runs:/")):
        from medvision.models.weights import StateDictWeights
        from medvision.tracking.registry import load_state_dict_from_uri

        return StateDictWeights(load_state_dict_from_uri(weights), f"mlflow:{weights}")
    return weights


def bare(model: nn.Module) -> nn.Module:
    """The model inside a ``DistributedDataParallel`` wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class _NullTracker:
    """Stands in for the MLflow run on ranks other than 0."""

    run_id = None

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


@runtime_checkable
class Task(Protocol):
    """What a task gives the loop. The loop calls, in order: :meth:`prepare` (data), :meth:`build_model`,
    :meth:`parameters`; per epoch :meth:`begin_epoch`, :meth:`step` per batch, :meth:`validate` on the
    validation epochs (rank 0) and :meth:`remember_best` when the monitored metric improves; then
    :meth:`finish` (rank 0) on the best checkpoint."""

    #: ``train.task`` names the task by this.
    name: ClassVar[str]
    #: The metrics :meth:`validate` returns that early stopping may monitor, with their direction.
    metrics: ClassVar[Mapping[str, Literal["max", "min"]]]
    #: Whether the task trains under ``torchrun`` (DDP).
    distributed: ClassVar[bool]
    #: The model is used in ``channels_last`` memory format on CUDA.
    channels_last: ClassVar[bool]
    #: Set by :meth:`prepare`: every item of the datalist (for the data digest and the PHI guard).
    items: list[dict[str, Any]]

    def prepare(self, ctx: DistContext, *, progress: bool) -> None:
        """Load the datalist, check every input, split by patient and prepare the data."""

    def build_model(self, ctx: DistContext) -> nn.Module:
        """The model (with ``weights_source``), on the CPU."""

    def parameters(self, net: nn.Module) -> Iterable[torch.nn.Parameter]:
        """The parameters the optimizer updates."""

    def run_name(self) -> str:
        """The MLflow run's display name."""

    def run_start(self) -> dict[str, Any]:
        """``environment``, ``extra_tags`` and ``skipped`` for :func:`~medvision.engine.provenance.log_run_start`."""

    def begin_epoch(self, epoch: int, epoch_seed: int, ctx: DistContext) -> tuple[Iterable[Any], int]:
        """Seed the task's own random streams for ``epoch``; the epoch's batches and how many to run."""

    def step(self, net: nn.Module, batch: Any, optimizer: torch.optim.Optimizer, ctx: DistContext) -> dict[str, float]:
        """One optimisation step: ``{"loss": total, <part>: value, ...}``; a non-finite ``loss`` stops training."""

    def epoch_extra(self) -> tuple[dict[str, float], str]:
        """More per-epoch metrics, and a note for the epoch line (for example ``"96 slices"``)."""

    def validate(self, model: nn.Module, ctx: DistContext) -> dict[str, float]:
        """The validation metrics of ``model`` (every key of :attr:`metrics` among them)."""

    def remember_best(self) -> None:
        """The last validation was the best so far (the task may keep what it computed)."""

    def finish(self, result: TrainResult, *, model: nn.Module, tracker: Any, paths: RunPaths) -> None:
        """Evaluate the best checkpoint (already loaded into ``model``) on test, write the evidence, register."""

    @staticmethod
    def evaluate(
        model: Any, meta: Any, model_uri: str, data_format: str | None, data_path: Any, **options: Any
    ) -> dict[str, Any]:
        """A registered model of this task on a datalist (``medvision evaluate``): its clinical metrics."""


def _monitor(task: Task, cfg: ExperimentConfig) -> tuple[str, Literal["max", "min"]]:
    """The validation metric that picks the best epoch and stops early: ``train.early_stop.metric``."""
    es = cfg.train.early_stop
    name = es.metric if es is not None else next(iter(task.metrics))
    if name not in task.metrics:
        raise ConfigError(
            "train.early_stop.metric",
            f"{name!r} is not a validation metric of the {task.name} task",
            f"use one of: {', '.join(task.metrics)}",
        )
    return name, task.metrics[name]


def fit(
    task: Task,
    cfg: ExperimentConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    config_path: str | os.PathLike[str] | None = None,
    tags: Mapping[str, str] | None = None,
) -> TrainResult:
    """Train ``task`` as ``cfg`` describes; evaluate the best epoch on test, write its evidence, register it.

    Every new run records what it takes to repeat it: the resolved config (artifact
    ``config/resolved_config.yaml`` and params), the seed, the git commit and whether the checkout was
    dirty, the package versions, the data digest, the command line, the working folder and the config
    file (tags).

    Args:
        task: the task (see :data:`medvision.engine.tasks.TASKS`).
        cfg: the validated experiment config.
        resume: continue the run ``<output_dir>/<experiment>/latest`` names, from its ``last.pt``, into the
            same MLflow run.
        progress: progress bars for preparation and batches.
        config_path: the YAML file ``cfg`` was read from (tagged ``config_path``).
        tags: more tags for a new run (e.g. ``reproduces``).

    Returns:
        The run id, test metrics and registered model of the run (rank 0; other ranks get a partial result).
    """
    from medvision.models.classifier import random_init_said_by_caller
    from medvision.tracking import PhiGuard, RunTracker, ensure_tracking_available, resolve_tracking_uri

    monitor, mode = _monitor(task, cfg)
    ctx = init_distributed(cfg.train.device)
    try:
        if ctx.distributed and not task.distributed:
            raise ConfigError(
                "train", f"the {task.name} task trains in one process", "run `medvision train` without torchrun"
            )
        paths = RunPaths(Path(cfg.train.output_dir) / cfg.experiment)

        # 1. Tracking first: a server that is down is reported before any work.
        uri, fallback_warning = None, None
        if ctx.is_main:
            uri, fallback_warning = ensure_tracking_available(
                resolve_tracking_uri(cfg.tracking.uri), required=cfg.tracking.required
            )
            if fallback_warning:
                log.warning(fallback_warning)

        # 2. Data: every unusable input listed before training starts.
        seed_everything(cfg.train.seed)
        task.prepare(ctx, progress=progress and ctx.is_main)

        # 3. Model, with its weights source logged and tagged. A random initialisation is said once, as the
        # warning below with its reason (create_model's RandomInitWarning would say it again with a source line).
        with random_init_said_by_caller():
            model = task.build_model(ctx)
        weights_source = model.weights_source
        if ctx.is_main and weights_source.startswith("random-init"):
            log.warning("weights are a RANDOM INITIALISATION, not ImageNet (%s); tagged weights_source", weights_source)
        elif ctx.is_main:
            log.info("weights source: %s", weights_source)
        model.to(ctx.device)
        if ctx.device.type == "cuda" and task.channels_last:
            model = model.to(memory_format=torch.channels_last)
        net: nn.Module = model
        if ctx.distributed:
            net = nn.parallel.DistributedDataParallel(
                model, device_ids=[ctx.device.index] if ctx.device.index is not None else None
            )
        optimizer = make_optimizer(cfg, task.parameters(net))
        scheduler = (
            torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.train.epochs)
            if cfg.train.scheduler == "cosine"
            else None
        )

        # 4. Resume: the latest run's last.pt, in the one checkpoint format.
        sign = 1.0 if mode == "max" else -1.0
        start_epoch, best, bad_epochs, run_id = 0, -math.inf, 0, None
        have_best = False
        if resume:
            run_id = paths.resume_run()
            state = _read_last(paths.last, task, monitor)
            bare(net).load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None and state.get("scheduler"):
                scheduler.load_state_dict(state["scheduler"])
            start_epoch, best = int(state["epoch"]) + 1, float(state["best"])
            bad_epochs = int(state["bad_epochs"])
            # A best.pt left by an earlier run is never this run's best: only this run's folder is read.
            have_best = paths.best.exists()
            if ctx.is_main:
                log.info("resuming at epoch %d from %s (MLflow run %s)", start_epoch + 1, paths.last, run_id)

        tracker: Any = _NullTracker()
        if ctx.is_main:
            tracker = RunTracker(
                uri,
                cfg.experiment,
                run_id=run_id,
                run_name=task.run_name(),
                phi_guard=PhiGuard.from_items(task.items),
                delivery_wait_s=cfg.tracking.delivery_wait_s,
                local_dir=paths.experiment_dir,
            )
        with tracker if ctx.is_main else contextlib.nullcontext():
            run_id = broadcast(tracker.run_id if ctx.is_main else None, ctx)
            if not resume:
                if ctx.is_main:
                    paths.open_run(run_id or time.strftime("local-%Y%m%d-%H%M%S"))
                run_dir = broadcast(str(paths.run_dir) if ctx.is_main else None, ctx)
                paths.run_dir = Path(run_dir)
            if ctx.is_main:
                tracker.local_dir = paths.run_dir
                tracker.recovery_hint = (
                    f"once the server is back, `medvision train CONFIG --resume` continues from {paths.last}"
                    " and logs the evaluation, the evidence and the model into the same run"
                )
            digest = dataset_digest(task.items)
            if ctx.is_main and not resume:
                log_run_start(
                    tracker,
                    cfg,
                    weights_source=weights_source,
                    digest=digest,
                    device=ctx.device,
                    config_path=config_path,
                    tags=tags,
                    fallback_warning=fallback_warning,
                    **task.run_start(),
                )

            epochs_run = start_epoch
            for epoch in range(start_epoch, cfg.train.epochs):
                epoch_start = time.perf_counter()
                # Reseed per epoch, so that a resumed run repeats an uninterrupted one exactly.
                epoch_seed = cfg.train.seed * 10_007 + epoch
                torch.manual_seed(epoch_seed)
                np.random.seed(epoch_seed % 2**32)
                batches, n_batches = task.begin_epoch(epoch, epoch_seed, ctx)
                frozen = epoch < cfg.train.warmup_frozen_epochs
                bare(net).freeze_backbone(frozen)
                net.train()
                parts: dict[str, list[float]] = {}
                bar = progress_bar(
                    batches,
                    total=n_batches,
                    desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
                    enabled=progress and ctx.is_main,
                )
                for step, batch in enumerate(bar):
                    if step >= n_batches:
                        break
                    losses = task.step(net, batch, optimizer, ctx)
                    if not math.isfinite(losses["loss"]):
                        raise TrainingError(
                            str(paths.last if paths.last.exists() else paths.checkpoints),
                            f"loss became NaN at epoch {epoch + 1}, batch {step + 1}; "
                            "the last good checkpoint is kept here",
                            "lower train.lr, check the inputs, or resume with --resume",
                        )
                    for key, value in losses.items():
                        parts.setdefault(key, []).append(value)
                if scheduler is not None:
                    scheduler.step()
                train_seconds = time.perf_counter() - epoch_start

                stop = False
                if ctx.is_main:
                    validate = (epoch + 1) % cfg.train.val_every == 0 or epoch + 1 == cfg.train.epochs
                    val: dict[str, float] = {}
                    if validate:
                        val = task.validate(bare(net), ctx)
                        value = float(val[monitor])
                        improved = math.isfinite(value) and sign * value > sign * best
                        if improved or not have_best:
                            have_best = True
                            best = value if improved else best
                            bad_epochs = 0 if improved else bad_epochs
                            task.remember_best()
                            save_checkpoint(
                                paths.best,
                                {
                                    "format": CHECKPOINT_FORMAT,
                                    "task": task.name,
                                    "model": bare(net).state_dict(),
                                    "epoch": epoch,
                                    "metric": monitor,
                                    "value": value,
                                },
                            )
                        if not improved:
                            bad_epochs += 1
                    extra, note = task.epoch_extra()
                    seconds = time.perf_counter() - epoch_start
                    mean = {k: float(np.mean(v)) if v else float("nan") for k, v in parts.items()}
                    train_loss = mean.pop("loss", float("nan"))
                    tracker.log_metrics(
                        {
                            "train_loss": train_loss,
                            **{f"train_loss_{k}": v for k, v in mean.items()},
                            **val,
                            "lr": optimizer.param_groups[0]["lr"],
                            "epoch_seconds": seconds,
                            "train_seconds": train_seconds,
                            "backbone_frozen": float(frozen),
                            **extra,
                        },
                        step=epoch,
                    )
                    save_checkpoint(
                        paths.last,
                        {
                            "format": CHECKPOINT_FORMAT,
                            "task": task.name,
                            "model": bare(net).state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict() if scheduler is not None else {},
                            "epoch": epoch,
                            "metric": monitor,
                            "best": best,
                            "bad_epochs": bad_epochs,
                            "run_id": tracker.run_id or "",
                        },
                    )
                    es = cfg.train.early_stop
                    stop = es is not None and bad_epochs >= es.patience
                    shown = "".join(f"  {k} {v:.4f}" for k, v in val.items())
                    print(
                        f"epoch {epoch + 1}/{cfg.train.epochs}  train_loss {train_loss:.4f}{shown}  "
                        f"({seconds:.1f} s, training {train_seconds:.1f} s{', ' + note if note else ''})"
                        f"{'  early stop' if stop else ''}",
                        flush=True,
                    )
                epochs_run = epoch + 1
                if broadcast(stop, ctx):
                    break
                barrier(ctx)

            assert paths.run_dir is not None
            result = TrainResult(
                run_id=run_id,
                output_dir=paths.run_dir,
                weights_source=weights_source,
                epochs_run=epochs_run,
                tracking_uri=uri,
                dataset_digest=digest,
            )
            if ctx.is_main:
                model = bare(net)
                model.load_state_dict(load_checkpoint(paths.best)["model"])
                task.finish(result, model=model, tracker=tracker, paths=paths)
            barrier(ctx)
            return result
    finally:
        cleanup(ctx)


def _read_last(path: Path, task: Task, monitor: str) -> dict[str, Any]:
    """``last.pt`` in the current format, for this task and monitored metric; a clear error otherwise."""
    state = load_checkpoint(path)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise InputError(
            path,
            f"checkpoint format {state.get('format', 1)} was written by an earlier medvision; this version reads"
            f" format {CHECKPOINT_FORMAT}",
            "start a new run without --resume",
        )
    if state.get("task") != task.name:
        raise InputError(
            path, f"the checkpoint is of a {state.get('task')} run, not {task.name}", "resume with its own config"
        )
    if state.get("metric") != monitor:
        raise InputError(
            path,
            f"the run monitored {state.get('metric')}, the config now names {monitor}",
            f"resume with train.early_stop.metric={state.get('metric')}, or start a new run",
        )
    return state
