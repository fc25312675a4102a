"""Datasets with an on-disk cache, and the checks that run once before training.

:func:`check_readable` reads every header in one pass, so that a bad file is reported before the first
epoch (all of them in one error) and not as a crash in epoch three. :func:`make_dataset` caches the
deterministic part of the transform chain in ``cache_dir/<settings digest>``.
"""

from __future__ import annotations

import copy
import hashlib
import os
import pickle
import re
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.data import Dataset, PersistentDataset
from monai.data.utils import sorted_dict
from monai.utils import convert_to_tensor

from medvision.constants import DEFAULT_MAX_VOXELS, IMAGE, IMAGE_SUFFIXES, LABEL, PATIENT_ID
from medvision.data.datalist import datalist_name, join_problems, parse_age, parse_sex
from medvision.data.transforms import first_medvision_error
from medvision.errors import ConfigError, DataError, InputError
from medvision.io.dicom import check_size, read_dataset

#: Item fields that DICOM headers fill where they are empty, and the header keyword of each.
HEADER_KEYWORDS = {
    PATIENT_ID: "PatientID",
    "study_uid": "StudyInstanceUID",
    "sex": "PatientSex",
    "age": "PatientAge",
    "view": "ViewPosition",
}
_GREY = ("MONOCHROME1", "MONOCHROME2")
_DIGEST = re.compile(r"^[A-Za-z0-9_.-]+$")


class _UnwrapErrors:
    """Dataset mixin: re-raise the medvision error behind MONAI's ``RuntimeError`` wrapping."""

    def _transform(self, index: int) -> Any:
        try:
            return super()._transform(index)  # type: ignore[misc]
        except RuntimeError as exc:
            cause = first_medvision_error(exc)
            if cause is None:
                raise
            raise cause from exc


class RadiographDataset(_UnwrapErrors, Dataset):
    """MONAI ``Dataset`` whose failures surface as medvision errors."""


class CachedRadiographDataset(_UnwrapErrors, PersistentDataset):
    """MONAI ``PersistentDataset`` whose failures surface as medvision errors, with a leaner cache write.

    A cache miss is written to a temporary file in the cache folder itself and renamed into place
    (``os.replace``, atomic within one file system, so a killed worker never leaves a half-written entry
    under the real name). MONAI makes and removes a temporary directory per entry and moves the file from
    there (a copy when ``/tmp`` is another file system): on a cold epoch that cost about as much as writing
    the entry. Reading (and MONAI's handling of a corrupt entry) is MONAI's own.
    """

    def _cachecheck(self, item_transformed: Any) -> Any:
        if self.cache_dir is None:
            return super()._cachecheck(item_transformed)
        name = self.hash_func(item_transformed).decode("utf-8") + self.transform_hash
        hashfile = self.cache_dir / f"{name}.pt"
        if hashfile.is_file():
            return super()._cachecheck(item_transformed)
        entry = self._pre_transform(copy.deepcopy(item_transformed))  # the datalist item stays as hashed
        partial = self.cache_dir / f".{name}.{os.getpid()}.{threading.get_ident()}.partial"
        try:
            torch.save(
                convert_to_tensor(entry, convert_numeric=False, track_meta=self.track_meta),
                partial,
                pickle_protocol=self.pickle_protocol,
            )
            os.replace(partial, hashfile)
        except PermissionError:  # a read-only cache folder: compute every time, as MONAI does
            pass
        finally:
            partial.unlink(missing_ok=True)
        return entry


def item_hash(item: dict[str, Any]) -> bytes:
    """Cache key of an item: its fields plus the size and modification time of its image file.

    A file replaced under the same path (re-export, corrected image) therefore misses the cache; so do
    changed labels or fields, since the cached sample carries them.

    Example:
        >>> len(item_hash({"image": "missing.dcm", "label": 0}))
        64
    """
    try:
        stat = os.stat(item[IMAGE])
        file_key: tuple[int, int] = (stat.st_size, stat.st_mtime_ns)
    except (OSError, KeyError, TypeError):
        file_key = (-1, -1)
    dump = pickle.dumps((sorted_dict(item), file_key), protocol=4)
    return hashlib.sha256(dump).hexdigest().encode()


