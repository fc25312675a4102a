"""Axial slice stacks of a preprocessed volume, with their 2D boxes, for the 2.5D detector.

A volume here is the output of :func:`medvision.data.detection_transforms.detection_transforms`: an image
``(C, X, Y, Z)`` (RAS; C sequences, e.g. the four MR sequences of MSD Task01, or C = 1) and boxes ``(K, 6)``
``[x0, y0, z0, x1, y1, z1]`` in ``[min, max)`` voxel indices. Axial slice ``k`` of sequence ``c`` is
``image[c, :, :, k]``; the stack of slice ``k`` takes the slices ``k - context`` to ``k + context`` (repeating
the first or last slice at the ends) of every sequence as channels, **sequence-major**: channel
``c * (2 * context + 1) + j`` is slice ``k - context + j`` of sequence ``c`` (all neighbours of the first
sequence, then all of the second, ...), ``C * (2 * context + 1)`` channels in all. A single-sequence volume
(``(X, Y, Z)`` or ``(1, X, Y, Z)``) gives the ``2 * context + 1`` channels it always gave. The stack is
transposed to ``(channels, y, x)``, so that torchvision's ``(x1, y1, x2, y2)`` boxes are the volume's
``(x0, y0, x1, y1)``.

A lesion box covers slice ``k`` when the slice centre ``k + 0.5`` lies in ``[z0, z1)``.

MONAI's detection transforms work on whole volumes; cutting a volume into 2.5D slice samples with their box
cross-sections has no MONAI or torchvision counterpart, hence this small module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "SliceIndex",
    "crop_sample",
    "epoch_slices",
    "foreground_slices",
    "lesion_slices",
    "slice_boxes",
    "slice_stack",
    "slice_stacks",
]

#: 2D boxes narrower than this (pixels) on a slice (the tip of a lesion) are not training targets.
MIN_BOX_SIDE = 1.0


def _volume(image: Tensor | np.ndarray) -> Tensor:
    """The volume as ``(C, X, Y, Z)`` float (a 3D volume is one sequence)."""
    # A MONAI MetaTensor routes every torch op through its __torch_function__ (several times slower in the
    # network); the slices need only the voxels.
    t = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(np.asarray(image))
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4 or t.shape[0] < 1:
        raise ValueError(f"expected a volume (X, Y, Z) or (C, X, Y, Z), got shape {tuple(t.shape)}")
    return t.float()


def _indices(k: Tensor | Sequence[int], depth: int, context: int) -> Tensor:
    k = torch.as_tensor(k, dtype=torch.long).reshape(-1, 1)
    offsets = torch.arange(-context, context + 1, dtype=torch.long).reshape(1, -1)
    return (k + offsets).clamp_(0, depth - 1)


def slice_stacks(image: Tensor | np.ndarray, ks: Sequence[int] | Tensor, context: int = 1) -> Tensor:
    """Stacks ``(len(ks), C * (2 * context + 1), Y, X)`` of the axial slices ``ks`` of ``image`` ``(C, X, Y, Z)``.

    Channel order: sequence-major (module docstring); ``C = 1`` gives ``(len(ks), 2 * context + 1, Y, X)``.
    """
    vol = _volume(image).numpy()
    idx = _indices(ks, vol.shape[3], context).numpy()  # (N, S)
    n, s = idx.shape
    # vol[:, :, :, idx] -> (C, X, Y, N, S) -> (N, C, S, Y, X) -> (N, C * S, Y, X). NumPy, not torch: this small
    # gather would otherwise start torch's thread pool, which stalls for milliseconds whenever another process
    # holds a core.
    stacks = vol[:, :, :, idx].transpose(3, 0, 4, 2, 1).reshape(n, vol.shape[0] * s, vol.shape[2], vol.shape[1])
    return torch.from_numpy(np.ascontiguousarray(stacks))


def slice_stack(image: Tensor | np.ndarray, k: int, context: int = 1) -> Tensor:
    """The stack ``(C * (2 * context + 1), Y, X)`` around axial slice ``k`` (:func:`slice_stacks`)."""
    return slice_stacks(image, [k], context)[0]


def slice_boxes(boxes: Tensor | np.ndarray, k: int, *, min_side: float = MIN_BOX_SIDE) -> Tensor:
    """The 2D boxes ``(M, 4)`` ``[x0, y0, x1, y1]`` of the 3D ``boxes`` that cover axial slice ``k``."""
    b = torch.as_tensor(np.asarray(boxes) if not isinstance(boxes, Tensor) else boxes).float().reshape(-1, 6)
    centre = k + 0.5
    keep = (b[:, 2] <= centre) & (centre < b[:, 5])
    keep &= (b[:, 3] - b[:, 0] >= min_side) & (b[:, 4] - b[:, 1] >= min_side)
    return b[keep][:, [0, 1, 3, 4]]


def lesion_slices(boxes: Tensor | np.ndarray, depth: int) -> np.ndarray:
    """Sorted axial indices covered by at least one box."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 6)
    ks = np.arange(depth)
    covered = np.zeros(depth, dtype=bool)
    for box in b:
        covered |= (box[2] <= ks + 0.5) & (ks + 0.5 < box[5])
    return ks[covered]


