"""3-D detection metrics: the hit rule, FROC/CPM, mAP, size bands, volume AUROC and the whole evaluation.

Most cases are built by hand so that the expected numbers can be worked out on paper (shown in comments).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from monai.metrics import compute_froc_curve_data, compute_froc_score
from sklearn.metrics import roc_auc_score

import medvision.metrics.detection as detection
from medvision.errors import ConfigError, DataError
from medvision.metrics import scalar_metrics
from medvision.metrics.detection import (
    FP_RATES,
    coco_map,
    evaluate_at_threshold,
    evaluate_detection,
    froc,
    match_detections,
    sensitivity_by_size,
    threshold_at_fp_rate,
    volume_auroc,
    volume_level_scores,
)


def cube(centre, side: float = 10.0) -> list[float]:
    """An axis-aligned cube [x0, y0, z0, x1, y1, z1] of the given side around ``centre``."""
    c = np.asarray(centre, dtype=float)
    return [*(c - side / 2.0), *(c + side / 2.0)]


FAR = (500.0, 500.0, 500.0)  # a place where no lesion is: a prediction there is a false positive


def volume(true=(), preds=(), scores=()) -> dict:
    return {"pred_boxes": [list(p) for p in preds], "pred_scores": list(scores), "true_boxes": [list(t) for t in true]}


def four_volumes_with_fps() -> list[dict]:
    """4 volumes with one lesion each, all found (TP scores 0.9, 0.7, 0.5, 0.3), FPs at 0.8 and 0.6.

    Thresholds (distinct scores) and (FP/volume, sensitivity):
      0.9 -> (0, 1/4); 0.8 -> (1/4, 1/4); 0.7 -> (1/4, 2/4); 0.6 -> (2/4, 2/4); 0.5 -> (2/4, 3/4);
      0.3 -> (2/4, 4/4); and MONAI's closing point (0, 0).
    MONAI interpolates linearly: at 1/8 -> 0.25, at 1/4 -> 0.5, at 1/2 and beyond -> 1.0.
    CPM = (0.25 + 0.5 + 5 * 1.0) / 7 = 5.75 / 7.
    """
    tp_scores = [0.9, 0.7, 0.5, 0.3]
    fp_scores = {0: 0.8, 1: 0.6}
    vols = []
    for k, s in enumerate(tp_scores):
        lesion = cube((50.0 * k + 20, 20, 20))
        preds, scores = [lesion], [s]
        if k in fp_scores:
            preds.append(cube(FAR))
            scores.append(fp_scores[k])
        vols.append(volume([lesion], preds, scores))
    return vols


def random_volumes(n: int, seed: int, *, max_lesions: int = 3, n_random: int = 4) -> list[dict]:
    """Random volumes: lesions of 4-40 mm, jittered predictions on most lesions, random boxes elsewhere."""
    rng = np.random.default_rng(seed)
    vols = []
    for _ in range(n):
        m = int(rng.integers(0, max_lesions + 1))
        centres = rng.uniform(30, 220, (m, 3))
        sides = rng.uniform(4, 40, m)
        true = [cube(c, s) for c, s in zip(centres, sides, strict=True)]
        preds, scores = [], []
        for c, s in zip(centres, sides, strict=True):
            if rng.random() < 0.8:
                preds.append(cube(c + rng.normal(0, s / 8, 3), s * rng.uniform(0.8, 1.2)))
                scores.append(float(rng.uniform(0.3, 1.0)))
        for _ in range(int(rng.integers(0, n_random + 1))):
            preds.append(cube(rng.uniform(30, 220, 3), rng.uniform(4, 40)))
            scores.append(float(rng.uniform(0.01, 0.9)))
        vols.append(volume(true, preds, scores))
    return vols


# --- the hit rule


def test_match_tp_duplicate_and_fp_in_input_order() -> None:
    lesion = cube((20, 20, 20))
    preds = [cube(FAR), cube((21, 20, 20)), lesion]  # FP, duplicate, TP
    tp, matched = match_detections(preds, [0.7, 0.8, 0.9], [lesion])
    assert tp.tolist() == [False, False, True]
    assert matched.tolist() == [-1, 0, 0]  # the duplicate points at the lesion it repeats


def test_duplicate_is_the_lower_scoring_hit_even_with_a_better_iou() -> None:
    lesion = cube((20, 20, 20))
    rough = cube((23, 20, 20))  # IoU 7/13 ~ 0.54
    tp, matched = match_detections([rough, lesion], [0.9, 0.6], [lesion])
    assert tp.tolist() == [True, False]  # the highest-scoring hit is the TP
    assert matched.tolist() == [0, 0]


def test_one_prediction_finds_one_lesion_best_iou_first() -> None:
    a, b = cube((20, 20, 20)), cube((26, 20, 20))
    big = cube((21, 20, 20), 12)  # hits both; IoU with a is higher
    tp, matched = match_detections([big, b], [0.9, 0.5], [a, b])
    assert tp.tolist() == [True, True]
    assert matched.tolist() == [0, 1]
    # Without the second prediction, lesion b is missed: one prediction never counts twice.
    tp, matched = match_detections([big], [0.9], [a, b])
    assert tp.tolist() == [True] and matched.tolist() == [0]


def test_iou_threshold_boundary() -> None:
    truth = [[0, 0, 0, 10, 10, 10]]
    exactly = [[0, 0, 0, 10, 10, 1]]  # IoU = 100 / 1000 = 0.1
    below = [[0, 0, 0, 10, 10, 0.99]]  # IoU = 0.099
    assert match_detections(exactly, [0.5], truth)[0].tolist() == [True]
    assert match_detections(below, [0.5], truth)[0].tolist() == [False]
    # 0.7 is not exact in float32 (MONAI's box_iou precision); the tolerance keeps it a hit.
    seventy = [[0, 0, 0, 10, 10, 7]]
    assert match_detections(seventy, [0.5], truth, iou_threshold=0.7)[0].tolist() == [True]
    assert match_detections(seventy, [0.5], truth, iou_threshold=0.70001)[0].tolist() == [False]


def test_center_hit_rule() -> None:
    lesion = cube((20, 20, 20), 20)
    dot = cube((24, 20, 20), 2)  # IoU 8 / 8000 = 0.001, centre inside the lesion
    beside = cube((31, 20, 20), 2)  # centre outside
    assert match_detections([dot, beside], [0.9, 0.8], [lesion])[0].tolist() == [False, False]
    tp, matched = match_detections([dot, beside], [0.9, 0.8], [lesion], hit="center")
    assert tp.tolist() == [True, False] and matched.tolist() == [0, -1]


def test_empty_inputs_and_tensors() -> None:
    tp, matched = match_detections([], [], [cube((0, 0, 0))])
    assert tp.shape == (0,) and matched.shape == (0,)
    tp, matched = match_detections(torch.tensor([cube((0, 0, 0))]), torch.tensor([0.5]), np.zeros((0, 6)))
    assert tp.tolist() == [False] and matched.tolist() == [-1]


@pytest.mark.parametrize(
    ("vol", "where", "reason"),
    [
        ({"pred_boxes": [[0, 0, 0, 1, 1]], "pred_scores": [0.5], "true_boxes": []}, "['pred_boxes']", "(N, 6)"),
        ({"pred_boxes": [[0, 0, 0, 1, 1, 1]], "pred_scores": [0.5, 0.4], "true_boxes": []}, "['pred_scores']", "1"),
        ({"pred_boxes": [], "pred_scores": [], "true_boxes": [[5, 0, 0, 1, 1, 1]]}, "['true_boxes']", "max corner"),
        ({"pred_boxes": [[0, 0, 0, 1, 1, np.nan]], "pred_scores": [0.5], "true_boxes": []}, "['pred_boxes']", "NaN"),
        ({"pred_boxes": [[0, 0, 0, 1, 1, 1]], "pred_scores": [np.inf], "true_boxes": []}, "['pred_scores']", "NaN"),
        ({"pred_boxes": [], "pred_scores": []}, "volumes[1]", "'true_boxes'"),
    ],
)
def test_bad_volumes_raise_data_error_naming_the_volume(vol, where, reason) -> None:
    good = volume([cube((0, 0, 0))], [cube((0, 0, 0))], [0.9])
    with pytest.raises(DataError) as info:
        froc([good, vol])
    assert info.value.where.startswith("volumes[1]") and info.value.where.endswith(where)
    assert reason in info.value.reason
    assert info.value.fix


def test_bad_parameters_raise_config_error() -> None:
    vols = four_volumes_with_fps()
    with pytest.raises(ConfigError):
        froc(vols, iou_threshold=0.0)
    with pytest.raises(ConfigError):
        froc(vols, iou_threshold=1.5)
    with pytest.raises(ConfigError):
        froc(vols, hit="distance")
    with pytest.raises(ConfigError):
        froc(vols, fp_rates=(0.0, 1.0))
    with pytest.raises(ConfigError):
        threshold_at_fp_rate(vols, fp_rate=-1)
    with pytest.raises(ConfigError):
        sensitivity_by_size(vols, bands_mm=(10, 5))
    with pytest.raises(DataError):
        froc({"pred_boxes": []})
    with pytest.raises(DataError):
        froc([])


# --- FROC and CPM


def test_perfect_detector_has_cpm_one_and_map_one() -> None:
    vols = [
        volume([cube((20, 20, 20)), cube((80, 80, 80), 20)], [cube((20, 20, 20)), cube((80, 80, 80), 20)], [0.9, 0.8])
    ]
    vols += [volume([cube((40, 40, 40))], [cube((40, 40, 40))], [0.95]), volume(), volume()]
    result = froc(vols)
    assert result["cpm"] == 1.0
    assert result["at_fp"] == {r: 1.0 for r in FP_RATES}
    assert result["n_lesions"] == 3 and result["n_volumes"] == 4 and result["n_false_positives"] == 0
    assert coco_map(vols)["map_iou0.1"] == pytest.approx(1.0)


def test_one_of_two_lesions_without_fps_gives_half_at_every_rate() -> None:
    a, b = cube((20, 20, 20)), cube((90, 90, 90))
    result = froc([volume([a], [a], [0.9]), volume([b])])
    assert result["at_fp"] == {r: 0.5 for r in FP_RATES}
    assert result["cpm"] == 0.5
    assert result["max_sensitivity"] == 0.5


def test_fps_at_known_scores_shift_low_rate_sensitivity_exactly() -> None:
    result = froc(four_volumes_with_fps())
    assert result["at_fp"] == {0.125: 0.25, 0.25: 0.5, 0.5: 1.0, 1.0: 1.0, 2.0: 1.0, 4.0: 1.0, 8.0: 1.0}
    assert result["cpm"] == pytest.approx(5.75 / 7, abs=1e-12)
    assert result["fps_per_volume"] == [0.0, 0.0, 0.25, 0.25, 0.5, 0.5, 0.5]
    assert result["sensitivity"] == [0.0, 0.25, 0.25, 0.5, 0.5, 0.75, 1.0]
    assert result["thresholds"] == [math.inf, 0.9, 0.8, 0.7, 0.6, 0.5, 0.3]
    assert (result["n_true_positives"], result["n_false_positives"], result["n_duplicates"]) == (4, 2, 0)


def test_volumes_without_lesions_count_in_the_fp_rate() -> None:
    # Two lesion volumes found at 0.9, and two volumes without lesions with one FP each at 0.95.
    # Points: 0.95 -> (2/4 FP/vol, 0), 0.9 -> (2/4, 1), closing (0, 0): 0 at 1/8 and 1/4, 1 from 1/2 on.
    a, b = cube((20, 20, 20)), cube((60, 60, 60))
    vols = [volume([a], [a], [0.9]), volume([b], [b], [0.9]), volume([], [cube(FAR)], [0.95])]
    vols.append(volume([], [cube(FAR)], [0.95]))
    result = froc(vols)
    assert result["at_fp"] == {0.125: 0.0, 0.25: 0.0, 0.5: 1.0, 1.0: 1.0, 2.0: 1.0, 4.0: 1.0, 8.0: 1.0}
    assert result["cpm"] == pytest.approx(5 / 7)
    # Without the empty volumes the same detector is perfect.
    assert froc(vols[:2])["cpm"] == 1.0


def test_duplicates_are_ignored_by_the_froc_but_are_fps_for_coco() -> None:
    a, b = cube((20, 20, 20)), cube((80, 80, 80))
    vols = [volume([a, b], [a, cube((21, 20, 20)), b], [0.9, 0.8, 0.7])]  # TP, duplicate, TP
    result = froc(vols)
    assert result["cpm"] == 1.0
    assert (result["n_true_positives"], result["n_false_positives"], result["n_duplicates"]) == (2, 0, 1)
    # COCO order TP, FP, TP: precision 1 up to recall 0.5 (51 of 101 recall points), then 2/3.
    assert coco_map(vols)["map"] == pytest.approx((51 + 50 * 2 / 3) / 101)


def test_agrees_with_monai_froc_called_directly() -> None:
    vols = random_volumes(40, seed=3)
    tp_probs, fp_probs, n_lesions = [], [], 0
    for v in vols:
        tp, matched = match_detections(v["pred_boxes"], v["pred_scores"], v["true_boxes"])
        scores = np.asarray(v["pred_scores"])
        lesion = np.zeros(len(v["true_boxes"]))  # CAMELYON convention: 0 for a missed lesion
        lesion[matched[tp]] = scores[tp]
        tp_probs.append(lesion)
        fp_probs.append(scores[matched == -1])
        n_lesions += len(v["true_boxes"])
    tp_probs, fp_probs = np.concatenate(tp_probs), np.concatenate(fp_probs)
    assert (tp_probs == 0).any()  # a missed lesion puts 0 among the scores, as MONAI expects
    fps, sens = compute_froc_curve_data(fp_probs, tp_probs, n_lesions, len(vols))
    expected = compute_froc_score(fps, sens, FP_RATES)
    result = froc(vols)
    assert result["cpm"] == pytest.approx(float(expected), abs=1e-12)
    assert result["fps_per_volume"] == pytest.approx(fps[::-1].tolist())
    assert result["sensitivity"] == pytest.approx(sens[::-1].tolist())
    for r in FP_RATES:
        assert result["at_fp"][r] == pytest.approx(float(compute_froc_score(fps, sens, (r,))), abs=1e-12)


def test_large_input_path_agrees_with_monai(monkeypatch) -> None:
    vols = random_volumes(60, seed=4, n_random=8)
    expected = froc(vols)
    monkeypatch.setattr(detection, "_MONAI_FROC_MAX", 0)
    assert froc(vols) == expected


def test_no_lesions_at_all_is_a_data_error() -> None:
    vols = [volume([], [cube(FAR)], [0.5]), volume()]
    for func in (froc, coco_map):
        with pytest.raises(DataError) as info:
            func(vols)
        assert "no true lesions" in info.value.reason


def test_no_predictions_gives_zero() -> None:
    result = froc([volume([cube((0, 0, 0))]), volume()])
    assert result["cpm"] == 0.0 and result["n_predictions"] == 0


# --- mAP


def test_coco_map_by_hand_and_its_keys() -> None:
    # Score order TP .9, FP .8, TP .7, FP .6, TP .5, TP .3: precision 1 up to recall 1/4 (26 of 101
    # recall points), then the interpolated precision is max(2/3, 3/5, 4/6) = 2/3.
    result = coco_map(four_volumes_with_fps())
    assert result["map_iou0.1"] == pytest.approx(76 / 101)
    assert result["map"] == result["map_iou0.1"]
    assert result["mar"] == pytest.approx(1.0)
    assert (result["n_lesions"], result["n_volumes"], result["n_predictions"]) == (4, 4, 6)
    assert "map_iou0.25" in coco_map(four_volumes_with_fps(), iou=0.25)


def test_coco_map_uses_the_iou_threshold() -> None:
    truth = [0, 0, 0, 10, 10, 10]
    pred = [0, 0, 0, 10, 10, 3]  # IoU 0.3
    vols = [volume([truth], [pred], [0.9])]
    assert coco_map(vols, iou=0.25)["map"] == pytest.approx(1.0)
    assert coco_map(vols, iou=0.35)["map"] == pytest.approx(0.0)


# --- operating threshold


def test_threshold_at_fp_rate_by_hand() -> None:
    vols = four_volumes_with_fps()  # FPs at 0.8 and 0.6 over 4 volumes
    assert threshold_at_fp_rate(vols, 0.0) == 0.9  # exclude both FPs: the lowest score above 0.8
    assert threshold_at_fp_rate(vols, 0.25) == 0.7  # one FP allowed: exclude 0.6
    assert threshold_at_fp_rate(vols, 0.5) == 0.3  # both FPs fit: every prediction
    assert threshold_at_fp_rate(vols, 8.0) == 0.3


def test_threshold_at_fp_rate_respects_the_rate_and_is_the_lowest_that_does() -> None:
    vols = random_volumes(50, seed=5, n_random=6)
    flags = [match_detections(v["pred_boxes"], v["pred_scores"], v["true_boxes"]) for v in vols]
    fp_scores = np.concatenate([np.asarray(v["pred_scores"])[m == -1] for v, (_, m) in zip(vols, flags, strict=True)])
    all_scores = np.unique(np.concatenate([v["pred_scores"] for v in vols]))
    for rate in (*FP_RATES, 0.3):
        t = threshold_at_fp_rate(vols, rate)
        assert (fp_scores >= t).sum() / len(vols) <= rate
        lower = all_scores[all_scores < t]
        if lower.size:  # the next lower candidate would break the budget
            assert (fp_scores >= lower.max()).sum() / len(vols) > rate


def test_threshold_edge_cases() -> None:
    lesion = cube((0, 0, 0))
    assert threshold_at_fp_rate([volume([lesion])], 1.0) == math.inf
    # The top prediction is an FP and no FP is allowed: nothing may be reported.
    t = threshold_at_fp_rate([volume([lesion], [cube(FAR), lesion], [0.9, 0.5])], 0.0)
    assert 0.9 < t < 0.9 + 1e-12


# --- size bands


def test_sensitivity_by_size_counts_lesions_per_band() -> None:
    sides = [5, 9.99, 10, 15, 25, 40]
    lesions = [cube((60.0 * k + 30, 30, 30), s) for k, s in enumerate(sides)]
    # Found: the 5 mm lesion at 0.9, the 10 mm at 0.4 (below the threshold used below), 15 and 40 mm at 0.8.
    found = {0: 0.9, 2: 0.4, 3: 0.8, 5: 0.8}
    vols = [
        volume([lesions[k]], [lesions[k]] if k in found else [], [found[k]] if k in found else [])
        for k in range(len(sides))
    ]
    rows = sensitivity_by_size(vols, operating_score=0.5)
    assert [r["band"] for r in rows] == ["0-10 mm", "10-20 mm", "20-30 mm", ">=30 mm"]
    assert [(r["n"], r["detected"]) for r in rows] == [(2, 1), (2, 1), (1, 0), (1, 1)]
    assert [r["sensitivity"] for r in rows] == [0.5, 0.5, 0.0, 1.0]
    assert rows[0]["ci_low"] < 0.5 < rows[0]["ci_high"]
    every = sensitivity_by_size(vols)  # no threshold: every prediction counts
    assert [(r["n"], r["detected"]) for r in every] == [(2, 1), (2, 2), (1, 0), (1, 1)]
    empty = sensitivity_by_size(vols, bands_mm=(0, 1, 50))
    assert empty[0]["n"] == 0 and math.isnan(empty[0]["sensitivity"]) and empty[1]["n"] == 6


def test_sensitivity_by_size_converts_voxels_with_spacing() -> None:
    # A box of 30 x 20 x 6 voxels: longest side 30 voxels = 15 mm at 0.5 mm, but 6 slices x 4 mm = 24 mm.
    box = [0, 0, 0, 30, 20, 6]
    vols = [volume([box], [box], [0.9])]
    bands = (0, 10, 20, 30, math.inf)
    by_voxels = sensitivity_by_size(vols, bands_mm=bands)
    assert [r["n"] for r in by_voxels] == [0, 0, 0, 1]  # 30 "mm" without spacing
    with_spacing = sensitivity_by_size(vols, bands_mm=bands, spacing=(0.5, 0.5, 4.0))
    assert [r["n"] for r in with_spacing] == [0, 0, 1, 0]
    own = [dict(vols[0], spacing=(0.5, 0.5, 1.0))]  # a volume's own spacing wins: 15 mm
    assert [r["n"] for r in sensitivity_by_size(own, bands_mm=bands, spacing=(0.5, 0.5, 4.0))] == [0, 1, 0, 0]
    with pytest.raises(DataError) as info:
        sensitivity_by_size(vols, spacing=(0.5, -1, 1))
    assert info.value.where == "spacing"


# --- volume level


def test_volume_level_scores_and_auroc_match_sklearn() -> None:
    vols = random_volumes(60, seed=6)
    scores, labels = volume_level_scores(vols)
    for v, s, y in zip(vols, scores, labels, strict=True):
        assert s == (max(v["pred_scores"]) if v["pred_scores"] else 0.0)
        assert y == int(len(v["true_boxes"]) > 0)
    result = volume_auroc(scores, labels, n_bootstraps=200)
    assert result["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert result["ci_low"] <= result["auroc"] <= result["ci_high"]
    with pytest.raises(DataError) as info:
        volume_auroc([0.1, 0.2], [1, 1])
    assert info.value.where == "volume_labels"


# --- the whole evaluation


def test_evaluate_detection_is_consistent_with_its_parts() -> None:
    val, test = random_volumes(40, seed=7), random_volumes(50, seed=8)
    result = evaluate_detection(val, test, fp_rate=1.0, n_bootstraps=200)
    test_froc = froc(test)
    assert result["val_cpm"] == froc(val)["cpm"]
    assert result["test_cpm"] == test_froc["cpm"]
    assert result["froc"] == test_froc
    rate_keys = [f"test_sens_at_{k}fp" for k in ("0.125", "0.25", "0.5", "1", "2", "4", "8")]
    assert [result[k] for k in rate_keys] == [test_froc["at_fp"][r] for r in FP_RATES]
    assert result["threshold"] == threshold_at_fp_rate(val, 1.0)
    assert result["val_fp_per_volume"] <= 1.0
    assert result["test_map"] == coco_map(test)["map_iou0.1"]
    scores, labels = volume_level_scores(test)
    assert result["test_volume_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert result["test_volume_auroc_ci_low"] <= result["test_volume_auroc"] <= result["test_volume_auroc_ci_high"]
    assert result["size_bands"] == sensitivity_by_size(test, operating_score=result["threshold"])
    assert sum(r["detected"] for r in result["size_bands"]) == round(
        result["test_sensitivity"] * test_froc["n_lesions"]
    )
    scalars = scalar_metrics(result)
    assert {"val_cpm", "test_cpm", "test_map", "test_volume_auroc", "threshold", "test_sens_at_8fp"} <= set(scalars)
    json.dumps(result)


def test_evaluate_at_threshold_is_the_test_half_of_evaluate_detection() -> None:
    val, test = random_volumes(40, seed=7), random_volumes(50, seed=8)
    full = evaluate_detection(val, test, fp_rate=0.5, n_bootstraps=200)
    one = evaluate_at_threshold(test, full["threshold"], n_bootstraps=200)
    for key in ("cpm", "map", "mar", "volume_auroc", "sensitivity", "fp_per_volume", "n_lesions", "sens_at_2fp"):
        assert one[key] == full[f"test_{key}"], key
    assert one["size_bands"] == full["size_bands"] and one["n_volumes"] == 50
    # By hand at a threshold above every score: nothing is reported.
    none = evaluate_at_threshold(test, 2.0, n_bootstraps=10)
    assert none["sensitivity"] == 0.0 and none["fp_per_volume"] == 0.0
    # The hand-counted operating points of four_volumes_with_fps.
    at = {t: evaluate_at_threshold(four_volumes_with_fps(), t, n_bootstraps=10) for t in (0.0, 0.6, 0.9)}
    assert [(at[t]["fp_per_volume"], at[t]["sensitivity"]) for t in (0.0, 0.6, 0.9)] == [
        (0.5, 1.0),
        (0.5, 0.5),
        (0, 0.25),
    ]
    assert at[0.0]["cpm"] == pytest.approx(5.75 / 7) and "only one class" in at[0.0]["volume_auroc_note"]
    with pytest.raises(DataError):
        evaluate_at_threshold([volume()], 0.5)


def test_evaluate_detection_with_one_class_test_set_reports_nan_auroc() -> None:
    vols = four_volumes_with_fps()  # every volume holds a lesion
    result = evaluate_detection(vols, vols, n_bootstraps=50)
    assert math.isnan(result["test_volume_auroc"]) and "only one class" in result["test_volume_auroc_note"]
    assert result["test_cpm"] == pytest.approx(5.75 / 7)
    assert result["threshold"] == 0.3 and result["test_fp_per_volume"] == 0.5 and result["test_sensitivity"] == 1.0
    with pytest.raises(DataError) as info:
        evaluate_detection(vols, [volume()])
    assert info.value.where == "test_volumes"
