"""Where runs go: resolving the tracking URI and checking that the store can be reached.

The embedded default is an SQLite file, ``sqlite:///mlflow.db`` in the working directory. It is
made absolute when resolved, so a later ``chdir`` does not move it. A team's MLflow server is
named by an ``http(s)://`` URI (in the config's ``tracking.uri`` or ``MLFLOW_TRACKING_URI``); it is
probed before any work starts, so a training run never finds out after an hour that its results
have nowhere to go.

Nothing here imports MLflow.

Example:
    >>> uri = resolve_tracking_uri("sqlite:////tmp/medvision-doc/mlflow.db")
    >>> uri
    'sqlite:////tmp/medvision-doc/mlflow.db'
    >>> ensure_tracking_available(uri)
    ('sqlite:////tmp/medvision-doc/mlflow.db', None)
"""

from __future__ import annotations

import ipaddress
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from medvision.errors import TrackingError

__all__ = [
    "DEFAULT_TRACKING_URI",
    "TRACKING_URI_ENV",
    "artifact_location_for",
    "ensure_tracking_available",
    "redact_uri",
    "require_existing_store",
    "resolve_tracking_uri",
    "sqlite_path",
]

#: The embedded store: an SQLite file in the working directory (made absolute when resolved).
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"

#: The environment variable MLflow reads (and ``mlflow.set_tracking_uri`` writes).
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"

_SQLITE_PREFIX = "sqlite:///"
_NO_STORE_FIX = (
    "train a model first (`medvision train CONFIG`), or point --tracking-uri (or $MLFLOW_TRACKING_URI) at the store"
    " the runs were logged to"
)
_SERVER_FIX = "start it (make mlflow-server) or set tracking.required: false to use the embedded store"


def sqlite_path(uri: str) -> Path | None:
    """The database file of an ``sqlite:///`` URI (``None`` for other URIs and in-memory databases).

    Args:
        uri: A tracking URI.

    Returns:
        The path as written in the URI (relative paths stay relative), without a query string.
    """
    if not uri.startswith(_SQLITE_PREFIX):
        return None
    path = uri[len(_SQLITE_PREFIX) :].split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(path)


def _absolute(uri: str) -> str:
    """Make a relative ``sqlite:///`` path or a bare folder path absolute (other URIs unchanged)."""
    uri = uri.strip()
    path = sqlite_path(uri)
    if path is not None:
        if path.is_absolute():
            return uri
        query = uri.split("?", 1)[1] if "?" in uri else ""
        absolute = (Path.cwd() / path).resolve()
        return f"{_SQLITE_PREFIX}{absolute.as_posix()}" + (f"?{query}" if query else "")
    scheme = urllib.parse.urlparse(uri).scheme
    if not scheme:
        # A bare folder: MLflow's file store. Absolute, so that chdir does not move it.
        return Path(uri).expanduser().resolve().as_uri()
    return uri


def resolve_tracking_uri(configured: str | None) -> str:
    """The tracking URI to use: ``configured`` > ``$MLFLOW_TRACKING_URI`` > :data:`DEFAULT_TRACKING_URI`.

    Relative SQLite paths (``sqlite:///mlflow.db``) and bare folder paths are made absolute
    against the current working directory.

    Args:
        configured: The config's ``tracking.uri`` (``None`` or empty when not set).

    Returns:
        The URI.

    Example:
        >>> resolve_tracking_uri("sqlite:///mlflow.db").startswith("sqlite:////")
        True
        >>> resolve_tracking_uri("http://127.0.0.1:5000")
        'http://127.0.0.1:5000'
    """
    for candidate in (configured, os.environ.get(TRACKING_URI_ENV), DEFAULT_TRACKING_URI):
        if candidate is not None and str(candidate).strip():
            return _absolute(str(candidate))
    return _absolute(DEFAULT_TRACKING_URI)  # pragma: no cover - the default is never empty


def require_existing_store(uri: str | None) -> str:
    """The resolved tracking URI, for a command that only reads: a local store must already exist.

    MLflow creates a store wherever it opens one: a missing SQLite file becomes a new database, an
    empty file gets MLflow's schema, a missing folder becomes a file store. Reading commands (``runs
    list|show|compare``, ``evaluate``, ``predict``, ``report``) must not leave one behind, so a local
    store that is not there is refused here, before MLflow is asked. Servers (``http(s)://``) and other
    stores come back unchecked; MLflow reports their errors.

    Args:
        uri: The tracking URI as given (``None``: ``$MLFLOW_TRACKING_URI``, else the default).

    Returns:
        The resolved URI (see :func:`resolve_tracking_uri`).

    Raises:
        TrackingError: If the SQLite file does not exist, is empty or is a folder, or the file store's
            folder does not exist, is empty or is a file. Nothing is created.

    Example:
        >>> require_existing_store("sqlite:////tmp/medvision-doc/none.db")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        medvision.errors.TrackingError: tracking.uri: there is no tracking store at /tmp/medvision-doc/none.db ...
    """
    store = resolve_tracking_uri(uri)
    path = sqlite_path(store)
    problem: str | None = None
    if path is not None:
        if not path.exists():
            problem = f"there is no tracking store at {path}"
        elif path.is_dir():
            problem = f"the tracking store {path} is a folder, not an SQLite file"
        elif path.stat().st_size == 0:
            problem = f"the tracking store {path} is an empty file, not an MLflow database"
    elif store.startswith("file:"):
        folder = Path(urllib.request.url2pathname(urllib.parse.urlsplit(store).path))
        if not folder.exists():
            problem = f"there is no tracking store at {folder}"
        elif not folder.is_dir():
            problem = f"the tracking store {folder} is a file, not a folder (an SQLite store is written sqlite:///PATH)"
        elif not any(folder.iterdir()):
            problem = f"the tracking store folder {folder} is empty"
    if problem is not None:
        raise TrackingError("tracking.uri", f"{problem} ({redact_uri(store)})", _NO_STORE_FIX)
    return store


