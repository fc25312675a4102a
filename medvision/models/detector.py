"""2.5D tumour detector: adjacent slices as the channels of an ImageNet ResNet, a feature pyramid, RetinaNet.

A CT or MR volume is read slice by slice along its axial (RAS ``z``) axis. Slice ``k`` and its
``context`` neighbours on each side become the input channels (``2 * context + 1``; three by default, so
that the RGB filters of an ImageNet-pretrained first convolution apply as they are). A multi-sequence volume
(MSD Task01 / BraTS: FLAIR, T1w, t1gd, T2w) gives those slices of every sequence, ``sequences * (2 * context
+ 1)`` channels, sequence-major (:mod:`medvision.data.slices`); the ImageNet first convolution is then adapted
as the classifier adapts it (:func:`medvision.models.weights.adapt_input_conv`). The backbone is a
ResNet from the shared registry (:mod:`medvision.models.registry`, weights through torchvision's weights
API and the torch hub cache, source logged), three of its stages feed torchvision's feature pyramid
(``BackboneWithFPN``), and torchvision's ``RetinaNet`` (focal loss, anchor matching, box coder, 2D NMS)
predicts 2D boxes per slice. :mod:`medvision.engine.detection` merges the slice boxes into 3D boxes.

Why torchvision's RetinaNet and not MONAI's ``RetinaNetDetector``: in 2D both wrap the same design, and
torchvision's takes any ``BackboneWithFPN`` built from the registry's ResNet (so the ImageNet weights are
loaded by the same code as the classifier's) and handles resizing and normalisation in one place; MONAI's
detector shines in 3D, which is not what lets ImageNet weights apply.

Image layout. A slice tensor is ``(C, H, W) = (channels, y, x)`` of the RAS volume, so torchvision's box
``(x1, y1, x2, y2)`` is ``(x0, y0, x1, y1)`` of the volume's voxel grid, ``[min, max)`` in voxel indices.

Choices for small lesions: ``min_level`` 3 (default) builds the pyramid P3-P5 from ``layer2``-``layer4``
(strides 8-32) plus torchvision's max-pool level; ``min_level`` 2 builds P2-P4 from ``layer1``-``layer3``
(strides 4-16, plus the pool level at 32) and drops ``layer4``: anchors from 4 px then sit on a 4-px grid,
which is what lesions of a few voxels need (on the demo MRI, 8-10 mm tumours at 2 mm voxels, test CPM 0.85
against 0.76 for P3-P6 at the same training time; anchors from 4 px on the 8-px grid of P3 were worse). The
pyramid has 128 channels by default, not torchvision's 256 (the head's eight 3x3 convolutions dominate the
cost); 64 with P2, where the head runs on four times as many positions.

Precision and memory format (CUDA). Training and inference may run the network under bf16 autocast
(:mod:`medvision.engine.detection`): the ResNet, the pyramid and the head's convolutions then compute in bf16,
and everything after them stays in float32. The head's outputs are returned in float32
(:class:`Float32RetinaNetHead`; in bf16 the decoded boxes would lie on a grid of 0.5 pixel beyond 64) and the
anchors are always float32 (:class:`Float32AnchorGenerator`; torchvision makes them bf16 like the feature maps,
which puts anchor corners beyond 256 pixels, in a 512-pixel CT slice, on a 2-pixel grid). The anchor matching,
the box coder, the focal and GIoU losses and the post-processing (decoding, NMS) thus run in float32 whatever
the autocast. :meth:`SliceDetector.to_channels_last` puts the weights and the batched input in
``channels_last`` (NHWC) for the tensor cores; torchvision batches the images itself, so the input is converted
after batching (:class:`ConstantScaleTransform`). On the CPU neither is used, and these classes compute exactly
what torchvision's do.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes

from medvision.errors import ConfigError
from medvision.models.registry import get_spec

__all__ = [
    "DETECTOR_CLASS",
    "ConstantScaleTransform",
    "Float32AnchorGenerator",
    "Float32RetinaNetHead",
    "SliceDetector",
    "create_detector",
]

logger = logging.getLogger(__name__)

#: The ``class`` recorded in a registered detector's architecture metadata.
DETECTOR_CLASS = "medvision.models.SliceDetector"

#: The ResNet stages behind the pyramid, by its finest level: P3-P5 (strides 8-32) or P2-P4 (strides 4-16),
#: each plus torchvision's extra max-pool level.
_STAGES = {3: ("layer2", "layer3", "layer4"), 2: ("layer1", "layer2", "layer3")}
_LEVELS = 4  # three ResNet stages and torchvision's extra max-pool level


class SliceDetector(nn.Module):
    """torchvision RetinaNet on a registry ResNet with a feature pyramid, for stacks of adjacent slices.

    Use :func:`create_detector`. ``forward(images)`` in eval mode takes a batch tensor ``(N, C, H, W)``
    and returns a padded tensor ``(N, D, 6)`` of ``[x1, y1, x2, y2, score, label]`` rows (score ``-1``
    pads), so that the model can be logged and served like any module taking one tensor;
    :meth:`detect` returns torchvision's list of dicts; :meth:`loss` trains.

    Attributes:
        architecture: the keyword arguments that rebuild this detector with :func:`create_detector`.
        weights_source: where the backbone's initial weights came from (``imagenet:...``,
            ``random-init (...)``, ``none``, ``checkpoint:...``, ``mlflow:...``).
    """

    def __init__(self, retinanet: RetinaNet, architecture: dict[str, Any], weights_source: str) -> None:
        super().__init__()
        self.retinanet = retinanet
        self.architecture = dict(architecture)
        self.weights_source = weights_source

    @property
    def in_channels(self) -> int:
        """Channels per input stack (``sequences * (2 * context + 1)``)."""
        return self.sequences * (2 * int(self.architecture["context"]) + 1)

    @property
    def sequences(self) -> int:
        """MR sequences (volume channels) per input stack; 1 for a single-sequence volume."""
        return int(self.architecture.get("sequences", 1))

    @property
    def context(self) -> int:
        """Neighbouring slices on each side of the centre slice."""
        return int(self.architecture["context"])

    def loss(self, images: Sequence[Tensor], targets: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
        """torchvision's losses (``classification``, ``bbox_regression``) for one batch (train mode)."""
        return self.retinanet(list(images), [dict(t) for t in targets])

    def detect(self, images: Sequence[Tensor] | Tensor) -> list[dict[str, Tensor]]:
        """Boxes, scores and labels per image, in input pixel coordinates (eval mode)."""
        return self.retinanet(list(images))

    def forward(self, images: Tensor) -> Tensor:
        """Padded detections ``(N, D, 6)``: ``x1, y1, x2, y2, score, label``; score ``-1`` marks padding."""
        found = self.detect(images)
        d = int(self.retinanet.detections_per_img)
        out = torch.full((len(found), d, 6), -1.0, dtype=torch.float32, device=images.device)
        for i, f in enumerate(found):
            n = min(d, int(f["scores"].shape[0]))
            out[i, :n, :4] = f["boxes"][:n].float()
            out[i, :n, 4] = f["scores"][:n].float()
            out[i, :n, 5] = f["labels"][:n].float()
        return out

    @property
    def channels_last(self) -> bool:
        """Whether the batched input is put in ``channels_last`` memory format (:meth:`to_channels_last`)."""
        return bool(getattr(self.retinanet.transform, "channels_last", False))

    def to_channels_last(self, enabled: bool = True) -> SliceDetector:
        """Weights and batched input in ``channels_last`` (NHWC) memory format, or back to the default.

        For CUDA (tensor cores); the result is the same up to rounding. Returns ``self``.
        """
        self.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)
        if isinstance(self.retinanet.transform, ConstantScaleTransform):
            self.retinanet.transform.channels_last = bool(enabled)
        return self

    def freeze_backbone(self, freeze: bool = True) -> None:
        """Freeze (or unfreeze) the ResNet body; the pyramid and the head keep training."""
        for param in self.retinanet.backbone.body.parameters():
            param.requires_grad = not freeze


