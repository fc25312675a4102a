"""The pneumonia classifier as a task of the one training loop (:mod:`medvision.engine.loop`).

The task owns the classifier's data (datalist, patient-level splits, MONAI transforms and the on-disk
``PersistentDataset`` cache, a weighted sampler or a positive weight for imbalance), its model (a registry
backbone with ImageNet weights through torchvision's weights API), its step (binary cross-entropy, batched
augmentation on the device), its validation metrics (AUROC and loss) and its evidence (test AUROC with a
bootstrap interval, operating point, calibration, subgroups, plots, model card) and registration. Metrics
come from :mod:`medvision.metrics` (scikit-learn underneath), tracking from :mod:`medvision.tracking`
(the only room that talks to MLflow).
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, WeightedRandomSampler

import medvision
from medvision.config import ExperimentConfig
from medvision.engine.distributed import DistContext, autocast_for
from medvision.engine.loop import (
    RunPaths,
    TrainingError,
    TrainResult,
    fit,
    hash_salt,
    resolve_weights,
    seed_everything,
)
from medvision.engine.provenance import dataset_digest, git_state, invocation_tags, log_run_start, package_versions
from medvision.models.contract import ClassifierMetadata

__all__ = [
    "ClassificationTask",
    "TrainResult",
    "TrainingError",
    "dataset_digest",
    "git_state",
    "invocation_tags",
    "log_run_start",
    "package_versions",
    "predict_logits",
    "seed_everything",
    "train_classification",
]

log = logging.getLogger("medvision.train")


def _model_input(batch: dict[str, Any], device: torch.device, normalise: tuple[float, float] | None) -> torch.Tensor:
    """A loader batch's images on ``device``; cached batches (uint16 fixed point of [0, 1]) normalised there in
    float32."""
    images = batch["image"].to(device, non_blocking=True)
    if normalise is not None:
        from medvision.data.augment import normalise_batch

        return normalise_batch(images, *normalise)
    if images.dtype in (torch.uint16, torch.float16):
        # Only the cache stores uint16 fixed point of [0, 1]: unnormalised, it would be wrong input.
        from medvision.errors import DataError

        raise DataError(
            "image batch",
            f"{images.dtype} images from the training cache ([0, 1], not normalised) reached the network without"
            " normalisation",
            "pass normalise=(mean, std) of the model",
        )
    return images


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    amp: str = "off",
    ctx: DistContext | None = None,
    normalise: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels for every batch of ``loader`` (in loader order).

    ``normalise``: ``(mean, std)`` for a loader over the cached chain (images in [0, 1]); ``None`` for one
    over the model's own transforms (already normalised).
    """
    model.eval()
    logits, labels = [], []
    cast = autocast_for(ctx.device, amp) if ctx is not None else contextlib.nullcontext()
    for batch in loader:
        images = _model_input(batch, device, normalise)
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


def _train_step(
    model: nn.Module,
    batch: dict[str, Any],
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    ctx: DistContext,
    amp: str,
    augment: Any = None,
    aug_generator: torch.Generator | None = None,
    normalise: tuple[float, float] | None = None,
) -> float:
    # Normalise first, then augment: BatchAugment works on normalised intensities, as the old float32
    # chain did (it cached normalised images), so the result equals it up to the cache's fixed-point rounding.
    images = _model_input(batch, ctx.device, normalise)
    if augment is not None:
        images = augment(images, aug_generator)
    if ctx.device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
    target = torch.as_tensor(batch["label"], dtype=torch.float32, device=ctx.device).reshape(-1, 1)
    optimizer.zero_grad(set_to_none=True)
    with autocast_for(ctx.device, amp):
        logits = model(images)
    loss = loss_fn(logits.float(), target)
    if not torch.isfinite(loss):
        return float("nan")
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def _write_predictions(path: Path, rows: list[dict[str, Any]]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["study_hash"])
        writer.writeheader()
        writer.writerows(rows)
    return path


