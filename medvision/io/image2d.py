"""PNG/JPEG radiographs through MONAI's :class:`~monai.data.PILReader`, with a size guard.

Public chest X-ray sets (e.g. the pediatric pneumonia set) ship 8-bit JPEGs, some saved as RGB:
those are converted to one grey channel; 16-bit PNGs keep their depth.

PNG and JPEG carry no patient-space pixel spacing: 1 mm per pixel is assumed and ``meta["notes"]`` says so.
Every failure of Pillow (truncated stream, decompression bomb, out of memory) leaves as a typed error.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import PILReader
from monai.utils import MetaKeys

from medvision.constants import DEFAULT_MAX_VOXELS, KIND_IMAGE
from medvision.errors import CorruptDataError, InputError, SizeLimitError
from medvision.io._boundary import _first_line

PathLike = str | os.PathLike


@contextmanager
def _decoding(path: Any) -> Iterator[None]:
    """Pillow's decoding failures as typed errors: truncated or corrupt data, or not enough memory."""
    try:
        yield
    except MemoryError as exc:
        raise SizeLimitError(
            path, "ran out of memory while decoding the image", "lower --max-voxels to refuse such images early"
        ) from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # Pillow: "image file is truncated", bad zlib data
        raise CorruptDataError(
            path, f"image data is truncated or corrupt ({_first_line(exc)})", "re-export the image"
        ) from exc


def _to_grey(image: Any) -> Any:
    return image.convert("L") if image.mode in ("RGB", "RGBA", "P", "LA", "CMYK", "YCbCr") else image


class RadiographImageReader(PILReader):
    """MONAI reader for ``.png``/``.jpg``/``.jpeg`` radiographs, returned as one grey channel.

    Example:
        >>> reader = RadiographImageReader()
        >>> reader.verify_suffix("chest.jpeg")
        True
    """

    def __init__(self, *, max_voxels: int = DEFAULT_MAX_VOXELS, dtype: Any = np.float32) -> None:
        super().__init__(converter=_to_grey, reverse_indexing=True)
        self.dtype = dtype
        self.max_voxels = max_voxels

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs: Any) -> Any:
        """Open lazily, check the size, then let MONAI read it."""
        from PIL import Image, UnidentifiedImageError

        names = [data] if isinstance(data, str | os.PathLike) else list(data)
        for name in names:
            path = Path(name)
            try:
                with Image.open(path) as probe:
                    width, height = probe.size
            except FileNotFoundError as exc:
                raise InputError(path, "file not found", "check the path") from exc
            except Image.DecompressionBombError as exc:  # Pillow's own guard, at twice MAX_IMAGE_PIXELS
                raise SizeLimitError(path, f"image refused by Pillow ({exc})", "check the image's dimensions") from exc
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
                raise InputError(
                    path, f"not a readable PNG/JPEG image ({_first_line(exc)})", "re-export the image"
                ) from exc
            if width < 1 or height < 1:
                raise CorruptDataError(path, f"image header says {width}x{height} pixels", "re-export the image")
            if width * height > self.max_voxels:
                raise SizeLimitError(
                    path,
                    f"image is {width}x{height} pixels, over the limit of {self.max_voxels:,}",
                    "raise max_voxels (--max-voxels) if the image is genuine",
                )
        # The grey conversion (converter) decodes the pixels already here, so decoding errors start here.
        with _decoding(names[0] if len(names) == 1 else names):
            return super().read(data, **kwargs)

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        """Pixels (x = column, y = row) and metadata."""
        path = Path(getattr(img, "filename", "") or "")
        with _decoding(path):
            array, meta = super().get_data(img)
            array = np.asarray(array, dtype=self.dtype)
        if array.dtype.kind == "f" and not np.isfinite(array).all():  # only a float ("F" mode) image can hold NaN
            raise CorruptDataError(path, "image holds NaN or infinite values", "re-export the image")
        meta.update(
            {
                "kind": KIND_IMAGE,
                "path": str(path),
                "modality": "",
                "photometric": "MONOCHROME2",
                "study_uid": "",
                "series_uid": "",
                "spacing_mm": [1.0, 1.0],
                "n_slices": 1,
                "notes": ["PNG/JPEG carries no pixel spacing: 1 mm per pixel assumed"],
            }
        )
        meta.setdefault(MetaKeys.SPATIAL_SHAPE, np.asarray(array.shape[:2]))
        return array, meta
