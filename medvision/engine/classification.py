"""Training and evaluation of the pneumonia classifier.

A plain PyTorch loop rather than MONAI's ``SupervisedTrainer``: resuming mid-run into the same MLflow
run, per-epoch reseeding (so a resumed run repeats an uninterrupted one exactly), DDP with rank-0-only
evaluation and early stopping broadcast to every rank are each a few lines here, and would each be a
custom ignite handler there. Metrics come from :mod:`medvision.metrics` (scikit-learn underneath),
data from :mod:`medvision.data` (MONAI transforms and ``PersistentDataset``), tracking from
:mod:`medvision.tracking` (the only room that talks to MLflow).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import math
import os
import platform
import random
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, WeightedRandomSampler

import medvision
from medvision.config import ExperimentConfig, to_yaml
from medvision.engine.checkpoint import load_checkpoint, save_checkpoint
from medvision.engine.distributed import DistContext, barrier, broadcast, cleanup, init_distributed
from medvision.errors import MedvisionError

log = logging.getLogger("medvision.train")


class TrainingError(MedvisionError):
    """Training cannot go on (for example a NaN loss)."""


@dataclass
class TrainResult:
    """What a finished training run leaves behind."""

    run_id: str | None
    output_dir: Path
    metrics: dict[str, float] = field(default_factory=dict)
    model_uri: str | None = None
    model_version: str | None = None
    weights_source: str = ""
    epochs_run: int = 0
    tracking_uri: str | None = None


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch; deterministic kernels where torch has them."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def dataset_digest(items: list[dict[str, Any]]) -> str:
    """A short digest of what was trained on: image paths relative to their common folder, labels, sizes."""
    paths = [Path(it["image"]) for it in items]
    root = Path(*_common_parts(paths)) if paths else Path()
    h = hashlib.sha256()
    for it, p in sorted(zip(items, paths, strict=True), key=lambda x: str(x[1])):
        size = p.stat().st_size if p.exists() else -1
        h.update(f"{p.relative_to(root) if root.parts else p}|{it['label']}|{size}\n".encode())
    return h.hexdigest()[:16]


def _common_parts(paths: list[Path]) -> tuple[str, ...]:
    parts = [p.parent.parts for p in paths]
    common: list[str] = []
    for column in zip(*parts, strict=False):
        if all(c == column[0] for c in column):
            common.append(column[0])
        else:
            break
    return tuple(common)


def git_state() -> dict[str, str]:
    """The medvision checkout's commit and whether it has uncommitted changes ("unknown" outside git)."""
    root = Path(medvision.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        return {"git_commit": commit, "git_dirty": str(bool(dirty)).lower()}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": "unknown", "git_dirty": "unknown"}


def package_versions() -> dict[str, str]:
    """Versions of the libraries that decide the numbers (and of Python)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "monai", "pydicom", "scikit-learn", "mlflow", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "missing"
    return out


def invocation_tags(config_path: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """How this run was started: the full command line, the working folder and the config file."""
    tags = {
        "command": " ".join(shlex.quote(arg) for arg in sys.argv) or sys.executable,
        "working_dir": str(Path.cwd()),
        "platform": platform.platform(),
    }
    if config_path is not None:
        tags["config_path"] = str(Path(config_path).expanduser().resolve())
    return tags


def log_run_start(
    tracker: Any,
    cfg: ExperimentConfig,
    *,
    weights_source: str,
    digest: str,
    device: torch.device,
    environment: Mapping[str, Any],
    config_path: str | os.PathLike[str] | None = None,
    tags: Mapping[str, str] | None = None,
    extra_tags: Mapping[str, str] | None = None,
    fallback_warning: str | None = None,
    skipped: tuple[str, int] = ("skipped_unreadable", 0),
) -> None:
    """What every new training run records first (classification and detection alike): the flattened config
    as params; tags (weights source, data digest, task, version, backbone, device, seed, git state, command
    line, any ``extra_tags`` and ``tags``); the resolved YAML; ``config/environment.json`` (package versions
    plus ``environment``); and the count of skipped inputs as a metric when there are any."""
    from medvision.tracking import flatten_config

    tracker.log_params(flatten_config(cfg.model_dump(mode="json")))
    tracker.set_tags(
        {
            "weights_source": weights_source,
            "dataset_digest": digest,
            "task": cfg.task,
            "medvision_version": medvision.__version__,
            "backbone": cfg.model.backbone,
            **dict(extra_tags or {}),
            "device": device.type,
            "seed": str(cfg.train.seed),
            **git_state(),
            **invocation_tags(config_path),
            **dict(tags or {}),
        }
    )
    if fallback_warning:
        tracker.set_tags({"tracking_fallback": fallback_warning})
    tracker.log_text(to_yaml(cfg), "config/resolved_config.yaml")
    tracker.log_dict({"packages": package_versions(), **dict(environment)}, "config/environment.json")
    name, count = skipped
    if count:
        tracker.log_metrics({name: float(count)})


class _NullTracker:
    """Stands in for the MLflow run on ranks other than 0."""

    run_id = None

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def _autocast(ctx: DistContext, amp: str) -> contextlib.AbstractContextManager:
    if ctx.device.type == "cuda" and amp in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def predict_logits(
    model: nn.Module, loader: DataLoader, device: torch.device, amp: str = "off", ctx: DistContext | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels for every batch of ``loader`` (in loader order)."""
    model.eval()
    logits, labels = [], []
    cast = _autocast(ctx, amp) if ctx is not None else contextlib.nullcontext()
    for batch in loader:
        images = batch["image"].to(device)
        if device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        with cast:
            out = model(images)
        logits.append(out.float().reshape(-1).cpu().numpy())
        labels.append(np.asarray(batch["label"]).reshape(-1))
    if not logits:
        return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
    return np.concatenate(logits), np.concatenate(labels).astype(np.int64)


def _val_auroc(labels: np.ndarray, logits: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(roc_auc_score(labels, logits))


def _progress(iterable: Any, *, total: int, desc: str, enabled: bool) -> Iterator[Any]:
    if not enabled:
        yield from iterable
        return
    # Plain tqdm, not tqdm.auto: tqdm.auto imports IPython, and with it imported the demo trained to
    # different numbers than with --no-progress (found by comparing the two); the bar must not change results.
    from tqdm import tqdm

    yield from tqdm(iterable, total=total, desc=desc, leave=False, mininterval=1.0, dynamic_ncols=True)


def _train_step(
    model: nn.Module,
    batch: dict[str, Any],
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    ctx: DistContext,
    amp: str,
    augment: Any = None,
    aug_generator: torch.Generator | None = None,
) -> float:
    images = batch["image"].to(ctx.device, non_blocking=True)
    if augment is not None:
        images = augment(images, aug_generator)
    if ctx.device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
    target = torch.as_tensor(batch["label"], dtype=torch.float32, device=ctx.device).reshape(-1, 1)
    optimizer.zero_grad(set_to_none=True)
    with _autocast(ctx, amp):
        logits = model(images)
    loss = loss_fn(logits.float(), target)
    if not torch.isfinite(loss):
        return float("nan")
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def _make_optimizer(cfg: ExperimentConfig, params: Any) -> torch.optim.Optimizer:
    t = cfg.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=0.9, weight_decay=t.weight_decay, nesterov=True)
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)


