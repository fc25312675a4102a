"""Input checks shared by :mod:`medvision.metrics` (classification, calibration, compare): labels, scores and
probabilities become 1-D arrays or a typed error naming the argument. A module of its own so that the metric
modules import it and not each other."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from medvision.errors import ConfigError, DataError

# --------------------------------------------------------------------------------------------------------
# Input checks (shared with calibration.py and compare.py)
# --------------------------------------------------------------------------------------------------------


def _as_1d(values: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        raise DataError(
            name,
            f"expected a 1-D array with one value per sample, got shape {arr.shape}",
            "pass a flat array (for a two-column probability output pass the positive-class column)",
        )
    if arr.size == 0:
        raise DataError(name, "is empty", "pass at least one sample")
    return arr


def _check_labels(y_true: ArrayLike, name: str = "y_true", *, both_classes: bool = False) -> np.ndarray:
    """Return ``y_true`` as an int64 array of 0/1 or raise :class:`DataError`."""
    arr = _as_1d(y_true, name)
    if arr.dtype == bool:
        arr = arr.astype(np.int64)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise DataError(
            name,
            f"labels must be numbers 0 or 1, got dtype {arr.dtype}",
            "map the classes to 0 (negative) and 1 (positive)",
        )
    if np.issubdtype(arr.dtype, np.floating) and np.isnan(arr).any():
        raise DataError(
            name,
            f"contains {int(np.isnan(arr).sum())} NaN label(s)",
            "drop the unlabelled samples before evaluation",
        )
    bad = np.setdiff1d(np.unique(arr), [0, 1])
    if bad.size:
        shown = ", ".join(str(v) for v in bad[:5].tolist())
        raise DataError(
            name,
            f"labels must be 0 or 1; found {shown}",
            "map the classes to 0 (negative) and 1 (positive)",
        )
    labels = arr.astype(np.int64)
    if both_classes:
        _require_both_classes(labels, name)
    return labels


def _require_both_classes(labels: np.ndarray, name: str) -> None:
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == labels.size:
        only = "negatives (0)" if n_pos == 0 else "positives (1)"
        raise DataError(
            name,
            f"contains only {only}; this metric needs both classes",
            "evaluate on a set that holds both positive and negative cases",
        )


def _check_scores(
    y_score: ArrayLike, name: str = "y_score", *, n: int | None = None, n_name: str = "y_true"
) -> np.ndarray:
    """Return ``y_score`` as a finite float64 array of length ``n`` or raise :class:`DataError`."""
    arr = _as_1d(y_score, name)
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise DataError(name, f"scores must be numbers, got dtype {arr.dtype}", "pass numeric scores")
    arr = arr.astype(np.float64)
    if n is not None and arr.size != n:
        raise DataError(
            name,
            f"has {arr.size} values but {n_name} has {n}",
            f"pass exactly one score per label (same order as {n_name})",
        )
    finite = np.isfinite(arr)
    if not finite.all():
        n_nan = int(np.isnan(arr).sum())
        n_inf = int((~finite).sum()) - n_nan
        raise DataError(
            name,
            f"contains {n_nan} NaN and {n_inf} infinite value(s)",
            "fix the model output or drop those samples before evaluation",
        )
    return arr


def _check_probabilities(prob: ArrayLike, name: str, *, n: int | None = None, n_name: str = "y_true") -> np.ndarray:
    """Return ``prob`` as a float64 array of probabilities in [0, 1] or raise :class:`DataError`."""
    arr = _check_scores(prob, name, n=n, n_name=n_name)
    if arr.min() < 0.0 or arr.max() > 1.0:
        raise DataError(
            name,
            f"probabilities must lie in [0, 1]; found range [{arr.min():.4g}, {arr.max():.4g}]",
            "pass probabilities (apply a sigmoid to logits first, e.g. apply_temperature(logits, 1.0))",
        )
    return arr


def _check_pair(
    y_true: ArrayLike,
    y_score: ArrayLike,
    *,
    y_name: str = "y_true",
    score_name: str = "y_score",
    both_classes: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    y = _check_labels(y_true, y_name, both_classes=both_classes)
    s = _check_scores(y_score, score_name, n=y.size, n_name=y_name)
    return y, s


def _check_n_bootstraps(n_bootstraps: int, *, allow_zero: bool = True) -> int:
    if isinstance(n_bootstraps, bool) or not isinstance(n_bootstraps, int | np.integer):
        raise ConfigError("n_bootstraps", f"must be an integer, got {n_bootstraps!r}", "pass e.g. 1000")
    low = 0 if allow_zero else 1
    if n_bootstraps < low:
        raise ConfigError("n_bootstraps", f"must be >= {low}, got {n_bootstraps}", "pass e.g. 1000")
    return int(n_bootstraps)


def _check_alpha(alpha: float) -> float:
    if not (0.0 < float(alpha) < 1.0):
        raise ConfigError("alpha", f"must lie in (0, 1), got {alpha!r}", "pass 0.05 for a 95% interval")
    return float(alpha)
