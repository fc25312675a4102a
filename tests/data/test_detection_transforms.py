"""Detection transforms: boxes follow reorientation, resampling and augmentation; CT and MR intensities."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medvision.data.detection import boxes_from_mask, load_detection_datalist, read_volume_header
from medvision.data.detection_transforms import (
    ClipForegroundPercentilesd,
    LoadVolumed,
    ShiftBoxd,
    detection_transforms,
)
from medvision.errors import ConfigError

SHAPE = (40, 48, 32)
LESION = (slice(10, 20), slice(12, 22), slice(8, 16))
BACKGROUND_HU, LESION_HU = -800.0, 300.0
WINDOW = (-1000.0, 400.0)


def _ct_volume(path: Path, affine: np.ndarray, shape: tuple[int, int, int] = SHAPE) -> dict:
    """A CT-like volume with a bright cube lesion; the item carries the lesion's voxel box."""
    data = np.full(shape, BACKGROUND_HU, dtype=np.float32)
    data[LESION] = LESION_HU
    nib.save(nib.Nifti1Image(data, affine), path)
    mask = np.zeros(shape, dtype=np.uint8)
    mask[LESION] = 1
    boxes, labels = boxes_from_mask(mask)
    return {"image": str(path), "boxes": boxes.tolist(), "box_labels": labels.tolist()}


def _bright_box(image: torch.Tensor) -> np.ndarray:
    """Bounding box ``[min, max)`` of the voxels brighter than halfway between background and lesion."""
    lo, hi = ((v - WINDOW[0]) / (WINDOW[1] - WINDOW[0]) for v in (BACKGROUND_HU, LESION_HU))
    idx = np.argwhere(image[0].numpy() > (lo + hi) / 2)
    return np.concatenate([idx.min(axis=0), idx.max(axis=0) + 1]).astype(np.float64)


def _affine(
    diagonal: tuple[float, float, float], origin: tuple[float, float, float] = (12.0, -30.0, 7.5)
) -> np.ndarray:
    affine = np.diag([*diagonal, 1.0])
    affine[:3, 3] = origin
    return affine


def _permuted() -> np.ndarray:
    """Array axes (x, y, z) stored as (A, L, S): a permutation and a flip."""
    return np.array([[0.0, -1.0, 0, 20], [1.2, 0, 0, -5], [0, 0, 1.5, 3], [0, 0, 0, 1]])


GEOMETRIES = {
    "RAS 1 mm": _affine((1.0, 1.0, 1.0)),
    "LPS 1 mm": _affine((-1.0, -1.0, 1.0)),
    "LPS anisotropic": _affine((-0.8, -1.0, 1.5)),
    "permuted axes": _permuted(),
}


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_box_encloses_the_lesion_after_reorientation_and_resampling(tmp_path: Path, name: str) -> None:
    item = _ct_volume(tmp_path / "ct.nii.gz", GEOMETRIES[name])
    out = detection_transforms(spacing=(2.0, 2.0, 2.0), modality="CT")(item)
    image = out["image"]
    assert np.allclose(np.sqrt((image.affine[:3, :3].numpy() ** 2).sum(axis=0)), 2.0)
    assert "".join(nib.aff2axcodes(image.affine.numpy())) == "RAS"
    assert out["boxes"].shape == (1, 6) and out["box_labels"].tolist() == [0]
    box = out["boxes"][0].numpy().astype(np.float64)
    bright = _bright_box(image)
    assert np.abs(box - bright).max() <= 1.0, (box, bright)
    # The physical extent of the lesion is kept: in mm, the box is the lesion size.
    extent_mm = (box[3:] - box[:3]) * 2.0
    lesion_mm = np.array([s.stop - s.start for s in LESION]) * np.sqrt((GEOMETRIES[name][:3, :3] ** 2).sum(axis=0))
    assert np.allclose(sorted(extent_mm), sorted(lesion_mm), atol=1e-3)


def test_an_lps_input_lands_where_the_ras_input_does(tmp_path: Path) -> None:
    """The same scan stored RAS and LPS (array flipped, affine flipped) gives the same image and box."""
    ras = _ct_volume(tmp_path / "ras.nii.gz", _affine((1.0, 1.0, 1.0)))
    data = np.asarray(nib.load(ras["image"]).dataobj)[::-1, ::-1]
    lps_affine = _affine((1.0, 1.0, 1.0)) @ np.array(
        [[-1.0, 0, 0, SHAPE[0] - 1], [0, -1, 0, SHAPE[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1]]
    )
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), lps_affine), tmp_path / "lps.nii.gz")
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[LESION] = 1
    lps = {
        "image": str(tmp_path / "lps.nii.gz"),
        "boxes": boxes_from_mask(mask[::-1, ::-1])[0].tolist(),
        "box_labels": [0],
    }
    chain = detection_transforms(spacing=2.0, modality="CT")
    a, b = chain(ras), chain(lps)
    assert torch.equal(a["image"].as_tensor(), b["image"].as_tensor())
    assert torch.allclose(a["boxes"], b["boxes"], atol=1e-4)


