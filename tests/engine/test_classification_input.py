"""Model input from the compact cache (issue 15): the steps normalise uint16 fixed-point [0, 1] batches on the device.

Evaluation through the training cache and through the model contract's own transforms (what ``report``
and ``evaluate`` use, no cache) must give the same logits, and a training step the same loss.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import medvision.engine.classification as engine
from medvision.data import classification_transforms, make_dataset, transform_digest
from medvision.engine.distributed import DistContext
from medvision.errors import DataError
from medvision.models import create_model
from medvision.models.contract import ClassifierMetadata
from tests.engine.conftest import make_cxr_set

SIZE = 48


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("cxr")
    manifest = make_cxr_set(root, n_patients=6)
    from medvision.data import load_datalist

    items = [{"image": it["image"], "label": int(it["label"])} for it in load_datalist("csv", manifest)]
    torch.manual_seed(0)
    model = create_model("resnet18", weights="none", in_channels=1, num_classes=1, progress=False).eval()
    pre = model.preprocessing
    mean, std = float(np.mean(pre["mean"])), float(np.mean(pre["std"]))
    return root, items, model, mean, std


def test_cached_eval_and_contract_transforms_give_the_same_logits(setup) -> None:
    root, items, model, mean, std = setup
    cached = make_dataset(
        items,
        classification_transforms(image_size=SIZE, mean=mean, std=std, train=False, normalise_on_device=True),
        cache_dir=root / "cache",
        settings_digest=transform_digest(image_size=SIZE, keep_aspect=True, mean=mean, std=std),
    )
    meta = ClassifierMetadata(
        backbone="resnet18",
        image_size=SIZE,
        mean=mean,
        std=std,
        threshold=0.5,
        intended_use="test",
        weights_source="none",
    )
    uncached = make_dataset(items, meta.transforms(), cache_dir=None, settings_digest="x")
    cpu = torch.device("cpu")
    a, ya = engine.predict_logits(model, DataLoader(cached, batch_size=5), cpu, normalise=(mean, std))
    b, yb = engine.predict_logits(model, DataLoader(uncached, batch_size=5), cpu)
    np.testing.assert_array_equal(ya, yb)
    assert len(a) == len(items) and np.all(np.isfinite(a))
    np.testing.assert_allclose(a, b, atol=1e-3 * max(1.0, float(np.abs(b).max())), rtol=0)
    # Without the normalisation the cached [0, 1] images are not model input: a typed error, not wrong logits.
    with pytest.raises(DataError, match="without normalisation"):
        engine.predict_logits(model, DataLoader(cached, batch_size=5), cpu)


def test_train_step_normalises_the_half_batch_before_the_network(setup) -> None:
    root, items, model, mean, std = setup
    cached = make_dataset(
        items[:8],
        classification_transforms(image_size=SIZE, mean=mean, std=std, train=False, normalise_on_device=True),
        cache_dir=root / "cache",
        settings_digest=transform_digest(image_size=SIZE, keep_aspect=True, mean=mean, std=std),
    )
    old = make_dataset(
        items[:8], classification_transforms(image_size=SIZE, mean=mean, std=std, train=False), cache_dir=None,
        settings_digest="x",
    )  # fmt: skip
    [half] = list(DataLoader(cached, batch_size=8))
    [full] = list(DataLoader(old, batch_size=8))
    assert half["image"].dtype == torch.uint16 and full["image"].dtype == torch.float32
    seen: list[torch.Tensor] = []

    class Spy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.detach().clone())
            return x.mean((1, 2, 3))[:, None] * self.w

    ctx = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    for batch, normalise in ((half, (mean, std)), (full, None)):
        net = Spy()
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
        engine._train_step(net, batch, nn.BCEWithLogitsLoss(), optimizer, ctx, "off", normalise=normalise)
    assert seen[0].dtype == torch.float32
    torch.testing.assert_close(seen[0], seen[1], atol=2.0**-12 / std + 1e-6, rtol=0)
