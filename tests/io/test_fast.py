"""The fast radiograph path equals MONAI's stock chain on the same files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import PydicomReader
from monai.transforms import Compose, EnsureChannelFirst, LoadImage, Resize, ScaleIntensity

from medvision.errors import InputError
from medvision.io import load_radiograph_tensor
from medvision.io.fast import area_resize
from tests.conftest import pydicom_file, write_dicom


def _stock(path, size=224):
    chain = Compose(
        [
            LoadImage(reader=PydicomReader(), image_only=True),
            EnsureChannelFirst(),
            ScaleIntensity(),
            Resize((size, size)),
        ]
    )
    return torch.as_tensor(np.asarray(chain(str(path))), dtype=torch.float32)


@pytest.fixture
def radiograph(tmp_path, rng):
    yy, xx = np.mgrid[0:700, 0:530]
    stored = (2000 + 1500 * np.sin(xx / 40.0) * np.cos(yy / 55.0) + rng.normal(0, 50, xx.shape)).clip(0, 4095)
    return stored.astype(np.uint16)


def test_equals_monai_stock_chain(tmp_path, radiograph) -> None:
    path = write_dicom(tmp_path / "cxr.dcm", radiograph, bits_stored=12, slope=1.0, intercept=0.0)
    ours, meta = load_radiograph_tensor(path)
    stock = _stock(path)
    assert ours.shape == stock.shape == (1, 224, 224)
    torch.testing.assert_close(ours, stock, atol=2e-5, rtol=0)
    assert meta["original_shape"] == [530, 700]


def test_monochrome1_is_the_inverse(tmp_path, radiograph) -> None:
    mono2 = write_dicom(tmp_path / "m2.dcm", radiograph, bits_stored=12)
    mono1 = write_dicom(tmp_path / "m1.dcm", radiograph, bits_stored=12, photometric="MONOCHROME1")
    a, _ = load_radiograph_tensor(mono2)
    b, _ = load_radiograph_tensor(mono1)
    torch.testing.assert_close(b, 1.0 - a)


def test_keep_aspect_letterboxes(tmp_path, radiograph) -> None:
    path = write_dicom(tmp_path / "cxr.dcm", radiograph, bits_stored=12)
    t, _ = load_radiograph_tensor(path, size=100, keep_aspect=True)
    assert t.shape == (1, 100, 100)
    # 530 columns x 700 rows -> 76 x 100 content: columns (axis 1 in x-first order) are padded.
    assert float(t[0, :10].abs().sum()) == 0.0 and float(t[0, -10:].abs().sum()) == 0.0
    assert float(t[0, 40].min()) > 0.0


def test_area_resize_is_a_block_mean() -> None:
    x = torch.arange(16.0).reshape(4, 4)
    torch.testing.assert_close(area_resize(x, 2)[0], torch.tensor([[2.5, 4.5], [10.5, 12.5]]))


def test_multiframe_refused() -> None:
    with pytest.raises(InputError, match="single-frame grey"):
        load_radiograph_tensor(pydicom_file("SC_rgb_rle_2frame.dcm"))


def test_shared_decodes_decode_each_file_once_with_the_same_results(tmp_path, radiograph, monkeypatch) -> None:
    import medvision.io.fast as fast

    paths = [
        write_dicom(tmp_path / "a.dcm", radiograph, bits_stored=12),
        write_dicom(tmp_path / "b.dcm", radiograph[::-1].copy(), bits_stored=16, photometric="MONOCHROME1"),
    ]
    plain = {(p, s): load_radiograph_tensor(p, size=s, keep_aspect=True)[0] for p in paths for s in (64, 224)}
    calls = []
    real = fast.decode_stored
    monkeypatch.setattr(fast, "decode_stored", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    with fast.shared_decodes() as cache:
        for p in paths:
            for s in (64, 224, 64):
                torch.testing.assert_close(load_radiograph_tensor(p, size=s, keep_aspect=True)[0], plain[(p, s)])
        assert calls == paths and len(cache) == 2
        cache.clear()
        load_radiograph_tensor(paths[0], size=64)
        assert len(calls) == 3
    load_radiograph_tensor(paths[0], size=64)  # outside the block: decoded again, nothing kept
    assert len(calls) == 4 and getattr(fast._decoded, "entries", None) is None
