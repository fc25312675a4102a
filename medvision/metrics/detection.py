"""Evaluation of 3-D lesion (tumour) detectors: FROC and CPM, mAP, sensitivity by size, volume-level AUROC.

Inputs are *volumes*: a sequence with one dict per scanned volume (a CT or MR series)::

    {"pred_boxes": (N, 6), "pred_scores": (N,), "true_boxes": (M, 6)}

Boxes are 3-D in MONAI's ``"xyzxyz"`` (``StandardMode``) layout ``[x0, y0, z0, x1, y1, z1]`` with
``x1 >= x0`` etc., in any frame (voxel indices or world millimetres) as long as the predictions and the
truth of a volume share it; IoU is unitless, so only :func:`sensitivity_by_size` needs to know the unit.
Arrays, nested lists and (CPU or GPU) tensors are accepted; a volume without predictions or without lesions
passes an empty list. Scores are the detector's box probabilities (higher = more likely a lesion).

**Definition of a hit** (used by the FROC, the CPM, the operating threshold and sensitivity by size; it is
the definition to quote in the documentation and the model card):

* A predicted box *hits* a true lesion when their 3-D intersection over union
  (:func:`monai.data.box_utils.box_iou`) is **>= 0.1** (``iou_threshold``). This is the lenient criterion
  used with MONAI's 3-D detection metrics (LUNA16-style): a box counts as finding a lesion when it
  overlaps it substantially, not when it delineates it.
* Each lesion is found **at most once**. Predictions are matched greedily in descending score order; a
  prediction is a **true positive** for the lesion it hits best (highest IoU) among the lesions not yet
  found, so the TP of a lesion is the highest-scoring prediction that hits it and was not already used
  for another lesion.
* A prediction that hits only lesions already found by a higher-scoring prediction is a **duplicate**: it
  is neither a TP nor a false positive, and is ignored (as in LUNA16's evaluation, where several
  candidates on one nodule are not penalised).
* Every other prediction is a **false positive**, including every prediction in a volume without lesions.

Because the matching is greedy in score order, the matching of the predictions with score >= t is the
first part of the matching of all predictions, for every threshold t; one matching therefore gives the
TPs, FPs and duplicates at every operating point of the FROC curve.

``hit="center"`` replaces the IoU criterion by "the predicted box's centre lies inside the true box"
(a point-in-lesion rule like CAMELYON16's); everything else stays the same.

The COCO-style mAP (:func:`coco_map`) is MONAI's ``COCOMetric`` with its own matching, in which a duplicate
counts as a false positive (COCO's rule); it is reported next to the FROC, not mixed with it.

Results are plain Python floats, ints, lists and dicts (per-prediction flags are numpy arrays), so they can
be logged to MLflow and dumped to JSON. Bad input raises :class:`medvision.errors.DataError` naming the
volume and key; bad parameters raise :class:`medvision.errors.ConfigError`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from monai.apps.detection.metrics.coco import COCOMetric
from monai.apps.detection.metrics.matching import matching_batch
from monai.data.box_utils import box_iou
from monai.metrics import compute_froc_curve_data, compute_froc_score
from numpy.typing import ArrayLike

from medvision.errors import ConfigError, DataError
from medvision.metrics._checks import _check_pair
from medvision.metrics.classification import auroc_ci, wilson_interval

__all__ = [
    "FP_RATES",
    "SIZE_BANDS_MM",
    "coco_map",
    "evaluate_at_threshold",
    "evaluate_detection",
    "froc",
    "match_detections",
    "sensitivity_by_size",
    "threshold_at_fp_rate",
    "volume_auroc",
    "volume_level_scores",
]

#: False positives per volume at which the FROC is read; their mean sensitivity is the CPM (LUNA16).
FP_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)

#: Edges of the lesion size bands of :func:`sensitivity_by_size` (longest box side, mm).
SIZE_BANDS_MM: tuple[float, ...] = (0.0, 10.0, 20.0, 30.0, math.inf)

_HIT_RULES = ("iou", "center")

#: MONAI's box_iou computes in float32 (``box_utils.COMPUTE_DTYPE``), so an IoU that equals the threshold in
#: exact arithmetic (e.g. 0.7) can come out one float32 step below it; this tolerance keeps it a hit.
_IOU_TOL = 1e-6

#: MONAI's compute_froc_curve_data recounts every score for every distinct threshold (quadratic: about 1 s
#: for 30k predictions, 80 s for 300k). Above this many scores the same counts are taken with one sort and
#: a binary search (tested to agree exactly).
_MONAI_FROC_MAX = 20_000

#: MONAI's COCOMetric keeps the 100 highest-scoring predictions of each volume (its default).
_COCO_MAX_DETECTIONS = 100


# --------------------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------------------


class _Volume(NamedTuple):
    pred_boxes: np.ndarray  # (N, 6) float64
    pred_scores: np.ndarray  # (N,) float64
    true_boxes: np.ndarray  # (M, 6) float64
    spacing: np.ndarray | None  # (3,) or None


def _to_numpy(value: Any, where: str) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, possibly on a GPU
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(where, f"cannot be read as an array of numbers ({exc})", "pass a numeric array") from exc


def _check_boxes(value: Any, where: str) -> np.ndarray:
    arr = _to_numpy(value, where)
    if arr.size == 0:
        return np.zeros((0, 6), dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 6:
        raise DataError(
            where,
            f"expected an (N, 6) array of 3-D boxes [x0, y0, z0, x1, y1, z1], got shape {arr.shape}",
            "pass boxes in MONAI's 'xyzxyz' mode (convert others with monai.data.box_utils.convert_box_mode)",
        )
    if not np.isfinite(arr).all():
        raise DataError(
            where,
            f"contains {int((~np.isfinite(arr)).sum())} NaN or infinite coordinate(s)",
            "fix the detector output or the annotation",
        )
    bad = np.flatnonzero((arr[:, 3:] < arr[:, :3]).any(axis=1))
    if bad.size:
        raise DataError(
            where,
            f"has {bad.size} box(es) whose max corner lies below the min corner (first: row {int(bad[0])})",
            "pass boxes as [x0, y0, z0, x1, y1, z1] with x1 >= x0, y1 >= y0, z1 >= z0 ('xyzxyz' mode;"
            " convert centre-size boxes with monai.data.box_utils.convert_box_mode)",
        )
    return arr


def _check_box_scores(value: Any, n: int, where: str, boxes_where: str) -> np.ndarray:
    arr = _to_numpy(value, where).reshape(-1)
    if arr.size != n:
        raise DataError(where, f"has {arr.size} scores but {boxes_where} has {n} boxes", "pass one score per box")
    if not np.isfinite(arr).all():
        raise DataError(where, "contains NaN or infinite scores", "fix the detector output")
    return arr


def _check_spacing(value: Any, where: str) -> np.ndarray:
    arr = _to_numpy(value, where).reshape(-1)
    if arr.size == 1:
        arr = np.repeat(arr, 3)
    if arr.size != 3 or not np.isfinite(arr).all() or (arr <= 0).any():
        raise DataError(
            where,
            f"expected 3 positive voxel sizes (x, y, z) in mm, got {arr.tolist()}",
            "pass the spacing in the box axis order, e.g. (0.7, 0.7, 1.25)",
        )
    return arr


def _check_volumes(volumes: Any, name: str = "volumes", *, spacing: Any = None) -> list[_Volume]:
    """Validate ``volumes`` into a list of :class:`_Volume` or raise :class:`DataError`."""
    if isinstance(volumes, Mapping | str | bytes) or not isinstance(volumes, Sequence):
        raise DataError(
            name,
            f"expected a list with one dict per volume, got {type(volumes).__name__}",
            "pass [{'pred_boxes': ..., 'pred_scores': ..., 'true_boxes': ...}, ...]",
        )
    if len(volumes) == 0:
        raise DataError(name, "is empty", "pass at least one volume")
    default_spacing = None if spacing is None else _check_spacing(spacing, "spacing")
    out: list[_Volume] = []
    for i, volume in enumerate(volumes):
        where = f"{name}[{i}]"
        if not isinstance(volume, Mapping):
            raise DataError(
                where,
                f"expected a dict, got {type(volume).__name__}",
                "pass {'pred_boxes': (N, 6), 'pred_scores': (N,), 'true_boxes': (M, 6)}",
            )
        missing = [key for key in ("pred_boxes", "pred_scores", "true_boxes") if key not in volume]
        if missing:
            raise DataError(
                where,
                f"has no {', '.join(repr(k) for k in missing)}",
                "pass 'pred_boxes', 'pred_scores' and 'true_boxes' for every volume (empty lists when there are none)",
            )
        pred = _check_boxes(volume["pred_boxes"], f"{where}['pred_boxes']")
        scores = _check_box_scores(
            volume["pred_scores"], pred.shape[0], f"{where}['pred_scores']", f"{where}['pred_boxes']"
        )
        true = _check_boxes(volume["true_boxes"], f"{where}['true_boxes']")
        vol_spacing = default_spacing
        if volume.get("spacing") is not None:
            vol_spacing = _check_spacing(volume["spacing"], f"{where}['spacing']")
        out.append(_Volume(pred, scores, true, vol_spacing))
    return out


def _check_iou_threshold(value: float, name: str = "iou_threshold") -> float:
    thr = float(value)
    if not (0.0 < thr <= 1.0):
        raise ConfigError(name, f"must lie in (0, 1], got {value!r}", "pass e.g. 0.1 (the LUNA16-style criterion)")
    return thr


def _check_hit(hit: str) -> str:
    if hit not in _HIT_RULES:
        raise ConfigError("hit", f"unknown hit rule {hit!r}", f"use one of {', '.join(_HIT_RULES)}")
    return hit


def _check_fp_rates(fp_rates: Sequence[float]) -> tuple[float, ...]:
    rates = tuple(float(r) for r in fp_rates)
    if not rates or not all(math.isfinite(r) and r > 0 for r in rates):
        raise ConfigError(
            "fp_rates",
            f"must be positive false-positive rates per volume, got {list(fp_rates)!r}",
            "pass e.g. (1/8, 1/4, 1/2, 1, 2, 4, 8)",
        )
    return rates


# --------------------------------------------------------------------------------------------------------
# Matching
# --------------------------------------------------------------------------------------------------------


def _match(
    pred: np.ndarray, scores: np.ndarray, true: np.ndarray, iou_threshold: float, hit: str
) -> tuple[np.ndarray, np.ndarray]:
    n_pred, n_true = pred.shape[0], true.shape[0]
    tp = np.zeros(n_pred, dtype=bool)
    matched = np.full(n_pred, -1, dtype=np.int64)
    if n_pred == 0 or n_true == 0:
        return tp, matched
    ious = np.asarray(box_iou(pred, true), dtype=np.float64)  # (N, M)
    if hit == "iou":
        hits = ious >= iou_threshold - _IOU_TOL
        quality = ious
    else:
        centres = (pred[:, :3] + pred[:, 3:]) / 2.0
        inside = (centres[:, None, :] >= true[None, :, :3]) & (centres[:, None, :] <= true[None, :, 3:])
        hits = inside.all(axis=2)
        true_centres = (true[:, :3] + true[:, 3:]) / 2.0
        quality = -np.linalg.norm(centres[:, None, :] - true_centres[None, :, :], axis=2)
    # The greedy loop is written by hand: MONAI's matching_batch implements COCO's rule (a duplicate is a
    # false positive), while the FROC ignores duplicates; it only visits predictions that hit something.
    found = np.zeros(n_true, dtype=bool)
    order = np.argsort(-scores, kind="stable")
    for i in order[hits[order].any(axis=1)]:
        candidates = np.flatnonzero(hits[i])
        free = candidates[~found[candidates]]
        if free.size:
            j = int(free[np.argmax(quality[i, free])])
            tp[i] = True
            found[j] = True
        else:  # a duplicate: remember which lesion it repeats
            j = int(candidates[np.argmax(quality[i, candidates])])
        matched[i] = j
    return tp, matched


def match_detections(
    pred_boxes: ArrayLike,
    pred_scores: ArrayLike,
    true_boxes: ArrayLike,
    *,
    iou_threshold: float = 0.1,
    hit: str = "iou",
) -> tuple[np.ndarray, np.ndarray]:
    """Match the predicted boxes of one volume to its true lesions: which predictions are hits.

    A prediction **hits** a lesion when their 3-D IoU (:func:`monai.data.box_utils.box_iou`) is
    >= ``iou_threshold`` (``hit="iou"``, default 0.1, the lenient LUNA16-style criterion used with MONAI's
    detection metrics), or, with ``hit="center"``, when the prediction's centre lies inside the true box.
    Predictions are taken in descending score order (ties in input order); each takes the lesion it hits
    best (highest IoU, or nearest centre) among the lesions not yet found, and is then a **true positive**.
    A prediction that hits only lesions already found is a **duplicate**: neither TP nor FP (LUNA16 ignores
    them; they do not count towards the FP rate). Any other prediction is a **false positive**.

    Args:
        pred_boxes: ``(N, 6)`` predicted boxes ``[x0, y0, z0, x1, y1, z1]``.
        pred_scores: ``(N,)`` scores.
        true_boxes: ``(M, 6)`` true boxes in the same frame.
        iou_threshold: Minimum IoU for a hit, in (0, 1]. An IoU equal to it (to within float32 rounding,
            1e-6) is a hit.
        hit: ``"iou"`` or ``"center"``.

    Returns:
        ``(tp, matched)``, numpy arrays in the order of the predictions: ``tp`` (bool) is True for true
        positives; ``matched`` (int) is the index of the lesion a TP found or a duplicate repeats, and -1
        for a false positive. So: TP = ``tp``; duplicate = ``~tp & (matched >= 0)``; FP = ``matched == -1``.

    Raises:
        DataError: On boxes that are not ``(N, 6)``, non-finite or inverted, or a score count that differs.
        ConfigError: On a bad ``iou_threshold`` or ``hit``.
    """
    volume = _check_volumes(
        [{"pred_boxes": pred_boxes, "pred_scores": pred_scores, "true_boxes": true_boxes}], "detections"
    )[0]
    return _match(
        volume.pred_boxes, volume.pred_scores, volume.true_boxes, _check_iou_threshold(iou_threshold), _check_hit(hit)
    )


class _Matched(NamedTuple):
    """The matching of all volumes, flattened: one row per prediction, one per lesion."""

    scores: np.ndarray  # (P,) every prediction's score
    is_fp: np.ndarray  # (P,) bool
    lesion_score: np.ndarray  # (L,) score of the TP that found each lesion, -inf if none did
    lesion_volume: np.ndarray  # (L,) index of the volume of each lesion
    n_volumes: int
    n_duplicates: int


def _match_volumes(vols: list[_Volume], iou_threshold: float, hit: str) -> _Matched:
    iou_threshold = _check_iou_threshold(iou_threshold)
    hit = _check_hit(hit)
    scores, is_fp, lesion_score, lesion_volume = [], [], [], []
    n_duplicates = 0
    for k, v in enumerate(vols):
        tp, matched = _match(v.pred_boxes, v.pred_scores, v.true_boxes, iou_threshold, hit)
        found = np.full(v.true_boxes.shape[0], -np.inf)
        found[matched[tp]] = v.pred_scores[tp]
        scores.append(v.pred_scores)
        is_fp.append(matched < 0)
        lesion_score.append(found)
        lesion_volume.append(np.full(found.size, k, dtype=np.int64))
        n_duplicates += int((~tp & (matched >= 0)).sum())
    return _Matched(
        np.concatenate(scores),
        np.concatenate(is_fp),
        np.concatenate(lesion_score),
        np.concatenate(lesion_volume),
        len(vols),
        n_duplicates,
    )


def _require_lesions(m: _Matched, name: str) -> None:
    if m.lesion_score.size == 0:
        raise DataError(
            name,
            "holds no true lesions (every 'true_boxes' is empty), so sensitivity is undefined",
            "evaluate on a set that contains at least one lesion",
        )


# --------------------------------------------------------------------------------------------------------
# FROC
# --------------------------------------------------------------------------------------------------------


def _froc_curve(fp_probs: np.ndarray, tp_probs: np.ndarray, n_targets: int, n_images: int):
    """MONAI's compute_froc_curve_data (FP/volume and sensitivity, thresholds ascending), fast when large."""
    if fp_probs.size + tp_probs.size <= _MONAI_FROC_MAX:
        fps, sens = compute_froc_curve_data(fp_probs, tp_probs, n_targets, n_images)
        return np.asarray(fps, dtype=np.float64), np.asarray(sens, dtype=np.float64)
    # The same counts as MONAI's loop (thresholds: the distinct scores but the lowest; a prediction counts
    # when its score >= threshold; a final (0, 0) point), by binary search in the sorted scores.
    thresholds = np.unique(np.concatenate([fp_probs, tp_probs]))[1:]
    fp_sorted, tp_sorted = np.sort(fp_probs), np.sort(tp_probs)
    total_fps = np.append(fp_sorted.size - np.searchsorted(fp_sorted, thresholds, side="left"), 0)
    total_tps = np.append(tp_sorted.size - np.searchsorted(tp_sorted, thresholds, side="left"), 0)
    return total_fps / float(n_images), total_tps / float(n_targets)


