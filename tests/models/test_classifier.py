"""Tests of create_model and the Classifier (medvision.models.classifier)."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest
import torch

from medvision.errors import ConfigError, WeightsError
from medvision.models import Classifier, RandomInitWarning, create_model, get_spec, list_models
from medvision.models.registry import BackboneSpec
from medvision.models.weights import StateDictWeights


@pytest.fixture(autouse=True)
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No network, and a torch hub cache in the test's temporary folder."""
    monkeypatch.setenv("MEDVISION_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


def no_download(*args: object, **kwargs: object) -> None:
    raise AssertionError("a download was attempted")


def place_imagenet_file(spec: BackboneSpec, folder: Path, *, legacy: bool = False) -> dict[str, torch.Tensor]:
    """Save a randomly initialised torchvision state dict where torchvision caches ``spec``'s weights."""
    torch.manual_seed(0)
    state = spec.builder(weights=None, num_classes=spec.num_categories).state_dict()
    saved = state
    if legacy:  # the key names of torchvision's real DenseNet files
        pattern = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.")
        saved = {pattern.sub(r"\1.\2.", k): v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(saved, folder / spec.weights_file)
    return state


def backbone_tensors(state: dict[str, torch.Tensor], spec: BackboneSpec) -> dict[str, torch.Tensor]:
    return {
        k: v
        for k, v in state.items()
        if not k.startswith(spec.classifier + ".") and not k.endswith("num_batches_tracked")
    }


# --- every registered backbone ---------------------------------------------------------------------


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("name", list_models())
def test_every_backbone_builds_and_runs(name: str, in_channels: int) -> None:
    torch.manual_seed(0)
    model = create_model(name, weights="none", in_channels=in_channels, num_classes=3).eval()
    spec = get_spec(name)
    assert isinstance(model, Classifier)
    assert model.spec is spec
    assert model.weights_source == "none"
    assert model.first_conv.in_channels == in_channels
    x = torch.randn(2, in_channels, 64, 64)
    captured: list[torch.Tensor] = []
    handle = model.feature_layer.register_forward_hook(lambda m, i, o: captured.append(o))
    with torch.no_grad():
        logits = model(x)
        features = model.forward_features(x)
        again = model.forward_head(features)
    handle.remove()
    assert logits.shape == (2, 3)
    assert not torch.isnan(logits).any()
    assert features.ndim == 4 and features.shape[:2] == (2, spec.num_features)
    assert (features >= 0).all()  # after the final ReLU
    torch.testing.assert_close(logits, again)
    torch.testing.assert_close(captured[0], features)
    assert model.get_submodule(model.feature_layer_name) is model.feature_layer
    assert model.preprocessing["in_channels"] == in_channels
    assert len(model.preprocessing["mean"]) == in_channels


def test_densenet_features_match_torchvision_forward() -> None:
    torch.manual_seed(0)
    model = create_model("densenet121", weights="none", in_channels=3, num_classes=2).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = torch.relu(model.backbone.features.norm5(model.backbone.features[:-2](x)))
        torch.testing.assert_close(model.forward_features(x), expected)
    assert model.feature_layer_name == "backbone.features"


def test_head_is_replaced() -> None:
    model = create_model("resnet18", weights="none", num_classes=4)
    assert isinstance(model.backbone.fc, torch.nn.Identity)
    assert isinstance(model.head, torch.nn.Linear) and model.head.out_features == 4
    assert not any(k.startswith("backbone.fc.") for k in model.state_dict())


# --- ImageNet weights from a pre-placed cache file ---------------------------------------------------


@pytest.mark.parametrize("name", ["resnet18", "densenet121"])
def test_imagenet_from_cache(name: str, offline_hub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    spec = get_spec(name)
    state = place_imagenet_file(spec, offline_hub, legacy=spec.family == "densenet")
    expected = backbone_tensors(state, spec)

    model = create_model(name, weights="imagenet", in_channels=3, num_classes=2)
    assert model.weights_source == f"imagenet:{spec.weights_tag} sha256:{spec.sha256_prefix}"
    loaded = model.backbone.state_dict()
    assert set(expected) <= set(loaded)
    for key, value in expected.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=key)
    assert model.head.weight.shape == (2, spec.num_features)  # fresh head, ImageNet fc dropped

    gray = create_model(name, weights="imagenet", in_channels=1, first_conv="sum")
    kernel = state[f"{spec.first_conv}.weight"]
    torch.testing.assert_close(gray.first_conv.weight, kernel.sum(dim=1, keepdim=True))
    assert gray.preprocessing["mean"] == pytest.approx((0.449,))


def test_imagenet_sum_matches_rgb_on_grey_input(offline_hub: Path) -> None:
    spec = get_spec("resnet18")
    place_imagenet_file(spec, offline_hub)
    gray = create_model("resnet18", weights="imagenet", in_channels=1, first_conv="sum").eval()
    rgb = create_model("resnet18", weights="imagenet", in_channels=3).eval()
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(gray.forward_features(x), rgb.forward_features(x.expand(-1, 3, -1, -1)))


def test_imagenet_replicate(offline_hub: Path) -> None:
    spec = get_spec("resnet18")
    state = place_imagenet_file(spec, offline_hub)
    model = create_model("resnet18", weights="imagenet", in_channels=1, first_conv="replicate").eval()
    assert model.first_conv.in_channels == 3
    torch.testing.assert_close(model.first_conv.weight, state["conv1.weight"], rtol=0, atol=0)
    assert model.preprocessing["in_channels"] == 1
    rgb = create_model("resnet18", weights="imagenet", in_channels=3).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert model(x).shape == (2, 1)
        torch.testing.assert_close(model.forward_features(x), rgb.forward_features(x.repeat(1, 3, 1, 1)))
    with pytest.raises(ValueError, match=r"expects input of shape \(B, 1, H, W\)"):
        model(torch.randn(2, 3, 64, 64))


def test_imagenet_k_channels_tiles_mean_kernel(offline_hub: Path) -> None:
    spec = get_spec("resnet18")
    state = place_imagenet_file(spec, offline_hub)
    model = create_model("resnet18", weights="imagenet", in_channels=4)
    kernel = state["conv1.weight"]
    torch.testing.assert_close(model.first_conv.weight, kernel.mean(dim=1, keepdim=True).repeat(1, 4, 1, 1) * 0.75)


# --- missing ImageNet weights --------------------------------------------------------------------------


def test_missing_imagenet_offline_raises(offline_hub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    with pytest.raises(WeightsError) as info:
        create_model("densenet121", weights="imagenet")
    message = str(info.value)
    assert "\n" not in message
    assert "densenet121-a639ec97.pth" in message
    assert str(offline_hub) in message
    assert "medvision weights import FILE --arch densenet121" in message
    assert "MEDVISION_OFFLINE=1" in message


def test_missing_imagenet_random_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    with pytest.warns(RandomInitWarning, match="NOT ImageNet"):
        model = create_model("densenet121", weights="imagenet", allow_random_fallback=True)
    assert model.weights_source.startswith("random-init (ImageNet weights for densenet121 not available: ")
    assert "imagenet:" not in model.weights_source
    assert model.first_conv.in_channels == 1
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 1)


def test_download_failure_is_unavailable(offline_hub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDVISION_OFFLINE")
    calls: list[str] = []

    def refuse(url: str, dst: str, *args: object, **kwargs: object) -> None:
        calls.append(url)
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    with pytest.raises(WeightsError, match="the download failed") as info:
        create_model("resnet18", weights="imagenet", progress=False)
    assert calls == ["https://download.pytorch.org/models/resnet18-f37072fd.pth"]
    assert str(offline_hub) in str(info.value)
    with pytest.warns(RandomInitWarning):
        model = create_model("resnet18", weights="imagenet", allow_random_fallback=True, progress=False)
    assert model.weights_source.startswith("random-init")


def test_corrupt_cached_file_is_not_masked(offline_hub: Path) -> None:
    offline_hub.mkdir(parents=True)
    (offline_hub / "resnet18-f37072fd.pth").write_bytes(b"truncated")
    with pytest.raises(WeightsError, match="cannot be read"):
        create_model("resnet18", weights="imagenet", allow_random_fallback=True)


# --- checkpoints and MLflow ------------------------------------------------------------------------------


def test_full_classifier_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(1)
    trained = create_model("resnet18", weights="none", in_channels=1, num_classes=3)
    file = tmp_path / "model.pt"
    torch.save(trained.state_dict(), file)

    model = create_model("resnet18", weights=str(file), in_channels=1, num_classes=3)
    for key, value in trained.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)
    assert re.fullmatch(rf"checkpoint:{re.escape(str(file.resolve()))} sha256:[0-9a-f]{{12}}", model.weights_source)

    with pytest.raises(WeightsError, match="num_classes=2") as info:
        create_model("resnet18", weights=file, in_channels=1, num_classes=2)
    assert "head.weight" in str(info.value)


@pytest.mark.parametrize("with_head", [True, False])
def test_bare_backbone_checkpoint(tmp_path: Path, with_head: bool) -> None:
    spec = get_spec("resnet18")
    torch.manual_seed(2)
    state = spec.builder(weights=None).state_dict()
    if not with_head:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    file = tmp_path / "backbone.pth"
    torch.save(state, file)

    model = create_model("resnet18", weights=file, in_channels=1, num_classes=2)
    loaded = model.backbone.state_dict()
    for key, value in backbone_tensors(state, spec).items():
        if key == "conv1.weight":
            torch.testing.assert_close(loaded[key], value.sum(dim=1, keepdim=True))
        else:
            torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)
    assert model.weights_source.startswith("checkpoint:")


def test_bare_backbone_checkpoint_of_wrong_architecture(tmp_path: Path) -> None:
    file = tmp_path / "resnet34.pth"
    torch.save(get_spec("resnet34").builder(weights=None).state_dict(), file)
    with pytest.raises(WeightsError, match="do not fit the resnet18 backbone"):
        create_model("resnet18", weights=file)


def test_missing_checkpoint_and_unknown_weights(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="no such checkpoint file"):
        create_model("resnet18", weights=str(tmp_path / "absent.pt"))
    with pytest.raises(ConfigError, match=r"^model\.weights: unknown weights 'imagenet21k'"):
        create_model("resnet18", weights="imagenet21k")


def test_weights_from_a_state_dict_in_memory() -> None:
    torch.manual_seed(3)
    trained = create_model("densenet121", weights="none", in_channels=1, num_classes=2)

    # An MLflow model arrives as a state dict in memory (the engine resolves the URI through the registry).
    weights = StateDictWeights(trained.state_dict(), "mlflow:models:/pneumonia-classifier/3")
    model = create_model("densenet121", weights=weights, num_classes=2)
    assert model.weights_source == "mlflow:models:/pneumonia-classifier/3"
    torch.testing.assert_close(model.head.weight, trained.head.weight, rtol=0, atol=0)


def test_an_mlflow_uri_is_not_read_by_the_models_room() -> None:
    with pytest.raises(ConfigError, match=r"runs:/abc/model is an MLflow model") as info:
        create_model("resnet18", weights="runs:/abc/model")
    assert "resolve_weights" in info.value.fix


def test_models_package_does_not_import_mlflow() -> None:
    code = (
        "import sys; from medvision.models import create_model; "
        "create_model('resnet18', weights='none'); assert 'mlflow' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# --- arguments and the Classifier's methods -------------------------------------------------------------


def test_keyword_only_and_bad_arguments() -> None:
    with pytest.raises(TypeError):
        create_model("resnet18", "none")  # type: ignore[misc]
    with pytest.raises(ConfigError, match="model.backbone"):
        create_model("vgg16", weights="none")
    with pytest.raises(ConfigError, match="model.first_conv"):
        create_model("resnet18", weights="none", first_conv="average")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="replicate needs in_channels 1 or 3"):
        create_model("resnet18", weights="none", in_channels=2, first_conv="replicate")
    with pytest.raises(ConfigError, match="model.in_channels"):
        create_model("resnet18", weights="none", in_channels=0)
    with pytest.raises(ConfigError, match="model.num_classes"):
        create_model("resnet18", weights="none", num_classes=-1)


def test_reset_classifier_and_freeze() -> None:
    model = create_model("resnet18", weights="none", num_classes=1)
    model.reset_classifier(5)
    assert model.num_classes == 5
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 5)
    model.reset_classifier(0)
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 512)

    model.reset_classifier(2)
    model.freeze_backbone()
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    model(torch.randn(2, 1, 64, 64)).sum().backward()
    assert model.head.weight.grad is not None
    assert model.first_conv.weight.grad is None
    model.freeze_backbone(False)
    assert all(p.requires_grad for p in model.parameters())


def test_preprocessing_facts() -> None:
    rgb = create_model("densenet121", weights="none", in_channels=3)
    assert rgb.preprocessing == {
        "mean": pytest.approx((0.485, 0.456, 0.406)),
        "std": pytest.approx((0.229, 0.224, 0.225)),
        "input_size": 224,
        "resize_size": 256,
        "in_channels": 3,
    }
    gray = create_model("densenet121", weights="none", in_channels=1)
    assert gray.preprocessing["mean"] == pytest.approx(((0.485 + 0.456 + 0.406) / 3,))
    assert gray.preprocessing["std"] == pytest.approx(((0.229 + 0.224 + 0.225) / 3,))


def test_drop_rate() -> None:
    model = create_model("resnet18", weights="none", drop_rate=0.5)
    assert model.head_drop.p == 0.5
    with pytest.raises(ConfigError, match="model.drop_rate"):
        create_model("resnet18", weights="none", drop_rate=1.0)
