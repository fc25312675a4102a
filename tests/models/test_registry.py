"""Tests of the backbone registry (medvision.models.registry)."""

from __future__ import annotations

import dataclasses
import os
from urllib.parse import urlparse

import pytest

from medvision.errors import ConfigError
from medvision.models import registry
from medvision.models.registry import BackboneSpec, get_spec, list_models, register_backbone

EXPECTED = ["densenet121", "densenet169", "densenet201", "resnet101", "resnet18", "resnet34", "resnet50"]


@pytest.fixture
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> dict[str, BackboneSpec]:
    """A copy of the registry, so that a test's registrations do not leak."""
    copy = dict(registry._REGISTRY)
    monkeypatch.setattr(registry, "_REGISTRY", copy)
    return copy


def test_registered_names() -> None:
    assert list_models() == EXPECTED
    assert list_models(include="resnet*") == ["resnet101", "resnet18", "resnet34", "resnet50"]


def test_densenet121_facts() -> None:
    spec = get_spec("densenet121")
    assert spec.family == "densenet"
    assert spec.weights_file == "densenet121-a639ec97.pth"
    assert spec.sha256_prefix == "a639ec97"
    assert spec.weights_tag == "DenseNet121_Weights.IMAGENET1K_V1"
    assert spec.mean == pytest.approx((0.485, 0.456, 0.406))
    assert spec.std == pytest.approx((0.229, 0.224, 0.225))
    assert (spec.input_size, spec.resize_size) == (224, 256)
    assert spec.num_categories == 1000
    assert spec.num_features == 1024
    assert (spec.feature_layer, spec.first_conv, spec.classifier) == (
        "features",
        "features.conv0",
        "classifier",
    )


def test_resnet18_facts() -> None:
    spec = get_spec("resnet18")
    assert spec.weights_file == "resnet18-f37072fd.pth"
    assert spec.sha256_prefix == "f37072fd"
    assert (spec.feature_layer, spec.first_conv, spec.classifier) == ("layer4", "conv1", "fc")
    assert spec.num_features == 512


@pytest.mark.parametrize("name", list_models())
def test_spec_matches_weights(name: str) -> None:
    spec = get_spec(name)
    assert spec.name == name
    assert spec.weights_url == spec.weights.url
    assert spec.weights_file == os.path.basename(urlparse(spec.weights.url).path)
    assert spec.weights_file.startswith(f"{name}-{spec.sha256_prefix}.")
    assert len(spec.sha256_prefix) == 8
    assert spec.num_categories == len(spec.weights.meta["categories"])
    transforms = spec.weights.transforms()
    assert spec.input_size == transforms.crop_size[0]
    assert list(spec.mean) == pytest.approx(list(transforms.mean))


def test_spec_is_frozen() -> None:
    spec = get_spec("resnet18")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.num_features = 3  # type: ignore[misc]


def test_unknown_name_error_text() -> None:
    with pytest.raises(ConfigError) as info:
        get_spec("vgg16")
    message = str(info.value)
    assert message.startswith("model.backbone: ")
    assert "'vgg16'" in message
    for name in EXPECTED:
        assert name in message
    assert info.value.where == "model.backbone"


def test_duplicate_registration_refused(isolated_registry: dict[str, BackboneSpec]) -> None:
    called = []

    def factory() -> BackboneSpec:
        called.append(True)
        return get_spec("densenet121")

    with pytest.raises(ValueError, match="already registered under the name 'densenet121'"):
        register_backbone("densenet121")(factory)
    assert not called
    assert isolated_registry["densenet121"] is get_spec("densenet121")


def test_register_new_backbone(isolated_registry: dict[str, BackboneSpec]) -> None:
    spec = dataclasses.replace(get_spec("resnet18"), name="my_resnet18")

    @register_backbone("my_resnet18")
    def _my_resnet18() -> BackboneSpec:
        return spec

    assert "my_resnet18" in list_models()
    assert get_spec("my_resnet18") is spec
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("my_resnet18")(_my_resnet18)


def test_register_name_must_match_spec(isolated_registry: dict[str, BackboneSpec]) -> None:
    with pytest.raises(ValueError, match="is named 'resnet18'"):
        register_backbone("other")(lambda: get_spec("resnet18"))
    assert "other" not in list_models()
