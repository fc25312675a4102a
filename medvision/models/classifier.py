"""Image classifier: a registered torchvision backbone plus a fresh task head.

Example:
    >>> import torch
    >>> from medvision.models import create_model
    >>> model = create_model("resnet18", weights="none", in_channels=1, num_classes=2)
    >>> model(torch.zeros(1, 1, 64, 64)).shape
    torch.Size([1, 2])
    >>> model.weights_source
    'none'
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn

from medvision.errors import ConfigError
from medvision.models.registry import BackboneSpec, get_spec
from medvision.models.weights import (
    ImageNetWeightsUnavailableError,
    StateDict,
    StateDictWeights,
    adapt_input_conv,
    cached_weights_path,
    channel_stats,
    load_checkpoint,
    load_imagenet_state_dict,
    load_state_dict_exact,
    remap_legacy_keys,
    sha256_file,
    strip_classifier,
)

__all__ = ["Classifier", "FirstConv", "RandomInitWarning", "create_model", "random_init_said_by_caller"]

logger = logging.getLogger(__name__)

#: How a 1-channel input meets an RGB first convolution.
FirstConv = Literal["sum", "replicate"]

_MLFLOW_SCHEMES = ("models:/", "runs:/")
_CHECKPOINT_SUFFIXES = (".pt", ".pth")


@contextlib.contextmanager
def random_init_said_by_caller() -> Iterator[None]:
    """Silence :class:`RandomInitWarning` inside the block: for a caller (a trainer) that says the fallback itself,
    once, with its reason (``model.weights_source``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomInitWarning)
        yield


class RandomInitWarning(UserWarning):
    """A model that was asked for ImageNet weights but is randomly initialised."""


