"""Evaluation figures: each is a real PNG, and plotting leaves matplotlib's global state alone."""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image
from scipy.special import expit

from medvision.errors import DataError
from medvision.metrics import choose_operating_point
from medvision.metrics.plots import plot_confusion, plot_pr, plot_reliability, plot_roc, plot_roc_overlay


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = (rng.random(600) < 0.3).astype(int)
    logits = rng.normal(size=600) * 2.0 + 2.5 * y - 1.0
    return y, logits


def assert_png(path: Path, min_bytes: int = 10_000) -> None:
    assert path.is_file()
    assert path.stat().st_size > min_bytes
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
        assert width > 200 and height > 200
        # Not a blank canvas: many distinct colours.
        assert len(image.convert("RGB").getcolors(maxcolors=1_000_000) or []) > 20


def test_plot_roc_and_pr_with_operating_point(tmp_path, data) -> None:
    y, logits = data
    op = choose_operating_point(y, logits)
    roc = plot_roc(y, logits, tmp_path / "sub" / "roc.png", operating_point=op, label="densenet121")
    pr = plot_pr(y, logits, str(tmp_path / "pr.png"), operating_point=op["threshold"], label="densenet121")
    assert roc == tmp_path / "sub" / "roc.png" and isinstance(pr, Path)
    assert_png(roc)
    assert_png(pr)


def test_plot_reliability(tmp_path, data) -> None:
    y, logits = data
    path = plot_reliability(y, expit(logits), expit(logits / 2.0), tmp_path / "reliability.png", n_bins=10)
    assert_png(path)


def test_plot_confusion(tmp_path) -> None:
    path = plot_confusion([[50, 10], [5, 35]], tmp_path / "cm.png")
    assert_png(path, min_bytes=5_000)
    with pytest.raises(DataError) as info:
        plot_confusion([[1, 2, 3]], tmp_path / "bad.png")
    assert info.value.where == "cm"
    assert not (tmp_path / "bad.png").exists()


def test_plot_roc_overlay(tmp_path, data) -> None:
    y, logits = data
    rng = np.random.default_rng(1)
    path = plot_roc_overlay(
        {"model A": (y, logits), "model B": (y, logits + rng.normal(size=y.size))}, tmp_path / "overlay.png"
    )
    assert_png(path)
    with pytest.raises(DataError):
        plot_roc_overlay({}, tmp_path / "empty.png")
    with pytest.raises(DataError) as info:
        plot_roc_overlay({"a": (y, logits[:-1])}, tmp_path / "bad.png")
    assert info.value.where == "curves['a'][1]"


def test_plots_reject_bad_input(tmp_path, data) -> None:
    y, logits = data
    with pytest.raises(DataError) as info:
        plot_roc(y, np.r_[logits[:-1], np.nan], tmp_path / "x.png")
    assert info.value.where == "score"
    with pytest.raises(DataError) as info:
        plot_reliability(y, expit(logits), logits, tmp_path / "x.png")
    assert info.value.where == "prob_after"


def test_plotting_leaves_global_matplotlib_state_alone(tmp_path, data) -> None:
    y, logits = data
    backend = matplotlib.get_backend()
    had_pyplot = "matplotlib.pyplot" in sys.modules
    plot_roc(y, logits, tmp_path / "roc.png")
    assert matplotlib.get_backend() == backend
    if not had_pyplot:
        assert "matplotlib.pyplot" not in sys.modules
    else:  # pragma: no cover - another test imported pyplot first
        import matplotlib.pyplot as plt

        assert plt.get_fignums() == []
