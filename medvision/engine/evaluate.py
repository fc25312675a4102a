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


def evaluate_registered(
    model_uri: str,
    data_format: str,
    data_path: str | Path,
    *,
    out_dir: str | Path | None = None,
    n_bootstraps: int = 1000,
    batch_size: int = 32,
    skip_unreadable: bool = False,
) -> dict[str, Any]:
    """Score every item of a datalist with a registered model and report its clinical metrics.

    Args:
        model_uri: ``models:/name@alias``, ``models:/name/version`` or ``runs:/id/model``.
        data_format: ``csv``, ``decathlon``, ``kermany`` or ``rsna``.
        data_path: the datalist (file or folder).
        out_dir: where to write ``metrics.json`` (no identifiers); nothing is written when None.
        n_bootstraps: bootstrap resamples for the AUROC interval.

    Returns:
        AUROC with its interval, AUPRC, and sensitivity/specificity/PPV/NPV at the stored threshold.
    """
    from medvision.data import check_readable, classification_transforms, load_datalist
    from medvision.metrics import apply_temperature, auprc, auroc_ci, binary_stats, expected_calibration_error
    from medvision.tracking import load_classifier

    model, meta = load_classifier(model_uri)
    items = load_datalist(data_format, data_path)
    items, skipped = check_readable(items, skip_unreadable=skip_unreadable)
    transform = classification_transforms(
        image_size=int(meta["image_size"]),
        keep_aspect=bool(meta["keep_aspect"]),
        mean=float(meta["mean"]),
        std=float(meta["std"]),
        train=False,
    )
    from monai.data import Dataset

    ds = Dataset([{"image": it["image"], "label": int(it["label"])} for it in items], transform)
    logits, labels = predict_logits(model, DataLoader(ds, batch_size=batch_size), torch.device("cpu"))
    prob = apply_temperature(logits, float(meta["temperature"]))
    threshold = float(meta["threshold"])
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
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(report, indent=2, default=float))
    return {k: (float(v) if isinstance(v, np.floating) else v) for k, v in report.items()}
