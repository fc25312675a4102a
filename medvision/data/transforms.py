"""MONAI dictionary transforms for chest-radiograph classification.

The chain that :func:`classification_transforms` builds for a model's own input (``normalise_on_device=False``:
the model contract, the report, ``evaluate``)::

    LoadRadiographd          DICOM/PNG/JPEG -> (1, S, S) float32 in [0, 1]
    DeleteItemsd("boxes")    variable-length lists do not collate
    NormalizeIntensityd      (x - mean) / std
    EnsureTyped              plain float32 tensor (no MetaTensor)
    RandAffined              rotation, scaling, translation        \\
    RandAdjustContrastd      gamma on the min-max range            |  training only
    RandGaussianNoised       additive noise                        |
    EnsureTyped              plain float32 tensor                  /

and the one training caches (``normalise_on_device=True``), whose batches the training step normalises
(:func:`medvision.data.augment.normalise_batch`)::

    LoadRadiographd          DICOM/PNG/JPEG -> (1, S, S) float32 in [0, 1]      \\
    DeleteItemsd("boxes")                                                       |  deterministic: cached
    FixedPointImaged         uint16 round(65535 x), x in [0, 1]                 /  by PersistentDataset
    (per-sample augmentation, ``where: sample`` only: the random part above, in [0, 1] units, float32)

Decisions:

* The cached prefix is the same for training and evaluation (load, drop boxes, uint16), so a train
  and an eval dataset that share a cache folder read the same files; the random part comes after it.
* The cache holds the image before normalisation, as 16-bit fixed point (uint16 ``round(65535 x)``): half
  the bytes of float32 to write, read and hand from the loader workers to the training process, and the
  normalisation (:func:`medvision.data.augment.normalise_batch`: ``x / 65535``, then ``(x - mean) / std``) is
  one batched float32 operation on the device. Measured on the demo (20 epochs from the same seed): float16
  entries (within 2.4e-4 near 1) moved the test AUROC from 0.9797 to 0.9679, beyond the 0.005 the demo
  allows; uint16 (within 7.6e-6 everywhere) gave 0.9794. uint8 (a step of 1/255) is coarser still.
* Augmentation acts as on normalised intensities. The gamma contrast works on the image's own min-max
  range, so it does not care about the units; the noise level ``noise_std`` is given in [0, 1] units
  (divided by ``std`` on normalised images); the affine pads with the mean intensity (0 in normalised
  units; in [0, 1] units the image is shifted by ``-mean`` around the affine).
* ``boxes`` are dropped: classification does not use them and lists of different lengths break
  MONAI's default collate. Detection keeps them with its own transforms.
* ``Compose(log_stats=False)``: MONAI would otherwise log the whole sample (patient id included)
  when a transform fails. Failures inside the chain surface as the medvision error that caused them
  (MONAI wraps every failure in ``RuntimeError``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    DeleteItemsd,
    EnsureTyped,
    MapTransform,
    NormalizeIntensityd,
    RandAdjustContrastd,
    RandAffined,
    RandGaussianNoised,
)

from medvision.constants import BOXES, DEFAULT_MAX_VOXELS, IMAGE, IMAGE_SUFFIXES
from medvision.data.datalist import parse_age, parse_sex
from medvision.errors import ConfigError, InputError, MedvisionError
from medvision.io.fast import area_resize, load_radiograph_tensor
from medvision.io.image2d import RadiographImageReader

#: Bump when the loading or the deterministic part of the chain changes: it is part of the cache digest.
#: 2: cache entries are uint16 fixed-point images of [0, 1], normalised on the device (1: float32, normalised).
TRANSFORM_VERSION = 2

#: Default augmentation (``augment`` of :func:`classification_transforms`).
DEFAULT_AUGMENT: dict[str, Any] = {
    "enabled": True,
    "rotate_deg": 10.0,
    "scale": 0.1,
    "translate": 0.05,
    "prob": 0.5,
    "noise_std": 0.02,
    "contrast": (0.9, 1.1),
}

#: Header facts that :class:`LoadRadiographd` fills where the item's own value is empty.
HEADER_FIELDS = ("sex", "age", "view", "study_uid")


def first_medvision_error(exc: BaseException) -> MedvisionError | None:
    """The first :class:`~medvision.errors.MedvisionError` in the ``__cause__``/``__context__`` chain.

    Example:
        >>> try:
        ...     try:
        ...         raise InputError("a.dcm", "bad")
        ...     except InputError as inner:
        ...         raise RuntimeError("applying transform") from inner
        ... except RuntimeError as outer:
        ...     first_medvision_error(outer).where
        'a.dcm'
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, MedvisionError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


