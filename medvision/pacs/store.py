"""Send DICOM files to a PACS: STOW-RS (:class:`DicomwebStore`) or C-STORE (:class:`DimseStore`).

Both have one interface: ``send(paths) -> list[StoreOutcome]``, one outcome per path, in order. Each
instance is confirmed by the PACS (STOW-RS: the response's ReferencedSOPSequence and FailedSOPSequence,
or the HTTP status; C-STORE: the response status, 0x0000, or a warning B000/B007/B006, which counts as
stored and is noted), and what fails for a reason that may pass (no connection, a timeout, HTTP 5xx, out
of resources) is sent again after an exponential backoff (:class:`RetryPolicy`). A refusal that will not
pass (credentials, an unknown AE title, a SOP class the PACS does not take, an unreadable file) is not
retried. ``send`` never raises for an instance: a failure is an outcome ``failed: <reason>``, so nothing
is lost and the caller can resend later.

Example:
    >>> from medvision.pacs import DimseStore, RetryPolicy, parse_address
    >>> store = DimseStore(parse_address("dimse://ORTHANC@127.0.0.1:4242"), retry=RetryPolicy(attempts=3))
    >>> outcomes = store.send(["sr/study1.dcm"])  # doctest: +SKIP
    >>> [o.status for o in outcomes]  # doctest: +SKIP
    ['stored']
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medvision.errors import ConfigError, PacsError
from medvision.pacs.source import _MAX_CONTEXTS, _NATIVE_SYNTAXES, _dicomweb_client, _Dimse, _http_failure, _status_text
from medvision.pacs.uris import DEFAULT_CALLING_AET, Credentials, PacsAddress

__all__ = ["DicomwebStore", "DimseStore", "RetryPolicy", "StoreOutcome"]

log = logging.getLogger(__name__)

OK, WARNING, TRANSIENT, PERMANENT = "ok", "warning", "transient", "permanent"
#: Storage warnings that still mean "stored" (PS3.4 B.2.3).
STORE_WARNINGS = {
    0xB000: "coercion of data elements",
    0xB007: "data set does not match SOP class",
    0xB006: "elements discarded",
}


@dataclass(frozen=True)
class RetryPolicy:
    """How often to send, and how long to wait between rounds: ``base_delay * 2**(round-1)``, at most ``max_delay``.

    Attributes:
        attempts: sends per instance, the first included (1 = no retry).
        base_delay: seconds before the second attempt.
        max_delay: the longest wait between two attempts.
    """

    attempts: int = 3
    base_delay: float = 1.0
    max_delay: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ConfigError("retry.attempts", f"is {self.attempts}, must be at least 1", "e.g. 3")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ConfigError("retry.base_delay", "delays must not be negative", "e.g. base_delay 1.0 (seconds)")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after attempt ``attempt`` (1-based) failed."""
        return float(min(self.base_delay * 2 ** (attempt - 1), self.max_delay))


@dataclass(frozen=True)
class StoreOutcome:
    """What happened to one file.

    Attributes:
        path: the file.
        sop_instance_uid: its SOP Instance UID (``""`` when it could not be read).
        ok: the PACS confirmed it (possibly with a warning).
        status: ``stored``, ``stored (warning: ...)`` or ``failed: <reason>``.
        attempts: how many times it was sent (0: never, e.g. not a readable DICOM file).
        warning: the PACS's warning when stored with one, else ``None``.
    """

    path: Path
    sop_instance_uid: str
    ok: bool
    status: str
    attempts: int
    warning: str | None = None


@dataclass
class _Item:
    index: int
    path: Path
    sop_uid: str = ""
    sop_class: str = ""
    syntax: str = ""
    attempts: int = 0
    result: tuple[str, str] = (TRANSIENT, "not sent")