def _froc_from_matched(m: _Matched, rates: tuple[float, ...], iou_threshold: float, hit: str) -> dict[str, Any]:
    # MONAI's FROC (from the CAMELYON16 code) takes the TP probability of every lesion and the probabilities
    # of the FPs, and uses every distinct probability *except the lowest* as a threshold, expecting the
    # lowest to be the 0 given to missed lesions. Missed lesions get -inf here and one -inf sentinel is added
    # to the FPs, so the lowest real score is always a threshold and scores may have any range.
    tp_probs = m.lesion_score
    fp_probs = np.append(m.scores[m.is_fp], -np.inf)
    n_lesions = int(tp_probs.size)
    fps, sens = _froc_curve(fp_probs, tp_probs, n_lesions, m.n_volumes)
    thresholds = np.append(np.unique(np.concatenate([fp_probs, tp_probs]))[1:], math.inf)
    at_fp = {r: float(compute_froc_score(fps, sens, (r,))) for r in rates}
    cpm = float(compute_froc_score(fps, sens, rates))
    n_tp = int(np.isfinite(tp_probs).sum())
    return {
        # Ascending FP rate: from the strictest threshold (+inf: nothing) to the most lenient.
        "fps_per_volume": fps[::-1].tolist(),
        "sensitivity": sens[::-1].tolist(),
        "thresholds": thresholds[::-1].tolist(),
        "at_fp": at_fp,
        "cpm": cpm,
        "fp_rates": list(rates),
        "n_lesions": n_lesions,
        "n_volumes": int(m.n_volumes),
        "n_predictions": int(m.scores.size),
        "n_true_positives": n_tp,
        "n_false_positives": int(m.is_fp.sum()),
        "n_duplicates": int(m.n_duplicates),
        "max_sensitivity": n_tp / n_lesions,
        "iou_threshold": float(iou_threshold),
        "hit": hit,
    }