def _bare(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _write_predictions(path: Path, rows: list[dict[str, Any]]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["study_hash"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def _hash_salt(out_dir: Path) -> str:
    """A per-output-folder secret salt for study hashes; kept on local disk, never sent to MLflow."""
    from medvision.tracking import new_salt

    path = out_dir / "hash_salt.txt"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(new_salt())
    return path.read_text().strip()


def train_classification(
    cfg: ExperimentConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    config_path: str | os.PathLike[str] | None = None,
    tags: Mapping[str, str] | None = None,
) -> TrainResult:
    """Train, evaluate, and register a pneumonia classifier as described by ``cfg``.

    Every new run records what it takes to repeat it: the resolved config (artifact
    ``config/resolved_config.yaml`` and params), the seed, the git commit and whether the checkout
    was dirty, the package versions, the data digest, the command line, the working folder and
    the config file (tags).

    Args:
        cfg: the validated experiment config.
        resume: continue from ``<output_dir>/<experiment>/checkpoints/last.pt`` into the same MLflow run.
        progress: show progress bars for epochs and batches.
        config_path: the YAML file ``cfg`` was read from (tagged ``config_path``).
        tags: more tags for a new run (e.g. ``reproduces``).

    Returns:
        The run id, test metrics and registered model of the run (rank 0; other ranks get a partial result).
    """
    from medvision.data import (
        assign_splits,
        check_readable,
        class_balance,
        classification_transforms,
        load_datalist,
        make_dataset,
        split_summary,
        transform_digest,
    )
    from medvision.data.augment import BatchAugment
    from medvision.models import create_model
    from medvision.models.classifier import random_init_said_by_caller
    from medvision.tracking import (
        PhiGuard,
        RunTracker,
        ensure_tracking_available,
        resolve_tracking_uri,
    )

    ctx = init_distributed(cfg.train.device)
    try:
        out_dir = Path(cfg.train.output_dir) / cfg.experiment
        ckpt_dir = out_dir / "checkpoints"
        last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"

        # 1. Tracking first: a server that is down is reported before any work.
        uri, fallback_warning = None, None
        if ctx.is_main:
            uri, fallback_warning = ensure_tracking_available(
                resolve_tracking_uri(cfg.tracking.uri), required=cfg.tracking.required
            )
            if fallback_warning:
                log.warning(fallback_warning)

        # 2. Data: every unreadable image listed before training starts.
        seed_everything(cfg.train.seed)
        items = load_datalist(cfg.data.format, cfg.data.path)
        items, skipped = check_readable(items, skip_unreadable=cfg.data.skip_unreadable)
        splits = assign_splits(
            items, by=cfg.data.split.by, val=cfg.data.split.val, test=cfg.data.split.test, seed=cfg.data.split.seed
        )
        summary = split_summary(splits)
        balance = class_balance(splits["train"])

        # 3. Model, with its weights source logged and tagged. A random initialisation is said once, as the
        # warning below with its reason (create_model's RandomInitWarning would say it again with a source line).
        with random_init_said_by_caller():
            model = create_model(
                cfg.model.backbone,
                weights=cfg.model.weights,
                in_channels=cfg.model.in_channels,
                num_classes=1,
                first_conv=cfg.model.first_conv,
                drop_rate=cfg.model.drop_rate,
                allow_random_fallback=cfg.model.allow_random_fallback,
                progress=ctx.is_main,
            )
        weights_source = model.weights_source
        if ctx.is_main and weights_source.startswith("random-init"):
            log.warning("weights are a RANDOM INITIALISATION, not ImageNet (%s); tagged weights_source", weights_source)
        elif ctx.is_main:
            log.info("weights source: %s", weights_source)
        pre = model.preprocessing
        mean, std = float(np.mean(pre["mean"])), float(np.mean(pre["std"]))
        settings = transform_digest(
            image_size=cfg.data.image_size, keep_aspect=cfg.data.keep_aspect, mean=mean, std=std
        )
        aug_settings = cfg.data.augment.model_dump(exclude={"where"})
        per_sample = cfg.data.augment.where == "sample"
        # Batched augmentation on the device keeps the loader deterministic: train shares the eval cache.
        tf_train = classification_transforms(
            image_size=cfg.data.image_size,
            keep_aspect=cfg.data.keep_aspect,
            mean=mean,
            std=std,
            train=per_sample,
            augment=aug_settings,
        )
        batch_augment = None if per_sample else BatchAugment(aug_settings, std=std)
        tf_eval = classification_transforms(
            image_size=cfg.data.image_size, keep_aspect=cfg.data.keep_aspect, mean=mean, std=std, train=False
        )
        slim = {
            name: [{"image": it["image"], "label": int(it["label"])} for it in part] for name, part in splits.items()
        }
        datasets = {
            name: make_dataset(
                slim[name],
                tf_train if name == "train" else tf_eval,
                cache_dir=cfg.data.cache_dir,
                settings_digest=settings,
            )
            for name in slim
        }
        model.to(ctx.device)
        if ctx.device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        net: nn.Module = model
        if ctx.distributed:
            net = nn.parallel.DistributedDataParallel(
                model, device_ids=[ctx.device.index] if ctx.device.index is not None else None
            )

        generator = torch.Generator()
        aug_generator = torch.Generator(device=ctx.device)
        if ctx.distributed:
            sampler: Any = DistributedSampler(
                datasets["train"], num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=cfg.train.seed
            )
        elif cfg.train.imbalance == "sampler":
            labels = np.array([it["label"] for it in slim["train"]])
            weights = np.where(labels == 1, 1.0 / max(labels.sum(), 1), 1.0 / max((1 - labels).sum(), 1))
            sampler = WeightedRandomSampler(
                weights.tolist(), num_samples=len(labels), replacement=True, generator=generator
            )
        else:
            sampler = None
        train_loader = DataLoader(
            datasets["train"],
            batch_size=cfg.train.batch_size,
            shuffle=sampler is None,
            sampler=sampler,
            generator=generator,
            num_workers=cfg.data.num_workers,
            drop_last=len(datasets["train"]) > cfg.train.batch_size,
        )
        eval_loaders = {
            name: DataLoader(
                datasets[name], batch_size=cfg.train.batch_size, shuffle=False, num_workers=cfg.data.num_workers
            )
            for name in ("val", "test")
        }

        pos_weight = torch.tensor([balance["pos_weight"]]) if cfg.train.imbalance == "pos_weight" else None
        loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight.to(ctx.device) if pos_weight is not None else None)
        optimizer = _make_optimizer(cfg, net.parameters())
        scheduler = (
            torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.train.epochs)
            if cfg.train.scheduler == "cosine"
            else None
        )

        start_epoch, best_auroc, bad_epochs, run_id = 0, -math.inf, 0, None
        # A best.pt left by an earlier run in this folder is never this run's best.
        have_best = resume and best_path.exists()
        if resume:
            state = load_checkpoint(last_path)
            _bare(net).load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None and state.get("scheduler"):
                scheduler.load_state_dict(state["scheduler"])
            start_epoch, best_auroc = int(state["epoch"]) + 1, float(state["best_auroc"])
            bad_epochs, run_id = int(state["bad_epochs"]), state.get("run_id") or None
            if ctx.is_main:
                log.info("resuming at epoch %d from %s (MLflow run %s)", start_epoch + 1, last_path, run_id)

        guard = PhiGuard.from_items(items)
        tracker: Any = _NullTracker()
        if ctx.is_main:
            tracker = RunTracker(
                uri,
                cfg.experiment,
                run_id=run_id,
                run_name=f"{cfg.model.backbone}-{cfg.train.seed}",
                phi_guard=guard,
                delivery_wait_s=cfg.tracking.delivery_wait_s,
                local_dir=out_dir,
                recovery_hint=(
                    f"once the server is back, `medvision train CONFIG --resume` continues from {last_path}"
                    " and logs the evaluation, the evidence and the model into the same run"
                ),
            )
        with tracker if ctx.is_main else contextlib.nullcontext():
            run_id = broadcast(tracker.run_id if ctx.is_main else None, ctx)
            digest = dataset_digest(items)
            if ctx.is_main and not resume:
                log_run_start(
                    tracker,
                    cfg,
                    weights_source=weights_source,
                    digest=digest,
                    device=ctx.device,
                    environment={"splits": summary, "class_balance": balance, "skipped_unreadable": len(skipped)},
                    config_path=config_path,
                    tags=tags,
                    extra_tags={"world_size": str(ctx.world_size)},
                    fallback_warning=fallback_warning,
                    skipped=("skipped_unreadable", len(skipped)),
                )

            epochs_run = start_epoch
            for epoch in range(start_epoch, cfg.train.epochs):
                epoch_start = time.perf_counter()
                # Reseed per epoch, so that a resumed run repeats an uninterrupted one exactly.
                epoch_seed = cfg.train.seed * 10_007 + epoch
                torch.manual_seed(epoch_seed)
                generator.manual_seed(epoch_seed)
                aug_generator.manual_seed(epoch_seed)
                np.random.seed(epoch_seed % 2**32)
                tf_train.set_random_state(seed=epoch_seed % 2**32)
                if isinstance(sampler, DistributedSampler):
                    sampler.set_epoch(epoch)
                frozen = epoch < cfg.train.warmup_frozen_epochs
                _bare(net).freeze_backbone(frozen)
                net.train()
                losses: list[float] = []
                n_batches = (
                    len(train_loader)
                    if cfg.train.max_batches_per_epoch is None
                    else min(len(train_loader), cfg.train.max_batches_per_epoch)
                )
                batches = _progress(
                    train_loader,
                    total=n_batches,
                    desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
                    enabled=progress and ctx.is_main,
                )
                for step, batch in enumerate(batches):
                    if step >= n_batches:
                        break
                    loss = _train_step(net, batch, loss_fn, optimizer, ctx, cfg.train.amp, batch_augment, aug_generator)
                    if not math.isfinite(loss):
                        where = str(last_path if last_path.exists() else ckpt_dir)
                        raise TrainingError(
                            where,
                            f"loss became NaN at epoch {epoch + 1}, batch {step + 1}; "
                            "the last good checkpoint is kept here",
                            "lower train.lr, check the input images, or resume with --resume",
                        )
                    losses.append(loss)
                if scheduler is not None:
                    scheduler.step()

                stop = False
                if ctx.is_main:
                    val_logits, val_labels = predict_logits(
                        _bare(net), eval_loaders["val"], ctx.device, cfg.train.amp, ctx
                    )
                    val_auroc = _val_auroc(val_labels, val_logits)
                    val_loss = (
                        float(
                            nn.functional.binary_cross_entropy_with_logits(
                                torch.from_numpy(val_logits), torch.from_numpy(val_labels.astype(np.float32))
                            )
                        )
                        if len(val_logits)
                        else float("nan")
                    )
                    improved = math.isfinite(val_auroc) and val_auroc > best_auroc
                    if improved or not have_best:
                        have_best = True
                        best_auroc = val_auroc if improved else best_auroc
                        bad_epochs = 0 if improved else bad_epochs
                        save_checkpoint(
                            best_path, {"model": _bare(net).state_dict(), "epoch": epoch, "val_auroc": val_auroc}
                        )
                    if not improved:
                        bad_epochs += 1
                    tracker.log_metrics(
                        {
                            "train_loss": float(np.mean(losses)) if losses else float("nan"),
                            "val_loss": val_loss,
                            "val_auroc": val_auroc,
                            "lr": optimizer.param_groups[0]["lr"],
                            "epoch_seconds": time.perf_counter() - epoch_start,
                            "backbone_frozen": float(frozen),
                        },
                        step=epoch,
                    )
                    save_checkpoint(
                        last_path,
                        {
                            "model": _bare(net).state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict() if scheduler is not None else {},
                            "epoch": epoch,
                            "best_auroc": best_auroc,
                            "bad_epochs": bad_epochs,
                            "run_id": tracker.run_id or "",
                        },
                    )
                    es = cfg.train.early_stop
                    stop = es is not None and bad_epochs >= es.patience
                    print(
                        f"epoch {epoch + 1}/{cfg.train.epochs}  train_loss {np.mean(losses):.4f}  "
                        f"val_loss {val_loss:.4f}  val_auroc {val_auroc:.4f}  "
                        f"({time.perf_counter() - epoch_start:.1f} s){'  early stop' if stop else ''}",
                        flush=True,
                    )
                epochs_run = epoch + 1
                if broadcast(stop, ctx):
                    break
                barrier(ctx)

            result = TrainResult(
                run_id=run_id,
                output_dir=out_dir,
                weights_source=weights_source,
                epochs_run=epochs_run,
                tracking_uri=uri,
            )
            if ctx.is_main:
                _finish(
                    cfg,
                    result,
                    model=_bare(net),
                    best_path=best_path,
                    loaders=eval_loaders,
                    splits=splits,
                    tracker=tracker,
                    ctx=ctx,
                    summary=summary,
                    digest=digest,
                    mean=mean,
                    std=std,
                    pos_weight=float(balance["pos_weight"]) if cfg.train.imbalance == "pos_weight" else 1.0,
                )
            barrier(ctx)
            return result
    finally:
        cleanup(ctx)


def _finish(
    cfg: ExperimentConfig,
    result: TrainResult,
    *,
    model: nn.Module,
    best_path: Path,
    loaders: dict[str, DataLoader],
    splits: dict[str, list[dict[str, Any]]],
    tracker: Any,
    ctx: DistContext,
    summary: dict[str, Any],
    digest: str,
    mean: float,
    std: float,
    pos_weight: float = 1.0,
) -> None:
    """Evaluate the best checkpoint on test, write the evidence, log and register the model."""
    from medvision.metrics import age_band, apply_temperature, evaluate_binary, scalar_metrics
    from medvision.metrics.plots import plot_confusion, plot_pr, plot_reliability, plot_roc
    from medvision.tracking import log_classifier, render_model_card, salted_hash

    model.load_state_dict(load_checkpoint(best_path)["model"])
    head = getattr(model, "head", None)
    if pos_weight != 1.0 and isinstance(head, nn.Linear):
        # A loss with positive weight w learns odds w times the true odds (a prior shift); subtracting
        # log(w) from the head's bias undoes it, so the registered model's logits are unbiased and
        # temperature scaling (which only rescales) can calibrate them. Ranking, hence AUROC, is unchanged.
        with torch.no_grad():
            head.bias -= math.log(pos_weight)
    model.to("cpu").eval()
    cpu = torch.device("cpu")
    val_logits, val_labels = predict_logits(model, loaders["val"], cpu)
    test_logits, test_labels = predict_logits(model, loaders["test"], cpu)
    test_items = splits["test"]
    groups = {
        "sex": [it.get("sex") or "unknown" for it in test_items],
        "age_band": [age_band(it.get("age")) for it in test_items],
        "view": [it.get("view") or "unknown" for it in test_items],
    }
    ev = evaluate_binary(
        y_val=val_labels,
        logits_val=val_logits,
        y_test=test_labels,
        logits_test=test_logits,
        groups_test=groups,
        operating_point=cfg.evaluate.operating_point,
        target_sensitivity=cfg.evaluate.target_sensitivity,
        n_bootstraps=cfg.evaluate.bootstrap,
        seed=cfg.train.seed,
    )
    # The per-epoch curve is "val_auroc"; the best checkpoint's value is reported apart from it.
    scalars = {("best_val_auroc" if k == "val_auroc" else k): v for k, v in scalar_metrics(ev).items()}
    result.metrics = scalars
    tracker.log_metrics(scalars)

    art = result.output_dir / "evidence"
    art.mkdir(parents=True, exist_ok=True)
    temperature = float(ev["temperature"])
    threshold = float(ev["operating_point"]["threshold"])
    prob = apply_temperature(test_logits, temperature)
    salt = _hash_salt(result.output_dir)
    rows = [
        {
            "study_hash": salted_hash(it.get("study_uid") or it["image"], salt),
            "split": "test",
            "label": int(y),
            "logit": float(z),
            "probability": float(p),
            "decision": int(p >= threshold),
            "sex": g_sex,
            "age_band": g_age,
            "view": g_view,
        }
        for it, y, z, p, g_sex, g_age, g_view in zip(
            test_items, test_labels, test_logits, prob, groups["sex"], groups["age_band"], groups["view"], strict=True
        )
    ]
    paths = [
        _write_predictions(art / "predictions.csv", rows),
        plot_roc(test_labels, prob, art / "roc.png", operating_point=ev["operating_point"], label=cfg.model.backbone),
        plot_pr(test_labels, prob, art / "pr.png", operating_point=ev["operating_point"], label=cfg.model.backbone),
        plot_reliability(test_labels, 1 / (1 + np.exp(-test_logits)), prob, art / "calibration.png"),
        plot_confusion(np.asarray(ev["confusion_matrix"]), art / "confusion_matrix.png"),
    ]
    metrics_doc = {k: v for k, v in ev.items() if k != "test_stats"}
    (art / "metrics.json").write_text(json.dumps(metrics_doc, indent=2, default=float))
    paths.append(art / "metrics.json")
    for path in paths:
        tracker.log_artifact(path, "evidence")

    metadata = {
        "task": "classification",
        "backbone": cfg.model.backbone,
        "in_channels": cfg.model.in_channels,
        "image_size": cfg.data.image_size,
        "keep_aspect": cfg.data.keep_aspect,
        "mean": mean,
        "std": std,
        "temperature": temperature,
        "threshold": threshold,
        "operating_point": cfg.evaluate.operating_point,
        "intended_use": cfg.intended_use,
        "weights_source": result.weights_source,
        "medvision_version": medvision.__version__,
        "dataset_digest": digest,
        "labels": ["normal", "pneumonia"],
    }
    # The keys render_model_card reads (see medvision.tracking.card).
    card_info: dict[str, Any] = {
        "metadata": metadata,
        "name": cfg.tracking.register_as,
        "data": {"source": str(cfg.data.path), "format": cfg.data.format, "digest": digest, "splits": summary},
        "metrics": ev,
        "operating_point": ev["operating_point"],
        "calibration": {"temperature": temperature},
        "subgroups": ev.get("subgroups", []),
        "provenance": {
            "run_id": result.run_id,
            "medvision_version": medvision.__version__,
            "tracking_uri": result.tracking_uri,
            **git_state(),
        },
    }
    if cfg.tracking.register_as:
        example = np.zeros((1, cfg.model.in_channels, cfg.data.image_size, cfg.data.image_size), dtype=np.float32)
        name = cfg.tracking.register_as
        # Waits for a server that went away (up to tracking.delivery_wait_s) and tries again.
        registered = tracker.deliver(
            lambda: log_classifier(
                model, input_example=example, metadata=metadata, registered_name=name, alias=cfg.tracking.alias
            ),
            f"the model (registration as {name}@{cfg.tracking.alias})",
        )
        result.model_uri, result.model_version = registered["model_uri"], str(registered["version"])
        card_info.update(
            {"version": registered["version"], "model_uri": registered["model_uri"], "alias": cfg.tracking.alias}
        )
    card = art / "model_card.md"
    card.write_text(render_model_card(card_info))
    tracker.log_artifact(card, "evidence")
    print(
        f"test_auroc {scalars.get('test_auroc', float('nan')):.4f} "
        f"[{scalars.get('test_auroc_ci_low', float('nan')):.4f}, {scalars.get('test_auroc_ci_high', float('nan')):.4f}]"
        f"  sensitivity {scalars.get('test_sensitivity', float('nan')):.3f}"
        f"  specificity {scalars.get('test_specificity', float('nan')):.3f}  at threshold {threshold:.3f}",
        flush=True,
    )
