"""write_demo_data: layout, datalists, inventory, determinism and atomic writing."""

from __future__ import annotations

import csv
import hashlib
import json
import time
from pathlib import Path

import pydicom
import pytest

from medvision.demo import write_demo_data
from medvision.errors import DataError

COUNTS = {"n_cxr_patients": 4, "n_mri": 2, "n_mri_dicom": 1}


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "inventory.json"
    }


def _inventory_without_timing(root: Path) -> dict:
    inventory = json.loads((root / "inventory.json").read_text())
    inventory.pop("seconds")
    return inventory


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, float, list[str]]:
    out = tmp_path_factory.mktemp("write") / "demo"
    messages: list[str] = []
    start = time.perf_counter()
    inventory = write_demo_data(out, seed=0, progress=messages.append, **COUNTS)
    return out, inventory, time.perf_counter() - start, messages


def test_returns_within_time_and_writes_inventory(demo: tuple[Path, dict, float, list[str]]) -> None:
    out, inventory, seconds, messages = demo
    assert seconds < 30
    assert json.loads((out / "inventory.json").read_text()) == inventory
    assert inventory["seed"] == 0 and inventory["generator"] == "medvision.demo"
    assert inventory["seconds"]["total"] > 0
    assert messages and messages[-1].startswith("done")
    assert [p.name for p in out.parent.iterdir()] == ["demo"]  # no staging folder left behind


def test_inventory_counts_match_the_files(demo: tuple[Path, dict, float, list[str]]) -> None:
    out, inventory, _, _ = demo
    cxr_files = sorted((out / "cxr" / "dicom").rglob("*.dcm"))
    cxr = inventory["cxr"]
    assert cxr["patients"] == 4
    assert cxr["studies"] == len(cxr_files) == sum(cxr["by_label"].values()) == sum(cxr["by_modality"].values())
    datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in cxr_files]
    assert cxr["by_photometric"] == {
        k: sum(ds.PhotometricInterpretation == k for ds in datasets) for k in cxr["by_photometric"]
    }
    assert cxr["by_transfer_syntax"] == {
        k: sum(ds.file_meta.TransferSyntaxUID.name == k for ds in datasets) for k in cxr["by_transfer_syntax"]
    }
    mri = inventory["mri"]
    assert mri["volumes"] == 2 == len(list((out / "mri" / "imagesTr").glob("*.nii.gz")))
    assert mri["dicom_series"] == 1
    assert mri["dicom_files"] == len(list((out / "mri" / "dicom").rglob("*.dcm")))
    assert inventory["files"] == sum(1 for p in out.rglob("*") if p.is_file())
    for relpath in inventory["datalists"].values():
        assert (out / relpath).is_file()


def test_cxr_datalists(demo: tuple[Path, dict, float, list[str]]) -> None:
    out, inventory, _, _ = demo
    base = out / "cxr"
    with (base / "manifest.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == [
        "image",
        "label",
        "label_name",
        "patient_id",
        "study_uid",
        "sex",
        "age",
        "view",
        "modality",
        "boxes",
    ]
    assert len(rows) == inventory["cxr"]["studies"]
    dataset = json.loads((base / "dataset.json").read_text())
    assert dataset["modality"] == {"0": "X-ray"}
    assert dataset["labels"] == {"0": "normal", "1": "pneumonia"}
    assert dataset["numTraining"] == len(dataset["training"]) == len(rows)
    assert dataset["box_format"]["mode"] == "xyxy"
    for row, entry in zip(rows, dataset["training"], strict=True):
        assert (base / row["image"]).is_file()
        assert (base / entry["image"]).resolve() == (base / row["image"]).resolve()
        assert int(row["label"]) == entry["label"] and row["label_name"] == ("normal", "pneumonia")[entry["label"]]
        assert json.loads(row["boxes"]) == entry["boxes"]
        assert (len(entry["boxes"]) > 0) == (entry["label"] == 1)
        ds = pydicom.dcmread(base / row["image"], stop_before_pixels=True)
        assert (ds.PatientID, ds.StudyInstanceUID, ds.PatientSex, ds.ViewPosition, ds.Modality) == (
            row["patient_id"],
            row["study_uid"],
            row["sex"],
            row["view"],
            row["modality"],
        )
        assert int(ds.PatientAge[:3]) == int(row["age"]) == entry["age"]


