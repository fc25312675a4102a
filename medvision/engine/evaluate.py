"""Evaluate any registered model on any datalist, with the contract (preprocessing, temperature, operating
point) that travels with it. The model's ``task`` picks the evaluation (:mod:`medvision.engine.tasks`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


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
        detector the detection task's report (:func:`medvision.engine.detection.evaluate_detector`).
    """
    from medvision.engine.tasks import task_class
    from medvision.models.contract import parse_metadata
    from medvision.tracking import load_model_with_metadata

    model, raw, pinned = load_model_with_metadata(model_uri, tracking_uri=tracking_uri)
    meta = parse_metadata(raw, pinned)  # the typed contract: refused with the field named when it does not fit
    task = task_class(meta.task, where=f"{pinned} metadata task")
    report = task.evaluate(
        model,
        meta,
        pinned,
        data_format,
        data_path,
        n_bootstraps=n_bootstraps,
        batch_size=batch_size,
        skip_unreadable=skip_unreadable,
    )
    return _write_report(report, out_dir)


def _write_report(report: dict[str, Any], out_dir: str | Path | None) -> dict[str, Any]:
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(report, indent=2, default=float))
    return {k: (float(v) if isinstance(v, np.floating) else v) for k, v in report.items()}
