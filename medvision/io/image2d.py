"""PNG/JPEG radiographs through MONAI's :class:`~monai.data.PILReader`, with a size guard.

Public chest X-ray sets (e.g. the pediatric pneumonia set) ship 8-bit JPEGs, some saved as RGB:
those are converted to one grey channel; 16-bit PNGs keep their depth.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import PILReader
from monai.utils import MetaKeys

from medvision.constants import DEFAULT_MAX_VOXELS, KIND_IMAGE
from medvision.errors import InputError, SizeLimitError

PathLike = str | os.PathLike


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
            except (UnidentifiedImageError, OSError) as exc:
                raise InputError(path, f"not a readable PNG/JPEG image ({exc})", "re-export the image") from exc
            if width * height > self.max_voxels:
                raise SizeLimitError(
                    path,
                    f"image is {width}x{height} pixels, over the limit of {self.max_voxels:,}",
                    "raise max_voxels (--max-voxels) if the image is genuine",
                )
        return super().read(data, **kwargs)

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        """Pixels (x = column, y = row) and metadata."""
        path = Path(getattr(img, "filename", "") or "")
        try:
            array, meta = super().get_data(img)
            array = np.asarray(array, dtype=self.dtype)
        except OSError as exc:
            raise InputError(path, f"image data is truncated or corrupt ({exc})", "re-export the image") from exc
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
            }
        )
        meta.setdefault(MetaKeys.SPATIAL_SHAPE, np.asarray(array.shape[:2]))
        return array, meta
