"""One MLflow run: start or resume it, log params, metrics, tags and artifacts, end it.

:class:`RunTracker` wraps the run as a context manager. It logs through an
:class:`mlflow.MlflowClient` bound to the tracking URI it was given (batched, within MLflow's
limits), and also makes the run MLflow's *active* run, so that fluent calls made inside it
(:func:`medvision.tracking.models.log_classifier` uses ``mlflow.pytorch.log_model``) attach to it.

With a :class:`~medvision.tracking.phi.PhiGuard`, every string on its way to MLflow is checked
first: param names and values, tag names and values, metric names, text and dict artifacts, and
files whose type can carry text (CSV, JSON, YAML, Markdown, HTML, DICOM...). A hit raises a
:class:`~medvision.errors.TrackingError` before anything of that call is logged.

Example:
    >>> with RunTracker("sqlite:////tmp/medvision-doc/mlflow.db", "doc") as run:  # doctest: +SKIP
    ...     run.log_params(flatten_config({"train": {"lr": 1e-4, "epochs": 10}}))
    ...     run.log_metrics({"train_loss": 0.7}, step=0)
"""

from __future__ import annotations

import json
import logging
import numbers
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from medvision.errors import TrackingError
from medvision.tracking.phi import PhiGuard
from medvision.tracking.store import artifact_location_for, redact_uri

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient

__all__ = [
    "DICOM_ARTIFACT_SUFFIXES",
    "MAX_ENTITY_KEY_LENGTH",
    "MAX_METRICS_PER_BATCH",
    "MAX_PARAMS_TAGS_PER_BATCH",
    "MAX_PARAM_VAL_LENGTH",
    "MAX_TAG_VAL_LENGTH",
    "RESUMED_PREFIX",
    "TEXT_ARTIFACT_SUFFIXES",
    "RunTracker",
    "flatten_config",
    "stringify",
]

logger = logging.getLogger(__name__)

# MLflow's limits (mlflow/utils/validation.py, MLflow 3.17); copied so that importing this module
# does not import MLflow.
MAX_PARAM_VAL_LENGTH = 6000
MAX_TAG_VAL_LENGTH = 8000
MAX_ENTITY_KEY_LENGTH = 250
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000

#: Where a changed parameter goes when a resumed run is told to keep both values.
RESUMED_PREFIX = "resumed."

#: Artifact files that the PHI guard reads as text.
TEXT_ARTIFACT_SUFFIXES = frozenset({
    ".csv", ".tsv", ".json", ".jsonl", ".yaml", ".yml", ".md", ".txt", ".log", ".html", ".htm", ".xml",
    ".svg", ".ini", ".cfg", ".toml", ".tex", ".rst",
})
#: Binary artifacts that carry identifiers in their headers; the guard searches their bytes.
DICOM_ARTIFACT_SUFFIXES = frozenset({".dcm", ".dicom"})

_TRUNCATION_MARK = "...[truncated]"

OnConflict = Literal["raise", "prefix"]
_STATUS_FINISHED = "FINISHED"
_STATUS_FAILED = "FAILED"
_STATUS_KILLED = "KILLED"


