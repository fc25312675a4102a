"""AUROC with bootstrap CI, operating points, confusion statistics, subgroups and the whole evaluation."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
from scipy import stats
from scipy.special import expit
from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score, roc_curve

from medvision.errors import ConfigError, DataError
from medvision.metrics import (
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
from medvision.metrics.classification import _RankAUC, _resample_counts


def binormal(n_pos: int, n_neg: int, d: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Negatives ~ N(0, 1), positives ~ N(d, 1): the true AUROC is Phi(d / sqrt(2))."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n_pos, dtype=int), np.zeros(n_neg, dtype=int)]
    s = np.r_[rng.normal(d, 1.0, n_pos), rng.normal(0.0, 1.0, n_neg)]
    return y, s


def true_auroc(d: float) -> float:
    return float(stats.norm.cdf(d / math.sqrt(2.0)))


# --- input checks


@pytest.mark.parametrize(
    ("y", "s", "where", "reason"),
    [
        ([0, 1, 1], [0.1, 0.2], "y_score", "has 2 values but y_true has 3"),
        ([0, 2, 1], [0.1, 0.2, 0.3], "y_true", "labels must be 0 or 1"),
        ([0, 1, 1], [0.1, np.nan, 0.3], "y_score", "NaN"),
        ([1, 1, 1], [0.1, 0.2, 0.3], "y_true", "only positives"),
        ([0, 0], [0.1, 0.2], "y_true", "only negatives"),
        ([], [], "y_true", "empty"),
        ([0, np.nan, 1], [0.1, 0.2, 0.3], "y_true", "NaN label"),
        (np.zeros((2, 2)), [0.1, 0.2], "y_true", "1-D"),
    ],
)
def test_bad_input_raises_data_error_naming_the_argument(y, s, where, reason) -> None:
    for func in (auroc_ci, auprc, choose_operating_point):
        with pytest.raises(DataError) as info:
            func(y, s)
        assert info.value.where == where
        assert reason in info.value.reason
        assert info.value.fix


def test_bad_parameters_raise_config_error() -> None:
    y, s = binormal(20, 20, 1.0, seed=0)
    with pytest.raises(ConfigError):
        auroc_ci(y, s, n_bootstraps=-1)
    with pytest.raises(ConfigError):
        auroc_ci(y, s, alpha=1.5)
    with pytest.raises(ConfigError):
        choose_operating_point(y, s, method="f1")
    with pytest.raises(ConfigError):
        choose_operating_point(y, s, method="sensitivity", target_sensitivity=0.0)


def test_labels_accept_bool_float_and_column_vectors() -> None:
    y, s = binormal(30, 40, 1.0, seed=1)
    ref = roc_auc_score(y, s)
    assert auroc_ci(y.astype(bool), s, n_bootstraps=10)["auroc"] == ref
    assert auroc_ci(y.astype(float), s, n_bootstraps=10)["auroc"] == ref
    assert auroc_ci(y[:, None], s[:, None], n_bootstraps=10)["auroc"] == ref


# --- AUROC


@pytest.mark.parametrize("rounding", [None, 1, 0])  # 0 decimals: heavy ties
def test_auroc_point_estimate_equals_sklearn(rounding) -> None:
    y, s = binormal(137, 411, 0.8, seed=2)
    if rounding is not None:
        s = np.round(s, rounding)
    result = auroc_ci(y, s, n_bootstraps=50)
    assert result["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-15)
    assert (result["n"], result["n_pos"]) == (548, 137)
    assert all(isinstance(result[k], float) for k in ("auroc", "ci_low", "ci_high"))
    assert all(type(result[k]) is int for k in ("n", "n_pos"))


@pytest.mark.parametrize("rounding", [None, 0])
def test_rank_engine_equals_sklearn_with_resample_weights(rounding) -> None:
    """A resample is a weighting of the samples: each row must equal sklearn with ``sample_weight``."""
    y, s = binormal(60, 90, 0.7, seed=3)
    if rounding is not None:
        s = np.round(s, rounding)
    pos, neg = s[y == 1], s[y == 0]
    rng = np.random.default_rng(0)
    w_pos, w_neg = _resample_counts(rng, 5, pos.size), _resample_counts(rng, 5, neg.size)
    assert np.all(w_pos.sum(axis=1) == pos.size) and np.all(w_neg.sum(axis=1) == neg.size)
    got = _RankAUC(pos, neg)(w_pos, w_neg)
    y_sorted = np.r_[np.ones(pos.size), np.zeros(neg.size)]
    s_sorted = np.r_[pos, neg]
    for b in range(5):
        weight = np.r_[w_pos[b], w_neg[b]]
        assert got[b] == pytest.approx(roc_auc_score(y_sorted, s_sorted, sample_weight=weight), abs=1e-12)
    unit = _RankAUC(pos, neg)(np.ones((1, pos.size)), np.ones((1, neg.size)))
    assert unit[0] == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_bootstrap_is_stratified_and_reproducible() -> None:
    y, s = binormal(5, 300, 1.0, seed=4)  # few positives: an unstratified bootstrap would draw none
    a = auroc_bootstrap_distribution(y, s, n_bootstraps=300, seed=7)
    b = auroc_bootstrap_distribution(y, s, n_bootstraps=300, seed=7)
    c = auroc_bootstrap_distribution(y, s, n_bootstraps=300, seed=8)
    assert np.isfinite(a).all() and a.shape == (300,)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_ci_contains_estimate_and_narrows_with_n() -> None:
    widths = []
    for n in (100, 1000, 10000):
        y, s = binormal(n // 2, n // 2, 1.0, seed=n)
        r = auroc_ci(y, s, n_bootstraps=500)
        assert r["ci_low"] <= r["auroc"] <= r["ci_high"]
        widths.append(r["ci_high"] - r["ci_low"])
    assert widths[0] > widths[1] > widths[2]
    # The width shrinks like 1/sqrt(n): about sqrt(10) per step.
    assert 2.0 < widths[0] / widths[1] < 5.0
    assert 2.0 < widths[1] / widths[2] < 5.0


def test_bootstrap_mean_and_sd_match_binormal_truth() -> None:
    d = 1.2
    y, s = binormal(2000, 3000, d, seed=5)
    boot = auroc_bootstrap_distribution(y, s, n_bootstraps=1000, seed=0)
    assert boot.mean() == pytest.approx(true_auroc(d), abs=0.01)
    # The spread agrees with the Hanley-McNeil standard error of an AUROC.
    auc, n1, n0 = true_auroc(d), 2000, 3000
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    se_hm = math.sqrt((auc * (1 - auc) + (n1 - 1) * (q1 - auc**2) + (n0 - 1) * (q2 - auc**2)) / (n1 * n0))
    assert boot.std() == pytest.approx(se_hm, rel=0.2)


def test_ci_coverage_on_repeated_binormal_samples() -> None:
    d, truth, hits, reps = 1.0, true_auroc(1.0), 0, 100
    for rep in range(reps):
        y, s = binormal(100, 150, d, seed=1000 + rep)
        r = auroc_ci(y, s, n_bootstraps=300, seed=rep)
        hits += r["ci_low"] <= truth <= r["ci_high"]
    assert 0.85 <= hits / reps <= 1.0


def test_auroc_ci_is_fast() -> None:
    y, s = binormal(3000, 7000, 1.0, seed=6)
    auroc_ci(y[::50], s[::50], n_bootstraps=10)  # warm-up
    start = time.perf_counter()
    auroc_ci(y, s, n_bootstraps=1000)
    elapsed = time.perf_counter() - start
    # About 0.4 s on two shared CPU cores; the bound leaves room for a busy machine.
    assert elapsed < 2.0


def test_zero_bootstraps_gives_nan_interval() -> None:
    y, s = binormal(20, 20, 1.0, seed=7)
    r = auroc_ci(y, s, n_bootstraps=0)
    assert math.isnan(r["ci_low"]) and math.isnan(r["ci_high"])
    assert r["auroc"] == roc_auc_score(y, s)


def test_auprc_equals_sklearn_average_precision() -> None:
    y, s = binormal(80, 420, 1.0, seed=8)
    assert auprc(y, s) == average_precision_score(y, s)
    assert isinstance(auprc(y, s), float)


# --- operating point


def test_youden_threshold_is_argmax_of_sklearn_roc_curve() -> None:
    y, s = binormal(300, 700, 1.0, seed=9)
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    best = int(np.argmax(tpr - fpr))
    op = choose_operating_point(y, s)
    assert op["method"] == "youden"
    assert op["threshold"] == thr[best]
    assert op["sensitivity"] == pytest.approx(tpr[best])
    assert op["specificity"] == pytest.approx(1 - fpr[best])
    # Youden's J is maximal over every possible threshold (each distinct score).
    j = [np.mean(s[y == 1] >= t) + np.mean(s[y == 0] < t) - 1 for t in np.unique(s)]
    assert op["sensitivity"] + op["specificity"] - 1 == pytest.approx(max(j))


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 0.95, 1.0])
def test_sensitivity_operating_point_is_highest_threshold_meeting_target(target) -> None:
    y, s = binormal(100, 300, 1.0, seed=10)
    s = np.round(s, 1)  # ties
    op = choose_operating_point(y, s, method="sensitivity", target_sensitivity=target)
    sens_at = np.mean(s[y == 1] >= op["threshold"])
    assert sens_at >= target
    assert op["sensitivity"] == pytest.approx(sens_at)
    assert op["specificity"] == pytest.approx(np.mean(s[y == 0] < op["threshold"]))
    higher = np.unique(s)[np.unique(s) > op["threshold"]]
    assert all(np.mean(s[y == 1] >= t) < target for t in higher)


def test_sensitivity_target_met_exactly_despite_rounding() -> None:
    y = np.r_[np.ones(10, dtype=int), np.zeros(10, dtype=int)]
    s = np.r_[np.arange(10, 20), np.arange(10)] / 20.0
    op = choose_operating_point(y, s, method="sensitivity", target_sensitivity=0.9)
    assert op["sensitivity"] == pytest.approx(0.9)  # 9/10, not 10/10
    assert op["threshold"] == 11 / 20


# --- confusion statistics


@pytest.mark.parametrize("threshold", [-1.0, 0.0, 0.5, 1.3, 10.0])
def test_binary_stats_counts_equal_sklearn_confusion_matrix(threshold) -> None:
    y, s = binormal(120, 380, 1.0, seed=11)
    st = binary_stats(y, s, threshold)
    tn, fp, fn, tp = confusion_matrix(y, (s >= threshold).astype(int), labels=[0, 1]).ravel()
    assert (st["tn"], st["fp"], st["fn"], st["tp"]) == (tn, fp, fn, tp)
    assert st["accuracy"] == pytest.approx((tp + tn) / 500)
    if tp + fp:
        assert st["ppv"] == pytest.approx(tp / (tp + fp))
    json.dumps(st)  # plain Python types


def test_binary_stats_decision_rule_is_score_at_least_threshold() -> None:
    st = binary_stats([0, 1, 1], [0.5, 0.5, 0.7], 0.5)
    assert (st["tp"], st["fp"], st["tn"], st["fn"]) == (2, 1, 0, 0)


def test_binary_stats_undefined_ratios_are_nan() -> None:
    st = binary_stats([0, 0, 0], [0.1, 0.2, 0.3], 0.5)  # no positives, no predicted positives
    assert math.isnan(st["sensitivity"]) and math.isnan(st["ppv"]) and math.isnan(st["f1"])
    assert math.isnan(st["sensitivity_ci_low"])
    assert st["specificity"] == 1.0 and st["npv"] == 1.0


def test_binary_stats_wilson_intervals_match_formula() -> None:
    y = np.r_[np.ones(40, dtype=int), np.zeros(60, dtype=int)]
    s = np.r_[np.r_[np.ones(33), np.zeros(7)], np.r_[np.zeros(51), np.ones(9)]]
    st = binary_stats(y, s, 0.5)
    z = stats.norm.ppf(0.975)

    def wilson(k: int, n: int) -> tuple[float, float]:
        p = k / n
        centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
        half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
        return centre - half, centre + half

    assert (st["sensitivity_ci_low"], st["sensitivity_ci_high"]) == pytest.approx(wilson(33, 40))
    assert (st["specificity_ci_low"], st["specificity_ci_high"]) == pytest.approx(wilson(51, 60))
    assert wilson_interval(40, 40)[1] == pytest.approx(1.0)


# --- subgroups


@pytest.mark.parametrize(
    ("age", "band"),
    [
        (0, "<18"),
        (17.9, "<18"),
        (18, "18-39"),
        (39.5, "18-39"),
        (40, "40-59"),
        (59, "40-59"),
        (60, "60-79"),
        (79.99, "60-79"),
        (80, "80+"),
        (104, "80+"),
        ("65", "60-79"),
        (None, "unknown"),
        (float("nan"), "unknown"),
        (-3, "unknown"),
        ("n/a", "unknown"),
    ],
)
def test_age_band(age, band) -> None:
    assert age_band(age) == band


def test_subgroup_auroc_values_and_single_class_note() -> None:
    y, s = binormal(200, 300, 1.0, seed=12)
    rng = np.random.default_rng(0)
    sex = rng.choice(["F", "M"], size=y.size)
    ages = rng.uniform(5, 95, size=y.size).astype(object)
    ages[:10] = None
    view = np.where(y == 1, "PA", "AP")  # each view holds one class only
    rows = subgroup_auroc(y, s, {"sex": sex, "age_band": [age_band(a) for a in ages], "view": view})
    json.dumps(rows)
    by_key = {(r["attribute"], r["group"]): r for r in rows}
    for g in ("F", "M"):
        r = by_key[("sex", g)]
        mask = sex == g
        assert r["auroc"] == pytest.approx(roc_auc_score(y[mask], s[mask]), abs=1e-15)
        assert r["n"] == mask.sum() and r["n_pos"] == y[mask].sum()
        assert r["ci_low"] <= r["auroc"] <= r["ci_high"]
        assert r["note"] == ""
    assert [r["group"] for r in rows if r["attribute"] == "age_band"] == [
        "<18",
        "18-39",
        "40-59",
        "60-79",
        "80+",
        "unknown",
    ]
    assert by_key[("age_band", "unknown")]["n"] == 10
    for g in ("AP", "PA"):
        r = by_key[("view", g)]
        assert math.isnan(r["auroc"]) and math.isnan(r["ci_low"])
        assert r["note"] == "only one class"


def test_subgroup_auroc_small_group_note_and_length_check() -> None:
    y = np.r_[np.ones(3, dtype=int), np.zeros(30, dtype=int)]
    s = np.linspace(0, 1, 33)[::-1]
    rows = subgroup_auroc(y, s, {"site": ["a"] * 33})
    assert "fewer than" in rows[0]["note"] and rows[0]["auroc"] == 1.0
    with pytest.raises(DataError) as info:
        subgroup_auroc(y, s, {"sex": ["F"] * 5})
    assert info.value.where == "groups['sex']"


# --- whole evaluation


def synthetic_logits(n: int, seed: int, overconfidence: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from calibrated logits; the model reports them multiplied by ``overconfidence``."""
    rng = np.random.default_rng(seed)
    true_logit = rng.normal(-0.5, 1.5, n)
    y = (rng.random(n) < expit(true_logit)).astype(int)
    return y, overconfidence * true_logit