def test_mri_datalists(demo: tuple[Path, dict, float, list[str]]) -> None:
    out, _, _, _ = demo
    base = out / "mri"
    dataset = json.loads((base / "dataset.json").read_text())
    assert dataset["modality"] == {"0": "T1"} and dataset["labels"]["0"] == "background"
    assert dataset["numTraining"] == len(dataset["training"]) == 2
    assert dataset["training"][0] == {"image": "./imagesTr/BRAIN_001.nii.gz", "label": "./labelsTr/BRAIN_001.nii.gz"}
    detection = json.loads((base / "detection.json").read_text())
    assert detection["box_mode"] == "xyzxyz" and "voxel" in detection["box_coordinates"]
    with (base / "manifest.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    for entry, seg, row in zip(detection["training"], dataset["training"], rows, strict=True):
        for path in (entry["image"], entry["mask"], seg["image"], seg["label"]):
            assert (base / path).is_file()
        assert len(entry["box"]) == len(entry["label"]) == len(entry["box_world_mm"]) == int(row["n_tumours"])
        assert all(len(b) == 6 and b[0] < b[3] and b[1] < b[4] and b[2] < b[5] for b in entry["box"])
        assert json.loads(row["boxes_voxel"]) == entry["box"]
        assert json.loads(row["boxes_world_mm"]) == entry["box_world_mm"]
        assert row["patient_id"] == entry["patient_id"]
        if row["dicom_series"]:
            assert len(list((base / row["dicom_series"]).glob("*.dcm"))) == 95
    assert rows[0]["dicom_series"] == "dicom/BRAIN_001" and rows[1]["dicom_series"] == ""


def test_monai_reads_the_datalists(demo: tuple[Path, dict, float, list[str]]) -> None:
    from monai.data import load_decathlon_datalist

    out, _, _, _ = demo
    for relpath, keys in [("cxr/dataset.json", ("image",)), ("mri/dataset.json", ("image", "label"))]:
        items = load_decathlon_datalist(str(out / relpath), data_list_key="training")
        assert items
        for item in items:
            assert all(Path(item[key]).is_file() for key in keys)


def test_deterministic_for_a_seed_and_different_across_seeds(
    demo: tuple[Path, dict, float, list[str]], tmp_path: Path
) -> None:
    out, _, _, _ = demo
    again = tmp_path / "again"
    write_demo_data(again, seed=0, **COUNTS)
    assert _hashes(again) == _hashes(out)
    assert _inventory_without_timing(again) == _inventory_without_timing(out)

    # Writing another seed over an earlier demo set replaces it.
    write_demo_data(again, seed=1, **COUNTS)
    other = _hashes(again)
    reference = _hashes(out)
    shared = set(other) & set(reference)
    assert shared
    differing = [name for name in shared if other[name] != reference[name]]
    assert any(name.endswith(".dcm") for name in differing)
    assert "mri/imagesTr/BRAIN_001.nii.gz" in differing
    assert _inventory_without_timing(again)["seed"] == 1


def test_refuses_a_folder_that_is_not_a_demo_set(tmp_path: Path) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="precious"):
        write_demo_data(out, **COUNTS)
    assert (out / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious"]


def test_an_interrupted_run_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "demo"

    def interrupt(message: str) -> None:
        if message.startswith("mri"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_demo_data(out, progress=interrupt, **COUNTS)
    assert list(tmp_path.iterdir()) == []


def test_rejects_bad_counts(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_mri_dicom"):
        write_demo_data(tmp_path / "x", n_cxr_patients=1, n_mri=1, n_mri_dicom=2)
    assert list(tmp_path.iterdir()) == []
