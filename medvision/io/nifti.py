"""NIfTI reading through nibabel, as MONAI's :class:`~monai.data.NibabelReader` with guards.

MONAI's reader does the loading, the affine and (with ``as_closest_canonical=True``) the
reorientation to RAS; this subclass adds what clinical input needs: a size guard on the header
before any voxel is read, a clear error for unreadable or non-finite files, and medvision's
normalised metadata.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import NibabelReader
from monai.utils import MetaKeys

from medvision.constants import DEFAULT_MAX_VOXELS, KIND_NIFTI
from medvision.errors import InputError, SizeLimitError

PathLike = str | os.PathLike


class NiftiReader(NibabelReader):
    """MONAI reader for ``.nii`` and ``.nii.gz`` with a size guard and a finite-values check.

    Args:
        max_voxels: refuse headers asking for more voxels than this.
        as_closest_canonical: reorient to RAS (nibabel's ``as_closest_canonical``).
        allow_nonfinite: accept NaN/Inf voxels (replaced by 0) instead of refusing the file.
        dtype: output dtype.

    Example:
        >>> import nibabel, pathlib
        >>> path = pathlib.Path(nibabel.__file__).parent / "tests" / "data" / "anatomical.nii"
        >>> array, meta = NiftiReader().get_data(NiftiReader().read(path))
        >>> array.shape
        (33, 41, 25)
    """

    def __init__(
        self,
        *,
        max_voxels: int = DEFAULT_MAX_VOXELS,
        as_closest_canonical: bool = False,
        allow_nonfinite: bool = False,
        dtype: Any = np.float32,
    ) -> None:
        super().__init__(as_closest_canonical=as_closest_canonical)
        self.dtype = dtype
        self.max_voxels = max_voxels
        self.allow_nonfinite = allow_nonfinite

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs: Any) -> Any:
        """Read the header (voxels stay on disk) and check its size."""
        import nibabel as nib

        names = [data] if isinstance(data, str | os.PathLike) else list(data)
        for name in names:
            path = Path(name)
            if path.exists() and path.stat().st_size == 0:
                raise InputError(path, "empty file (0 bytes)", "re-export or re-copy the file")
            try:
                header = nib.load(path).header
            except FileNotFoundError as exc:
                raise InputError(path, "file not found", "check the path") from exc
            except Exception as exc:  # noqa: BLE001 - nibabel raises many types for bad files
                raise InputError(
                    path,
                    f"not a readable NIfTI file ({type(exc).__name__}: {exc})",
                    "check the file; re-export it as .nii or .nii.gz",
                ) from exc
            shape = tuple(int(s) for s in header.get_data_shape())
            voxels = int(np.prod(shape, dtype=np.int64)) if shape else 0
            if voxels > self.max_voxels:
                raise SizeLimitError(
                    path,
                    f"header asks for {voxels:,} voxels {shape}, over the limit of {self.max_voxels:,}",
                    "raise max_voxels (--max-voxels) if the volume is genuine",
                )
            if voxels == 0:
                raise InputError(path, f"header describes an empty volume {shape}", "re-export the file")
        return super().read(data, **kwargs)

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        """Voxels and metadata; refuses NaN/Inf unless ``allow_nonfinite``."""
        path = Path(self.filenames[0])
        try:
            array, meta = super().get_data(img)
        except (OSError, EOFError, ValueError, Exception) as exc:  # noqa: BLE001 - gzip/zlib/struct errors
            raise InputError(
                path,
                f"voxel data cannot be read ({type(exc).__name__}: {exc})",
                "the file is truncated or corrupt; re-export it",
            ) from exc
        array = np.asarray(array, dtype=self.dtype)
        finite = np.isfinite(array)
        if not finite.all():
            bad = int(array.size - np.count_nonzero(finite))
            if not self.allow_nonfinite or bad == array.size:
                raise InputError(
                    path,
                    f"{bad:,} of {array.size:,} voxels are NaN or infinite",
                    "clean the volume (e.g. set NaN to 0) or pass allow_nonfinite=True",
                )
            array = np.where(finite, array, 0).astype(array.dtype)
        affine = np.asarray(meta[MetaKeys.AFFINE])
        zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        n_spatial = len(meta[MetaKeys.SPATIAL_SHAPE])
        meta.update(
            {
                "kind": KIND_NIFTI,
                "path": str(path),
                "modality": "",
                "photometric": "",
                "study_uid": "",
                "series_uid": "",
                "spacing_mm": [float(z) for z in zooms[:n_spatial]],
                "n_slices": int(meta[MetaKeys.SPATIAL_SHAPE][2]) if n_spatial >= 3 else 1,
                "orientation_code": "".join(_axcodes(affine)),
            }
        )
        return array, meta


def _axcodes(affine: np.ndarray) -> tuple[str, ...]:
    import nibabel as nib

    return tuple(str(c) for c in nib.aff2axcodes(affine))