def froc(
    volumes: Sequence[Mapping[str, Any]],
    *,
    iou_threshold: float = 0.1,
    fp_rates: Sequence[float] = FP_RATES,
    hit: str = "iou",
) -> dict[str, Any]:
    """Free-response ROC: lesion sensitivity against false positives per volume, and the CPM.

    Predictions are matched per volume (:func:`match_detections`: the hit rule, one TP per lesion,
    duplicates ignored). The curve and the sensitivities are MONAI's
    :func:`~monai.metrics.compute_froc_curve_data` (one point per distinct score used as a threshold,
    "positive iff score >= threshold") and :func:`~monai.metrics.compute_froc_score` (linear interpolation
    of the curve at each rate; beyond the curve's largest FP rate, the highest sensitivity reached). The
    CPM (competition performance metric, LUNA16) is the mean sensitivity at ``fp_rates``. Volumes without
    lesions count: their predictions are false positives and they are in the per-volume denominator.

    Args:
        volumes: One dict per volume with ``pred_boxes`` ``(N, 6)``, ``pred_scores`` ``(N,)`` and
            ``true_boxes`` ``(M, 6)`` (see the module docstring).
        iou_threshold: Minimum IoU for a hit.
        fp_rates: False positives per volume at which sensitivity is read (default 1/8 ... 8).
        hit: ``"iou"`` or ``"center"`` (see :func:`match_detections`).

    Returns:
        ``{"fps_per_volume", "sensitivity", "thresholds"}`` (the curve, ascending FP rate; ``thresholds[0]``
        is +inf for the (0, 0) point), ``"at_fp"`` (``{rate: sensitivity}``), ``"cpm"``, ``"fp_rates"``,
        ``"n_lesions"``, ``"n_volumes"``, ``"n_predictions"``, ``"n_true_positives"``,
        ``"n_false_positives"``, ``"n_duplicates"``, ``"max_sensitivity"`` (with every prediction),
        ``"iou_threshold"`` and ``"hit"``.

    Raises:
        DataError: On bad volumes, or when there is no lesion at all.
        ConfigError: On a bad ``iou_threshold``, ``fp_rates`` or ``hit``.
    """
    vols = _check_volumes(volumes)
    rates = _check_fp_rates(fp_rates)
    m = _match_volumes(vols, iou_threshold, hit)
    _require_lesions(m, "volumes")
    return _froc_from_matched(m, rates, iou_threshold, hit)


