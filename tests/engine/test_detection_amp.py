"""The detector on CUDA (issue 15): its training step runs the network under bf16 autocast with channels_last,
as the classifier's does. No GPU here: the same losses are computed under the CPU's bf16 autocast (the same
torch autocast rules pick float32 for the focal and L1 losses) and compared with float32; on the CPU the
training step itself stays float32, so the demo's figures do not move."""

from __future__ import annotations

import contextlib
import copy
import types

import pytest
import torch

from medvision.engine.classification import _autocast
from medvision.engine.detection import DetectionTask, detector_losses
from medvision.models.detector import create_detector

#: bf16 keeps 8 bits of mantissa (a relative step of 2**-8 = 0.4 %) through a ResNet-18 and the pyramid;
#: measured on this batch: 0.4 % on the first two SGD steps' losses (1.2 % on a third: a trajectory drifts),
#: 0.01 % on the classification loss and 0.9 % on the box loss alone. The tolerance is four times the third's.
RELATIVE_TOLERANCE = 0.05


def _batch(net: torch.nn.Module, n: int = 2) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(2 * net.context + 1, 64, 64, generator=g) for _ in range(n)]
    for image in images:
        image[:, 20:36, 24:40] += 1.0  # a bright lesion where the box is
    targets = [{"boxes": torch.tensor([[24.0, 20.0, 40.0, 36.0]]), "labels": torch.zeros(1, dtype=torch.long)}
               for _ in images]  # fmt: skip
    return images, targets


def _train(net: torch.nn.Module, cast: contextlib.AbstractContextManager, steps: int) -> list[float]:
    images, targets = _batch(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-4)
    losses = []
    for _ in range(steps):
        parts = detector_losses(net, images, targets, cast)
        assert all(value.dtype == torch.float32 for value in parts.values())
        loss = sum(parts.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def test_bf16_autocast_losses_match_float32_within_the_stated_tolerance() -> None:
    torch.manual_seed(0)
    net = create_detector("resnet18", weights="none", slice_shape=(64, 64), context=1).train()
    twin = copy.deepcopy(net)
    fp32 = _train(net, contextlib.nullcontext(), steps=2)
    bf16 = _train(twin, torch.autocast("cpu", dtype=torch.bfloat16), steps=2)
    assert fp32 != bf16  # bf16 really ran: the numbers differ, a little
    for a, b in zip(fp32, bf16, strict=True):
        assert abs(a - b) <= RELATIVE_TOLERANCE * abs(a), (fp32, bf16)


@pytest.mark.parametrize(("device", "amp", "enabled"), [
    ("cpu", "auto", False), ("cpu", "bf16", False), ("cuda", "auto", True), ("cuda", "bf16", True),
    ("cuda", "off", False),
])  # fmt: skip
def test_the_detector_uses_the_classifiers_precision_rule(device: str, amp: str, enabled: bool) -> None:
    ctx = types.SimpleNamespace(device=torch.device(device))
    cast = _autocast(ctx, amp)
    assert isinstance(cast, torch.autocast) is enabled
    if enabled:
        assert cast.fast_dtype == torch.bfloat16
    assert DetectionTask.channels_last is True  # the loop converts the model on CUDA only
