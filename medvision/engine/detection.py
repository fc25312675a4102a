"""Train, evaluate and register a 2.5D tumour detector (``task: detection``).

Flow: datalist (MONAI detection JSON, Decathlon images + label masks, or CSV) -> every volume checked from
its header (all problems listed before training) -> patient-level splits -> each volume through the
deterministic MONAI chain once (RAS, spacing, intensity; boxes follow) and kept in memory -> per epoch the
random MONAI box transforms (flips, 90-degree rotations, zoom) on every training volume, then every slice
with a lesion and ``negatives_per_positive`` times as many without -> torchvision RetinaNet on slice stacks
(:mod:`medvision.models.detector`) -> per epoch the validation CPM on whole volumes (slice boxes merged into
3D boxes, :mod:`medvision.engine.detect`) -> the best checkpoint evaluated on test (FROC, CPM, mAP, size
bands, volume AUROC; :mod:`medvision.metrics.detection`) -> evidence and model to MLflow.

The epochs, checkpoints, resume and early stopping are :mod:`medvision.engine.loop`'s (one loop for every
task); this module is the detection task: its data, model, slice sampling, step, validation CPM and evidence.
Detection trains in one process (no DDP yet: the volumes are few and the slice loop is cheap to restart).
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

import medvision
from medvision.config import ExperimentConfig
from medvision.constants import BOX_LABELS, BOXES, IMAGE
from medvision.engine.detect import MERGE_DEFAULTS, autocast_for, detect_volume, load_detector, predict_volume
from medvision.engine.distributed import DistContext
from medvision.engine.loop import RunPaths, TrainResult, fit, hash_salt, progress_bar, resolve_weights
from medvision.engine.provenance import git_state
from medvision.errors import ConfigError, DataError, MedvisionError
from medvision.models.contract import DetectorMetadata

__all__ = ["DetectionTask", "load_detector", "predict_volume", "train_detection"]

log = logging.getLogger(__name__)

#: How many test volumes get an example-slice PNG in the evidence.
N_EXAMPLES = 6


def _volume_chain(cfg: ExperimentConfig, *, train: bool, sequences: Any = None) -> Any:
    """The MONAI chain of the config; ``sequences`` (:class:`~medvision.data.detection.Sequences`) picks the
    sequences of multi-sequence volumes when ``data.volume.channels`` names some."""
    from medvision.data.detection_transforms import detection_transforms

    v = cfg.data.volume
    selection: dict[str, Any] = {}
    if sequences is not None and sequences.channels is not None:
        selection = {
            "channels": sequences.channels,
            "sequences_wanted": f"data.volume.channels asks for {', '.join(sequences.names)} "
            f"(channels {sequences.channels} of {sequences.n_channels})",
            "sequences_fix": "give every volume the same sequences, or change data.volume.channels",
        }
    return detection_transforms(
        spacing=v.spacing,
        modality=v.modality,
        ct_window=v.ct_window,
        mr_percentiles=v.mr_percentiles,
        train=train,
        augment={"enabled": v.augment},
        irregular=v.irregular,
        **selection,
    )


def _preprocess(
    items: list[dict[str, Any]], chain: Any, *, skip_bad: bool, progress: bool, desc: str
) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Every item through the deterministic chain once; bad volumes listed together (or skipped)."""
    done: list[dict[str, Any]] = []
    bad: list[tuple[str, str]] = []
    for item in progress_bar(items, total=len(items), desc=desc, enabled=progress):
        sample = {
            IMAGE: item[IMAGE],
            BOXES: np.asarray(item.get(BOXES) or np.zeros((0, 6)), dtype=np.float32).reshape(-1, 6),
            BOX_LABELS: np.asarray(item.get(BOX_LABELS) or [], dtype=np.int64),
        }
        try:
            out = chain(sample)
        except MedvisionError as exc:
            bad.append((str(item[IMAGE]), exc.one_line()))
            continue
        except Exception as exc:  # a volume MONAI cannot transform is named, not fatal to the listing
            bad.append((str(item[IMAGE]), f"{type(exc).__name__}: {exc}"))
            continue
        done.append({**item, "_image": out[IMAGE], "_boxes": torch.as_tensor(out[BOXES]).float().reshape(-1, 6)})
    if bad and not skip_bad:
        raise DataError(
            str(items[0].get("source") or "datalist") if items else "datalist",
            f"{len(bad)} volume(s) cannot be preprocessed: " + "; ".join(f"{p}: {r}" for p, r in bad[:10]),
            "fix or remove them, or set data.skip_unreadable: true (--skip-unreadable) to train without them",
        )
    for path, reason in bad:
        log.warning("skipped volume %s: %s", path, reason)
    return done, bad