def _read_headers(paths: Sequence[str | os.PathLike[str]]) -> tuple[list[_Item], dict[int, StoreOutcome]]:
    """Readable DICOM Part 10 files as items; the others as failed outcomes (never sent)."""
    from pydicom import dcmread

    items, refused = [], {}
    for index, raw in enumerate(paths):
        path = Path(raw)
        try:
            ds = dcmread(path, stop_before_pixels=True)
            sop_uid = str(ds.get("SOPInstanceUID", "")).strip()
            sop_class = str(ds.get("SOPClassUID", "")).strip()
            syntax = str(ds.file_meta.get("TransferSyntaxUID", "")).strip() if hasattr(ds, "file_meta") else ""
        except Exception as exc:  # noqa: BLE001 - any unreadable file is one failed outcome
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            refused[index] = StoreOutcome(path, "", False, f"failed: not a readable DICOM file ({reason})", 0)
            continue
        missing = [name for name, value in (("SOPInstanceUID", sop_uid), ("SOPClassUID", sop_class),
                                            ("TransferSyntaxUID", syntax)) if not value]  # fmt: skip
        if missing:
            status = f"failed: not a DICOM Part 10 file with {', '.join(missing)}"
            refused[index] = StoreOutcome(path, sop_uid, False, status, 0)
            continue
        items.append(_Item(index, path, sop_uid, sop_class, syntax))
    return items, refused


def _run(
    paths: Sequence[str | os.PathLike[str]],
    send_round: Callable[[list[_Item]], None],
    retry: RetryPolicy,
    sleep: Callable[[float], None],
    address: PacsAddress,
) -> list[StoreOutcome]:
    """Send, then resend what failed transiently, until it is stored or the attempts are spent."""
    items, refused = _read_headers(paths)
    pending = items
    for attempt in range(1, retry.attempts + 1):
        for item in pending:
            item.attempts = attempt
            item.result = (TRANSIENT, "no answer for this instance")
        send_round(pending)
        pending = [item for item in pending if item.result[0] == TRANSIENT]
        if not pending or attempt == retry.attempts:
            break
        wait = retry.delay(attempt)
        log.info("%d instance(s) not stored at %s (attempt %d of %d); again in %.3g s",
                 len(pending), address, attempt, retry.attempts, wait)  # fmt: skip
        sleep(wait)
    outcomes = dict(refused)
    for item in items:
        kind, text = item.result
        if kind == OK:
            outcomes[item.index] = StoreOutcome(item.path, item.sop_uid, True, "stored", item.attempts)
        elif kind == WARNING:
            status = f"stored (warning: {text})"
            outcomes[item.index] = StoreOutcome(item.path, item.sop_uid, True, status, item.attempts, warning=text)
        else:
            tries = f" (after {item.attempts} attempts)" if kind == TRANSIENT and item.attempts > 1 else ""
            outcomes[item.index] = StoreOutcome(item.path, item.sop_uid, False, f"failed: {text}{tries}", item.attempts)
    return [outcomes[i] for i in range(len(paths))]


# --- STOW-RS -----------------------------------------------------------------------------------------------


def _stow_failure_kind(code: int) -> str:
    """PS3.18 / PS3.4 failure reasons: out of resources and processing failures may pass, the rest will not."""
    return TRANSIENT if (0xA700 <= code <= 0xA7FF or code in (0x0110, 0x0213)) else PERMANENT


def _stow_reason(code: int) -> str:
    from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS

    return f"STOW-RS failure reason {_status_text(code, STORAGE_SERVICE_CLASS_STATUS)}"


def _http_kind(code: int) -> str:
    return TRANSIENT if code in (408, 425, 429) or code >= 500 else PERMANENT


