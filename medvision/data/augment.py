"""Batched augmentation on the training device, after the cached, deterministic part of the pipeline.

MONAI's random transforms work one sample at a time on the CPU, in the DataLoader workers. On a GPU
that caps training: with DenseNet-121 on one H200 the per-sample ``RandAffined`` chain fed about half
the images per second that the network could take. The same augmentations -- random rotation, scale
and translation (one ``affine_grid``/``grid_sample`` for the whole batch), gamma contrast and Gaussian
noise -- are written here as batched tensor operations, with the same settings and defaults as
:data:`medvision.data.transforms.DEFAULT_AUGMENT`. MONAI has no batched random affine; this is the
piece written by hand.

The cache holds uint16 fixed-point images of [0, 1] (``classification_transforms(normalise_on_device=True)``);
:func:`normalise_batch` turns a batch of them into float32 ``(x - mean) / std`` on the device, and the
augmentation runs after it, on normalised intensities, as the per-sample chain always did (the affine pads
with 0 = the mean intensity, ``noise_std`` is divided by ``std``). So a batch equals what the float32 chain
gave, up to the fixed-point rounding of the [0, 1] image (at most 1/131070 = 7.6e-6, divided by ``std`` after
normalisation).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from medvision.data.transforms import _augment_settings, from_fixed_point


def normalise_batch(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """``(images - mean) / std`` in float32: a batch of cached images (uint16 fixed point of [0, 1], or any
    float dtype in [0, 1]) as model input.

    Run it on the device, after the transfer: the loader hands over uint16, half the bytes of float32.

    Example:
        >>> normalise_batch(torch.tensor([0, 32768, 65535], dtype=torch.uint16), 0.5, 0.25).tolist()
        [-2.0, 3.0517578125e-05, 2.0]
    """
    return (from_fixed_point(images) - float(mean)) / float(std)


class BatchAugment:
    """Random affine, gamma contrast and noise for a batch ``(B, C, H, W)`` of normalised images.

    Each sample gets each augmentation with probability ``prob``, with its own random parameters.

    Args:
        augment: settings as in :data:`~medvision.data.transforms.DEFAULT_AUGMENT`.
        std: the normalisation divisor, so ``noise_std`` keeps its meaning in [0, 1] units.

    Example:
        >>> aug = BatchAugment({"prob": 1.0}, std=0.25)
        >>> g = torch.Generator().manual_seed(0)
        >>> aug(torch.zeros(4, 1, 32, 32), g).shape
        torch.Size([4, 1, 32, 32])
    """

    def __init__(self, augment: Mapping[str, Any] | None = None, *, std: float = 1.0) -> None:
        self.settings = _augment_settings(augment)
        self.std = float(std)

    @property
    def enabled(self) -> bool:
        return bool(self.settings["enabled"])

    def _uniform(self, n: int, low: float, high: float, g: torch.Generator, device: torch.device) -> torch.Tensor:
        return torch.rand(n, generator=g, device=device) * (high - low) + low

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment ``x``; ``generator`` lives on ``x``'s device and is reseeded by the caller per epoch."""
        if not self.enabled:
            return x
        s, n, dev = self.settings, x.shape[0], x.device
        p = float(s["prob"])
        x = x.float()
        # Random affine (rotation, isotropic scale, translation), identity where not drawn.
        use = (torch.rand(n, generator=generator, device=dev) < p).float()
        angle = self._uniform(n, -1, 1, generator, dev) * math.radians(float(s["rotate_deg"])) * use
        scale = 1 + self._uniform(n, -1, 1, generator, dev) * float(s["scale"]) * use
        shift = self._uniform(2 * n, -1, 1, generator, dev).reshape(n, 2) * 2 * float(s["translate"]) * use[:, None]
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        # Gamma contrast on each image's own min-max range (as MONAI's RandAdjustContrast).
        lo_g, hi_g = (float(v) for v in s["contrast"])
        use = torch.rand(n, generator=generator, device=dev) < p
        gamma = torch.where(use, self._uniform(n, lo_g, hi_g, generator, dev), torch.ones(n, device=dev))
        flat = x.reshape(n, -1)
        lo, hi = flat.min(1).values[:, None, None, None], flat.max(1).values[:, None, None, None]
        span = (hi - lo).clamp_min(1e-6)
        x = ((x - lo) / span).clamp_min(0).pow(gamma[:, None, None, None]) * span + lo
        # Gaussian noise, noise_std given in [0, 1] image units.
        use = (torch.rand(n, generator=generator, device=dev) < p).float()[:, None, None, None]
        noise = torch.randn(x.shape, generator=generator, device=dev)
        return x + noise * (float(s["noise_std"]) / self.std) * use
