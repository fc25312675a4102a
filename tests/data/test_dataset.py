"""Cached datasets, the readability check before training, and class balance."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import DataLoader
from PIL import Image

import medvision.data.transforms as transforms_module
from medvision.data import (
    CachedRadiographDataset,
    RadiographDataset,
    assign_splits,
    check_readable,
    class_balance,
    classification_transforms,
    fill_from_headers,
    load_datalist,
    make_dataset,
    transform_digest,
)
from medvision.errors import ConfigError, DataError, InputError
from tests.conftest import pydicom_file, write_dicom

SIZE = 32
NORM = {"mean": 0.5, "std": 0.25}


def _item(path: Path, label: int = 0, **fields) -> dict:
    return {
        "image": str(path),
        "label": label,
        "patient_id": "",
        "study_uid": "",
        "sex": "",
        "age": math.nan,
        "view": "",
        "boxes": [],
        "split": "",
        "source": f"m.csv:{label + 2}",
        **fields,
    }


@pytest.fixture
def items(tmp_path: Path, rng: np.random.Generator) -> list[dict]:
    out = []
    for i in range(3):
        pixels = rng.integers(0, 4000, size=(60 + 10 * i, 50)).astype(np.uint16)
        path = write_dicom(tmp_path / "img" / f"{i}.dcm", pixels, bits_stored=12)
        out.append(_item(path, label=i % 2, patient_id=f"P{i}", boxes=[[1.0, 1.0, 5.0, 5.0]] * i))
    return out


@pytest.fixture
def count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = transforms_module.load_radiograph_tensor

    def counting(path, **kwargs):
        calls.append(str(path))
        return real(path, **kwargs)

    monkeypatch.setattr(transforms_module, "load_radiograph_tensor", counting)
    return calls


def _settings(size: int = SIZE) -> dict:
    return {"image_size": size, "keep_aspect": True, **NORM}


def test_persistent_cache_decodes_once(tmp_path: Path, items: list[dict], count_decodes: list[str]) -> None:
    cache = tmp_path / "cache"
    chain = classification_transforms(**_settings(), train=False)
    digest = transform_digest(**_settings())
    ds = make_dataset(items, chain, cache_dir=cache, settings_digest=digest)
    assert isinstance(ds, CachedRadiographDataset)
    first = [ds[i]["image"] for i in range(len(ds))]
    assert len(count_decodes) == 3
    second = [ds[i]["image"] for i in range(len(ds))]
    # A new dataset over the same folder (a later run) reads the cache too.
    again = make_dataset(items, chain, cache_dir=cache, settings_digest=digest)
    third = [again[i]["image"] for i in range(len(again))]
    assert len(count_decodes) == 3
    for a, b, c in zip(first, second, third, strict=True):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(a, c)
    assert len(list((cache / digest).glob("*.pt"))) == 3


def test_other_image_size_uses_another_folder(tmp_path: Path, items: list[dict], count_decodes: list[str]) -> None:
    cache = tmp_path / "cache"
    for size in (SIZE, 48):
        ds = make_dataset(
            items,
            classification_transforms(**_settings(size), train=False),
            cache_dir=cache,
            settings_digest=transform_digest(**_settings(size)),
        )
        assert tuple(ds[0]["image"].shape) == (1, size, size)
    assert len(count_decodes) == 2
    assert sorted(p.name for p in cache.iterdir()) == sorted(transform_digest(**_settings(s)) for s in (SIZE, 48))


def test_random_part_runs_after_the_cache(tmp_path: Path, items: list[dict], count_decodes: list[str]) -> None:
    chain = classification_transforms(**_settings(), train=True, augment={"prob": 1.0})
    chain.set_random_state(seed=0)
    ds = make_dataset(items, chain, cache_dir=tmp_path / "cache", settings_digest=transform_digest(**_settings()))
    a, b = ds[0]["image"], ds[0]["image"]
    assert len(count_decodes) == 1
    assert not torch.allclose(a, b)


def test_replaced_file_misses_the_cache(tmp_path: Path, items: list[dict], count_decodes: list[str]) -> None:
    chain = classification_transforms(**_settings(), train=False)
    ds = make_dataset(items[:1], chain, cache_dir=tmp_path / "cache", settings_digest="s1")
    before = ds[0]["image"]
    path = Path(items[0]["image"])
    write_dicom(path, np.arange(60 * 50, dtype=np.uint16).reshape(60, 50), bits_stored=12)
    os.utime(path, ns=(1, 1))
    after = ds[0]["image"]
    assert len(count_decodes) == 2 and not torch.allclose(before, after)


def test_no_cache_dir_gives_a_plain_dataset(items: list[dict], count_decodes: list[str]) -> None:
    ds = make_dataset(items, classification_transforms(**_settings(), train=False), cache_dir=None, settings_digest="x")
    assert isinstance(ds, RadiographDataset)
    ds[0], ds[0]
    assert len(count_decodes) == 2
    with pytest.raises(ConfigError):
        make_dataset(
            items, classification_transforms(**_settings(), train=False), cache_dir=None, settings_digest="../up"
        )


def test_batches_collate(tmp_path: Path, items: list[dict]) -> None:
    ds = make_dataset(
        items, classification_transforms(**_settings(), train=True), cache_dir=tmp_path / "c", settings_digest="d"
    )
    batch = next(iter(DataLoader(ds, batch_size=3, num_workers=0)))
    assert tuple(batch["image"].shape) == (3, 1, SIZE, SIZE)
    assert batch["label"].tolist() == [0, 1, 0]
    assert batch["sex"] == ["F", "F", "F"] and batch["age"].tolist() == [42.0] * 3
    assert "boxes" not in batch


def test_dataset_errors_surface_as_medvision_errors(tmp_path: Path, items: list[dict]) -> None:
    bad = [_item(tmp_path / "gone.dcm")]
    for cache in (None, tmp_path / "c"):
        ds = make_dataset(
            bad, classification_transforms(**_settings(), train=True), cache_dir=cache, settings_digest="d"
        )
        with pytest.raises(InputError) as info:
            ds[0]
        assert info.value.where == str(tmp_path / "gone.dcm")


# ---- check_readable --------------------------------------------------------------------------------------


def test_check_readable_lists_every_bad_file(tmp_path: Path, items: list[dict]) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "text.dcm").write_text("patient notes, not DICOM")
    (bad / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    truncated = write_dicom(bad / "truncated.dcm", np.zeros((64, 64), dtype=np.uint16))
    truncated.write_bytes(truncated.read_bytes()[:-3000])
    shutil.copy(pydicom_file("SC_rgb_rle_2frame.dcm"), bad / "multiframe.dcm")
    shutil.copy(pydicom_file("SC_rgb_rle.dcm"), bad / "colour.dcm")
    shutil.copy(pydicom_file("reportsi.dcm"), bad / "report.dcm")
    broken = [
        _item(bad / name)
        for name in (
            "missing.dcm",
            "text.dcm",
            "broken.png",
            "truncated.dcm",
            "multiframe.dcm",
            "colour.dcm",
            "report.dcm",
        )
    ]
    everything = [items[0], *broken, items[1]]
    with pytest.raises(DataError) as info:
        check_readable(everything)
    err = info.value
    assert err.where == "m.csv"
    assert err.reason.startswith("7 image(s) cannot be read:")
    for fragment in (
        "missing.dcm: file not found",
        "text.dcm: not a DICOM file",
        "broken.png: not a readable PNG",
        "truncated.dcm: pixel data is truncated",
        "multiframe.dcm: multi-frame (2 frames)",
        "colour.dcm: colour (RGB",
        "report.dcm: not an image",
    ):
        assert fragment in err.reason, fragment
    assert "--skip-unreadable" in err.fix
    assert len(err.problems) == 7

    kept, problems = check_readable(everything, skip_unreadable=True)
    assert [k["image"] for k in kept] == [items[0]["image"], items[1]["image"]]
    assert [Path(p).name for p, _ in problems] == [
        "missing.dcm",
        "text.dcm",
        "broken.png",
        "truncated.dcm",
        "multiframe.dcm",
        "colour.dcm",
        "report.dcm",
    ]


def test_check_readable_fills_fields_from_headers(tmp_path: Path, items: list[dict]) -> None:
    png = tmp_path / "x.png"
    Image.fromarray(np.full((10, 12), 7, dtype=np.uint8)).save(png)
    source = [_item(Path(items[0]["image"])), {**items[1], "sex": "M", "age": 80.0}, _item(png)]
    kept, problems = check_readable(source)
    assert problems == []
    assert (kept[0]["patient_id"], kept[0]["sex"], kept[0]["age"], kept[0]["view"]) == ("TEST0001", "F", 42.0, "PA")
    assert kept[0]["study_uid"] != ""
    assert (kept[1]["patient_id"], kept[1]["sex"], kept[1]["age"]) == ("P1", "M", 80.0)
    assert kept[2]["patient_id"] == "" and math.isnan(kept[2]["age"])
    assert source[0]["patient_id"] == "" and math.isnan(source[0]["age"])  # inputs unchanged
    assert fill_from_headers(source)[0]["patient_id"] == "TEST0001"


def test_check_readable_size_limit(items: list[dict]) -> None:
    _, problems = check_readable(items[:1], skip_unreadable=True, max_voxels=100)
    assert "over the limit of 100" in problems[0][1]


def test_class_balance() -> None:
    assert class_balance([{"label": 1}] * 2 + [{"label": 0}] * 6) == {"n": 8, "n_pos": 2, "pos_weight": 3.0}
    with pytest.raises(DataError, match="both classes"):
        class_balance([{"label": 0, "source": "m.csv:2"}])


# ---- end to end on the demo data set -------------------------------------------------------------------------


def test_demo_end_to_end(tmp_path: Path) -> None:
    demo = pytest.importorskip("medvision.demo")
    demo.write_demo_data(tmp_path / "demo", 0, n_cxr_patients=8, n_mri=0, n_mri_dicom=0)
    items = load_datalist("csv", tmp_path / "demo" / "cxr" / "manifest.csv")
    items, problems = check_readable(items)
    assert problems == []
    splits = assign_splits(items, by="patient", val=0.2, test=0.2, seed=0)
    settings = _settings()
    ds = make_dataset(
        splits["train"],
        classification_transforms(**settings, train=True),
        cache_dir=tmp_path / "c",
        settings_digest=transform_digest(**settings),
    )
    batch = next(iter(DataLoader(ds, batch_size=2, num_workers=0)))
    assert tuple(batch["image"].shape) == (2, 1, SIZE, SIZE)
    assert torch.isfinite(batch["image"]).all()