class ClassificationTask:
    """Binary classification of radiographs (``task: classification``); see the module docstring."""

    name: ClassVar[str] = "classification"
    metrics: ClassVar[Mapping[str, Literal["max", "min"]]] = {"val_auroc": "max", "val_loss": "min"}
    distributed: ClassVar[bool] = True
    channels_last: ClassVar[bool] = True

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg
        self.items: list[dict[str, Any]] = []

    def prepare(self, ctx: DistContext, *, progress: bool) -> None:
        from medvision.data import assign_splits, check_readable, class_balance, load_datalist, split_summary

        cfg = self.cfg
        self.world_size = ctx.world_size
        items = load_datalist(cfg.data.format, cfg.data.path)
        self.items, self.skipped = check_readable(items, skip_unreadable=cfg.data.skip_unreadable)
        self.splits = assign_splits(
            self.items, by=cfg.data.split.by, val=cfg.data.split.val, test=cfg.data.split.test, seed=cfg.data.split.seed
        )
        self.summary = split_summary(self.splits)
        self.balance = class_balance(self.splits["train"])

    def build_model(self, ctx: DistContext) -> nn.Module:
        from medvision.data import classification_transforms, make_dataset, transform_digest
        from medvision.data.augment import BatchAugment
        from medvision.models import create_model

        cfg = self.cfg
        model = create_model(
            cfg.model.backbone,
            weights=resolve_weights(cfg.model.weights),
            in_channels=cfg.model.in_channels,
            num_classes=1,
            first_conv=cfg.model.first_conv,
            drop_rate=cfg.model.drop_rate,
            allow_random_fallback=cfg.model.allow_random_fallback,
            progress=ctx.is_main,
        )
        # The data pipeline follows the model's own normalisation (its weights' statistics).
        pre = model.preprocessing
        self.mean, self.std = float(np.mean(pre["mean"])), float(np.mean(pre["std"]))
        settings = transform_digest(
            image_size=cfg.data.image_size, keep_aspect=cfg.data.keep_aspect, mean=self.mean, std=self.std
        )
        aug_settings = cfg.data.augment.model_dump(exclude={"where"})
        per_sample = cfg.data.augment.where == "sample"
        # Batched augmentation on the device keeps the loader deterministic: train shares the eval cache.
        # The cache holds uint16 fixed-point images of [0, 1]; the steps normalise batches on the device.
        # Both chains load the same way and leave normalisation to the device; only the augmentation differs.
        common = {"image_size": cfg.data.image_size, "keep_aspect": cfg.data.keep_aspect, "mean": self.mean,
                  "std": self.std, "normalise_on_device": True}  # fmt: skip
        self.tf_train = classification_transforms(**common, train=per_sample, augment=aug_settings)
        self.normalise = (self.mean, self.std)
        self.batch_augment = None if per_sample else BatchAugment(aug_settings, std=self.std)
        tf_eval = classification_transforms(**common, train=False)
        slim = {
            name: [{"image": it["image"], "label": int(it["label"])} for it in part]
            for name, part in self.splits.items()
        }
        datasets = {
            name: make_dataset(
                slim[name],
                self.tf_train if name == "train" else tf_eval,
                cache_dir=cfg.data.cache_dir,
                settings_digest=settings,
            )
            for name in slim
        }
        self.generator = torch.Generator()
        self.aug_generator = torch.Generator(device=ctx.device)
        if ctx.distributed:
            self.sampler: Any = DistributedSampler(
                datasets["train"], num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=cfg.train.seed
            )
        elif cfg.train.imbalance == "sampler":
            labels = np.array([it["label"] for it in slim["train"]])
            weights = np.where(labels == 1, 1.0 / max(labels.sum(), 1), 1.0 / max((1 - labels).sum(), 1))
            self.sampler = WeightedRandomSampler(
                weights.tolist(), num_samples=len(labels), replacement=True, generator=self.generator
            )
        else:
            self.sampler = None
        # Page-locked batches let the host-to-device copy run asynchronously (non_blocking); CUDA only.
        pin = ctx.device.type == "cuda"
        self.train_loader = DataLoader(
            datasets["train"],
            batch_size=cfg.train.batch_size,
            shuffle=self.sampler is None,
            sampler=self.sampler,
            generator=self.generator,
            num_workers=cfg.data.num_workers,
            drop_last=len(datasets["train"]) > cfg.train.batch_size,
            pin_memory=pin,
        )
        self.eval_loaders = {
            name: DataLoader(
                datasets[name],
                batch_size=cfg.train.batch_size,
                shuffle=False,
                num_workers=cfg.data.num_workers,
                pin_memory=pin,
            )
            for name in ("val", "test")
        }
        self.pos_weight = float(self.balance["pos_weight"]) if cfg.train.imbalance == "pos_weight" else 1.0
        pos_weight = torch.tensor([self.balance["pos_weight"]]) if cfg.train.imbalance == "pos_weight" else None
        self.loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight.to(ctx.device) if pos_weight is not None else None)
        return model

    def parameters(self, net: nn.Module) -> Iterable[torch.nn.Parameter]:
        return net.parameters()

    def run_name(self) -> str:
        return f"{self.cfg.model.backbone}-{self.cfg.train.seed}"

    def run_start(self) -> dict[str, Any]:
        return {
            "environment": {
                "splits": self.summary,
                "class_balance": self.balance,
                "skipped_unreadable": len(self.skipped),
            },
            "extra_tags": {"world_size": str(self.world_size)},
            "skipped": ("skipped_unreadable", len(self.skipped)),
        }

    def begin_epoch(self, epoch: int, epoch_seed: int, ctx: DistContext) -> tuple[Iterable[Any], int]:
        self.generator.manual_seed(epoch_seed)
        self.aug_generator.manual_seed(epoch_seed)
        self.tf_train.set_random_state(seed=epoch_seed % 2**32)
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(epoch)
        limit = self.cfg.train.max_batches_per_epoch
        n = len(self.train_loader) if limit is None else min(len(self.train_loader), limit)
        return self.train_loader, n

    def step(self, net: nn.Module, batch: Any, optimizer: torch.optim.Optimizer, ctx: DistContext) -> dict[str, float]:
        loss = _train_step(
            net,
            batch,
            self.loss_fn,
            optimizer,
            ctx,
            self.cfg.train.amp,
            self.batch_augment,
            self.aug_generator,
            self.normalise,
        )
        return {"loss": loss}

    def epoch_extra(self) -> tuple[dict[str, float], str]:
        return {}, ""

    def validate(self, model: nn.Module, ctx: DistContext) -> dict[str, float]:
        logits, labels = predict_logits(
            model, self.eval_loaders["val"], ctx.device, self.cfg.train.amp, ctx, normalise=self.normalise
        )
        loss = (
            float(
                nn.functional.binary_cross_entropy_with_logits(
                    torch.from_numpy(logits), torch.from_numpy(labels.astype(np.float32))
                )
            )
            if len(logits)
            else float("nan")
        )
        return {"val_loss": loss, "val_auroc": _val_auroc(labels, logits)}

    def remember_best(self) -> None:
        pass

    def finish(self, result: TrainResult, *, model: nn.Module, tracker: Any, paths: RunPaths) -> None:
        _finish(self, result, model=model, tracker=tracker, paths=paths)

    @staticmethod
    def evaluate(
        model: Any, meta: Any, model_uri: str, data_format: str | None, data_path: Any, **options: Any
    ) -> dict[str, Any]:
        return evaluate_classifier(model, meta, model_uri, data_format, data_path, **options)


