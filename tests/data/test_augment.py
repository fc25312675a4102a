"""Batched augmentation: identity when off, deterministic for a seed, each op does what it says."""

from __future__ import annotations

import math

import torch

from medvision.data.augment import BatchAugment


def _batch() -> torch.Tensor:
    x = torch.zeros(6, 1, 32, 32)
    x[:, :, 8:12, 20:24] = 1.0
    return x


def test_disabled_is_identity() -> None:
    x = _batch()
    assert BatchAugment({"enabled": False})(x, torch.Generator().manual_seed(0)) is x


def test_probability_zero_changes_nothing() -> None:
    x = _batch()
    out = BatchAugment({"prob": 0.0})(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


def test_same_seed_same_output_other_seed_differs() -> None:
    aug = BatchAugment({"prob": 1.0}, std=0.25)
    a = aug(_batch(), torch.Generator().manual_seed(1))
    b = aug(_batch(), torch.Generator().manual_seed(1))
    c = aug(_batch(), torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    # Per-sample parameters: the six identical inputs come out different.
    assert not torch.allclose(a[0], a[1])


def test_pure_rotation_moves_the_blob_by_the_angle() -> None:
    aug = BatchAugment(
        {"prob": 1.0, "rotate_deg": 45.0, "scale": 0.0, "translate": 0.0, "noise_std": 0.0, "contrast": (1.0, 1.0)}
    )
    x = torch.zeros(64, 1, 33, 33)
    x[:, :, 16, 24] = 1.0  # right of centre
    out = aug(x, torch.Generator().manual_seed(0))
    ys, xs = torch.meshgrid(torch.arange(33.0), torch.arange(33.0), indexing="ij")
    mass = out[:, 0].sum((1, 2))
    cy, cx = (out[:, 0] * ys).sum((1, 2)) / mass - 16, (out[:, 0] * xs).sum((1, 2)) / mass - 16
    radius = torch.sqrt(cx**2 + cy**2)
    assert torch.all((radius - 8).abs() < 1.0)  # rotation keeps the distance to the centre
    angles = torch.rad2deg(torch.atan2(cy, cx)).abs()
    assert float(angles.max()) <= 45.0 + 3 and float(angles.max()) > 20  # within the range, and used


def test_noise_level_in_image_units() -> None:
    aug = BatchAugment(
        {"prob": 1.0, "rotate_deg": 0.0, "scale": 0.0, "translate": 0.0, "noise_std": 0.1, "contrast": (1.0, 1.0)},
        std=0.25,
    )
    x = torch.zeros(8, 1, 64, 64)
    x[:, :, 0, 0] = 1.0  # a non-flat image so the contrast step keeps it
    out = aug(x, torch.Generator().manual_seed(0))
    assert math.isclose(float((out - x).std()), 0.1 / 0.25, rel_tol=0.05)