class MedvisionCompose(Compose):
    """A MONAI ``Compose`` that re-raises the medvision error behind MONAI's ``RuntimeError`` wrapping.

    Example:
        >>> chain = MedvisionCompose([LoadRadiographd(keys="image", size=32)])
        >>> chain({"image": "missing.dcm"})
        Traceback (most recent call last):
        ...
        medvision.errors.InputError: missing.dcm: cannot open file (No such file or directory); check the path
    """

    #: What the deterministic prefix stores (``""``: the model's input; ``"u16"``: uint16 fixed point of [0, 1]);
    #: :func:`~medvision.data.make_dataset` puts it into the cache entries' names.
    cache_layout: str = ""

    def __call__(
        self, input_: Any, start: int = 0, end: int | None = None, threading: bool = False, lazy: bool | None = None
    ) -> Any:
        try:
            return super().__call__(input_, start=start, end=end, threading=threading, lazy=lazy)
        except RuntimeError as exc:
            cause = first_medvision_error(exc)
            if cause is None:
                raise
            raise cause from exc


def _is_empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, str) and not value.strip()


def load_image_tensor(
    path: str | os.PathLike, *, size: int, keep_aspect: bool = True, max_voxels: int = DEFAULT_MAX_VOXELS
) -> tuple[torch.Tensor, dict[str, Any]]:
    """A PNG/JPEG radiograph as a ``(1, size, size)`` float32 tensor in [0, 1], x-first like MONAI.

    Min-max scaling then area resize (letterboxed with 0 when ``keep_aspect``), as
    :func:`medvision.io.load_radiograph_tensor` does for DICOM.

    Example:
        >>> t, meta = load_image_tensor("chest.png", size=224)  # doctest: +SKIP
    """
    reader = RadiographImageReader(max_voxels=max_voxels)
    array, meta = reader.get_data(reader.read(str(path)))
    array = np.asarray(array, dtype=np.float32)
    if array.ndim != 2:
        raise InputError(
            path,
            f"expected a single grey image, got pixel array {array.shape}",
            "save the radiograph as a grey PNG/JPEG",
        )
    lo, hi = float(array.min()), float(array.max())
    scaled = (array - lo) / (hi - lo) if hi > lo else np.zeros_like(array)
    out = area_resize(torch.from_numpy(np.ascontiguousarray(scaled)), size, keep_aspect=keep_aspect)
    return out.contiguous(), meta


