"""One MLflow run: start or resume it, log params, metrics, tags and artifacts, end it.

:class:`RunTracker` wraps the run as a context manager. It logs through an
:class:`mlflow.MlflowClient` bound to the tracking URI it was given (batched, within MLflow's
limits), and also makes the run MLflow's *active* run, so that fluent calls made inside it
(:func:`medvision.tracking.registry.log_classifier` uses ``mlflow.models.Model.log``) attach to it.

With a :class:`~medvision.tracking.phi.PhiGuard`, every string on its way to MLflow is checked
first: param names and values, tag names and values, metric names, text and dict artifacts, and
files whose type can carry text (CSV, JSON, YAML, Markdown, HTML, DICOM...). A hit raises a
:class:`~medvision.errors.TrackingError` before anything of that call is logged.

A server that goes away does not stop the run. Metrics, params, tags and artifacts logged while
the server cannot be reached wait in an in-memory queue, in order, and are sent again before the
next call and when the run ends (:meth:`RunTracker.end` waits up to ``delivery_wait_s``, 120 s by
default, retrying with backoff). Calls that must happen at the end of the run (registering the
model) go through :meth:`RunTracker.deliver`, which waits in the same way. If the server never comes
back, a :class:`~medvision.errors.TrackingError` says what was not delivered and where the local
copies are. A WARNING is logged once when the server becomes unreachable and once when delivery
resumes.

While the tracker talks to MLflow it sets MLflow's HTTP client to fail fast
(``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0``, ``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR=0``,
``MLFLOW_HTTP_REQUEST_TIMEOUT=5`` for metrics, params and tags; artifacts and the model keep
MLflow's timeout): MLflow's own retries would hold training for minutes per call, and they
re-send a request after a read timeout, which can log a metric twice.

Exactly once. ``log_batch`` is not idempotent for metrics (each call appends a point). A batch
whose request never reached the server (connection refused, connect timeout, name resolution) is
simply sent again. A batch whose fate is unknown (the connection dropped or timed out after the
request was sent, or a 5xx answer) is first compared with the run's metric history: points
already there (same key, step, timestamp and value) are not sent again. Params (same value) and
tags are idempotent and artifacts are overwritten, so they are re-sent as they are. A re-sent
point keeps its original timestamp, so an SQL backend (SQLite, PostgreSQL) would in any case skip
an exact duplicate (its metrics table's primary key is key, timestamp, step, run, value); a file
store (``./mlruns``) would not. Residual risk, for such stores only: a server still working on a
timed-out request when the history is read can end up with that point twice. Registering a model
(:meth:`RunTracker.deliver`) is several requests and is tried again as a whole: a connection lost in
the middle of it can leave an extra logged model, or a model version without the alias, from the
failed try; the alias always goes to the version of the try that succeeded.

Example:
    >>> with RunTracker("sqlite:////tmp/medvision-doc/mlflow.db", "doc") as run:  # doctest: +SKIP
    ...     run.log_params(flatten_config({"train": {"lr": 1e-4, "epochs": 10}}))
    ...     run.log_metrics({"train_loss": 0.7}, step=0)
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import numbers
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from medvision.errors import TrackingError
from medvision.tracking.phi import PhiGuard
from medvision.tracking.registry import _mlflow_errors
from medvision.tracking.store import artifact_location_for, redact_uri

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient

__all__ = [
    "DEFAULT_DELIVERY_WAIT_S",
    "DEFAULT_REQUEST_TIMEOUT_S",
    "DICOM_ARTIFACT_SUFFIXES",
    "HTTP_BACKOFF_ENV",
    "HTTP_RETRIES_ENV",
    "HTTP_TIMEOUT_ENV",
    "MAX_ENTITY_KEY_LENGTH",
    "MAX_METRICS_PER_BATCH",
    "MAX_PARAMS_TAGS_PER_BATCH",
    "MAX_PARAM_VAL_LENGTH",
    "MAX_TAG_VAL_LENGTH",
    "RESUMED_PREFIX",
    "TEXT_ARTIFACT_SUFFIXES",
    "UNDELIVERED_FILE",
    "RunTracker",
    "download_run_config",
    "flatten_config",
    "stringify",
    "transport_failure",
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
TEXT_ARTIFACT_SUFFIXES = frozenset(
    {
        ".csv",
        ".tsv",
        ".json",
        ".jsonl",
        ".yaml",
        ".yml",
        ".md",
        ".txt",
        ".log",
        ".html",
        ".htm",
        ".xml",
        ".svg",
        ".ini",
        ".cfg",
        ".toml",
        ".tex",
        ".rst",
    }
)
#: Binary artifacts that carry identifiers in their headers; the guard searches their bytes.
DICOM_ARTIFACT_SUFFIXES = frozenset({".dcm", ".dicom"})

_TRUNCATION_MARK = "...[truncated]"

#: MLflow's HTTP client settings (mlflow/environment_variables.py), read by MLflow at every request.
HTTP_RETRIES_ENV = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
HTTP_BACKOFF_ENV = "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"
HTTP_TIMEOUT_ENV = "MLFLOW_HTTP_REQUEST_TIMEOUT"
_MLFLOW_DEFAULT_TIMEOUT_S = 120

#: How long the end of a run waits for an unreachable server (retrying with backoff).
DEFAULT_DELIVERY_WAIT_S = 120.0
#: The HTTP timeout of one metric, param or tag request during the run.
DEFAULT_REQUEST_TIMEOUT_S = 5
#: Written into ``local_dir`` when a run ends with calls that never reached the server.
UNDELIVERED_FILE = "undelivered_tracking.json"

_FIRST_BACKOFF_S = 0.5
_MAX_BACKOFF_S = 5.0
# MLflow error codes that mean "try again later" rather than "no".
_RETRYABLE_CODES = frozenset({"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"})

T = TypeVar("T")
_RUN_END = "the run's end status (the run stays RUNNING in MLflow)"

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
def _http_settings(timeout_s: float | None) -> Iterator[None]:
    """MLflow's HTTP client without its own retries (and with ``timeout_s``) for the calls inside.

    MLflow reads these variables at every request, so setting them around a call is enough. With
    ``timeout_s`` ``None`` the timeout stays what it is (MLflow's default or the user's).
    """
    settings = {HTTP_RETRIES_ENV: "0", HTTP_BACKOFF_ENV: "0"}
    if timeout_s is not None:
        settings[HTTP_TIMEOUT_ENV] = str(max(1, math.ceil(timeout_s)))
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and everything it was raised from or wraps (``__cause__``, ``__context__``, ``reason``, args)."""
    seen: set[int] = set()
    stack = [exc]
    while stack and len(seen) < 64:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked = [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
        stack.extend(e for e in linked if isinstance(e, BaseException))


def transport_failure(exc: BaseException) -> Literal["unsent", "maybe"] | None:
    """Whether ``exc`` is the tracking server being unreachable, and whether the request got there.

    Returns:
        ``"unsent"`` when the request cannot have reached the server (connection refused, connect
        timeout, name resolution), ``"maybe"`` when it may have (connection dropped or read
        timeout after sending, a 5xx/429 answer, "temporarily unavailable"), ``None`` when the
        server answered with a refusal (a bad name, a deleted run...) or the error is not a
        connection problem at all.
    """
    import http.client
    import socket

    import requests
    import urllib3

    maybe = False
    for error in _exception_chain(exc):
        if isinstance(
            error,
            urllib3.exceptions.ConnectTimeoutError  # NewConnectionError and NameResolutionError too
            | urllib3.exceptions.NewConnectionError
            | requests.exceptions.ConnectTimeout
            | ConnectionRefusedError
            | socket.gaierror,
        ):
            return "unsent"
        if isinstance(error, ValueError):  # requests' InvalidURL, MissingSchema...: retrying cannot help
            continue
        if isinstance(
            error,
            requests.exceptions.RequestException
            | urllib3.exceptions.HTTPError
            | ConnectionError
            | TimeoutError
            | http.client.HTTPException,
        ):
            maybe = True
        elif getattr(error, "error_code", None) in _RETRYABLE_CODES:
            maybe = True
    return "maybe" if maybe else None


def _failure_text(exc: BaseException) -> str:
    """The connection problem behind ``exc`` in a few words ("ConnectionRefusedError: [Errno 111] ...")."""
    import urllib3

    chain = list(_exception_chain(exc))
    for kinds in (OSError, urllib3.exceptions.HTTPError):
        for error in chain:
            if (
                isinstance(error, kinds)
                and not isinstance(error, TrackingError)
                and type(error).__module__
                in (
                    "builtins",
                    "socket",
                    "http.client",
                    "urllib3.exceptions",
                )
            ):
                text = " ".join(str(error).split())
                return _short(f"{type(error).__name__}: {text}" if text else type(error).__name__, 160)
    return _short(" ".join(str(exc).split()), 160)


def _same_point(a: Any, b: Any) -> bool:
    """Whether two MLflow metric points are the same logged point (NaN and +-inf as stores keep them)."""
    if int(a.step) != int(b.step) or int(a.timestamp) != int(b.timestamp):
        return False
    x, y = float(a.value), float(b.value)
    if math.isnan(x) or math.isnan(y):
        return math.isnan(x) and math.isnan(y)
    if abs(x) >= 1e308 or abs(y) >= 1e308:  # SQL stores keep +-inf as +-max float
        return (x > 0) == (y > 0) and abs(x) >= 1e308 and abs(y) >= 1e308
    return x == y


@dataclass(eq=False)
class _Pending:
    """One call waiting for the server: what to send, and whether an earlier try may have arrived."""

    kind: Literal["metrics", "params", "tags", "artifact", "text"]
    what: str
    payload: Any
    on_conflict: OnConflict = "raise"
    maybe_sent: bool = False
    result: Any = None

    def record(self) -> dict[str, Any]:
        """A JSON-able description (for :data:`UNDELIVERED_FILE`)."""
        out: dict[str, Any] = {"kind": self.kind, "what": self.what}
        if self.kind == "metrics":
            out["metrics"] = [
                {"key": m.key, "value": m.value, "step": m.step, "timestamp": m.timestamp} for m in self.payload
            ]
            out["maybe_delivered"] = self.maybe_sent
        elif self.kind == "params":
            out["params"] = dict(self.payload)
        elif self.kind == "tags":
            out["tags"] = {t.key: t.value for t in self.payload}
        elif self.kind == "artifact":
            source, artifact_path = self.payload
            out.update(path=str(source), artifact_path=artifact_path)
        else:
            text, artifact_file = self.payload
            out.update(artifact_file=artifact_file, text=text)
        return out


def download_run_config(uri: str, run_id: str, artifact: str = "config/resolved_config.yaml") -> str:
    """The text of a run's resolved config (the artifact ``medvision train`` logs with every run).

    Args:
        uri: The tracking URI the run is in.
        run_id: The run.
        artifact: The artifact path inside the run.

    Returns:
        The YAML text.

    Raises:
        TrackingError: If the run or the artifact does not exist, or the store cannot be reached.
    """
    import tempfile

    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=uri)
    shown = redact_uri(uri)
    fix = "check the run id (the run page in MLflow shows it) and that tracking.uri names the store it was logged to"
    with _http_settings(None):
        try:
            client.get_run(run_id)
        except MlflowException as exc:
            if transport_failure(exc) is not None:
                raise TrackingError(
                    f"run {run_id}",
                    f"the tracking store {shown} cannot be reached ({_failure_text(exc)})",
                    "start the server, or point tracking.uri / MLFLOW_TRACKING_URI at the right store",
                ) from exc
            reason = f"there is no run with this id in the tracking store {shown}"
            raise TrackingError(f"run {run_id}", reason, fix) from exc
        with tempfile.TemporaryDirectory(prefix="medvision-run-config-") as folder:
            try:
                local = client.download_artifacts(run_id, artifact, folder)
                return Path(local).read_text(encoding="utf-8")
            except (MlflowException, OSError) as exc:
                raise TrackingError(
                    f"run {run_id}",
                    f"the run has no artifact {artifact} in {shown} ({_short(str(exc), 200)})",
                    "only runs made by `medvision train` carry their resolved config",
                ) from exc


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
        delivery_wait_s: How long the end of the run (and :meth:`deliver`) waits for an
            unreachable server, retrying with backoff, before giving up.
        request_timeout_s: The HTTP timeout of one metric, param or tag request.
        transfer_timeout_s: The HTTP timeout of one artifact or model request (``None``:
            ``$MLFLOW_HTTP_REQUEST_TIMEOUT``, else MLflow's 120 s).
        local_dir: Where the run's checkpoints and evidence are on local disk; named when the
            server never comes back, and :data:`UNDELIVERED_FILE` is written there.
        recovery_hint: Added to that error's fix (e.g. how to log the rest later).

    Attributes:
        uri: The tracking URI.
        experiment: The experiment name.
        run_id: The run id (``None`` until started).
        experiment_id: The experiment id (``None`` until started).
        resumed: Whether :meth:`start` resumed an existing run.
        phi_guard: The guard, or ``None``.
        pending: How many calls wait for the server.

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
        delivery_wait_s: float = DEFAULT_DELIVERY_WAIT_S,
        request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
        transfer_timeout_s: float | None = None,
        local_dir: str | os.PathLike[str] | None = None,
        recovery_hint: str | None = None,
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
        self.delivery_wait_s = float(delivery_wait_s)
        self.request_timeout_s = float(request_timeout_s)
        if transfer_timeout_s is None:
            try:
                transfer_timeout_s = float(os.environ.get(HTTP_TIMEOUT_ENV) or _MLFLOW_DEFAULT_TIMEOUT_S)
            except ValueError:
                transfer_timeout_s = float(_MLFLOW_DEFAULT_TIMEOUT_S)
        self.transfer_timeout_s = float(transfer_timeout_s)
        self.local_dir = Path(local_dir) if local_dir is not None else None
        self.recovery_hint = recovery_hint
        self._queue: deque[_Pending] = deque()
        self._outage: str | None = None  # the cause, while the server cannot be reached
        self._backoff = _FIRST_BACKOFF_S
        self._next_try = 0.0
        self._wait_deadline: float | None = None  # the end of the current blocking wait
        self._delivered: Counter[str] = Counter()  # queued calls delivered since the outage began

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
        with _http_settings(self.request_timeout_s):
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
        """Deliver what is queued, then end the run with ``status`` (``FINISHED``, ``FAILED``, ``KILLED``).

        When the server cannot be reached, waits up to ``delivery_wait_s`` (retrying with
        backoff; ``KILLED`` tries once and does not wait). Idempotent.

        Raises:
            TrackingError: If queued calls or the run's end could not be delivered in time (the
                message lists them and names :attr:`local_dir`), or MLflow refuses.
        """
        if not self.active:
            return
        import mlflow

        run_id = self.run_id
        assert run_id is not None
        error: TrackingError | None = None
        try:
            if status == _STATUS_KILLED:
                self._pump(force=True)
                if self._queue:
                    raise self._undelivered_error(_RUN_END)
            else:
                self._drain(_RUN_END)
        except TrackingError as exc:
            error = exc
        finally:
            self._ended = True
        popped = False

        def terminate() -> None:
            nonlocal popped
            active = mlflow.active_run()
            if not popped and active is not None and active.info.run_id == run_id:
                popped = True  # end_run forgets the active run first, then tells the server
                mlflow.end_run(status=status)
            else:
                self.client.set_terminated(run_id, status=status)

        if error is None:
            try:
                with _mlflow_errors(f"run {run_id}", "end the run"):
                    self._retrying(terminate, f"the run's end (status {status})", single=status == _STATUS_KILLED)
            except TrackingError as exc:
                error = exc
        if not popped:
            # Never leave this process with an active run it cannot end: forget it locally.
            active = mlflow.active_run()
            if active is not None and active.info.run_id == run_id:
                with contextlib.suppress(Exception), _http_settings(1):
                    mlflow.end_run(status=status)
        if error is not None:
            raise error

    @property
    def pending(self) -> int:
        """How many calls wait in the queue for the server."""
        return len(self._queue)

    # ------------------------------------------------------------------ delivery

    def deliver(self, fn: Callable[[], T], what: str) -> T:
        """Call ``fn`` (which talks to MLflow, e.g. registers the model) once the queue is delivered.

        When the server cannot be reached, waits and retries with backoff, up to
        ``delivery_wait_s`` for this outage. ``fn`` is called again after a connection failure,
        so it should be safe to repeat (registering a model is not quite: see the module notes).

        Args:
            fn: The call.
            what: What it delivers, for messages ("the model pneumonia-classifier").

        Returns:
            What ``fn`` returns.

        Raises:
            TrackingError: If the server does not come back in time (listing what was not
                delivered and naming :attr:`local_dir`), or whatever ``fn`` raises otherwise.
        """
        self._require_run()
        self._drain(what)
        return self._retrying(fn, what)

    def _retrying(self, fn: Callable[[], T], what: str, *, single: bool = False) -> T:
        while True:
            try:
                with _http_settings(self.transfer_timeout_s):
                    result = fn()
            except Exception as exc:
                if transport_failure(exc) is None:
                    raise
                self._note_failure(exc)
                delay = self._wait_step()
                if single or delay is None:
                    raise self._undelivered_error(what) from exc
                time.sleep(delay)
                continue
            self._note_success()
            return result

    def _submit(self, entry: _Pending) -> bool:
        """Queue ``entry`` and try to deliver the queue (now, or when the backoff allows); True if delivered."""
        self._queue.append(entry)
        self._pump(force=False)
        return entry not in self._queue

    def _pump(self, *, force: bool) -> bool:
        """Send queued calls in order until one fails to reach the server; True when the queue is empty.

        Raises:
            TrackingError: When MLflow refuses a call (that call is dropped from the queue).
        """
        if not self._queue:
            return True
        if self._outage is not None and not force and time.monotonic() < self._next_try:
            return False
        while self._queue:
            entry = self._queue[0]
            try:
                self._send(entry)
            except Exception as exc:
                kind = transport_failure(exc)
                if kind is None:
                    self._queue.popleft()
                    raise
                if kind == "maybe":
                    entry.maybe_sent = True
                self._note_failure(exc)
                return False
            self._queue.popleft()
            if self._outage is not None:
                self._delivered[entry.kind] += 1
        self._note_success()
        return True

    def _drain(self, what: str) -> None:
        """Deliver the queue, waiting up to ``delivery_wait_s`` of outage; raise if the server stays away."""
        while not self._pump(force=True):
            delay = self._wait_step()
            if delay is None:
                raise self._undelivered_error(what)
            time.sleep(delay)

    def _wait_step(self) -> float | None:
        """The next pause of a blocking wait (``None`` when its time is up); starts the clock."""
        now = time.monotonic()
        if self._wait_deadline is None:
            self._wait_deadline = now + self.delivery_wait_s
            logger.info(
                "Waiting up to %.0f s for the MLflow server at %s to come back (%d calls queued)",
                self.delivery_wait_s,
                redact_uri(self.uri),
                len(self._queue),
            )
        left = self._wait_deadline - now
        if left <= 0:
            return None
        return min(self._backoff, left)

    def _note_failure(self, exc: BaseException) -> None:
        if self._outage is None:
            cause = _failure_text(exc)
            self._outage = cause
            self._delivered.clear()
            logger.warning(
                "MLflow server at %s is unreachable (%s); run %s goes on, and its metrics, params, tags and"
                " artifacts wait in memory and are sent when the server is back",
                redact_uri(self.uri),
                cause,
                self.run_id,
            )
        else:
            self._backoff = min(self._backoff * 2, _MAX_BACKOFF_S)
        self._next_try = time.monotonic() + self._backoff

    def _note_success(self) -> None:
        if self._outage is not None:
            others = sum(n for kind, n in self._delivered.items() if kind != "metrics")
            logger.warning(
                "MLflow server at %s is reachable again: delivered %d queued metric batches%s",
                redact_uri(self.uri),
                self._delivered["metrics"],
                f" and {others} other queued calls" if others else "",
            )
        self._outage = None
        self._backoff = _FIRST_BACKOFF_S
        self._next_try = 0.0
        self._wait_deadline = None
        self._delivered.clear()

    def _undelivered_error(self, what: str) -> TrackingError:
        """The error for a server that did not come back: what is missing, and where the local copies are."""
        counts = Counter(entry.kind for entry in self._queue)
        names = {"metrics": "metric batches", "params": "param batches", "tags": "tag batches"}
        parts = [f"{n} {names.get(kind, 'artifacts')}" for kind, n in counts.items() if kind in names]
        files = [e.what for e in self._queue if e.kind in ("artifact", "text")]
        if files:
            shown = ", ".join(files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
            parts.append(f"{len(files)} artifacts ({shown})")
        parts.append(what)
        written = self._write_undelivered(what)
        waited = f" for {self.delivery_wait_s:.0f} s" if self._wait_deadline is not None else ""
        reason = (
            f"the MLflow server at {redact_uri(self.uri)} did not come back{waited}"
            f" ({self._outage or 'unreachable'}); not delivered to run {self.run_id}: {'; '.join(parts)}"
        )
        fix_parts = []
        if self.local_dir is not None:
            fix_parts.append(f"the checkpoints and evidence are on local disk in {self.local_dir}")
        if written is not None:
            fix_parts.append(f"the undelivered metrics, params and tags are listed in {written}")
        if self.recovery_hint:
            fix_parts.append(self.recovery_hint)
        return TrackingError(f"run {self.run_id}", reason, "; ".join(fix_parts) or "start the server and run again")

    def _write_undelivered(self, what: str) -> Path | None:
        if self.local_dir is None:
            return None
        path = self.local_dir / UNDELIVERED_FILE
        doc = {
            "run_id": self.run_id,
            "tracking_uri": redact_uri(self.uri),
            "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "cause": self._outage,
            "not_delivered": [entry.record() for entry in self._queue] + [{"kind": "call", "what": what}],
        }
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(doc, indent=2, default=str), encoding="utf-8")
        except OSError as exc:
            logger.warning("Could not write %s: %s", path, exc)
            return None
        return path

    def _send(self, entry: _Pending) -> None:
        """One try at delivering ``entry``."""
        run_id = self.run_id
        assert run_id is not None
        client = self.client
        if entry.kind == "metrics":
            items = entry.payload
            with _http_settings(self.request_timeout_s):
                if entry.maybe_sent:
                    items = self._not_yet_logged(run_id, items)
                if items:
                    with _mlflow_errors(
                        f"run {run_id}", "log metrics", "metric names may hold letters, digits and _-./ :"
                    ):
                        client.log_batch(run_id, metrics=items, synchronous=True)
        elif entry.kind == "params":
            entry.result = self._send_params(run_id, entry.payload, entry.on_conflict)
        elif entry.kind == "tags":
            with (
                _http_settings(self.request_timeout_s),
                _mlflow_errors(f"run {run_id}", "set tags", "check the tag names"),
            ):
                client.log_batch(run_id, tags=entry.payload, synchronous=True)
        elif entry.kind == "artifact":
            source, artifact_path = entry.payload
            with _http_settings(self.transfer_timeout_s):
                if source.is_dir():
                    target = str(PurePosixPath(artifact_path) / source.name) if artifact_path else source.name
                    with _mlflow_errors(f"artifact {entry.what}", "store the artifact folder"):
                        client.log_artifacts(run_id, str(source), artifact_path=target)
                else:
                    with _mlflow_errors(f"artifact {entry.what}", "store the artifact"):
                        client.log_artifact(run_id, str(source), artifact_path=artifact_path)
        else:
            text, artifact_file = entry.payload
            with (
                _http_settings(self.transfer_timeout_s),
                _mlflow_errors(f"artifact {artifact_file}", "store the artifact"),
            ):
                client.log_text(run_id, text, artifact_file)

    def _not_yet_logged(self, run_id: str, items: list[Any]) -> list[Any]:
        """The points of ``items`` that the run's history does not hold yet (for a batch that may have arrived)."""
        keys = sorted({m.key for m in items})
        history: dict[str, list[Any]] = {}
        for key in keys:
            with _mlflow_errors(f"run {run_id}", f"read the history of metric {key!r}"):
                history[key] = list(self.client.get_metric_history(run_id, key))
        missing = [m for m in items if not any(_same_point(m, h) for h in history[m.key])]
        if len(missing) < len(items):
            logger.info(
                "%d of %d metric points of a batch whose request failed had reached the server; not sent again",
                len(items) - len(missing),
                len(items),
            )
        return missing

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
        except Exception as end_error:
            if exc_type is None:
                raise
            # Never hide the exception that stopped the run behind a failure to record its end.
            if isinstance(end_error, TrackingError) and self._outage is not None:
                logger.warning("Could not mark MLflow run %s as %s: the server is unreachable", self.run_id, status)
            else:
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
            What was actually logged, ``{name: value}`` (skipped params are not included). While
            the server is unreachable the params are queued and all of them are returned.

        Raises:
            TrackingError: On a patient identifier (nothing is logged), a changed value, a name
                over 250 characters, or when MLflow refuses.
        """
        self._require_run()
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
        entry = _Pending("params", f"{len(values)} params", values, on_conflict=on_conflict)
        if self._submit(entry):
            return dict(entry.result or {})
        return values  # queued: checked against the run's params when delivered

    def _send_params(self, run_id: str, values: Mapping[str, str], on_conflict: OnConflict) -> dict[str, str]:
        from mlflow.entities import Param

        with _http_settings(self.request_timeout_s):
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

        While the server cannot be reached the batch waits in memory (see the module notes).

        Raises:
            TrackingError: If a name contains a patient identifier or MLflow refuses a name.
        """
        from mlflow.entities import Metric

        self._require_run()
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
            keys = ", ".join(m.key for m in batch[:3]) + (", ..." if len(batch) > 3 else "")
            self._submit(_Pending("metrics", f"metrics {keys} at step {int(step or 0)}", batch))
        return values

    def last_step(self, key: str) -> int | None:
        """The highest step logged for metric ``key`` (``None`` if never logged); for resuming.

        Args:
            key: The metric name.

        Returns:
            The step, or ``None``.
        """
        run_id = self._require_run()
        with (
            _http_settings(self.request_timeout_s),
            _mlflow_errors(f"run {run_id}", f"read the history of metric {key!r}"),
        ):
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

        items = [RunTag(k, v) for k, v in tags.items()]
        for batch in _chunks(items, MAX_PARAMS_TAGS_PER_BATCH):
            shown = ", ".join(t.key for t in batch[:3]) + (", ..." if len(batch) > 3 else "")
            self._submit(_Pending("tags", f"tags {shown}", batch))

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
        self._require_run()
        source = Path(path)
        shown = str(PurePosixPath(artifact_path or ".") / source.name)
        if not source.exists():
            raise TrackingError(source, "no such file or folder to log as an artifact", None)
        if source.is_dir():
            for file in sorted(p for p in source.rglob("*") if p.is_file()):
                relative = file.relative_to(source).as_posix()
                self._scan_artifact(file, f"artifact {shown}/{relative}")
        else:
            self._scan_artifact(source, f"artifact {shown}")
        self._submit(_Pending("artifact", shown, (source, artifact_path)))

    def log_text(self, text: str, artifact_file: str) -> None:
        """Log ``text`` as the artifact ``artifact_file`` (e.g. ``"eval/summary.md"``).

        Raises:
            TrackingError: On a patient identifier or when the artifact store refuses.
        """
        self._require_run()
        self._check(artifact_file, f"artifact {artifact_file}", "the artifact name")
        self._check(text, f"artifact {artifact_file}", "the text")
        self._submit(_Pending("text", artifact_file, (text, artifact_file)))

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
