"""The report's PACS in and out: studies found and retrieved from a PACS, SR and SC sent back to one.

- **In** (``--input dicomweb+http(s)://...`` or ``dimse://AET@host:port`` with ``--query``): the studies the
  query finds (QIDO-RS or C-FIND) are retrieved (WADO-RS or C-GET) into the PACS cache
  (``<cache>/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm``, default ``<out>.pacs-cache`` beside the report) and
  the report reads exactly those study folders. ``--pacs-workers`` studies are retrieved at once, each thread
  with its own connection. A study that cannot be retrieved becomes a failed row with the reason; the others
  go on.
- **Out** (``--store ADDRESS``): each study's SR (and secondary capture) is sent (STOW-RS or C-STORE, each object
  confirmed, retried with backoff) as soon as the study's row is written, by one background thread, in order,
  while the next studies are computed (:meth:`ReportSender.submit`); the row's ``stored`` says ``ok``,
  ``failed: <reason>`` or ``not_applicable`` (nothing to send). Unsent objects stay in the report folder.
- **Resend** (``medvision report --resend OUT --store ADDRESS``, :func:`resend`): the objects of every row of
  ``OUT`` not yet stored are sent again; ``results.json`` and ``results.csv`` are updated in place (atomically).

Credentials come from ``--credentials`` or the environment (:func:`~medvision.pacs.uris.load_credentials`) and
never appear in a row, a message or a file: rows name the PACS by its address, which holds none.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medvision.errors import ConfigError, InputError, MedvisionError
from medvision.pacs import (
    DicomwebSource,
    DicomwebStore,
    DimseSource,
    DimseStore,
    PacsAddress,
    RetryPolicy,
    load_credentials,
    parse_address,
    parse_query,
)
from medvision.reporting.discover import FAILED, Study
from medvision.reporting.rows import STORED_NOT_APPLICABLE, STORED_OK, _write_csv, _write_json

__all__ = ["PacsFetch", "ReportSender", "fetch_studies", "is_pacs_address", "open_store", "pacs_cache_dir", "resend"]

#: The row keys whose files are sent to the PACS, in this order.
SENT_FILES = ("sr_path", "secondary_capture_path")


def is_pacs_address(value: object) -> bool:
    """``value`` is a PACS address (``scheme://...``) rather than a folder."""
    return isinstance(value, str) and "://" in value


def pacs_cache_dir(cache: Path | None, out: Path) -> Path:
    """The PACS cache: ``cache`` or ``<out>.pacs-cache`` beside the report folder; never inside it.

    Raises:
        ConfigError: the cache would be inside the report folder (replacing the report would delete it).
    """
    folder = (cache or out.parent / f"{out.name}.pacs-cache").expanduser().resolve()
    try:
        folder.relative_to(out.resolve())
    except ValueError:
        return folder
    raise ConfigError(
        "--pacs-cache", f"{folder} is inside the report folder {out}; replacing the report would delete it",
        "choose a cache folder outside --out (the default is <out>.pacs-cache beside it)",
    )  # fmt: skip


@dataclass
class PacsFetch:
    """What a PACS input gave: the address, the cache, the studies retrieved and those that could not be."""

    address: PacsAddress
    cache: Path
    retrieved: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)

    @property
    def prefix(self) -> str:
        """What goes before a row's ``source`` (a path below the cache, starting with the StudyInstanceUID)."""
        return f"{self.address}/"

    def excluded(self) -> list[Path]:
        """The cache's folders that are not a study retrieved in this run (other runs, failed retrievals)."""
        keep = set(self.retrieved)
        if not self.cache.is_dir():
            return []
        return sorted(p for p in self.cache.iterdir() if p.name not in keep)

    def failure_studies(self) -> list[Study]:
        """One failed :class:`Study` per study that could not be retrieved (source: its StudyInstanceUID)."""
        return [
            Study(
                key=f"pacs-{hashlib.sha256(uid.encode()).hexdigest()[:12]}",
                route=FAILED,
                kind="file",
                source=uid,
                paths=[],
                reason=f"{uid}: not retrieved from {self.address}: {reason}",
                meta={"study_uid": uid},
            )
            for uid, reason in self.failures.items()
        ]


