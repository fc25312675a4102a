"""DeLong's paired test and the paired bootstrap, checked against brute force and against each other."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from medvision.errors import DataError
from medvision.metrics import delong_components, delong_test, paired_bootstrap


def two_models(n: int, seed: int, prevalence: float = 0.3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two correlated models: a shared latent signal plus model-specific noise of different size."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(int)
    shared = rng.normal(size=n) + 1.2 * y
    a = shared + 0.6 * rng.normal(size=n)
    b = shared + 1.0 * rng.normal(size=n)
    return y, a, b


def psi(x: float, y: float) -> float:
    return 1.0 if x > y else 0.5 if x == y else 0.0


def brute_force_delong(y, a, b) -> tuple[float, float]:
    """(diff, z) from DeLong's structural components computed with explicit pairwise loops."""
    y = list(y)
    comps = []
    for s in (a, b):
        pos = [v for v, t in zip(s, y, strict=True) if t == 1]
        neg = [v for v, t in zip(s, y, strict=True) if t == 0]
        v10 = [sum(psi(x, w) for w in neg) / len(neg) for x in pos]
        v01 = [sum(psi(x, w) for x in pos) / len(pos) for w in neg]
        comps.append((sum(v10) / len(v10), v10, v01))
    (auc_a, v10_a, v01_a), (auc_b, v10_b, v01_b) = comps
    m, n = len(v10_a), len(v01_a)

    def cov(u, v):  # sample covariance, written out
        mu, mv = sum(u) / len(u), sum(v) / len(v)
        return sum((p - mu) * (q - mv) for p, q in zip(u, v, strict=True)) / (len(u) - 1)

    s10 = [[cov(p, q) for q in (v10_a, v10_b)] for p in (v10_a, v10_b)]
    s01 = [[cov(p, q) for q in (v01_a, v01_b)] for p in (v01_a, v01_b)]
    var = (s10[0][0] + s10[1][1] - 2 * s10[0][1]) / m + (s01[0][0] + s01[1][1] - 2 * s01[0][1]) / n
    diff = auc_a - auc_b
    return diff, diff / math.sqrt(var)


def test_delong_matches_brute_force_small_example_with_ties() -> None:
    y = [1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 0]
    a = [0.9, 0.8, 0.55, 0.4, 0.55, 0.3, 0.2, 0.1, 0.4, 0.7, 0.65]
    b = [0.7, 0.9, 0.3, 0.5, 0.6, 0.5, 0.1, 0.2, 0.5, 0.35, 0.4]
    diff, z = brute_force_delong(y, a, b)
    r = delong_test(y, a, b)
    assert r["diff"] == pytest.approx(diff, abs=1e-12)
    assert r["z"] == pytest.approx(z, rel=1e-10)
    assert r["p_value"] == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-10)
    se = diff / z
    assert r["ci_low"] == pytest.approx(diff - 1.959963984540054 * se)
    assert r["ci_high"] == pytest.approx(diff + 1.959963984540054 * se)


def test_delong_components_match_pairwise_loops() -> None:
    y, a, _ = two_models(60, seed=1)
    a = np.round(a, 1)  # ties between and within classes
    auc, v10, v01 = delong_components(y, a)
    pos, neg = a[y == 1], a[y == 0]
    np.testing.assert_allclose(v10, [np.mean([psi(x, w) for w in neg]) for x in pos], atol=1e-12)
    np.testing.assert_allclose(v01, [np.mean([psi(x, w) for x in pos]) for w in neg], atol=1e-12)
    assert auc == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert v01.mean() == pytest.approx(auc, abs=1e-12)


def test_delong_diff_is_difference_of_sklearn_aurocs() -> None:
    y, a, b = two_models(2000, seed=2)
    r = delong_test(y, a, b)
    json.dumps(r)
    assert r["auroc_a"] == roc_auc_score(y, a)
    assert r["auroc_b"] == roc_auc_score(y, b)
    assert r["diff"] == roc_auc_score(y, a) - roc_auc_score(y, b)
    assert r["ci_low"] < r["diff"] < r["ci_high"]


def test_identical_scores_give_zero_difference_and_p_one() -> None:
    y, a, _ = two_models(500, seed=3)
    r = delong_test(y, a, a.copy())
    assert r["diff"] == 0.0 and r["z"] == 0.0 and r["p_value"] == 1.0
    assert r["ci_low"] == 0.0 == r["ci_high"]
    boot = paired_bootstrap(y, a, a.copy(), n_bootstraps=200)
    assert boot["diff"] == 0.0 and boot["p_value"] == 1.0 and boot["ci_low"] == 0.0 == boot["ci_high"]
    # A monotone transform ranks identically: the same as identical scores.
    r = delong_test(y, a, np.exp(a))
    assert r["diff"] == 0.0 and r["p_value"] == 1.0


def test_delong_z_agrees_with_paired_bootstrap_z() -> None:
    y, a, b = two_models(4000, seed=4)
    dl = delong_test(y, a, b)
    boot = paired_bootstrap(y, a, b, n_bootstraps=2000, seed=0)
    json.dumps(boot)
    assert boot["diff"] == dl["diff"]
    assert boot["z"] == pytest.approx(dl["z"], rel=0.1)
    assert boot["se"] == pytest.approx(dl["diff"] / dl["z"], rel=0.1)
    assert boot["ci_low"] == pytest.approx(dl["ci_low"], abs=0.005)
    assert boot["ci_high"] == pytest.approx(dl["ci_high"], abs=0.005)
    assert dl["p_value"] < 0.01 and boot["p_value"] < 0.01


def test_delong_p_value_is_uniform_under_the_null() -> None:
    """Two exchangeable models: a 5% test rejects about 5% of the time."""
    rejections, reps = 0, 300
    for rep in range(reps):
        rng = np.random.default_rng(100 + rep)
        y = (rng.random(300) < 0.4).astype(int)
        shared = rng.normal(size=300) + y
        a, b = shared + rng.normal(size=300), shared + rng.normal(size=300)
        rejections += delong_test(y, a, b)["p_value"] < 0.05
    assert 0.02 <= rejections / reps <= 0.09


def test_paired_bootstrap_is_reproducible_and_validates() -> None:
    y, a, b = two_models(300, seed=5)
    assert paired_bootstrap(y, a, b, n_bootstraps=100, seed=1) == paired_bootstrap(y, a, b, n_bootstraps=100, seed=1)
    with pytest.raises(DataError) as info:
        paired_bootstrap(y, a, b[:-1])
    assert info.value.where == "score_b"
    with pytest.raises(DataError) as info:
        delong_test(np.ones(10, int), np.arange(10.0), np.arange(10.0))
    assert info.value.where == "y_true" and "only positives" in info.value.reason
    with pytest.raises(DataError) as info:
        delong_test([0, 1], [0.2, math.nan], [0.1, 0.3])
    assert info.value.where == "score_a"
