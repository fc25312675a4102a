"""ImageNet weights through torchvision's weights API, checkpoints, and the first-conv adaptation.

ImageNet checkpoints live in the torch hub cache, ``torch.hub.get_dir()/checkpoints/<file>``
(``$TORCH_HOME/hub/checkpoints`` when ``TORCH_HOME`` is set), under the file name of the
torchvision URL, e.g. ``densenet121-a639ec97.pth``; ``a639ec97`` is the start of the file's
sha256. When the file is missing, torchvision downloads it and checks that hash. Where there is
no network (hospital networks, CI) place the file with ``medvision weights import FILE --arch
NAME``, which checks the hash and the architecture before copying it into the cache. Setting
``MEDVISION_OFFLINE=1`` forbids any download attempt.

Example:
    >>> from medvision.models.weights import cached_weights_path
    >>> cached_weights_path("resnet18").name
    'resnet18-f37072fd.pth'
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.hub
from torch import Tensor, nn
from torchvision.models import WeightsEnum
from torchvision.models import densenet as _tv_densenet

from medvision.errors import WeightsError
from medvision.models.registry import BackboneSpec, get_spec

__all__ = [
    "OFFLINE_ENV",
    "ImageNetWeightsUnavailableError",
    "adapt_input_conv",
    "cache_dir",
    "cached_weights_path",
    "channel_stats",
    "import_weights",
    "is_cached",
    "is_offline",
    "load_checkpoint",
    "load_imagenet_state_dict",
    "StateDictWeights",
    "load_state_dict_exact",
    "remap_legacy_keys",
    "sha256_file",
    "strip_classifier",
]

#: Environment variable that, set to ``1``, forbids any download of weights.
OFFLINE_ENV = "MEDVISION_OFFLINE"

StateDict = dict[str, Tensor]


class ImageNetWeightsUnavailableError(WeightsError):
    """ImageNet weights that are neither in the torch hub cache nor downloadable.

    Attributes:
        arch: The backbone's registry name.
        cause: Why the weights are not available (not cached and offline, download failure).
    """

    def __init__(self, where: str | Path, reason: str, fix: str | None = None, *, arch: str, cause: str) -> None:
        self.arch = arch
        self.cause = cause
        super().__init__(where, reason, fix)


def is_offline() -> bool:
    """Whether ``MEDVISION_OFFLINE`` forbids downloads (``1``, ``true`` or ``yes``)."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in {"1", "true", "yes"}


def cache_dir() -> Path:
    """The folder torchvision caches checkpoints in: ``torch.hub.get_dir()/checkpoints``.

    It honours ``TORCH_HOME`` (read at each call) and ``torch.hub.set_dir``.
    """
    return Path(torch.hub.get_dir()) / "checkpoints"


def cached_weights_path(arch: str | BackboneSpec) -> Path:
    """Where the ImageNet checkpoint of ``arch`` is (or would be) cached.

    Args:
        arch: A registered backbone name or its spec.

    Returns:
        ``cache_dir() / spec.weights_file``.
    """
    spec = arch if isinstance(arch, BackboneSpec) else get_spec(arch)
    return cache_dir() / spec.weights_file