def _credentials(path: Path | None) -> Any:
    return load_credentials(path)


def open_source(config: Any) -> tuple[PacsAddress, Any]:
    """The :class:`DicomwebSource` or :class:`DimseSource` of ``config.input``."""
    address = parse_address(str(config.input), "--input")
    if address.protocol == "dicomweb":
        return address, DicomwebSource(
            address, credentials=_credentials(config.credentials), ca_bundle=config.ca_bundle
        )
    return address, DimseSource(address, calling_aet=config.calling_aet, ca_bundle=config.ca_bundle)


def fetch_studies(config: Any, cache: Path, *, progress_bar: Callable[..., Any]) -> PacsFetch:
    """Find the studies of ``config.query`` on the PACS of ``config.input`` and retrieve each into ``cache``.

    Raises:
        ConfigError: no query, or a bad one.
        PacsError: the search itself failed (nothing to report on). A study that cannot be retrieved is not
            raised: it is in :attr:`PacsFetch.failures` with the reason.
    """
    if not config.query:
        raise ConfigError(
            "--query", f"a PACS input ({config.input}) needs a query naming the studies to report",
            "e.g. --query 'StudyDate=20261125-20261126&ModalitiesInStudy=CR'",
        )  # fmt: skip
    address, source = open_source(config)
    query = parse_query(config.query, "--query")
    studies = list(dict.fromkeys(s.study_uid for s in source.find_studies(query)))
    fetch = PacsFetch(address=address, cache=cache)
    cache.mkdir(parents=True, exist_ok=True)
    # Studies are retrieved by ``pacs_workers`` threads, each with a connection of its own (a session or an
    # association is not shared between threads): the time goes in round trips, not in this process's CPU.
    local = threading.local()

    def retrieve(study: str) -> str | None:
        if not hasattr(local, "source"):
            local.source = open_source(config)[1]
        try:
            local.source.retrieve(study, cache)
            return None
        except MedvisionError as exc:
            return f"{exc.reason}; {exc.fix}" if exc.reason and exc.fix else exc.one_line()
        except Exception as exc:  # noqa: BLE001 - one study that cannot be retrieved never stops the others
            return f"unexpected {type(exc).__name__}: {' '.join(str(exc).split())}"

    bar = progress_bar(len(studies), desc="retrieving", unit=" studies", leave=False)
    workers = max(1, min(int(getattr(config, "pacs_workers", 1) or 1), len(studies)))
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="medvision-retrieve") as pool:
            for study, failure in zip(studies, pool.map(retrieve, studies), strict=True):
                if failure is None:
                    fetch.retrieved.append(study)
                else:
                    fetch.failures[study] = failure
                bar.update(1)
    finally:
        bar.close()
    return fetch


def open_store(
    store: str,
    *,
    credentials: Path | None = None,
    calling_aet: str,
    ca_bundle: Path | None = None,
    retry: RetryPolicy | None = None,
) -> DicomwebStore | DimseStore:
    """The :class:`DicomwebStore` or :class:`DimseStore` of a ``--store`` address."""
    address = parse_address(store, "--store")
    if address.protocol == "dicomweb":
        return DicomwebStore(address, credentials=_credentials(credentials), ca_bundle=ca_bundle, retry=retry)
    return DimseStore(address, calling_aet=calling_aet, ca_bundle=ca_bundle, retry=retry)


