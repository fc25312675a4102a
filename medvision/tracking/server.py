"""A real ``mlflow server`` as a child process: start it on a free loopback port, stop it, restart it.

The server keeps runs in ``backend_uri`` (SQLite for one person, PostgreSQL for a team) and serves
artifacts itself (``--artifacts-destination``): clients upload and download through HTTP and need
no shared filesystem. ``make mlflow-server`` runs the same command in the foreground; this helper
is for tests and scripts that need a server for a while.

The child runs in its own process group (``mlflow server`` starts uvicorn workers under it), so
:meth:`MlflowServer.stop` ends all of it. MLflow's job runner (for GenAI jobs, a handful of extra
processes) is switched off unless ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION`` is set.

Example:
    >>> server = MlflowServer("sqlite:////tmp/mlflow-server/mlflow.db", "/tmp/mlflow-server/artifacts")
    >>> with server:  # doctest: +SKIP
    ...     train(..., tracking_uri=server.url)
    ...     server.restart()  # same port, same stores
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from medvision.errors import TrackingError

__all__ = ["MlflowServer", "free_port"]

_JOB_EXECUTION_ENV = "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nobody listens on now (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@functools.lru_cache(maxsize=1)
def _supports_workers() -> bool:
    """Whether this MLflow's ``mlflow server`` has ``--workers`` (every 1.x-3.x release has)."""
    try:
        from mlflow.cli import server
    except Exception:  # noqa: BLE001 - assume the flag; a refusal shows in the server's log
        return True
    return any(getattr(p, "name", "") == "workers" for p in getattr(server, "params", []))


def _mlflow_executable() -> list[str]:
    """``mlflow`` from the running interpreter's environment (a venv's bin), else ``python -m mlflow``."""
    candidate = Path(sys.executable).with_name("mlflow")
    if candidate.exists():
        return [str(candidate)]
    found = shutil.which("mlflow")
    return [found] if found else [sys.executable, "-m", "mlflow"]


def _as_backend_uri(backend: str | os.PathLike[str]) -> str:
    text = os.fspath(backend)
    if "://" in text:
        return text
    return f"sqlite:///{Path(text).expanduser().resolve().as_posix()}"  # a bare path is an SQLite file


def _as_destination(artifacts: str | os.PathLike[str]) -> str:
    text = os.fspath(artifacts)
    if "://" in text:
        return text
    path = Path(text).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


