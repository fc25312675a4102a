"""The detector on CUDA (issue 15): bf16 autocast and channels_last, checked on the CPU.

No GPU here. torch's CPU autocast applies the same rules as CUDA's (convolutions in bf16; the focal loss's
``binary_cross_entropy_with_logits``, ``log``, ``exp`` and NMS in float32), so running the detector's real
training step and inference under ``torch.autocast("cpu", dtype=torch.bfloat16)`` checks the CUDA bf16 path:
the tests swap :func:`medvision.engine.detect.autocast_for` (which gives nothing on the CPU) for it. On the CPU
the code itself never casts nor converts, so the demo's figures do not move (the last tests show that the
detector's float32 anchors and head compute torchvision's numbers bit for bit).
"""

from __future__ import annotations

import contextlib
import copy
import types
from typing import Any

import numpy as np
import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.retinanet import RetinaNetHead

import medvision.engine.detect as detect_module
import medvision.engine.detection as detection_module
from medvision.data.slices import SliceIndex
from medvision.engine.detect import autocast_for, detect_slices
from medvision.engine.detection import DetectionTask, detector_losses
from medvision.models.detector import create_detector

#: bf16 keeps 8 bits of mantissa (a relative rounding step of 2**-8 = 0.4 %) through the ResNet-18, the
#: pyramid and the head; the losses themselves are float32. Measured on this batch (torch 2.14, CPU autocast):
#: on the first step (the same weights) the classification loss differs by 0.03 %, the box (GIoU) loss by
#: 1.0 %, the total by 0.4 %; then the two trajectories drift apart a little: 0.1 % and 1.2 % on the total on
#: steps 2 and 3 (over 5 steps at the same weights the box loss differed by at most 1.5 %). The tolerance, 5 %,
#: is three to four times the largest. bf16 anchors or head outputs would hardly move these losses on 64-pixel
#: slices (the anchors are integers below 256): the dtype test below catches them instead.
RELATIVE_TOLERANCE = 5e-2
#: channels_last changes only the order of the convolutions' sums: float32 rounding.
CHANNELS_LAST_TOLERANCE = 1e-4


def _cpu_bf16(*_: Any) -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=torch.bfloat16)


def _detector(**kwargs: Any) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_detector("resnet18", weights="none", slice_shape=(64, 64), context=1, **kwargs)


def _batch(n: int = 2) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 64, 64, generator=g) for _ in range(n)]
    for image in images:
        image[:, 20:36, 24:40] += 1.0  # a bright lesion where the box is
    targets = [{"boxes": torch.tensor([[24.0, 20.0, 40.0, 36.0]]), "labels": torch.zeros(1, dtype=torch.long)}
               for _ in images]  # fmt: skip
    return images, targets


