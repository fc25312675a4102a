"""Detection datalists: boxes from masks, MONAI detection JSON, decathlon JSON, CSV, splits, volume checks."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medvision.data import assign_splits, check_no_patient_overlap
from medvision.data.detection import (
    boxes_from_mask,
    check_volumes,
    load_detection_datalist,
    parse_boxes_3d,
    read_volume_header,
    world_to_voxel,
)
from medvision.data.detection_transforms import detection_transforms
from medvision.errors import ConfigError, DataError, InputError
from tests.conftest import pydicom_file

KEYS = {"image", "mask", "boxes", "box_labels", "label", "patient_id", "split", "source", "problem"}
SHAPE = (40, 48, 32)
LESION = (slice(10, 20), slice(12, 22), slice(8, 16))
LESION_BOX = [10.0, 12.0, 8.0, 20.0, 22.0, 16.0]


def _check_items(items: list[dict]) -> None:
    for item in items:
        assert set(item) == KEYS
        assert all(value is not None for value in item.values())
        assert len(item["boxes"]) == len(item["box_labels"])
        assert item["label"] == int(bool(item["boxes"]))


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
    return path


def _case(folder: Path, name: str, *, lesion: bool = True, shape: tuple[int, ...] = SHAPE) -> tuple[Path, Path]:
    """A 3D volume with a bright cube lesion and its mask (empty when ``lesion`` is false)."""
    image = np.full(shape, 100.0, dtype=np.float32)
    mask = np.zeros(shape, dtype=np.uint8)
    if lesion:
        image[LESION] = 400.0
        mask[LESION] = 1
    return _nifti(folder / "images" / f"{name}.nii.gz", image), _nifti(folder / "masks" / f"{name}.nii.gz", mask)


def _write_json(path: Path, doc: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medvision.demo import write_demo_data

    root = tmp_path_factory.mktemp("demo") / "out"
    write_demo_data(root, seed=0, n_cxr_patients=2, n_mri=4, n_mri_dicom=1)
    return root / "mri"


# ---- boxes_from_mask -----------------------------------------------------------------------------------------


def test_boxes_from_mask_known_mask() -> None:
    mask = np.zeros((20, 20, 20), dtype=np.uint8)
    mask[2:5, 3:9, 4:6] = 1
    mask[10:12, 10:11, 15:19] = 7  # any value > 0 is tumour
    mask[17, 17, 17] = 1  # a one-voxel speck
    boxes, labels = boxes_from_mask(mask)
    assert boxes.dtype == np.float32 and boxes.shape == (3, 6)
    assert boxes.tolist() == [[2, 3, 4, 5, 9, 6], [10, 10, 15, 12, 11, 19], [17, 17, 17, 18, 18, 18]]
    assert labels.tolist() == [0, 0, 0]
    assert boxes_from_mask(mask, min_voxels=2)[0].tolist() == [[2, 3, 4, 5, 9, 6], [10, 10, 15, 12, 11, 19]]
    # The box is [min, max + 1): the lesion is exactly mask[x0:x1, y0:y1, z0:z1].
    x0, y0, z0, x1, y1, z1 = (int(v) for v in boxes[0])
    assert mask[x0:x1, y0:y1, z0:z1].all() and mask.sum() - mask[x0:x1, y0:y1, z0:z1].sum() == 8 * 7 + 1


def test_boxes_from_mask_connectivity_and_empty() -> None:
    mask = np.zeros((6, 6, 6), dtype=np.int16)
    mask[1, 1, 1] = mask[2, 2, 2] = 1  # touching at a corner only
    assert len(boxes_from_mask(mask, connectivity=3)[0]) == 1
    assert len(boxes_from_mask(mask, connectivity=1)[0]) == 2
    boxes, labels = boxes_from_mask(np.zeros((4, 4, 4)))
    assert boxes.shape == (0, 6) and labels.shape == (0,)
    assert boxes_from_mask(mask[None])[0].tolist() == [[1, 1, 1, 3, 3, 3]]  # channel-first (1, x, y, z)
    with pytest.raises(ValueError, match="3D mask"):
        boxes_from_mask(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="connectivity"):
        boxes_from_mask(mask, connectivity=4)


def test_boxes_from_mask_match_demo_detection_json(demo: Path) -> None:
    doc = json.loads((demo / "detection.json").read_text())
    assert doc["box_mode"] == "xyzxyz" and doc["box_coordinates"].startswith("voxel")
    for entry in doc["training"]:
        mask = np.asarray(nib.load(demo / entry["mask"]).dataobj)
        boxes, _ = boxes_from_mask(mask)
        assert sorted(boxes.tolist()) == sorted(entry["box"])
        for value, box in zip(entry["mask_values"], entry["box"], strict=True):  # instance k <-> box k
            assert boxes_from_mask(mask == value)[0].tolist() == [box]


# ---- datalist formats ----------------------------------------------------------------------------------------


def test_detection_json_demo(demo: Path) -> None:
    items = load_detection_datalist("detection", demo / "detection.json")
    doc = json.loads((demo / "detection.json").read_text())
    _check_items(items)
    assert [item["boxes"] for item in items] == [entry["box"] for entry in doc["training"]]
    assert [item["patient_id"] for item in items] == [entry["patient_id"] for entry in doc["training"]]
    assert items[0]["image"] == str(demo / "imagesTr" / "BRAIN_001.nii.gz")
    assert items[0]["mask"] == str(demo / "labelsTr" / "BRAIN_001.nii.gz")
    assert items[0]["source"] == "detection.json:training[0]"
    assert {item["split"] for item in items} == {""} and {item["problem"] for item in items} == {""}


def test_world_boxes_convert_to_the_voxel_boxes(demo: Path, tmp_path: Path) -> None:
    doc = json.loads((demo / "detection.json").read_text())
    voxel = load_detection_datalist("detection", demo / "detection.json")
    for coordinates in ("world", "RAS millimetres", "world LPS"):
        world = dict(doc, box_coordinates=coordinates)
        world["training"] = [
            {**entry, "image": str(demo / entry["image"]), "mask": str(demo / entry["mask"])}
            for entry in doc["training"]
        ]
        for entry in world["training"]:
            ras = entry["box_world_mm"]
            # LPS = RAS with x and y negated, so min and max swap on those axes.
            lps = [[-b[3], -b[4], b[2], -b[0], -b[1], b[5]] for b in ras]
            entry["box"] = lps if "LPS" in coordinates else ras
        items = load_detection_datalist("detection", _write_json(tmp_path / "world.json", world))
        assert [item["boxes"] for item in items] == [item["boxes"] for item in voxel], coordinates


def test_world_boxes_into_a_dicom_series(demo: Path, tmp_path: Path) -> None:
    """The DICOM series of BRAIN_001 has flipped x and y axes; world boxes land on the lesion there too."""
    doc = json.loads((demo / "detection.json").read_text())
    entry = doc["training"][0]
    assert entry["dicom_series"]
    one = {
        "box_mode": "xyzxyz",
        "box_coordinates": "world",
        "training": [{"image": entry["dicom_series"], "box": entry["box_world_mm"], "label": entry["label"]}],
    }
    (item,) = load_detection_datalist("detection", _write_json(demo / "dicom_world.json", one))
    header = read_volume_header(item["image"])
    assert header.kind == "dicom-series" and header.shape == nib.load(demo / entry["image"]).shape
    n = header.shape
    for got, box in zip(item["boxes"], entry["box"], strict=True):
        flipped = [n[0] - box[3], n[1] - box[4], box[2], n[0] - box[0], n[1] - box[1], box[5]]
        # World boxes map corners as voxel centres (MONAI's convention): at most one voxel off on flipped axes.
        assert np.abs(np.subtract(got, flipped)).max() <= 1.0


def test_decathlon_masks(demo: Path, tmp_path: Path) -> None:
    items = load_detection_datalist("decathlon", demo / "dataset.json")
    _check_items(items)
    reference = load_detection_datalist("detection", demo / "detection.json")
    assert [sorted(i["boxes"]) for i in items] == [sorted(i["boxes"]) for i in reference]
    assert [i["patient_id"] for i in items] == [f"BRAIN_{k:03d}" for k in range(1, 5)]  # file stem
    # MSD layout: validation list fixes the split; the test list holds bare image paths (no masks): left out.
    doc = json.loads((demo / "dataset.json").read_text())
    doc["validation"] = doc["training"][3:]
    doc["training"] = doc["training"][:3]
    doc["test"] = ["./imagesTr/BRAIN_004.nii.gz"]
    items = load_detection_datalist("decathlon", _write_json(demo / "msd.json", doc))
    assert [i["split"] for i in items] == ["train", "train", "train", "val"]


def test_csv_demo_manifest_and_variants(demo: Path) -> None:
    items = load_detection_datalist("csv", demo / "manifest.csv")
    _check_items(items)
    reference = load_detection_datalist("detection", demo / "detection.json")
    assert [i["boxes"] for i in items] == [i["boxes"] for i in reference]
    assert [i["patient_id"] for i in items] == [i["patient_id"] for i in reference]
    assert items[1]["source"] == "manifest.csv:3"
    rows = [
        "image,mask,boxes_world_mm,box_labels,split",
        "imagesTr/BRAIN_001.nii.gz,labelsTr/BRAIN_001.nii.gz,,,train",  # from the mask
        'imagesTr/BRAIN_002.nii.gz,,"[[17.25,-48.0,-1.0,37.25,-24.0,23.0]]",[1],test',  # world
        "imagesTr/BRAIN_003.nii.gz,,[],,",  # given as tumour-free
    ]
    path = demo / "variants.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    items = load_detection_datalist("csv", path)
    assert sorted(items[0]["boxes"]) == sorted(reference[0]["boxes"])
    assert items[1]["boxes"] == reference[1]["boxes"] and items[1]["box_labels"] == [1]
    assert (items[2]["boxes"], items[2]["label"]) == ([], 0)
    assert [i["split"] for i in items] == ["train", "test", ""]


def test_csv_bad_rows_in_one_error(tmp_path: Path) -> None:
    path = tmp_path / "boxes.csv"
    path.write_text(
        "image,boxes,box_labels\n"
        'a.nii.gz,"[[1,2,3,4,5,6]]",\n'
        "b.nii.gz,not json,\n"
        'c.nii.gz,"[[1,2,3,4]]",\n'
        'd.nii.gz,"[[5,2,3,4,5,6]]",\n'
        'e.nii.gz,"[[1,2,3,4,5,6]]","[0,0]"\n'
        "f.nii.gz,,\n",
        encoding="utf-8",
    )
    with pytest.raises(DataError) as info:
        load_detection_datalist("csv", path)
    message = str(info.value)
    assert "5 bad row(s)" in message
    for row in ("row 3", "row 4", "row 5", "row 6", "row 7"):
        assert row in message
    assert "not JSON" in message and "max <= min" in message and "2 box label(s) for 1 box(es)" in message


def test_detection_json_declarations_and_modes(tmp_path: Path) -> None:
    entry = {"image": "a.nii.gz", "box": [[15, 17, 12, 10, 10, 8]], "label": [0]}
    bare = _write_json(tmp_path / "bare.json", {"training": [entry]})
    with pytest.raises(DataError, match="does not declare box_mode and box_coordinates"):
        load_detection_datalist("detection", bare)
    items = load_detection_datalist("detection", bare, box_mode="cccwhd", box_coordinates="voxel")
    assert items[0]["boxes"] == [LESION_BOX]
    declared = _write_json(
        tmp_path / "declared.json", {"box_mode": "cccwhd", "box_coordinates": "voxel", "training": [entry]}
    )
    assert load_detection_datalist("detection", declared)[0]["boxes"] == [LESION_BOX]
    with pytest.raises(ConfigError, match="contradicts"):
        load_detection_datalist("detection", declared, box_mode="xyzxyz")
    with pytest.raises(DataError, match="not a 3D box mode"):
        load_detection_datalist(
            "detection",
            _write_json(tmp_path / "m.json", {"box_mode": "xyxy", "box_coordinates": "voxel", "training": [entry]}),
        )
    with pytest.raises(ConfigError, match="unknown detection datalist format"):
        load_detection_datalist("kermany", declared)
    with pytest.raises(DataError, match="not found"):
        load_detection_datalist("detection", tmp_path / "missing.json")
    assert parse_boxes_3d([[1, 2, 3, 4, 5, 6]], "xxyyzz") == [[1.0, 3.0, 5.0, 2.0, 4.0, 6.0]]


def test_world_to_voxel_inverts_the_affine() -> None:
    affine = np.array([[-2.0, 0, 0, 50], [0, 0, 1.5, -20], [0, 3, 0, 7], [0, 0, 0, 1]])
    box = np.array([3.0, 4, 5, 9, 10, 11])
    corners = affine @ np.array([[*box[:3], 1], [*box[3:], 1]]).T
    world = np.concatenate([corners[:3].min(axis=1), corners[:3].max(axis=1)])
    assert world_to_voxel([world.tolist()], affine) == [box.tolist()]


def test_an_empty_mask_is_valid_but_all_empty_is_refused(tmp_path: Path) -> None:
    _case(tmp_path, "pos")
    _case(tmp_path, "neg", lesion=False)
    training = [{"image": f"images/{n}.nii.gz", "label": f"masks/{n}.nii.gz"} for n in ("pos", "neg")]
    items = load_detection_datalist("decathlon", _write_json(tmp_path / "d.json", {"training": training}))
    assert [(i["boxes"], i["label"]) for i in items] == [([LESION_BOX], 1), ([], 0)]
    ok, problems = check_volumes(items)
    assert len(ok) == 2 and problems == []
    only_negative = _write_json(tmp_path / "neg.json", {"training": training[1:]})
    with pytest.raises(DataError, match=r"no volume has a tumour box \(1 of 1 mask\(s\) are empty"):
        load_detection_datalist("decathlon", only_negative)


# ---- patient-level splits ------------------------------------------------------------------------------------


def test_patient_level_splits_on_detection_items(tmp_path: Path) -> None:
    training = []
    for i in range(24):
        patient = f"P{i // 2:02d}"  # two scans per patient
        boxes = [[1, 1, 1, 5, 5, 5]] if (i // 2) % 3 else []
        training.append({"image": f"v{i}.nii.gz", "box": boxes, "label": [0] * len(boxes), "patient_id": patient})
    doc = {"box_mode": "xyzxyz", "box_coordinates": "voxel", "training": training}
    items = load_detection_datalist("detection", _write_json(tmp_path / "d.json", doc))
    splits = assign_splits(items, by="patient", val=0.25, test=0.25, seed=0)
    check_no_patient_overlap(splits)
    sides = {side: {i["patient_id"] for i in members} for side, members in splits.items()}
    assert not (sides["train"] & sides["val"] or sides["train"] & sides["test"] or sides["val"] & sides["test"])
    assert sum(len(m) for m in splits.values()) == 24
    for members in splits.values():  # both classes (tumour / no tumour) on every side
        assert {i["label"] for i in members} == {0, 1}


# ---- bad input -----------------------------------------------------------------------------------------------


def test_every_bad_volume_is_named_and_skip_bad_goes_on(tmp_path: Path) -> None:
    good_image, good_mask = _case(tmp_path, "good")
    _case(tmp_path, "tumour_free", lesion=False)
    _nifti(tmp_path / "images" / "flat.nii.gz", np.ones((40, 48), dtype=np.float32))
    _nifti(tmp_path / "images" / "slice.nii.gz", np.ones((40, 48, 1), dtype=np.float32))
    zero = nib.Nifti1Image(np.ones(SHAPE, dtype=np.float32), None)
    zero.header.set_zooms((1.0, 0.0, 1.0))  # nibabel would silently read this as 1 mm
    nib.save(zero, tmp_path / "images" / "zero.nii.gz")
    _nifti(tmp_path / "masks" / "small.nii.gz", np.zeros((20, 24, 16), dtype=np.uint8))
    dicom_2d = pydicom_file("CT_small.dcm")
    entry = {"box": [LESION_BOX], "label": [0]}
    training = [
        {"image": "images/good.nii.gz", **entry, "mask": "masks/good.nii.gz"},
        {"image": "images/tumour_free.nii.gz", "box": [], "label": []},
        {"image": "images/missing.nii.gz", **entry},
        {"image": "images/flat.nii.gz", **entry},
        {"image": "images/slice.nii.gz", **entry},
        {"image": str(dicom_2d), **entry},
        {"image": "images/zero.nii.gz", **entry},
        {"image": "images/good.nii.gz", "box": [LESION_BOX, [30, 40, 20, 45, 50, 30]], "label": [0, 0]},
        {"image": "images/good.nii.gz", **entry, "mask": "masks/small.nii.gz"},
        {"image": "images/good.nii.gz", "mask": "masks/nothing_here.nii.gz"},  # boxes from a missing mask
    ]
    doc = {"box_mode": "xyzxyz", "box_coordinates": "voxel", "training": training}
    items = load_detection_datalist("detection", _write_json(tmp_path / "detection.json", doc))
    assert items[-1]["problem"].startswith("boxes from the mask: ") and items[-1]["boxes"] == []

    with pytest.raises(DataError) as info:
        check_volumes(items)
    message = str(info.value)
    assert message.startswith("detection.json: 8 volume(s) cannot be used for 3D detection")
    expected = {
        2: "file not found",
        3: "a 2D image given to the 3D detection pipeline (shape (40, 48))",
        4: "a 2D image given to the 3D detection pipeline (shape (40, 48, 1))",
        5: "a 2D image given to the 3D detection pipeline (shape (128, 128))",
        6: "voxel spacing missing or zero (1, 0, 1 mm)",
        7: "box 1 [30, 40, 20, 45, 50, 30] lies outside the image (voxel bounds [0, 40) x [0, 48) x [0, 32))",
        8: "mask shape (20, 24, 16) differs from the image shape (40, 48, 32)",
        9: "mask file not found",
    }
    problems = dict(info.value.problems)
    assert len(problems) == len(expected)
    for index, reason in expected.items():
        name = f"detection.json:training[{index}] ({items[index]['image']})"
        assert name in message
        assert reason in problems[name], (index, problems[name])

    ok, skipped = check_volumes(items, skip_bad=True)
    assert [i["source"] for i in ok] == ["detection.json:training[0]", "detection.json:training[1]"]
    assert len(skipped) == 8
    chain = detection_transforms(spacing=2.0, modality="MR")
    for item in ok:  # the rest goes on
        out = chain(item)
        assert tuple(out["image"].shape) == (1, 20, 24, 16) and out["boxes"].shape[1] == 6


@pytest.mark.parametrize(
    ("name", "reason"),
    [("flat", "a 2D image given to the 3D detection pipeline"), ("zero", "voxel spacing missing or zero")],
)
def test_the_chain_refuses_what_check_volumes_refuses(tmp_path: Path, name: str, reason: str) -> None:
    if name == "flat":
        path = _nifti(tmp_path / "flat.nii.gz", np.ones((40, 48), dtype=np.float32))
    else:
        img = nib.Nifti1Image(np.ones(SHAPE, dtype=np.float32), None)
        img.header.set_zooms((1.0, 0.0, 1.0))
        path = tmp_path / "zero.nii.gz"
        nib.save(img, path)
    with pytest.raises(InputError, match=reason) as info:
        detection_transforms()({"image": str(path), "boxes": [], "box_labels": []})
    assert info.value.where == str(path)
