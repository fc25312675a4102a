"""The 2.5D RetinaNet detector on registry ResNets."""

from __future__ import annotations

import pytest
import torch

from medvision.errors import ConfigError
from medvision.models.detector import DETECTOR_CLASS, create_detector


@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(0)
    return create_detector("resnet18", weights="none", slice_shape=(40, 48), detections_per_img=5)


def test_architecture_rebuilds_the_same_network(detector) -> None:
    arch = detector.architecture
    assert arch["class"] == DETECTOR_CLASS and arch["backbone"] == "resnet18" and detector.in_channels == 3
    kwargs = {k: v for k, v in arch.items() if k not in ("class", "backbone")}
    twin = create_detector("resnet18", weights="none", **kwargs)
    twin.load_state_dict(detector.state_dict(), strict=True)
    x = torch.randn(2, 3, 40, 48)
    detector.eval()
    twin.eval()
    with torch.no_grad():
        assert torch.equal(detector(x), twin(x))
    assert detector.weights_source == "none"


def test_forward_pads_detections_and_detect_returns_boxes_in_slice_pixels(detector) -> None:
    detector.eval()
    with torch.no_grad():
        out = detector(torch.randn(3, 3, 40, 48))
        found = detector.detect(torch.randn(1, 3, 40, 48))
    assert out.shape == (3, 5, 6)
    real = out[..., 4] >= 0
    assert torch.all(out[..., 4][~real] == -1)
    boxes = found[0]["boxes"]
    assert boxes.shape[1] == 4 and (boxes[:, 2] <= 48 + 1e-3).all() and (boxes[:, 3] <= 40 + 1e-3).all()


def test_loss_is_finite_and_decreases_on_one_repeated_batch() -> None:
    torch.manual_seed(0)
    model = create_detector("resnet18", weights="none", slice_shape=(48, 48))
    model.train()
    images = [torch.zeros(3, 48, 48) for _ in range(4)]
    for img in images:
        img[:, 10:22, 20:34] = 3.0
    targets = [{"boxes": torch.tensor([[20.0, 10, 34, 22]]), "labels": torch.zeros(1, dtype=torch.long)}] * 4
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    losses = []
    for _ in range(16):
        loss = sum(model.loss(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0] * 0.6


def test_densenet_and_bad_settings_are_refused_with_the_key() -> None:
    with pytest.raises(ConfigError, match="model.backbone"):
        create_detector("densenet121", weights="none")
    with pytest.raises(ConfigError, match="model.anchor_sizes"):
        create_detector("resnet18", weights="none", anchor_sizes=(8, 16))
    with pytest.raises(ConfigError, match="model.context"):
        create_detector("resnet18", weights="none", context=9)
    with pytest.raises(ConfigError, match="model.min_level"):
        create_detector("resnet18", weights="none", min_level=4)


@pytest.mark.parametrize(("min_level", "strides", "stages"), [(3, [8, 16, 32, 64], 4), (2, [4, 8, 16, 32], 3)])
def test_min_level_picks_the_pyramid_strides_and_stages(min_level, strides, stages) -> None:
    torch.manual_seed(0)
    model = create_detector(
        "resnet18", weights="none", min_level=min_level, anchor_sizes=[s for s in strides], slice_shape=(64, 64)
    )
    assert model.architecture["min_level"] == min_level
    features = model.retinanet.backbone(torch.randn(1, 3, 64, 64))
    assert [64 // f.shape[-1] for f in features.values()] == strides
    body = model.retinanet.backbone.body
    assert hasattr(body, "layer3") and hasattr(body, "layer4") == (stages == 4)  # unused stages are dropped
    # The anchors sit on those strides: the finest level's base anchor is the first size.
    anchors = model.retinanet.anchor_generator.sizes
    assert anchors[0][0] == strides[0]
    model.train()
    target = {"boxes": torch.tensor([[20.0, 20.0, 26.0, 25.0]]), "labels": torch.zeros(1, dtype=torch.long)}
    losses = model.loss([torch.randn(3, 64, 64)], [target])
    assert all(torch.isfinite(v) for v in losses.values())


def test_more_context_slices_widen_the_first_convolution() -> None:
    model = create_detector("resnet18", weights="none", context=2, slice_shape=(32, 32))
    assert model.in_channels == 5
    assert model.retinanet.backbone.body.conv1.in_channels == 5


def test_several_sequences_stack_their_slices_and_adapt_the_imagenet_first_convolution(tmp_path, monkeypatch) -> None:
    from medvision.models import get_spec
    from medvision.models.weights import adapt_input_conv
    from tests.models.test_classifier import place_imagenet_file

    monkeypatch.setenv("MEDVISION_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    spec = get_spec("resnet18")
    imagenet = place_imagenet_file(spec, tmp_path / "torch" / "hub" / "checkpoints")
    model = create_detector("resnet18", weights="imagenet", context=1, sequences=4, slice_shape=(32, 32))
    assert model.in_channels == 12 and model.sequences == 4
    assert model.architecture["sequences"] == 4 and model.weights_source.startswith("imagenet")
    conv = model.retinanet.backbone.body.conv1.weight.detach()
    assert conv.shape == (64, 12, 7, 7)
    torch.testing.assert_close(conv, adapt_input_conv(imagenet["conv1.weight"], 12))
    # one sequence, three slices: the RGB kernel as it is, as before
    single = create_detector("resnet18", weights="imagenet", context=1, slice_shape=(32, 32))
    assert single.in_channels == 3 and single.sequences == 1
    torch.testing.assert_close(single.retinanet.backbone.body.conv1.weight.detach(), imagenet["conv1.weight"])
    # the architecture rebuilds the network, and it runs on 12-channel stacks
    kwargs = {k: v for k, v in model.architecture.items() if k not in ("class", "backbone")}
    twin = create_detector("resnet18", weights="none", **kwargs)
    twin.load_state_dict(model.state_dict(), strict=True)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 12, 32, 32)).shape[:2] == (2, 20)
    with pytest.raises(ConfigError, match="data.volume.channels"):
        create_detector("resnet18", weights="none", sequences=0)