def make_dataset(
    items: Sequence[dict[str, Any]],
    transform: Callable[..., Any],
    *,
    cache_dir: str | os.PathLike | None,
    settings_digest: str,
) -> Dataset:
    """A MONAI dataset over ``items``: cached on disk under ``cache_dir/<settings_digest>`` when ``cache_dir`` is set.

    The deterministic prefix of ``transform`` (up to the first random transform) is computed once per
    item and stored; the random part runs every time. Use
    :func:`medvision.data.transform_digest` of the loading settings as ``settings_digest``, so a
    different image size or normalisation uses a different folder. The cache holds the images and the
    items' fields (patient ids included): keep it on the same protected storage as the data.

    Args:
        items: datalist items.
        transform: usually :func:`medvision.data.classification_transforms`.
        cache_dir: cache root, or ``None`` for no cache.
        settings_digest: folder name for these settings.

    Returns:
        :class:`CachedRadiographDataset` or :class:`RadiographDataset`.

    Example:
        >>> from medvision.data import classification_transforms, transform_digest
        >>> chain = classification_transforms(image_size=224, mean=0.5, std=0.25, train=False)
        >>> ds = make_dataset([], chain, cache_dir=None, settings_digest="x")
        >>> len(ds)
        0
    """
    if not settings_digest or not _DIGEST.match(settings_digest):
        raise ConfigError(
            "settings_digest",
            f"{settings_digest!r} is not a usable folder name",
            "pass medvision.data.transform_digest(...) of the loading settings",
        )
    if cache_dir is None:
        return RadiographDataset(data=list(items), transform=transform)
    folder = Path(cache_dir) / settings_digest
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            "data.cache_dir",
            f"cannot create {folder} ({exc.strerror or exc})",
            "choose a writable cache folder, or set data.cache_dir to null",
        ) from exc
    dataset = CachedRadiographDataset(data=list(items), transform=transform, cache_dir=folder, hash_func=item_hash)
    # A chain's cache layout (classification_transforms: "u16" for uint16 fixed-point entries) goes into the entry
    # names: a normalised float32 chain and the compact one never read each other's entries, even when a
    # caller gives both the same settings digest.
    layout = getattr(transform, "cache_layout", "")
    if layout:
        dataset.transform_hash = f"-{layout}"
    return dataset


def _empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return value != value  # NaN
    return isinstance(value, str) and not value.strip()


def _header_facts(ds: Any) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    for field, keyword in HEADER_KEYWORDS.items():
        raw = ds.get(keyword)
        if field == "age":
            try:
                facts[field] = parse_age(raw)
            except ValueError:
                facts[field] = float("nan")
        elif field == "sex":
            facts[field] = parse_sex(raw)
        else:
            facts[field] = "" if raw is None else str(raw).strip().upper() if field == "view" else str(raw).strip()
    return facts


def _probe_dicom(path: Path, max_voxels: int) -> tuple[dict[str, Any], str | None]:
    ds = read_dataset(path, stop_before_pixels=True)
    facts = _header_facts(ds)
    if "Rows" not in ds or "Columns" not in ds:
        sop = ds.get("SOPClassUID")
        name = getattr(sop, "name", sop) if sop else f"modality {ds.get('Modality', '?')}"
        return facts, f"not an image (no pixel matrix: {name})"
    try:
        frames = max(int(ds.get("NumberOfFrames", 1) or 1), 1)
    except (TypeError, ValueError):
        frames = 1
    if frames > 1:
        return facts, f"multi-frame ({frames} frames); a single-frame grey radiograph is needed"
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip()
    if samples != 1 or (photometric and photometric not in _GREY):
        return facts, f"colour ({photometric or '?'}, {samples} samples per pixel); a grey radiograph is needed"
    check_size(ds, path, max_voxels)
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is not None and ts.is_compressed:
        from pydicom.pixels import get_decoder

        try:
            decoder = get_decoder(ts)
        except NotImplementedError:
            return facts, f"unsupported transfer syntax {ts} ({ts.name})"
        if not decoder.is_available:
            return facts, f"no decoder installed for {ts.name}"
    else:
        bits = int(ds.get("BitsAllocated", 16) or 16)
        needed = int(ds.Rows or 0) * int(ds.Columns or 0) * frames * samples * bits // 8
        size = path.stat().st_size
        if size < needed:
            return facts, f"pixel data is truncated (the file has {size:,} bytes, the header needs {needed:,})"
    return facts, None


def _probe_image(path: Path, max_voxels: int) -> tuple[dict[str, Any], str | None]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        return {}, f"not a readable PNG/JPEG image ({exc})"
    if width * height > max_voxels:
        return {}, f"image is {width}x{height} pixels, over the limit of {max_voxels:,}"
    return {}, None