# --------------------------------------------------------------------------------------------------------
# COCO mAP
# --------------------------------------------------------------------------------------------------------


def coco_map(volumes: Sequence[Mapping[str, Any]], *, iou: float = 0.1) -> dict[str, Any]:
    """COCO-style average precision of the lesion class at IoU ``iou``, with MONAI's ``COCOMetric``.

    This follows MONAI's detection tutorial: :func:`monai.apps.detection.metrics.matching.matching_batch`
    with :func:`~monai.data.box_utils.box_iou` at the metric's IoU thresholds, then
    ``COCOMetric(classes=["tumour"], iou_list=[iou], max_detection=[100])``. COCO's matching differs from
    the FROC's on one point: a duplicate prediction on an already-matched lesion is a false positive here.
    Only the 100 highest-scoring predictions of each volume are used (COCO's and MONAI's default).

    Args:
        volumes: As for :func:`froc`.
        iou: IoU threshold of the reported AP and AR, in (0, 1].

    Returns:
        ``{"map", "mar", "map_iou<iou>", "mar_iou<iou>", "map_iou0.1_0.5", "mar_iou0.1_0.5", "iou",
        "n_lesions", "n_volumes", "n_predictions"}``: ``map`` (= ``map_iou0.1`` by default) is the AP at
        ``iou`` (one class, so AP = mAP); ``mar`` the recall at ``iou`` with up to 100 detections per
        volume; the ``_0.1_0.5`` entries average over IoU 0.10, 0.15, ..., 0.50 (COCOMetric's range).

    Raises:
        DataError: On bad volumes, or when there is no lesion at all.
        ConfigError: On a bad ``iou``.
    """
    vols = _check_volumes(volumes)
    iou = _check_iou_threshold(iou, "iou")
    n_lesions = sum(v.true_boxes.shape[0] for v in vols)
    if n_lesions == 0:
        raise DataError(
            "volumes",
            "holds no true lesions (every 'true_boxes' is empty), so precision and recall are undefined",
            "evaluate on a set that contains at least one lesion",
        )
    metric = COCOMetric(
        classes=["tumour"], iou_list=[iou], max_detection=[_COCO_MAX_DETECTIONS], per_class=False, verbose=False
    )
    results = matching_batch(
        iou_fn=box_iou,
        iou_thresholds=metric.iou_thresholds,
        pred_boxes=[v.pred_boxes for v in vols],
        pred_classes=[np.zeros(v.pred_boxes.shape[0], dtype=np.int64) for v in vols],
        pred_scores=[v.pred_scores for v in vols],
        gt_boxes=[v.true_boxes for v in vols],
        gt_classes=[np.zeros(v.true_boxes.shape[0], dtype=np.int64) for v in vols],
        max_detections=_COCO_MAX_DETECTIONS,
    )
    values, _ = metric(results)
    low, high, step = metric.iou_range
    suffix = f"IoU_{low:.2f}_{high:.2f}_{step:.2f}_MaxDet_{_COCO_MAX_DETECTIONS}"
    ap = float(values[f"AP_IoU_{iou:.2f}_MaxDet_{_COCO_MAX_DETECTIONS}"])
    ar = float(values[f"AR_IoU_{iou:.2f}_MaxDet_{_COCO_MAX_DETECTIONS}"])
    return {
        "map": ap,
        "mar": ar,
        f"map_iou{iou:g}": ap,
        f"mar_iou{iou:g}": ar,
        f"map_iou{low:g}_{high:g}": float(values[f"mAP_{suffix}"]),
        f"mar_iou{low:g}_{high:g}": float(values[f"mAR_{suffix}"]),
        "iou": iou,
        "n_lesions": int(n_lesions),
        "n_volumes": len(vols),
        "n_predictions": int(sum(v.pred_boxes.shape[0] for v in vols)),
    }