def _slice_shape(volumes: list[dict[str, Any]]) -> tuple[int, int]:
    shapes = np.array([tuple(v["_image"].shape[1:3]) for v in volumes])
    x, y = np.median(shapes, axis=0)
    return int(y), int(x)  # (H, W) = (y, x)


def _predict_split(
    model: Any, volumes: list[dict[str, Any]], device: torch.device, merge: Mapping[str, Any], amp: str = "off"
) -> list[dict[str, Any]]:
    out = []
    for v in volumes:
        boxes, scores, keys = detect_volume(model, v["_image"], merge=merge, device=device, amp=amp)
        out.append({"pred_boxes": boxes, "pred_scores": scores, "true_boxes": v["_boxes"].numpy(), "key_slices": keys})
    return out


def _val_cpm(preds: list[dict[str, Any]], iou: float) -> float:
    from medvision.metrics.detection import froc

    if not any(len(p["true_boxes"]) for p in preds):
        return float("nan")
    return float(froc(preds, iou_threshold=iou)["cpm"])


def _batch(
    volumes: list[tuple[Any, Any]],
    indices: list[Any],
    context: int,
    device: torch.device,
    *,
    crop: int | None,
    rng: np.random.Generator,
) -> tuple:
    from medvision.data.slices import crop_sample, slice_boxes, slice_stack

    images, targets = [], []
    for idx in indices:
        image, boxes = volumes[idx.volume]
        stack, b = crop_sample(slice_stack(image, idx.k, context), slice_boxes(boxes, idx.k), crop, rng)
        images.append(stack.to(device))
        targets.append({"boxes": b.to(device), "labels": torch.zeros(len(b), dtype=torch.long, device=device)})
    return images, targets


def detector_losses(
    net: torch.nn.Module, images: Any, targets: Any, cast: contextlib.AbstractContextManager
) -> dict[str, torch.Tensor]:
    """torchvision's RetinaNet losses of one batch, the network run under ``cast``.

    ``cast``: :func:`~medvision.engine.detect.autocast_for` (bf16 autocast on CUDA with ``train.amp`` auto or
    bf16; nothing on the CPU). Only the convolutions run in bf16: the detector's head returns float32 and its
    anchors are float32 (:mod:`medvision.models.detector`), so the matcher, the box coder and the focal and
    GIoU losses compute in float32; each loss is returned in float32 for the sum, the finiteness check and the
    backward pass (``tests/engine/test_detection_amp.py`` compares bf16 with float32).
    """
    with cast:
        parts = net.loss(images, targets)
    return {name: value.float() for name, value in parts.items()}


