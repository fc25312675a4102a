"""Temperature scaling, expected calibration error and Brier score."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.special import expit
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from medvision.errors import ConfigError, DataError
from medvision.metrics import (
    apply_temperature,
    calibration_report,
    expected_calibration_error,
    fit_temperature,
)


def overconfident(n: int, seed: int, factor: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from calibrated logits; returns (y, logits * factor)."""
    rng = np.random.default_rng(seed)
    true_logit = rng.normal(0.0, 1.5, n)
    y = (rng.random(n) < expit(true_logit)).astype(int)
    return y, factor * true_logit


@pytest.mark.parametrize("factor", [3.0, 0.5])
def test_fitted_temperature_recovers_known_factor(factor) -> None:
    y, logits = overconfident(20000, seed=0, factor=factor)
    t = fit_temperature(logits, y)
    assert isinstance(t, float)
    assert t == pytest.approx(factor, rel=0.06)


def test_fitted_temperature_minimises_sklearn_log_loss() -> None:
    y, logits = overconfident(3000, seed=1)
    t = fit_temperature(logits, y)
    best = log_loss(y, expit(logits / t))
    for other in (t * 0.97, t * 1.03):
        assert log_loss(y, expit(logits / other)) > best


def test_temperature_scaling_reduces_ece_and_keeps_auroc() -> None:
    y_val, l_val = overconfident(5000, seed=2)
    y_test, l_test = overconfident(5000, seed=3)
    t = fit_temperature(l_val, y_val)
    report = calibration_report(y_test, l_test, t)
    json.dumps(report)
    assert report["temperature"] == t
    assert report["ece_after"] < 0.03 < 0.08 < report["ece_before"]
    assert report["brier_after"] < report["brier_before"]
    assert roc_auc_score(y_test, apply_temperature(l_test, t)) == pytest.approx(roc_auc_score(y_test, l_test))


def test_brier_equals_sklearn() -> None:
    y, logits = overconfident(1000, seed=4)
    report = calibration_report(y, logits, 2.0)
    assert report["brier_before"] == brier_score_loss(y, expit(logits))
    assert report["brier_after"] == brier_score_loss(y, expit(logits / 2.0))


@pytest.mark.parametrize(
    ("logits", "y"),
    [
        ([0.3, 1.2, -0.4], [1, 1, 1]),  # one class
        ([0.0, 0.0, 0.0, 0.0], [0, 1, 0, 1]),  # all logits zero: T has no effect
        ([2.0], [1]),  # one sample
    ],
)
def test_degenerate_input_gives_temperature_one(logits, y) -> None:
    assert fit_temperature(logits, y) == 1.0


def test_fit_temperature_bad_input() -> None:
    with pytest.raises(DataError) as info:
        fit_temperature([0.1, np.nan], [0, 1])
    assert info.value.where == "logits_val"
    with pytest.raises(DataError) as info:
        fit_temperature([0.1, 0.2], [0, 3])
    assert info.value.where == "y_val"
    with pytest.raises(DataError) as info:
        fit_temperature([0.1, 0.2, 0.3], [0, 1])
    assert "has 3 values but y_val has 2" in info.value.reason


def test_apply_temperature() -> None:
    logits = np.array([-800.0, -2.0, 0.0, 2.0, 800.0])
    np.testing.assert_allclose(apply_temperature(logits, 2.0), expit(logits / 2.0))
    assert apply_temperature(logits, 1.0)[0] == 0.0 and apply_temperature(logits, 1.0)[-1] == 1.0
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ConfigError):
            apply_temperature(logits, bad)


def test_ece_of_calibrated_probabilities_is_small() -> None:
    rng = np.random.default_rng(5)
    prob = rng.random(50000)
    y = (rng.random(50000) < prob).astype(int)
    assert expected_calibration_error(y, prob) < 0.015


def test_ece_hand_example() -> None:
    # First bin: probs 0, 0 -> conf 0, frac 0.5; the bin holding 0.9: conf 0.9, frac 1.
    y = [0, 1, 1, 1]
    prob = [0.0, 0.0, 0.9, 0.9]
    assert expected_calibration_error(y, prob) == pytest.approx(0.5 * 0.5 + 0.5 * 0.1)
    # Constant wrong confidence: ECE = |acc - conf|.
    assert expected_calibration_error([1, 1, 0, 0], [0.8] * 4, n_bins=10) == pytest.approx(0.3)


@pytest.mark.parametrize("n_bins", [5, 15, 20])
def test_ece_matches_weighted_sklearn_calibration_curve(n_bins) -> None:
    rng = np.random.default_rng(6)
    prob = np.r_[rng.beta(0.5, 2.0, 3000), np.linspace(0, 1, n_bins + 1)]  # include the bin edges
    y = (rng.random(prob.size) < prob**1.5).astype(int)
    frac, conf = calibration_curve(y, prob, n_bins=n_bins, strategy="uniform")
    # Bin sizes by brute force: bin b holds edges[b] < p <= edges[b+1] (sklearn's rule), 0 in the first bin.
    edges = np.linspace(0, 1, n_bins + 1)
    sizes = [
        np.sum((prob > lo) & (prob <= hi)) + (np.sum(prob == 0) if b == 0 else 0)
        for b, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True))
    ]
    sizes = np.array([c for c in sizes if c > 0])
    assert sizes.sum() == prob.size
    expected = float(np.sum(sizes / prob.size * np.abs(frac - conf)))
    assert expected_calibration_error(y, prob, n_bins=n_bins) == pytest.approx(expected, abs=1e-12)


def test_ece_bad_input() -> None:
    with pytest.raises(DataError) as info:
        expected_calibration_error([0, 1], [0.2, 1.5])
    assert info.value.where == "prob"
    with pytest.raises(ConfigError):
        expected_calibration_error([0, 1], [0.2, 0.5], n_bins=0)