def is_cached(arch: str | BackboneSpec) -> bool:
    """Whether the ImageNet checkpoint of ``arch`` is in the torch hub cache."""
    return cached_weights_path(arch).is_file()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The hex sha256 digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def channel_stats(spec: BackboneSpec, in_channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalisation mean and std for ``in_channels`` input channels.

    For 3 channels these are the ImageNet RGB values the weights were trained with. For any
    other count every channel gets the mean of the three ImageNet means (0.449) and the mean of
    the three stds (0.226): a grey radiograph normalised so matches, on average, what the
    summed (or tiled) RGB kernels of the first convolution expect.

    Args:
        spec: The backbone's spec.
        in_channels: Number of input channels.

    Returns:
        ``(mean, std)``, each a tuple of length ``in_channels``.
    """
    if in_channels == 3:
        return tuple(spec.mean), tuple(spec.std)
    mean = round(sum(spec.mean) / 3.0, 6)
    std = round(sum(spec.std) / 3.0, 6)
    return (mean,) * in_channels, (std,) * in_channels


def adapt_input_conv(weight: Tensor, in_channels: int) -> Tensor:
    """Adapt an RGB first-convolution kernel ``(O, 3, kH, kW)`` to ``in_channels`` inputs.

    Follows timm's ``adapt_input_conv`` (``timm/models/_manipulate.py``, Ross Wightman): for one
    channel the RGB kernels are summed over the input-channel axis, so a grey image gives the
    response the RGB kernels give to that grey copied into R, G and B. For ``k`` channels other
    than 1 and 3, timm cycles the R, G, B kernels to ``k`` channels and scales them by ``3 / k``;
    medvision instead tiles the *mean* RGB kernel ``k`` times, scaled by ``3 / k``, so every
    channel is treated alike (CT windows or neighbouring slices have no colour order) and a
    grey image copied to ``k`` channels still gives the summed-kernel response. Three channels
    are returned unchanged (a copy).

    Args:
        weight: The RGB kernel, shape ``(O, 3, kH, kW)``.
        in_channels: Target number of input channels (>= 1).

    Returns:
        The adapted kernel ``(O, in_channels, kH, kW)``, in the input's dtype.

    Raises:
        ValueError: If ``weight`` is not a 4-d RGB kernel or ``in_channels`` < 1.

    Example:
        >>> import torch
        >>> adapt_input_conv(torch.ones(2, 3, 1, 1), 1).flatten().tolist()
        [3.0, 3.0]
    """
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise ValueError(f"Expected an RGB kernel of shape (O, 3, kH, kW), got {tuple(weight.shape)}.")
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}.")
    dtype = weight.dtype
    # Half-precision kernels are summed in float32 (as timm does); float64 stays float64.
    kernel = weight.detach().to(torch.promote_types(dtype, torch.float32))
    if in_channels == 3:
        adapted = kernel.clone()
    elif in_channels == 1:
        adapted = kernel.sum(dim=1, keepdim=True)
    else:
        adapted = kernel.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1) * (3.0 / in_channels)
    return adapted.to(dtype)


class _Preloaded:
    """Quacks like a torchvision ``WeightsEnum`` member whose state dict is already in memory."""

    def __init__(self, state_dict: StateDict) -> None:
        self._state_dict = state_dict

    def get_state_dict(self, *args: Any, **kwargs: Any) -> StateDict:
        return self._state_dict


class _Capture:
    """Quacks like an ``nn.Module`` and keeps the state dict it is asked to load."""

    def __init__(self) -> None:
        self.captured: StateDict = {}

    def load_state_dict(self, state_dict: StateDict, *args: Any, **kwargs: Any) -> None:
        self.captured = state_dict


def remap_legacy_keys(spec: BackboneSpec, state_dict: Mapping[str, Tensor]) -> StateDict:
    """Rename the pre-0.4 DenseNet keys (``norm.1`` -> ``norm1``, ...) as torchvision does.

    torchvision's ImageNet DenseNet checkpoints still carry the old names; torchvision renames
    them in ``torchvision.models.densenet._load_state_dict``. That function is reused here (fed
    the state dict in memory and a stand-in model that keeps what it is given) rather than
    copying its pattern. Other families are returned as a shallow copy.

    Args:
        spec: The backbone's spec.
        state_dict: A torchvision-layout state dict.

    Returns:
        A new dict with current key names; the input is not modified.
    """
    if spec.family != "densenet":
        return dict(state_dict)
    capture = _Capture()
    _tv_densenet._load_state_dict(cast(nn.Module, capture), cast(WeightsEnum, _Preloaded(dict(state_dict))), False)
    return capture.captured


def strip_classifier(spec: BackboneSpec, state_dict: Mapping[str, Tensor]) -> StateDict:
    """Drop the ImageNet classifier's keys (``fc.*`` or ``classifier.*``) from a state dict."""
    prefix = spec.classifier + "."
    return {k: v for k, v in state_dict.items() if not k.startswith(prefix)}


def _examples(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (", ..." if len(keys) > limit else "")


def load_state_dict_exact(
    module: nn.Module, state_dict: Mapping[str, Tensor], *, where: str | os.PathLike[str], what: str, fix: str
) -> None:
    """Load ``state_dict`` strictly, turning any mismatch into a short :class:`WeightsError`.

    Args:
        module: The module to load into.
        state_dict: Keys and tensors that must match ``module.state_dict()`` exactly.
        where: The file or URI the weights came from (named in the error).
        what: What ``module`` is, for the message (e.g. ``"densenet121 backbone"``).
        fix: What the user should do on a mismatch.

    Raises:
        WeightsError: On missing or unexpected keys or a shape mismatch.
    """
    expected = module.state_dict()
    # BatchNorm fills in a missing ``num_batches_tracked`` itself (checkpoints older than
    # PyTorch 0.4.1, such as torchvision's DenseNet files, do not carry it).
    missing = [k for k in expected if k not in state_dict and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_examples(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_examples(unexpected)})")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches ({_examples(mismatched, 2)})")
    if problems:
        raise WeightsError(where, f"the weights do not fit the {what}: {'; '.join(problems)}", fix)
    module.load_state_dict(dict(state_dict), strict=True)


def _unavailable(spec: BackboneSpec, cause: str) -> ImageNetWeightsUnavailableError:
    folder = cache_dir()
    return ImageNetWeightsUnavailableError(
        folder / spec.weights_file,
        f"ImageNet weights for {spec.name} ({spec.weights_tag}) are not available: {cause}",
        f"place the file {spec.weights_file} in the folder {folder}: download {spec.weights_url} on a machine"
        f" with network access, then run `medvision weights import FILE --arch {spec.name}`;"
        " or set model.weights to none to train from scratch",
        arch=spec.name,
        cause=cause,
    )


def load_imagenet_state_dict(arch: str | BackboneSpec, *, progress: bool = True) -> StateDict:
    """The ImageNet state dict of ``arch``, from the torch hub cache or downloaded.

    Uses torchvision's weights API (``weights.get_state_dict(check_hash=True)``): a missing file
    is downloaded into the cache and its sha256 prefix checked. When the file is not cached and
    ``MEDVISION_OFFLINE=1`` is set, no download is attempted. DenseNet's legacy keys are
    renamed (see :func:`remap_legacy_keys`). The ImageNet classifier's keys are kept.

    Args:
        arch: A registered backbone name or its spec.
        progress: Show a download progress bar on stderr.

    Returns:
        The state dict in the current torchvision layout.

    Raises:
        ImageNetWeightsUnavailableError: If the file is not cached and cannot be downloaded.
        WeightsError: If the cached file cannot be read.
    """
    spec = arch if isinstance(arch, BackboneSpec) else get_spec(arch)
    folder = cache_dir()
    path = folder / spec.weights_file
    was_cached = path.is_file()
    if not was_cached and is_offline():
        raise _unavailable(spec, f"the file is not cached and {OFFLINE_ENV}=1 forbids a download")
    try:
        state = spec.weights.get_state_dict(
            progress=progress,
            check_hash=True,
            weights_only=True,
            model_dir=str(folder),
            file_name=spec.weights_file,
        )
    except Exception as exc:
        if not was_cached and isinstance(exc, (OSError, RuntimeError)):
            # urllib's URLError and HTTPError are OSErrors; a hash mismatch is a RuntimeError.
            raise _unavailable(spec, f"the file is not cached and the download failed ({exc})") from exc
        raise WeightsError(
            path,
            f"the cached ImageNet checkpoint for {spec.name} cannot be read ({type(exc).__name__}: {exc})",
            f"delete it and place a good copy with `medvision weights import FILE --arch {spec.name}`",
        ) from exc
    return remap_legacy_keys(spec, _as_state_dict(state, path))


def _as_state_dict(obj: Any, where: str | os.PathLike[str]) -> StateDict:
    """Unwrap ``{"state_dict": ...}``-style checkpoints and strip a DDP ``module.`` prefix."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and not all(isinstance(v, Tensor) for v in obj.values()):
                obj = inner
                break
    if (
        not isinstance(obj, Mapping)
        or not obj
        or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    ):
        raise WeightsError(
            where,
            "does not hold a state dict (a mapping of parameter names to tensors)",
            "save the weights with torch.save(model.state_dict(), path)",
        )
    state = dict(obj)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def load_checkpoint(path: str | os.PathLike[str]) -> StateDict:
    """Read a ``.pt``/``.pth`` state dict safely (``weights_only=True``) onto the CPU.

    Accepts a bare state dict or one wrapped as ``{"state_dict": ...}``, ``{"model": ...}`` or
    ``{"model_state_dict": ...}``; a ``module.`` prefix (DistributedDataParallel) is removed.

    Args:
        path: The checkpoint file.

    Returns:
        The state dict.

    Raises:
        WeightsError: If the file is missing, unreadable or holds no state dict.
    """
    file = Path(path)
    if not file.is_file():
        raise WeightsError(file, "no such checkpoint file", "check the path given as model.weights")
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(
            file,
            f"cannot be read as a PyTorch checkpoint ({type(exc).__name__}: {exc})",
            "give a file written by torch.save(model.state_dict(), path)",
        ) from exc
    return _as_state_dict(obj, file)


@dataclass(frozen=True)
class StateDictWeights:
    """Weights already in memory, with where they came from (``weights_source``).

    The models room never reaches MLflow: a ``models:/...`` or ``runs:/...`` URI is resolved to a state dict
    by the engine (:func:`medvision.engine.loop.resolve_weights`, through the tracking room's registry) and
    handed to :func:`~medvision.models.create_model` as one of these.
    """

    state: StateDict
    source: str


def import_weights(file: str | os.PathLike[str], arch: str) -> Path:
    """Check an ImageNet checkpoint and copy it into the torch hub cache under torchvision's name.

    The file's sha256 must start with the prefix that torchvision's file name carries, and its
    state dict must load strictly into the torchvision architecture (after DenseNet's key
    renaming). The copy is atomic: a temporary file in the cache folder, then ``os.replace``.

    Args:
        file: The downloaded checkpoint, under any name.
        arch: The registered backbone it belongs to, e.g. ``"densenet121"``.

    Returns:
        The path in the cache, ``cache_dir() / spec.weights_file``.

    Raises:
        ConfigError: If ``arch`` is not registered.
        WeightsError: If the file is missing, its hash does not match, or it does not fit.

    Example:
        >>> import_weights("densenet121-a639ec97.pth", "densenet121")  # doctest: +SKIP
        PosixPath('/root/.cache/torch/hub/checkpoints/densenet121-a639ec97.pth')
    """
    spec = get_spec(arch)
    source = Path(file)
    if not source.is_file():
        raise WeightsError(source, "no such file", f"give the path of the downloaded {spec.weights_file}")
    expected = spec.sha256_prefix.lower()
    actual = sha256_file(source)[: len(expected)]
    if actual != expected:
        raise WeightsError(
            source,
            f"sha256 prefix {actual} does not match the prefix {expected} of {spec.weights_file}"
            f" ({spec.name} ImageNet weights, {spec.weights_tag})",
            f"download {spec.weights_url} again; to use other weights (fine-tuned, another version)"
            " give the file as model.weights instead",
        )
    state = remap_legacy_keys(spec, load_checkpoint(source))
    model = spec.builder(weights=None, num_classes=spec.num_categories)
    load_state_dict_exact(
        model,
        state,
        where=source,
        what=f"torchvision {spec.name} architecture",
        fix=f"check that the file holds {spec.name} ImageNet weights",
    )
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    destination = folder / spec.weights_file
    fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.weights_file}.", suffix=".part", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out, length=1 << 20)
        os.replace(tmp_name, destination)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return destination