class DicomwebStore:
    """Send by STOW-RS (``dicomweb_client``), several instances per request.

    Args:
        address: a ``dicomweb+http(s)://`` address.
        credentials: HTTP basic or bearer credentials.
        ca_bundle: PEM file of the certificate authorities to trust for HTTPS.
        timeout: seconds to wait for the connection and each answer.
        retry: attempts and backoff.
        batch_size: instances per STOW-RS request (at most; also at most ``batch_bytes`` bytes of files).
        sleep: how to wait between rounds (tests pass a recorder).
    """

    def __init__(
        self,
        address: PacsAddress,
        *,
        credentials: Credentials | None = None,
        ca_bundle: str | os.PathLike[str] | None = None,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        batch_size: int = 16,
        batch_bytes: int = 64 * 2**20,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.batch_size = max(1, batch_size)
        self.batch_bytes = batch_bytes
        self._sleep = sleep
        self._client = _dicomweb_client(address, credentials, ca_bundle, timeout)

    def __repr__(self) -> str:
        return f"DicomwebStore({str(self.address)!r})"

    def send(self, paths: Sequence[str | os.PathLike[str]]) -> list[StoreOutcome]:
        """Store every file; one outcome per path, in order. Never raises for one instance's failure."""
        return _run(paths, self._round, self.retry, self._sleep, self.address)

    def _batches(self, items: list[_Item]) -> list[list[_Item]]:
        batches: list[list[_Item]] = []
        size = 0
        for item in items:
            try:
                n = item.path.stat().st_size
            except OSError:
                n = 0
            if not batches or len(batches[-1]) >= self.batch_size or (size + n > self.batch_bytes and batches[-1]):
                batches.append([])
                size = 0
            batches[-1].append(item)
            size += n
        return batches

    def _round(self, items: list[_Item]) -> None:
        for batch in self._batches(items):
            self._post(batch)

    def _post(self, batch: list[_Item]) -> None:
        import requests
        from pydicom import dcmread

        datasets, sent = [], []
        for item in batch:
            try:
                datasets.append(dcmread(item.path))
                sent.append(item)
            except Exception as exc:  # noqa: BLE001 - changed or removed since its header was read
                item.result = (PERMANENT, f"not a readable DICOM file ({type(exc).__name__})")
        if not sent:
            return
        try:
            response = self._client.store_instances(datasets)
        except requests.HTTPError as exc:
            body = _response_dataset(exc.response)
            code = exc.response.status_code if exc.response is not None else 0
            if body is not None and ("FailedSOPSequence" in body or "ReferencedSOPSequence" in body):
                self._confirm(body, sent, unlisted=(_http_kind(code), f"HTTP {code}, not confirmed"))
                return
            reason = _http_failure(self.address, "STOW-RS", exc, self.timeout).reason
            for item in sent:
                item.result = (_http_kind(code), reason)
            return
        except Exception as exc:  # noqa: BLE001 - no connection, TLS, timeout, malformed answer: all may pass
            reason = _http_failure(self.address, "STOW-RS", exc, self.timeout).reason
            for item in sent:
                item.result = (TRANSIENT, reason)
            return
        self._confirm(response, sent, unlisted=(TRANSIENT, "STOW-RS answered without confirming this instance"))

    @staticmethod
    def _confirm(response: Any, sent: list[_Item], unlisted: tuple[str, str]) -> None:
        """Per instance, from the response's ReferencedSOPSequence and FailedSOPSequence."""
        by_uid = {item.sop_uid: item for item in sent}
        for item in sent:
            item.result = unlisted
        for ref in response.get("ReferencedSOPSequence") or []:
            item = by_uid.get(str(ref.get("ReferencedSOPInstanceUID", "")).strip())
            if item is None:
                continue
            warning = ref.get("WarningReason")
            if warning is not None:
                code = int(warning)
                item.result = (WARNING, f"0x{code:04X} {STORE_WARNINGS.get(code, 'warning')}")
            else:
                item.result = (OK, "")
        for failed in response.get("FailedSOPSequence") or []:
            item = by_uid.get(str(failed.get("ReferencedSOPInstanceUID", "")).strip())
            if item is None:
                continue
            code = int(failed.get("FailureReason") or 0x0110)
            item.result = (_stow_failure_kind(code), _stow_reason(code))


def _response_dataset(response: Any) -> Any:
    """The STOW-RS response body (DICOM JSON) as a Dataset, or ``None``."""
    if response is None or not response.content:
        return None
    from pydicom.dataset import Dataset

    try:
        data = response.json()
        if isinstance(data, list):
            data = data[0] if data else {}
        return Dataset.from_json(data)
    except Exception:  # noqa: BLE001 - a body that is not DICOM JSON says nothing per instance
        return None


# --- C-STORE -----------------------------------------------------------------------------------------------


def _cstore_kind(code: int) -> str:
    if code == 0x0000:
        return OK
    if (code & 0xF000) == 0xB000:
        return WARNING
    if 0xA700 <= code <= 0xA7FF or code in (0x0110, 0x0213):
        return TRANSIENT
    return PERMANENT


def _context_for(item: _Item) -> tuple[str, tuple[str, ...]]:
    syntax = item.syntax if item.syntax not in _NATIVE_SYNTAXES else "native"
    return item.sop_class, (_NATIVE_SYNTAXES if syntax == "native" else (item.syntax,))


class DimseStore:
    """Send by C-STORE (``pynetdicom``), all instances on one association per round.

    Each instance goes in the transfer syntax of its file (native ones may be converted between Explicit and
    Implicit VR Little Endian when the PACS takes only the other).

    Args:
        address: a ``dimse://AET@host:port`` (or ``dimse+tls://``) address.
        calling_aet: medvision's AE title.
        ca_bundle: PEM file of the certificate authorities to trust for DICOM TLS.
        tls: a ready TLS context instead (e.g. with a client certificate).
        timeout: seconds for the connection, the association and each answer.
        retry: attempts and backoff.
        sleep: how to wait between rounds.
    """

    def __init__(
        self,
        address: PacsAddress,
        *,
        calling_aet: str = DEFAULT_CALLING_AET,
        ca_bundle: str | os.PathLike[str] | None = None,
        tls: ssl.SSLContext | None = None,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._dimse = _Dimse(address, calling_aet, ca_bundle, tls, timeout)
        self.address = address
        self.retry = retry or RetryPolicy()
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"DimseStore({str(self.address)!r}, calling_aet={self._dimse.calling_aet!r})"

    def send(self, paths: Sequence[str | os.PathLike[str]]) -> list[StoreOutcome]:
        """Store every file; one outcome per path, in order. Never raises for one instance's failure."""
        return _run(paths, self._round, self.retry, self._sleep, self.address)

    def _round(self, items: list[_Item]) -> None:
        groups: list[tuple[list[_Item], dict[tuple[str, tuple[str, ...]], None]]] = []
        for item in items:
            context = _context_for(item)
            if not groups or (context not in groups[-1][1] and len(groups[-1][1]) >= _MAX_CONTEXTS):
                groups.append(([], {}))
            groups[-1][0].append(item)
            groups[-1][1].setdefault(context, None)
        for group, contexts in groups:
            self._associate_and_send(group, list(contexts))

    def _associate_and_send(self, group: list[_Item], contexts: list[tuple[str, tuple[str, ...]]]) -> None:
        from pydicom import dcmread

        try:
            assoc = self._dimse.associate(contexts)
        except PacsError as exc:
            kind = PERMANENT if getattr(exc, "permanent", False) else TRANSIENT
            for item in group:
                item.result = (kind, exc.reason)
            return
        try:
            for item in group:
                if not assoc.is_established:
                    item.result = (TRANSIENT, "the association was lost before this instance was sent")
                    continue
                try:
                    ds = dcmread(item.path)
                except Exception as exc:  # noqa: BLE001 - changed or removed since its header was read
                    item.result = (PERMANENT, f"not a readable DICOM file ({type(exc).__name__})")
                    continue
                started = time.monotonic()
                try:
                    status = assoc.send_c_store(ds)
                except (ValueError, AttributeError, RuntimeError):
                    item.result = (PERMANENT, _no_context(item))
                    continue
                if status:
                    item.result = _cstore_result(status)
                else:
                    item.result = (TRANSIENT, self._dimse.no_answer("C-STORE", "C-STORE", started))
        finally:
            if assoc.is_established:
                assoc.release()


def _no_context(item: _Item) -> str:
    from pydicom.uid import UID

    return (
        f"the PACS accepts no presentation context for {UID(item.sop_class).name} in {UID(item.syntax).name}"
        " (not taken, or not in this transfer syntax)"
    )


def _cstore_result(status: Any) -> tuple[str, str]:
    from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS

    if not status or "Status" not in status:
        return TRANSIENT, "no C-STORE response (timeout or association lost)"
    code = int(status.Status)
    kind = _cstore_kind(code)
    if kind == WARNING:
        return WARNING, f"0x{code:04X} {STORE_WARNINGS.get(code, 'warning')}"
    if kind == OK:
        return OK, ""
    comment = str(status.get("ErrorComment") or "").strip()
    text = f"C-STORE status {_status_text(code, STORAGE_SERVICE_CLASS_STATUS)}"
    return kind, text + (f": {comment}" if comment else "")