class DetectionTask:
    """3D tumour detection with a 2.5D slice detector (``task: detection``); see the module docstring."""

    name: ClassVar[str] = "detection"
    metrics: ClassVar[Mapping[str, Literal["max", "min"]]] = {"val_cpm": "max"}
    distributed: ClassVar[bool] = False  # the volumes are few and the slice loop is cheap to restart
    #: On CUDA the detector trains in channels_last, as the classifier does (torchvision's RetinaNet is 2-D):
    #: :meth:`build_model` also converts the batched input (:meth:`SliceDetector.to_channels_last`).
    channels_last: ClassVar[bool] = True

    def __init__(self, cfg: ExperimentConfig) -> None:
        if cfg.data.format not in ("detection", "decathlon", "csv"):
            raise ConfigError(
                "data.format", f"{cfg.data.format!r} is a classification format", "use detection, decathlon or csv"
            )
        self.cfg = cfg
        self.items: list[dict[str, Any]] = []
        self.merge = dict(MERGE_DEFAULTS)
        self.best_val_preds: list[dict[str, Any]] | None = None
        self._val_preds: list[dict[str, Any]] | None = None

    def prepare(self, ctx: DistContext, *, progress: bool) -> None:
        from medvision.data import assign_splits, split_summary
        from medvision.data.detection import check_volumes, load_detection_datalist, resolve_sequences, sequence_names
        from medvision.data.transforms import MedvisionCompose

        cfg = self.cfg
        items = load_detection_datalist(cfg.data.format, cfg.data.path, min_voxels=cfg.data.volume.min_lesion_voxels)
        try:
            items, skipped = check_volumes(
                items, skip_bad=cfg.data.skip_unreadable, irregular=cfg.data.volume.irregular
            )
        except DataError as exc:
            error = DataError(exc.where, exc.reason, "fix or remove them, or train without them with --skip-unreadable")
            error.problems = getattr(exc, "problems", [])  # type: ignore[attr-defined]
            raise error from exc
        for name, reason in skipped:
            log.warning("skipped %s: %s", name, reason)
        if not items:
            raise DataError(str(cfg.data.path), "no usable volume left", "fix the volumes listed above")
        self.items = items
        sequences = resolve_sequences(items, cfg.data.volume.channels, sequence_names(cfg.data.format, cfg.data.path))
        if sequences.n_channels > 1 or sequences.channels is not None:
            log.info(
                "sequences: %s of %d (%s)",
                ", ".join(sequences.names),
                sequences.n_channels,
                ", ".join(sequences.available),
            )
        self.sequences = sequences
        splits = assign_splits(
            items, by=cfg.data.split.by, val=cfg.data.split.val, test=cfg.data.split.test, seed=cfg.data.split.seed
        )
        chain = _volume_chain(cfg, train=False, sequences=sequences)
        train_chain = _volume_chain(cfg, train=True, sequences=sequences)
        self.augment = MedvisionCompose(train_chain.transforms[len(chain.transforms) :], log_stats=False)
        self.prepared: dict[str, list[dict[str, Any]]] = {}
        for name in ("train", "val", "test"):
            self.prepared[name], bad = _preprocess(
                splits[name], chain, skip_bad=cfg.data.skip_unreadable, progress=progress, desc=f"preparing {name}"
            )
            skipped += bad
        for name in ("train", "val"):
            if not any(len(v["_boxes"]) for v in self.prepared[name]):
                raise DataError(
                    str(cfg.data.path),
                    f"the {name} split holds no lesion ({len(self.prepared[name])} volumes)",
                    "use more volumes with lesions or change data.split",
                )
        self.skipped = skipped
        self.summary = split_summary(splits)
        self.slice_shape = _slice_shape(self.prepared["train"])

    def build_model(self, ctx: DistContext) -> torch.nn.Module:
        from medvision.models.detector import create_detector

        cfg, sequences = self.cfg, self.sequences
        mean = std = None
        if cfg.data.volume.modality == "CT":  # windowed to [0, 1]: ImageNet statistics apply
            from medvision.models import get_spec

            spec = get_spec(cfg.model.backbone)
            n = sequences.count * (2 * cfg.model.context + 1)
            mean = [float(np.mean(spec.mean))] * n
            std = [float(np.mean(spec.std))] * n
        self.device = ctx.device
        model = create_detector(
            cfg.model.backbone,
            weights=resolve_weights(cfg.model.weights),
            allow_random_fallback=cfg.model.allow_random_fallback,
            context=cfg.model.context,
            sequences=sequences.count,
            fpn_channels=cfg.model.fpn_channels,
            anchor_sizes=cfg.model.anchor_sizes,
            min_level=cfg.model.min_level,
            upsample=cfg.model.upsample,
            slice_shape=self.slice_shape,
            image_mean=mean,
            image_std=std,
        )
        if ctx.device.type == "cuda" and self.channels_last:  # the loop converts the weights; this also the input
            model.to_channels_last()
        return model

    def parameters(self, net: torch.nn.Module) -> Iterable[torch.nn.Parameter]:
        return [p for p in net.parameters() if p.requires_grad]

    def run_name(self) -> str:
        return f"{self.cfg.model.backbone}-detector-{self.cfg.train.seed}"

    def run_start(self) -> dict[str, Any]:
        return {
            "environment": {
                "splits": self.summary,
                "slice_shape": list(self.slice_shape),
                "sequences": self.sequences.names,
                "skipped_volumes": [reason for _, reason in self.skipped],
            },
            "skipped": ("skipped_volumes", len(self.skipped)),
        }

    def begin_epoch(self, epoch: int, epoch_seed: int, ctx: DistContext) -> tuple[Iterable[Any], int]:
        from medvision.data.slices import epoch_slices

        cfg = self.cfg
        self.rng = np.random.default_rng(epoch_seed)
        self.augment.set_random_state(seed=epoch_seed % 2**32)
        volumes = self.prepared["train"]
        if cfg.data.volume.augment:
            self.vols = []
            for v in volumes:
                out = self.augment({IMAGE: v["_image"], BOXES: v["_boxes"], BOX_LABELS: torch.zeros(len(v["_boxes"]))})
                self.vols.append((out[IMAGE], torch.as_tensor(out[BOXES]).float().reshape(-1, 6)))
        else:
            self.vols = [(v["_image"], v["_boxes"]) for v in volumes]
        samples = epoch_slices(self.vols, negatives_per_positive=cfg.data.volume.negatives_per_positive, rng=self.rng)
        self.n_samples = len(samples)
        bs = cfg.train.batch_size
        batches = [samples[i : i + bs] for i in range(0, len(samples), bs)]
        if cfg.train.max_batches_per_epoch is not None:
            batches = batches[: cfg.train.max_batches_per_epoch]
        return batches, len(batches)

    def step(
        self, net: torch.nn.Module, batch: Any, optimizer: torch.optim.Optimizer, ctx: DistContext
    ) -> dict[str, float]:
        images, targets = _batch(
            self.vols, batch, net.context, ctx.device, crop=self.cfg.data.volume.train_crop, rng=self.rng
        )
        parts = detector_losses(net, images, targets, autocast_for(ctx.device, self.cfg.train.amp))
        loss = sum(parts.values())
        if not torch.isfinite(loss):
            return {"loss": float("nan")}
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 10.0)
        optimizer.step()
        return {
            "loss": float(loss.detach()),
            "classification": float(parts["classification"].detach()),
            "box": float(parts["bbox_regression"].detach()),
        }

    def epoch_extra(self) -> tuple[dict[str, float], str]:
        return {"train_slices": float(self.n_samples)}, f"{self.n_samples} slices"

    def validate(self, model: torch.nn.Module, ctx: DistContext) -> dict[str, float]:
        self._val_preds = _predict_split(model, self.prepared["val"], ctx.device, self.merge, self.cfg.train.amp)
        return {"val_cpm": _val_cpm(self._val_preds, self.cfg.evaluate.iou_threshold)}

    def remember_best(self) -> None:
        self.best_val_preds = self._val_preds  # the final evaluation reuses them (same weights, same result)

    def finish(self, result: TrainResult, *, model: Any, tracker: Any, paths: RunPaths) -> None:
        # A resumed run does not have the best epoch's validation predictions in memory: _finish recomputes them.
        _finish(self, result, model=model, tracker=tracker, paths=paths)

    @staticmethod
    def evaluate(
        model: Any, meta: Any, model_uri: str, data_format: str | None, data_path: Any, **options: Any
    ) -> dict[str, Any]:
        options.pop("batch_size", None)  # whole volumes, one at a time
        return evaluate_detector(model, meta, model_uri, data_format, data_path, **options)