# --------------------------------------------------------------------------------------------------------
# Operating point and sensitivity by lesion size
# --------------------------------------------------------------------------------------------------------


def _threshold_from_matched(m: _Matched, fp_rate: float) -> float:
    if m.scores.size == 0:
        return math.inf
    # Allowed false positives in all; the small tolerance keeps e.g. 0.3 * 10 == 3 from rounding down.
    allowed = int(math.floor(fp_rate * m.n_volumes + 1e-9))
    fp_desc = np.sort(m.scores[m.is_fp])[::-1]
    if fp_desc.size <= allowed:
        return float(m.scores.min())  # every prediction fits in the budget
    # The threshold must exclude the (allowed + 1)-th highest FP: the lowest prediction score above it.
    first_excluded = fp_desc[allowed]
    above = m.scores[m.scores > first_excluded]
    return float(above.min()) if above.size else float(np.nextafter(first_excluded, math.inf))


def threshold_at_fp_rate(
    volumes: Sequence[Mapping[str, Any]],
    fp_rate: float = 1.0,
    iou_threshold: float = 0.1,
    *,
    hit: str = "iou",
) -> float:
    """The score threshold with the most sensitivity at no more than ``fp_rate`` false positives per volume.

    Choose it on **validation** volumes; it is the operating point that travels with the registered model.
    Candidates are the distinct prediction scores (rule: a box is reported iff score >= threshold); the
    result is the lowest candidate whose FP count (duplicates excluded, as in the FROC) is
    ``<= fp_rate * n_volumes``, so on these volumes the FP rate is at most ``fp_rate`` and is the largest
    achievable rate that is. When even the top-scoring prediction would exceed the budget, the result lies
    just above the highest FP score (nothing at or above it is reported); with no predictions at all it is
    ``inf``.

    Args:
        volumes: As for :func:`froc` (lesions are not required).
        fp_rate: Allowed false positives per volume, >= 0.
        iou_threshold: Minimum IoU for a hit.
        hit: ``"iou"`` or ``"center"``.

    Returns:
        The threshold as a float.

    Raises:
        DataError: On bad volumes.
        ConfigError: On a negative ``fp_rate`` or a bad ``iou_threshold`` or ``hit``.
    """
    rate = float(fp_rate)
    if not (math.isfinite(rate) and rate >= 0):
        raise ConfigError("fp_rate", f"must be a finite number >= 0, got {fp_rate!r}", "pass e.g. 1.0")
    vols = _check_volumes(volumes)
    return _threshold_from_matched(_match_volumes(vols, iou_threshold, hit), rate)


