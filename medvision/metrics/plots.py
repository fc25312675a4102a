"""Evaluation figures written as PNG files: ROC, precision-recall, reliability, confusion matrix.

Figures are built on :class:`matplotlib.figure.Figure` with an explicit Agg canvas instead of
``matplotlib.pyplot``: nothing changes matplotlib's global backend or figure registry (safe on headless
servers and inside notebooks that use another backend), and a figure is freed as soon as the function
returns, so there is nothing left open to close.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import ArrayLike
from sklearn.calibration import calibration_curve
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from medvision.errors import DataError
from medvision.metrics._checks import _check_labels, _check_pair, _check_probabilities
from medvision.metrics.calibration import expected_calibration_error
from medvision.metrics.classification import binary_stats

__all__ = ["plot_confusion", "plot_pr", "plot_reliability", "plot_roc", "plot_roc_overlay"]

_DPI = 120


def _new_figure(width: float = 5.0, height: float = 5.0) -> Figure:
    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", bbox_inches="tight")
    fig.clear()
    return out


def _threshold_of(operating_point: Mapping[str, Any] | float | None) -> float | None:
    if operating_point is None:
        return None
    if isinstance(operating_point, Mapping):
        if "threshold" not in operating_point:
            raise DataError(
                "operating_point",
                "has no 'threshold' key",
                "pass the dict choose_operating_point() returns, or a threshold as a number",
            )
        return float(operating_point["threshold"])
    return float(operating_point)


def plot_roc(
    y: ArrayLike,
    score: ArrayLike,
    path: str | Path,
    *,
    operating_point: Mapping[str, Any] | float | None = None,
    label: str | None = None,
) -> Path:
    """ROC curve with its AUROC, the chance diagonal and, optionally, the operating point.

    Args:
        y: Labels, 0 or 1 (both classes).
        score: Scores on the same scale as the operating point's threshold.
        path: PNG file to write (parent folders are created).
        operating_point: The dict of :func:`~medvision.metrics.classification.choose_operating_point`
            (or a threshold); its sensitivity and specificity are recomputed on ``y`` and ``score``.
        label: Name of the curve in the legend.

    Returns:
        The path written.

    Raises:
        DataError: On bad labels or scores, or one class only.
    """
    y, s = _check_pair(y, score, y_name="y", score_name="score")
    fpr, tpr, _ = roc_curve(y, s)
    auc = roc_auc_score(y, s)
    fig = _new_figure()
    ax = fig.add_subplot()
    ax.plot(fpr, tpr, lw=2, label=f"{label or 'model'} (AUROC {auc:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    threshold = _threshold_of(operating_point)
    if threshold is not None:
        st = binary_stats(y, s, threshold)
        ax.plot(
            1.0 - st["specificity"],
            st["sensitivity"],
            "o",
            color="crimson",
            ms=8,
            label=f"threshold {threshold:.3g}: sens {st['sensitivity']:.2f}, spec {st['specificity']:.2f}",
        )
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal")
    ax.set_xlabel("1 - specificity (false-positive rate)")
    ax.set_ylabel("sensitivity (true-positive rate)")
    ax.set_title("ROC curve")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_pr(
    y: ArrayLike,
    score: ArrayLike,
    path: str | Path,
    *,
    operating_point: Mapping[str, Any] | float | None = None,
    label: str | None = None,
) -> Path:
    """Precision-recall curve with its average precision, the prevalence line and the operating point.

    Args:
        y: Labels, 0 or 1 (both classes).
        score: Scores on the same scale as the operating point's threshold.
        path: PNG file to write (parent folders are created).
        operating_point: The dict of :func:`~medvision.metrics.classification.choose_operating_point`
            (or a threshold); recall and precision are recomputed on ``y`` and ``score``.
        label: Name of the curve in the legend.

    Returns:
        The path written.

    Raises:
        DataError: On bad labels or scores, or one class only.
    """
    y, s = _check_pair(y, score, y_name="y", score_name="score")
    precision, recall, _ = precision_recall_curve(y, s)
    ap = average_precision_score(y, s)
    prevalence = float(y.mean())
    fig = _new_figure()
    ax = fig.add_subplot()
    ax.step(recall, precision, where="post", lw=2, label=f"{label or 'model'} (AP {ap:.3f})")
    ax.axhline(prevalence, ls="--", color="grey", lw=1, label=f"prevalence {prevalence:.3f}")
    threshold = _threshold_of(operating_point)
    if threshold is not None:
        st = binary_stats(y, s, threshold)
        if not np.isnan(st["ppv"]):
            ax.plot(
                st["sensitivity"],
                st["ppv"],
                "o",
                color="crimson",
                ms=8,
                label=f"threshold {threshold:.3g}: recall {st['sensitivity']:.2f}, PPV {st['ppv']:.2f}",
            )
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01))
    ax.set_xlabel("recall (sensitivity)")
    ax.set_ylabel("precision (PPV)")
    ax.set_title("Precision-recall curve")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    return _save(fig, path)


def plot_reliability(
    y: ArrayLike,
    prob_before: ArrayLike,
    prob_after: ArrayLike,
    path: str | Path,
    n_bins: int = 15,
) -> Path:
    """Reliability diagram before and after calibration, with a histogram of the calibrated probabilities.

    Args:
        y: Labels, 0 or 1.
        prob_before: Probabilities before calibration (e.g. ``sigmoid(logits)``).
        prob_after: Probabilities after calibration (e.g. ``apply_temperature(logits, T)``).
        path: PNG file to write (parent folders are created).
        n_bins: Number of equal-width bins.

    Returns:
        The path written.

    Raises:
        DataError: On bad labels or probabilities.
    """
    y = _check_labels(y, "y")
    before = _check_probabilities(prob_before, "prob_before", n=y.size, n_name="y")
    after = _check_probabilities(prob_after, "prob_after", n=y.size, n_name="y")
    fig = _new_figure(5.0, 6.0)
    ax, hist = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    for name, prob, style in (("before", before, "s-"), ("after", after, "o-")):
        frac_pos, mean_prob = calibration_curve(y, prob, n_bins=n_bins, strategy="uniform", pos_label=1)
        ece = expected_calibration_error(y, prob, n_bins=n_bins)
        ax.plot(mean_prob, frac_pos, style, ms=4, label=f"{name} (ECE {ece:.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1))
    ax.set_ylabel("fraction of positives")
    ax.set_title("Reliability diagram")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    hist.hist(after, bins=np.linspace(0.0, 1.0, n_bins + 1), color="C1", alpha=0.7)
    hist.set_xlabel("predicted probability (after calibration)")
    hist.set_ylabel("cases")
    return _save(fig, path)


def plot_confusion(cm: ArrayLike, path: str | Path, labels: Sequence[str] = ("normal", "pneumonia")) -> Path:
    """Confusion matrix as a heatmap with counts and row percentages.

    Args:
        cm: ``[[tn, fp], [fn, tp]]`` (rows: true class, columns: predicted class), or any square matrix
            of counts.
        path: PNG file to write (parent folders are created).
        labels: Class names in row/column order.

    Returns:
        The path written.

    Raises:
        DataError: On a matrix that is not square, has negative entries, or does not match ``labels``.
    """
    mat = np.asarray(cm, dtype=np.float64)
    if mat.ndim != 2 or mat.shape[0] != mat.shape[1] or mat.shape[0] != len(labels):
        raise DataError(
            "cm",
            f"expected a {len(labels)}x{len(labels)} matrix for labels {tuple(labels)}, got shape {mat.shape}",
            "pass evaluate_binary()['confusion_matrix'] or sklearn's confusion_matrix output",
        )
    if not np.all(np.isfinite(mat)) or (mat < 0).any():
        raise DataError("cm", "has negative or non-finite counts", "pass counts of cases")
    row_sums = mat.sum(axis=1, keepdims=True)
    frac = np.divide(mat, row_sums, out=np.zeros_like(mat), where=row_sums > 0)
    fig = _new_figure(4.5, 4.0)
    ax = fig.add_subplot()
    image = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    for i in range(mat.shape[0]):
        for j in range(mat.shape[1]):
            ax.text(
                j,
                i,
                f"{int(mat[i, j])}\n{100 * frac[i, j]:.1f}%",
                ha="center",
                va="center",
                color="white" if frac[i, j] > 0.5 else "black",
            )
    ticks = np.arange(len(labels))
    ax.set_xticks(ticks, labels=list(labels))
    ax.set_yticks(ticks, labels=list(labels))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix")
    return _save(fig, path)


def plot_roc_overlay(curves: Mapping[str, tuple[ArrayLike, ArrayLike]], path: str | Path) -> Path:
    """Several ROC curves on one set of axes (e.g. models, or subgroups), each with its AUROC.

    Args:
        curves: Name -> ``(y, score)``.
        path: PNG file to write (parent folders are created).

    Returns:
        The path written.

    Raises:
        DataError: On no curves, or bad labels or scores in one of them.
    """
    if not curves:
        raise DataError("curves", "is empty", "pass at least one name -> (y, score) pair")
    fig = _new_figure()
    ax = fig.add_subplot()
    for name, pair in curves.items():
        if len(pair) != 2:
            raise DataError(f"curves[{name!r}]", "is not a (y, score) pair", "pass a tuple (y, score)")
        y, s = _check_pair(pair[0], pair[1], y_name=f"curves[{name!r}][0]", score_name=f"curves[{name!r}][1]")
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, lw=2, label=f"{name} (AUROC {roc_auc_score(y, s):.3f}, n={y.size})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal")
    ax.set_xlabel("1 - specificity (false-positive rate)")
    ax.set_ylabel("sensitivity (true-positive rate)")
    ax.set_title("ROC curves")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)