def train_detection(cfg: ExperimentConfig, **options: Any) -> TrainResult:
    """Train, evaluate and register a tumour detector as ``cfg`` describes (:func:`~medvision.engine.loop.fit`)
    (``options``: ``resume``, ``progress``, ``config_path``, ``tags``)."""
    return fit(DetectionTask(cfg), cfg, **options)


def _key_slice_for(pred: Mapping[str, Any], true_boxes: np.ndarray) -> int:
    if len(true_boxes):
        b = true_boxes[0]
        return int((b[2] + b[5]) // 2)
    if len(pred["key_slices"]):
        return int(pred["key_slices"][0])
    return -1


def _write_examples(
    art: Path, volumes: list[dict[str, Any]], preds: list[dict[str, Any]], threshold: float, salt: str
) -> list[Path]:
    from medvision.metrics.detection_plots import boxes_on_slice, plot_slice_with_boxes
    from medvision.tracking import salted_hash

    order = [i for i, v in enumerate(volumes) if len(v["_boxes"])][: N_EXAMPLES - 1]
    order += [i for i, v in enumerate(volumes) if not len(v["_boxes"])][:1]
    paths = []
    for i in order:
        v, p = volumes[i], preds[i]
        image = v["_image"][0]
        k = _key_slice_for(p, v["_boxes"].numpy())
        if k < 0:
            k = image.shape[2] // 2
        keep = p["pred_scores"] >= min(threshold, 0.5)
        true2d, _ = boxes_on_slice(v["_boxes"].numpy(), k)
        pred2d, pred_scores = boxes_on_slice(p["pred_boxes"][keep], k, scores=p["pred_scores"][keep])
        name = salted_hash(str(v.get("study_uid") or v[IMAGE]), salt)[:12]
        paths.append(
            plot_slice_with_boxes(
                np.asarray(image[:, :, k]),
                true2d,
                pred2d,
                pred_scores,
                art / "examples" / f"{name}_z{k}.png",
                title=f"volume {name}, axial slice {k}: truth green, predictions red",
            )
        )
    return paths


def _write_detections(
    path: Path,
    volumes: list[dict[str, Any]],
    preds: list[dict[str, Any]],
    *,
    threshold: float,
    iou: float,
    spacing: tuple[float, float, float],
    salt: str,
) -> Path:
    """One row per true lesion and per false-positive box at the threshold; volumes by salted hash only."""
    from monai.data.box_utils import box_iou

    from medvision.metrics.detection import match_detections
    from medvision.tracking import salted_hash

    rows = []
    sp = np.asarray(spacing, dtype=float)
    for v, p in zip(volumes, preds, strict=True):
        vid = salted_hash(str(v.get("study_uid") or v[IMAGE]), salt)
        true = v["_boxes"].numpy()
        keep = p["pred_scores"] >= threshold
        boxes, scores = p["pred_boxes"][keep], p["pred_scores"][keep]
        tp, matched = match_detections(boxes, scores, true, iou_threshold=iou)
        ious = (
            box_iou(torch.as_tensor(true), torch.as_tensor(p["pred_boxes"])).numpy()
            if len(true) and len(p["pred_boxes"])
            else np.zeros((len(true), 0))
        )
        for j, box in enumerate(true):
            size = (box[3:] - box[:3]) * sp
            best = int(np.argmax(ious[j])) if ious.shape[1] else -1
            found = bool(np.any(tp & (matched == j)))
            rows.append(
                {
                    "volume_hash": vid,
                    "kind": "lesion",
                    "box_voxel": json.dumps([round(float(x), 1) for x in box]),
                    "longest_side_mm": round(float(size.max()), 1),
                    "detected_at_threshold": int(found),
                    "best_iou": round(float(ious[j, best]), 3) if best >= 0 else 0.0,
                    "best_iou_score": round(float(p["pred_scores"][best]), 4) if best >= 0 else "",
                }
            )
        for b, s, m in zip(boxes, scores, matched, strict=True):
            if m == -1:
                rows.append(
                    {
                        "volume_hash": vid,
                        "kind": "false_positive",
                        "box_voxel": json.dumps([round(float(x), 1) for x in b]),
                        "longest_side_mm": round(float(((b[3:] - b[:3]) * sp).max()), 1),
                        "detected_at_threshold": "",
                        "best_iou": 0.0,
                        "best_iou_score": round(float(s), 4),
                    }
                )
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = [
        "volume_hash",
        "kind",
        "box_voxel",
        "longest_side_mm",
        "detected_at_threshold",
        "best_iou",
        "best_iou_score",
    ]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _finish(task: DetectionTask, result: TrainResult, *, model: Any, tracker: Any, paths: RunPaths) -> None:
    """Evaluate the best checkpoint on test, write the evidence, log and register the detector."""
    from medvision.metrics import scalar_metrics
    from medvision.metrics.detection import evaluate_detection
    from medvision.metrics.detection_plots import plot_froc
    from medvision.tracking import log_classifier
    from medvision.tracking.card import render_detector_card

    cfg, prepared, merge, sequences = task.cfg, task.prepared, task.merge, task.sequences
    summary, digest, slice_shape = task.summary, result.dataset_digest, task.slice_shape
    val_preds = task.best_val_preds
    model.to("cpu").eval()
    if getattr(model, "channels_last", False):  # trained on CUDA in channels_last: the CPU evaluates in NCHW
        model.to_channels_last(False)
    cpu = torch.device("cpu")
    if val_preds is None:  # resumed run: the best epoch's validation predictions are not in memory
        val_preds = _predict_split(model, prepared["val"], cpu, merge)
    test_preds = _predict_split(model, prepared["test"], cpu, merge)
    if not any(len(p["true_boxes"]) for p in test_preds):
        raise DataError(str(cfg.data.path), "the test split holds no lesion", "use more volumes or change data.split")
    spacing = tuple(float(s) for s in cfg.data.volume.spacing)
    ev = evaluate_detection(
        val_preds,
        test_preds,
        fp_rate=cfg.evaluate.fp_rate,
        iou_threshold=cfg.evaluate.iou_threshold,
        n_bootstraps=cfg.evaluate.bootstrap,
        seed=cfg.train.seed,
        spacing=spacing,
    )
    scalars = {("best_val_cpm" if k == "val_cpm" else k): v for k, v in scalar_metrics(ev).items()}
    result.metrics = {**scalars, "val_cpm": ev["val_cpm"]}
    tracker.log_metrics(scalars)

    threshold = float(ev["threshold"]) if math.isfinite(float(ev["threshold"])) else 1.0
    art = paths.evidence
    art.mkdir(parents=True, exist_ok=True)
    salt = hash_salt(paths.experiment_dir)
    paths = [
        plot_froc(ev["froc"], art / "froc.png", label=f"{cfg.model.backbone} 2.5D RetinaNet"),
        _write_detections(
            art / "detections.csv",
            prepared["test"],
            test_preds,
            threshold=threshold,
            iou=cfg.evaluate.iou_threshold,
            spacing=(spacing[0], spacing[1], spacing[2]),
            salt=salt,
        ),
    ]
    examples = _write_examples(art, prepared["test"], test_preds, threshold, salt)
    metrics_doc = {k: v for k, v in ev.items() if k not in ("froc",)}
    metrics_doc["froc"] = {k: v for k, v in ev["froc"].items() if k in ("cpm", "at_fp", "n_lesions", "n_volumes")}
    (art / "metrics.json").write_text(json.dumps(metrics_doc, indent=2, default=_json_default))
    paths.append(art / "metrics.json")
    for path in paths:
        tracker.log_artifact(path, "evidence")
    for path in examples:
        tracker.log_artifact(path, "evidence/examples")

    v = cfg.data.volume
    metadata = DetectorMetadata(
        task="detection",
        backbone=cfg.model.backbone,
        context=cfg.model.context,
        # The sequences the model expects: volumes with `volume_channels` channels (`volume_sequences`), of which
        # `channels` (in this order) are stacked; `predict` and `report` refuse a volume without them.
        sequences=list(sequences.names),
        n_sequences=sequences.count,
        channels=list(sequences.channels or range(sequences.n_channels)),
        volume_channels=sequences.n_channels,
        volume_sequences=list(sequences.available),
        spacing=v.spacing,
        modality=v.modality,
        ct_window=v.ct_window,
        mr_percentiles=v.mr_percentiles,
        slice_shape=slice_shape,
        threshold=threshold,
        fp_rate=cfg.evaluate.fp_rate,
        iou_threshold=cfg.evaluate.iou_threshold,
        hit=f"3D IoU >= {cfg.evaluate.iou_threshold:g} with a true lesion box (one true positive per lesion)",
        volume_score="highest 3D box score (0 without boxes); flagged when >= threshold",
        merge=merge,
        intended_use=cfg.intended_use,
        weights_source=result.weights_source,
        medvision_version=medvision.__version__,
        run_id=result.run_id,
        dataset_digest=digest,
        labels=["tumour"],
    ).stored()
    card_info: dict[str, Any] = {
        "metadata": {**metadata, "medvision_architecture": dict(model.architecture)},
        "name": cfg.tracking.register_as,
        "data": {"source": str(cfg.data.path), "format": cfg.data.format, "digest": digest, "splits": summary},
        "metrics": ev,
        "provenance": {
            "run_id": result.run_id,
            "medvision_version": medvision.__version__,
            "tracking_uri": result.tracking_uri,
            **git_state(),
        },
    }
    if cfg.tracking.register_as:
        h, w = slice_shape
        example = np.zeros((1, model.in_channels, h, w), dtype=np.float32)
        name = cfg.tracking.register_as
        registered = tracker.deliver(
            lambda: log_classifier(
                model,
                input_example=example,
                metadata=metadata,
                registered_name=name,
                alias=cfg.tracking.alias,
            ),
            f"the model (registration as {name}@{cfg.tracking.alias})",
        )
        result.model_uri, result.model_version = registered["model_uri"], str(registered["version"])
        card_info.update(
            {"version": registered["version"], "model_uri": registered["model_uri"], "alias": cfg.tracking.alias}
        )
    card = art / "model_card.md"
    card.write_text(render_detector_card(card_info))
    tracker.log_artifact(card, "evidence")
    print(
        f"test_cpm {ev['test_cpm']:.4f}  test_map {ev['test_map']:.4f}  "
        f"test_volume_auroc {ev['test_volume_auroc']:.4f}  sensitivity {ev['test_sensitivity']:.3f} at "
        f"{ev['test_fp_per_volume']:.2f} FP/volume (threshold {threshold:.3f})",
        flush=True,
    )


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, float | np.floating):
        return float(value)
    return str(value)