class Classifier(nn.Module):
    """A torchvision backbone without its ImageNet classifier, and a new linear head.

    ``forward(x) == forward_head(forward_features(x))``. Build it with :func:`create_model`,
    which loads the weights and adapts the first convolution; the constructor takes a backbone
    already prepared by it.

    Attributes:
        spec: The backbone's :class:`~medvision.models.registry.BackboneSpec`.
        backbone: The torchvision model; its ``fc``/``classifier`` is ``nn.Identity``; for
            DenseNet ``features`` ends with the final norm and a ReLU (``features.relu5``).
        head: ``nn.Linear(num_features, num_classes)`` (``nn.Identity`` for 0 classes).
        in_channels: Channels of the expected input.
        repeat_input: Whether a 1-channel input is repeated to 3 channels (``first_conv="replicate"``).
        num_classes: Output width of the head.
        weights_source: Where the weights came from, e.g. ``"imagenet:ResNet18_Weights.IMAGENET1K_V1
            sha256:f37072fd"``, ``"none"``, ``"random-init (...)"``.
        feature_layer_name: Dotted name of :attr:`feature_layer` inside this module.
    """

    def __init__(
        self,
        spec: BackboneSpec,
        backbone: nn.Module,
        *,
        num_classes: int,
        in_channels: int,
        repeat_input: bool = False,
        drop_rate: float = 0.0,
        weights_source: str = "none",
    ) -> None:
        """Wrap a prepared backbone.

        Args:
            spec: The backbone's spec.
            backbone: The torchvision model with its classifier removed (see :func:`create_model`).
            num_classes: Output width of the head (0: the head returns pooled features).
            in_channels: Channels of the expected input.
            repeat_input: Repeat a 1-channel input to 3 channels before the first convolution.
            drop_rate: Dropout probability before the head.
            weights_source: Provenance of the weights.

        Raises:
            ValueError: If the backbone's first convolution does not take the expected channels.
        """
        super().__init__()
        conv = backbone.get_submodule(spec.first_conv)
        conv_in = 3 if repeat_input else in_channels
        if not isinstance(conv, nn.Conv2d) or conv.in_channels != conv_in:
            raise ValueError(f"The first convolution of {spec.name} does not take {conv_in} channels.")
        self.spec = spec
        self.backbone = backbone
        self.in_channels = in_channels
        self.repeat_input = repeat_input
        self.num_features = spec.num_features
        self.drop_rate = float(drop_rate)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.head_drop = nn.Dropout(self.drop_rate)
        self.num_classes = num_classes
        self.head: nn.Module = _make_head(spec.num_features, num_classes)
        self.weights_source = weights_source
        self.feature_layer_name = f"backbone.{spec.feature_layer}"

    @property
    def feature_layer(self) -> nn.Module:
        """The module whose output is the final feature map (the layer Grad-CAM hooks)."""
        return self.get_submodule(self.feature_layer_name)

    @property
    def first_conv(self) -> nn.Conv2d:
        """The backbone's first convolution."""
        conv = self.backbone.get_submodule(self.spec.first_conv)
        assert isinstance(conv, nn.Conv2d)
        return conv

    @property
    def preprocessing(self) -> dict[str, Any]:
        """What an input must look like: ``mean``, ``std``, ``input_size``, ``resize_size``, ``in_channels``.

        ``mean`` and ``std`` have one entry per input channel; for other than 3 channels each is
        the mean of ImageNet's three values (see :func:`medvision.models.weights.channel_stats`).
        """
        mean, std = channel_stats(self.spec, self.in_channels)
        return {
            "mean": mean,
            "std": std,
            "input_size": self.spec.input_size,
            "resize_size": self.spec.resize_size,
            "in_channels": self.in_channels,
        }

    def forward_features(self, x: Tensor) -> Tensor:
        """The final feature map ``(B, num_features, h, w)`` (after DenseNet's final norm + ReLU).

        Args:
            x: Images ``(B, in_channels, H, W)``, normalised as :attr:`preprocessing` says.

        Returns:
            The feature map.

        Raises:
            ValueError: If ``x`` is not ``(B, in_channels, H, W)``.
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{self.spec.name} expects input of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}."
            )
        if self.repeat_input and self.in_channels == 1:
            x = x.expand(-1, 3, -1, -1)
        b: Any = self.backbone
        if self.spec.family == "densenet":
            return b.features(x)
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        return b.layer4(b.layer3(b.layer2(b.layer1(x))))

    def forward_head(self, features: Tensor, pre_logits: bool = False) -> Tensor:
        """Global average pool, dropout and the linear head.

        Args:
            features: The feature map from :meth:`forward_features`.
            pre_logits: Return the pooled features ``(B, num_features)`` instead of the logits.

        Returns:
            Logits ``(B, num_classes)`` (or the pooled features).
        """
        pooled = torch.flatten(self.global_pool(features), 1)
        pooled = self.head_drop(pooled)
        return pooled if pre_logits else self.head(pooled)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` for images ``(B, in_channels, H, W)``."""
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head by a freshly initialised one with ``num_classes`` outputs (0: identity)."""
        _check_num_classes(num_classes)
        self.num_classes = num_classes
        self.head = _make_head(self.num_features, num_classes)

    def freeze_backbone(self, freeze: bool = True) -> None:
        """Stop (or restart) gradient updates of the backbone; the head stays trainable.

        BatchNorm running statistics still update in ``train()`` mode; call ``backbone.eval()``
        after ``model.train()`` to freeze them too.
        """
        for param in self.backbone.parameters():
            param.requires_grad = not freeze


def _make_head(num_features: int, num_classes: int) -> nn.Module:
    if num_classes == 0:
        return nn.Identity()
    head = nn.Linear(num_features, num_classes)
    nn.init.zeros_(head.bias)
    return head


def _check_num_classes(num_classes: int) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ConfigError("model.num_classes", f"must be an integer >= 0, got {num_classes!r}", None)


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, attr = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, attr, module)


def _prepare_backbone(spec: BackboneSpec) -> nn.Module:
    """A randomly initialised torchvision model with its classifier removed (3-channel input)."""
    backbone = spec.builder(weights=None, num_classes=spec.num_categories)
    _set_submodule(backbone, spec.classifier, nn.Identity())
    if spec.family == "densenet":
        # torchvision applies the final ReLU in DenseNet.forward; make it part of ``features``
        # (no parameters, so state dict keys are unchanged) so that the feature layer's output
        # is the map the head pools and Grad-CAM weighs.
        features = backbone.get_submodule("features")
        assert isinstance(features, nn.Sequential)
        features.add_module("relu5", nn.ReLU(inplace=False))
    return backbone


def _fresh_conv(spec: BackboneSpec, old: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A new first convolution for ``in_channels``, initialised as torchvision initialises it."""
    conv = nn.Conv2d(
        in_channels,
        old.out_channels,
        kernel_size=cast(tuple[int, int], old.kernel_size),
        stride=cast(tuple[int, int], old.stride),
        padding=cast(tuple[int, int], old.padding),
        bias=old.bias is not None,
    )
    if spec.family == "resnet":
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    else:
        nn.init.kaiming_normal_(conv.weight)
    return conv


