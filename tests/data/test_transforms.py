"""LoadRadiographd and the classification chain."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medvision.data import LoadRadiographd, classification_transforms, transform_digest
from medvision.errors import ConfigError, InputError
from medvision.io import load_radiograph_tensor
from tests.conftest import write_dicom

SIZE = 32


@pytest.fixture
def pixels(rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:90, 0:70]
    return (
        (1000 + 800 * np.sin(xx / 9.0) * np.cos(yy / 13.0) + rng.normal(0, 40, xx.shape))
        .clip(0, 4095)
        .astype(np.uint16)
    )


def _item(path: Path, **fields) -> dict:
    return {
        "image": str(path),
        "label": 1,
        "patient_id": "P1",
        "study_uid": "",
        "sex": "",
        "age": math.nan,
        "view": "",
        "boxes": [[1.0, 2.0, 10.0, 20.0]],
        "split": "",
        "source": "m.csv:2",
        **fields,
    }


def test_dicom_matches_fast_loader_and_fills_header_facts(tmp_path: Path, pixels: np.ndarray) -> None:
    path = write_dicom(tmp_path / "a.dcm", pixels, bits_stored=12, study_uid="1.2.3")
    item = _item(path)
    before = copy.deepcopy(item)
    out = LoadRadiographd(size=SIZE, keep_aspect=True)(item)
    assert item.keys() == before.keys() and all(
        item[k] == before[k] or (k == "age" and math.isnan(item[k])) for k in item
    )  # input not mutated
    expected, _ = load_radiograph_tensor(path, size=SIZE, keep_aspect=True)
    assert out["image"].dtype == torch.float32 and tuple(out["image"].shape) == (1, SIZE, SIZE)
    torch.testing.assert_close(out["image"], expected)
    assert 0.0 <= float(out["image"].min()) and float(out["image"].max()) <= 1.0
    assert (out["sex"], out["age"], out["view"], out["study_uid"]) == ("F", 42.0, "PA", "1.2.3")
    assert out["image_path"] == str(path)
    assert out["patient_id"] == "P1" and out["boxes"] == item["boxes"]


def test_header_does_not_overwrite_the_items_values(tmp_path: Path, pixels: np.ndarray) -> None:
    path = write_dicom(tmp_path / "a.dcm", pixels)
    out = LoadRadiographd(size=SIZE)(_item(path, sex="M", age=70.0, view="AP", study_uid="9.9"))
    assert (out["sex"], out["age"], out["view"], out["study_uid"]) == ("M", 70.0, "AP", "9.9")
    # Items without the fields get them, so that every sample has the same keys.
    bare = LoadRadiographd(size=SIZE)({"image": str(path), "label": 0})
    assert {"sex", "age", "view", "study_uid"} <= set(bare)


def test_monochrome1_is_inverted(tmp_path: Path, pixels: np.ndarray) -> None:
    mono2 = write_dicom(tmp_path / "m2.dcm", pixels, bits_stored=12)
    mono1 = write_dicom(tmp_path / "m1.dcm", pixels, bits_stored=12, photometric="MONOCHROME1")
    load = LoadRadiographd(size=SIZE, keep_aspect=False)
    a = load({"image": str(mono2)})["image"]
    b = load({"image": str(mono1)})["image"]
    torch.testing.assert_close(b, load_radiograph_tensor(mono1, size=SIZE)[0])
    torch.testing.assert_close(b, 1.0 - a)


def test_png_equals_dicom_with_the_same_pixels(tmp_path: Path, pixels: np.ndarray) -> None:
    dcm = write_dicom(tmp_path / "a.dcm", pixels)
    png = tmp_path / "a.png"
    Image.fromarray(pixels).save(png)  # 16-bit grey PNG
    for keep_aspect in (True, False):
        load = LoadRadiographd(size=SIZE, keep_aspect=keep_aspect)
        from_png = load(_item(png))
        torch.testing.assert_close(from_png["image"], load(_item(dcm))["image"], atol=1e-6, rtol=0)
        assert from_png["sex"] == "" and math.isnan(from_png["age"])


def test_rgb_jpeg_becomes_one_grey_channel(tmp_path: Path) -> None:
    rgb = np.zeros((40, 60, 3), dtype=np.uint8)
    rgb[:, 30:] = 200
    Image.fromarray(rgb).save(tmp_path / "c.jpeg", quality=100)
    image = LoadRadiographd(size=SIZE, keep_aspect=False)({"image": str(tmp_path / "c.jpeg")})["image"]
    assert tuple(image.shape) == (1, SIZE, SIZE)
    # x-first: the bright right half is the second half along axis 1.
    assert float(image[0, -4:].mean()) > 0.9 and float(image[0, :4].mean()) < 0.1


def test_errors_are_medvision_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        LoadRadiographd(size=SIZE)({"image": str(tmp_path / "missing.dcm")})
    assert info.value.where == str(tmp_path / "missing.dcm")
    (tmp_path / "text.png").write_text("not an image")
    chain = classification_transforms(image_size=SIZE, mean=0.5, std=0.25, train=False)
    with pytest.raises(InputError, match="not a readable PNG/JPEG"):
        chain({"image": str(tmp_path / "text.png"), "label": 0})


def test_eval_chain_is_deterministic_and_drops_boxes(tmp_path: Path, pixels: np.ndarray) -> None:
    item = _item(write_dicom(tmp_path / "a.dcm", pixels))
    chain = classification_transforms(image_size=SIZE, mean=0.5, std=0.25, train=False)
    a, b = chain(item), chain(item)
    assert type(a["image"]) is torch.Tensor and a["image"].dtype == torch.float32
    torch.testing.assert_close(a["image"], b["image"])
    assert "boxes" not in a and a["label"] == 1
    raw = LoadRadiographd(size=SIZE)(item)["image"]
    torch.testing.assert_close(a["image"], (raw - 0.5) / 0.25)


def test_train_chain_depends_on_the_seed(tmp_path: Path, pixels: np.ndarray) -> None:
    item = _item(write_dicom(tmp_path / "a.dcm", pixels))
    chain = classification_transforms(image_size=SIZE, mean=0.5, std=0.25, train=True, augment={"prob": 1.0})
    chain.set_random_state(seed=1)
    first = chain(item)["image"]
    chain.set_random_state(seed=2)
    second = chain(item)["image"]
    chain.set_random_state(seed=1)
    again = chain(item)["image"]
    assert type(first) is torch.Tensor and tuple(first.shape) == (1, SIZE, SIZE)
    assert not torch.allclose(first, second)
    torch.testing.assert_close(first, again)
    # The deterministic prefix ends before the first random transform.
    names = [type(t).__name__ for t in chain.transforms]
    assert names.index("RandAffined") == 4 and all(not n.startswith("Rand") for n in names[:4])


def test_augment_off_equals_eval(tmp_path: Path, pixels: np.ndarray) -> None:
    item = _item(write_dicom(tmp_path / "a.dcm", pixels))
    off = classification_transforms(image_size=SIZE, mean=0.5, std=0.25, train=True, augment={"enabled": False})
    assert not any(type(t).__name__.startswith("Rand") for t in off.transforms)
    ev = classification_transforms(image_size=SIZE, mean=0.5, std=0.25, train=False)
    torch.testing.assert_close(off(item)["image"], ev(item)["image"])


def test_bad_settings() -> None:
    with pytest.raises(ConfigError) as info:
        classification_transforms(image_size=SIZE, mean=0.5, std=0.25, train=True, augment={"rotate": 5})
    assert info.value.where == "augment.rotate"
    with pytest.raises(ConfigError, match="augment.contrast"):
        classification_transforms(image_size=SIZE, mean=0.5, std=0.25, train=True, augment={"contrast": (1.2, 0.8)})
    with pytest.raises(ConfigError, match="data.std"):
        classification_transforms(image_size=SIZE, mean=0.5, std=0.0, train=False)


def test_transform_digest() -> None:
    base = {"image_size": 224, "keep_aspect": True, "mean": 0.5, "std": 0.25}
    digest = transform_digest(**base)
    assert digest == transform_digest(**dict(reversed(list(base.items()))))
    assert len(digest) == 16 and digest.isalnum()
    assert digest != transform_digest(**{**base, "image_size": 256})
    assert digest != transform_digest(**{**base, "keep_aspect": False})