def evaluate_detector(
    model: Any,
    meta: DetectorMetadata,
    model_uri: str,
    data_format: str | None,
    data_path: str | Path,
    *,
    n_bootstraps: int = 1000,
    skip_unreadable: bool = False,
) -> dict[str, Any]:
    """A registered tumour detector on a detection datalist: FROC/CPM, mAP, volume AUROC, and sensitivity and
    false positives per volume at the threshold registered with the model (nothing is re-tuned here)."""
    from medvision.constants import BOX_LABELS, BOXES, IMAGE
    from medvision.data.detection import check_volumes, load_detection_datalist
    from medvision.engine.detect import DetectorBundle, detect_volume
    from medvision.metrics.detection import evaluate_at_threshold

    fmt = data_format or ("detection" if str(data_path).lower().endswith(".json") else "csv")
    bundle = DetectorBundle(model, meta, model_uri, torch.device("cpu"))
    items = load_detection_datalist(fmt, data_path)
    items, skipped = check_volumes(items, skip_bad=skip_unreadable)
    chain = bundle.transforms()
    merge = bundle.merge
    volumes = []
    for item in items:
        data = chain(
            {
                IMAGE: item[IMAGE],
                BOXES: np.asarray(item.get(BOXES) or np.zeros((0, 6)), dtype=np.float32).reshape(-1, 6),
                BOX_LABELS: np.asarray(item.get(BOX_LABELS) or [], dtype=np.int64),
            }
        )
        boxes, scores, _ = detect_volume(model, data[IMAGE], merge=merge)
        volumes.append({"pred_boxes": boxes, "pred_scores": scores, "true_boxes": np.asarray(data[BOXES])})
    iou = meta.iou_threshold
    found = evaluate_at_threshold(volumes, bundle.threshold, iou_threshold=iou, n_bootstraps=n_bootstraps)
    found.pop("froc")
    found.pop("coco")
    report: dict[str, Any] = {
        "model_uri": model_uri,
        "task": "detection",
        "skipped_volumes": len(skipped),
        "threshold": bundle.threshold,
        "iou_threshold": iou,
        **found,
    }
    return report
