"""Calibration of binary classifiers: temperature scaling, expected calibration error, Brier score.

Temperature scaling (Guo et al., 2017) divides the logits by one scalar ``T`` fitted on the validation
set; it changes no ranking (AUROC is unchanged) but makes the probabilities honest. ``T > 1`` softens an
over-confident model.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import minimize_scalar
from scipy.special import expit
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss

from medvision.errors import ConfigError
from medvision.metrics._checks import _check_labels, _check_probabilities, _check_scores

__all__ = [
    "apply_temperature",
    "calibration_report",
    "expected_calibration_error",
    "fit_temperature",
]

#: Search range of log T: T in [exp(-5), exp(5)] ~ [0.0067, 148].
_LOG_T_BOUNDS = (-5.0, 5.0)


def _nll(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    """Mean binary cross-entropy of ``sigmoid(logits / T)``.

    Written in the logit domain (``softplus(z) - y * z``) rather than with ``sklearn.metrics.log_loss``
    because it is exact for large logits (no clipping of probabilities) and cheap inside an optimiser.
    """
    z = logits / temperature
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def fit_temperature(logits_val: ArrayLike, y_val: ArrayLike) -> float:
    """Fit the temperature ``T`` that minimises the validation NLL of ``sigmoid(logit / T)``.

    The search runs over ``log T`` (so ``T > 0``) with :func:`scipy.optimize.minimize_scalar` (bounded,
    ``T`` in about [0.0067, 148]; perfectly separated data drive ``T`` to the lower bound).

    Args:
        logits_val: Validation logits of the positive class, one per sample.
        y_val: Validation labels, 0 or 1.

    Returns:
        ``T`` as a float; 1.0 (no change) for degenerate input: fewer than two samples, one class only,
        or all logits zero.

    Raises:
        DataError: On bad labels or logits.
    """
    y = _check_labels(y_val, "y_val")
    logits = _check_scores(logits_val, "logits_val", n=y.size, n_name="y_val")
    n_pos = int(y.sum())
    if y.size < 2 or n_pos == 0 or n_pos == y.size or not np.any(logits):
        return 1.0
    yf = y.astype(np.float64)
    res = minimize_scalar(
        lambda log_t: _nll(logits, yf, math.exp(log_t)),
        bounds=_LOG_T_BOUNDS,
        method="bounded",
        options={"xatol": 1e-6},
    )
    if not res.success or not math.isfinite(res.x):
        return 1.0
    return float(math.exp(res.x))


def apply_temperature(logits: ArrayLike, temperature: float) -> np.ndarray:
    """Calibrated probabilities ``sigmoid(logits / T)``.

    Args:
        logits: Logits of the positive class.
        temperature: ``T > 0`` from :func:`fit_temperature`.

    Returns:
        A float64 array of probabilities in [0, 1].

    Raises:
        DataError: On non-finite logits.
        ConfigError: On a temperature that is not a positive finite number.
    """
    t = float(temperature)
    if not (math.isfinite(t) and t > 0):
        raise ConfigError(
            "temperature",
            f"must be a positive finite number, got {temperature!r}",
            "pass the value fit_temperature() returned",
        )
    z = _check_scores(logits, "logits")
    return expit(z / t)


def _bin_counts(prob: np.ndarray, n_bins: int) -> np.ndarray:
    # The binning rule of sklearn.calibration.calibration_curve(strategy="uniform"), which returns the
    # per-bin means but not the bin sizes the ECE weights them by.
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ids = np.searchsorted(edges[1:-1], prob)
    return np.bincount(ids, minlength=n_bins)


def expected_calibration_error(y_true: ArrayLike, prob: ArrayLike, n_bins: int = 15) -> float:
    """Expected calibration error over equal-width bins of the positive-class probability.

    ``ECE = sum_b (n_b / N) * |frac_pos_b - mean_prob_b|``, with the per-bin fraction of positives and
    mean probability from :func:`sklearn.calibration.calibration_curve` (``strategy="uniform"``), i.e.
    the bins of a reliability diagram. Empty bins do not count.

    Args:
        y_true: Labels, 0 or 1 (one class alone is allowed).
        prob: Predicted probabilities of the positive class, in [0, 1].
        n_bins: Number of equal-width bins on [0, 1].

    Returns:
        ECE as a float in [0, 1].

    Raises:
        DataError: On bad labels or probabilities.
        ConfigError: On ``n_bins < 1``.
    """
    y = _check_labels(y_true, "y_true")
    p = _check_probabilities(prob, "prob", n=y.size)
    if isinstance(n_bins, bool) or int(n_bins) != n_bins or n_bins < 1:
        raise ConfigError("n_bins", f"must be a positive integer, got {n_bins!r}", "pass e.g. 15")
    n_bins = int(n_bins)
    frac_pos, mean_prob = calibration_curve(y, p, n_bins=n_bins, strategy="uniform", pos_label=1)
    counts = _bin_counts(p, n_bins)
    weights = counts[counts > 0] / y.size
    return float(np.sum(weights * np.abs(frac_pos - mean_prob)))


def calibration_report(y_test: ArrayLike, logits_test: ArrayLike, temperature: float) -> dict[str, Any]:
    """ECE and Brier score on the test set before (``T = 1``) and after temperature scaling.

    Args:
        y_test: Test labels, 0 or 1.
        logits_test: Test logits.
        temperature: ``T`` fitted on the validation set.

    Returns:
        ``{"ece_before", "ece_after", "brier_before", "brier_after", "temperature"}``.

    Raises:
        DataError: On bad labels or logits.
    """
    y = _check_labels(y_test, "y_test")
    logits = _check_scores(logits_test, "logits_test", n=y.size, n_name="y_test")
    before = apply_temperature(logits, 1.0)
    after = apply_temperature(logits, temperature)
    return {
        "ece_before": expected_calibration_error(y, before),
        "ece_after": expected_calibration_error(y, after),
        "brier_before": float(brier_score_loss(y, before, pos_label=1)),
        "brier_after": float(brier_score_loss(y, after, pos_label=1)),
        "temperature": float(temperature),
    }
