"""PACS input and output: DICOMweb (QIDO-RS, WADO-RS, STOW-RS) and DIMSE (C-FIND, C-GET, C-STORE).

- :mod:`~medvision.pacs.uris`: ``dicomweb+http(s)://host:port/path`` and ``dimse://AET@host:port`` parsed into a
  :class:`PacsAddress` (never holding a credential); :class:`Credentials` from the environment or a private file.
- :mod:`~medvision.pacs.source`: :class:`DicomwebSource` and :class:`DimseSource`: ``find_studies(query)`` and
  ``retrieve(study_uid, cache_dir)`` into an on-disk cache keyed by SOP Instance UID.
- :mod:`~medvision.pacs.store`: :class:`DicomwebStore` and :class:`DimseStore`: ``send(paths)``, each instance
  confirmed, retried with backoff, one :class:`StoreOutcome` per file.

Failures on the network are :class:`~medvision.errors.PacsError`; bad addresses or credentials files are
:class:`~medvision.errors.ConfigError`. ``pynetdicom`` and ``dicomweb_client`` are imported only when used.
"""

from __future__ import annotations

from medvision.pacs.source import (
    DEFAULT_STORAGE_CLASSES,
    DicomwebSource,
    DimseSource,
    StudyRef,
    StudySource,
    cache_path,
)
from medvision.pacs.store import DicomwebStore, DimseStore, RetryPolicy, StoreOutcome
from medvision.pacs.uris import (
    DEFAULT_CALLING_AET,
    Credentials,
    PacsAddress,
    check_ae_title,
    load_credentials,
    parse_address,
    parse_query,
)

__all__ = [
    "DEFAULT_CALLING_AET",
    "DEFAULT_STORAGE_CLASSES",
    "Credentials",
    "DicomwebSource",
    "DicomwebStore",
    "DimseSource",
    "DimseStore",
    "PacsAddress",
    "RetryPolicy",
    "StoreOutcome",
    "StudyRef",
    "StudySource",
    "cache_path",
    "check_ae_title",
    "load_credentials",
    "parse_address",
    "parse_query",
]