def _set_first_conv(spec: BackboneSpec, backbone: nn.Module, in_channels: int, *, pretrained: bool) -> None:
    """Give the backbone a first convolution taking ``in_channels`` (3-channel convs stay as they are)."""
    old = backbone.get_submodule(spec.first_conv)
    assert isinstance(old, nn.Conv2d)
    if old.in_channels == in_channels:
        return
    conv = _fresh_conv(spec, old, in_channels)
    if pretrained:
        with torch.no_grad():
            conv.weight.copy_(adapt_input_conv(old.weight, in_channels))
            if old.bias is not None and conv.bias is not None:
                conv.bias.copy_(old.bias)
    _set_submodule(backbone, spec.first_conv, conv)


def _is_classifier_state(state: StateDict) -> bool:
    return any(k.startswith("backbone.") for k in state)


def _load_backbone_state(
    spec: BackboneSpec, backbone: nn.Module, state: StateDict, conv_channels: int, where: str
) -> None:
    """Load a bare torchvision state dict (classifier keys optional) and set the first conv.

    A 3-channel first conv in the file is adapted to ``conv_channels`` after loading; a file
    whose first conv already takes ``conv_channels`` is loaded as it is.
    """
    state = strip_classifier(spec, remap_legacy_keys(spec, state))
    key = f"{spec.first_conv}.weight"
    fix = f"give a {spec.name} state dict (torchvision layout) or choose the backbone it was saved from"
    file_channels = state[key].shape[1] if key in state and state[key].ndim == 4 else 3
    if file_channels == 3:
        load_state_dict_exact(backbone, state, where=where, what=f"{spec.name} backbone", fix=fix)
        _set_first_conv(spec, backbone, conv_channels, pretrained=True)
    else:
        _set_first_conv(spec, backbone, conv_channels, pretrained=False)
        load_state_dict_exact(
            backbone,
            state,
            where=where,
            what=f"{spec.name} backbone with {conv_channels} input channels",
            fix=f"set model.in_channels to {file_channels} as the checkpoint was trained with",
        )


def _weights_kind(weights: str | os.PathLike[str] | StateDictWeights) -> tuple[str, Any]:
    """Classify the ``weights`` argument: ``("imagenet"|"none"|"state"|"checkpoint", value)``."""
    if isinstance(weights, StateDictWeights):
        return "state", weights
    if isinstance(weights, os.PathLike):
        return "checkpoint", os.fspath(weights)
    if not isinstance(weights, str):
        raise ConfigError("model.weights", f"must be a string, got {weights!r}", None)
    lowered = weights.strip().lower()
    if lowered in {"imagenet", "none"}:
        return lowered, lowered
    if weights.startswith(_MLFLOW_SCHEMES):
        raise ConfigError(
            "model.weights",
            f"{weights} is an MLflow model: the models room does not read MLflow",
            "resolve it first (medvision.engine.loop.resolve_weights, as `medvision train` does) and pass the"
            " StateDictWeights it returns",
        )
    if weights.lower().endswith(_CHECKPOINT_SUFFIXES) or Path(weights).is_file():
        return "checkpoint", weights
    raise ConfigError(
        "model.weights",
        f"unknown weights {weights!r}",
        "use imagenet, none, a .pt/.pth checkpoint file, or an MLflow URI (models:/NAME/VERSION, runs:/ID/PATH)",
    )


