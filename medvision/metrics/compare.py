"""Compare the AUROCs of two models scored on the same test set (paired tests).

* :func:`delong_test`: DeLong, DeLong & Clarke-Pearson (1988) in the fast O(n log n) form of Sun & Xu
  (2014). Neither scikit-learn nor scipy provides it, so it is written here from the midrank formulas.
* :func:`paired_bootstrap`: the same resamples for both models, stratified by class.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats
from sklearn.metrics import roc_auc_score

from medvision.metrics._checks import _check_alpha, _check_labels, _check_n_bootstraps, _check_scores
from medvision.metrics.classification import _percentile_ci, _stratified_bootstrap

__all__ = ["delong_components", "delong_test", "paired_bootstrap"]


def _check_paired(
    y_true: ArrayLike, score_a: ArrayLike, score_b: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y = _check_labels(y_true, "y_true", both_classes=True)
    a = _check_scores(score_a, "score_a", n=y.size)
    b = _check_scores(score_b, "score_b", n=y.size)
    return y, a, b


def delong_components(y_true: ArrayLike, y_score: ArrayLike) -> tuple[float, np.ndarray, np.ndarray]:
    """DeLong's structural components of one AUROC, from midranks (Sun & Xu 2014).

    With ``psi(x, y) = 1 if x > y, 1/2 if x == y, 0 otherwise``, positives ``x_i`` (m of them) and
    negatives ``y_j`` (n of them)::

        V10_i = mean_j psi(x_i, y_j)   (one per positive)
        V01_j = mean_i psi(x_i, y_j)   (one per negative)
        AUROC = mean(V10) = mean(V01)

    Sun & Xu obtain them without the m x n comparisons: with ``Tz`` the midranks in the pooled sample and
    ``Tx``, ``Ty`` the midranks within each class, ``V10_i = (Tz_i - Tx_i) / n`` and
    ``V01_j = 1 - (Tz_j - Ty_j) / m``.

    Args:
        y_true: Labels, 0 or 1 (both classes).
        y_score: Scores.

    Returns:
        ``(auroc, v10, v01)``.
    """
    y = _check_labels(y_true, "y_true", both_classes=True)
    s = _check_scores(y_score, "y_score", n=y.size)
    return _components(s[y == 1], s[y == 0])


def _components(pos: np.ndarray, neg: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    m, n = pos.size, neg.size
    tz = stats.rankdata(np.concatenate([pos, neg]), method="average")
    tx = stats.rankdata(pos, method="average")
    ty = stats.rankdata(neg, method="average")
    v10 = (tz[:m] - tx) / n
    v01 = 1.0 - (tz[m:] - ty) / m
    return float(v10.mean()), v10, v01


def delong_test(y_true: ArrayLike, score_a: ArrayLike, score_b: ArrayLike, *, alpha: float = 0.05) -> dict[str, Any]:
    """DeLong's paired test of ``AUROC(a) - AUROC(b)`` on the same cases.

    The variance of the difference is ``var(V10_a - V10_b) / m + var(V01_a - V01_b) / n`` (sample
    variances, ddof=1), which equals ``L S L^T`` with DeLong's covariance matrix ``S`` and
    ``L = [1, -1]``, and is exactly 0 when the two score vectors rank the cases identically.

    Args:
        y_true: Labels, 0 or 1 (both classes).
        score_a: Scores of model A.
        score_b: Scores of model B, same cases in the same order.
        alpha: One minus the confidence level of the interval on the difference.

    Returns:
        ``{"auroc_a", "auroc_b", "diff", "ci_low", "ci_high", "z", "p_value"}``; ``diff`` is
        ``auroc_a - auroc_b`` from :func:`sklearn.metrics.roc_auc_score`; ``p_value`` is two-sided from the
        normal distribution. When the variance is 0, ``z`` is 0 and ``p_value`` 1 if ``diff`` is 0, else
        ``z`` is +/-inf and ``p_value`` 0.

    Raises:
        DataError: On bad labels or scores, or one class only.
    """
    y, a, b = _check_paired(y_true, score_a, score_b)
    alpha = _check_alpha(alpha)
    pos, neg = y == 1, y == 0
    _, v10_a, v01_a = _components(a[pos], a[neg])
    _, v10_b, v01_b = _components(b[pos], b[neg])
    m, n = int(pos.sum()), int(neg.sum())

    def _var(x: np.ndarray) -> float:
        return float(np.var(x, ddof=1)) if x.size > 1 else 0.0

    variance = _var(v10_a - v10_b) / m + _var(v01_a - v01_b) / n
    auroc_a = float(roc_auc_score(y, a))
    auroc_b = float(roc_auc_score(y, b))
    diff = auroc_a - auroc_b
    se = math.sqrt(max(variance, 0.0))
    if se > 0:
        z = diff / se
        p_value = float(2.0 * stats.norm.sf(abs(z)))
    elif diff == 0:
        z, p_value = 0.0, 1.0
    else:
        z, p_value = math.copysign(math.inf, diff), 0.0
    half = float(stats.norm.ppf(1.0 - alpha / 2.0)) * se
    return {
        "auroc_a": auroc_a,
        "auroc_b": auroc_b,
        "diff": diff,
        "ci_low": diff - half,
        "ci_high": diff + half,
        "z": float(z),
        "p_value": p_value,
    }


def paired_bootstrap(
    y_true: ArrayLike,
    score_a: ArrayLike,
    score_b: ArrayLike,
    n_bootstraps: int = 2000,
    seed: int | None = 0,
    *,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Paired, class-stratified bootstrap of ``AUROC(a) - AUROC(b)``.

    Each resample draws positives and negatives separately (keeping the class counts) and scores both
    models on the same resampled cases. The interval is the percentile interval of the resampled
    differences; the two-sided p-value is that of the centred bootstrap test
    ``(1 + #{|d* - d| >= |d|}) / (B + 1)`` (Davison & Hinkley 1997, ch. 4), which is 1 for identical
    scores and never exactly 0.

    Args:
        y_true: Labels, 0 or 1 (both classes).
        score_a: Scores of model A.
        score_b: Scores of model B, same cases in the same order.
        n_bootstraps: Number of resamples (>= 1).
        seed: Seed of :func:`numpy.random.default_rng`.
        alpha: One minus the confidence level.

    Returns:
        ``{"diff", "ci_low", "ci_high", "p_value", "se", "z", "n_bootstraps"}``; ``diff`` is the
        difference of the full-sample AUROCs, ``se`` the standard deviation of the resampled differences
        and ``z = diff / se`` (0 when ``se`` is 0), comparable with :func:`delong_test`'s ``z``.

    Raises:
        DataError: On bad labels or scores, or one class only.
        ConfigError: On a bad ``n_bootstraps`` or ``alpha``.
    """
    y, a, b = _check_paired(y_true, score_a, score_b)
    n_bootstraps = _check_n_bootstraps(n_bootstraps, allow_zero=False)
    alpha = _check_alpha(alpha)
    boot = _stratified_bootstrap(y, [a, b], n_bootstraps, seed)
    d_star = boot[0] - boot[1]
    diff = float(roc_auc_score(y, a)) - float(roc_auc_score(y, b))
    low, high = _percentile_ci(d_star, alpha)
    se = float(np.std(d_star, ddof=1)) if n_bootstraps > 1 else 0.0
    # Small tolerance: identical models give d* == d == 0 up to rounding, which must count as "as extreme".
    extreme = np.abs(d_star - diff) >= abs(diff) - 1e-12
    p_value = float((1 + int(extreme.sum())) / (n_bootstraps + 1))
    return {
        "diff": diff,
        "ci_low": low,
        "ci_high": high,
        "p_value": min(p_value, 1.0),
        "se": se,
        "z": diff / se if se > 0 else 0.0,
        "n_bootstraps": n_bootstraps,
    }