class MlflowServer:
    """``mlflow server`` on ``host:port`` with its stores, as a managed child process.

    Args:
        backend_uri: Where runs and registered models live: ``sqlite:///ABS/PATH/mlflow.db``,
            ``postgresql://USER:PASS@HOST:5432/mlflow``... A bare path is taken as an SQLite file.
        artifacts_dir: ``--artifacts-destination``: a local folder (created) or an object store
            URI (``s3://BUCKET/mlflow``). Artifacts are served through the server.
        host: The interface to bind (default loopback).
        port: The port; ``None`` picks a free one at the first :meth:`start` and keeps it for
            :meth:`restart`.
        workers: ``--workers`` (1 keeps the footprint small); ``None`` leaves MLflow's default.
        startup_timeout_s: How long :meth:`start` waits for ``GET /health``.
        log_path: The server's stdout and stderr (default: a new file in the temp folder).
        env: Extra environment variables for the server.

    Attributes:
        log_path: Where the server's output goes.
    """

    def __init__(
        self,
        backend_uri: str | os.PathLike[str],
        artifacts_dir: str | os.PathLike[str],
        host: str = "127.0.0.1",
        port: int | None = None,
        *,
        workers: int | None = 1,
        startup_timeout_s: float = 120.0,
        log_path: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.backend_uri = _as_backend_uri(backend_uri)
        self.artifacts_dir = artifacts_dir
        self.host = host
        self._port = port
        self.workers = workers
        self.startup_timeout_s = startup_timeout_s
        self._env = dict(env or {})
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="mlflow-server-", suffix=".log")
            os.close(fd)
            log_path = name
        self.log_path = Path(log_path)
        self._process: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------ properties

    @property
    def port(self) -> int | None:
        """The port (``None`` before the first start when none was given)."""
        return self._port

    @property
    def url(self) -> str:
        """``http://HOST:PORT``: the tracking URI for clients."""
        if self._port is None:
            raise TrackingError("MlflowServer", "the server has no port yet", "call start() first")
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)  # noqa: S104 - a bind address
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self._port}"

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def command(self) -> list[str]:
        """The ``mlflow server ...`` command line (for the current port)."""
        cmd = [
            *_mlflow_executable(),
            "server",
            "--host",
            self.host,
            "--port",
            str(self._port),
            "--backend-store-uri",
            self.backend_uri,
            "--artifacts-destination",
            _as_destination(self.artifacts_dir),
        ]
        if self.workers is not None and _supports_workers():
            cmd += ["--workers", str(self.workers)]
        return cmd

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> str:
        """Start the server and wait until ``GET /health`` answers; return :attr:`url`.

        Raises:
            TrackingError: If the server exits or does not answer within ``startup_timeout_s``
                (the message carries the end of its log).
        """
        if self.running:
            return self.url
        choose = self._port is None  # once chosen, the port is kept (restart() reuses it)
        attempts = 3 if choose else 1
        for attempt in range(attempts):
            if choose:
                self._port = free_port(self.host)
            try:
                self._launch()
                return self.url
            except TrackingError:
                self._kill()
                # A port picked at random can be taken by someone else before the server binds it.
                retry = attempt + 1 < attempts and "address already in use" in self._log_tail().lower()
                if not retry:
                    if choose:
                        self._port = None
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _launch(self) -> None:
        env = {**os.environ, **self._env}
        env.setdefault(_JOB_EXECUTION_ENV, "false")
        env.pop("MLFLOW_TRACKING_URI", None)  # the server's own store is the command line's
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(  # noqa: S603 - a fixed command, no shell
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            if self._healthy(timeout_s=2.0):
                return
            if self._process.poll() is not None:
                raise TrackingError(
                    self.url,
                    f"mlflow server exited with status {self._process.returncode} before answering"
                    f" ({self._log_tail()})",
                    f"see the server's log {self.log_path}",
                )
            if time.monotonic() >= deadline:
                raise TrackingError(
                    self.url,
                    f"mlflow server did not answer GET /health within {self.startup_timeout_s:.0f} s"
                    f" ({self._log_tail()})",
                    f"see the server's log {self.log_path}",
                )
            time.sleep(0.25)

    def _healthy(self, timeout_s: float) -> bool:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(f"{self.url}/health", timeout=timeout_s) as response:
                return 200 <= int(getattr(response, "status", 200)) < 300
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def _log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "no log"
        tail = [line.strip() for line in text.strip().splitlines()[-lines:] if line.strip()]
        return " | ".join(tail) or "empty log"

    def _kill(self, timeout_s: float = 10.0, graceful: bool = True) -> None:
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM if graceful else signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait(timeout=timeout_s)
        # uvicorn workers share the group; make sure none outlives the parent.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._process = None

    def stop(self, *, graceful: bool = True, timeout_s: float = 10.0) -> None:
        """Stop the server and its workers (SIGTERM, then SIGKILL after ``timeout_s``). Idempotent.

        Args:
            graceful: ``False`` kills at once (SIGKILL), as a crash would.
            timeout_s: How long to wait for a graceful exit.
        """
        self._kill(timeout_s=timeout_s, graceful=graceful)
        # Wait until the port no longer answers, so that callers see "connection refused".
        deadline = time.monotonic() + timeout_s
        while self._port is not None and self._healthy(timeout_s=0.5) and time.monotonic() < deadline:
            time.sleep(0.1)

    def restart(self) -> str:
        """Stop and start again on the same port with the same stores; return :attr:`url`."""
        self.stop()
        return self.start()

    def __enter__(self) -> MlflowServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        port = self._port if self._port is not None else "?"
        return f"MlflowServer({self.host}:{port}, {state})"