def create_model(
    name: str,
    *,
    weights: str | os.PathLike[str] | StateDictWeights = "imagenet",
    in_channels: int = 1,
    num_classes: int = 1,
    first_conv: FirstConv = "sum",
    drop_rate: float = 0.0,
    allow_random_fallback: bool = False,
    progress: bool = True,
) -> Classifier:
    """Build a :class:`Classifier` from a registered backbone.

    The ImageNet classifier is always dropped and a fresh ``Linear(num_features, num_classes)``
    head added (unless a full Classifier checkpoint supplies it).

    Args:
        name: Registered backbone, e.g. ``"densenet121"`` (see :func:`list_models`).
        weights: ``"imagenet"`` (torch hub cache, downloaded if allowed), ``"none"`` (random
            init), a ``.pt``/``.pth`` file (a full Classifier state dict, or a bare torchvision
            state dict with or without its classifier), or a :class:`StateDictWeights` (a state dict in
            memory with its source: how an MLflow model's weights arrive, resolved by the engine).
        in_channels: Input channels; 1 for radiographs.
        num_classes: Head outputs (1 for a binary finding with a sigmoid; 0 for no head).
        first_conv: For 1 input channel: ``"sum"`` sums the RGB kernels into one channel;
            ``"replicate"`` keeps the RGB convolution and repeats the input to 3 channels. For
            other counts than 1 and 3 only ``"sum"`` applies (mean RGB kernel tiled, scaled by 3/k).
        drop_rate: Dropout before the head.
        allow_random_fallback: When ImageNet weights are not available, return a randomly
            initialised model (``weights_source`` starts with ``"random-init"``, and a
            :class:`RandomInitWarning` is issued) instead of raising.
        progress: Show a download progress bar.

    Returns:
        The model; ``model.weights_source`` says where its weights came from.

    Raises:
        ConfigError: On an unknown backbone or a bad argument value.
        WeightsError: If the weights are missing, unreadable or do not fit.

    Example:
        >>> model = create_model("densenet121", weights="imagenet", in_channels=1)  # doctest: +SKIP
        >>> model.weights_source  # doctest: +SKIP
        'imagenet:DenseNet121_Weights.IMAGENET1K_V1 sha256:a639ec97'
    """
    spec = get_spec(name)
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ConfigError("model.in_channels", f"must be an integer >= 1, got {in_channels!r}", None)
    _check_num_classes(num_classes)
    if first_conv not in ("sum", "replicate"):
        raise ConfigError("model.first_conv", f"unknown value {first_conv!r}", "use sum or replicate")
    if first_conv == "replicate" and in_channels not in (1, 3):
        raise ConfigError(
            "model.first_conv",
            f"replicate needs in_channels 1 or 3, got {in_channels}",
            "use first_conv=sum for other channel counts",
        )
    if not 0.0 <= drop_rate < 1.0:
        raise ConfigError("model.drop_rate", f"must be in [0, 1), got {drop_rate!r}", None)
    repeat_input = first_conv == "replicate" and in_channels == 1
    conv_channels = 3 if repeat_input else in_channels

    kind, value = _weights_kind(weights)
    backbone = _prepare_backbone(spec)
    classifier_state: StateDict | None = None
    where = ""

    if kind == "imagenet":
        try:
            state = load_imagenet_state_dict(spec, progress=progress)
        except ImageNetWeightsUnavailableError as exc:
            if not allow_random_fallback:
                raise
            source = f"random-init (ImageNet weights for {spec.name} not available: {exc.cause})"
            message = f"{spec.name} is randomly initialised, NOT ImageNet: {exc.one_line()}"
            warnings.warn(message, RandomInitWarning, stacklevel=2)
            _set_first_conv(spec, backbone, conv_channels, pretrained=False)
        else:
            source = f"imagenet:{spec.weights_tag} sha256:{spec.sha256_prefix}"
            _load_backbone_state(spec, backbone, state, conv_channels, str(cached_weights_path(spec)))
    elif kind == "none":
        source = "none"
        _set_first_conv(spec, backbone, conv_channels, pretrained=False)
    else:
        if kind == "checkpoint":
            path = Path(value).expanduser().resolve()
            state = load_checkpoint(path)
            source = f"checkpoint:{path} sha256:{sha256_file(path)[:12]}"
            where = str(path)
        else:
            state, source = value.state, value.source
            where = value.source
        if _is_classifier_state(state):
            classifier_state = state
            _set_first_conv(spec, backbone, conv_channels, pretrained=False)
        else:
            _load_backbone_state(spec, backbone, state, conv_channels, where)

    model = Classifier(
        spec,
        backbone,
        num_classes=num_classes,
        in_channels=in_channels,
        repeat_input=repeat_input,
        drop_rate=drop_rate,
        weights_source=source,
    )
    if classifier_state is not None:
        load_state_dict_exact(
            model,
            classifier_state,
            where=where,
            what=(
                f"{spec.name} classifier with in_channels={in_channels}, num_classes={num_classes},"
                f" first_conv={first_conv}"
            ),
            fix="create the model with the backbone, in_channels, num_classes and first_conv it was trained with",
        )
    # The reason of a random initialisation is in the RandomInitWarning (or the trainer's warning): said once.
    short = source.split(" (", 1)[0]
    logger.info("Created %s (in_channels=%d, num_classes=%d), weights: %s", name, in_channels, num_classes, short)
    return model
