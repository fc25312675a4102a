"""Detection figures written as PNG files: the FROC curve and a slice with true and predicted boxes.

Like :mod:`medvision.metrics.plots`, figures are built on :class:`matplotlib.figure.Figure` with an explicit
Agg canvas instead of ``matplotlib.pyplot``, so nothing changes matplotlib's global state.

Boxes on a slice follow MONAI's index convention: a 2-D box ``[x0, y0, x1, y1]`` covers
``image_2d[x0:x1, y0:y1]``, i.e. ``x`` runs along the array's first axis (drawn as rows, top to bottom)
and ``y`` along its second (columns, left to right), with the max corner exclusive (``box_utils``'s
``TO_REMOVE = 0``). :func:`boxes_on_slice` cuts 3-D ``"xyzxyz"`` boxes at one slice into that form.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import FixedLocator, NullLocator
from monai.metrics import compute_froc_score
from numpy.typing import ArrayLike

from medvision.errors import ConfigError, DataError
from medvision.metrics.plots import _new_figure, _save

__all__ = ["boxes_on_slice", "plot_froc", "plot_slice_with_boxes"]

_TRUE_COLOUR = "#00c000"
_PRED_COLOUR = "#ff2020"


def _rate_label(rate: float) -> str:
    if 0 < rate < 1 and math.isclose(1.0 / rate, round(1.0 / rate)):
        return f"1/{round(1.0 / rate)}"
    return f"{rate:g}"


def plot_froc(froc_result: Mapping[str, Any], path: str | Path, *, label: str | None = None) -> Path:
    """FROC curve: sensitivity against false positives per volume (log axis), with the CPM rates marked.

    The line is the curve as the metric reads it (MONAI's linear interpolation of the FROC points, the
    same as :func:`~medvision.metrics.detection.froc`'s ``at_fp``); the markers are the sensitivities at
    the CPM rates, and the legend gives the CPM.

    Args:
        froc_result: The dict of :func:`~medvision.metrics.detection.froc` (or ``evaluate_detection()
            ["froc"]``).
        path: PNG file to write (parent folders are created).
        label: Name of the curve in the legend.

    Returns:
        The path written.

    Raises:
        DataError: On a dict that is not a FROC result.
    """
    needed = ("fps_per_volume", "sensitivity", "at_fp", "cpm")
    if not isinstance(froc_result, Mapping) or any(key not in froc_result for key in needed):
        raise DataError(
            "froc_result",
            f"is not a FROC result (needs the keys {', '.join(needed)})",
            "pass the dict medvision.metrics.detection.froc() returns",
        )
    fps = np.asarray(froc_result["fps_per_volume"], dtype=np.float64)
    sens = np.asarray(froc_result["sensitivity"], dtype=np.float64)
    if fps.ndim != 1 or fps.size == 0 or fps.shape != sens.shape:
        raise DataError(
            "froc_result",
            f"has a curve of {fps.size} FP rates and {sens.size} sensitivities",
            "pass the dict medvision.metrics.detection.froc() returns, unmodified",
        )
    rates = sorted(float(r) for r in froc_result["at_fp"])
    at_fp = {float(r): float(s) for r, s in froc_result["at_fp"].items()}
    low = min(rates) / 2.0 if rates else 1.0 / 16.0
    high = max([*rates, float(fps.max()), low * 4.0]) * 1.25
    grid = np.geomspace(low, high, 400)
    # compute_froc_score expects MONAI's order (FP rate descending) and reverses it itself.
    curve = [float(compute_froc_score(fps[::-1], sens[::-1], (x,))) for x in grid]

    fig = _new_figure(6.0, 4.5)
    ax = fig.add_subplot()
    ax.plot(grid, curve, lw=2, label=f"{label or 'model'} (CPM {float(froc_result['cpm']):.3f})")
    if rates:
        ax.plot(rates, [at_fp[r] for r in rates], "o", color="crimson", ms=6, label="sensitivity at CPM rates")
        for r in rates:
            ax.annotate(
                f"{at_fp[r]:.2f}", (r, at_fp[r]), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=7
            )
    ax.set_xscale("log")
    if rates:  # ticks at the CPM rates (after set_xscale, which installs its own locators)
        ax.xaxis.set_major_locator(FixedLocator(rates))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([_rate_label(r) for r in rates])
    ax.set(xlim=(low, high), ylim=(-0.02, 1.05))
    ax.set_xlabel("false positives per volume")
    ax.set_ylabel("sensitivity (lesions found)")
    n_lesions, n_volumes = froc_result.get("n_lesions"), froc_result.get("n_volumes")
    title = "FROC curve"
    if n_lesions is not None and n_volumes is not None:
        title += f" ({n_lesions} lesions, {n_volumes} volumes)"
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def _as_boxes_2d(value: ArrayLike | None, where: str) -> np.ndarray:
    if value is None:
        return np.zeros((0, 4))
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4))
    if arr.ndim != 2 or arr.shape[1] != 4 or not np.isfinite(arr).all():
        raise DataError(
            where,
            f"expected an (N, 4) array of finite 2-D boxes [x0, y0, x1, y1], got shape {arr.shape}",
            "cut 3-D boxes at the slice with boxes_on_slice()",
        )
    return arr


def boxes_on_slice(
    boxes: ArrayLike, index: float, *, axis: int = 2, scores: ArrayLike | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """The 3-D ``"xyzxyz"`` boxes that cross slice ``index`` along ``axis``, as 2-D boxes of that slice.

    A box crosses slice ``i`` when ``lo <= i < hi`` along ``axis`` (voxel indices, max corner exclusive).
    The 2-D boxes keep the two other axes in order (for ``axis=2``: ``[x0, y0, x1, y1]``), matching
    ``volume[:, :, index]``.

    Args:
        boxes: ``(N, 6)`` boxes in voxel indices.
        index: Slice index along ``axis``.
        axis: 0, 1 or 2.
        scores: Optional ``(N,)`` scores, filtered the same way.

    Returns:
        ``(boxes_2d, scores_kept)``; ``scores_kept`` is None when ``scores`` is None.

    Raises:
        DataError: On boxes that are not ``(N, 6)`` or scores of another length.
        ConfigError: On an axis other than 0, 1 or 2.
    """
    if axis not in (0, 1, 2):
        raise ConfigError("axis", f"must be 0, 1 or 2, got {axis!r}", "pass the slicing axis of the volume")
    arr = np.asarray(boxes.detach().cpu().numpy() if hasattr(boxes, "detach") else boxes, dtype=np.float64)
    arr = arr.reshape(0, 6) if arr.size == 0 else arr
    if arr.ndim != 2 or arr.shape[1] != 6:
        raise DataError("boxes", f"expected an (N, 6) array of 3-D boxes, got shape {arr.shape}", "pass 'xyzxyz' boxes")
    keep = (arr[:, axis] <= index) & (index < arr[:, axis + 3])
    other = [a for a in range(3) if a != axis]
    out = arr[keep][:, [other[0], other[1], other[0] + 3, other[1] + 3]]
    if scores is None:
        return out, None
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.size != arr.shape[0]:
        raise DataError("scores", f"has {s.size} values but boxes has {arr.shape[0]}", "pass one score per box")
    return out, s[keep]


def plot_slice_with_boxes(
    image_2d: ArrayLike,
    true_boxes_2d: ArrayLike | None,
    pred_boxes_2d: ArrayLike | None,
    pred_scores: ArrayLike | None,
    path: str | Path,
    *,
    title: str | None = None,
) -> Path:
    """One grey slice with the true boxes (green) and the predicted boxes (red, labelled with their scores).

    The grey scale is windowed to the 0.5th-99.5th percentiles of the slice, so that a few extreme voxels
    (metal, air) do not wash it out.

    Args:
        image_2d: The slice, a 2-D array (e.g. ``volume[:, :, k]``).
        true_boxes_2d: ``(M, 4)`` true boxes ``[x0, y0, x1, y1]`` on the slice (see the module docstring),
            or None.
        pred_boxes_2d: ``(N, 4)`` predicted boxes, or None.
        pred_scores: ``(N,)`` scores of the predicted boxes, or None to draw them without scores.
        path: PNG file to write (parent folders are created).
        title: Optional title.

    Returns:
        The path written.

    Raises:
        DataError: On an image that is not 2-D or not finite, boxes that are not ``(N, 4)``, or scores of
            another length.
    """
    if hasattr(image_2d, "detach") and hasattr(image_2d, "cpu"):
        image_2d = image_2d.detach().cpu().numpy()
    image = np.asarray(image_2d, dtype=np.float64)
    image = np.squeeze(image) if image.ndim > 2 else image
    if image.ndim != 2 or image.size == 0:
        raise DataError("image_2d", f"expected a 2-D slice, got shape {image.shape}", "pass e.g. volume[:, :, k]")
    if not np.isfinite(image).all():
        raise DataError("image_2d", "contains NaN or infinite values", "replace them before plotting")
    true = _as_boxes_2d(true_boxes_2d, "true_boxes_2d")
    pred = _as_boxes_2d(pred_boxes_2d, "pred_boxes_2d")
    scores = None
    if pred_scores is not None:
        scores = np.asarray(pred_scores, dtype=np.float64).reshape(-1)
        if scores.size != pred.shape[0]:
            raise DataError(
                "pred_scores", f"has {scores.size} values but pred_boxes_2d has {pred.shape[0]}", "pass one per box"
            )

    vmin, vmax = np.percentile(image, [0.5, 99.5])
    if vmax <= vmin:
        vmax = vmin + 1.0
    height, width = image.shape
    fig = _new_figure(5.0, 5.0 * height / width if width else 5.0)
    ax = fig.add_subplot()
    ax.imshow(image, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")

    def draw(box: np.ndarray, colour: str, style: str) -> None:
        # x runs down the rows (array axis 0), y across the columns; pixel i spans [i - 0.5, i + 0.5].
        x0, y0, x1, y1 = box
        ax.add_patch(
            Rectangle((y0 - 0.5, x0 - 0.5), y1 - y0, x1 - x0, fill=False, edgecolor=colour, lw=1.5, linestyle=style)
        )

    for box in true:
        draw(box, _TRUE_COLOUR, "-")
    for i, box in enumerate(pred):
        draw(box, _PRED_COLOUR, "--")
        if scores is not None:
            ax.text(
                box[1] - 0.5,
                box[0] - 1.0,
                f"{scores[i]:.2f}",
                color=_PRED_COLOUR,
                fontsize=8,
                va="bottom",
                ha="left",
                bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "edgecolor": "none"},
            )
    ax.set(xlim=(-0.5, width - 0.5), ylim=(height - 0.5, -0.5))
    ax.set_xticks([])
    ax.set_yticks([])
    handles = [
        Line2D([], [], color=_TRUE_COLOUR, lw=1.5, label=f"truth ({true.shape[0]})"),
        Line2D([], [], color=_PRED_COLOUR, lw=1.5, ls="--", label=f"prediction ({pred.shape[0]})"),
    ]
    ax.legend(handles=handles, loc="lower right", fontsize=7, framealpha=0.7)
    if title:
        ax.set_title(title)
    return _save(fig, path)