def test_random_train_transforms_keep_box_and_lesion_aligned(tmp_path: Path) -> None:
    item = _ct_volume(tmp_path / "ct.nii.gz", _affine((-1.0, -1.0, 1.0)))
    augment = {"flip_prob": 0.5, "rotate90_prob": 0.5, "zoom_prob": 1.0, "zoom": (0.8, 1.25)}
    chain = detection_transforms(spacing=2.0, modality="CT", train=True, augment=augment)
    seen = set()
    for seed in range(8):
        chain.set_random_state(seed)
        out = chain(item)
        box = out["boxes"][0].numpy().astype(np.float64)
        bright = _bright_box(out["image"])
        assert np.abs(box - bright).max() <= 1.0, (seed, box, bright)
        assert (bright[:3] >= box[:3] - 1).all() and (bright[3:] <= box[3:] + 1).all()
        seen.add((tuple(out["image"].shape), tuple(np.round(box, 1))))
    assert len(seen) > 3  # the augmentation did something


def test_the_chain_inverts_back_to_the_input_boxes(tmp_path: Path) -> None:
    item = _ct_volume(tmp_path / "ct.nii.gz", GEOMETRIES["LPS anisotropic"])
    chain = detection_transforms(spacing=2.0, modality="CT")
    back = chain.inverse(chain(item))
    assert torch.allclose(back["boxes"], torch.tensor(item["boxes"]), atol=1e-3)
    assert tuple(back["image"].shape[1:]) == SHAPE


def test_ct_window_values(tmp_path: Path) -> None:
    hu = np.array([-2000.0, -1000.0, -300.0, 0.0, 400.0, 3000.0], dtype=np.float32)
    data = np.broadcast_to(hu[:, None, None], (6, 4, 4)).copy()
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "ct.nii.gz")
    out = detection_transforms(spacing=1.0, modality="CT", ct_window=(-1000, 400))(
        {"image": str(tmp_path / "ct.nii.gz"), "boxes": [], "box_labels": []}
    )
    values = out["image"][0, :, 0, 0].numpy()
    assert np.allclose(values, [0.0, 0.0, 0.5, 1000 / 1400, 1.0, 1.0], atol=1e-6)
    assert out["boxes"].shape == (0, 6) and out["box_labels"].shape == (0,)


def test_mr_percentile_clip_and_foreground_zscore(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = np.zeros(SHAPE, dtype=np.float32)  # skull-stripped: background exactly 0
    data[4:36, 4:44, 3:29] = rng.normal(600.0, 80.0, size=(32, 40, 26))
    data[LESION] = 5000.0  # far above the 99th percentile: clipped
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "mr.nii.gz")
    item = {"image": str(tmp_path / "mr.nii.gz"), "boxes": [[10, 12, 8, 20, 22, 16]], "box_labels": [0]}
    image = detection_transforms(spacing=1.0, modality="MR", mr_percentiles=(1, 99))(item)["image"][0].numpy()
    foreground = data != 0
    assert np.array_equal(image != 0, foreground)
    assert abs(float(image[foreground].mean())) < 1e-4
    assert abs(float(image[foreground].std()) - 1.0) < 1e-3
    assert np.ptp(image[LESION]) < 1e-5  # every lesion voxel clipped to the same 99th percentile
    assert float(image[LESION].min()) == pytest.approx(float(image.max()))


def test_mr_clip_ignores_the_background_and_each_channel_has_its_own() -> None:
    image = torch.zeros(2, 10, 10, 10)
    image[0, 2:8, 2:8, 2:8] = torch.arange(216, dtype=torch.float32).reshape(6, 6, 6) + 1
    image[1, 2:8, 2:8, 2:8] = 10 * (torch.arange(216, dtype=torch.float32).reshape(6, 6, 6) + 1)
    out = ClipForegroundPercentilesd("image", 10, 90)({"image": image})["image"]
    fg = image[0] != 0
    for c in range(2):
        lo, hi = np.percentile(image[c][fg].numpy(), [10, 90])
        assert float(out[c][fg].min()) == pytest.approx(lo) and float(out[c][fg].max()) == pytest.approx(hi)
        assert torch.equal(out[c][~fg], torch.zeros(int((~fg).sum())))


def test_shift_box_is_invertible() -> None:
    shift = ShiftBoxd("boxes", -0.5)
    boxes = torch.tensor([[1.0, 2, 3, 4, 5, 6]])
    moved = shift({"boxes": boxes})
    assert torch.equal(moved["boxes"], boxes - 0.5)
    assert torch.equal(shift.inverse(moved)["boxes"], boxes)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medvision.demo import write_demo_data

    root = tmp_path_factory.mktemp("demo") / "out"
    write_demo_data(root, seed=0, n_cxr_patients=2, n_mri=2, n_mri_dicom=1)
    return root / "mri"


