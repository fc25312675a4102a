"""A real `mlflow server` on loopback: training into it, promotion, a server that is down or goes away.

No mocks of MLflow: the server is `mlflow server` in a child process (MlflowServer), with an SQLite
backend and an artifacts folder in a temporary folder; everything is read back over HTTP.
"""

from __future__ import annotations

import http.client
import http.server
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow import MlflowClient

from medvision.config import load_config
from medvision.engine import train_classification
from medvision.errors import TrackingError
from medvision.tracking import RunTracker
from medvision.tracking.run import transport_failure
from medvision.tracking.server import MlflowServer, free_port
from tests.engine.conftest import make_cxr_set, write_config

MODEL = "pneumonia-classifier"


pytestmark = pytest.mark.usefixtures("mlflow_globals")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cxr_set(tmp_path_factory.mktemp("cxr"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    folder = tmp_path_factory.mktemp("mlflow-server")
    srv = MlflowServer(f"sqlite:///{folder / 'mlflow.db'}", folder / "artifacts", log_path=folder / "server.log")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def _config(tmp: Path, manifest: Path, uri: str, experiment: str, **overrides):
    settings = {"experiment": experiment, "tracking__uri": uri, "tracking__register_as": MODEL, **overrides}
    return load_config(write_config(tmp, manifest, **settings))


def _steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_server_helper(server: MlflowServer) -> None:
    assert server.running and server.url == f"http://127.0.0.1:{server.port}"
    command = server.command()
    assert command[1:3] == ["server", "--host"] and command[command.index("--workers") + 1] == "1"
    assert command[command.index("--backend-store-uri") + 1] == server.backend_uri
    assert "--artifacts-destination" in command


def test_training_into_a_real_server_and_promotion_over_http(
    server: MlflowServer, manifest: Path, tmp_path: Path
) -> None:
    cfg = _config(tmp_path, manifest, server.url, "server-roundtrip", train__epochs=2)
    result = train_classification(cfg, progress=False)
    client = MlflowClient(tracking_uri=server.url, registry_uri=server.url)

    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")  # served by the server, no shared folder
    assert run.data.params["train.epochs"] == "2"
    for tag in ("dataset_digest", "git_commit", "git_dirty", "seed", "command", "working_dir", "weights_source"):
        assert run.data.tags[tag], tag
    assert _steps(client, result.run_id, "val_auroc") == [0, 1]
    assert run.data.metrics["test_auroc"] == pytest.approx(result.metrics["test_auroc"])

    listed = {f.path for f in client.list_artifacts(result.run_id, "evidence")}
    assert {"evidence/predictions.csv", "evidence/model_card.md", "evidence/roc.png"} <= listed
    local = client.download_artifacts(result.run_id, "config/resolved_config.yaml", str(tmp_path / "dl"))
    assert yaml.safe_load(Path(local).read_text())["train"]["epochs"] == 2
    stored = list((Path(server.artifacts_dir)).rglob("resolved_config.yaml"))
    assert stored, "artifacts must land in the server's --artifacts-destination"

    version = client.get_model_version_by_alias(MODEL, "candidate")
    assert version.run_id == result.run_id and version.status == "READY"
    try:
        from medvision.tracking.review import promote
    except ImportError:  # pragma: no cover - the review module comes with another change
        client.set_registered_model_alias(MODEL, "champion", version.version)
    else:
        promote(server.url, MODEL, version.version, alias="champion")
    champion = MlflowClient(tracking_uri=server.url).get_model_version_by_alias(MODEL, "champion")
    assert champion.version == version.version and champion.run_id == result.run_id

    from medvision.tracking import load_classifier

    model, metadata = load_classifier(f"models:/{MODEL}@champion", tracking_uri=server.url)
    assert metadata["backbone"] == "resnet18" and model.weights_source.startswith("mlflow:")


def test_server_down_at_start_and_required_fails_before_any_work(manifest: Path, tmp_path: Path) -> None:
    cfg = _config(tmp_path, manifest, f"http://127.0.0.1:{free_port()}", "server-down")
    start = time.monotonic()
    with pytest.raises(TrackingError, match="not reachable") as info:
        train_classification(cfg, progress=False)
    assert time.monotonic() - start < 10
    assert "make mlflow-server" in str(info.value)
    assert not (tmp_path / "outputs").exists()  # no checkpoint folder, no evidence


def test_server_down_at_start_not_required_falls_back_to_the_embedded_store(
    manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)  # the embedded store is ./mlflow.db
    cfg = _config(
        tmp_path,
        manifest,
        f"http://127.0.0.1:{free_port()}",
        "server-fallback",
        tracking__required=False,
        tracking__register_as=None,
        train__epochs=1,
    )
    with caplog.at_level(logging.WARNING, logger="medvision"):
        result = train_classification(cfg, progress=False)
    assert any("falls back to the embedded store" in r.getMessage() for r in caplog.records)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert "not reachable" in run.data.tags["tracking_fallback"]


def test_server_stopped_mid_run_and_restarted(
    server: MlflowServer,
    manifest: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Stopped after epoch 1's metrics, started again during epoch 3: every metric arrives exactly once."""
    cfg = _config(tmp_path, manifest, server.url, "server-outage", train__epochs=4)
    original = RunTracker.log_metrics
    restarter: list[threading.Thread] = []
    calls: list[tuple[int | None, float]] = []

    def hooked(self: RunTracker, metrics, step=None):
        start = time.monotonic()
        out = original(self, metrics, step)
        calls.append((step, time.monotonic() - start))
        if "val_auroc" in metrics and step == 0:
            server.stop()
        elif "val_auroc" in metrics and step == 1:  # epoch 3 starts now; the server comes back during it
            thread = threading.Thread(target=server.restart, daemon=True)  # same port, same stores
            thread.start()
            restarter.append(thread)
        return out

    monkeypatch.setattr(RunTracker, "log_metrics", hooked)
    with caplog.at_level(logging.WARNING, logger="medvision.tracking.run"):
        result = train_classification(cfg, progress=False)
    for thread in restarter:
        thread.join(timeout=120)
    assert server.running

    client = MlflowClient(tracking_uri=server.url, registry_uri=server.url)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    for key in ("val_auroc", "train_loss", "val_loss", "lr"):
        assert _steps(client, result.run_id, key) == [0, 1, 2, 3], key
    assert "test_auroc" in run.data.metrics
    assert {"evidence/predictions.csv", "evidence/model_card.md"} <= {
        f.path for f in client.list_artifacts(result.run_id, "evidence")
    }
    version = client.get_model_version_by_alias(MODEL, "candidate")
    assert version.run_id == result.run_id and version.status == "READY"

    messages = [r.getMessage() for r in caplog.records if r.name == "medvision.tracking.run"]
    assert sum("is unreachable" in m for m in messages) == 1, messages
    resumed = [m for m in messages if "reachable again" in m]
    assert len(resumed) == 1 and "delivered" in resumed[0] and "queued metric batches" in resumed[0], messages
    # A call made while the server is down costs little: connection refused is immediate.
    down = [seconds for step, seconds in calls if step in (1, 2)]
    assert down and max(down) < 3, calls
    assert not (tmp_path / "outputs" / "server-outage" / "undelivered_tracking.json").exists()


def test_server_that_never_comes_back_fails_with_what_was_not_delivered(
    manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "srv"
    srv = MlflowServer(f"sqlite:///{folder / 'mlflow.db'}", folder / "artifacts", log_path=folder / "server.log")
    srv.start()
    try:
        cfg = _config(tmp_path, manifest, srv.url, "server-gone", train__epochs=2, tracking__delivery_wait_s=3)
        original = RunTracker.log_metrics

        def hooked(self: RunTracker, metrics, step=None):
            out = original(self, metrics, step)
            if "val_auroc" in metrics and step == 0:
                srv.stop()
            return out

        monkeypatch.setattr(RunTracker, "log_metrics", hooked)
        start = time.monotonic()
        with pytest.raises(TrackingError) as info:
            train_classification(cfg, progress=False)
        assert time.monotonic() - start < 60
        message = str(info.value)
        [out_dir] = (tmp_path / "outputs" / "server-gone" / "runs").iterdir()  # the run's own folder
        assert "did not come back" in message and "the model (registration as" in message
        assert "metric batches" in message and str(out_dir) in message and "--resume" in message
        assert (out_dir / "checkpoints" / "last.pt").exists() and (out_dir / "evidence" / "predictions.csv").exists()
        undelivered = (out_dir / "undelivered_tracking.json").read_text()
        assert '"val_auroc"' in undelivered and '"step": 1' in undelivered
        assert mlflow.active_run() is None
        assert os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES") is None  # the fail-fast settings were undone

        # As the message says: once the server is back, --resume logs the rest into the same run.
        monkeypatch.setattr(RunTracker, "log_metrics", original)
        srv.restart()
        resumed = train_classification(cfg, resume=True, progress=False)
        client = MlflowClient(tracking_uri=srv.url, registry_uri=srv.url)
        run = client.get_run(resumed.run_id)
        assert info.value.where == f"run {resumed.run_id}"  # the same run
        assert run.info.status == "FINISHED" and "test_auroc" in run.data.metrics
        assert client.get_model_version_by_alias(MODEL, "candidate").run_id == resumed.run_id
        assert _steps(client, resumed.run_id, "val_auroc") == [0]  # step 1 is in undelivered_tracking.json
    finally:
        srv.stop()


class _LossyProxy:
    """An HTTP proxy in front of the real server that can lose one log-batch request or its answer.

    ``drop`` holds what happens to the next log-batch requests: ``"before"`` closes the connection
    without forwarding (the server never sees it), ``"after"`` forwards it and closes the
    connection instead of answering (the server logged it; the client cannot know).
    """

    def __init__(self, upstream_port: int) -> None:
        self.drop: list[str] = []
        self.forwarded_batches = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _relay(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                batch = self.path.endswith("/runs/log-batch")
                mode = proxy.drop.pop(0) if batch and proxy.drop else None
                if mode == "before":
                    self.close_connection = True
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                upstream.request(self.command, self.path, body=body or None, headers=headers)
                response = upstream.getresponse()
                payload = response.read()
                upstream.close()
                proxy.forwarded_batches += int(batch)
                if mode == "after":
                    self.close_connection = True
                    return
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length", "date", "server"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _relay

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_connection_failures_are_told_apart(server: MlflowServer) -> None:
    from mlflow.entities import Metric

    from medvision.tracking.run import _http_settings

    refused = MlflowClient(tracking_uri=f"http://127.0.0.1:{free_port()}")
    proxy = _LossyProxy(server.port)
    try:
        lossy = MlflowClient(tracking_uri=proxy.url)
        run_id = lossy.create_run(lossy.create_experiment("classify-failures")).info.run_id
        outcomes = {}
        with _http_settings(5):
            for name, call in {
                "refused": lambda: refused.log_batch(run_id, metrics=[Metric("m", 1.0, 1, 0)]),
                "lost answer": lambda: (proxy.drop.append("after"), lossy.log_batch(run_id, [Metric("m", 1.0, 1, 0)])),
                "no such run": lambda: lossy.get_run("0" * 32),
            }.items():
                with pytest.raises(Exception) as info:
                    call()
                outcomes[name] = transport_failure(info.value)
    finally:
        proxy.close()
    assert outcomes == {"refused": "unsent", "lost answer": "maybe", "no such run": None}


def test_a_batch_whose_answer_was_lost_is_not_logged_twice(server: MlflowServer) -> None:
    proxy = _LossyProxy(server.port)
    try:
        with RunTracker(proxy.url, "exactly-once", delivery_wait_s=20) as run:
            proxy.drop.append("after")  # the server logs a@0, the client sees the connection drop
            run.log_metrics({"a": 1.0}, step=0)
            assert run.pending == 1 and proxy.forwarded_batches == 1
            time.sleep(0.6)  # past the first backoff, so the next call retries the queue first
            proxy.drop.append("before")  # b@0 never reaches the server
            run.log_metrics({"b": 2.0}, step=0)
            assert run.pending == 1  # a@0 was found in the history and not sent again; b@0 waits
            run_id = run.run_id
        # a@0 went over the wire once (its retry was dropped after reading the history), b@0 once.
        # (An SQL backend would also drop an identical re-sent point by its primary key; a file store would not.)
        assert proxy.forwarded_batches == 2
        client = MlflowClient(tracking_uri=server.url)
        assert [(m.step, m.value) for m in client.get_metric_history(run_id, "a")] == [(0, 1.0)]
        assert [(m.step, m.value) for m in client.get_metric_history(run_id, "b")] == [(0, 2.0)]
        assert client.get_run(run_id).info.status == "FINISHED"
    finally:
        proxy.close()