def _operating_stats(m: _Matched, threshold: float) -> dict[str, Any]:
    n_lesions = int(m.lesion_score.size)
    detected = int((np.isfinite(m.lesion_score) & (m.lesion_score >= threshold)).sum())
    low, high = wilson_interval(detected, n_lesions)
    n_fp = int((m.is_fp & (m.scores >= threshold)).sum())
    return {
        "sensitivity": detected / n_lesions if n_lesions else math.nan,
        "sensitivity_ci_low": low,
        "sensitivity_ci_high": high,
        "fp_per_volume": n_fp / m.n_volumes,
        "detected": detected,
        "n_lesions": n_lesions,
        "false_positives": n_fp,
    }


def _band_label(low: float, high: float) -> str:
    return f">={low:g} mm" if math.isinf(high) else f"{low:g}-{high:g} mm"


def _check_bands(bands_mm: Sequence[float]) -> np.ndarray:
    edges = np.asarray([float(b) for b in bands_mm], dtype=np.float64)
    if edges.size < 2 or np.isnan(edges).any() or (np.diff(edges) <= 0).any():
        raise ConfigError(
            "bands_mm", f"must be at least two increasing edges, got {list(bands_mm)!r}", "pass e.g. (0, 10, 20, inf)"
        )
    return edges


def _size_bands(vols: list[_Volume], m: _Matched, edges: np.ndarray, threshold: float) -> list[dict[str, Any]]:
    sizes = []
    for v in vols:
        sides = v.true_boxes[:, 3:] - v.true_boxes[:, :3]
        if v.spacing is not None:
            sides = sides * v.spacing
        sizes.append(sides.max(axis=1) if sides.size else np.zeros(0))
    size = np.concatenate(sizes)  # in the order of m.lesion_score
    detected = np.isfinite(m.lesion_score) & (m.lesion_score >= threshold)  # -inf: missed
    rows = []
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        in_band = (size >= low) & (size < high)
        n, k = int(in_band.sum()), int(detected[in_band].sum())
        ci_low, ci_high = wilson_interval(k, n)
        rows.append(
            {
                "band": _band_label(low, high),
                "low_mm": float(low),
                "high_mm": float(high),
                "n": n,
                "detected": k,
                "sensitivity": k / n if n else math.nan,
                "ci_low": ci_low,
                "ci_high": ci_high,
            }
        )
    return rows


def sensitivity_by_size(
    volumes: Sequence[Mapping[str, Any]],
    *,
    bands_mm: Sequence[float] = SIZE_BANDS_MM,
    spacing: ArrayLike | None = None,
    operating_score: float | None = None,
    iou_threshold: float = 0.1,
    hit: str = "iou",
) -> list[dict[str, Any]]:
    """Lesion sensitivity per size band at an operating threshold.

    A lesion's size is the longest side of its true box: in mm when the boxes are in mm; for boxes in
    voxel indices pass ``spacing`` (or give a volume its own ``"spacing"`` entry, which wins), and each
    side is multiplied by the voxel size along its axis. Band ``k`` holds the sizes in
    ``[bands_mm[k], bands_mm[k+1])``; lesions outside ``[bands_mm[0], bands_mm[-1])`` are not counted. A
    lesion is detected when its TP (see :func:`match_detections`) has a score >= ``operating_score``.

    Args:
        volumes: As for :func:`froc`.
        bands_mm: Increasing band edges; the default is 0, 10, 20, 30 mm and above.
        spacing: Voxel size ``(sx, sy, sz)`` in mm (or one number) for boxes in voxel indices.
        operating_score: Score threshold, e.g. :func:`threshold_at_fp_rate` on validation; ``None`` counts
            every prediction (the sensitivity at the end of the FROC curve).
        iou_threshold: Minimum IoU for a hit.
        hit: ``"iou"`` or ``"center"``.

    Returns:
        One dict per band: ``{"band", "low_mm", "high_mm", "n", "detected", "sensitivity", "ci_low",
        "ci_high"}``; ``sensitivity`` is NaN for an empty band; the interval is a 95% Wilson interval.

    Raises:
        DataError: On bad volumes or spacing.
        ConfigError: On bad ``bands_mm``, ``operating_score``, ``iou_threshold`` or ``hit``.
    """
    edges = _check_bands(bands_mm)
    threshold = -math.inf if operating_score is None else float(operating_score)
    if math.isnan(threshold):
        raise ConfigError("operating_score", "is NaN", "pass a threshold, e.g. from threshold_at_fp_rate()")
    vols = _check_volumes(volumes, spacing=spacing)
    return _size_bands(vols, _match_volumes(vols, iou_threshold, hit), edges, threshold)


# --------------------------------------------------------------------------------------------------------
# Volume level: is there a tumour at all?
# --------------------------------------------------------------------------------------------------------


