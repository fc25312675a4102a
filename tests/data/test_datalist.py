"""Datalists: CSV, decathlon JSON, the Kermany folder layout and the RSNA challenge layout."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medvision.data import kermany_patient_id, load_datalist
from medvision.data.datalist import parse_age, parse_boxes, parse_label
from medvision.errors import ConfigError, DataError

KEYS = {"image", "label", "patient_id", "study_uid", "sex", "age", "view", "boxes", "split", "source"}


def _no_none(items: list[dict]) -> None:
    for item in items:
        assert set(item) == KEYS
        assert all(value is not None for value in item.values())


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _jpeg(path: Path, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 6), value, dtype=np.uint8)).save(path)


# ---- csv ------------------------------------------------------------------------------------------------


def test_csv_parses_every_field(tmp_path: Path) -> None:
    csv_path = _write(
        tmp_path / "lists" / "manifest.csv",
        (
            "image,label,patient_id,study_uid,sex,age,view,boxes,split,modality\n"
            'img/a.dcm,1,P1,1.2.3,female,045Y,pa,"[[1,2,30,40],[5,6,7,8]]",validation,DX\n'
            "img/b.png,Normal,P2,,M,61.5,,[],,CR\n"
            "../c.dcm,POSITIVE,,,,,,,test,\n"
            "\n"
        ),
    )
    items = load_datalist("csv", csv_path)
    _no_none(items)
    a, b, c = items
    assert a["image"] == str(tmp_path / "lists" / "img" / "a.dcm")
    assert c["image"] == str(tmp_path / "c.dcm")
    assert [i["label"] for i in items] == [1, 0, 1]
    assert (a["patient_id"], a["study_uid"], a["sex"], a["age"], a["view"]) == ("P1", "1.2.3", "F", 45.0, "PA")
    assert a["boxes"] == [[1.0, 2.0, 30.0, 40.0], [5.0, 6.0, 7.0, 8.0]]
    assert [i["split"] for i in items] == ["val", "", "test"]
    assert (b["sex"], b["age"], b["boxes"]) == ("M", 61.5, [])
    assert c["patient_id"] == "" and math.isnan(c["age"]) and c["sex"] == ""
    assert [i["source"] for i in items] == ["manifest.csv:2", "manifest.csv:3", "manifest.csv:4"]


def test_csv_missing_column_names_file_and_column(tmp_path: Path) -> None:
    csv_path = _write(tmp_path / "m.csv", "image,diagnosis\na.dcm,1\n")
    with pytest.raises(DataError) as info:
        load_datalist("csv", csv_path)
    assert info.value.where == str(csv_path)
    assert "missing column(s) label" in info.value.reason


def test_csv_bad_labels_listed_together(tmp_path: Path) -> None:
    csv_path = _write(tmp_path / "m.csv", "image,label\na.dcm,1\nb.dcm,maybe\nc.dcm,0\nd.dcm,2\n")
    with pytest.raises(DataError) as info:
        load_datalist("csv", csv_path)
    err = info.value
    assert err.where == str(csv_path)
    assert err.reason.startswith("2 bad row(s)")
    assert "row 3: label 'maybe'" in err.reason and "row 5: label '2'" in err.reason
    assert "normal, pneumonia" in err.reason


def test_csv_many_bad_rows_first_20_and_a_count(tmp_path: Path) -> None:
    rows = "".join(f"x{i}.dcm,bad\n" for i in range(25))
    csv_path = _write(tmp_path / "m.csv", "image,label\n" + rows)
    with pytest.raises(DataError) as info:
        load_datalist("csv", csv_path)
    assert info.value.reason.startswith("25 bad row(s)")
    assert "row 21:" in info.value.reason and "row 22:" not in info.value.reason
    assert "and 5 more" in info.value.reason


def test_csv_bad_boxes_age_and_split(tmp_path: Path) -> None:
    csv_path = _write(
        tmp_path / "m.csv",
        (
            "image,label,age,boxes,split\n"
            'a.dcm,1,old,"[[1,2,3,4]]",train\n'
            'b.dcm,1,40,"[[10,10,5,5]]",train\n'
            'c.dcm,1,40,"[[1,2,3]]",train\n'
            "d.dcm,1,40,[],holdout\n"
        ),
    )
    with pytest.raises(DataError) as info:
        load_datalist("csv", csv_path)
    reason = info.value.reason
    assert "row 2: age 'old'" in reason
    assert "row 3: box [10, 10, 5, 5] has x1 <= x0" in reason
    assert "row 4: box [1, 2, 3]" in reason
    assert "row 5: split 'holdout'" in reason


def test_unknown_format_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_datalist("excel", tmp_path)
    assert info.value.where == "data.format"
    assert "csv, decathlon, kermany, rsna" in info.value.fix


def test_missing_datalist_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_datalist("csv", tmp_path / "nope.csv")


def test_parsers() -> None:
    assert [parse_label(v) for v in (0, 1, "0", "1.0", "NORMAL", "negative", True)] == [0, 1, 0, 1, 0, 0, 1]
    with pytest.raises(ValueError):
        parse_label("")
    assert parse_age("006M") == 0.5 and parse_age(30) == 30.0
    assert parse_boxes([[0, 0, 1, 1]]) == [[0.0, 0.0, 1.0, 1.0]]


# ---- decathlon -------------------------------------------------------------------------------------------


def test_decathlon_lists_set_the_split(tmp_path: Path) -> None:
    doc = {
        "training": [
            {"image": "./img/a.dcm", "label": 1, "patient_id": 7, "boxes": [[1, 2, 3, 4]], "age": 30},
            {"image": "img/b.dcm", "label": "normal", "sex": "F"},
        ],
        "validation": [{"image": "./img/c.dcm", "label": 0}],
        "test": [{"image": "/abs/d.dcm", "label": 1}],
    }
    path = _write(tmp_path / "ds" / "dataset.json", json.dumps(doc))
    items = load_datalist("decathlon", path)
    _no_none(items)
    img = tmp_path / "ds" / "img"
    assert [i["image"] for i in items] == [str(img / "a.dcm"), str(img / "b.dcm"), str(img / "c.dcm"), "/abs/d.dcm"]
    assert [i["split"] for i in items] == ["train", "train", "val", "test"]
    assert [i["label"] for i in items] == [1, 0, 0, 1]
    assert items[0]["patient_id"] == "7" and items[0]["boxes"] == [[1.0, 2.0, 3.0, 4.0]] and items[0]["age"] == 30.0
    assert items[2]["source"] == "dataset.json:validation[0]"


def test_decathlon_training_only_leaves_split_empty(tmp_path: Path) -> None:
    path = _write(tmp_path / "dataset.json", json.dumps({"training": [{"image": "a.dcm", "label": 0}], "test": []}))
    assert load_datalist("decathlon", path)[0]["split"] == ""


def test_decathlon_errors(tmp_path: Path) -> None:
    path = _write(tmp_path / "dataset.json", json.dumps({"numTraining": 0}))
    with pytest.raises(DataError, match="no 'training' list"):
        load_datalist("decathlon", path)
    path = _write(
        tmp_path / "bad.json", json.dumps({"training": [{"image": "a.dcm"}, {"image": "b.dcm", "label": 5}, "c.dcm"]})
    )
    with pytest.raises(DataError) as info:
        load_datalist("decathlon", path)
    reason = info.value.reason
    assert info.value.where == str(path)
    assert "training[0]: no label" in reason and "training[1]: label 5" in reason and "training[2]: 'c.dcm'" in reason


# ---- kermany ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "patient"),
    [
        ("person1_bacteria_1.jpeg", "person1"),
        ("person1_virus_6.jpeg", "person1"),
        ("person1000_bacteria_2931.jpeg", "person1000"),
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("NORMAL2-IM-1427-0001.jpeg", "NORMAL2-IM-1427"),
        ("scan_17.png", "scan_17"),
    ],
)
def test_kermany_patient_id(name: str, patient: str) -> None:
    assert kermany_patient_id(name) == patient


def test_kermany_layout(tmp_path: Path) -> None:
    root = tmp_path / "chest_xray"
    for split, number in (("train", 115), ("val", 116), ("test", 117)):
        _jpeg(root / split / "NORMAL" / f"IM-0{number}-0001.jpeg")
        _jpeg(root / split / "PNEUMONIA" / f"person{len(split)}_virus_6.jpeg")
    _jpeg(root / "train" / "NORMAL" / "NORMAL2-IM-1427-0001.jpeg")
    _jpeg(root / "train" / "PNEUMONIA" / "person3_bacteria_1.jpg")
    (root / "train" / "NORMAL" / ".DS_Store").write_bytes(b"x")
    (root / "train" / "NORMAL" / "notes.txt").write_text("x")
    items = load_datalist("kermany", root)
    _no_none(items)
    assert len(items) == 8
    train = [i for i in items if i["split"] == "train"]
    assert [(Path(i["image"]).name, i["label"], i["patient_id"]) for i in train] == [
        ("IM-0115-0001.jpeg", 0, "IM-0115"),
        ("NORMAL2-IM-1427-0001.jpeg", 0, "NORMAL2-IM-1427"),
        ("person3_bacteria_1.jpg", 1, "person3"),
        ("person5_virus_6.jpeg", 1, "person5"),
    ]
    assert {i["split"] for i in items} == {"train", "val", "test"}
    assert train[0]["source"] == "chest_xray:train/NORMAL/IM-0115-0001.jpeg"
    assert Path(train[0]["image"]).is_absolute()


def test_kermany_missing_class_folder(tmp_path: Path) -> None:
    _jpeg(tmp_path / "train" / "NORMAL" / "IM-0001-0001.jpeg")
    with pytest.raises(DataError) as info:
        load_datalist("kermany", tmp_path)
    assert info.value.where == str(tmp_path / "train" / "PNEUMONIA")
    assert "{NORMAL,PNEUMONIA}" in info.value.reason


def test_kermany_no_split_folders(tmp_path: Path) -> None:
    _jpeg(tmp_path / "chest_xray" / "train" / "NORMAL" / "IM-0001-0001.jpeg")
    with pytest.raises(DataError) as info:
        load_datalist("kermany", tmp_path)
    assert info.value.where == str(tmp_path)
    assert "chest_xray/" in info.value.fix


# ---- rsna ------------------------------------------------------------------------------------------------


def test_rsna_boxes_and_labels(tmp_path: Path) -> None:
    _write(
        tmp_path / "stage_2_train_labels.csv",
        (
            "patientId,x,y,width,height,Target\n"
            "aaa,,,,,0\n"
            "bbb,264.0,152.0,213.0,379.0,1\n"
            "ccc,,,,,0\n"
            "bbb,562.0,152.0,256.0,453.0,1\n"
        ),
    )
    items = load_datalist("rsna", tmp_path)
    _no_none(items)
    assert [(i["patient_id"], i["label"]) for i in items] == [("aaa", 0), ("bbb", 1), ("ccc", 0)]
    assert items[1]["boxes"] == [[264.0, 152.0, 477.0, 531.0], [562.0, 152.0, 818.0, 605.0]]
    assert items[0]["boxes"] == []
    assert items[1]["image"] == str(tmp_path / "stage_2_train_images" / "bbb.dcm")
    assert items[1]["source"] == "stage_2_train_labels.csv:3"
    assert load_datalist("rsna", tmp_path / "stage_2_train_labels.csv") == items


def test_rsna_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_datalist("rsna", tmp_path)
    assert info.value.where == str(tmp_path / "stage_2_train_labels.csv")
    _write(tmp_path / "stage_2_train_labels.csv", "patientId,x,y,width,height,Target\nbbb,,,,,1\nccc,,,,,x\n")
    with pytest.raises(DataError) as info:
        load_datalist("rsna", tmp_path)
    assert "row 2: Target 1 needs a box" in info.value.reason and "row 3: Target 'x'" in info.value.reason


# ---- the demo data set, when the demo room is there --------------------------------------------------------


def test_demo_csv_and_json_agree(tmp_path: Path) -> None:
    demo = pytest.importorskip("medvision.demo")
    demo.write_demo_data(tmp_path / "demo", 0, n_cxr_patients=3, n_mri=0, n_mri_dicom=0)
    from_csv = load_datalist("csv", tmp_path / "demo" / "cxr" / "manifest.csv")
    from_json = load_datalist("decathlon", tmp_path / "demo" / "cxr" / "dataset.json")
    _no_none(from_csv)
    strip = [{k: v for k, v in i.items() if k != "source"} for i in from_csv]
    assert strip == [{k: v for k, v in i.items() if k != "source"} for i in from_json]
    assert all(Path(i["image"]).is_file() for i in from_csv)