class ConstantScaleTransform(GeneralizedRCNNTransform):
    """torchvision's normalise-resize-batch step with a constant scale factor instead of a target size.

    torchvision resizes every image so that its shorter side reaches ``min_size``; a training crop and a whole
    slice would then be enlarged differently, and a lesion would have another size in pixels at training and
    at inference. Here every input is scaled by the same ``scale`` (1 = unchanged), so pixels keep their size
    in millimetres; boxes are mapped back by torchvision's ``postprocess`` as before.
    """

    def __init__(self, scale: float, image_mean: list[float], image_std: list[float]) -> None:
        super().__init__(min_size=1, max_size=1, image_mean=image_mean, image_std=image_std, size_divisible=32)
        self.scale = float(scale)
        #: Put the batch in ``channels_last`` memory format (:meth:`SliceDetector.to_channels_last`).
        self.channels_last = False

    def batch_images(self, images: list[Tensor], size_divisible: int = 32) -> Tensor:
        batched = super().batch_images(images, size_divisible)
        if self.channels_last:
            batched = batched.contiguous(memory_format=torch.channels_last)
        return batched

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None) -> tuple[Tensor, Any]:
        if self.scale == 1.0:
            return image, target
        h, w = image.shape[-2:]
        image = torch.nn.functional.interpolate(
            image[None], scale_factor=self.scale, mode="bilinear", align_corners=False, recompute_scale_factor=True
        )[0]
        if target is not None and "boxes" in target:
            target = {**target, "boxes": resize_boxes(target["boxes"], (h, w), tuple(image.shape[-2:]))}
        return image, target