def volume_level_scores(volumes: Sequence[Mapping[str, Any]]) -> tuple[list[float], list[int]]:
    """Per-volume tumour-presence score and label from box-level output.

    The score of a volume is its highest box score, 0.0 when it has no predicted box (box scores are
    probabilities, so 0 ranks below every box); the label is 1 when it has at least one true box.

    Args:
        volumes: As for :func:`froc`.

    Returns:
        ``(scores, labels)`` as lists, one entry per volume.

    Raises:
        DataError: On bad volumes.
    """
    vols = _check_volumes(volumes)
    scores = [float(v.pred_scores.max()) if v.pred_scores.size else 0.0 for v in vols]
    labels = [int(v.true_boxes.shape[0] > 0) for v in vols]
    return scores, labels


def volume_auroc(
    volume_scores: ArrayLike,
    volume_labels: ArrayLike,
    *,
    n_bootstraps: int = 1000,
    alpha: float = 0.05,
    seed: int | None = 0,
) -> dict[str, Any]:
    """AUROC of tumour presence per volume, with a stratified bootstrap interval (:func:`auroc_ci`).

    Args:
        volume_scores: One score per volume, e.g. from :func:`volume_level_scores`.
        volume_labels: 1 when the volume holds a tumour, else 0; both classes must be present.
        n_bootstraps: Resamples for the interval; 0 gives a NaN interval.
        alpha: One minus the confidence level.
        seed: Bootstrap seed.

    Returns:
        ``{"auroc", "ci_low", "ci_high", "n", "n_pos"}``.

    Raises:
        DataError: On bad scores or labels, or one class only.
        ConfigError: On a bad ``n_bootstraps`` or ``alpha``.
    """
    y, s = _check_pair(volume_labels, volume_scores, y_name="volume_labels", score_name="volume_scores")
    return auroc_ci(y, s, n_bootstraps=n_bootstraps, alpha=alpha, seed=seed)


# --------------------------------------------------------------------------------------------------------
# The whole evaluation
# --------------------------------------------------------------------------------------------------------


def _rate_key(rate: float) -> str:
    return f"{rate:g}fp"


def _set_report(
    vols: list[_Volume],
    raw: Sequence[Mapping[str, Any]],
    m: _Matched,
    threshold: float,
    *,
    iou_threshold: float,
    n_bootstraps: int,
    seed: int | None,
    hit: str,
    edges: np.ndarray,
) -> dict[str, Any]:
    curve = _froc_from_matched(m, FP_RATES, iou_threshold, hit)
    op = _operating_stats(m, threshold)
    coco = coco_map(raw, iou=iou_threshold)
    scores = [float(v.pred_scores.max()) if v.pred_scores.size else 0.0 for v in vols]
    labels = [int(v.true_boxes.shape[0] > 0) for v in vols]
    note = ""
    if 0 < sum(labels) < len(labels):
        auc = volume_auroc(scores, labels, n_bootstraps=n_bootstraps, seed=seed)
    else:
        auc = {"auroc": math.nan, "ci_low": math.nan, "ci_high": math.nan}
        note = "only one class: every volume " + ("holds" if sum(labels) else "lacks") + " a lesion"
    out: dict[str, Any] = {"cpm": curve["cpm"]}
    out.update({f"sens_at_{_rate_key(r)}": curve["at_fp"][r] for r in FP_RATES})
    out.update(
        {
            "map": coco["map"],
            "mar": coco["mar"],
            "volume_auroc": auc["auroc"],
            "volume_auroc_ci_low": auc["ci_low"],
            "volume_auroc_ci_high": auc["ci_high"],
            "sensitivity": op["sensitivity"],
            "sensitivity_ci_low": op["sensitivity_ci_low"],
            "sensitivity_ci_high": op["sensitivity_ci_high"],
            "fp_per_volume": op["fp_per_volume"],
            "n_volumes": len(vols),
            "n_lesions": curve["n_lesions"],
            "volume_auroc_note": note,
            "size_bands": _size_bands(vols, m, edges, threshold),
            "froc": curve,
            "coco": coco,
        }
    )
    return out


def evaluate_at_threshold(
    volumes: Sequence[Mapping[str, Any]],
    threshold: float,
    *,
    iou_threshold: float = 0.1,
    n_bootstraps: int = 1000,
    seed: int | None = 0,
    hit: str = "iou",
    bands_mm: Sequence[float] = SIZE_BANDS_MM,
    spacing: ArrayLike | None = None,
) -> dict[str, Any]:
    """One set of volumes at a given score threshold (for example the one registered with a model).

    Returns:
        ``cpm``, ``sens_at_0.125fp`` ... ``sens_at_8fp``, ``map``, ``mar``, ``volume_auroc`` (+ ``_ci_low`` /
        ``_ci_high``, NaN with ``volume_auroc_note`` when every volume is positive or every one negative),
        ``sensitivity`` (+ Wilson ``_ci_low`` / ``_ci_high``) and ``fp_per_volume`` at ``threshold``,
        ``n_volumes``, ``n_lesions``, ``size_bands``, ``froc`` and ``coco``: the test half of
        :func:`evaluate_detection`, by the same code.

    Raises:
        DataError: On bad volumes or no lesion at all.
        ConfigError: On bad parameters.
    """
    edges = _check_bands(bands_mm)
    vols = _check_volumes(volumes, spacing=spacing)
    m = _match_volumes(vols, iou_threshold, hit)
    _require_lesions(m, "volumes")
    return _set_report(
        vols,
        volumes,
        m,
        float(threshold),
        iou_threshold=iou_threshold,
        n_bootstraps=n_bootstraps,
        seed=seed,
        hit=hit,
        edges=edges,
    )