def train_classification(cfg: ExperimentConfig, **options: Any) -> TrainResult:
    """Train, evaluate and register a pneumonia classifier as ``cfg`` describes (:func:`~medvision.engine.loop.fit`)
    (``options``: ``resume``, ``progress``, ``config_path``, ``tags``)."""
    return fit(ClassificationTask(cfg), cfg, **options)


def _finish(task: ClassificationTask, result: TrainResult, *, model: nn.Module, tracker: Any, paths: RunPaths) -> None:
    """Evaluate the best checkpoint on test, write the evidence, log and register the model."""
    from medvision.metrics import age_band, apply_temperature, evaluate_binary, scalar_metrics
    from medvision.metrics.plots import plot_confusion, plot_pr, plot_reliability, plot_roc
    from medvision.tracking import log_classifier, render_model_card, salted_hash

    cfg, loaders, splits, pos_weight = task.cfg, task.eval_loaders, task.splits, task.pos_weight
    mean, std, summary, digest = task.mean, task.std, task.summary, result.dataset_digest
    head = getattr(model, "head", None)
    if pos_weight != 1.0 and isinstance(head, nn.Linear):
        # A loss with positive weight w learns odds w times the true odds (a prior shift); subtracting
        # log(w) from the head's bias undoes it, so the registered model's logits are unbiased and
        # temperature scaling (which only rescales) can calibrate them. Ranking, hence AUROC, is unchanged.
        with torch.no_grad():
            head.bias -= math.log(pos_weight)
    model.to("cpu").eval()
    cpu = torch.device("cpu")
    val_logits, val_labels = predict_logits(model, loaders["val"], cpu, normalise=task.normalise)
    test_logits, test_labels = predict_logits(model, loaders["test"], cpu, normalise=task.normalise)
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

    art = paths.evidence
    art.mkdir(parents=True, exist_ok=True)
    temperature = float(ev["temperature"])
    threshold = float(ev["operating_point"]["threshold"])
    prob = apply_temperature(test_logits, temperature)
    salt = hash_salt(paths.experiment_dir)
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

    metadata = ClassifierMetadata(
        backbone=cfg.model.backbone,
        in_channels=cfg.model.in_channels,
        image_size=cfg.data.image_size,
        keep_aspect=cfg.data.keep_aspect,
        mean=mean,
        std=std,
        temperature=temperature,
        threshold=threshold,
        operating_point=cfg.evaluate.operating_point,
        intended_use=cfg.intended_use,
        weights_source=result.weights_source,
        medvision_version=medvision.__version__,
        run_id=result.run_id,
        dataset_digest=digest,
        labels=["normal", "pneumonia"],
    ).stored()
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