def redact_uri(uri: str) -> str:
    """``uri`` without a password (``https://user:secret@host`` -> ``https://user:***@host``)."""
    try:
        parts = urllib.parse.urlsplit(uri)
    except ValueError:
        return uri
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def artifact_location_for(uri: str, experiment: str) -> str | None:
    """Where an embedded store keeps the artifacts of ``experiment``: next to the database.

    MLflow's own default is ``./mlruns`` under the *working directory* of the process that
    creates the experiment; medvision puts them in ``mlartifacts/<experiment>`` beside the SQLite
    file instead, so that the database and its artifacts stay together. For servers and other
    stores the server decides (``None``).

    Args:
        uri: The resolved tracking URI.
        experiment: The experiment name.

    Returns:
        A ``file://`` URI, or ``None``.
    """
    path = sqlite_path(uri)
    if path is None:
        return None
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in experiment).strip("._") or "experiment"
    return (path.resolve().parent / "mlartifacts" / safe).as_uri()


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _probe(uri: str, timeout_s: float) -> str | None:
    """GET ``{uri}/health``; ``None`` when the server answers, else the cause as text."""
    url = uri.rstrip("/") + "/health"
    host = urllib.parse.urlsplit(uri).hostname
    # A loopback server is never behind a proxy; an HTTP(S)_PROXY from the environment must not
    # turn "connection refused" into a proxy's error page (or a hang).
    handlers = [urllib.request.ProxyHandler({})] if _is_loopback(host) else []
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(urllib.request.Request(url, method="GET"), timeout=timeout_s) as response:
            status = getattr(response, "status", 200)
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            return None  # the server is up; authentication is MLflow's business
        return f"HTTP {exc.code} {exc.reason} from {redact_uri(url)}"
    except urllib.error.URLError as exc:
        return f"{type(exc.reason).__name__}: {exc.reason}" if not isinstance(exc.reason, str) else exc.reason
    except (TimeoutError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if not 200 <= int(status) < 300:
        return f"HTTP {status} from {redact_uri(url)}"
    return None


def _prepare_local(uri: str) -> None:
    """Create the folder an SQLite file or a file store lives in."""
    path = sqlite_path(uri)
    folder: Path | None = None
    if path is not None:
        folder = path.parent
    elif uri.startswith("file:"):
        folder = Path(urllib.request.url2pathname(urllib.parse.urlsplit(uri).path))
    if folder is None:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrackingError(
            "tracking.uri",
            f"cannot create the folder {folder} for the tracking store {uri} ({exc})",
            "choose a writable location for tracking.uri",
        ) from exc


def ensure_tracking_available(uri: str, *, required: bool = True, timeout_s: float = 3.0) -> tuple[str, str | None]:
    """Check the tracking store before any work starts.

    ``http(s)://`` URIs are probed with ``GET {uri}/health`` (MLflow servers answer ``OK``). When
    the server is down and ``required`` is true a :class:`~medvision.errors.TrackingError` is
    raised; otherwise the embedded store (:data:`DEFAULT_TRACKING_URI`, resolved) is used and a
    warning returned. For SQLite and ``file:`` stores the parent folder is created. Other URIs
    (``postgresql://``, ``databricks``...) are returned unchecked; MLflow reports their errors.

    Args:
        uri: The resolved tracking URI (see :func:`resolve_tracking_uri`).
        required: Whether an unreachable server is an error (``tracking.required``).
        timeout_s: Seconds to wait for the server's answer.

    Returns:
        ``(uri_used, warning)``; ``warning`` is ``None`` unless the store fell back.

    Raises:
        TrackingError: If a required server is not reachable, or a local folder cannot be created.
    """
    scheme = urllib.parse.urlsplit(uri).scheme.lower()
    if scheme in ("http", "https"):
        cause = _probe(uri, timeout_s)
        if cause is None:
            return uri, None
        shown = redact_uri(uri)
        if required:
            raise TrackingError("tracking.uri", f"MLflow server at {shown} is not reachable ({cause})", _SERVER_FIX)
        fallback = _absolute(DEFAULT_TRACKING_URI)
        _prepare_local(fallback)
        warning = (
            f"MLflow server at {shown} is not reachable ({cause}); tracking.required is false, so this run"
            f" falls back to the embedded store {fallback}"
        )
        return fallback, warning
    _prepare_local(uri)
    return uri, None
