"""The compact training cache (issue 15): uint16 fixed-point entries of [0, 1], normalised on the device.

The old chain cached float32 images already normalised; these tests hold the new one to its output, up to
the fixed-point rounding of the [0, 1] image (at most 1/131070 = 7.6e-6, divided by std after normalisation).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import DataLoader

import medvision.data.transforms as transforms_module
from medvision.data import TRANSFORM_VERSION, classification_transforms, make_dataset, transform_digest
from medvision.data.augment import BatchAugment, normalise_batch
from medvision.data.transforms import FixedPointImaged
from medvision.errors import InputError
from tests.conftest import write_dicom

SIZE = 40
MEAN, STD = 0.449, 0.226
SETTINGS = {"image_size": SIZE, "keep_aspect": True, "mean": MEAN, "std": STD}
#: round(65535 x) keeps [0, 1] within half a step: 1/131070 (plus float32 rounding of the division).
HALF_ULP = 0.5 / 65535 + 1e-7
TOL = HALF_ULP / STD + 1e-6


@pytest.fixture
def items(tmp_path: Path, rng: np.random.Generator) -> list[dict]:
    out = []
    for i in range(5):
        yy, xx = np.mgrid[0 : 70 + 8 * i, 0:60]
        pixels = 2000 + 1500 * np.sin(xx / (5.0 + i)) * np.cos(yy / 7.0) + rng.normal(0, 60, xx.shape)
        path = write_dicom(
            tmp_path / "img" / f"{i}.dcm",
            pixels.clip(0, 4095).astype(np.uint16),
            bits_stored=12,
            photometric="MONOCHROME1" if i == 3 else "MONOCHROME2",
        )
        out.append({"image": str(path), "label": i % 2})
    return out


def _batch(items: list[dict], chain) -> torch.Tensor:
    return torch.stack([chain(dict(it))["image"] for it in items])


def test_cache_entries_are_uint16_fixed_point_images_of_0_1(tmp_path: Path, items: list[dict]) -> None:
    chain = classification_transforms(**SETTINGS, train=False, normalise_on_device=True)
    digest = transform_digest(**SETTINGS)
    ds = make_dataset(items, chain, cache_dir=tmp_path / "cache", settings_digest=digest)
    served = [ds[i]["image"] for i in range(len(ds))]
    files = sorted((tmp_path / "cache" / digest).glob("*.pt"))
    assert len(files) == len(items)
    loader = transforms_module.LoadRadiographd(size=SIZE, keep_aspect=True)
    exact = {it["image"]: loader(dict(it))["image"] for it in items}
    for path in files:
        entry = torch.load(path, weights_only=True)
        image = entry["image"]
        assert type(image) is torch.Tensor and image.dtype == torch.uint16 and tuple(image.shape) == (1, SIZE, SIZE)
        unit = image.float() / 65535
        assert float(unit.max()) > 0.9  # [0, 1] units, not normalised (which would reach (1 - mean) / std = 2.4)
        torch.testing.assert_close(unit, exact[entry["image_path"]], atol=HALF_ULP, rtol=0)
    # Half the bytes of the float32 image, in memory and through the loader.
    assert all(t.dtype == torch.uint16 and t.element_size() * t.nelement() == 2 * SIZE * SIZE for t in served)


def test_device_normalised_batch_equals_the_float32_chain(tmp_path: Path, items: list[dict]) -> None:
    old = _batch(items, classification_transforms(**SETTINGS, train=False))
    ds = make_dataset(
        items,
        classification_transforms(**SETTINGS, train=False, normalise_on_device=True),
        cache_dir=tmp_path / "cache",
        settings_digest=transform_digest(**SETTINGS),
    )
    for _ in range(2):  # cold (computed), then warm (read back from the cache files)
        [batch] = list(DataLoader(ds, batch_size=len(items), shuffle=False))
        assert batch["image"].dtype == torch.uint16
        new = normalise_batch(batch["image"], MEAN, STD)
        assert new.dtype == torch.float32
        torch.testing.assert_close(new, old, atol=TOL, rtol=0)
        assert float((new - old).abs().max()) > 0  # really fixed point (else the test proves nothing)


def test_batched_augmentation_after_normalisation_matches_the_old_order(items: list[dict]) -> None:
    old = _batch(items, classification_transforms(**SETTINGS, train=False))
    half = _batch(items, classification_transforms(**SETTINGS, train=False, normalise_on_device=True))
    aug = BatchAugment({"prob": 1.0}, std=STD)
    a = aug(old, torch.Generator().manual_seed(3))
    b = aug(normalise_batch(half, MEAN, STD), torch.Generator().manual_seed(3))
    # Bilinear resampling averages neighbours and gamma in [0.9, 1.1] stretches little: the bound barely grows.
    torch.testing.assert_close(b, a, atol=2 * TOL, rtol=0)


def test_per_sample_augmentation_in_0_1_units_matches_the_normalised_chain(items: list[dict]) -> None:
    augment = {"prob": 1.0, "noise_std": 0.05}
    old_chain = classification_transforms(**SETTINGS, train=True, augment=augment)
    new_chain = classification_transforms(**SETTINGS, train=True, augment=augment, normalise_on_device=True)
    old_chain.set_random_state(seed=7)
    new_chain.set_random_state(seed=7)
    old, new = _batch(items, old_chain), _batch(items, new_chain)
    assert new.dtype == torch.float32
    # The affine pads with the mean (0 after normalisation) and the noise keeps its [0, 1] level.
    torch.testing.assert_close(normalise_batch(new, MEAN, STD), old, atol=3 * TOL, rtol=0)
    plain = _batch(items, classification_transforms(**SETTINGS, train=False))
    assert float((old - plain).abs().max()) > 0.1  # the augmentation did act


def test_per_sample_affine_pads_with_the_mean_intensity(items: list[dict]) -> None:
    shift_only = {"prob": 1.0, "rotate_deg": 0, "scale": 0, "translate": 0.3, "noise_std": 0, "contrast": (1, 1)}
    new_chain = classification_transforms(**SETTINGS, train=True, augment=shift_only, normalise_on_device=True)
    new_chain.set_random_state(seed=1)
    new = _batch(items, new_chain)
    padded = (new - MEAN).abs() < 1e-6
    assert int(padded.sum()) > SIZE  # a shift of up to 30% leaves a padded band, at the mean (0 when normalised)


def test_the_uncached_chain_is_unchanged(items: list[dict]) -> None:
    """The model contract's chain (report, evaluate): float32 ``(x - mean) / std``, exactly as before."""
    chain = classification_transforms(**SETTINGS, train=False)
    assert [type(t).__name__ for t in chain.transforms] == [
        "LoadRadiographd",
        "DeleteItemsd",
        "NormalizeIntensityd",
        "EnsureTyped",
    ]
    loader = transforms_module.LoadRadiographd(size=SIZE, keep_aspect=True)
    for it in items:
        out = chain(dict(it))["image"]
        assert type(out) is torch.Tensor and out.dtype == torch.float32
        assert torch.equal(out, (loader(dict(it))["image"] - MEAN) / STD)