def test_demo_nifti_and_its_dicom_series_give_the_same_sample(demo: Path) -> None:
    """BRAIN_001 as NIfTI and as a DICOM series (x and y flipped): same RAS image, same boxes."""
    (item, _) = load_detection_datalist("detection", demo / "detection.json")
    nifti = read_volume_header(item["image"])
    dicom = read_volume_header(demo / "dicom" / "BRAIN_001")
    # Map the voxel boxes onto the DICOM grid through the two affines (voxel corners = centres - 0.5).
    to_dicom = np.linalg.inv(dicom.affine) @ nifti.affine
    dicom_boxes = []
    for box in np.asarray(item["boxes"]):
        corners = to_dicom @ np.array([[*(box[:3] - 0.5), 1.0], [*(box[3:] - 0.5), 1.0]]).T + 0.5
        dicom_boxes.append([*corners[:3].min(axis=1), *corners[:3].max(axis=1)])
    chain = detection_transforms(spacing=2.0, modality="MR")
    a = chain(item)
    b = chain({**item, "image": str(demo / "dicom" / "BRAIN_001"), "boxes": dicom_boxes})
    assert torch.allclose(a["image"].as_tensor(), b["image"].as_tensor(), atol=1e-4)
    assert torch.allclose(a["boxes"], b["boxes"], atol=1e-3)
    assert torch.allclose(a["boxes"], torch.tensor(item["boxes"]))  # already RAS at 2 mm: unchanged
    mask = LoadVolumed()({"image": item["mask"]})["image"].numpy()
    assert np.allclose(sorted(boxes_from_mask(mask)[0].tolist()), sorted(a["boxes"].tolist()))


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"modality": "PET"}, "data.modality"),
        ({"spacing": (2.0, 0.0, 2.0)}, "data.spacing"),
        ({"spacing": (2.0, 2.0)}, "data.spacing"),
        ({"ct_window": (400, -1000)}, "data.ct_window"),
        ({"mr_percentiles": (1, 101)}, "data.mr_percentiles"),
        ({"augment": {"rotate": 1}}, "augment.rotate"),
        ({"augment": {"flip_prob": 2}}, "augment.flip_prob"),
        ({"augment": {"zoom": (1.2, 0.8)}}, "augment.zoom"),
    ],
)
def test_bad_settings_are_config_errors(settings: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        detection_transforms(**settings)
    assert info.value.where == key


def test_train_chain_has_the_box_augmentations() -> None:
    names = [type(t).__name__ for t in detection_transforms(train=True).transforms]
    assert names.count("RandFlipBoxd") == 3 and "RandRotateBox90d" in names and "RandZoomBoxd" in names
    names = [type(t).__name__ for t in detection_transforms(train=True, augment={"enabled": False}).transforms]
    assert not any(n.startswith("Rand") for n in names)


def test_the_sequences_asked_for_are_kept_in_order_and_a_volume_without_them_is_refused(tmp_path: Path) -> None:
    from medvision.errors import SequenceError

    rng = np.random.default_rng(0)
    data = np.stack([rng.normal(100 + 50 * c, 10, (20, 18, 12)) for c in range(4)], axis=-1).astype(np.float32)
    affine = np.diag([-2.0, 2.0, 2.0, 1.0])  # an x flip: the boxes must follow
    path = tmp_path / "four.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    sample = {"image": str(path), "boxes": np.array([[2, 3, 4, 8, 9, 10]], np.float32), "box_labels": np.array([0])}
    every = detection_transforms(spacing=2.0)(dict(sample))
    assert tuple(every["image"].shape) == (4, 20, 18, 12)
    picked = detection_transforms(spacing=2.0, channels=[2, 0])(dict(sample))
    assert tuple(picked["image"].shape) == (2, 20, 18, 12)
    # per-channel normalisation: a kept sequence comes out as it does among all four
    torch.testing.assert_close(picked["image"].as_tensor(), every["image"].as_tensor()[[2, 0]])
    np.testing.assert_allclose(picked["image"].affine, every["image"].affine)
    torch.testing.assert_close(torch.as_tensor(picked["boxes"]), torch.as_tensor(every["boxes"]))
    assert torch.as_tensor(every["boxes"]).tolist() == [[12.0, 3.0, 4.0, 18.0, 9.0, 10.0]]

    flat = tmp_path / "t1.nii.gz"
    nib.save(nib.Nifti1Image(data[..., 0], affine), flat)
    chain = detection_transforms(spacing=2.0, channels=[2], sequences_wanted="data.volume.channels asks for t1gd")
    with pytest.raises(SequenceError) as info:
        chain({**sample, "image": str(flat)})
    assert info.value.where == str(flat)
    assert info.value.reason == "has 1 sequence (a 3D volume); data.volume.channels asks for t1gd"
    expect = detection_transforms(spacing=2.0, channels=[0, 1, 2, 3], expect_channels=4, sequences_wanted="x")
    assert tuple(expect(dict(sample))["image"].shape) == (4, 20, 18, 12)
    with pytest.raises(SequenceError, match="has 1 sequence"):
        expect({**sample, "image": str(flat)})
    # no selection asked for: the chain of a 3D volume is the chain it always was
    names = [type(t).__name__ for t in detection_transforms(spacing=2.0).transforms]
    assert "SelectSequencesd" not in names and names[:3] == ["LoadVolumed", "EnsureChannelFirstd", "EnsureTyped"]