def stringify(value: Any) -> str:
    """A parameter value as MLflow will show it.

    Strings as they are; ``None``, booleans, lists, tuples and dicts as JSON (``null``, ``true``,
    ``[224, 224]``) so that they read as in the YAML config; everything else with ``str``.
    """
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, Mapping | list | tuple | set | frozenset):
        if isinstance(value, set | frozenset):
            value = sorted(value, key=str)
        return json.dumps(value, default=_json_default, ensure_ascii=False)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def _json_default(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def flatten_config(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten a nested config into dotted keys with string values, ready for :meth:`RunTracker.log_params`.

    Nested mappings (and pydantic models) become dotted keys; lists and other leaves go through
    :func:`stringify`. An empty mapping is kept as ``"{}"``.

    Args:
        d: The (resolved) config.
        prefix: Prepended to every key (``"cfg."`` gives ``cfg.data.split.val``).

    Returns:
        ``{"data.split.val": "0.15", "data.image_size": "224", "model.in_channels": "1", ...}``.

    Example:
        >>> flatten_config({"data": {"split": {"val": 0.15, "by": "patient"}, "size": [224, 224]}})
        {'data.split.val': '0.15', 'data.split.by': 'patient', 'data.size': '[224, 224]'}
    """
    if hasattr(d, "model_dump") and not isinstance(d, Mapping):
        d = d.model_dump()
    out: dict[str, str] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if hasattr(value, "model_dump") and not isinstance(value, Mapping):
            value = value.model_dump()
        if isinstance(value, Mapping) and value:
            out.update(flatten_config(value, prefix=f"{name}."))
        else:
            out[name] = stringify(value)
    return out


def _truncate(value: str, limit: int) -> str:
    if len(value) <= limit:
        return value
    return value[: limit - len(_TRUNCATION_MARK)] + _TRUNCATION_MARK


def _as_number(value: Any) -> float | None:
    """``value`` as a float if it is a real number (NaN and infinities included), else ``None``.

    Booleans are not numbers here (as in :func:`medvision.metrics.scalar_metrics`). Zero-dimensional
    arrays and one-element tensors are unwrapped with ``.item()``.
    """
    if isinstance(value, bool):
        return None
    if not isinstance(value, numbers.Real):
        item = getattr(value, "item", None)
        if not callable(item):
            return None
        try:
            value = item()
        except (TypeError, ValueError, RuntimeError):  # arrays/tensors with more than one element
            return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value)


def _short(value: str, limit: int = 80) -> str:
    return value if len(value) <= limit else value[: limit - 3] + "..."


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@contextmanager
def _mlflow_errors(where: str, action: str, fix: str | None = None) -> Iterator[None]:
    """Turn an MLflow (or connection) failure into a :class:`TrackingError`."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except TrackingError:
        raise
    except MlflowException as exc:
        lines = str(getattr(exc, "message", None) or exc).strip().splitlines()
        detail = lines[0] if lines else type(exc).__name__
        raise TrackingError(where, f"MLflow refused to {action}: {_short(detail, 300)}", fix) from exc
    except OSError as exc:
        raise TrackingError(where, f"could not {action}: {type(exc).__name__}: {exc}", fix) from exc


class RunTracker:
    """One MLflow run, as a context manager.

    ``__enter__`` starts (or resumes) the run; ``__exit__`` ends it ``FINISHED``, or ``FAILED``
    when an exception escapes the block, or ``KILLED`` on ``KeyboardInterrupt``.

    Args:
        uri: The tracking URI (resolved and checked by :mod:`medvision.tracking.store`).
        experiment: The experiment name; created when missing (an embedded SQLite store keeps
            its artifacts in ``mlartifacts/<experiment>`` beside the database).
        run_name: The run's display name (new runs only).
        run_id: Resume this run instead of starting a new one (``--resume`` after a crash).
        tags: Tags set when the run starts (also on resume).
        phi_guard: Refuse strings that contain a patient identifier.

    Attributes:
        uri: The tracking URI.
        experiment: The experiment name.
        run_id: The run id (``None`` until started).
        experiment_id: The experiment id (``None`` until started).
        resumed: Whether :meth:`start` resumed an existing run.
        phi_guard: The guard, or ``None``.

    Example:
        >>> with RunTracker(uri, "pneumonia", run_name="densenet121-demo") as run:  # doctest: +SKIP
        ...     run.set_tags({"weights_source": model.weights_source})
        ...     for epoch in range(epochs):
        ...         run.log_metrics({"train_loss": loss, "val_auroc": auroc}, step=epoch)
    """

    def __init__(
        self,
        uri: str,
        experiment: str,
        *,
        run_name: str | None = None,
        run_id: str | None = None,
        tags: Mapping[str, Any] | None = None,
        phi_guard: PhiGuard | None = None,
    ) -> None:
        self.uri = uri
        self.experiment = experiment
        self.run_name = run_name
        self.run_id: str | None = run_id
        self.experiment_id: str | None = None
        self.resumed = False
        self.phi_guard = phi_guard
        self._tags = dict(tags or {})
        self._client: MlflowClient | None = None
        self._started = False
        self._ended = False

    # ------------------------------------------------------------------ lifecycle

    @property
    def client(self) -> MlflowClient:
        """The :class:`mlflow.MlflowClient` bound to :attr:`uri`."""
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        return self._client

    @property
    def active(self) -> bool:
        """Whether the run has been started and not yet ended."""
        return self._started and not self._ended

    @property
    def artifact_uri(self) -> str:
        """The root URI of the run's artifacts."""
        return str(self.client.get_run(self._require_run()).info.artifact_uri)

    def _where(self) -> str:
        return f"tracking.uri ({redact_uri(self.uri)})"

    def _require_run(self) -> str:
        if not self.active or self.run_id is None:
            raise TrackingError(
                f"run {self.run_id or '(not started)'}",
                "the run is not active",
                "log inside `with RunTracker(...) as run:` (or call start() first)",
            )
        return self.run_id

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        client = self.client
        with _mlflow_errors(self._where(), f"look up or create the experiment {self.experiment!r}"):
            found = client.get_experiment_by_name(self.experiment)
            if found is None:
                location = artifact_location_for(self.uri, self.experiment)
                try:
                    return str(client.create_experiment(self.experiment, artifact_location=location))
                except MlflowException as exc:
                    # Another process created it in the meantime.
                    found = client.get_experiment_by_name(self.experiment)
                    if found is None:
                        raise exc from None
        if found.lifecycle_stage != "active":
            raise TrackingError(
                "experiment",
                f"the experiment {self.experiment!r} is deleted in {redact_uri(self.uri)}",
                f"restore it (mlflow experiments restore --experiment-id {found.experiment_id})"
                " or choose another experiment name",
            )
        return str(found.experiment_id)

    def start(self) -> str:
        """Start the run (or resume :attr:`run_id`) and make it MLflow's active run.

        Sets MLflow's global tracking URI to :attr:`uri` (``mlflow.set_tracking_uri``, which
        also sets ``MLFLOW_TRACKING_URI`` for subprocesses).

        Returns:
            The run id.

        Raises:
            TrackingError: If the store refuses, the run to resume does not exist, another run
                is already active in this process, or a name contains a patient identifier.
        """
        if self.active:
            assert self.run_id is not None
            return self.run_id
        if self._ended:
            raise TrackingError(f"run {self.run_id}", "this tracker's run has already ended", "create a new RunTracker")
        import mlflow

        if self.phi_guard is not None:
            self.phi_guard.check(self.experiment, "experiment", what="the experiment name")
            if self.run_name:
                self.phi_guard.check(self.run_name, "run_name", what="the run name")
        tags = self._checked_tags(self._tags)
        active = mlflow.active_run()
        if active is not None:
            raise TrackingError(
                f"run {active.info.run_id}",
                "another MLflow run is already active in this process",
                "end it (mlflow.end_run()) before starting a new one",
            )
        mlflow.set_tracking_uri(self.uri)
        if self.run_id is not None:
            self._resume(mlflow, tags)
        else:
            experiment_id = self._experiment_id()
            with _mlflow_errors(self._where(), "start a run"):
                run = mlflow.start_run(experiment_id=experiment_id, run_name=self.run_name, tags=tags or None)
            self.run_id = run.info.run_id
            self.experiment_id = experiment_id
        self._started = True
        logger.info("MLflow run %s (%s) in %s", self.run_id, "resumed" if self.resumed else "new", self.uri)
        assert self.run_id is not None
        return self.run_id

    def _resume(self, mlflow: Any, tags: dict[str, str]) -> None:
        from mlflow.exceptions import MlflowException

        run_id = self.run_id
        assert run_id is not None
        try:
            existing = self.client.get_run(run_id)
        except MlflowException as exc:
            raise TrackingError(
                f"run {run_id}",
                f"there is no run with this id in the tracking store {redact_uri(self.uri)}",
                "check the id given to --resume (the run page in MLflow shows it), and that tracking.uri"
                " is the store the run was logged to",
            ) from exc
        if existing.info.lifecycle_stage != "active":
            raise TrackingError(
                f"run {run_id}", "the run is deleted", "restore it in MLflow or start a new run without --resume"
            )
        experiment = self.client.get_experiment(existing.info.experiment_id)
        if experiment is not None and experiment.name != self.experiment:
            logger.warning(
                "Resuming run %s of experiment %r (configured experiment: %r)", run_id, experiment.name, self.experiment
            )
        with _mlflow_errors(f"run {run_id}", "resume the run"):
            mlflow.start_run(run_id=run_id)
        self.experiment_id = str(existing.info.experiment_id)
        self.resumed = True
        if tags:
            self._set_tags_unchecked(tags)

    def end(self, status: str = _STATUS_FINISHED) -> None:
        """End the run with ``status`` (``FINISHED``, ``FAILED`` or ``KILLED``). Idempotent."""
        if not self.active:
            return
        import mlflow

        run_id = self.run_id
        self._ended = True
        active = mlflow.active_run()
        if active is not None and active.info.run_id == run_id:
            mlflow.end_run(status=status)
        else:
            assert run_id is not None
            with _mlflow_errors(f"run {run_id}", "end the run"):
                self.client.set_terminated(run_id, status=status)

    def __enter__(self) -> RunTracker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        if exc_type is None:
            status = _STATUS_FINISHED
        elif issubclass(exc_type, KeyboardInterrupt):
            status = _STATUS_KILLED
        else:
            status = _STATUS_FAILED
        try:
            self.end(status)
        except Exception:
            if exc_type is None:
                raise
            # Never hide the exception that stopped the run behind a failure to record its end.
            logger.exception("Could not mark MLflow run %s as %s", self.run_id, status)
        return False

    # ------------------------------------------------------------------ checks

    def _check(self, text: str, where: str, what: str = "the value") -> None:
        if self.phi_guard is not None:
            self.phi_guard.check(text, where, what=what)

    def _checked_tags(self, tags: Mapping[str, Any]) -> dict[str, str]:
        out: dict[str, str] = {}
        for key, value in tags.items():
            name = str(key)
            text = stringify(value)
            self._check(name, f"tags.{name}", "the tag name")
            self._check(text, f"tags.{name}")
            out[name] = _truncate(text, MAX_TAG_VAL_LENGTH)
        return out

    def _scan_artifact(self, path: Path, where: str) -> None:
        if self.phi_guard is None:
            return
        if path.suffix.lower() in TEXT_ARTIFACT_SUFFIXES | DICOM_ARTIFACT_SUFFIXES:
            self.phi_guard.scan_file(path, where)

    # ------------------------------------------------------------------ params, metrics, tags

    def log_params(self, flat: Mapping[str, Any], *, on_conflict: OnConflict = "raise") -> dict[str, str]:
        """Log parameters; values are stringified and cut to MLflow's 6000-character limit.

        On a resumed run, a parameter already logged with the same value is skipped. A parameter
        logged with a *different* value cannot be changed (MLflow forbids it, and the run's record
        would lie about how it was trained); by default that raises, naming the parameter and
        both values. With ``on_conflict="prefix"`` the new value is logged as
        ``resumed.<name>`` instead (and raises only if that too exists with another value), for
        the deliberate case of resuming with, say, more epochs.

        Args:
            flat: ``{name: value}``, e.g. from :func:`flatten_config`.
            on_conflict: ``"raise"`` or ``"prefix"``.

        Returns:
            What was actually logged, ``{name: value}`` (skipped params are not included).

        Raises:
            TrackingError: On a patient identifier (nothing is logged), a changed value, a name
                over 250 characters, or when MLflow refuses.
        """
        from mlflow.entities import Param

        run_id = self._require_run()
        values: dict[str, str] = {}
        for key, value in flat.items():
            name = str(key)
            text = stringify(value)
            self._check(name, f"params.{name}", "the parameter name")
            self._check(text, f"params.{name}")
            if len(name) > MAX_ENTITY_KEY_LENGTH:
                raise TrackingError(
                    f"params.{_short(name)}",
                    f"the parameter name is {len(name)} characters long; MLflow allows {MAX_ENTITY_KEY_LENGTH}",
                    "shorten the config key",
                )
            values[name] = _truncate(text, MAX_PARAM_VAL_LENGTH)
        if not values:
            return {}
        with _mlflow_errors(f"run {run_id}", "read the run's parameters"):
            existing = dict(self.client.get_run(run_id).data.params)
        to_log: dict[str, str] = {}
        for name, text in values.items():
            target = self._param_target(run_id, name, text, existing, on_conflict)
            if target is not None:
                to_log[target] = text
        items = [Param(k, v) for k, v in to_log.items()]
        for batch in _chunks(items, MAX_PARAMS_TAGS_PER_BATCH):
            with _mlflow_errors(f"run {run_id}", "log parameters", "check the parameter names"):
                self.client.log_batch(run_id, params=batch, synchronous=True)
        return to_log

    def _param_target(
        self, run_id: str, name: str, text: str, existing: Mapping[str, str], on_conflict: OnConflict
    ) -> str | None:
        """The name to log ``name`` under, or ``None`` when it is already logged with this value."""
        if name not in existing:
            return name
        if existing[name] == text:
            return None
        if on_conflict == "prefix":
            alias = RESUMED_PREFIX + name
            if alias not in existing:
                return alias
            if existing[alias] == text:
                return None
            name = alias
        raise TrackingError(
            f"params.{name}",
            f"run {run_id} already has this parameter with another value"
            f" ({_short(existing[name])!r}, now {_short(text)!r}); MLflow does not allow changing a logged parameter",
            "resume with the configuration the run was started with, or start a new run (without --resume)",
        )

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> dict[str, float]:
        """Log metrics at ``step`` (0 when ``None``), in batches of 1000.

        Values that are not real numbers (strings, dicts, lists, booleans) are skipped with a
        debug message; NaN is logged as NaN; one-element arrays and tensors are unwrapped.

        Args:
            metrics: ``{name: value}``.
            step: The step (epoch or iteration).

        Returns:
            What was logged, ``{name: float}``.

        Raises:
            TrackingError: If a name contains a patient identifier or MLflow refuses a name.
        """
        from mlflow.entities import Metric

        run_id = self._require_run()
        values: dict[str, float] = {}
        for key, value in metrics.items():
            name = str(key)
            number = _as_number(value)
            if number is None:
                logger.debug("Metric %s skipped: %r is not a number", name, type(value).__name__)
                continue
            self._check(name, f"metrics.{name}", "the metric name")
            values[name] = number
        timestamp = int(time.time() * 1000)
        items = [Metric(k, v, timestamp, int(step or 0)) for k, v in values.items()]
        for batch in _chunks(items, MAX_METRICS_PER_BATCH):
            with _mlflow_errors(f"run {run_id}", "log metrics", "metric names may hold letters, digits and _-./ :"):
                self.client.log_batch(run_id, metrics=batch, synchronous=True)
        return values

    def last_step(self, key: str) -> int | None:
        """The highest step logged for metric ``key`` (``None`` if never logged); for resuming.

        Args:
            key: The metric name.

        Returns:
            The step, or ``None``.
        """
        run_id = self._require_run()
        with _mlflow_errors(f"run {run_id}", f"read the history of metric {key!r}"):
            history = self.client.get_metric_history(run_id, key)
        return max((int(m.step) for m in history), default=None)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set tags (values stringified and cut to MLflow's 8000-character limit).

        Raises:
            TrackingError: On a patient identifier (nothing is set) or when MLflow refuses.
        """
        self._require_run()
        self._set_tags_unchecked(self._checked_tags(tags))

    def _set_tags_unchecked(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        run_id = self.run_id
        assert run_id is not None
        items = [RunTag(k, v) for k, v in tags.items()]
        for batch in _chunks(items, MAX_PARAMS_TAGS_PER_BATCH):
            with _mlflow_errors(f"run {run_id}", "set tags", "check the tag names"):
                self.client.log_batch(run_id, tags=batch, synchronous=True)

    # ------------------------------------------------------------------ artifacts

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Log a file, or a folder with everything in it, under ``artifact_path``.

        With a PHI guard, text-like files (:data:`TEXT_ARTIFACT_SUFFIXES`) and DICOM files are
        searched first; in a folder, every such file is searched before anything is logged.

        Args:
            path: A file or a folder.
            artifact_path: Folder inside the run's artifacts (``None``: the root).

        Raises:
            TrackingError: If the path does not exist, a file holds a patient identifier, or
                the artifact store refuses.
        """
        run_id = self._require_run()
        source = Path(path)
        shown = str(PurePosixPath(artifact_path or ".") / source.name)
        if not source.exists():
            raise TrackingError(source, "no such file or folder to log as an artifact", None)
        if source.is_dir():
            for file in sorted(p for p in source.rglob("*") if p.is_file()):
                relative = file.relative_to(source).as_posix()
                self._scan_artifact(file, f"artifact {shown}/{relative}")
            target = str(PurePosixPath(artifact_path) / source.name) if artifact_path else source.name
            with _mlflow_errors(f"artifact {shown}", "store the artifact folder"):
                self.client.log_artifacts(run_id, str(source), artifact_path=target)
            return
        self._scan_artifact(source, f"artifact {shown}")
        with _mlflow_errors(f"artifact {shown}", "store the artifact"):
            self.client.log_artifact(run_id, str(source), artifact_path=artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        """Log ``text`` as the artifact ``artifact_file`` (e.g. ``"eval/summary.md"``).

        Raises:
            TrackingError: On a patient identifier or when the artifact store refuses.
        """
        run_id = self._require_run()
        self._check(artifact_file, f"artifact {artifact_file}", "the artifact name")
        self._check(text, f"artifact {artifact_file}", "the text")
        with _mlflow_errors(f"artifact {artifact_file}", "store the artifact"):
            self.client.log_text(run_id, text, artifact_file)

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        """Log ``obj`` as JSON, or as YAML when ``artifact_file`` ends in ``.yaml``/``.yml``.

        Values JSON cannot hold (paths, numpy scalars and arrays, pydantic models) are
        converted; NaN is written as ``NaN`` in JSON and ``.nan`` in YAML. The exact text that
        will be stored is what the PHI guard checks.

        Raises:
            TrackingError: On a patient identifier or when the artifact store refuses.
        """
        suffix = PurePosixPath(artifact_file).suffix.lower()
        plain = json.loads(json.dumps(obj, default=_json_default, ensure_ascii=False))
        if suffix in (".yaml", ".yml"):
            import yaml

            text = yaml.safe_dump(plain, sort_keys=False, allow_unicode=True, default_flow_style=False)
        else:
            text = json.dumps(plain, indent=2, ensure_ascii=False)
        self.log_text(text, artifact_file)
