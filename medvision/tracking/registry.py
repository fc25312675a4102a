"""The model registry: log a classifier as an MLflow model, load it back, say where it came from.

How a model is stored. :func:`log_classifier` writes the model's state dict as one safetensors
file in a custom MLflow flavour, ``medvision`` (see :mod:`medvision.tracking.flavor`), and records
the architecture in the model's metadata (``medvision_architecture``: for a Classifier backbone,
in_channels, num_classes, first_conv, drop_rate; for a SliceDetector the keyword arguments of
``create_detector``). Loading reads nothing but that file (:func:`safetensors.torch.load_file`),
checks it against the sha256 recorded in ``MLmodel``, rebuilds the Classifier or SliceDetector
from the metadata and loads the weights strictly.

Why safetensors. MLflow's pytorch flavour stored a pickle (``serialization_format="pickle"``,
opened with ``torch.load(..., weights_only=False)``) or a ``torch.export`` graph. Opening a
pickle runs whatever code it names, so whoever could register a model version could run code on
every machine that loaded it; a safetensors file is tensors and a JSON header, nothing runs. The
``torch.export`` graph was safe but came back as a ``torch.fx.GraphModule`` (no ``feature_layer``
for Grad-CAM) and could not hold the detector, which was pickled. Registering is also faster (no
tracing), and MLflow's warning about pickled models at registration is gone. A version in the old
format (an ``MLmodel`` with the ``pytorch`` flavour) is refused with a
:class:`~medvision.errors.ModelFormatError` that says to register it again, before any of its
files is downloaded. Only a medvision Classifier or SliceDetector can be logged.

Which store. These functions use MLflow's global tracking URI (set by
:class:`~medvision.tracking.run.RunTracker`). When none is set, or ``tracking_uri`` is given,
they first set it to :func:`~medvision.tracking.store.resolve_tracking_uri` of that value, so a
fresh process finds the same embedded store as ``medvision train``.

Example:
    >>> with RunTracker(uri, "pneumonia") as run:  # doctest: +SKIP
    ...     info = log_classifier(model, input_example=np.zeros((1, 1, 224, 224), np.float32),
    ...                           metadata=metadata, registered_name="pneumonia-classifier")
    >>> model, metadata = load_classifier("models:/pneumonia-classifier@candidate")  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
import logging
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medvision.errors import ModelFormatError, TrackingError
from medvision.tracking._errors import _available, _first_line, _mlflow_errors, _not_found
from medvision.tracking.flavor import ARCHITECTURE_KEY, REGISTER_AGAIN, _rebuild
from medvision.tracking.review import resolve_run_id
from medvision.tracking.store import redact_uri, require_existing_store

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch
    from mlflow import MlflowClient

    from medvision.tracking.phi import PhiGuard

__all__ = [
    "ARCHITECTURE_KEY",
    "DEFAULT_ALIASES",
    "MODEL_NAME",
    "load_classifier",
    "load_model_with_metadata",
    "load_state_dict_from_uri",
    "log_classifier",
    "model_provenance",
    "parse_model_uri",
    "resolve_model_uri",
]

logger = logging.getLogger(__name__)

#: The artifact name of the model inside its run (``runs:/<run_id>/model``).
MODEL_NAME = "model"
#: Aliases :func:`resolve_model_uri` tries, in order.
DEFAULT_ALIASES = ("champion", "candidate")

_TRAIN_FIX = "train and register a model first (`medvision train` with tracking.register_as set)"
_READY = "READY"


# ---------------------------------------------------------------------------------------------- helpers


def _use_store(tracking_uri: str | None) -> str:
    """Point MLflow at ``tracking_uri`` (or at medvision's default when nothing is set); return it.

    Only reading calls use this, so a local store that does not exist is refused before MLflow would
    create it (:func:`~medvision.tracking.store.require_existing_store`).
    """
    import mlflow

    if tracking_uri or not mlflow.is_tracking_uri_set():
        store = require_existing_store(tracking_uri)
        mlflow.set_tracking_uri(store)
        return store
    return require_existing_store(str(mlflow.get_tracking_uri()))


def _client() -> MlflowClient:
    from mlflow import MlflowClient

    return MlflowClient()


def parse_model_uri(uri: str) -> dict[str, str | None]:
    """Split a model URI into its parts.

    Args:
        uri: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` (or ``/latest``), ``models:/m-<id>``
            (an MLflow 3 logged-model id), ``runs:/RUN_ID/PATH``, or anything else (a path).

    Returns:
        ``{"kind", "name", "alias", "version", "run_id", "path", "model_id"}``; ``kind`` is
        ``"alias"``, ``"version"``, ``"latest"``, ``"stage"``, ``"model_id"``, ``"run"`` or ``"other"``.

    Example:
        >>> parse_model_uri("models:/pneumonia@champion")["alias"]
        'champion'
        >>> parse_model_uri("runs:/0123abcd/model")["run_id"]
        '0123abcd'
    """
    parts: dict[str, str | None] = dict.fromkeys(("kind", "name", "alias", "version", "run_id", "path", "model_id"))
    parts["kind"] = "other"
    if uri.startswith("models:/"):
        rest = uri[len("models:/") :].strip("/")
        if "@" in rest:
            name, alias = rest.rsplit("@", 1)
            parts.update(kind="alias", name=name, alias=alias)
        elif "/" in rest:
            name, version = rest.rsplit("/", 1)
            if version.isdigit():
                parts.update(kind="version", name=name, version=version)
            elif version.lower() == "latest":
                parts.update(kind="latest", name=name)
            else:
                parts.update(kind="stage", name=name, alias=version)
        else:
            parts.update(kind="model_id", model_id=rest)
    elif uri.startswith("runs:/"):
        rest = uri[len("runs:/") :].strip("/")
        run_id, _, path = rest.partition("/")
        parts.update(kind="run", run_id=run_id, path=path or MODEL_NAME)
    return parts


def _missing_model(client: MlflowClient, uri: str, name: str, store: str) -> TrackingError:
    try:
        others = [m.name for m in client.search_registered_models(max_results=10)]
    except Exception:  # only decorates an error message
        others = []
    known = f" (registered models: {', '.join(others)})" if others else " (no models are registered there)"
    return TrackingError(
        uri, f"there is no registered model {name!r} in the tracking store {redact_uri(store)}{known}", _TRAIN_FIX
    )


def _registered_exists(client: MlflowClient, name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if _not_found(exc):
            return False
        raise
    return True


def _version_for(client: MlflowClient, uri: str, store: str) -> Any:
    """The :class:`ModelVersion` a ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` URI names."""
    from mlflow.exceptions import MlflowException

    parts = parse_model_uri(uri)
    name = str(parts["name"])
    with _mlflow_errors(uri, "look up the registered model"):
        if not _registered_exists(client, name):
            raise _missing_model(client, uri, name, store)
        try:
            if parts["kind"] == "alias":
                return client.get_model_version_by_alias(name, str(parts["alias"]))
            if parts["kind"] == "version":
                return client.get_model_version(name, str(parts["version"]))
            versions = client.search_model_versions(f"name='{name}'")
            if not versions:
                raise TrackingError(uri, f"the registered model {name!r} has no versions", _TRAIN_FIX)
            return max(versions, key=lambda v: int(v.version))
        except MlflowException as exc:
            if not _not_found(exc) and getattr(exc, "error_code", "") != "INVALID_PARAMETER_VALUE":
                raise
            what = f"alias {parts['alias']!r}" if parts["kind"] == "alias" else f"version {parts['version']}"
            available = _available(client, name)
            if parts["kind"] == "alias":
                fix = (
                    f"use one of the aliases or versions listed, or promote a version to {parts['alias']!r}"
                    f" (MlflowClient().set_registered_model_alias({name!r}, {parts['alias']!r}, VERSION))"
                )
            else:
                fix = "use one of the aliases or versions listed"
            raise TrackingError(
                uri, f"the registered model {name!r} has no {what}" + (f" ({available})" if available else ""), fix
            ) from exc


def _pinned(uri: str, store: str) -> tuple[str, Any]:
    """``(uri, version)``: a registry alias or ``latest`` resolved once to ``models:/NAME/VERSION``.

    Resolving first means the metadata and the weights come from the same version even if the
    alias moves in between. A ``runs:/PREFIX/path`` gets its whole run id; other URIs come back
    unchanged. ``version`` is ``None`` but for registry URIs.
    """
    parts = parse_model_uri(uri)
    if parts["kind"] in ("alias", "version", "latest"):
        version = _version_for(_client(), uri, store)
        return f"models:/{version.name}/{version.version}", version
    if parts["kind"] == "run" and parts["run_id"] and len(str(parts["run_id"])) < 32:  # MLflow's ids: 32 digits

        run_id = resolve_run_id(store, str(parts["run_id"]))  # a unique prefix names its run
        if run_id != parts["run_id"]:
            return f"runs:/{run_id}/{parts['path']}", None
    return uri, None


def _unwrap(model: Any) -> Any:
    """The plain module inside DistributedDataParallel / DataParallel / ``torch.compile``."""
    for _ in range(4):
        wrapper = type(model).__name__ in ("DistributedDataParallel", "DataParallel")
        inner = getattr(model, "_orig_mod", None) or (getattr(model, "module", None) if wrapper else None)
        if inner is None:
            return model
        model = inner
    return model


def _architecture(model: Any) -> dict[str, Any] | None:
    """How to rebuild a medvision Classifier or SliceDetector (``None`` for other modules)."""
    from medvision.models.classifier import Classifier
    from medvision.models.detector import SliceDetector

    if isinstance(model, SliceDetector):
        return dict(model.architecture)
    if not isinstance(model, Classifier):
        return None
    return {
        "class": "medvision.models.Classifier",
        "backbone": model.spec.name,
        "in_channels": int(model.in_channels),
        "num_classes": int(model.num_classes),
        "first_conv": "replicate" if model.repeat_input else "sum",
        "drop_rate": float(model.drop_rate),
    }


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "model_dump"):
        return value.model_dump()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _plain_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """``metadata`` as plain JSON types (tuples become lists), as MLflow's YAML can store them."""
    try:
        return json.loads(json.dumps(dict(metadata), default=_json_default))
    except (TypeError, ValueError) as exc:
        raise TrackingError(
            "metadata", f"is not JSON-serialisable ({exc})", "pass strings, numbers, lists and dicts"
        ) from exc


def _wait_ready(client: MlflowClient, name: str, version: str, timeout_s: float) -> None:
    deadline = time.monotonic() + max(timeout_s, 0.0)
    while True:
        current = client.get_model_version(name, version)
        status = str(current.status)
        if status == _READY:
            return
        if status == "FAILED_REGISTRATION":
            raise TrackingError(
                f"models:/{name}/{version}",
                f"registration failed ({current.status_message or 'no message'})",
                "check the tracking server's log and log the model again",
            )
        if time.monotonic() >= deadline:
            raise TrackingError(
                f"models:/{name}/{version}",
                f"the model version is still {status} after {timeout_s:.0f} s",
                "check the tracking server, then set the alias by hand once it is READY",
            )
        time.sleep(0.5)


# ---------------------------------------------------------------------------------------------- logging


def log_classifier(
    model: torch.nn.Module,
    *,
    input_example: np.ndarray,
    metadata: Mapping[str, Any],
    registered_name: str,
    alias: str = "candidate",
    pip_requirements: Sequence[str] | None = None,
    phi_guard: PhiGuard | None = None,
    await_ready_s: float = 300.0,
) -> dict[str, Any]:
    """Log ``model`` in the active run, register it as a new version of ``registered_name``, alias it.

    The model is logged as ``model`` in the run, in the ``medvision`` flavour (its weights as
    ``model.safetensors``, see the module notes), with a signature inferred from ``input_example``
    and the model's output on it, and with ``metadata`` plus ``medvision_architecture``. The new
    version gets the alias (default ``candidate``; a reviewer promotes one to ``champion``) and the
    tags ``run_id``, ``intended_use`` and ``weights_source`` (from ``metadata``, ``"not recorded"``
    when absent).

    The input example is stored with the model: pass a synthetic array of the right shape
    (zeros), not a patient's image.

    Args:
        model: The trained medvision Classifier or SliceDetector (also wrapped in
            DistributedDataParallel or ``torch.compile``). It is run once in eval mode on the
            CPU for the signature; its training mode is restored afterwards.
        input_example: One input batch, e.g. ``np.zeros((1, 1, 224, 224), np.float32)``.
        metadata: JSON-able facts the model needs at inference time and in reports (backbone,
            in_channels, image_size, keep_aspect, mean, std, temperature, threshold,
            operating_point, intended_use, weights_source, medvision_version, task).
        registered_name: The registered model's name (``tracking.register_as``).
        alias: The alias the new version gets.
        pip_requirements: The model's requirements for serving; default: the installed torch,
            safetensors and medvision. Given explicitly so that MLflow does not infer them (slow).
        phi_guard: Refuse metadata or a name that contains a patient identifier.
        await_ready_s: How long to wait for the version to become READY.

    Returns:
        ``{"name", "version", "model_uri", "alias", "alias_uri", "run_id", "model_id"}``;
        ``model_uri`` is ``models:/NAME/VERSION``, ``version`` an int.

    Raises:
        TrackingError: Without an active run, for a module that is not a medvision Classifier or
            SliceDetector, on a patient identifier, or when MLflow refuses.
    """
    import mlflow
    import numpy as np
    import torch
    from mlflow.models import Model, infer_signature

    from medvision.tracking import flavor

    run = mlflow.active_run()
    if run is None:
        raise TrackingError(
            "log_classifier", "there is no active MLflow run", "log the model inside `with RunTracker(...) as run:`"
        )
    run_id = run.info.run_id
    module = _unwrap(model)
    if not isinstance(module, torch.nn.Module):
        raise TrackingError("log_classifier", f"expected a torch.nn.Module, got {type(model).__name__}", None)
    architecture = _architecture(module)
    if architecture is None:
        raise TrackingError(
            "log_classifier",
            f"cannot store a {type(module).__name__}: medvision stores a model's weights (safetensors) and rebuilds"
            " its architecture from the metadata, which it can do for a medvision Classifier or SliceDetector only",
            "build the model with medvision.models.create_model or medvision.models.detector.create_detector",
        )
    plain = _plain_metadata(metadata)
    plain[ARCHITECTURE_KEY] = architecture  # what the stored weights fit, whatever the caller's metadata says
    if phi_guard is not None:
        phi_guard.check(registered_name, "tracking.register_as", what="the model name")
        phi_guard.check(json.dumps(plain, ensure_ascii=False), f"models:/{registered_name} metadata")

    example = np.asarray(input_example)
    if example.dtype.kind == "f" and example.dtype != np.float32:
        example = example.astype(np.float32)

    on_cpu = all(t.device.type == "cpu" for t in [*module.parameters(), *module.buffers()])
    target = module if on_cpu else copy.deepcopy(module).cpu()
    was_training = target.training
    target.eval()
    try:
        with torch.no_grad():
            output = target(torch.from_numpy(example))
        if isinstance(output, tuple | list):
            output = output[0]
        signature = infer_signature(example, output.detach().cpu().numpy())
        with _mlflow_errors(f"models:/{registered_name}", "log and register the model"):
            info = Model.log(
                artifact_path=None,
                name=MODEL_NAME,
                flavor=flavor,
                flavor_name=flavor.FLAVOR_NAME,
                registered_model_name=registered_name,
                await_registration_for=int(await_ready_s),
                metadata=plain,
                medvision_model=target,
                signature=signature,
                input_example=example,
                pip_requirements=pip_requirements,
            )
    finally:
        target.train(was_training)

    version = str(info.registered_model_version)
    client = _client()
    with _mlflow_errors(f"models:/{registered_name}/{version}", "alias and tag the model version"):
        _wait_ready(client, registered_name, version, await_ready_s)
        client.set_registered_model_alias(registered_name, alias, version)
        tags = {
            "run_id": run_id,
            "intended_use": str(plain.get("intended_use") or "not recorded"),
            "weights_source": str(plain.get("weights_source") or "not recorded"),
        }
        for key, value in tags.items():
            client.set_model_version_tag(registered_name, version, key, value)
    logger.info("Registered %s version %s (alias %s) from run %s", registered_name, version, alias, run_id)
    return {
        "name": registered_name,
        "version": int(version),
        "model_uri": f"models:/{registered_name}/{version}",
        "alias": alias,
        "alias_uri": f"models:/{registered_name}@{alias}",
        "run_id": run_id,
        "model_id": getattr(info, "model_id", None),
    }


# ---------------------------------------------------------------------------------------------- loading


def _load_error(uri: str, store: str, exc: BaseException) -> TrackingError:
    """A TrackingError for an MLflow or file error while reading the model ``uri``."""
    if isinstance(exc, OSError):
        return TrackingError(uri, f"the model cannot be loaded: {type(exc).__name__}: {exc}", _TRAIN_FIX)
    parts = parse_model_uri(uri)
    if parts["kind"] == "run":
        reason = f"run {parts['run_id']} has no model {parts['path']!r} in {redact_uri(store)} ({_first_line(exc)})"
        return TrackingError(uri, reason, f"check the run id and path, or {_TRAIN_FIX}")
    return TrackingError(uri, f"the model cannot be loaded: {_first_line(exc)}", _TRAIN_FIX)


def _load(uri: str, tracking_uri: str | None) -> tuple[torch.nn.Module, dict[str, Any], str]:
    """``(module, metadata, pinned_uri)``.

    Reads the ``MLmodel`` first and refuses anything but the ``medvision`` flavour before a file is
    downloaded; then downloads the weights file alone, checks its sha256, reads it with safetensors
    and rebuilds the architecture from the metadata. Nothing is unpickled.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.models import get_model_info
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    from medvision.tracking.flavor import flavor_conf, read_weights

    store = _use_store(tracking_uri)
    pinned, _version = _pinned(uri, store)
    where = uri if pinned == uri else f"{uri} ({pinned})"
    try:
        info = get_model_info(pinned)
    except (MlflowException, OSError) as exc:
        raise _load_error(uri, store, exc) from exc
    conf = flavor_conf(info.flavors, where)
    metadata = dict(info.metadata or {})
    architecture = metadata.get(ARCHITECTURE_KEY)
    if not isinstance(architecture, Mapping) or not architecture.get("backbone"):
        raise ModelFormatError(where, f"its metadata has no {ARCHITECTURE_KEY} to rebuild the model", REGISTER_AGAIN)
    try:
        with tempfile.TemporaryDirectory(prefix="medvision-model-") as folder:
            # The weights file alone, through the repository of the model's root (works for models:/NAME/VERSION,
            # models:/m-ID and runs:/ID/model alike).
            local = get_artifact_repository(pinned).download_artifacts(str(conf["weights"]), dst_path=folder)
            state = read_weights(Path(local), conf, where)
    except (MlflowException, OSError) as exc:
        raise _load_error(uri, store, exc) from exc
    return _rebuild(architecture, state, pinned), metadata, pinned


def load_model_with_metadata(
    uri: str, *, tracking_uri: str | None = None
) -> tuple[torch.nn.Module, dict[str, Any], str]:
    """``(module, metadata, pinned_uri)``: like :func:`load_classifier`, for any medvision model, with the
    version the alias pointed to (``models:/NAME/VERSION``)."""
    return _load(uri, tracking_uri)


def load_classifier(uri: str, *, tracking_uri: str | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Load a logged model on the CPU, in eval mode, with its metadata.

    An alias is resolved to its version once, so the weights and the metadata belong together.
    Only the model's safetensors file is read (after its sha256 is checked); the Classifier or
    SliceDetector is rebuilt from ``medvision_architecture`` (see the module notes) and its
    ``weights_source`` becomes ``mlflow:<uri>``.

    Args:
        uri: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``models:/NAME/latest`` or
            ``runs:/RUN_ID/model``.
        tracking_uri: The store to read (default: MLflow's current one, else medvision's default).

    Returns:
        ``(module, metadata)``.

    Raises:
        TrackingError: If the model, alias, version or run does not exist (the message lists the
            aliases and versions there are), or cannot be loaded.
        ModelFormatError: (a TrackingError) If the version was registered in the old format
            (MLflow's pytorch flavour: pickle or ``torch.export``), is not a medvision model, or its
            weights file fails its sha256 or is not safetensors. Nothing of it is unpickled.
        WeightsError: If the stored weights do not fit the recorded architecture.
    """
    module, metadata, _ = _load(uri, tracking_uri)
    return module, metadata


def load_state_dict_from_uri(uri: str) -> dict[str, torch.Tensor]:
    """The state dict of a logged model, for ``model.weights: models:/...`` in a config.

    Args:
        uri: A model URI, as for :func:`load_classifier`.

    Returns:
        Parameter and buffer names to CPU tensors (detached copies).

    Raises:
        TrackingError: As :func:`load_classifier`.
    """
    module, _ = load_classifier(uri)
    return {key: value.detach().clone() for key, value in module.state_dict().items()}


def resolve_model_uri(name: str, aliases: Sequence[str] = DEFAULT_ALIASES, *, tracking_uri: str | None = None) -> str:
    """``models:/NAME@ALIAS`` for the first of ``aliases`` that the registered model has.

    A value that already is a model URI (``models:/...``, ``runs:/...``) is returned unchanged.

    Args:
        name: The registered model's name.
        aliases: Aliases to try, in order (default ``champion``, then ``candidate``).
        tracking_uri: The store to read (default: MLflow's current one, else medvision's default).

    Returns:
        The URI.

    Raises:
        TrackingError: If the model does not exist or has none of the aliases.
    """
    if name.startswith(("models:/", "runs:/")):
        return name
    store = _use_store(tracking_uri)
    client = _client()
    with _mlflow_errors(name, "look up the registered model"):
        if not _registered_exists(client, name):
            raise _missing_model(client, f"models:/{name}", name, store)
        present = dict(client.get_registered_model(name).aliases or {})
    for alias in aliases:
        if alias in present:
            return f"models:/{name}@{alias}"
    available = _available(client, name)
    raise TrackingError(
        f"models:/{name}",
        f"the registered model has none of the aliases {', '.join(aliases)}" + (f" ({available})" if available else ""),
        f"give a version (models:/{name}/VERSION) or promote one"
        f" (MlflowClient().set_registered_model_alias({name!r}, {aliases[0]!r}, VERSION))"
        if aliases
        else _TRAIN_FIX,
    )


def model_provenance(uri: str, *, tracking_uri: str | None = None) -> dict[str, Any]:
    """Where a model came from, for reports.

    Args:
        uri: A model URI, as for :func:`load_classifier`.
        tracking_uri: The store to read.

    Returns:
        ``{"name", "version", "alias", "aliases", "run_id", "uri", "model_uri", "source",
        "tracking_uri"}``: ``uri`` is what was asked for, ``model_uri`` the pinned
        ``models:/NAME/VERSION`` (or ``uri``), ``source`` where MLflow stores the version's files,
        ``aliases`` every alias the version has now. Unknown fields are ``None``.

    Raises:
        TrackingError: If the model, alias or version does not exist.
    """
    store = _use_store(tracking_uri)
    parts = parse_model_uri(uri)
    if parts["kind"] == "run":
        parts = parse_model_uri(_pinned(uri, store)[0])  # the whole run id of a prefix
    info: dict[str, Any] = {
        "name": parts["name"],
        "version": None,
        "alias": parts["alias"] if parts["kind"] == "alias" else None,
        "aliases": [],
        "run_id": parts["run_id"],
        "uri": uri,
        "model_uri": uri,
        "source": None,
        "tracking_uri": redact_uri(store),
    }
    version = None
    if parts["kind"] in ("alias", "version", "latest"):
        _, version = _pinned(uri, store)
    elif parts["kind"] == "run" and parts["run_id"]:
        with _mlflow_errors(uri, "look up the model versions of the run"):
            found = _client().search_model_versions(f"run_id='{parts['run_id']}'")
        if len(found) == 1:
            version = found[0]
    if version is not None:
        info.update(
            name=version.name,
            version=int(version.version),
            aliases=sorted(getattr(version, "aliases", []) or []),
            run_id=version.run_id or info["run_id"],
            model_uri=f"models:/{version.name}/{version.version}",
            source=version.source,
        )
    return info