def evaluate_detection(
    val_volumes: Sequence[Mapping[str, Any]],
    test_volumes: Sequence[Mapping[str, Any]],
    *,
    fp_rate: float = 1.0,
    iou_threshold: float = 0.1,
    n_bootstraps: int = 1000,
    seed: int | None = 0,
    hit: str = "iou",
    bands_mm: Sequence[float] = SIZE_BANDS_MM,
    spacing: ArrayLike | None = None,
) -> dict[str, Any]:
    """Evaluate a 3-D tumour detector: the operating threshold on validation, everything else on test.

    1. On validation: the FROC (``val_cpm``) and the score threshold at ``fp_rate`` false positives per
       volume (:func:`threshold_at_fp_rate`).
    2. On test: the FROC, its CPM and the sensitivity at each of :data:`FP_RATES`; COCO mAP at IoU 0.1;
       the sensitivity and FP rate at the validation threshold, overall and by lesion size; and the
       volume-level AUROC of tumour presence (volume score = highest box score, 0 without boxes). A test set
       whose volumes are all positive (or all negative) gets a NaN AUROC and a note instead of an error.

    Nothing is tuned on the test set.

    Args:
        val_volumes: Validation volumes (see :func:`froc`); at least one lesion.
        test_volumes: Test volumes; at least one lesion.
        fp_rate: FP per volume of the operating point chosen on validation.
        iou_threshold: Minimum IoU for a hit (FROC, threshold, size bands); also the IoU of the mAP.
        n_bootstraps: Resamples for the volume AUROC interval.
        seed: Bootstrap seed.
        hit: ``"iou"`` or ``"center"`` (see :func:`match_detections`; the mAP always uses IoU).
        bands_mm: Size band edges for :func:`sensitivity_by_size`.
        spacing: Voxel size for boxes in voxel indices (see :func:`sensitivity_by_size`).

    Returns:
        Scalars ``val_cpm``, ``test_cpm``, ``test_sens_at_0.125fp`` ... ``test_sens_at_8fp``, ``test_map``,
        ``test_mar``, ``test_volume_auroc``, ``test_volume_auroc_ci_low``, ``test_volume_auroc_ci_high``,
        ``threshold``, ``fp_rate``, ``val_fp_per_volume``, ``val_sensitivity``, ``test_sensitivity``
        (+ ``_ci_low``/``_ci_high``, Wilson), ``test_fp_per_volume``, ``test_n_volumes``,
        ``test_n_lesions``, ``val_n_volumes``, ``val_n_lesions``, ``iou_threshold``; and the non-scalars
        ``hit``, ``test_volume_auroc_note``, ``size_bands`` (list of dicts), ``froc`` (the test FROC dict,
        for :func:`medvision.metrics.detection_plots.plot_froc`) and ``coco`` (the :func:`coco_map` dict).
        :func:`~medvision.metrics.classification.scalar_metrics` keeps the scalars (it drops an infinite
        threshold).

    Raises:
        DataError: On bad volumes, or a split without lesions.
        ConfigError: On bad parameters.
    """
    rate = float(fp_rate)
    if not (math.isfinite(rate) and rate >= 0):
        raise ConfigError("fp_rate", f"must be a finite number >= 0, got {fp_rate!r}", "pass e.g. 1.0")
    edges = _check_bands(bands_mm)
    val = _check_volumes(val_volumes, "val_volumes")
    test = _check_volumes(test_volumes, "test_volumes", spacing=spacing)
    m_val = _match_volumes(val, iou_threshold, hit)
    m_test = _match_volumes(test, iou_threshold, hit)
    _require_lesions(m_val, "val_volumes")
    _require_lesions(m_test, "test_volumes")

    val_froc = _froc_from_matched(m_val, FP_RATES, iou_threshold, hit)
    threshold = _threshold_from_matched(m_val, rate)
    val_op = _operating_stats(m_val, threshold)
    t = _set_report(
        test,
        test_volumes,
        m_test,
        threshold,
        iou_threshold=iou_threshold,
        n_bootstraps=n_bootstraps,
        seed=seed,
        hit=hit,
        edges=edges,
    )
    result: dict[str, Any] = {"val_cpm": val_froc["cpm"], "test_cpm": t["cpm"]}
    result.update({f"test_sens_at_{_rate_key(r)}": t[f"sens_at_{_rate_key(r)}"] for r in FP_RATES})
    result.update(
        {
            "test_map": t["map"],
            "test_mar": t["mar"],
            "test_volume_auroc": t["volume_auroc"],
            "test_volume_auroc_ci_low": t["volume_auroc_ci_low"],
            "test_volume_auroc_ci_high": t["volume_auroc_ci_high"],
            "threshold": threshold,
            "fp_rate": rate,
            "val_sensitivity": val_op["sensitivity"],
            "val_fp_per_volume": val_op["fp_per_volume"],
            "test_sensitivity": t["sensitivity"],
            "test_sensitivity_ci_low": t["sensitivity_ci_low"],
            "test_sensitivity_ci_high": t["sensitivity_ci_high"],
            "test_fp_per_volume": t["fp_per_volume"],
            "test_n_volumes": t["n_volumes"],
            "test_n_lesions": t["n_lesions"],
            "val_n_volumes": len(val),
            "val_n_lesions": val_froc["n_lesions"],
            "iou_threshold": float(iou_threshold),
            "hit": hit,
            "test_volume_auroc_note": t["volume_auroc_note"].replace("every volume", "every test volume"),
            "size_bands": t["size_bands"],
            "froc": t["froc"],
            "coco": t["coco"],
        }
    )
    return result