def evaluate_classifier(
    model: Any,
    meta: ClassifierMetadata,
    model_uri: str,
    data_format: str | None,
    data_path: str | Path,
    *,
    n_bootstraps: int = 1000,
    batch_size: int = 32,
    skip_unreadable: bool = False,
) -> dict[str, Any]:
    """A registered classifier on a classification datalist: AUROC with its interval, AUPRC, ECE, and the
    confusion counts at the threshold registered with the model (nothing is re-tuned here)."""
    from medvision.data import check_readable, load_datalist
    from medvision.metrics import apply_temperature, auprc, auroc_ci, binary_stats, expected_calibration_error

    data_format = data_format or "csv"
    items = load_datalist(data_format, data_path)
    items, skipped = check_readable(items, skip_unreadable=skip_unreadable)
    from monai.data import Dataset

    from medvision.engine.classify import ClassifierBundle

    bundle = ClassifierBundle.of(model, meta, {"uri": model_uri}, where=model_uri)
    transform = bundle.transforms()

    ds = Dataset([{"image": it["image"], "label": int(it["label"])} for it in items], transform)
    logits, labels = predict_logits(model, DataLoader(ds, batch_size=batch_size), torch.device("cpu"))
    prob = apply_temperature(logits, bundle.temperature)
    threshold = bundle.threshold
    report: dict[str, Any] = {
        "model_uri": model_uri,
        "n": int(len(labels)),
        "n_pos": int(labels.sum()),
        "skipped_unreadable": len(skipped),
        **{
            f"auroc{'' if k == 'auroc' else '_' + k}": v
            for k, v in auroc_ci(labels, logits, n_bootstraps=n_bootstraps).items()
            if k in ("auroc", "ci_low", "ci_high")
        },
        "auprc": auprc(labels, logits),
        "ece": expected_calibration_error(labels, prob),
        "threshold": threshold,
        **{
            k: v
            for k, v in binary_stats(labels, prob, threshold).items()
            if k in ("sensitivity", "specificity", "ppv", "npv", "accuracy", "tp", "fp", "tn", "fn")
        },
    }
    return report
