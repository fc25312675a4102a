"""Studies from a PACS: search (QIDO-RS or C-FIND) and retrieve (WADO-RS or C-GET) into an on-disk cache.

Both sources have one interface (:class:`StudySource`):

- ``find_studies(query)``: the studies matching DICOM matching keys (``{"StudyDate": "20261125-20261126",
  "ModalitiesInStudy": "CR"}``), as :class:`StudyRef` (StudyInstanceUID, modalities, number of instances;
  the PatientID is kept in memory only, never printed by ``repr``).
- ``retrieve(study_uid, cache_dir)``: every instance of the study as
  ``<cache_dir>/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm``. Each file is written to a hidden temporary
  name and renamed into place, so a file in the cache is always complete; an instance already cached (same
  SOP Instance UID, readable) is not downloaded again, so a re-run fetches nothing. ``fetched`` counts the
  instances the last ``retrieve`` downloaded.
- medvision's own results filed into the PACS earlier (SR and secondary capture series whose Manufacturer is
  ``medvision``) are left out of a retrieve (``skipped`` counts them), so they are never reported on again.

Everything that goes wrong on the network (no connection, TLS, refused credentials or association, a failure
status) is a :class:`~medvision.errors.PacsError` naming the address (never a credential) and the fix.

Example:
    >>> from medvision.pacs import DimseSource, parse_address
    >>> source = DimseSource(parse_address("dimse://ORTHANC@127.0.0.1:4242"), calling_aet="MEDVISION")
    >>> studies = source.find_studies({"ModalitiesInStudy": "CR"})  # doctest: +SKIP
    >>> paths = source.retrieve(studies[0].study_uid, "cache")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import re
import ssl
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from medvision.constants import MANUFACTURER, OWN_SOP_CLASSES
from medvision.errors import ConfigError, PacsError
from medvision.pacs.uris import (
    DEFAULT_CALLING_AET,
    DICOMWEB,
    DIMSE,
    ENV_PASSWORD,
    ENV_TOKEN,
    ENV_USER,
    Credentials,
    PacsAddress,
    check_ae_title,
)

__all__ = [
    "DEFAULT_STORAGE_CLASSES",
    "DicomwebSource",
    "DimseSource",
    "StudyRef",
    "StudySource",
    "cache_path",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
#: WADO-RS: any transfer syntax, i.e. the one the instance was stored in (pixel data as stored).
_AS_STORED = (("application/dicom", "*"),)
_QIDO_STUDY_FIELDS = ("StudyInstanceUID", "PatientID", "ModalitiesInStudy", "NumberOfStudyRelatedInstances")
_QIDO_INSTANCE_FIELDS = ("SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
_CREDENTIALS_FIX = f"check {ENV_USER} and {ENV_PASSWORD} (or {ENV_TOKEN}), or the credentials file"

#: Storage SOP classes C-GET offers to receive (SCP role), besides those the study's C-FIND names:
#: radiographs, MR, CT, secondary captures, the SRs medvision writes and reads, and a few common others.
DEFAULT_STORAGE_CLASSES: tuple[str, ...] = (
    "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image
    "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image - For Presentation
    "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray Image - For Processing
    "1.2.840.10008.5.1.4.1.1.4",  # MR Image
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image
    "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte Secondary Capture Image
    "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word Secondary Capture Image
    "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color Secondary Capture Image
    "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
    "1.2.840.10008.5.1.4.1.1.88.59",  # Key Object Selection Document
    "1.2.840.10008.5.1.4.1.1.1.2",  # Digital Mammography X-Ray Image - For Presentation
    "1.2.840.10008.5.1.4.1.1.20",  # Nuclear Medicine Image
    "1.2.840.10008.5.1.4.1.1.128",  # Positron Emission Tomography Image
    "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image
)
_NATIVE_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")  # Explicit, Implicit VR Little Endian
#: Compressed syntaxes offered as contexts of their own, so a PACS can send each instance as it stored it.
_COMPRESSED_SYNTAXES = (
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
)
_MAX_CONTEXTS = 128  # PS3.8: presentation context ids are the odd numbers 1-255
_LOST_FIX = "register medvision's AE title with the PACS (or set --calling-aet to one it knows); else see its log"


@dataclass(frozen=True)
class StudyRef:
    """One study a PACS search found.

    Attributes:
        study_uid: StudyInstanceUID.
        modalities: ModalitiesInStudy, as the PACS lists them.
        n_instances: NumberOfStudyRelatedInstances, ``None`` when the PACS does not say.
        patient_id: PatientID: in memory only (not in ``repr``, not compared); never log or write it.
    """

    study_uid: str
    modalities: tuple[str, ...] = ()
    n_instances: int | None = None
    patient_id: str | None = field(default=None, repr=False, compare=False)


class StudySource(Protocol):
    """What both PACS sources do."""

    address: PacsAddress
    fetched: int
    skipped: int

    def find_studies(self, query: Mapping[str, str]) -> list[StudyRef]: ...

    def retrieve(self, study_uid: str, cache_dir: str | os.PathLike[str]) -> list[Path]: ...


@dataclass(frozen=True)
class _Instance:
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class: str = ""


# --- the cache ---------------------------------------------------------------------------------------------


def cache_path(cache_dir: str | os.PathLike[str], study_uid: str, series_uid: str, sop_uid: str) -> Path:
    """``<cache_dir>/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm``."""
    return Path(cache_dir) / study_uid / series_uid / f"{sop_uid}.dcm"


def _is_cached(path: Path, sop_uid: str) -> bool:
    """The file is there, reads as DICOM and holds ``sop_uid``."""
    if not path.is_file():
        return False
    from pydicom import dcmread

    try:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        return str(ds.get("SOPInstanceUID", "")).strip() == sop_uid
    except Exception:  # noqa: BLE001 - an unreadable cache file is fetched again
        return False


def _write_atomic(path: Path, write: Callable[[Any], None]) -> None:
    """``write(file)`` into a hidden temporary file beside ``path``, then rename it to ``path``."""
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise PacsError(
                str(path.parent), f"cannot write to the cache ({exc.strerror or type(exc).__name__})",
                "check the cache folder's free space and permissions",
            ) from exc  # fmt: skip
        raise


def _uid(value: object, what: str, address: PacsAddress) -> str:
    """A UID from the PACS, checked before it becomes a file name (no ``..``, no ``/``)."""
    text = str(value or "").strip().rstrip("\x00")
    if len(text) > 64 or not _UID.match(text):
        shown = text if len(text) <= 70 else text[:67] + "..."
        raise PacsError(
            str(address),
            f"the PACS answered with an invalid {what} {shown!r}",
            "report this to the PACS's administrator",
        )
    return text


def _group_by_series(instances: Iterable[_Instance]) -> dict[str, list[_Instance]]:
    groups: dict[str, list[_Instance]] = {}
    for inst in instances:
        groups.setdefault(inst.series_uid, []).append(inst)
    return groups


# --- DICOMweb ----------------------------------------------------------------------------------------------


def _dicomweb_client(
    address: PacsAddress, credentials: Credentials | None, ca_bundle: str | os.PathLike[str] | None, timeout: float
) -> Any:
    """A ``DICOMwebClient`` on a session with the credentials and the CA bundle; its own retries off."""
    import requests
    from dicomweb_client.api import DICOMwebClient

    if address.protocol != DICOMWEB:
        raise ConfigError(str(address), "is not a DICOMweb address", "use dicomweb+http(s)://host:port/path")
    session = requests.Session()
    if credentials is not None:
        session.auth = credentials.requests_auth()
        if not address.tls and address.host not in ("127.0.0.1", "::1", "localhost"):
            log.warning("sending %s credentials to %s without TLS; use dicomweb+https://", credentials.kind, address)
    if ca_bundle is not None:
        bundle = Path(ca_bundle)
        if not bundle.is_file():
            raise ConfigError(
                str(bundle), "the CA bundle is not a file", "pass the PEM file of the PACS's certificate authority"
            )
        session.verify = str(bundle)
        # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE win over session.verify (psf/requests#4726, #3829): read
        # nothing from the environment, but keep its proxies (no_proxy respected).
        session.proxies.update(requests.utils.get_environ_proxies(address.url))
        session.trust_env = False
    client = DICOMwebClient(url=address.url, session=session, timeout=timeout)
    client.set_http_retry_params(retry=False)  # medvision retries itself, with its own attempts and backoff
    return client


def _http_failure(address: PacsAddress, what: str, exc: BaseException, timeout: float) -> PacsError:
    """A ``requests`` exception as a PacsError. Never quotes a URL (a query may hold a PatientID)."""
    import requests

    where = str(address)
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        code, reason = exc.response.status_code, exc.response.reason or ""
        if code in (401, 403):
            return PacsError(where, f"{what}: HTTP {code} {reason}: the PACS refused the credentials", _CREDENTIALS_FIX)
        if code == 404:
            return PacsError(
                where, f"{what}: HTTP 404 Not Found", "check the DICOMweb path of the address (e.g. /dicom-web)"
            )
        return PacsError(where, f"{what}: HTTP {code} {reason}", "see the PACS's log; retry later if it is busy")
    if isinstance(exc, requests.exceptions.SSLError):
        return PacsError(
            where, f"{what}: the TLS handshake failed (certificate not trusted or wrong host name)",
            "pass the CA bundle that signed the PACS's certificate (--ca-bundle)",
        )  # fmt: skip
    if isinstance(exc, requests.Timeout):
        return PacsError(
            where, f"{what}: no answer within {timeout:g} s", "check that the PACS is up, or raise the timeout"
        )
    if isinstance(exc, requests.ConnectionError):
        return PacsError(
            where, f"{what}: cannot connect (connection refused, reset or host unknown)",
            "check the host and port, and that the PACS is running",
        )  # fmt: skip
    return PacsError(
        where, f"{what}: unexpected answer ({type(exc).__name__})", "check that the address is a DICOMweb service"
    )


def _json_text(item: Mapping[str, Any], tag: str) -> str | None:
    values = (item.get(tag) or {}).get("Value") or []
    if not values or values[0] is None:
        return None
    value = values[0]
    if isinstance(value, dict):  # a person name
        value = value.get("Alphabetic", "")
    return str(value).strip() or None


def _json_values(item: Mapping[str, Any], tag: str) -> tuple[str, ...]:
    values = (item.get(tag) or {}).get("Value") or []
    out: list[str] = []
    for v in values:
        out.extend(p.strip() for p in str(v).split("\\") if p.strip())
    return tuple(out)


def _to_int(value: object) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def _plan(
    source: Any, study_uid: str, cache_dir: str | os.PathLike[str]
) -> tuple[str, Path, list[_Instance], list[_Instance]]:
    """What a retrieve has to fetch: the checked study UID, the cache root, every instance of the study on the
    PACS, and those not yet in the cache (either source; resets ``source.fetched``)."""
    study_uid = _uid(study_uid, "StudyInstanceUID", source.address)
    root = Path(cache_dir)
    source.fetched = source.skipped = 0
    instances = source._instances(study_uid)
    if not instances:
        raise PacsError(
            str(source.address), f"study {study_uid} has no instances on this PACS", "check the StudyInstanceUID"
        )
    own_series = source._own_series(study_uid) if any(i.sop_class in OWN_SOP_CLASSES for i in instances) else set()
    own = [i for i in instances if i.series_uid in own_series and i.sop_class in OWN_SOP_CLASSES]
    if own:
        source.skipped = len(own)
        instances = [i for i in instances if i not in own]
        log.info("study %s: %d instance(s) of medvision's own results (SR, secondary capture) left out",
                 study_uid, len(own))  # fmt: skip
        if not instances:
            raise PacsError(
                str(source.address), f"study {study_uid} holds only medvision's own results (SR, secondary capture)",
                "nothing to report on: leave the study out of the query",
            )  # fmt: skip
    return study_uid, root, instances, [i for i in instances if not _is_cached(cache_path(root, *_key(i)), i.sop_uid)]


class DicomwebSource:
    """Search with QIDO-RS and retrieve with WADO-RS (``dicomweb_client``).

    Args:
        address: a ``dicomweb+http(s)://`` address.
        credentials: HTTP basic or bearer credentials (:func:`~medvision.pacs.uris.load_credentials`).
        ca_bundle: PEM file of the certificate authorities to trust for HTTPS (default: the system's).
        timeout: seconds to wait for the connection and for each answer.
        page_size: results asked per QIDO-RS request (``limit``); the next pages follow by ``offset``.
    """

    def __init__(
        self,
        address: PacsAddress,
        *,
        credentials: Credentials | None = None,
        ca_bundle: str | os.PathLike[str] | None = None,
        timeout: float = 30.0,
        page_size: int = 1000,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.page_size = page_size
        self.fetched = self.skipped = 0
        self._client = _dicomweb_client(address, credentials, ca_bundle, timeout)

    def __repr__(self) -> str:
        return f"DicomwebSource({str(self.address)!r})"

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        import requests

        try:
            return fn()
        except PacsError:
            raise
        except (requests.RequestException, ValueError, KeyError) as exc:
            raise _http_failure(self.address, what, exc, self.timeout) from None

    def _paged(self, what: str, search: Callable[[int, int], list[dict]], key: str) -> list[dict]:
        """Every page of a QIDO-RS search (``limit``/``offset``), guarded against a server that ignores ``offset``.

        Orthanc 1.10 answers a search on ModalitiesInStudy with the same first page whatever the offset;
        ``dicomweb_client``'s ``get_remaining`` then never ends. Here a page with nothing new ends the search, and
        a full page with nothing new is an error (the rest could not be listed).
        """
        results: list[dict] = []
        seen: set[str | None] = set()
        offset = 0
        while True:
            page = self._call(what, lambda offset=offset: search(self.page_size, offset))
            new = [item for item in page if _json_text(item, key) not in seen]
            if len(page) >= self.page_size and not new:
                raise PacsError(
                    str(self.address), f"{what}: the PACS repeats {len(page)} results instead of the next page",
                    "narrow the query (e.g. a shorter StudyDate range) so that it matches fewer studies",
                )  # fmt: skip
            results.extend(new)
            seen.update(_json_text(item, key) for item in new)
            if len(page) < self.page_size or not new:
                return results
            offset += len(page)

    def find_studies(self, query: Mapping[str, str]) -> list[StudyRef]:
        """QIDO-RS search for studies; every page of results.

        Raises:
            PacsError: the PACS cannot be reached, refuses the credentials or answers with an error.
        """
        results = self._paged(
            "QIDO-RS search for studies",
            lambda limit, offset: self._client.search_for_studies(
                search_filters=dict(query), fields=list(_QIDO_STUDY_FIELDS), limit=limit, offset=offset
            ),
            key="0020000D",
        )
        studies = []
        for item in results:
            uid = _uid(_json_text(item, "0020000D"), "StudyInstanceUID", self.address)
            studies.append(
                StudyRef(
                    study_uid=uid,
                    modalities=_json_values(item, "00080061"),
                    n_instances=_to_int(_json_text(item, "00201208")),
                    patient_id=_json_text(item, "00100020"),
                )
            )
        return studies

    def _instances(self, study_uid: str) -> list[_Instance]:
        items = self._paged(
            "QIDO-RS search for the study's instances",
            lambda limit, offset: self._client.search_for_instances(
                study_instance_uid=study_uid, fields=list(_QIDO_INSTANCE_FIELDS), limit=limit, offset=offset
            ),
            key="00080018",
        )
        return [
            _Instance(
                study_uid,
                _uid(_json_text(item, "0020000E"), "SeriesInstanceUID", self.address),
                _uid(_json_text(item, "00080018"), "SOPInstanceUID", self.address),
                _json_text(item, "00080016") or "",
            )
            for item in items
        ]

    def _own_series(self, study_uid: str) -> set[str]:
        """The study's series whose Manufacturer is medvision's (QIDO-RS series search)."""
        items = self._paged(
            "QIDO-RS search for the study's series",
            lambda limit, offset: self._client.search_for_series(
                study_instance_uid=study_uid, fields=["00080070"], limit=limit, offset=offset
            ),
            key="0020000E",
        )
        return {str(_json_text(item, "0020000E")) for item in items if _json_text(item, "00080070") == MANUFACTURER}

    def _save(self, ds: Any, cache_dir: Path, study_uid: str) -> Path:
        got_study = _uid(ds.get("StudyInstanceUID"), "StudyInstanceUID", self.address)
        if got_study != study_uid:
            raise PacsError(
                str(self.address), f"WADO-RS for study {study_uid} returned an instance of study {got_study}",
                "report this to the PACS's administrator",
            )  # fmt: skip
        series = _uid(ds.get("SeriesInstanceUID"), "SeriesInstanceUID", self.address)
        sop = _uid(ds.get("SOPInstanceUID"), "SOPInstanceUID", self.address)
        path = cache_path(cache_dir, study_uid, series, sop)
        _write_atomic(path, lambda f: ds.save_as(f, enforce_file_format=False))
        self.fetched += 1
        return path

    def retrieve(self, study_uid: str, cache_dir: str | os.PathLike[str]) -> list[Path]:
        """Every instance of the study, from the cache or by WADO-RS (as stored: no transcoding asked).

        A series none of whose instances is cached comes in one request; otherwise the missing instances
        come one by one.

        Returns:
            The cached files of the study, sorted.

        Raises:
            PacsError: the study is unknown, or an instance could not be retrieved (those already written
                stay in the cache).
        """
        study_uid, root, instances, missing = _plan(self, study_uid, cache_dir)
        everything = _group_by_series(instances)
        for series, items in _group_by_series(missing).items():
            if len(items) == len(everything[series]) and len(items) > 1:
                what = f"WADO-RS retrieve of series {series}"
                self._call(
                    what,
                    lambda series=series: [
                        self._save(ds, root, study_uid)
                        for ds in self._client.iter_series(study_uid, series, media_types=_AS_STORED)
                    ],
                )
            else:
                for inst in items:
                    ds = self._call(
                        f"WADO-RS retrieve of instance {inst.sop_uid}",
                        lambda inst=inst: self._client.retrieve_instance(
                            study_uid, inst.series_uid, inst.sop_uid, media_types=_AS_STORED
                        ),
                    )
                    self._save(ds, root, study_uid)
        return _check_complete(self.address, root, instances, "WADO-RS")


def _key(inst: _Instance) -> tuple[str, str, str]:
    return inst.study_uid, inst.series_uid, inst.sop_uid


def _check_complete(address: PacsAddress, root: Path, instances: Sequence[_Instance], how: str) -> list[Path]:
    paths = [cache_path(root, *_key(i)) for i in instances]
    absent = [p for p in paths if not p.is_file()]
    if absent:
        raise PacsError(
            str(address), f"{how} delivered {len(paths) - len(absent)} of the study's {len(paths)} instances",
            "retry later (those received stay cached); if it persists, see the PACS's log",
        )  # fmt: skip
    return sorted(paths)


# --- DIMSE -------------------------------------------------------------------------------------------------


def _status_text(code: int, table: Mapping[int, tuple[str, str]]) -> str:
    name = table.get(code, ("", ""))[1]
    return f"0x{code:04X}" + (f" ({name})" if name else "")


def tls_context(ca_bundle: str | os.PathLike[str] | None) -> ssl.SSLContext:
    """A client TLS context that checks the PACS's certificate (against ``ca_bundle`` or the system's CAs)."""
    if ca_bundle is not None and not Path(ca_bundle).is_file():
        raise ConfigError(
            str(ca_bundle), "the CA bundle is not a file", "pass the PEM file of the PACS's certificate authority"
        )
    return ssl.create_default_context(cafile=None if ca_bundle is None else str(ca_bundle))


class _Refused(PacsError):
    """No association. ``permanent``: trying again will not help (an unknown AE title, no accepted context)."""

    def __init__(self, where: str, reason: str | None = None, fix: str | None = None, *, permanent: bool = True):
        super().__init__(where, reason, fix)
        self.permanent = permanent


class _Dimse:
    """An application entity for one PACS address: association set-up and its failures as PacsError."""

    def __init__(
        self,
        address: PacsAddress,
        calling_aet: str,
        ca_bundle: str | os.PathLike[str] | None,
        tls: ssl.SSLContext | None,
        timeout: float,
    ) -> None:
        if address.protocol != DIMSE:
            raise ConfigError(str(address), "is not a DIMSE address", "use dimse://AET@host:port")
        self.address = address
        self.calling_aet = check_ae_title(calling_aet, "--calling-aet")
        self.timeout = timeout
        self._tls = tls if tls is not None else (tls_context(ca_bundle) if address.tls else None)

    def associate(
        self,
        contexts: Sequence[tuple[str, Sequence[str]]],
        *,
        roles: Sequence[str] = (),
        handlers: Sequence[tuple[Any, Callable[..., Any]]] = (),
    ) -> Any:
        from pynetdicom import AE, build_role

        ae = AE(ae_title=self.calling_aet)
        for attr in ("acse_timeout", "dimse_timeout", "network_timeout", "connection_timeout"):
            setattr(ae, attr, self.timeout)
        for abstract, syntaxes in contexts:
            ae.add_requested_context(abstract, list(syntaxes))
        tls_args = (self._tls, self.address.host) if self._tls is not None else None
        assoc = ae.associate(
            self.address.host,
            self.address.port,
            ae_title=self.address.ae_title or "ANY-SCP",
            ext_neg=[build_role(uid, scp_role=True) for uid in roles] or None,
            evt_handlers=list(handlers) or None,
            tls_args=tls_args,
        )
        if assoc.is_established:
            return assoc
        raise self._refusal(assoc)

    def no_answer(self, what: str, service: str, started: float) -> str:
        """Why a request got no response: the PACS ended the association early (often: the calling AE title may
        not use the service), or the answer did not come in time."""
        if time.monotonic() - started < self.timeout * 0.9:
            return (
                f"{what}: the PACS ended the association (does it allow {service} from AE title"
                f" {self.calling_aet!r} on this host?)"
            )
        return f"{what}: no answer within {self.timeout:g} s"

    def _refusal(self, assoc: Any) -> PacsError:
        """Why no association, as a PacsError whose ``permanent`` says whether trying again can help."""
        where = str(self.address)
        answer = getattr(assoc.acceptor, "primitive", None)
        permanent = True
        if assoc.is_rejected and answer is not None:
            reason = answer.reason_str
            permanent = answer.result == 0x01
            if "Called AE" in reason:
                title = self.address.ae_title
                error = PacsError(
                    where, f"association rejected: the PACS does not know the called AE title {title!r}",
                    "use the PACS's own AE title in dimse://AET@host:port",
                )  # fmt: skip
            elif "Calling AE" in reason:
                error = PacsError(
                    where, f"association rejected: the PACS does not know medvision's AE title {self.calling_aet!r}",
                    "register this AE title (and host) with the PACS, or set --calling-aet to one it knows",
                )  # fmt: skip
            else:
                error = PacsError(
                    where, f"association rejected ({answer.result_str}, {answer.source_str}: {reason})",
                    "retry later if the rejection is transient; else see the PACS's log",
                )  # fmt: skip
        elif answer is None:
            tls = " (or the TLS handshake failed: check the CA bundle)" if self._tls is not None else ""
            error = PacsError(
                where, f"no DICOM association: connection refused, timed out or closed{tls}",
                "check the host and port, and that the PACS is running",
            )  # fmt: skip
            permanent = False
        elif not assoc.accepted_contexts:
            error = PacsError(
                where, "the PACS accepted none of the proposed presentation contexts",
                "see the PACS's log for the SOP classes and transfer syntaxes it accepts",
            )  # fmt: skip
        else:
            error = PacsError(where, "the association was aborted", "see the PACS's log")
            permanent = False
        return _Refused(error.where, error.reason, error.fix, permanent=permanent)


def _set_key(ds: Any, key: str, value: str) -> None:
    """A matching key on a C-FIND identifier, with its dictionary VR (ranges such as A-B are passed as text)."""
    from pydicom import config
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    tag = tag_for_keyword(key)
    if tag is None:
        raise ConfigError(
            "--query", f"{key!r} is not a DICOM keyword", "use keywords such as StudyDate, ModalitiesInStudy"
        )
    # A range (20261125-20261126) is longer than one DA value: no value checks on a query identifier.
    with config.disable_value_validation():
        ds.add_new(tag, dictionary_VR(tag), value)


def _storage_contexts(sop_classes: Sequence[str]) -> list[tuple[str, tuple[str, ...]]]:
    """Native syntaxes for every class, then each compressed syntax as its own context while room is left."""
    classes = list(dict.fromkeys(c for c in sop_classes if c))
    room = _MAX_CONTEXTS - 1  # the C-GET context
    contexts = [(c, _NATIVE_SYNTAXES) for c in classes[:room]]
    for syntax in _COMPRESSED_SYNTAXES:
        for c in classes:
            if len(contexts) >= room:
                return contexts
            contexts.append((c, (syntax,)))
    return contexts


class DimseSource:
    """Search with C-FIND and retrieve with C-GET (``pynetdicom``), Study Root.

    C-GET delivers the instances on the same association, so medvision needs no listening port (C-MOVE needs
    medvision's own storage SCP: not here). The storage contexts offered are those of the SOP classes the
    study's image-level C-FIND names plus :data:`DEFAULT_STORAGE_CLASSES`, each with the native syntaxes and
    the common compressed ones, so the PACS sends each instance as it stored it.

    Args:
        address: a ``dimse://AET@host:port`` (or ``dimse+tls://``) address.
        calling_aet: medvision's AE title (the PACS must know it for C-FIND and C-GET).
        ca_bundle: PEM file of the certificate authorities to trust for DICOM TLS.
        tls: a ready TLS context instead (e.g. with a client certificate); wins over ``ca_bundle``.
        timeout: seconds for the connection, the association and each DIMSE answer.
    """

    def __init__(
        self,
        address: PacsAddress,
        *,
        calling_aet: str = DEFAULT_CALLING_AET,
        ca_bundle: str | os.PathLike[str] | None = None,
        tls: ssl.SSLContext | None = None,
        timeout: float = 30.0,
    ) -> None:
        self._dimse = _Dimse(address, calling_aet, ca_bundle, tls, timeout)
        self.address = address
        self.fetched = self.skipped = 0

    def __repr__(self) -> str:
        return f"DimseSource({str(self.address)!r}, calling_aet={self._dimse.calling_aet!r})"

    def _find(self, identifier: Any, what: str) -> list[Any]:
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as Find
        from pynetdicom.status import QR_FIND_SERVICE_CLASS_STATUS

        assoc = self._dimse.associate([(str(Find), _NATIVE_SYNTAXES)])
        matches = []
        started = time.monotonic()
        try:
            for status, ident in assoc.send_c_find(identifier, Find):
                if not status or "Status" not in status:
                    raise PacsError(str(self.address), self._dimse.no_answer(what, "C-FIND", started), _LOST_FIX)
                code = int(status.Status)
                if code in (0xFF00, 0xFF01):
                    if ident is not None:
                        matches.append(ident)
                elif code == 0x0000:
                    break
                else:
                    text = _status_text(code, QR_FIND_SERVICE_CLASS_STATUS)
                    raise PacsError(
                        str(self.address),
                        f"{what} failed with status {text}",
                        "check the query keys; see the PACS's log",
                    )
        finally:
            if assoc.is_established:
                assoc.release()
        return matches

    def find_studies(self, query: Mapping[str, str]) -> list[StudyRef]:
        """Study-level C-FIND.

        Raises:
            PacsError: no association (refused connection, unknown AE title) or a failure status.
            ConfigError: a query key that is not a DICOM keyword.
        """
        from pydicom.dataset import Dataset

        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        for keyword in _QIDO_STUDY_FIELDS:
            _set_key(ds, keyword, "")
        for key, value in query.items():
            _set_key(ds, key, value)
        studies = []
        for ident in self._find(ds, "C-FIND of studies"):
            modalities = ident.get("ModalitiesInStudy") or ()
            if isinstance(modalities, str):
                modalities = [modalities]
            studies.append(
                StudyRef(
                    study_uid=_uid(ident.get("StudyInstanceUID"), "StudyInstanceUID", self.address),
                    modalities=tuple(str(m).strip() for m in modalities if str(m).strip()),
                    n_instances=_to_int(ident.get("NumberOfStudyRelatedInstances")),
                    patient_id=str(ident.get("PatientID") or "").strip() or None,
                )
            )
        return studies

    def _instances(self, study_uid: str) -> list[_Instance]:
        from pydicom.dataset import Dataset

        ds = Dataset()
        ds.QueryRetrieveLevel = "IMAGE"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = ""
        ds.SOPInstanceUID = ""
        ds.SOPClassUID = ""
        return [
            _Instance(
                study_uid,
                _uid(ident.get("SeriesInstanceUID"), "SeriesInstanceUID", self.address),
                _uid(ident.get("SOPInstanceUID"), "SOPInstanceUID", self.address),
                str(ident.get("SOPClassUID") or "").strip(),
            )
            for ident in self._find(ds, f"C-FIND of the instances of study {study_uid}")
        ]

    def _own_series(self, study_uid: str) -> set[str]:
        """The study's series whose Manufacturer is medvision's (series-level C-FIND)."""
        from pydicom.dataset import Dataset

        ds = Dataset()
        ds.QueryRetrieveLevel = "SERIES"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = ""
        ds.Manufacturer = ""
        return {
            str(ident.get("SeriesInstanceUID") or "").strip()
            for ident in self._find(ds, f"C-FIND of the series of study {study_uid}")
            if str(ident.get("Manufacturer") or "").strip() == MANUFACTURER
        }

    def retrieve(self, study_uid: str, cache_dir: str | os.PathLike[str]) -> list[Path]:
        """Every instance of the study, from the cache or by C-GET (bytes as the PACS sent them).

        The whole study in one C-GET when nothing is cached; else per series, a series with some instances
        cached asking for the missing ones only (a list of SOP Instance UIDs).

        Returns:
            The cached files of the study, sorted.

        Raises:
            PacsError: the study is unknown, the association is refused, or an instance did not arrive (those
                that did stay in the cache).
        """
        from pydicom.dataset import Dataset
        from pynetdicom import evt
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as Get
        from pynetdicom.status import QR_GET_SERVICE_CLASS_STATUS

        study_uid, root, instances, missing = _plan(self, study_uid, cache_dir)
        if not missing:
            return _check_complete(self.address, root, instances, "C-GET")
        known = {i.sop_uid: i for i in instances}
        problems: list[str] = []

        def on_store(event: Any) -> int:
            try:
                sop = str(event.request.AffectedSOPInstanceUID)
                inst = known.get(sop)
                if inst is None:  # not in the C-FIND listing (stored meanwhile): its own header says where
                    ds = event.dataset
                    inst = _Instance(
                        _uid(ds.get("StudyInstanceUID"), "StudyInstanceUID", self.address),
                        _uid(ds.get("SeriesInstanceUID"), "SeriesInstanceUID", self.address),
                        _uid(sop, "SOPInstanceUID", self.address),
                    )
                    if inst.study_uid != study_uid:
                        problems.append(f"an instance of another study ({inst.study_uid}) was sent and refused")
                        return 0xA900  # Data Set does not match SOP Class (the standard's closest refusal)
                data = event.encoded_dataset(include_meta=True)
                _write_atomic(cache_path(root, *_key(inst)), lambda f: f.write(data))
                self.fetched += 1
                return 0x0000
            except Exception as exc:  # noqa: BLE001 - the PACS gets a failure status, the caller a PacsError
                problems.append(f"{type(exc).__name__}: {exc}")
                return 0xA700  # Out of Resources

        classes = [i.sop_class for i in missing] + list(DEFAULT_STORAGE_CLASSES)
        storage = _storage_contexts(classes)
        roles = list(dict.fromkeys(c for c, _ in storage))
        assoc = self._dimse.associate(
            [(str(Get), _NATIVE_SYNTAXES), *storage], roles=roles, handlers=[(evt.EVT_C_STORE, on_store)]
        )
        gets = self._get_requests(study_uid, instances, missing, whole_study=not self.skipped)
        try:
            for level, series_uid, sops in gets:
                ds = Dataset()
                ds.QueryRetrieveLevel = level
                ds.StudyInstanceUID = study_uid
                if series_uid:
                    ds.SeriesInstanceUID = series_uid
                if sops:
                    ds.SOPInstanceUID = sops if len(sops) > 1 else sops[0]
                final = None
                started = time.monotonic()
                for status, _ident in assoc.send_c_get(ds, Get):
                    if not status or "Status" not in status:
                        problems.append(self._dimse.no_answer("C-GET", "C-GET", started))
                        break
                    final = status
                if final is not None and int(final.Status) not in (0x0000, 0xFF00):
                    code = int(final.Status)
                    failed = int(final.get("NumberOfFailedSuboperations") or 0)
                    text = _status_text(code, QR_GET_SERVICE_CLASS_STATUS)
                    problems.append(f"C-GET status {text}, {failed} sub-operation(s) failed")
                if not assoc.is_established:
                    break
        finally:
            if assoc.is_established:
                assoc.release()
        try:
            return _check_complete(self.address, root, instances, "C-GET")
        except PacsError as exc:
            if problems:
                exc = PacsError(exc.where, f"{exc.reason} ({'; '.join(dict.fromkeys(problems))})", exc.fix)
            raise exc from None

    @staticmethod
    def _get_requests(
        study_uid: str, instances: Sequence[_Instance], missing: Sequence[_Instance], whole_study: bool = True
    ) -> list[tuple[str, str | None, list[str]]]:
        """``(level, series, SOP UIDs)`` per C-GET: the study, whole series, or a series' missing instances.

        Not the whole study when some of its instances are left out (``whole_study`` false: medvision's own
        results are in it).
        """
        if whole_study and len(missing) == len(instances):
            return [("STUDY", None, [])]
        everything = _group_by_series(instances)
        out: list[tuple[str, str | None, list[str]]] = []
        for series, items in _group_by_series(missing).items():
            if len(items) == len(everything[series]):
                out.append(("SERIES", series, []))
            else:
                out.append(("IMAGE", series, [i.sop_uid for i in items]))
        return out