def probe(path: str | os.PathLike, *, max_voxels: int = DEFAULT_MAX_VOXELS) -> tuple[dict[str, Any], str | None]:
    """Read one image's header (no pixels): the header facts and the problem, or ``None`` if it looks loadable.

    Example:
        >>> from pydicom.data import get_testdata_file
        >>> facts, problem = probe(get_testdata_file("CT_small.dcm"))
        >>> facts["sex"], problem
        ('O', None)
    """
    path = Path(path)
    if not path.exists():
        return {}, "file not found"
    if not path.is_file():
        return {}, "is a folder, not an image file"
    try:
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return _probe_image(path, max_voxels)
        return _probe_dicom(path, max_voxels)
    except InputError as exc:
        return {}, exc.reason


def _filled(item: dict[str, Any], facts: dict[str, Any]) -> dict[str, Any]:
    out = dict(item)
    for field, value in facts.items():
        if _empty(out.get(field)) and not _empty(value):
            out[field] = value
    return out


def fill_from_headers(items: Sequence[dict[str, Any]], *, max_voxels: int = DEFAULT_MAX_VOXELS) -> list[dict[str, Any]]:
    """Copies of ``items`` with empty patient_id/study_uid/sex/age/view taken from the DICOM headers.

    Only headers are read; PNG/JPEG items and unreadable files are returned unchanged (use
    :func:`check_readable` to report those). Patient identifiers stay in memory.

    Example:
        >>> from pydicom.data import get_testdata_file
        >>> fill_from_headers([{"image": get_testdata_file("CT_small.dcm"), "patient_id": ""}])[0]["patient_id"]
        '1CT1'
    """
    out = []
    for item in items:
        if any(_empty(item.get(field)) for field in HEADER_KEYWORDS):
            facts, _ = probe(item[IMAGE], max_voxels=max_voxels)
            item = _filled(item, facts)
        else:
            item = dict(item)
        out.append(item)
    return out


def check_readable(
    items: Sequence[dict[str, Any]],
    *,
    skip_unreadable: bool = False,
    max_voxels: int = DEFAULT_MAX_VOXELS,
) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Read every image header once, before training, and report all problems together.

    Problems: missing file, unreadable or not DICOM/PNG/JPEG, not an image (e.g. a structured report),
    multi-frame or colour DICOM, a header over ``max_voxels``, no decoder for the transfer syntax,
    truncated uncompressed pixel data. Empty patient_id/study_uid/sex/age/view are filled from the
    DICOM header (PatientID, StudyInstanceUID, PatientSex, PatientAge ``"045Y"`` -> 45.0, ViewPosition).

    Args:
        items: datalist items.
        skip_unreadable: drop the bad items instead of raising.
        max_voxels: size guard.

    Returns:
        ``(readable items (copies, fields filled), [(path, reason), ...])``.

    Raises:
        DataError: there are problems and ``skip_unreadable`` is false; it lists all of them (the first 20
            in the message, all in its ``problems`` attribute).

    Example:
        >>> from pydicom.data import get_testdata_file
        >>> item = {"image": get_testdata_file("CT_small.dcm"), "label": 0, "sex": ""}
        >>> ok, problems = check_readable([item])
        >>> ok[0]["sex"], problems
        ('O', [])
    """
    kept: list[dict[str, Any]] = []
    problems: list[tuple[str, str]] = []
    for item in items:
        path = str(item[IMAGE])
        facts, problem = probe(path, max_voxels=max_voxels)
        if problem is not None:
            problems.append((path, problem))
            continue
        kept.append(_filled(item, facts))
    if problems and not skip_unreadable:
        listed = join_problems([f"{path}: {reason}" for path, reason in problems])
        error = DataError(
            datalist_name(items),
            f"{len(problems)} image(s) cannot be read: {listed}",
            "fix or remove them, or pass --skip-unreadable",
        )
        error.problems = problems  # type: ignore[attr-defined]
        raise error
    return kept, problems


def class_balance(items: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Counts and the positive weight for ``BCEWithLogitsLoss(pos_weight=...)`` (``n_neg / n_pos``).

    Raises:
        DataError: no items, or only one class.

    Example:
        >>> class_balance([{"label": 1}, {"label": 0}, {"label": 0}])
        {'n': 3, 'n_pos': 1, 'pos_weight': 2.0}
    """
    n = len(items)
    n_pos = sum(int(item[LABEL]) for item in items)
    if n == 0 or n_pos in (0, n):
        raise DataError(
            datalist_name(items),
            f"the training items hold {n_pos} positive(s) out of {n}; a classifier needs both classes",
            "check the labels and the split",
        )
    return {"n": n, "n_pos": n_pos, "pos_weight": (n - n_pos) / n_pos}