class ReportSender:
    """Sends one row's SR and SC (files below ``folder``) and says the row's ``stored``. Never raises.

    While the PACS is down (nothing of the last row was confirmed), each row is tried once, without the retries
    and their backoff, so that an outage costs one attempt per study, not the whole backoff; the first row
    confirmed again brings the retries back.
    """

    def __init__(self, store: DicomwebStore | DimseStore, folder: Path, *, background: bool = False) -> None:
        self.store = store
        self.folder = folder
        self.down = False
        # In the background (the batch report): one thread sends the rows in the order given while the next
        # studies are computed; :meth:`wait` is called before the rows are written out.
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="medvision-store") if background else None
        self._pending: list[Future] = []

    def submit(self, row: dict[str, Any]) -> None:
        """Set ``row["stored"]``: now, or (in the background) once :meth:`wait` returns."""
        if self._pool is None:
            row["stored"] = self(row)
            return
        row["stored"] = None
        self._pending.append(self._pool.submit(lambda: row.__setitem__("stored", self(row))))

    def wait(self) -> None:
        """Every submitted row sent (or failed) and its ``stored`` set."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def close(self) -> None:
        """Stop the background thread: rows not yet sent are dropped (a report that is not written)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __call__(self, row: Mapping[str, Any]) -> str:
        files = [str(row[k]) for k in SENT_FILES if row.get(k)]
        if not files:
            return STORED_NOT_APPLICABLE
        retry = self.store.retry
        if self.down:
            self.store.retry = RetryPolicy(attempts=1, base_delay=retry.base_delay, max_delay=retry.max_delay)
        try:
            outcomes = self.store.send([self.folder / f for f in files])
        except Exception as exc:  # noqa: BLE001 - send() should not raise; if it does, the row says so
            return f"failed: unexpected {type(exc).__name__}: {' '.join(str(exc).split())}"
        finally:
            self.store.retry = retry
        self.down = not any(o.ok for o in outcomes)
        bad = [(rel, o.status) for rel, o in zip(files, outcomes, strict=True) if not o.ok]
        if not bad:
            return STORED_OK
        return "failed: " + "; ".join(f"{rel}: {status.removeprefix('failed: ')}" for rel, status in bad)


def not_stored(rows: Sequence[Mapping[str, Any]]) -> int:
    return sum(1 for r in rows if str(r.get("stored") or "").startswith("failed"))


def _replace_atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def resend(
    out: Path,
    store: str,
    *,
    credentials: Path | None = None,
    calling_aet: str,
    ca_bundle: Path | None = None,
    retry: RetryPolicy | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Send the SR and SC of every row of the report ``out`` not yet stored; update its results files.

    A row is sent when its ``stored`` is not ``ok`` (a row with no ``stored`` was never sent). ``results.json``
    and ``results.csv`` are rewritten (temporary file, then rename) with the new ``stored``.

    Returns:
        ``{"rows": rows sent, "stored": now ok, "not_stored": still failed, "out": out}``.

    Raises:
        InputError: ``out`` is not a medvision report.
    """
    out = Path(out).expanduser().resolve()
    results = out / "results.json"
    try:
        doc = json.loads(results.read_text(encoding="utf-8"))
        rows = doc["rows"]
        if not isinstance(rows, list):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError(
            out, "is not a medvision report (no readable results.json)", "pass the --out folder of a report"
        ) from None
    sender = ReportSender(open_store(store, credentials=credentials, calling_aet=calling_aet, ca_bundle=ca_bundle,
                                     retry=retry), out)  # fmt: skip
    todo = [r for r in rows if isinstance(r, dict) and r.get("stored") not in (STORED_OK, STORED_NOT_APPLICABLE)]
    from tqdm import tqdm

    for row in tqdm(todo, desc="resending", unit=" studies", disable=not progress, file=sys.stderr, leave=False):
        row["stored"] = sender(row)
    if isinstance(doc.get("summary"), dict):
        doc["summary"]["stored_failed"] = not_stored(rows)
    _replace_atomic(results, lambda tmp: _write_json(tmp, doc))
    _replace_atomic(out / "results.csv", lambda tmp: _write_csv(tmp, rows))
    return {
        "rows": len(todo),
        "stored": sum(1 for r in todo if r.get("stored") == STORED_OK),
        "not_stored": not_stored(todo),
        "out": str(out),
    }


def format_resend(summary: Mapping[str, Any]) -> str:
    """The one line printed after a resend."""
    return (
        f"resend: {summary['rows']} row(s) sent, {summary['stored']} stored, {summary['not_stored']} not stored"
        f" -> {summary['out']}"
    )