def _train(net: torch.nn.Module, cast: Any, steps: int, lr: float = 1e-4) -> list[dict[str, float]]:
    images, targets = _batch()
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    out = []
    for _ in range(steps):
        parts = detector_losses(net, images, targets, cast())
        assert all(value.dtype == torch.float32 for value in parts.values())
        loss = sum(parts.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        out.append({"total": float(loss.detach()), **{k: float(v.detach()) for k, v in parts.items()}})
    return out


def _relative(a: float, b: float) -> float:
    return abs(a - b) / abs(a)


def test_bf16_autocast_training_losses_match_float32_within_the_stated_tolerance() -> None:
    net = _detector().train()
    twin = copy.deepcopy(net)
    fp32 = _train(net, contextlib.nullcontext, steps=3)
    bf16 = _train(twin, _cpu_bf16, steps=3)
    assert fp32[0] != bf16[0]  # bf16 really ran: the numbers differ, a little
    for name in ("classification", "bbox_regression"):  # the same weights on the first step
        assert _relative(fp32[0][name], bf16[0][name]) <= RELATIVE_TOLERANCE, (name, fp32[0], bf16[0])
    for a, b in zip(fp32, bf16, strict=True):
        assert _relative(a["total"], b["total"]) <= RELATIVE_TOLERANCE, (fp32, bf16)
    assert fp32[-1]["total"] < fp32[0]["total"] and bf16[-1]["total"] < bf16[0]["total"]  # both learn


def test_under_autocast_only_the_convolutions_are_bf16_anchors_and_head_outputs_stay_float32() -> None:
    net = _detector().train()
    seen: dict[str, Any] = {}
    rn = net.retinanet
    rn.backbone.register_forward_hook(lambda m, i, o: seen.update(features=next(iter(o.values())).dtype))
    rn.head.register_forward_hook(lambda m, i, o: seen.update(head={k: v.dtype for k, v in o.items()}))
    rn.anchor_generator.register_forward_hook(lambda m, i, o: seen.update(anchors=o[0].dtype))
    images, targets = _batch()
    detector_losses(net, images, targets, _cpu_bf16())
    assert seen["features"] == torch.bfloat16  # autocast is on
    assert seen["head"] == {"cls_logits": torch.float32, "bbox_regression": torch.float32}
    assert seen["anchors"] == torch.float32
    assert all(a.dtype == torch.float32 for a in rn.anchor_generator.cell_anchors)  # not left in bf16


def test_the_training_step_runs_under_the_precision_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """DetectionTask.step asks autocast_for(device, train.amp) for its cast: here CPU bf16, as CUDA's would."""
    calls = []

    def cast(device: Any, amp: str) -> contextlib.AbstractContextManager:
        calls.append((torch.device(device).type, amp))
        return _cpu_bf16()

    monkeypatch.setattr(detection_module, "autocast_for", cast)
    net = _detector().train()
    task = DetectionTask.__new__(DetectionTask)
    volume = torch.rand(1, 64, 64, 8)
    volume[:, 24:40, 20:36, 3:6] += 1.0
    data = types.SimpleNamespace(volume=types.SimpleNamespace(train_crop=None))
    task.cfg = types.SimpleNamespace(train=types.SimpleNamespace(amp="auto"), data=data)
    task.vols = [(volume, torch.tensor([[24.0, 20.0, 3.0, 40.0, 36.0, 6.0]]))]
    task.rng = np.random.default_rng(0)
    ctx = types.SimpleNamespace(device=torch.device("cpu"))
    out = task.step(net, [SliceIndex(0, 4), SliceIndex(0, 1)], torch.optim.SGD(net.parameters(), lr=1e-3), ctx)
    assert calls == [("cpu", "auto")]
    assert np.isfinite(out["loss"]) and out["loss"] > 0


def test_bf16_inference_gives_float32_boxes_close_to_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    net = _detector(score_thresh=0.0, detections_per_img=5).train()
    _train(net, contextlib.nullcontext, steps=3, lr=1e-3)  # a few steps, away from the initial prior
    volume = torch.rand(1, 64, 64, 6, generator=torch.Generator().manual_seed(1))
    volume[:, 24:40, 20:36, 2:4] += 1.0
    fp32 = detect_slices(net, volume, device="cpu", amp="auto")  # the CPU: float32 whatever amp says
    monkeypatch.setattr(detect_module, "autocast_for", _cpu_bf16)
    bf16 = detect_slices(net, volume, device="cpu", amp="auto")
    assert [k for k, _, _ in fp32] == [k for k, _, _ in bf16]
    # Measured: the best box of each slice moves by at most 0.2 pixel, its score (about 0.025) by at most 2 %.
    for (_, boxes_a, scores_a), (_, boxes_b, scores_b) in zip(fp32, bf16, strict=True):
        assert boxes_b.dtype == np.float32 and scores_b.dtype == np.float32
        j = int(np.argmin(np.abs(boxes_b - boxes_a[0]).max(axis=1)))  # the same box among bf16's five best
        assert np.abs(boxes_b[j] - boxes_a[0]).max() <= 1.0, (boxes_a[0], boxes_b)
        assert _relative(float(scores_a[0]), float(scores_b[j])) <= RELATIVE_TOLERANCE, (scores_a, scores_b)


@pytest.mark.filterwarnings("ignore:CUDA is not available:UserWarning")  # a CUDA autocast built, not entered
@pytest.mark.parametrize(("device", "amp", "enabled"), [
    ("cpu", "auto", False), ("cpu", "bf16", False), ("cpu", "off", False), ("cuda", "auto", True),
    ("cuda", "bf16", True), ("cuda", "off", False),
])  # fmt: skip
def test_the_detector_uses_the_classifiers_precision_rule(device: str, amp: str, enabled: bool) -> None:
    import medvision.engine.classification as classification
    import medvision.engine.distributed as distributed

    # One rule: both tasks call the same function.
    assert classification.autocast_for is distributed.autocast_for is autocast_for
    cast = autocast_for(device, amp)
    assert isinstance(cast, torch.autocast) is enabled
    if enabled:
        assert cast.fast_dtype == torch.bfloat16


def test_channels_last_converts_the_weights_and_the_batched_input() -> None:
    net = _detector().train()
    twin = copy.deepcopy(net)
    assert not net.channels_last
    assert twin.to_channels_last() is twin and twin.channels_last
    conv = twin.retinanet.backbone.body.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    inputs: list[torch.Tensor] = []
    twin.retinanet.backbone.register_forward_pre_hook(lambda m, i: inputs.append(i[0]))
    images, targets = _batch()
    a = detector_losses(net, images, targets, contextlib.nullcontext())
    b = detector_losses(twin, images, targets, contextlib.nullcontext())
    assert inputs[0].is_contiguous(memory_format=torch.channels_last) and not inputs[0].is_contiguous()
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=CHANNELS_LAST_TOLERANCE), name
    twin.to_channels_last(False)
    assert not twin.channels_last and twin.retinanet.backbone.body.conv1.weight.is_contiguous()


@pytest.mark.parametrize(("device", "converted"), [("cpu", False), ("cuda", True)])
def test_the_task_builds_a_channels_last_detector_on_cuda_only(device: str, converted: bool) -> None:
    """fit() converts the weights on CUDA (DetectionTask.channels_last); build_model the batched input too."""
    from medvision.config import load_config

    cfg = load_config("configs/tumor_detection_demo.yaml", ["model.weights=none"])
    task = DetectionTask(cfg)
    task.sequences = types.SimpleNamespace(count=1)
    task.slice_shape = (64, 64)
    model = task.build_model(types.SimpleNamespace(device=torch.device(device)))  # nothing runs on the device
    assert DetectionTask.channels_last is True
    assert model.channels_last is converted
    assert model.retinanet.backbone.body.conv1.weight.is_contiguous(memory_format=torch.channels_last) is converted


def test_on_the_cpu_the_float32_head_and_anchors_compute_torchvisions_numbers_bit_for_bit() -> None:
    net = _detector(score_thresh=0.0).train()
    stock = copy.deepcopy(net)
    stock.retinanet.head.__class__ = RetinaNetHead
    stock.retinanet.anchor_generator.__class__ = AnchorGenerator
    images, targets = _batch()
    a = net.loss(images, targets)
    b = stock.loss(images, targets)
    assert all(torch.equal(a[k], b[k]) for k in a)
    net.eval(), stock.eval()
    with torch.no_grad():
        found_a, found_b = net.detect(torch.stack(images)), stock.detect(torch.stack(images))
    for x, y in zip(found_a, found_b, strict=True):
        assert all(torch.equal(x[k], y[k]) for k in x)
