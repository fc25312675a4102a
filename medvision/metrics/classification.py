"""Clinical evaluation metrics for binary classifiers.

Numpy arrays (or anything :func:`numpy.asarray` accepts) go in; plain Python floats, ints, dicts and lists
come out, so that every result can be logged to MLflow and dumped to JSON as it is.

Conventions used everywhere in :mod:`medvision.metrics`:

* labels are 0 (negative, e.g. "normal") and 1 (positive, e.g. "pneumonia");
* a higher score means "more likely positive";
* the decision rule is **positive iff score >= threshold** (the rule of :func:`sklearn.metrics.roc_curve`);
* ratios that are undefined (0 / 0) are ``nan``, never an exception;
* bad input raises :class:`medvision.errors.DataError` naming the argument, the reason and the fix.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    roc_auc_score,
    roc_curve,
)

from medvision.errors import ConfigError, DataError
from medvision.metrics._checks import (
    _check_alpha,
    _check_n_bootstraps,
    _check_pair,
)
from medvision.metrics.calibration import apply_temperature, expected_calibration_error, fit_temperature

__all__ = [
    "AGE_BANDS",
    "age_band",
    "auprc",
    "auroc_bootstrap_distribution",
    "auroc_ci",
    "binary_stats",
    "choose_operating_point",
    "evaluate_binary",
    "scalar_metrics",
    "subgroup_auroc",
    "wilson_interval",
]

#: Age bands of :func:`age_band`, in reporting order.
AGE_BANDS: tuple[str, ...] = ("<18", "18-39", "40-59", "60-79", "80+", "unknown")

#: Bootstrap work is done in chunks of about this many (bootstrap x sample) cells to bound memory.
_CHUNK_CELLS = 4_000_000

#: Subgroups with fewer cases than this in one class get a warning note.
_FEW_CASES = 10



def _ratio(num: float, den: float) -> float:
    """``num / den`` as a float, ``nan`` when ``den`` is 0 (undefined ratio, not an error)."""
    return float(num) / float(den) if den else math.nan


# --------------------------------------------------------------------------------------------------------
# AUROC with a stratified bootstrap
# --------------------------------------------------------------------------------------------------------


def _resample_counts(rng: np.random.Generator, n_boot: int, size: int) -> np.ndarray:
    """How often each of ``size`` items is drawn in each of ``n_boot`` resamples with replacement.

    Returns an ``(n_boot, size)`` float array whose rows sum to ``size``. Drawing indices and counting them
    with one :func:`numpy.bincount` is much faster than ``rng.multinomial`` row by row.
    """
    idx = rng.integers(0, size, size=(n_boot, size))
    idx += np.arange(n_boot)[:, None] * size
    return np.bincount(idx.ravel(), minlength=n_boot * size).reshape(n_boot, size).astype(np.float64)


class _RankAUC:
    """AUROC of one score vector under many weightings of its samples, vectorised.

    scikit-learn computes one AUROC per call; 1000 calls on 10k samples take seconds. A bootstrap
    resample is a weighting of the original samples (how often each was drawn), and the Mann-Whitney
    form of the AUROC is linear in those weights::

        AUROC = sum_i sum_j w_i v_j psi(x_i, y_j) / (sum w * sum v),
        psi(x, y) = 1 if x > y, 1/2 if x == y, 0 otherwise,

    for positives ``x_i`` with weights ``w_i`` and negatives ``y_j`` with weights ``v_j``. With the
    negatives sorted once, ``sum_j v_j psi(x_i, y_j)`` is a lookup in the cumulative sum of ``v`` at the
    positions :func:`numpy.searchsorted` gives for ``x_i`` (left: strictly below, right: below or tied),
    so each resample costs one cumulative sum and one gather, done for a whole chunk of resamples at once.
    """

    def __init__(self, pos: np.ndarray, neg: np.ndarray) -> None:
        self.order = np.argsort(neg, kind="stable")
        neg_sorted = neg[self.order]
        self.lo = np.searchsorted(neg_sorted, pos, side="left")
        self.hi = np.searchsorted(neg_sorted, pos, side="right")
        self.n_pos = pos.size
        self.n_neg = neg.size

    def __call__(self, w_pos: np.ndarray, w_neg: np.ndarray) -> np.ndarray:
        """AUROC for each row of the ``(B, n_pos)`` and ``(B, n_neg)`` weight arrays -> ``(B,)``."""
        n_boot = w_neg.shape[0]
        cum = np.zeros((n_boot, self.n_neg + 1))
        np.cumsum(w_neg[:, self.order], axis=1, out=cum[:, 1:])
        # 2 * (weight of negatives strictly below + half the weight of tied negatives), per positive.
        twice_below = cum[:, self.lo] + cum[:, self.hi]
        num = 0.5 * np.einsum("bm,bm->b", w_pos, twice_below)
        return num / (w_pos.sum(axis=1) * w_neg.sum(axis=1))


def _stratified_bootstrap(
    y: np.ndarray, scores: Sequence[np.ndarray], n_bootstraps: int, seed: int | None
) -> np.ndarray:
    """Stratified bootstrap AUROCs: ``(len(scores), n_bootstraps)``, the same resamples for every score.

    Positives and negatives are resampled separately, so every resample keeps the original class counts
    (and an AUROC is always defined). Sharing the resamples makes the bootstrap *paired*.
    """
    pos_idx = np.flatnonzero(y == 1)
    neg_idx = np.flatnonzero(y == 0)
    engines = [_RankAUC(s[pos_idx], s[neg_idx]) for s in scores]
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // (y.size + 1))
    out = np.empty((len(scores), n_bootstraps))
    for start in range(0, n_bootstraps, chunk):
        b = min(chunk, n_bootstraps - start)
        w_pos = _resample_counts(rng, b, pos_idx.size)
        w_neg = _resample_counts(rng, b, neg_idx.size)
        for k, engine in enumerate(engines):
            out[k, start : start + b] = engine(w_pos, w_neg)
    return out


def auroc_bootstrap_distribution(
    y_true: ArrayLike, y_score: ArrayLike, *, n_bootstraps: int = 1000, seed: int | None = 0
) -> np.ndarray:
    """AUROCs of ``n_bootstraps`` stratified bootstrap resamples (the distribution behind :func:`auroc_ci`).

    Args:
        y_true: Labels, 0 or 1; both classes must be present.
        y_score: Scores, higher means more likely positive.
        n_bootstraps: Number of resamples.
        seed: Seed of :func:`numpy.random.default_rng`.

    Returns:
        A float array of shape ``(n_bootstraps,)``.

    Raises:
        DataError: On bad labels or scores, or when one class is missing.
    """
    y, s = _check_pair(y_true, y_score)
    n_bootstraps = _check_n_bootstraps(n_bootstraps)
    return _stratified_bootstrap(y, [s], n_bootstraps, seed)[0]


def _percentile_ci(samples: np.ndarray, alpha: float) -> tuple[float, float]:
    if samples.size == 0:
        return math.nan, math.nan
    low, high = np.quantile(samples, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


def auroc_ci(
    y_true: ArrayLike,
    y_score: ArrayLike,
    *,
    n_bootstraps: int = 1000,
    alpha: float = 0.05,
    seed: int | None = 0,
) -> dict[str, Any]:
    """AUROC with a stratified percentile-bootstrap confidence interval.

    The point estimate is :func:`sklearn.metrics.roc_auc_score`. The interval resamples positives and
    negatives separately (keeping the class counts) and takes the ``alpha/2`` and ``1 - alpha/2``
    quantiles of the resampled AUROCs, computed from ranks for all resamples at once (1000 resamples of
    10k samples take well under a second).

    Args:
        y_true: Labels, 0 or 1; both classes must be present.
        y_score: Scores (logits or probabilities), higher means more likely positive.
        n_bootstraps: Number of resamples; 0 gives a NaN interval.
        alpha: One minus the confidence level.
        seed: Seed of :func:`numpy.random.default_rng`.

    Returns:
        ``{"auroc", "ci_low", "ci_high", "n", "n_pos"}``.

    Raises:
        DataError: On bad labels or scores, or when one class is missing.
        ConfigError: On a bad ``n_bootstraps`` or ``alpha``.
    """
    y, s = _check_pair(y_true, y_score)
    n_bootstraps = _check_n_bootstraps(n_bootstraps)
    alpha = _check_alpha(alpha)
    boot = _stratified_bootstrap(y, [s], n_bootstraps, seed)[0]
    low, high = _percentile_ci(boot, alpha)
    return {
        "auroc": float(roc_auc_score(y, s)),
        "ci_low": low,
        "ci_high": high,
        "n": int(y.size),
        "n_pos": int(y.sum()),
    }


def auprc(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """Area under the precision-recall curve (:func:`sklearn.metrics.average_precision_score`).

    Args:
        y_true: Labels, 0 or 1; both classes must be present.
        y_score: Scores, higher means more likely positive.

    Returns:
        Average precision; a random classifier scores the prevalence.

    Raises:
        DataError: On bad labels or scores, or when one class is missing.
    """
    y, s = _check_pair(y_true, y_score)
    return float(average_precision_score(y, s))


# --------------------------------------------------------------------------------------------------------
# Operating point and confusion-matrix statistics
# --------------------------------------------------------------------------------------------------------


def choose_operating_point(
    y_true: ArrayLike,
    y_score: ArrayLike,
    *,
    method: str = "youden",
    target_sensitivity: float = 0.9,
) -> dict[str, Any]:
    """Choose a decision threshold on a **validation** set (never on the test set).

    Candidates are the thresholds of :func:`sklearn.metrics.roc_curve` (every distinct score, with
    ``drop_intermediate=False`` so no candidate is skipped); the ``+inf`` threshold that calls nothing
    positive is not a candidate.

    * ``"youden"``: maximise Youden's J = sensitivity + specificity - 1 = TPR - FPR; on ties the highest
      threshold wins.
    * ``"sensitivity"``: the highest threshold whose sensitivity is >= ``target_sensitivity`` (the most
      specific point that still meets the target, e.g. for screening).

    Args:
        y_true: Validation labels, 0 or 1; both classes must be present.
        y_score: Validation scores (usually calibrated probabilities).
        method: ``"youden"`` or ``"sensitivity"``.
        target_sensitivity: Required sensitivity for ``method="sensitivity"``, in (0, 1].

    Returns:
        ``{"threshold", "method", "sensitivity", "specificity"}``, with sensitivity and specificity on
        the validation set under the rule "positive iff score >= threshold"; for ``"sensitivity"`` also
        ``"target_sensitivity"``.

    Raises:
        DataError: On bad labels or scores, or when one class is missing.
        ConfigError: On an unknown ``method`` or a target outside (0, 1].
    """
    y, s = _check_pair(y_true, y_score)
    if method not in ("youden", "sensitivity"):
        raise ConfigError("method", f"unknown operating-point method {method!r}", "use 'youden' or 'sensitivity'")
    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    # Index 0 is sklearn's extra point (threshold +inf, nothing positive): not a usable operating point.
    fpr, tpr, thresholds = fpr[1:], tpr[1:], thresholds[1:]
    result: dict[str, Any] = {"method": method}
    if method == "youden":
        idx = int(np.argmax(tpr - fpr))  # thresholds decrease, so argmax's first hit is the highest
    else:
        target = float(target_sensitivity)
        if not (0.0 < target <= 1.0):
            raise ConfigError("target_sensitivity", f"must lie in (0, 1], got {target_sensitivity!r}", "pass e.g. 0.9")
        # tpr never decreases as the threshold falls and ends at 1, so a first hit always exists.
        # The small tolerance keeps e.g. 9/10 == 0.9 from failing on floating-point rounding.
        idx = int(np.flatnonzero(tpr >= target - 1e-12)[0])
        result["target_sensitivity"] = target
    result.update(
        threshold=float(thresholds[idx]),
        sensitivity=float(tpr[idx]),
        specificity=float(1.0 - fpr[idx]),
    )
    return result


def wilson_interval(successes: int, total: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (:meth:`scipy.stats.binomtest` ``proportion_ci``).

    Args:
        successes: Number of successes.
        total: Number of trials; 0 gives ``(nan, nan)``.
        confidence: Confidence level.

    Returns:
        ``(low, high)`` as floats.
    """
    if total <= 0:
        return math.nan, math.nan
    ci = stats.binomtest(int(successes), int(total)).proportion_ci(confidence, method="wilson")
    return float(ci.low), float(ci.high)


