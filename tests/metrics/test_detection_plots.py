"""Detection figures: real PNGs, boxes where the array says they are, matplotlib's global state untouched."""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image

from medvision.errors import ConfigError, DataError
from medvision.metrics.detection import froc
from medvision.metrics.detection_plots import boxes_on_slice, plot_froc, plot_slice_with_boxes


def assert_png(path: Path, min_bytes: int = 10_000) -> np.ndarray:
    assert path.is_file()
    assert path.stat().st_size > min_bytes
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB"))
    assert rgb.shape[0] > 200 and rgb.shape[1] > 200
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 20  # not a blank canvas
    return rgb


def colour_mask(rgb: np.ndarray, colour: tuple[int, int, int], tol: int = 40) -> np.ndarray:
    return (np.abs(rgb.astype(int) - np.asarray(colour)) <= tol).all(axis=2)


@pytest.fixture(scope="module")
def froc_result() -> dict:
    rng = np.random.default_rng(0)
    vols = []
    for _ in range(30):
        c = rng.uniform(30, 200, 3)
        lesion = [*(c - 8), *(c + 8)]
        preds, scores = [lesion], [float(rng.uniform(0.2, 1.0))]
        for _ in range(int(rng.integers(0, 5))):
            p = rng.uniform(30, 200, 3)
            preds.append([*(p - 5), *(p + 5)])
            scores.append(float(rng.uniform(0.0, 0.8)))
        vols.append({"pred_boxes": preds, "pred_scores": scores, "true_boxes": [lesion]})
    return froc(vols)


def test_plot_froc_writes_a_png(tmp_path, froc_result) -> None:
    path = plot_froc(froc_result, tmp_path / "sub" / "froc.png", label="retinanet")
    assert path == tmp_path / "sub" / "froc.png"
    assert_png(path)


def test_plot_froc_rejects_other_dicts(tmp_path, froc_result) -> None:
    with pytest.raises(DataError) as info:
        plot_froc({"auroc": 0.9}, tmp_path / "x.png")
    assert info.value.where == "froc_result"
    with pytest.raises(DataError):
        plot_froc(dict(froc_result, sensitivity=[0.5]), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_plot_slice_with_boxes_draws_green_truth_and_red_predictions(tmp_path) -> None:
    rng = np.random.default_rng(1)
    image = rng.normal(size=(160, 120))
    image[40:70, 30:60] += 4.0
    bare = assert_png(plot_slice_with_boxes(image, None, None, None, tmp_path / "bare.png"))
    rgb = assert_png(
        plot_slice_with_boxes(
            image, [[40, 30, 70, 60]], [[42, 28, 72, 61], [120, 80, 140, 100]], [0.93, 0.41], tmp_path / "boxes.png"
        )
    )
    green, red = (0, 192, 0), (255, 32, 32)
    # The legend shows both colours in either figure; the boxes add many more pixels of each.
    assert colour_mask(rgb, green).sum() > colour_mask(bare, green).sum() + 200
    assert colour_mask(rgb, red).sum() > colour_mask(bare, red).sum() + 200
    # The truth box is drawn where image[40:70, 30:60] is: in the upper-left part of the figure.
    rows, cols = np.nonzero(colour_mask(rgb, green) & ~colour_mask(bare, green))
    assert rows.mean() < rgb.shape[0] * 0.5 and cols.mean() < rgb.shape[1] * 0.55


def test_plot_slice_rejects_bad_input(tmp_path) -> None:
    image = np.zeros((64, 64))
    with pytest.raises(DataError) as info:
        plot_slice_with_boxes(np.zeros((4, 4, 4)), None, None, None, tmp_path / "x.png")
    assert info.value.where == "image_2d"
    with pytest.raises(DataError) as info:
        plot_slice_with_boxes(image, [[0, 0, 1]], None, None, tmp_path / "x.png")
    assert info.value.where == "true_boxes_2d"
    with pytest.raises(DataError) as info:
        plot_slice_with_boxes(image, None, [[0, 0, 1, 1]], [0.5, 0.4], tmp_path / "x.png")
    assert info.value.where == "pred_scores"


def test_boxes_on_slice() -> None:
    boxes = [[0, 1, 2, 10, 11, 5], [3, 4, 6, 8, 9, 9]]
    out, scores = boxes_on_slice(boxes, 4, scores=[0.9, 0.8])  # z in [2, 5) crosses; [6, 9) does not
    assert out.tolist() == [[0, 1, 10, 11]] and scores.tolist() == [0.9]
    out, _ = boxes_on_slice(boxes, 5, axis=0)  # x: both cross; keep (y, z)
    assert out.tolist() == [[1, 2, 11, 5], [4, 6, 9, 9]]
    assert boxes_on_slice([], 0)[0].shape == (0, 4)
    with pytest.raises(ConfigError):
        boxes_on_slice(boxes, 0, axis=3)


def test_plotting_leaves_global_matplotlib_state_alone(tmp_path, froc_result) -> None:
    backend = matplotlib.get_backend()
    had_pyplot = "matplotlib.pyplot" in sys.modules
    plot_froc(froc_result, tmp_path / "froc.png")
    plot_slice_with_boxes(np.eye(32), None, None, None, tmp_path / "slice.png")
    assert matplotlib.get_backend() == backend
    if not had_pyplot:
        assert "matplotlib.pyplot" not in sys.modules