def test_cache_version_and_digest_moved_on(monkeypatch: pytest.MonkeyPatch) -> None:
    assert TRANSFORM_VERSION == 2
    new = transform_digest(**SETTINGS)
    monkeypatch.setattr(transforms_module, "TRANSFORM_VERSION", 1)
    old = transform_digest(**SETTINGS)
    assert new != old
    # The digest version 1 wrote (float32 normalised entries): never the folder of the uint16 ones.
    payload = json.dumps({"version": 1, **SETTINGS}, sort_keys=True, default=str, separators=(",", ":"))
    assert old == hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def test_fixed_point_conversion_needs_a_tensor() -> None:
    with pytest.raises(InputError, match="expected a tensor, got str"):
        FixedPointImaged(keys="image")({"image": "a.dcm"})


def test_the_two_layouts_never_read_each_others_entries(tmp_path: Path, items: list[dict]) -> None:
    digest = transform_digest(**SETTINGS)  # the same folder on purpose
    half = make_dataset(
        items,
        classification_transforms(**SETTINGS, train=False, normalise_on_device=True),
        cache_dir=tmp_path,
        settings_digest=digest,
    )
    full = make_dataset(
        items, classification_transforms(**SETTINGS, train=False), cache_dir=tmp_path, settings_digest=digest
    )
    for _ in range(2):
        assert half[0]["image"].dtype == torch.uint16 and full[0]["image"].dtype == torch.float32
    names = sorted(p.name for p in (tmp_path / digest).iterdir())
    assert len(names) == 2 and sum(n.endswith("-u16.pt") for n in names) == 1
