"""DICOM radiograph -> model-ready ``1 x S x S`` float tensor, in one pass over the pixels.

MONAI's stock chain (``LoadImage(PydicomReader) + EnsureChannelFirst + ScaleIntensity + Resize``)
converts the full-resolution image to float64/float32 several times and keeps the whole DICOM header
as JSON metadata; on a 2048x2500 radiograph that costs about 70 ms on two cores. Rescale,
MONOCHROME1 inversion and min-max scaling are all affine maps of the stored values, and area
resizing is an average, so they commute: this path averages the stored values first
(``torch.nn.functional.adaptive_avg_pool2d``, the same kernel as MONAI's ``Resize(mode="area")``)
and applies the affine maps to the small result, with the min and max taken on the integer array.
The output matches MONAI's chain to float precision (a test checks it). A Modality LUT need not be linear,
and float pixel data may hold NaN, so those images are brought to brightness (checked) before resizing.
The header checks of :mod:`medvision.io.dicom` (malformed elements refused, pixel bytes against the header)
cost under 5% of this path (3.5-3.9% measured, plus about 1% for the bounded header read;
``benchmarks/bench_io.py`` prints both shares).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medvision.constants import DEFAULT_MAX_VOXELS
from medvision.errors import InputError
from medvision.io.dicom import (
    _integer,
    _modality_lut_bits,
    _rescale,
    check_size,
    decode_stored,
    normalised_meta,
    read_dataset,
    to_brightness,
)

PathLike = str | os.PathLike

# A float32 scratch buffer per thread: a fresh 20 MB array per radiograph costs more in page faults
# than the conversion itself.
_scratch = threading.local()


def _as_float32(stored: np.ndarray) -> torch.Tensor:
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.shape != stored.shape:
        buf = np.empty(stored.shape, dtype=np.float32)
        _scratch.buf = buf
    np.copyto(buf, stored, casting="unsafe")
    return torch.from_numpy(buf)


def area_resize(image: torch.Tensor, size: int, *, keep_aspect: bool = False) -> torch.Tensor:
    """Area-resize a ``(H, W)`` or ``(C, H, W)`` tensor to ``size x size``.

    With ``keep_aspect`` the longer side becomes ``size`` and the shorter is padded with zeros on both
    sides (letterbox), so anatomy is not stretched.
    """
    x = image if image.ndim == 3 else image[None]
    h, w = x.shape[-2:]
    if keep_aspect:
        scale = size / max(h, w)
        out_hw = (max(1, round(h * scale)), max(1, round(w * scale)))
    else:
        out_hw = (size, size)
    y = F.adaptive_avg_pool2d(x[None], out_hw)[0]
    if keep_aspect and out_hw != (size, size):
        dh, dw = size - out_hw[0], size - out_hw[1]
        y = F.pad(y, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))
    return y


_decoded = threading.local()


@contextmanager
def shared_decodes() -> Iterator[dict[Any, Any]]:
    """Within the block, :func:`load_radiograph_tensor` reads and decodes each file once, whatever sizes are
    asked of it (the batch report wants a model input and a display picture of every radiograph).

    Yields the cache (per thread); clear it once its images are done to bound memory.
    """
    before = getattr(_decoded, "entries", None)
    _decoded.entries = {}
    try:
        yield _decoded.entries
    finally:
        _decoded.entries = before


def _read_and_decode(path: PathLike, max_voxels: int) -> tuple[Any, np.ndarray]:
    cache = getattr(_decoded, "entries", None)
    key = (os.fspath(path), int(max_voxels))
    if cache is not None and key in cache:
        return cache[key]
    ds = read_dataset(path)
    check_size(ds, path, max_voxels)
    # A zero-copy view is possible only when no unused high bits need masking.
    bits_equal = _integer(ds, "BitsStored", path, default=16) == _integer(ds, "BitsAllocated", path, default=16)
    # decode_stored checks the Image Pixel elements and, for native data, the bytes they promise, before decoding.
    stored = decode_stored(ds, path, view_only=bits_equal)
    if cache is not None:
        cache[key] = (ds, stored)
    return ds, stored


def load_radiograph_tensor(
    path: PathLike,
    *,
    size: int = 224,
    keep_aspect: bool = False,
    max_voxels: int = DEFAULT_MAX_VOXELS,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Read a single-frame grey DICOM radiograph into a ``(1, size, size)`` tensor in [0, 1].

    Axis order follows MONAI (x = column, y = row), so the result equals
    ``Resize(ScaleIntensity(EnsureChannelFirst(LoadImage(DicomReader()))))``.

    Args:
        path: a DICOM file (CR, DX, or any single-frame grey image).
        size: output side in pixels.
        keep_aspect: letterbox instead of stretching.
        max_voxels: size guard applied to the header before decoding.

    Returns:
        The tensor and medvision's normalised metadata (with ``original_shape`` and ``spacing_mm``).

    Example:
        >>> from pydicom.data import get_testdata_file
        >>> t, meta = load_radiograph_tensor(get_testdata_file("CT_small.dcm"), size=64)
        >>> tuple(t.shape), float(t.min()) >= 0.0, float(t.max()) <= 1.0
        ((1, 64, 64), True, True)
    """
    ds, stored = _read_and_decode(path, max_voxels)
    if stored.shape[0] != 1 or stored.ndim != 3:
        raise InputError(
            path,
            f"expected a single-frame grey image, got pixel array {stored.shape}",
            "load multi-frame or colour images with medvision.io.load",
        )
    stored = stored[0]
    # Checked before any arithmetic: a malformed rescale or Modality LUT is refused, naming the element.
    slope, _ = _rescale(ds, path)
    via_brightness = _modality_lut_bits(ds, path) is not None or stored.dtype.kind == "f"
    if via_brightness:
        # A Modality LUT need not be linear, and float pixel data may hold NaN: to_brightness applies the LUT
        # (MONOCHROME1 inverted) and refuses non-finite values; the min-max scaling then follows it.
        image = torch.from_numpy(to_brightness(stored, ds, path=path))
        lo, hi = float(image.min()), float(image.max())
        small = area_resize(image, size, keep_aspect=keep_aspect)
    else:
        lo, hi = float(stored.min()), float(stored.max())
        # area_resize returns a new tensor, so the scratch buffer is free again afterwards.
        small = area_resize(_as_float32(stored), size, keep_aspect=keep_aspect)
    if keep_aspect:
        # The letterbox border is 0 in stored units; give it the darkest value instead.
        mask = area_resize(torch.ones(stored.shape, dtype=torch.float32), size, keep_aspect=True)
    span = hi - lo
    out = (small - lo) / span if span > 0 else torch.zeros_like(small)
    monochrome1 = str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1"
    if not via_brightness and monochrome1 != (slope < 0):
        out = 1.0 - out
    if keep_aspect:
        out = out * mask
    # Fallbacks taken (spacing assumed, transfer syntax inferred, padding ignored) are in meta["notes"].
    meta = normalised_meta(ds, path)
    spacing_rc = meta["pixel_spacing_mm"] or (1.0, 1.0)
    meta.update(
        {
            "path": str(path),
            "original_shape": [int(stored.shape[1]), int(stored.shape[0])],
            "spacing_mm": [spacing_rc[1], spacing_rc[0]],
        }
    )
    # (1, rows, cols) -> MONAI order (1, x = cols, y = rows)
    return out.transpose(-1, -2).contiguous(), meta
