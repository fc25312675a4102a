"""``medvision listen``: a C-STORE SCP that reports each study it receives and stores the results back.

A :class:`Listener` is a pynetdicom ``AE`` accepting C-ECHO and C-STORE of the usual storage classes
(:data:`~medvision.pacs.source.DEFAULT_STORAGE_CLASSES`, native and common compressed syntaxes):

- **Receive**: each instance is written, with its file meta, to ``<out>/incoming/<StudyUID>/<SOPInstanceUID>.dcm``
  (hidden temporary file, fsync, rename) *before* the success status is returned; a failure answers
  0xA700 (out of resources: a disk problem, the sender may retry) or 0xC000 (cannot understand: no valid
  UIDs). Calling AE titles not in ``allowed_aets`` (empty: any) are rejected at association. medvision's own
  results (an SR or secondary capture whose Manufacturer is ``medvision``, forwarded back by a PACS routing
  rule) are accepted but neither written nor queued: a study is never reported again because of its results.
- **Queue**: ``<out>/queue/<StudyUID>.json`` holds the study's ``state`` (``receiving``, ``pending``, ``done``,
  ``failed``), the time of its last instance, its instance count, and the outcome. A study is complete after
  ``study_timeout`` seconds without a new instance; it then becomes ``pending``. On start, a study an earlier
  process left ``receiving`` or ``pending`` is resumed (it becomes ``pending`` and is processed).
- **Process**: one worker thread processes the pending studies one at a time with ``process(study_dir) -> dict``;
  the default (:meth:`Listener.report_study`) runs :func:`~medvision.reporting.batch.run_report` on the study
  folder into ``<out>/reports/<StudyUID>/`` and, when a store is given, sends the SR and secondary capture files
  of its ``results.json`` there. An exception marks the study ``failed`` with the reason; the listener keeps
  serving. An instance arriving after its study was processed makes it ``receiving`` again (processed anew),
  unless the study is ``done`` and the instance is already on disk byte for byte (a routing rule sending the
  study again because medvision's results were added to it).
- **Log**: one line per study, ``study <StudyUID>: N instances, flagged X, stored ok|failed: ...``. No patient
  identifier is ever logged (the StudyInstanceUID is not one).

:meth:`Listener.serve` blocks until SIGTERM or SIGINT (or :meth:`Listener.stop`): it stops accepting
associations, lets the current study finish, and returns. Studies still queued are resumed by the next start.

Example:
    >>> from medvision.pacs import DimseStore, parse_address
    >>> store = DimseStore(parse_address("dimse://ORTHANC@127.0.0.1:4242", "--store"))  # doctest: +SKIP
    >>> Listener("listener-out", port=11112, store=store, allowed_aets=["ORTHANC"]).serve()  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from medvision.constants import is_own_result
from medvision.errors import ConfigError
from medvision.pacs.source import _COMPRESSED_SYNTAXES, _NATIVE_SYNTAXES, DEFAULT_STORAGE_CLASSES
from medvision.pacs.uris import DEFAULT_CALLING_AET, check_ae_title

__all__ = ["DONE", "FAILED", "PENDING", "RECEIVING", "Listener"]

log = logging.getLogger(__name__)

RECEIVING, PENDING, DONE, FAILED = "receiving", "pending", "done", "failed"
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_VERIFICATION = "1.2.840.10008.1.1"
_OUT_OF_RESOURCES, _CANNOT_UNDERSTAND = 0xA700, 0xC000

Process = Callable[[Path], Mapping[str, Any]]


def _valid_uid(value: object) -> str | None:
    text = str(value or "").strip().rstrip("\x00")
    return text if 0 < len(text) <= 64 and _UID.match(text) else None


def _write_atomic(path: Path, data: bytes) -> None:
    """``data`` into a hidden temporary file beside ``path``, fsync, then rename to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class Listener:
    """A storage SCP that queues each received study, reports it and stores the results back.

    Args:
        out: the working folder (``incoming/``, ``queue/``, ``reports/``).
        aet: the listener's AE title.
        host: the address to listen on (``127.0.0.1``: this machine only; ``0.0.0.0``: every interface).
        port: the TCP port (0: any free one; :attr:`port` says which after :meth:`start`).
        store: where the results go (a :class:`~medvision.pacs.DimseStore` or
            :class:`~medvision.pacs.DicomwebStore`), or ``None`` to keep them on disk only.
        study_timeout: seconds without a new instance after which a study is complete.
        allowed_aets: calling AE titles allowed to associate; empty: any.
        process: ``process(study_dir) -> dict`` for each complete study (default :meth:`report_study`).
        classifier, detector: ready models for the default process (tests); else the URIs below.
        classifier_uri, detector_uri, tracking_uri: the registered models and their MLflow store.
        secondary_capture: the default process also writes (and stores) the key-picture secondary captures.
        tls: a server TLS context (DICOM TLS) or ``None`` for plain TCP.
        poll_interval: seconds between two looks of the worker at the queue.
    """

    def __init__(
        self,
        out: str | os.PathLike[str],
        *,
        aet: str = DEFAULT_CALLING_AET,
        host: str = "127.0.0.1",
        port: int = 11112,
        store: Any = None,
        study_timeout: float = 30.0,
        allowed_aets: Iterable[str] = (),
        process: Process | None = None,
        classifier: Any = None,
        detector: Any = None,
        classifier_uri: str | None = None,
        detector_uri: str | None = None,
        tracking_uri: str | None = None,
        secondary_capture: bool = True,
        tls: ssl.SSLContext | None = None,
        poll_interval: float = 0.2,
    ) -> None:
        if study_timeout < 0:
            raise ConfigError("--study-timeout", f"is {study_timeout:g}, must not be negative", "e.g. 30 (seconds)")
        if not 0 <= port <= 65535:
            raise ConfigError("--port", f"is {port}, must be 0-65535", "e.g. 11112")
        self.out = Path(out)
        self.aet = check_ae_title(aet, "--aet")
        self.host = host
        self.port = port
        self.store = store
        self.study_timeout = float(study_timeout)
        self.allowed_aets = [check_ae_title(a, "--allow-aet") for a in allowed_aets]
        self.process: Process = process or self.report_study
        self.classifier, self.detector = classifier, detector
        self.classifier_uri, self.detector_uri, self.tracking_uri = classifier_uri, detector_uri, tracking_uri
        self.secondary_capture = secondary_capture
        self.tls = tls
        self.poll_interval = poll_interval
        self.incoming, self.queue_dir, self.reports = self.out / "incoming", self.out / "queue", self.out / "reports"
        self._lock = threading.Lock()
        self._studies: dict[str, dict[str, Any]] = {}
        self._stopping = threading.Event()
        self._stop_lock = threading.Lock()
        self._server: Any = None
        self._worker: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"Listener(aet={self.aet!r}, {self.host}:{self.port}, out={str(self.out)!r})"

    # --- the queue ------------------------------------------------------------------------------------------

    def _save(self, entry: Mapping[str, Any]) -> None:
        data = json.dumps(entry, indent=1, sort_keys=True, default=str).encode()
        _write_atomic(self.queue_dir / f"{entry['study_uid']}.json", data)

    def _resume(self) -> None:
        """Read the queue; a study left ``receiving`` or ``pending`` by an earlier process becomes ``pending``."""
        self.queue_dir.mkdir(parents=True, exist_ok=True)
        for path in sorted(self.queue_dir.glob("*.json")):
            try:
                entry = json.loads(path.read_text(encoding="utf-8"))
                uid = _valid_uid(entry.get("study_uid"))
                if uid is None or uid != path.stem:
                    raise ValueError("no valid study_uid")
            except (OSError, ValueError, AttributeError) as exc:
                log.warning("queue file %s is unreadable (%s); skipped", path.name, type(exc).__name__)
                continue
            if entry.get("state") in (RECEIVING, PENDING):
                entry["state"] = PENDING
                self._save(entry)
                log.info("study %s: resumed from the queue (%s instances)", uid, entry.get("count", 0))
            self._studies[uid] = entry

    def state(self, study_uid: str) -> dict[str, Any] | None:
        """A copy of the study's queue entry (``None`` when unknown)."""
        with self._lock:
            entry = self._studies.get(study_uid)
            return dict(entry) if entry is not None else None

    # --- the SCP --------------------------------------------------------------------------------------------

    def _on_store(self, event: Any) -> int:
        """Write the instance, then record it in the queue; only then answer success."""
        try:
            ds = event.dataset
            study_uid = _valid_uid(ds.get("StudyInstanceUID"))
            sop_uid = _valid_uid(event.request.AffectedSOPInstanceUID)
        except Exception as exc:  # noqa: BLE001 - a dataset that does not decode
            log.warning("C-STORE refused: the data set cannot be decoded (%s)", type(exc).__name__)
            return _CANNOT_UNDERSTAND
        if study_uid is None or sop_uid is None:
            log.warning("C-STORE refused: no valid StudyInstanceUID or SOPInstanceUID")
            return _CANNOT_UNDERSTAND
        if is_own_result(ds.get("Manufacturer"), ds.get("SOPClassUID") or event.request.AffectedSOPClassUID):
            # A routing rule that forwards every new instance also forwards the results medvision filed: accepted
            # (the PACS has them) but neither written nor queued, so a study is never reported twice in a loop.
            log.info("study %s: instance %s is medvision's own result; accepted, not reported", study_uid, sop_uid)
            return 0x0000
        path = self.incoming / study_uid / f"{sop_uid}.dcm"
        try:
            data = event.encoded_dataset(include_meta=True)
            new = not path.exists()
            if not new and self._unchanged_in_done_study(study_uid, path, data):
                log.info("study %s: instance %s received again unchanged; the study is not reported again",
                         study_uid, sop_uid)  # fmt: skip
                return 0x0000
            _write_atomic(path, data)  # outside the lock: associations write in parallel
            with self._lock:
                entry = self._studies.get(study_uid) or {"study_uid": study_uid, "count": 0}
                entry = {**entry, "state": RECEIVING, "last_instance": time.time()}
                entry["count"] = int(entry.get("count") or 0) + (1 if new else 0)
                self._save(entry)
                self._studies[study_uid] = entry
        except Exception as exc:  # noqa: BLE001 - the sender gets a failure status and may retry
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            log.error("study %s: instance %s not stored (%s)", study_uid, sop_uid, reason)
            return _OUT_OF_RESOURCES
        return 0x0000

    def _unchanged_in_done_study(self, study_uid: str, path: Path, data: bytes) -> bool:
        """The study was reported and this instance is already on disk, byte for byte (a PACS sending a study
        again after medvision's results made it change). A failed study is processed again instead."""
        with self._lock:
            entry = self._studies.get(study_uid)
            done = entry is not None and entry.get("state") == DONE
        if not done:
            return False
        try:
            return path.stat().st_size == len(data) and path.read_bytes() == data
        except OSError:
            return False

    def _on_requested(self, event: Any) -> None:
        primitive = event.assoc.requestor.primitive
        calling = str(getattr(primitive, "calling_ae_title", "") or "").strip()
        if self.allowed_aets and calling not in self.allowed_aets:
            log.warning("association from AE title %r (%s) rejected: not in the allow-list",
                        calling, event.assoc.requestor.address)  # fmt: skip

    def _ae(self) -> Any:
        from pynetdicom import AE

        ae = AE(ae_title=self.aet)
        ae.maximum_associations = 10
        ae.require_calling_aet = list(self.allowed_aets)
        ae.add_supported_context(_VERIFICATION)
        for sop_class in DEFAULT_STORAGE_CLASSES:
            ae.add_supported_context(sop_class, list(_NATIVE_SYNTAXES) + list(_COMPRESSED_SYNTAXES))
        return ae

    # --- the worker -----------------------------------------------------------------------------------------

    def _next_study(self) -> str | None:
        """Mark the studies quiet for ``study_timeout`` as pending; the oldest pending one, if any."""
        now = time.time()
        with self._lock:
            for entry in self._studies.values():
                quiet = now - float(entry.get("last_instance") or 0)
                if entry.get("state") == RECEIVING and quiet >= self.study_timeout:
                    entry["state"] = PENDING
                    self._save(entry)
            pending = [(float(e.get("last_instance") or 0), uid) for uid, e in self._studies.items()
                       if e.get("state") == PENDING]  # fmt: skip
        return min(pending)[1] if pending else None

    def _work(self) -> None:
        while not self._stopping.is_set():
            try:
                uid = self._next_study()
                if uid is None:
                    self._stopping.wait(self.poll_interval)
                    continue
                self._run_one(uid)
            except Exception as exc:  # noqa: BLE001 - e.g. the queue cannot be written: say it, keep going
                log.error("the queue cannot be updated (%s: %s); trying again", type(exc).__name__, exc)
                self._stopping.wait(max(self.poll_interval, 1.0))

    def _run_one(self, uid: str) -> None:
        with self._lock:
            count = int(self._studies[uid].get("count") or 0)
        started = time.monotonic()
        try:
            result = dict(self.process(self.incoming / uid) or {})
            state, reason = DONE, None
        except Exception as exc:  # noqa: BLE001 - one study's failure never stops the listener
            result, state = {}, FAILED
            reason = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        with self._lock:
            entry = self._studies[uid]
            if entry.get("state") == PENDING:  # no new instance came meanwhile (else: receiving, processed again)
                entry["state"] = state
            entry.update(processed_at=time.time(), seconds=round(time.monotonic() - started, 3), reason=reason,
                         result=result, processed_count=count)  # fmt: skip
            self._save(entry)
        if state == FAILED:
            log.error("study %s: %d instances, failed: %s", uid, count, reason)
        else:
            log.info("study %s: %d instances, flagged %s, %s", uid, count, result.get("flagged", "?"), _stored(result))

    # --- the default process --------------------------------------------------------------------------------

    def report_study(self, study_dir: Path) -> dict[str, Any]:
        """Report one study folder into ``<out>/reports/<StudyUID>/``, then send its SR and SC to the store."""
        from medvision.config import ReportConfig
        from medvision.reporting.batch import run_report

        out = self.reports / study_dir.name
        config = ReportConfig(
            input=study_dir, out=out, classifier=self.classifier_uri, detector=self.detector_uri,
            tracking_uri=self.tracking_uri, secondary_capture=self.secondary_capture,
        )  # fmt: skip
        summary = run_report(config, classifier=self.classifier, detector=self.detector, progress=False)
        rows = json.loads((out / "results.json").read_text(encoding="utf-8")).get("rows") or []
        files = [out / row[key] for row in rows for key in ("sr_path", "secondary_capture_path") if row.get(key)]
        result: dict[str, Any] = {
            "report": str(out),
            "studies": summary.get("studies_read"),
            "flagged": summary.get("flagged"),
            "failed": summary.get("failed"),
            "files": [str(f.relative_to(out)) for f in files],
        }
        reasons = [str(r.get("reason")) for r in rows if r.get("status") == "failed" and r.get("reason")]
        if reasons:
            result["reasons"] = reasons
        if self.store is not None:
            outcomes = self.store.send(files)
            result["store"] = str(self.store.address)
            result["stored"] = [
                {"path": str(o.path.relative_to(out)), "sop_instance_uid": o.sop_instance_uid, "ok": o.ok,
                 "status": o.status}
                for o in outcomes
            ]  # fmt: skip
        return result

    # --- running --------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Resume the queue, start accepting associations and the worker; returns at once."""
        from pynetdicom import evt

        self.incoming.mkdir(parents=True, exist_ok=True)
        self._resume()
        self._stopping.clear()
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_REQUESTED, self._on_requested)]
        try:
            self._server = self._ae().start_server(
                (self.host, self.port), block=False, evt_handlers=handlers, ssl_context=self.tls
            )
        except OSError as exc:
            raise ConfigError(
                "--port", f"cannot listen on {self.host}:{self.port} ({exc.strerror or type(exc).__name__})",
                "choose a free port (or stop what holds it), and a host of this machine",
            ) from None  # fmt: skip
        self.port = int(self._server.server_address[1])
        self._worker = threading.Thread(target=self._work, name="medvision-listener-worker", daemon=True)
        self._worker.start()
        allowed = ", ".join(self.allowed_aets) if self.allowed_aets else "any AE title"
        tls = " (TLS)" if self.tls is not None else ""
        log.info("listening as %s on %s:%d%s for %s; results to %s", self.aet, self.host, self.port, tls, allowed,
                 self.store if self.store is not None else "disk only")  # fmt: skip

    def stop(self) -> None:
        """Stop accepting associations, let the current study finish, stop the worker."""
        self._stopping.set()
        with self._stop_lock:
            server, self._server = self._server, None
            worker, self._worker = self._worker, None
        if server is not None:
            server.shutdown()
        if worker is not None and worker is not threading.current_thread():
            worker.join()

    def serve(self, signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT)) -> None:
        """Start and block until SIGTERM/SIGINT (main thread only) or :meth:`stop`; then stop cleanly."""
        previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in signals:
                previous[sig] = signal.signal(sig, lambda *_args: self._stopping.set())
        try:
            self.start()
            while not self._stopping.wait(0.5):
                pass
            log.info("stopping: no new associations; finishing the current study")
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _stored(result: Mapping[str, Any]) -> str:
    stored = result.get("stored")
    if stored is None:
        return "stored: no store"
    failed = [s for s in stored if not s.get("ok")]
    if not failed:
        return f"stored ok ({len(stored)} files)"
    return "stored failed: " + "; ".join(f"{s.get('path')}: {s.get('status')}" for s in failed)