class Float32AnchorGenerator(AnchorGenerator):
    """torchvision's anchor generator with float32 anchors whatever the feature maps' dtype (bf16 under autocast).

    torchvision takes the anchors' dtype from the feature maps and converts its cell anchors to it; under bf16
    autocast the anchor corners would lie on a grid of 2 pixels beyond 256, and the box coder, the matcher and
    the losses would work on them. In float32 the result is torchvision's, bit for bit.
    """

    def set_cell_anchors(self, dtype: torch.dtype, device: torch.device) -> None:
        super().set_cell_anchors(torch.float32, device)


class Float32RetinaNetHead(RetinaNetHead):
    """torchvision's RetinaNet head whose outputs are float32 (its convolutions may run in bf16 under autocast),
    so that the losses and the post-processing are computed in float32. Same parameters as ``RetinaNetHead``."""

    def forward(self, x: list[Tensor]) -> dict[str, Tensor]:
        return {name: value.float() for name, value in super().forward(x).items()}


def _anchor_generator(sizes: Sequence[float], min_level: int = 3) -> AnchorGenerator:
    if len(sizes) != _LEVELS or any(float(s) <= 0 for s in sizes):
        levels = ", ".join(f"P{min_level + i}" for i in range(_LEVELS))
        raise ConfigError(
            "model.anchor_sizes",
            f"needs {_LEVELS} positive sizes (pixels, one per pyramid level {levels}), got {list(sizes)!r}",
            "use e.g. [8, 16, 32, 64] (min_level 3) or [4, 8, 16, 32] (min_level 2)",
        )
    # Three scales per octave, as RetinaNet's paper and torchvision's default.
    per_level = tuple(tuple(int(round(float(s) * 2 ** (i / 3))) for i in range(3)) for s in sizes)
    return Float32AnchorGenerator(per_level, ((0.5, 1.0, 2.0),) * _LEVELS)