def test_evaluate_binary_end_to_end() -> None:
    y_val, l_val = synthetic_logits(3000, seed=13)
    y_test, l_test = synthetic_logits(4000, seed=14)
    rng = np.random.default_rng(1)
    groups = {"sex": rng.choice(["F", "M"], 4000), "view": ["PA"] * 4000}
    res = evaluate_binary(
        y_val=y_val, logits_val=l_val, y_test=y_test, logits_test=l_test, groups_test=groups, n_bootstraps=300
    )
    json.dumps(res)
    assert res["temperature"] == pytest.approx(3.0, rel=0.1)
    assert res["test_auroc"] == pytest.approx(roc_auc_score(y_test, l_test), abs=1e-15)
    assert res["val_auroc"] == pytest.approx(roc_auc_score(y_val, l_val), abs=1e-15)
    assert res["test_auprc"] == pytest.approx(average_precision_score(y_test, l_test))
    assert res["test_auroc_ci_low"] <= res["test_auroc"] <= res["test_auroc_ci_high"]
    assert res["test_ece"] < res["test_ece_uncalibrated"]

    # The threshold is a calibrated probability chosen on validation ...
    prob_val = expit(l_val / res["temperature"])
    op = choose_operating_point(y_val, prob_val)
    assert res["operating_point"]["threshold"] == pytest.approx(op["threshold"])
    # ... and applied unchanged to the calibrated test probabilities.
    pred = expit(l_test / res["temperature"]) >= res["operating_point"]["threshold"]
    tn, fp, fn, tp = confusion_matrix(y_test, pred.astype(int), labels=[0, 1]).ravel()
    assert res["confusion_matrix"] == [[tn, fp], [fn, tp]]
    assert res["test_sensitivity"] == pytest.approx(tp / (tp + fn))
    assert res["test_specificity"] == pytest.approx(tn / (tn + fp))

    assert {(r["attribute"], r["group"]) for r in res["subgroups"]} == {
        ("sex", "F"),
        ("sex", "M"),
        ("view", "PA"),
    }

    scalars = scalar_metrics(res)
    for key in (
        "test_auroc",
        "test_auroc_ci_low",
        "test_auroc_ci_high",
        "test_auprc",
        "test_sensitivity",
        "test_specificity",
        "test_ppv",
        "test_npv",
        "test_accuracy",
        "test_ece",
        "test_brier",
        "val_auroc",
        "temperature",
    ):
        assert isinstance(scalars[key], float)
    assert not {"operating_point", "confusion_matrix", "subgroups", "test_stats"} & scalars.keys()