class LoadRadiographd(MapTransform):
    """Load a chest radiograph (DICOM, PNG or JPEG) into a ``(1, size, size)`` float32 tensor in [0, 1].

    DICOM goes through :func:`medvision.io.load_radiograph_tensor` (rescale, MONOCHROME1 inverted,
    area resize); PNG/JPEG through :class:`medvision.io.RadiographImageReader`, min-max scaling and the
    same area resize. The axis order is MONAI's (channel, x = column, y = row). The DICOM header's sex,
    age, view and study UID fill the item's fields where they are empty; the source path is kept under
    ``path_key``. The input dict is copied, never changed.

    Args:
        keys: the key(s) holding a path.
        size: output side in pixels.
        keep_aspect: letterbox instead of stretching.
        max_voxels: size guard applied to the header before decoding.
        path_key: where to keep the path of the first key (``None``: do not keep it).
        allow_missing_keys: skip absent keys instead of failing.

    Raises:
        InputError: a file that cannot be read as a single-frame grey radiograph.

    Example:
        >>> from pydicom.data import get_testdata_file
        >>> out = LoadRadiographd(size=64)({"image": get_testdata_file("CT_small.dcm"), "label": 0})
        >>> tuple(out["image"].shape), out["sex"], out["image_path"].endswith("CT_small.dcm")
        ((1, 64, 64), 'O', True)
    """

    def __init__(
        self,
        keys: KeysCollection = IMAGE,
        *,
        size: int = 224,
        keep_aspect: bool = True,
        max_voxels: int = DEFAULT_MAX_VOXELS,
        path_key: str | None = "image_path",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.size = int(size)
        self.keep_aspect = bool(keep_aspect)
        self.max_voxels = int(max_voxels)
        self.path_key = path_key

    def load(self, path: str | os.PathLike) -> tuple[torch.Tensor, dict[str, Any]]:
        """One file -> (tensor, header facts)."""
        if Path(path).suffix.lower() in IMAGE_SUFFIXES:
            tensor, _ = load_image_tensor(
                path, size=self.size, keep_aspect=self.keep_aspect, max_voxels=self.max_voxels
            )
            return tensor, {}
        # Looked up at call time, so that tests can count the decodes.
        tensor, meta = load_radiograph_tensor(
            path, size=self.size, keep_aspect=self.keep_aspect, max_voxels=self.max_voxels
        )
        return tensor.to(torch.float32), {
            "sex": parse_sex(meta.get("patient_sex")),
            "age": parse_age(meta.get("patient_age")),
            "view": str(meta.get("view_position") or "").strip().upper(),
            "study_uid": str(meta.get("study_uid") or ""),
        }

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for n, key in enumerate(self.key_iterator(d)):
            path = d[key]
            if not isinstance(path, str | os.PathLike):
                raise InputError(
                    str(key),
                    f"expected a file path, got {type(path).__name__}",
                    "put LoadRadiographd first in the chain",
                )
            tensor, facts = self.load(path)
            d[key] = tensor
            if n == 0 and self.path_key:
                d[self.path_key] = os.fspath(path)
            for field in HEADER_FIELDS:
                # Every item gets the field (collate needs the same keys); a header fills only empty values.
                default = math.nan if field == "age" else ""
                current = d.get(field, default)
                d[field] = facts[field] if _is_empty(current) and field in facts else current
        return d


#: The compact cache's scale: an image x in [0, 1] is stored as uint16 round(FIXED_POINT_SCALE * x).
FIXED_POINT_SCALE = 65535
CACHE_DTYPE = torch.uint16


def from_fixed_point(images: torch.Tensor) -> torch.Tensor:
    """Cached images as float32 in [0, 1] (uint16 fixed point divided by :data:`FIXED_POINT_SCALE`; other
    dtypes only cast)."""
    x = images.to(torch.float32)
    return x / FIXED_POINT_SCALE if images.dtype == CACHE_DTYPE else x


class FixedPointImaged(MapTransform):
    """The image(s) as plain uint16 tensors ``round(65535 x)``: the compact form training caches (x in [0, 1]).

    A plain conversion, no MetaTensor: MONAI's ``EnsureTyped`` would look at every key's type and copy
    metadata that the cache does not keep. Values are clamped to [0, 1] first (they are there already:
    :class:`LoadRadiographd` scales them), so nothing wraps around.

    Raises:
        InputError: a value that is not a tensor (put it after :class:`LoadRadiographd`).

    Example:
        >>> FixedPointImaged(keys="image")({"image": torch.tensor([0.0, 0.5, 1.0])})["image"].tolist()
        [0, 32768, 65535]
    """

    def __init__(self, keys: KeysCollection = IMAGE, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            if not isinstance(value, torch.Tensor):
                raise InputError(
                    str(key), f"expected a tensor, got {type(value).__name__}",
                    "put FixedPointImaged after LoadRadiographd",
                )  # fmt: skip
            unit = value.as_subclass(torch.Tensor).float().clamp(0.0, 1.0)
            d[key] = torch.round(unit * FIXED_POINT_SCALE).to(CACHE_DTYPE)
        return d


class _RandAffineFilld(RandAffined):
    """``RandAffined`` in float32 that pads with ``fill`` instead of 0 (shift by ``-fill``, affine, shift back).

    Random, so it also marks where ``PersistentDataset``'s cached prefix ends: the uint16 image is turned
    back into [0, 1] here, after the cache, not in a deterministic step that would be cached.
    """

    def __init__(self, *args: Any, fill: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fill = float(fill)

    def __call__(self, data: Mapping[Hashable, Any], lazy: bool | None = None) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = from_fixed_point(torch.as_tensor(d[key])) - self.fill
        out = dict(super().__call__(d, lazy=lazy))
        for key in self.key_iterator(out):
            out[key] = out[key] + self.fill
        return out


def _augment_settings(augment: Mapping[str, Any] | None) -> dict[str, Any]:
    settings = dict(DEFAULT_AUGMENT)
    for key, value in (augment or {}).items():
        if key not in DEFAULT_AUGMENT:
            raise ConfigError(f"augment.{key}", "unknown augmentation setting", f"use {', '.join(DEFAULT_AUGMENT)}")
        settings[key] = value
    for key in ("rotate_deg", "scale", "translate", "noise_std"):
        if not isinstance(settings[key], int | float) or settings[key] < 0:
            raise ConfigError(
                f"augment.{key}", f"{settings[key]!r} is not a number >= 0", f"use e.g. {DEFAULT_AUGMENT[key]}"
            )
    if not 0.0 <= float(settings["prob"]) <= 1.0:
        raise ConfigError("augment.prob", f"{settings['prob']!r} is outside [0, 1]", "use e.g. 0.5")
    contrast = settings["contrast"]
    numbers = (
        isinstance(contrast, list | tuple)
        and len(contrast) == 2
        and all(isinstance(g, int | float) and not isinstance(g, bool) for g in contrast)
    )
    if not numbers or not 0 < contrast[0] <= contrast[1]:
        raise ConfigError(
            "augment.contrast",
            f"{contrast!r} is not a gamma range (low, high) with 0 < low <= high",
            "use e.g. [0.9, 1.1]",
        )
    return settings


def classification_transforms(
    *,
    image_size: int,
    keep_aspect: bool = True,
    mean: float,
    std: float,
    train: bool,
    augment: Mapping[str, Any] | None = None,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    normalise_on_device: bool = False,
) -> Compose:
    """The MONAI chain from a datalist item to a model-ready sample (see the module docstring).

    Args:
        image_size: side of the square input in pixels.
        keep_aspect: letterbox instead of stretching.
        mean: intensity mean of the [0, 1] images (subtracted).
        std: intensity standard deviation (divisor).
        train: add the random augmentation.
        augment: overrides of :data:`DEFAULT_AUGMENT` (``rotate_deg``, ``scale`` (fraction),
            ``translate`` (fraction of the side), ``prob`` (of each random transform), ``noise_std`` (in
            [0, 1] units), ``contrast`` (gamma range)); ``{"enabled": False}`` turns it off.
        max_voxels: size guard of the loader.
        normalise_on_device: the chain training caches: no normalisation here, the image stays in [0, 1]
            and is stored as uint16 fixed point; the consumer normalises batches with
            :func:`medvision.data.augment.normalise_batch` (``mean``, ``std``). The default builds the
            model's own input, normalised float32, as the model contract and the report use it.

    Returns:
        A :class:`MedvisionCompose`; its output ``image`` is a plain tensor ``(1, S, S)``: float32 and
        normalised by default; with ``normalise_on_device`` uint16 fixed point of [0, 1] (float32 in [0, 1] units
        after per-sample augmentation).

    Raises:
        ConfigError: a bad size, std or augmentation setting.

    Example:
        >>> chain = classification_transforms(image_size=224, mean=0.5, std=0.25, train=True)
        >>> [type(t).__name__ for t in chain.transforms][:3]
        ['LoadRadiographd', 'DeleteItemsd', 'NormalizeIntensityd']
    """
    if int(image_size) < 8:
        raise ConfigError("data.image_size", f"{image_size!r} is too small", "use e.g. 224")
    if not float(std) > 0:
        raise ConfigError("data.std", f"{std!r} is not a positive number", "use the intensity std, e.g. 0.25")
    settings = _augment_settings(augment)
    keys = [IMAGE]
    mean, std = float(mean), float(std)
    chain: list[Any] = [
        LoadRadiographd(keys=IMAGE, size=image_size, keep_aspect=keep_aspect, max_voxels=max_voxels),
        DeleteItemsd(keys=BOXES),
    ]
    if normalise_on_device:
        chain.append(FixedPointImaged(keys=keys))
    else:
        chain += [
            NormalizeIntensityd(keys=keys, subtrahend=mean, divisor=std),
            EnsureTyped(keys=keys, data_type="tensor", dtype=torch.float32, track_meta=False),
        ]
    if train and settings["enabled"]:
        p = float(settings["prob"])
        shift = float(settings["translate"]) * int(image_size)
        # In [0, 1] units (normalise_on_device) the same operations give the same normalised result: the
        # affine pads with the mean intensity (0 in normalised units) and the noise is not divided by std.
        units = 1.0 if normalise_on_device else std
        affine = {
            "keys": keys,
            "prob": p,
            "rotate_range": (math.radians(float(settings["rotate_deg"])),),
            "scale_range": (float(settings["scale"]),) * 2,
            "translate_range": (shift, shift),
            "mode": "bilinear",
            "padding_mode": "zeros",
        }
        chain += [
            _RandAffineFilld(fill=mean, **affine) if normalise_on_device else RandAffined(**affine),
            RandAdjustContrastd(keys=keys, prob=p, gamma=tuple(float(g) for g in settings["contrast"])),
            RandGaussianNoised(keys=keys, prob=p, mean=0.0, std=float(settings["noise_std"]) / units),
            EnsureTyped(keys=keys, data_type="tensor", dtype=torch.float32, track_meta=False),
        ]
    compose = MedvisionCompose(chain, log_stats=False)
    # Names the cache entries (make_dataset), so the two layouts never read each other's files.
    compose.cache_layout = "u16" if normalise_on_device else ""
    return compose


def transform_digest(**settings: Any) -> str:
    """A short stable hash of the deterministic settings, with :data:`TRANSFORM_VERSION` mixed in.

    It names the cache folder, so that changing the image size (or the loading code) never reuses stale
    cached samples.

    Example:
        >>> a = transform_digest(image_size=224, keep_aspect=True, mean=0.5, std=0.25)
        >>> a == transform_digest(std=0.25, mean=0.5, keep_aspect=True, image_size=224), len(a)
        (True, 16)
        >>> a == transform_digest(image_size=256, keep_aspect=True, mean=0.5, std=0.25)
        False
    """
    payload = json.dumps({"version": TRANSFORM_VERSION, **settings}, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]
