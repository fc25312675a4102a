"""Slice boxes -> 3D boxes, and voxel -> world boxes."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from medvision.engine.detect import merge_slices, world_boxes


def _track(k0: int, k1: int, box, score: float, jitter: float = 0.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [(k, np.asarray([box], float) + rng.normal(0, jitter, (1, 4)), np.array([score])) for k in range(k0, k1)]


def test_boxes_on_adjacent_slices_become_one_3d_box_spanning_them() -> None:
    dets = _track(10, 16, [10, 20, 30, 40], 0.9)
    boxes, scores, keys = merge_slices(dets)
    assert boxes.shape == (1, 6)
    np.testing.assert_allclose(boxes[0], [10, 20, 10, 30, 40, 16])
    assert scores[0] == pytest.approx(0.9)
    assert 10 <= keys[0] < 16


def test_the_3d_box_is_the_union_of_the_strong_cross_sections() -> None:
    dets = [(5, [[10, 10, 20, 20]], [0.8]), (6, [[8, 9, 22, 21]], [0.9]), (7, [[11, 11, 19, 19]], [0.2])]
    boxes, scores, keys = merge_slices(dets)
    np.testing.assert_allclose(boxes[0], [8, 9, 5, 22, 21, 7])  # slice 7 is below half the best score
    assert keys[0] == 6
    assert scores[0] == pytest.approx((0.9 + 0.8 + 0.2) / 3)


def test_separate_lesions_stay_separate_and_one_slice_boxes_are_penalised() -> None:
    dets = _track(0, 8, [0, 0, 10, 10], 0.8) + [(3, np.array([[50, 50, 60, 60]]), np.array([0.9]))]
    boxes, scores, keys = merge_slices(dets)
    assert len(boxes) == 2
    lone = int(np.argmin(scores))
    np.testing.assert_allclose(boxes[lone], [50, 50, 3, 60, 60, 4])
    assert scores[lone] == pytest.approx(0.3)  # (0.9 + 0 + 0) / 3
    assert scores[1 - lone] == pytest.approx(0.8)


def test_a_gap_of_one_slice_is_bridged_but_not_two() -> None:
    one_gap = _track(0, 3, [0, 0, 10, 10], 0.9) + _track(4, 7, [0, 0, 10, 10], 0.9)
    assert len(merge_slices(one_gap)[0]) == 1
    two_gap = (
        _track(0, 3, [0, 0, 10, 10], 0.9) + _track(5, 8, [40, 40, 50, 50], 0.9) + _track(5, 8, [0, 0, 10, 10], 0.9)
    )
    assert len(merge_slices(two_gap, nms_iou=0.99)[0]) == 3


def test_no_detections_give_empty_arrays() -> None:
    boxes, scores, keys = merge_slices([(0, np.zeros((0, 4)), np.zeros(0))])
    assert boxes.shape == (0, 6) and scores.shape == (0,) and keys.shape == (0,)


def test_world_boxes_match_nibabel_on_the_voxel_centres() -> None:
    affine = np.array([[-2.0, 0, 0, 90], [0, 1.5, 0, -120], [0, 0, 3, -60], [0, 0, 0, 1]])
    box = np.array([[4, 6, 2, 10, 12, 5]], dtype=float)  # voxels 4..9, 6..11, 2..4
    w = world_boxes(box, affine)[0]
    # the box corners are half a voxel outside the first and last voxel centres
    lo = nib.affines.apply_affine(affine, [3.5, 5.5, 1.5])
    hi = nib.affines.apply_affine(affine, [9.5, 11.5, 4.5])
    np.testing.assert_allclose(w[:3], np.minimum(lo, hi), atol=1e-6)
    np.testing.assert_allclose(w[3:], np.maximum(lo, hi), atol=1e-6)
    np.testing.assert_allclose(w[3:] - w[:3], [12, 9, 9], atol=1e-6)  # sizes in mm