def test_operating_point_does_not_look_at_test_labels() -> None:
    y_val, l_val = synthetic_logits(1000, seed=15)
    y_test, l_test = synthetic_logits(1000, seed=16)
    a = evaluate_binary(y_val=y_val, logits_val=l_val, y_test=y_test, logits_test=l_test, n_bootstraps=0)
    b = evaluate_binary(y_val=y_val, logits_val=l_val, y_test=1 - y_test, logits_test=l_test, n_bootstraps=0)
    assert a["operating_point"] == b["operating_point"]
    assert a["temperature"] == b["temperature"]


def test_evaluate_binary_sensitivity_operating_point() -> None:
    y_val, l_val = synthetic_logits(2000, seed=17)
    y_test, l_test = synthetic_logits(2000, seed=18)
    res = evaluate_binary(
        y_val=y_val,
        logits_val=l_val,
        y_test=y_test,
        logits_test=l_test,
        operating_point="sensitivity",
        target_sensitivity=0.95,
        n_bootstraps=0,
    )
    assert res["operating_point"]["sensitivity"] >= 0.95
    assert res["test_sensitivity"] == pytest.approx(0.95, abs=0.03)


def test_evaluate_binary_names_the_bad_split() -> None:
    y_val, l_val = synthetic_logits(100, seed=19)
    with pytest.raises(DataError) as info:
        evaluate_binary(y_val=y_val, logits_val=l_val, y_test=np.zeros(50, int), logits_test=np.zeros(50))
    assert info.value.where == "y_test"
    with pytest.raises(DataError) as info:
        evaluate_binary(y_val=y_val, logits_val=l_val[:-1], y_test=y_val, logits_test=l_val)
    assert info.value.where == "logits_val"


def test_scalar_metrics_filters() -> None:
    out = scalar_metrics(
        {"a": 1, "b": 0.5, "c": math.nan, "d": math.inf, "e": True, "f": "x", "g": [1], "h": np.float32(2)}
    )
    assert out.keys() == {"a", "b", "c", "h"}
    assert all(type(v) is float for v in out.values())
