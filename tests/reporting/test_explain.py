"""Grad-CAM heatmaps (MONAI's GradCAM on the classifier's feature layer) and the overlay PNG (issue 5)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from PIL import Image

from medvision.models import create_model
from medvision.reporting.explain import (
    COLORMAP,
    MAX_ALPHA,
    GradCamExplainer,
    display_image,
    heatmap_to_display,
    normalise_maps,
    write_overlay,
)
from tests.conftest import write_dicom


def _model(backbone: str = "resnet18") -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(backbone, weights="none", in_channels=1, num_classes=1).eval()


def _blobs(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Images with one bright blob each, at different places."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    out = []
    for _ in range(n):
        cy, cx = rng.integers(10, size - 10, 2)
        img = rng.normal(0, 0.1, (size, size)) + 2.0 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 30.0)
        out.append(img)
    return torch.as_tensor(np.stack(out)[:, None], dtype=torch.float32)


def test_normalise_maps_scales_each_map_and_keeps_zero_maps_zero() -> None:
    maps = torch.tensor([[[0.0, 2.0], [4.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]], [[3.0, 3.0], [3.0, 3.0]]])
    out = normalise_maps(maps)
    assert out[0].tolist() == [[0.0, 0.5], [1.0, 0.25]]
    assert out[1].tolist() == [[0.0, 0.0], [0.0, 0.0]]
    assert out[2].tolist() == [[0.0, 0.0], [0.0, 0.0]]  # no contrast: nothing to point at


@pytest.mark.parametrize("backbone", ["resnet18", pytest.param("densenet121", marks=pytest.mark.slow)])
def test_heatmaps_have_the_input_shape_are_normalised_and_differ_between_inputs(backbone: str) -> None:
    model = _model(backbone)
    x = _blobs(3)
    with torch.no_grad():
        expected = model(x)[:, 0]
    explainer = GradCamExplainer(model)
    logits, maps = explainer(x)
    explainer.close()
    assert logits.shape == (3,) and maps.shape == (3, 64, 64)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)  # one forward pass gives both
    assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0
    for m in maps:
        assert float(m.max()) == pytest.approx(1.0) or float(m.max()) == 0.0
    assert not torch.allclose(maps[0], maps[1], atol=1e-3)
    assert not torch.allclose(maps[1], maps[2], atol=1e-3)
    assert explainer.target_layer == model.feature_layer_name


def test_frozen_backbone_gives_the_same_map_as_monai_with_trainable_parameters() -> None:
    from monai.visualize import GradCAM

    x = _blobs(2, seed=3)
    reference_model = _model()
    reference = GradCAM(
        reference_model, target_layers=reference_model.feature_layer_name, postprocessing=normalise_maps
    )
    expected = reference(x, class_idx=0)[:, 0].detach()
    _, maps = GradCamExplainer(_model())(x)
    torch.testing.assert_close(maps, expected, rtol=1e-4, atol=1e-5)


def test_heatmap_follows_the_evidence() -> None:
    """A linear head on the pooled feature map: the evidence is where the bright blob is."""
    model = _model()
    with torch.no_grad():
        model.head.weight.fill_(0.0)
        model.head.weight[0, :] = 1.0  # every feature counts positively
    size = 64
    x = torch.zeros(1, 1, size, size)
    x[0, 0, 40:56, 4:20] = 5.0  # blob at x = 40..56 (first spatial axis), y = 4..20
    _, maps = GradCamExplainer(model)(x)
    hot = np.unravel_index(int(torch.argmax(maps[0])), (size, size))
    assert 32 <= hot[0] < size and hot[1] < 32


def test_heatmap_maps_onto_a_letterboxed_display(tmp_path: Path) -> None:
    # A tall radiograph: 100 rows x 50 cols. In a 32 px letterbox its columns fill x = 8..24.
    heat = torch.zeros(32, 32)
    heat[8:24, 0:4] = 1.0  # MONAI order (x = column, y = row): top rows, all columns of the image
    display = heatmap_to_display(heat, (100, 50), (100, 50), keep_aspect=True)
    assert display.shape == (100, 50)
    assert display[:8].mean() > 0.8 and display[30:].max() < 0.05
    stretched = heatmap_to_display(heat, (100, 50), (100, 50), keep_aspect=False)
    assert stretched[:, :12].max() < 0.05 and stretched[:8, 20:30].mean() > 0.8


def test_display_image_keeps_the_aspect_and_range(tmp_path: Path) -> None:
    pixels = np.tile(np.linspace(0, 4000, 60, dtype=np.float64), (120, 1)).astype(np.uint16)
    path = write_dicom(tmp_path / "r.dcm", pixels, modality="DX", bits_stored=12)
    image, original = display_image(path, size=64)
    assert original == (120, 60)
    assert image.shape == (64, 32)
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert image[:, -1].mean() > image[:, 0].mean()  # left-to-right ramp kept (no transpose)


def test_overlay_png_shows_the_image_beside_the_heatmap(tmp_path: Path) -> None:
    image = np.linspace(0, 1, 40 * 30, dtype=np.float32).reshape(40, 30)
    heat = np.zeros_like(image)
    heat[:10, :10] = 1.0
    path = write_overlay(image, heat, tmp_path / "sub" / "overlay.png")
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(np.float32) / 255
    assert pixels.shape == (40, 30 + 8 + 30, 3)
    left, right = pixels[:, :30], pixels[:, 38:]
    np.testing.assert_allclose(left[..., 0], image, atol=1 / 255)  # the plain radiograph, grey
    np.testing.assert_allclose(right[10:, 10:], left[10:, 10:], atol=1 / 255)  # no evidence: unchanged
    hot = np.asarray(colormaps[COLORMAP](1.0)[:3], dtype=np.float32)  # evidence: blended with the colour map
    np.testing.assert_allclose(right[:10, :10], left[:10, :10] * (1 - MAX_ALPHA) + hot * MAX_ALPHA, atol=1.5 / 255)
    assert (pixels[:, 30:38] == 1.0).all()  # white gap
    with pytest.raises(ValueError, match="one shape"):
        write_overlay(image, heat[:20], tmp_path / "bad.png")
