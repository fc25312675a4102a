"""PNG/JPEG radiographs (the layout of the public pediatric chest X-ray set)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medvision.errors import InputError, SizeLimitError
from medvision.io import load


def test_grey_png_values(tmp_path, rng) -> None:
    pixels = rng.integers(0, 255, size=(30, 50), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    array, meta = load(tmp_path / "a.png")
    np.testing.assert_array_equal(array.T, pixels)
    assert meta["kind"] == "image" and list(meta["spatial_shape"]) == [50, 30]


def test_rgb_jpeg_becomes_one_grey_channel(tmp_path, rng) -> None:
    pixels = rng.integers(0, 255, size=(40, 20, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "b.jpeg", quality=95)
    array, _ = load(tmp_path / "b.jpeg")
    expected = np.asarray(Image.open(tmp_path / "b.jpeg").convert("L"))
    assert array.shape == (20, 40)
    np.testing.assert_array_equal(array.T, expected)


def test_16bit_png_keeps_depth(tmp_path, rng) -> None:
    pixels = rng.integers(0, 65535, size=(16, 16)).astype(np.uint16)
    Image.fromarray(pixels).save(tmp_path / "c.png")
    array, _ = load(tmp_path / "c.png")
    np.testing.assert_array_equal(array.T, pixels)


def test_corrupt_and_oversized_images(tmp_path) -> None:
    (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(InputError, match="not a readable PNG/JPEG"):
        load(tmp_path / "bad.png")
    Image.fromarray(np.zeros((10, 10), dtype=np.uint8)).save(tmp_path / "ok.png")
    with pytest.raises(SizeLimitError, match="10x10"):
        load(tmp_path / "ok.png", max_voxels=50)
