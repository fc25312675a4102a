"""Tracking URI resolution and the availability check (a real loopback HTTP server, no mocks)."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from medvision.errors import TrackingError
from medvision.tracking.store import (
    DEFAULT_TRACKING_URI,
    artifact_location_for,
    ensure_tracking_available,
    redact_uri,
    require_existing_store,
    resolve_tracking_uri,
    sqlite_path,
)


def _free_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Handler(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = 200 if self.path == "/health" else 404
        code = type(self).status if code == 200 else code
        body = b"OK"
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("Handler", (_Handler,), {"status": 200})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_resolve_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    default = resolve_tracking_uri(None)
    assert DEFAULT_TRACKING_URI == "sqlite:///mlflow.db"
    assert default == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert resolve_tracking_uri("") == default

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert resolve_tracking_uri(None) == "http://127.0.0.1:5999"
    assert resolve_tracking_uri("sqlite:////data/runs.db") == "sqlite:////data/runs.db"


def test_relative_paths_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    uri = resolve_tracking_uri("sqlite:///sub/runs.db?timeout=20")
    assert uri == f"sqlite:///{tmp_path.resolve()}/sub/runs.db?timeout=20"
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)  # a later chdir does not move an already resolved store
    assert sqlite_path(uri) == tmp_path.resolve() / "sub" / "runs.db"
    assert resolve_tracking_uri(str(tmp_path / "folder")) == (tmp_path / "folder").resolve().as_uri()
    assert resolve_tracking_uri("https://mlflow.example.org") == "https://mlflow.example.org"


def test_sqlite_parent_is_created(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/a/b/mlflow.db"
    assert ensure_tracking_available(uri) == (uri, None)
    assert (tmp_path / "a" / "b").is_dir()


def test_reading_needs_an_existing_store_and_creates_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 13: `runs list` and `evaluate` turned a missing or empty SQLite file into an MLflow store."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    empty = tmp_path / "empty.db"
    empty.touch()
    (tmp_path / "folder.db").mkdir()
    (tmp_path / "files").mkdir()
    refused = {
        None: "there is no tracking store at",  # ./mlflow.db
        "sqlite:///sub/none.db": "there is no tracking store at",
        f"sqlite:///{empty}": "is an empty file, not an MLflow database",
        "sqlite:///folder.db": "is a folder, not an SQLite file",
        str(tmp_path / "nothing"): "there is no tracking store at",
        str(tmp_path / "files"): "is empty",
        str(empty): "is a file, not a folder (an SQLite store is written sqlite:///PATH)",
    }
    for uri, said in refused.items():
        with pytest.raises(TrackingError, match="train a model first") as info:
            require_existing_store(uri)
        assert info.value.where == "tracking.uri" and said in info.value.reason, (uri, info.value.reason)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.db", "files", "folder.db"]
    assert empty.stat().st_size == 0

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///from-env.db")
    with pytest.raises(TrackingError, match="from-env.db"):
        require_existing_store(None)
    database = tmp_path / "real.db"
    database.write_bytes(b"SQLite format 3\x00")
    assert require_existing_store("sqlite:///real.db") == f"sqlite:///{database.resolve()}"
    (tmp_path / "files" / "0").mkdir()
    assert require_existing_store(str(tmp_path / "files")) == (tmp_path / "files").resolve().as_uri()
    assert require_existing_store("http://127.0.0.1:1") == "http://127.0.0.1:1"  # servers: MLflow's business


def test_closed_port_required_raises_quickly(tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{_free_port()}"
    start = time.monotonic()
    with pytest.raises(TrackingError) as info:
        ensure_tracking_available(uri, required=True, timeout_s=2.0)
    assert time.monotonic() - start < 2.5
    err = info.value
    assert err.where == "tracking.uri"
    assert f"MLflow server at {uri} is not reachable (" in err.reason
    assert err.fix == "start it (make mlflow-server) or set tracking.required: false to use the embedded store"


def test_closed_port_not_required_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    uri = f"http://127.0.0.1:{_free_port()}"
    used, warning = ensure_tracking_available(uri, required=False, timeout_s=2.0)
    assert used == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert warning is not None and uri in warning and "embedded store" in warning and used in warning


def test_live_server_is_used(server: tuple[str, type[_Handler]], monkeypatch: pytest.MonkeyPatch) -> None:
    uri, _ = server
    # A proxy from the environment must not stand between medvision and a loopback server.
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{_free_port()}")
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{_free_port()}")
    assert ensure_tracking_available(uri + "/") == (uri + "/", None)


def test_server_error_counts_as_unreachable(server: tuple[str, type[_Handler]]) -> None:
    uri, handler = server
    handler.status = 503
    with pytest.raises(TrackingError, match="HTTP 503"):
        ensure_tracking_available(uri)


def test_password_never_shown(tmp_path: Path) -> None:
    uri = f"http://alice:s3cret@127.0.0.1:{_free_port()}"
    assert redact_uri(uri) == uri.replace("s3cret", "***")
    with pytest.raises(TrackingError) as info:
        ensure_tracking_available(uri)
    assert "s3cret" not in str(info.value)


def test_artifact_location_next_to_database(tmp_path: Path) -> None:
    location = artifact_location_for(f"sqlite:///{tmp_path}/mlflow.db", "pneumonia / v2")
    assert location == (tmp_path / "mlartifacts" / "pneumonia___v2").resolve().as_uri()
    assert artifact_location_for("http://127.0.0.1:5000", "x") is None
