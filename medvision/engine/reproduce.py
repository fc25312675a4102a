"""Repeat a logged run: ``medvision train --from-run RUN_ID [--set key=value ...]``.

Every run made by :func:`~medvision.engine.loop.train` (either task) carries its
resolved config (artifact ``config/resolved_config.yaml``). Repeating it downloads that config,
applies the overrides, and trains a *new* run tagged ``reproduces=<RUN_ID>``. With the same code,
data and seed on the CPU the new run's metrics are the same as the original's, number for number
(GPU kernels may differ in the last digits).

Which store. The run is looked up in ``tracking.uri`` when an override sets it, else in
``$MLFLOW_TRACKING_URI``, else in the embedded ``sqlite:///mlflow.db`` of the working folder; the
new run is logged to that same store unless an override says otherwise. Relative paths in the
config (``data.path``, ``train.output_dir``) are read from the working folder, as they were for
the original run (its ``working_dir`` tag says which folder that was).

Example:
    >>> result = reproduce_run("0123abcd...", ["train.output_dir=outputs/repeat"])  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import yaml

from medvision.config import ExperimentConfig, apply_overrides, parse_config
from medvision.engine.loop import TrainResult
from medvision.engine.tasks import task_class, train
from medvision.errors import ConfigError, TrackingError

__all__ = ["CONFIG_ARTIFACT", "REPRODUCES_TAG", "config_from_run", "reproduce_run"]

#: The artifact every run carries its resolved config in.
CONFIG_ARTIFACT = "config/resolved_config.yaml"
#: The tag a repeated run gets: the id of the run it repeats.
REPRODUCES_TAG = "reproduces"


def _overridden_uri(overrides: Sequence[str] | None) -> tuple[bool, Any]:
    """Whether the overrides set ``tracking.uri``, and to what (parsed as the config would parse it)."""
    tree = apply_overrides({}, [o for o in overrides or [] if o.split("=", 1)[0].strip() == "tracking.uri"])
    tracking = tree.get("tracking") or {}
    return "uri" in tracking, tracking.get("uri")


def _locate(run_id: str, overrides: Sequence[str] | None, tracking_uri: str | None) -> tuple[str, str]:
    """``(whole run id, store)``: the store the run is looked up in, and the run id of a unique prefix."""
    from medvision.tracking.review import resolve_run_id
    from medvision.tracking.store import require_existing_store

    run_id = run_id.strip()
    if not run_id:
        raise ConfigError("--from-run", "the run id is empty", "pass the id shown on the run's page in MLflow")
    _has_uri, override_uri = _overridden_uri(overrides)
    try:
        store = require_existing_store(tracking_uri or (str(override_uri) if override_uri else None))
    except TrackingError as exc:
        raise TrackingError(
            f"run {run_id}",
            f"{exc.reason}, where the run would be looked up",
            "point --tracking-uri (or --set tracking.uri=..., or $MLFLOW_TRACKING_URI) at the store the run was"
            " logged to",
        ) from None
    return resolve_run_id(store, run_id), store


def config_from_run(
    run_id: str, overrides: Sequence[str] | None = None, *, tracking_uri: str | None = None
) -> tuple[ExperimentConfig, str]:
    """The config of ``run_id`` with ``overrides`` applied, and the store the run was found in.

    Args:
        run_id: The run to repeat (or a unique prefix of its id).
        overrides: ``key.path=value`` overrides, as for ``--set``.
        tracking_uri: Where to look for the run (default: the ``tracking.uri`` override, else
            ``$MLFLOW_TRACKING_URI``, else the embedded store).

    Returns:
        ``(config, store_uri)``; the config's ``tracking.uri`` is that store unless overridden.

    Raises:
        TrackingError: If the store cannot be read, or has no such run or no config artifact.
        ConfigError: If the stored config (with the overrides) is not valid.
    """
    has_uri = _overridden_uri(overrides)[0]
    run_id, store = _locate(run_id, overrides, tracking_uri)
    from medvision.tracking.run import download_run_config

    text = download_run_config(store, run_id, CONFIG_ARTIFACT)
    source = f"run {run_id} {CONFIG_ARTIFACT}"
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(source, f"not valid YAML ({' '.join(str(exc).split())})", None) from None
    if not isinstance(tree, dict):
        raise ConfigError(source, "the stored config is not a YAML mapping", None)
    if not has_uri:
        tracking = tree.setdefault("tracking", {})
        if isinstance(tracking, dict):
            tracking["uri"] = store  # the repeat lands beside the run it repeats
    cfg = parse_config(tree, overrides=list(overrides or []), source=source)
    return cfg, store


def reproduce_run(
    run_id: str,
    overrides: Sequence[str] | None = None,
    *,
    tracking_uri: str | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train a new run with the config of ``run_id`` (and ``overrides``), tagged ``reproduces=<run_id>``.

    Args:
        run_id: The run to repeat (or a unique prefix of its id).
        overrides: ``key.path=value`` overrides applied to its config.
        tracking_uri: Where to look for the run (see :func:`config_from_run`).
        progress: Progress bars.

    Returns:
        The new run's :class:`~medvision.engine.loop.TrainResult`.

    Raises:
        TrackingError: If the run or its config cannot be read.
        ConfigError: If the config is not valid, or its task has no trainer.
    """
    run_id, store = _locate(run_id, overrides, tracking_uri)
    cfg, _store = config_from_run(run_id, overrides, tracking_uri=store)
    task_class(cfg.task, where=f"run {run_id} task")  # a task this version cannot train is refused here
    tags = {REPRODUCES_TAG: run_id.strip()}
    if overrides:
        tags["reproduces_overrides"] = json.dumps(list(overrides))
    return train(cfg, progress=progress, tags=tags)