def create_detector(
    backbone: str = "resnet50",
    *,
    weights: Any = "imagenet",
    allow_random_fallback: bool = False,
    context: int = 1,
    sequences: int = 1,
    fpn_channels: int = 128,
    anchor_sizes: Sequence[float] = (8, 16, 32, 64),
    min_level: int = 3,
    upsample: float = 1.0,
    slice_shape: Sequence[int] = (128, 128),
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_img: int = 20,
    progress: bool = True,
) -> SliceDetector:
    """A 2.5D RetinaNet detector on a registry ResNet (module docstring).

    Args:
        backbone: a ResNet of the registry (``resnet18``, ``resnet34``, ``resnet50``, ``resnet101``).
        weights: the backbone's initial weights, as for :func:`medvision.models.create_model`
            (``imagenet``, ``none``, a checkpoint file, an MLflow URI of a classifier).
        allow_random_fallback: start from a random initialisation when ImageNet weights are not
            available (logged as ``random-init (...)``, never passed off as ImageNet).
        context: neighbouring slices on each side (input channels ``2 * context + 1`` per sequence).
        sequences: MR sequences (channels of the volume) stacked per input, sequence-major; the input has
            ``sequences * (2 * context + 1)`` channels and the ImageNet first convolution is adapted to them.
        fpn_channels: channels of the feature pyramid and the RetinaNet head.
        anchor_sizes: base anchor size in network-input pixels, one per pyramid level (finest first).
        min_level: the finest pyramid level: 3 (``layer2``-``layer4``, strides 8-64) or 2 (``layer1``-``layer3``,
            strides 4-32: twice the resolution for lesions of a few voxels, without ``layer4``).
        upsample: every input (training crop or whole slice) is enlarged by this factor inside the network
            (:class:`ConstantScaleTransform`); boxes are returned in slice pixels.
        slice_shape: ``(H, W)`` of a typical whole slice (recorded; the example input of the logged model).
        image_mean, image_std: per-channel normalisation inside the network; default: none (0 and 1),
            right for z-scored MR; use the ImageNet statistics for inputs in [0, 1] (CT windows).
        score_thresh, nms_thresh, detections_per_img: torchvision's per-slice post-processing.
        progress: show the ImageNet download progress.

    Raises:
        ConfigError: a backbone that is not a ResNet, or bad settings.
    """
    from medvision.models.classifier import create_model

    spec = get_spec(backbone)
    if spec.family != "resnet":
        raise ConfigError(
            "model.backbone",
            f"{backbone} is a {spec.family}; the detector's feature pyramid needs a ResNet",
            "use resnet18, resnet34, resnet50 or resnet101",
        )
    if not (isinstance(context, int) and 0 <= context <= 4):
        raise ConfigError("model.context", f"must be an integer 0..4, got {context!r}", "use 1 (three slices)")
    if isinstance(sequences, bool) or not isinstance(sequences, int) or not 1 <= sequences <= 16:
        raise ConfigError(
            "data.volume.channels", f"1 to 16 sequences per input, got {sequences!r}", "name fewer sequences"
        )
    if min_level not in _STAGES:
        raise ConfigError("model.min_level", f"must be 2 or 3, got {min_level!r}", "use 3 (P3-P6) or 2 (P2-P5)")
    if not (0.25 <= float(upsample) <= 4.0):
        raise ConfigError("model.upsample", f"must be in [0.25, 4], got {upsample!r}", "use 1.0")
    if len(slice_shape) != 2 or min(int(s) for s in slice_shape) < 8:
        raise ConfigError("slice_shape", f"must be (H, W) >= 8, got {slice_shape!r}", None)
    channels = int(sequences) * (2 * context + 1)
    classifier = create_model(
        backbone,
        weights=weights,
        in_channels=channels,
        num_classes=1,
        allow_random_fallback=allow_random_fallback,
        progress=progress,
    )
    body = classifier.backbone
    stages = _STAGES[int(min_level)]
    widths = [int(body.get_submodule(name)[-1].conv1.in_channels) for name in stages]
    fpn = BackboneWithFPN(body, {name: str(i) for i, name in enumerate(stages)}, widths, int(fpn_channels))
    mean = [0.0] * channels if image_mean is None else [float(v) for v in image_mean]
    std = [1.0] * channels if image_std is None else [float(v) for v in image_std]
    if len(mean) != channels or len(std) != channels:
        raise ConfigError("model.image_mean", f"needs {channels} values (one per input channel)", None)
    h, w = (int(s) for s in slice_shape)
    anchors = _anchor_generator(anchor_sizes, int(min_level))
    # torchvision's RetinaNet v2 recipe: GroupNorm in the head and a GIoU box loss (faster, steadier training
    # from few images than the v1 head without normalisation).
    head = Float32RetinaNetHead(
        int(fpn_channels),
        anchors.num_anchors_per_location()[0],
        1,
        norm_layer=partial(nn.GroupNorm, 16),
    )
    head.regression_head._loss_type = "giou"
    retinanet = RetinaNet(
        fpn,
        num_classes=1,
        anchor_generator=anchors,
        head=head,
        min_size=int(round(min(h, w) * float(upsample))),
        max_size=int(round(max(h, w) * float(upsample))),
        image_mean=mean,
        image_std=std,
        score_thresh=float(score_thresh),
        nms_thresh=float(nms_thresh),
        detections_per_img=int(detections_per_img),
        topk_candidates=200,
    )
    retinanet.transform = ConstantScaleTransform(float(upsample), mean, std)
    architecture = {
        "class": DETECTOR_CLASS,
        "backbone": backbone,
        "context": int(context),
        "sequences": int(sequences),
        "fpn_channels": int(fpn_channels),
        "anchor_sizes": [float(s) for s in anchor_sizes],
        "min_level": int(min_level),
        "upsample": float(upsample),
        "slice_shape": [h, w],
        "image_mean": mean,
        "image_std": std,
        "score_thresh": float(score_thresh),
        "nms_thresh": float(nms_thresh),
        "detections_per_img": int(detections_per_img),
    }
    model = SliceDetector(retinanet, architecture, classifier.weights_source)
    logger.info(
        "Created a 2.5D RetinaNet on %s (%d sequence(s) x %d slices), weights: %s",
        backbone,
        sequences,
        2 * context + 1,
        model.weights_source.split(" (", 1)[0],  # a random initialisation's reason is said once, elsewhere
    )
    return model
