"""2.5D slice stacks and their boxes."""

from __future__ import annotations

import numpy as np
import torch

from medvision.data.slices import epoch_slices, foreground_slices, lesion_slices, slice_boxes, slice_stack, slice_stacks


def test_stack_is_the_neighbouring_slices_transposed_to_y_x_and_clamped_at_the_ends() -> None:
    vol = torch.arange(4 * 5 * 6, dtype=torch.float32).reshape(1, 4, 5, 6)  # (1, X, Y, Z)
    s = slice_stack(vol, 2, context=1)
    assert s.shape == (3, 5, 4)
    for c, k in enumerate((1, 2, 3)):
        assert torch.equal(s[c], vol[0, :, :, k].T)
    first = slice_stack(vol, 0, context=2)
    assert [int(torch.equal(first[c], vol[0, :, :, k].T)) for c, k in enumerate((0, 0, 0, 1, 2))] == [1] * 5
    batch = slice_stacks(vol, [0, 5], context=1)
    assert torch.equal(batch[1, 2], vol[0, :, :, 5].T)  # k + 1 = 6 is clamped to 5


def test_box_covers_a_slice_when_the_slice_centre_is_inside() -> None:
    boxes = np.array([[1, 2, 3, 5, 6, 7], [0, 0, 6, 1, 1, 8]], dtype=np.float32)  # second: too narrow? 1 px is kept
    assert slice_boxes(boxes, 2).shape == (0, 4)
    assert slice_boxes(boxes, 3).tolist() == [[1, 2, 5, 6]]
    assert slice_boxes(boxes, 6).tolist() == [[1, 2, 5, 6], [0, 0, 1, 1]]
    assert slice_boxes(boxes, 7).tolist() == [[0, 0, 1, 1]]
    assert lesion_slices(boxes, 10).tolist() == [3, 4, 5, 6, 7]
    # a box whose 2D cross-section is thinner than one pixel is no target
    assert slice_boxes(np.array([[1, 2, 3, 1.5, 6, 7]]), 4).shape == (0, 4)


def test_epoch_samples_every_lesion_slice_and_the_asked_share_of_foreground_negatives() -> None:
    vol = torch.zeros(1, 8, 8, 20)
    vol[0, :, :, 2:18] = torch.rand(8, 8, 16) + 0.1  # slices 0, 1, 18, 19 are empty background
    assert foreground_slices(vol).tolist() == list(range(2, 18))
    boxes = torch.tensor([[1.0, 1, 5, 4, 4, 9]])  # slices 5..8
    rng = np.random.default_rng(0)
    samples = epoch_slices([(vol, boxes)], negatives_per_positive=2.0, rng=rng)
    ks = [s.k for s in samples]
    assert sorted(k for k in ks if 5 <= k <= 8) == [5, 6, 7, 8]
    negatives = [k for k in ks if not 5 <= k <= 8]
    assert len(negatives) == 8 and len(set(negatives)) == 8 and all(2 <= k < 18 for k in negatives)


def _reference_stack(vol: np.ndarray, k: int, context: int) -> np.ndarray:
    """Sequence-major by hand: for each sequence c, its slices k - context .. k + context (clamped), as (y, x)."""
    depth = vol.shape[3]
    planes = [
        vol[c, :, :, min(max(k + j, 0), depth - 1)].T for c in range(vol.shape[0]) for j in range(-context, context + 1)
    ]
    return np.stack(planes)


def test_a_multi_sequence_volume_gives_every_sequence_its_neighbouring_slices_sequence_major() -> None:
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(4, 6, 5, 7)).astype(np.float32)  # (C, X, Y, Z): four sequences
    batch = slice_stacks(vol, [0, 3, 6], context=1)
    assert batch.shape == (3, 4 * 3, 5, 6)
    for n, k in enumerate((0, 3, 6)):
        np.testing.assert_array_equal(batch[n].numpy(), _reference_stack(vol, k, 1))
    s = slice_stack(vol, 3, context=1)
    # channel c * 3 + j is slice 3 - 1 + j of sequence c: channel 7 = sequence 2 (t1gd), slice 3
    np.testing.assert_array_equal(s[7].numpy(), vol[2, :, :, 3].T)
    np.testing.assert_array_equal(s[3].numpy(), vol[1, :, :, 2].T)
    wide = slice_stack(vol, 0, context=2)
    assert wide.shape == (20, 5, 6)
    np.testing.assert_array_equal(wide.numpy(), _reference_stack(vol, 0, 2))


def test_one_sequence_gives_exactly_the_stacks_of_a_3d_volume() -> None:
    rng = np.random.default_rng(1)
    vol3d = rng.normal(size=(6, 5, 7)).astype(np.float32)
    for context in (0, 1, 2):
        plain = slice_stacks(vol3d, list(range(7)), context=context)
        channel = slice_stacks(vol3d[None], list(range(7)), context=context)
        assert plain.shape == (7, 2 * context + 1, 5, 6) and plain.dtype == torch.float32
        assert torch.equal(plain, channel)
        # the stacks of before (X, Y, Z) -> (N, 2k+1, Y, X) by plain indexing
        idx = np.clip(np.arange(7)[:, None] + np.arange(-context, context + 1)[None], 0, 6)
        np.testing.assert_array_equal(plain.numpy(), vol3d[:, :, idx].transpose(2, 3, 1, 0))


def test_a_slice_is_foreground_when_any_sequence_varies_on_it() -> None:
    vol = torch.zeros(2, 4, 4, 6)
    vol[0, :, :, 1] = torch.rand(4, 4) + 0.1
    vol[1, :, :, 4] = torch.rand(4, 4) + 0.1  # only the second sequence shows slice 4
    assert foreground_slices(vol).tolist() == [1, 4]
    assert foreground_slices(vol[:1]).tolist() == [1]
    samples = epoch_slices([(vol, torch.zeros(0, 6))], negatives_per_positive=5.0, rng=np.random.default_rng(0))
    assert sorted(s.k for s in samples) == [1, 4]