def foreground_slices(image: Tensor | np.ndarray, *, eps: float = 1e-6) -> np.ndarray:
    """Axial indices whose slice is not constant in some sequence (skips empty background slices at inference)."""
    vol = _volume(image)
    flat = vol.permute(0, 3, 1, 2).reshape(vol.shape[0], vol.shape[3], -1)  # (C, Z, X * Y)
    spread = (flat.amax(dim=2) - flat.amin(dim=2)).amax(dim=0)
    return torch.nonzero(spread > eps).flatten().numpy()


@dataclass(frozen=True)
class SliceIndex:
    """One training sample: slice ``k`` of volume ``volume`` (an index into the epoch's volume list)."""

    volume: int
    k: int


def epoch_slices(
    volumes: Sequence[tuple[Tensor, Tensor]],
    *,
    negatives_per_positive: float,
    rng: np.random.Generator,
) -> list[SliceIndex]:
    """Every slice with a lesion, and ``negatives_per_positive`` times as many foreground slices without, shuffled.

    Args:
        volumes: ``(image (C, X, Y, Z), boxes (K, 6))`` per volume.
        negatives_per_positive: how many lesion-free slices per lesion slice (drawn without replacement from
            the non-constant slices of all volumes).
        rng: the epoch's random generator.
    """
    positives: list[SliceIndex] = []
    negatives: list[SliceIndex] = []
    for v, (image, boxes) in enumerate(volumes):
        depth = int(image.shape[-1])
        lesion = set(lesion_slices(boxes, depth).tolist())
        positives += [SliceIndex(v, int(k)) for k in sorted(lesion)]
        negatives += [SliceIndex(v, int(k)) for k in foreground_slices(image) if int(k) not in lesion]
    n_neg = min(len(negatives), int(round(negatives_per_positive * max(len(positives), 1))))
    chosen = [negatives[i] for i in rng.choice(len(negatives), size=n_neg, replace=False)] if n_neg else []
    samples = positives + chosen
    order = rng.permutation(len(samples))
    return [samples[i] for i in order]


def crop_sample(
    stack: Tensor, boxes: Tensor, size: int | None, rng: np.random.Generator, *, min_side: float = MIN_BOX_SIDE
) -> tuple[Tensor, Tensor]:
    """A square training crop of a slice stack ``(C, H, W)`` and its boxes ``(M, 4)`` (``x0, y0, x1, y1``).

    With boxes, the crop holds the centre of one of them (chosen at random) at a random place at least a
    quarter of the crop from the edges, where the slice allows; without boxes it lies anywhere. Boxes are
    shifted into the crop and clipped to it; a box left thinner than ``min_side`` is dropped. ``size=None``
    or a slice no larger than the crop returns the input.
    """
    _, h, w = stack.shape
    if size is None or (h <= size and w <= size):
        return stack, boxes
    ch, cw = min(size, h), min(size, w)
    if len(boxes):
        b = boxes[int(rng.integers(len(boxes)))]
        cx, cy = float(b[0] + b[2]) / 2, float(b[1] + b[3]) / 2
        x_lo, x_hi = cx - cw * 0.75, cx - cw * 0.25
        y_lo, y_hi = cy - ch * 0.75, cy - ch * 0.25
        x0 = int(np.clip(round(rng.uniform(x_lo, x_hi)), 0, w - cw))
        y0 = int(np.clip(round(rng.uniform(y_lo, y_hi)), 0, h - ch))
    else:
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    crop = stack[:, y0 : y0 + ch, x0 : x0 + cw]
    if not len(boxes):
        return crop, boxes
    shifted = boxes - torch.tensor([x0, y0, x0, y0], dtype=boxes.dtype)
    shifted[:, [0, 2]] = shifted[:, [0, 2]].clamp(0, cw)
    shifted[:, [1, 3]] = shifted[:, [1, 3]].clamp(0, ch)
    keep = (shifted[:, 2] - shifted[:, 0] >= min_side) & (shifted[:, 3] - shifted[:, 1] >= min_side)
    return crop, shifted[keep]
