"""The backbone registry: names -> :class:`BackboneSpec`.

Modelled on torchvision's ``register_model`` / ``get_model`` and timm's ``PretrainedCfg``: each
entry names the torchvision builder, the ImageNet weights enum member, where the features,
first convolution and classifier live, and the preprocessing facts that travel *with* those
weights (mean, std, crop and resize sizes, the checkpoint's file name and sha256 prefix).

Example:
    >>> from medvision.models.registry import get_spec, list_models
    >>> "densenet121" in list_models()
    True
    >>> spec = get_spec("densenet121")
    >>> spec.weights_file, spec.sha256_prefix, spec.num_features
    ('densenet121-a639ec97.pth', 'a639ec97', 1024)
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlparse

import torch.hub
from torch import nn
from torchvision import models as tvm
from torchvision.models import WeightsEnum

from medvision.errors import ConfigError

__all__ = ["BackboneSpec", "Family", "get_spec", "list_models", "register_backbone"]

#: Architecture families the :class:`~medvision.models.classifier.Classifier` knows how to run.
Family = Literal["densenet", "resnet"]

#: The config key that selects a backbone, quoted in error messages.
BACKBONE_KEY = "model.backbone"


@dataclass(frozen=True)
class BackboneSpec:
    """What medvision knows about one registered backbone.

    Attributes:
        name: Registry name, e.g. ``"densenet121"``.
        family: ``"densenet"`` or ``"resnet"``; decides how the feature map is computed.
        builder: The torchvision builder (``torchvision.models.densenet121``), called with
            ``weights=None``; medvision loads the weights itself.
        weights: The torchvision weights enum member used for ImageNet initialisation.
        num_features: Channels of the final feature map (the head's input width).
        feature_layer: Dotted path, inside the torchvision model, of the module whose output is
            the final feature map (the layer Grad-CAM hooks).
        first_conv: Dotted path of the first convolution (adapted for 1-channel input).
        classifier: Dotted path of the ImageNet classifier (dropped and replaced by a new head).
        mean: ImageNet RGB mean the weights were trained with (from ``weights.transforms()``).
        std: ImageNet RGB standard deviation.
        input_size: Centre-crop size of the weights' evaluation transform.
        resize_size: Resize size (shorter side) applied before the crop.
        weights_url: Where torchvision downloads the checkpoint from.
        weights_file: The checkpoint's file name in the torch hub cache.
        sha256_prefix: The hex digits of the file's sha256 that the file name carries.
        num_categories: Number of ImageNet categories of the checkpoint's classifier.
    """

    name: str
    family: Family
    builder: Callable[..., nn.Module]
    weights: WeightsEnum
    num_features: int
    feature_layer: str
    first_conv: str
    classifier: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int
    resize_size: int
    weights_url: str
    weights_file: str
    sha256_prefix: str
    num_categories: int

    @property
    def weights_tag(self) -> str:
        """The weights enum member as torchvision names it, e.g. ``DenseNet121_Weights.IMAGENET1K_V1``."""
        return f"{type(self.weights).__name__}.{self.weights.name}"

    @classmethod
    def from_weights(
        cls,
        name: str,
        *,
        family: Family,
        builder: Callable[..., nn.Module],
        weights: WeightsEnum,
        num_features: int,
        feature_layer: str,
        first_conv: str,
        classifier: str,
    ) -> BackboneSpec:
        """Build a spec, reading the preprocessing facts from the torchvision weights.

        Args:
            name: Registry name.
            family: Architecture family.
            builder: torchvision builder function.
            weights: torchvision weights enum member.
            num_features: Channels of the final feature map.
            feature_layer: Dotted path of the feature layer for Grad-CAM.
            first_conv: Dotted path of the first convolution.
            classifier: Dotted path of the ImageNet classifier.

        Returns:
            The frozen spec.

        Raises:
            ValueError: If the weights URL's file name carries no sha256 prefix.
        """
        transforms = weights.transforms()
        file_name = os.path.basename(urlparse(weights.url).path)
        match = torch.hub.HASH_REGEX.search(file_name)
        if match is None or not match.group(1):
            raise ValueError(f"The weights file name {file_name!r} of {name!r} carries no sha256 prefix.")
        mean = tuple(float(v) for v in transforms.mean)
        std = tuple(float(v) for v in transforms.std)
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"The weights of {name!r} do not describe a 3-channel normalisation.")
        return cls(
            name=name,
            family=family,
            builder=builder,
            weights=weights,
            num_features=num_features,
            feature_layer=feature_layer,
            first_conv=first_conv,
            classifier=classifier,
            mean=(mean[0], mean[1], mean[2]),
            std=(std[0], std[1], std[2]),
            input_size=int(transforms.crop_size[0]),
            resize_size=int(transforms.resize_size[0]),
            weights_url=weights.url,
            weights_file=file_name,
            sha256_prefix=match.group(1),
            num_categories=len(weights.meta["categories"]),
        )


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(name: str) -> Callable[[Callable[[], BackboneSpec]], Callable[[], BackboneSpec]]:
    """Register the spec returned by the decorated zero-argument function under ``name``.

    As torchvision's ``register_model``, a name can be registered once only.

    Args:
        name: Registry name; must equal the returned spec's ``name``.

    Returns:
        A decorator that calls the function once, stores its spec and returns the function.

    Raises:
        ValueError: If ``name`` is already registered or differs from the spec's name.

    Example:
        >>> from torchvision import models as tvm
        >>> @register_backbone("my_resnet18")  # doctest: +SKIP
        ... def _my_resnet18() -> BackboneSpec:
        ...     return BackboneSpec.from_weights(
        ...         "my_resnet18", family="resnet", builder=tvm.resnet18,
        ...         weights=tvm.ResNet18_Weights.IMAGENET1K_V1, num_features=512,
        ...         feature_layer="layer4", first_conv="conv1", classifier="fc")
    """

    def wrapper(fn: Callable[[], BackboneSpec]) -> Callable[[], BackboneSpec]:
        if name in _REGISTRY:
            raise ValueError(f"An entry is already registered under the name '{name}'.")
        spec = fn()
        if spec.name != name:
            raise ValueError(f"The spec registered as '{name}' is named '{spec.name}'.")
        _REGISTRY[name] = spec
        return fn

    return wrapper


def list_models(include: str | None = None) -> list[str]:
    """Names of the registered backbones, sorted.

    Args:
        include: Optional shell-style pattern (``"resnet*"``) to filter the names.

    Returns:
        The sorted names.
    """
    names = sorted(_REGISTRY)
    if include is not None:
        names = [n for n in names if fnmatch.fnmatch(n, include)]
    return names


def get_spec(name: str) -> BackboneSpec:
    """The spec registered under ``name``.

    Args:
        name: Registry name, e.g. ``"resnet50"``.

    Returns:
        The frozen :class:`BackboneSpec`.

    Raises:
        ConfigError: If no backbone is registered under ``name`` (the message names the key
            ``model.backbone``, the value and the allowed names).
    """
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ConfigError(
            BACKBONE_KEY,
            f"unknown backbone {name!r}",
            f"use one of: {', '.join(list_models())}",
        ) from None


def _densenet(name: str, builder: Callable[..., nn.Module], weights: WeightsEnum, num_features: int) -> BackboneSpec:
    # The feature layer is torchvision's ``features`` Sequential; medvision appends the final
    # ReLU to it (torchvision applies that ReLU in ``forward``), so its output is the map Grad-CAM wants.
    return BackboneSpec.from_weights(
        name,
        family="densenet",
        builder=builder,
        weights=weights,
        num_features=num_features,
        feature_layer="features",
        first_conv="features.conv0",
        classifier="classifier",
    )


def _resnet(name: str, builder: Callable[..., nn.Module], weights: WeightsEnum, num_features: int) -> BackboneSpec:
    return BackboneSpec.from_weights(
        name,
        family="resnet",
        builder=builder,
        weights=weights,
        num_features=num_features,
        feature_layer="layer4",
        first_conv="conv1",
        classifier="fc",
    )


# ImageNet weights: the IMAGENET1K_V1 checkpoints throughout (the ones the chest X-ray literature
# fine-tuned, e.g. CheXNet); ResNet-50/101 also have torchvision's V2 recipe, not used by default.


@register_backbone("densenet121")
def _densenet121() -> BackboneSpec:
    return _densenet("densenet121", tvm.densenet121, tvm.DenseNet121_Weights.IMAGENET1K_V1, 1024)


@register_backbone("densenet169")
def _densenet169() -> BackboneSpec:
    return _densenet("densenet169", tvm.densenet169, tvm.DenseNet169_Weights.IMAGENET1K_V1, 1664)


@register_backbone("densenet201")
def _densenet201() -> BackboneSpec:
    return _densenet("densenet201", tvm.densenet201, tvm.DenseNet201_Weights.IMAGENET1K_V1, 1920)


@register_backbone("resnet18")
def _resnet18() -> BackboneSpec:
    return _resnet("resnet18", tvm.resnet18, tvm.ResNet18_Weights.IMAGENET1K_V1, 512)


@register_backbone("resnet34")
def _resnet34() -> BackboneSpec:
    return _resnet("resnet34", tvm.resnet34, tvm.ResNet34_Weights.IMAGENET1K_V1, 512)


@register_backbone("resnet50")
def _resnet50() -> BackboneSpec:
    return _resnet("resnet50", tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V1, 2048)


@register_backbone("resnet101")
def _resnet101() -> BackboneSpec:
    return _resnet("resnet101", tvm.resnet101, tvm.ResNet101_Weights.IMAGENET1K_V1, 2048)