def binary_stats(y_true: ArrayLike, y_score: ArrayLike, threshold: float) -> dict[str, Any]:
    """Confusion-matrix statistics at a threshold (positive iff ``score >= threshold``).

    Counts come from :func:`sklearn.metrics.confusion_matrix`; the ratios are computed from the counts by
    hand so that an undefined ratio (e.g. PPV with no predicted positives, sensitivity with no positives)
    is ``nan`` instead of sklearn's ``zero_division`` substitute and warning.

    Args:
        y_true: Labels, 0 or 1 (one class alone is allowed; its undefined ratios are NaN).
        y_score: Scores on the same scale as ``threshold``.
        threshold: Decision threshold.

    Returns:
        ``{"threshold", "tp", "fp", "tn", "fn", "sensitivity", "specificity", "ppv", "npv", "accuracy",
        "f1", "sensitivity_ci_low", "sensitivity_ci_high", "specificity_ci_low", "specificity_ci_high"}``;
        the intervals are 95% Wilson score intervals.

    Raises:
        DataError: On bad labels, scores or threshold.
    """
    y, s = _check_pair(y_true, y_score, both_classes=False)
    thr = float(threshold)
    if math.isnan(thr):
        raise DataError("threshold", "is NaN", "pass a number, e.g. from choose_operating_point()")
    pred = (s >= thr).astype(np.int64)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, pred, labels=[0, 1]).ravel())
    sens_low, sens_high = wilson_interval(tp, tp + fn)
    spec_low, spec_high = wilson_interval(tn, tn + fp)
    return {
        "threshold": thr,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "accuracy": _ratio(tp + tn, tp + tn + fp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "sensitivity_ci_low": sens_low,
        "sensitivity_ci_high": sens_high,
        "specificity_ci_low": spec_low,
        "specificity_ci_high": spec_high,
    }


# --------------------------------------------------------------------------------------------------------
# Subgroups
# --------------------------------------------------------------------------------------------------------


def age_band(age_years: float | int | str | None) -> str:
    """Age band of an age in years: ``"<18"``, ``"18-39"``, ``"40-59"``, ``"60-79"``, ``"80+"``.

    Args:
        age_years: Age in years (a number or a numeric string); ``None``, NaN, negative or unparseable
            values give ``"unknown"``.

    Returns:
        One of :data:`AGE_BANDS`.
    """
    if age_years is None:
        return "unknown"
    try:
        age = float(age_years)
    except (TypeError, ValueError):
        return "unknown"
    if not math.isfinite(age) or age < 0:
        return "unknown"
    if age < 18:
        return "<18"
    if age < 40:
        return "18-39"
    if age < 60:
        return "40-59"
    if age < 80:
        return "60-79"
    return "80+"


def _group_label(value: Any) -> str:
    if value is None:
        return "unknown"
    if isinstance(value, float | np.floating) and math.isnan(value):
        return "unknown"
    if isinstance(value, np.generic):
        value = value.item()
    return str(value)


def _group_sort_key(label: str) -> tuple[int, str]:
    # Age bands in age order, "unknown" last, anything else alphabetically.
    if label in AGE_BANDS:
        return AGE_BANDS.index(label), ""
    return len(AGE_BANDS) - 1, label


def subgroup_auroc(
    y_true: ArrayLike,
    y_score: ArrayLike,
    groups: Mapping[str, Sequence[Any]],
    *,
    n_bootstraps: int = 200,
    alpha: float = 0.05,
    seed: int | None = 0,
) -> list[dict[str, Any]]:
    """AUROC with a bootstrap interval for each value of each attribute (sex, age band, view, site...).

    A subgroup holding one class only is reported with ``auroc`` NaN and the note ``"only one class"``
    instead of raising, so that one small group never stops the report. ``None`` and NaN attribute values
    form the group ``"unknown"``.

    Args:
        y_true: Labels, 0 or 1.
        y_score: Scores, higher means more likely positive.
        groups: Attribute name -> one value per sample (e.g. ``{"sex": [...], "age_band": [...]}``).
        n_bootstraps: Resamples per subgroup.
        alpha: One minus the confidence level.
        seed: Seed of each subgroup's bootstrap.

    Returns:
        One dict per (attribute, value): ``{"attribute", "group", "n", "n_pos", "auroc", "ci_low",
        "ci_high", "note"}``; ``note`` is ``""``, ``"only one class"`` or a warning about few cases.

    Raises:
        DataError: On bad labels or scores, or an attribute whose length differs from ``y_true``.
    """
    y, s = _check_pair(y_true, y_score, both_classes=False)
    n_bootstraps = _check_n_bootstraps(n_bootstraps)
    alpha = _check_alpha(alpha)
    rows: list[dict[str, Any]] = []
    for attribute, values in groups.items():
        values = list(values)
        if len(values) != y.size:
            raise DataError(
                f"groups[{attribute!r}]",
                f"has {len(values)} values but y_true has {y.size}",
                "pass one attribute value per sample, in the order of y_true",
            )
        labels = np.array([_group_label(v) for v in values], dtype=object)
        for group in sorted(set(labels.tolist()), key=_group_sort_key):
            mask = labels == group
            y_g, s_g = y[mask], s[mask]
            n_pos = int(y_g.sum())
            n_neg = int(y_g.size) - n_pos
            row: dict[str, Any] = {
                "attribute": str(attribute),
                "group": group,
                "n": int(y_g.size),
                "n_pos": n_pos,
                "auroc": math.nan,
                "ci_low": math.nan,
                "ci_high": math.nan,
                "note": "",
            }
            if n_pos == 0 or n_neg == 0:
                row["note"] = "only one class"
            else:
                boot = _stratified_bootstrap(y_g, [s_g], n_bootstraps, seed)[0]
                low, high = _percentile_ci(boot, alpha)
                row.update(auroc=float(roc_auc_score(y_g, s_g)), ci_low=low, ci_high=high)
                if min(n_pos, n_neg) < _FEW_CASES:
                    row["note"] = f"fewer than {_FEW_CASES} cases of one class; interval unreliable"
            rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------------------
# The whole evaluation
# --------------------------------------------------------------------------------------------------------


def evaluate_binary(
    *,
    y_val: ArrayLike,
    logits_val: ArrayLike,
    y_test: ArrayLike,
    logits_test: ArrayLike,
    groups_test: Mapping[str, Sequence[Any]] | None = None,
    operating_point: str = "youden",
    target_sensitivity: float = 0.9,
    n_bootstraps: int = 1000,
    seed: int | None = 0,
) -> dict[str, Any]:
    """Evaluate a binary classifier the way a clinical study reports it.

    1. Fit a temperature on the validation logits (:func:`~medvision.metrics.calibration.fit_temperature`).
    2. Choose the operating point on the calibrated validation probabilities.
    3. Report on the test set: AUROC (with bootstrap CI) and AUPRC from the logits (rank-equivalent to
       the probabilities, without ties from saturated sigmoids), the confusion-matrix statistics at the
       validation threshold, calibration (ECE, Brier) of the calibrated probabilities, and subgroups.

    Nothing is tuned on the test set.

    Args:
        y_val: Validation labels, 0 or 1 (both classes).
        logits_val: Validation logits (one per sample).
        y_test: Test labels, 0 or 1 (both classes).
        logits_test: Test logits.
        groups_test: Optional attribute name -> one value per test sample, for :func:`subgroup_auroc`.
        operating_point: ``"youden"`` or ``"sensitivity"`` (see :func:`choose_operating_point`).
        target_sensitivity: Target for ``operating_point="sensitivity"``.
        n_bootstraps: Resamples for the test AUROC interval (subgroups use ``min(n_bootstraps, 200)``).
        seed: Bootstrap seed.

    Returns:
        A dict with the scalars ``test_auroc``, ``test_auroc_ci_low``, ``test_auroc_ci_high``,
        ``test_auprc``, ``test_sensitivity``, ``test_specificity``, ``test_ppv``, ``test_npv``,
        ``test_accuracy``, ``test_f1``, ``test_ece``, ``test_brier``, ``test_ece_uncalibrated``,
        ``test_brier_uncalibrated``, ``test_n``, ``test_n_pos``, ``val_auroc``, ``val_n``,
        ``temperature``, and the non-scalar entries ``operating_point`` (dict), ``test_stats`` (the full
        :func:`binary_stats` dict, with Wilson intervals), ``confusion_matrix`` (``[[tn, fp], [fn, tp]]``)
        and ``subgroups`` (list of dicts). :func:`scalar_metrics` keeps the scalars.

    Raises:
        DataError: On bad labels or logits, or a split with one class only.
        ConfigError: On a bad ``operating_point``, ``target_sensitivity`` or ``n_bootstraps``.
    """
    # Imported here because calibration.py imports this module's input checks.

    yv, lv = _check_pair(y_val, logits_val, y_name="y_val", score_name="logits_val")
    yt, lt = _check_pair(y_test, logits_test, y_name="y_test", score_name="logits_test")

    temperature = fit_temperature(lv, yv)
    prob_val = apply_temperature(lv, temperature)
    prob_test = apply_temperature(lt, temperature)
    prob_test_raw = apply_temperature(lt, 1.0)

    op = choose_operating_point(yv, prob_val, method=operating_point, target_sensitivity=target_sensitivity)
    auc = auroc_ci(yt, lt, n_bootstraps=n_bootstraps, seed=seed)
    st = binary_stats(yt, prob_test, op["threshold"])
    subgroups = (
        subgroup_auroc(yt, lt, groups_test, n_bootstraps=min(n_bootstraps, 200), seed=seed) if groups_test else []
    )
    return {
        "test_auroc": auc["auroc"],
        "test_auroc_ci_low": auc["ci_low"],
        "test_auroc_ci_high": auc["ci_high"],
        "test_auprc": float(average_precision_score(yt, lt)),
        "test_sensitivity": st["sensitivity"],
        "test_specificity": st["specificity"],
        "test_ppv": st["ppv"],
        "test_npv": st["npv"],
        "test_accuracy": st["accuracy"],
        "test_f1": st["f1"],
        "test_ece": expected_calibration_error(yt, prob_test),
        "test_brier": float(brier_score_loss(yt, prob_test)),
        "test_ece_uncalibrated": expected_calibration_error(yt, prob_test_raw),
        "test_brier_uncalibrated": float(brier_score_loss(yt, prob_test_raw)),
        "test_n": int(yt.size),
        "test_n_pos": int(yt.sum()),
        "val_auroc": float(roc_auc_score(yv, lv)),
        "val_n": int(yv.size),
        "temperature": float(temperature),
        "operating_point": op,
        "test_stats": st,
        "confusion_matrix": [[st["tn"], st["fp"]], [st["fn"], st["tp"]]],
        "subgroups": subgroups,
    }


def scalar_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The scalar entries of a result dict as floats, e.g. for ``mlflow.log_metrics``.

    Keeps ints and floats (finite or NaN); drops infinities, booleans, strings, dicts and lists.

    Args:
        result: E.g. the output of :func:`evaluate_binary`.

    Returns:
        ``{name: float}``.
    """
    out: dict[str, float] = {}
    for key, value in result.items():
        if isinstance(value, bool | np.bool_):
            continue
        if not isinstance(value, int | float | np.integer | np.floating):
            continue
        value = float(value)
        if math.isinf(value):
            continue
        out[str(key)] = value
    return out
