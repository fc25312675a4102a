"""Evaluation metrics.

Binary classification (:mod:`.classification`, :mod:`.calibration`, :mod:`.compare`) is re-exported
here. Figures live in :mod:`medvision.metrics.plots`, which is not imported here so that computing
metrics never loads matplotlib.
"""

from __future__ import annotations

from medvision.metrics.calibration import (
    apply_temperature,
    calibration_report,
    expected_calibration_error,
    fit_temperature,
)
from medvision.metrics.classification import (
    AGE_BANDS,
    age_band,
    auprc,
    auroc_bootstrap_distribution,
    auroc_ci,
    binary_stats,
    choose_operating_point,
    evaluate_binary,
    scalar_metrics,
    subgroup_auroc,
    wilson_interval,
)
from medvision.metrics.compare import delong_components, delong_test, paired_bootstrap

__all__ = [
    "AGE_BANDS",
    "age_band",
    "apply_temperature",
    "auprc",
    "auroc_bootstrap_distribution",
    "auroc_ci",
    "binary_stats",
    "calibration_report",
    "choose_operating_point",
    "delong_components",
    "delong_test",
    "evaluate_binary",
    "expected_calibration_error",
    "fit_temperature",
    "paired_bootstrap",
    "scalar_metrics",
    "subgroup_auroc",
    "wilson_interval",
]
