"""Evaluate any registered classifier on any datalist, with the preprocessing, temperature and
operating point that travel with the registered model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from medvision.engine.classification import predict_logits
from medvision.models.contract import ClassifierMetadata, DetectorMetadata


def evaluate_registered(
    model_uri: str,
    data_format: str | None,
    data_path: str | Path,
    *,
    out_dir: str | Path | None = None,
    n_bootstraps: int = 1000,
    batch_size: int = 32,
    skip_unreadable: bool = False,
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """Score every item of a datalist with a registered model and report its clinical metrics.

    Args:
        model_uri: ``models:/name@alias``, ``models:/name/version`` or ``runs:/id/model``.
        data_format: classifiers: ``csv`` (default), ``decathlon``, ``kermany`` or ``rsna``; detectors:
            ``detection`` (default for ``.json``), ``decathlon`` (images + label masks) or ``csv``.
        data_path: the datalist (file or folder).
        out_dir: where to write ``metrics.json`` (no identifiers); nothing is written when None.
        n_bootstraps: bootstrap resamples for the AUROC interval.
        tracking_uri: the MLflow store holding the model (default: MLflow's current one, else
            ``$MLFLOW_TRACKING_URI``, else ``./mlflow.db``); a local store that does not exist is refused,
            never created.

    Returns:
        AUROC with its interval, AUPRC, and sensitivity/specificity/PPV/NPV at the stored threshold; for a
        detector :func:`evaluate_detector`'s report.
    """
    from medvision.engine.loop import task_class
    from medvision.models.contract import parse_metadata
    from medvision.tracking import load_model_with_metadata

    model, raw, pinned = load_model_with_metadata(model_uri, tracking_uri=tracking_uri)
    meta = parse_metadata(raw, pinned)  # the typed contract: refused with the field named when it does not fit
    task = task_class(meta.task, where=f"{pinned} metadata task")
    return task.evaluate(
        model,
        meta,
        pinned,
        data_format,
        data_path,
        out_dir=out_dir,
        n_bootstraps=n_bootstraps,
        batch_size=batch_size,
        skip_unreadable=skip_unreadable,
    )


def evaluate_classifier(
    model: Any,
    meta: ClassifierMetadata,
    model_uri: str,
    data_format: str | None,
    data_path: str | Path,
    *,
    out_dir: str | Path | None = None,
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
    return _write_report(report, out_dir)


def _write_report(report: dict[str, Any], out_dir: str | Path | None) -> dict[str, Any]:
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(report, indent=2, default=float))
    return {k: (float(v) if isinstance(v, np.floating) else v) for k, v in report.items()}


def evaluate_detector(
    model: Any,
    meta: DetectorMetadata,
    model_uri: str,
    data_format: str | None,
    data_path: str | Path,
    *,
    out_dir: str | Path | None = None,
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
    return _write_report(report, out_dir)
