"""Pseudonyms for a shareable (``--deidentify``) report: names, ids, dates, UIDs, paths.

:class:`Deidentifier` replaces every identifier with a salted hash of it
(:func:`medvision.tracking.phi.salted_hash`), so the same input gets the same pseudonym everywhere in
one report (rows, pages, DICOM SR), and nobody without the salt can test a guessed identifier against
it. The salt is never written into the report. Give the same salt to two runs (``deid_salt`` of
:func:`~medvision.reporting.batch.run_report`, ``MEDVISION_REPORT_SALT`` for the CLI) to get the same
pseudonyms in both, and to let the second reuse the studies of the first.

* UIDs become ``2.25.<decimal>`` UIDs derived from the salt and the UID (valid DICOM UIDs, stable).
* Patient ids, accession numbers and other ids become ``ANON-<10 hex>``; person names ``ANON^<8 HEX>``.
* Dates are shifted by one offset (30 to 3,000 days back) drawn from the salt: intervals between the
  studies of a report are kept, the calendar dates are not.
* Paths relative to the input become ``file-<12 hex>`` plus the original suffix.
* Free text that may name the patient (reasons quoting paths) has every known identifier of the
  report replaced (:class:`~medvision.tracking.phi.PhiGuard`).

For DICOM headers (the evidence of an SR), :meth:`Deidentifier.dataset` replaces person names (VR PN),
UIDs (VR UI, except SOP class, transfer syntax and coding scheme UIDs), dates (DA, DT), the ids and
institution fields of :data:`ID_KEYWORDS` and :data:`REMOVE_KEYWORDS`, and drops private tags. This is
pseudonymisation for sharing a report, not a certified de-identification profile (DICOM PS3.15 Annex
E lists more attributes; burned-in text in pixels is not looked at).

Example:
    >>> d = Deidentifier("s3cret")
    >>> d.identifier("PAT-001") == d.identifier("PAT-001") != "PAT-001"
    True
    >>> d.uid("1.2.3.4").startswith("2.25.")
    True
"""

from __future__ import annotations

import copy
import datetime as dt
import re
from collections.abc import Iterable, Mapping
from pathlib import PurePosixPath
from typing import Any

from medvision.tracking.phi import PhiGuard, new_salt, salted_hash

__all__ = ["ID_KEYWORDS", "REMOVE_KEYWORDS", "Deidentifier"]

#: Header keywords whose values are ids: replaced by a pseudonym.
ID_KEYWORDS = (
    "PatientID",
    "OtherPatientIDs",
    "AccessionNumber",
    "StudyID",
    "IssuerOfPatientID",
    "DeviceSerialNumber",
    "MedicalRecordLocator",
    "AdmissionID",
    "RequestedProcedureID",
    "ScheduledProcedureStepID",
    "PerformedProcedureStepID",
)

#: Header keywords removed outright (addresses, institutions, free-text about the patient).
REMOVE_KEYWORDS = (
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientMotherBirthName",
    "MilitaryRank",
    "EthnicGroup",
    "PatientComments",
    "AdditionalPatientHistory",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "StationName",
    "OtherPatientIDsSequence",
    "RequestAttributesSequence",
    "ReferencedPatientSequence",
    "ReferencedStudySequence",
    "ImageComments",
    "StudyComments",
)

# UIDs that name a standard thing, not an instance: kept.
_KEEP_UIDS = frozenset({"SOPClassUID", "ReferencedSOPClassUID", "TransferSyntaxUID", "MediaStorageSOPClassUID",
                        "CodingSchemeUID", "ImplementationClassUID", "ContextUID",
                        "RelatedGeneralSOPClassUID", "OriginalSpecializedSOPClassUID"})  # fmt: skip

_ROW_ID_KEYS = ("patient_id", "accession")
_ROW_UID_KEYS = ("study_uid", "series_uid")


class Deidentifier:
    """Consistent pseudonyms for one report.

    Args:
        salt: the secret; a new random one (:func:`~medvision.tracking.phi.new_salt`) when ``None``.
    """

    def __init__(self, salt: str | None = None) -> None:
        self.salt = salt if salt else new_salt()
        self.salt_given = bool(salt)
        # One shift for the whole report, from 30 to 3,000 days back.
        self.date_shift_days = 30 + int(salted_hash("date-shift", self.salt), 16) % 2971
        self._guard = PhiGuard()
        self._replacements: dict[str, str] = {}

    def __repr__(self) -> str:  # the salt stays out of logs
        return f"Deidentifier(shift={self.date_shift_days} days)"

    # ------------------------------------------------------------------------------------------ values

    def _remember(self, original: str, pseudonym: str, *, name: bool = False) -> str:
        self._replacements.setdefault(original, pseudonym)
        self._guard.add([original], names=name)
        return pseudonym

    def identifier(self, value: Any, prefix: str = "ANON") -> str | None:
        """``ANON-<10 hex>`` for an id (``None`` and blanks stay ``None``)."""
        if value is None or not str(value).strip():
            return None
        text = str(value).strip()
        return self._remember(text, f"{prefix}-{salted_hash('id:' + text, self.salt)[:10]}")

    def name(self, value: Any) -> str | None:
        """``ANON^<8 HEX>`` for a person name."""
        if value is None or not str(value).strip():
            return None
        text = str(value).strip()
        return self._remember(text, f"ANON^{salted_hash('name:' + text, self.salt)[:8].upper()}", name=True)

    def uid(self, value: Any) -> str | None:
        """A ``2.25.<decimal>`` UID derived from the salt and ``value`` (at most 64 characters)."""
        if value is None or not str(value).strip():
            return None
        text = str(value).strip()
        digest = salted_hash("uid:" + text, self.salt) + salted_hash("uid2:" + text, self.salt)
        return self._remember(text, f"2.25.{int(digest[:30], 16)}")

    def date(self, value: Any) -> str | None:
        """A DICOM date (``YYYYMMDD``) or datetime shifted back by :attr:`date_shift_days`; other text: ``None``."""
        if value is None or not str(value).strip():
            return None
        text = str(value).strip()
        match = re.fullmatch(r"(\d{4})(\d{2})(\d{2})(.*)", text)
        if not match:
            return None
        try:
            day = dt.date(int(match[1]), int(match[2]), int(match[3]))
        except ValueError:
            return None
        shifted = (day - dt.timedelta(days=self.date_shift_days)).strftime("%Y%m%d") + match[4]
        self._remember(text[:8], shifted[:8])
        return shifted

    def path(self, value: Any) -> str | None:
        """``file-<12 hex><suffix>`` for a path relative to the input (its folders may name the patient)."""
        if value is None or not str(value).strip():
            return None
        text = str(value)
        name = PurePosixPath(text).name.lower()
        suffix = ".nii.gz" if name.endswith(".nii.gz") else PurePosixPath(name).suffix
        if not re.fullmatch(r"(\.[a-z0-9]{1,6}){0,2}", suffix):
            suffix = ""
        return f"file-{salted_hash('path:' + text, self.salt)[:12]}{suffix}"

    def key(self, value: str) -> str:
        """A study key re-hashed with the salt (the unsalted key is a plain hash of the UIDs)."""
        prefix = value.split("-", 1)[0] if "-" in value else "s"
        return f"{prefix}-{salted_hash('key:' + value, self.salt)[:12]}"

    def text(self, value: Any) -> Any:
        """Free text with every identifier seen so far replaced by its pseudonym (or ``[redacted]``)."""
        if not isinstance(value, str) or not value:
            return value
        out = value
        for original in sorted(self._replacements, key=len, reverse=True):
            if len(original) >= 4:
                out = out.replace(original, self._replacements[original])
        return self._guard.redact(out)

    def learn(self, values: Iterable[tuple[str, Any]]) -> None:
        """Register identifiers ahead of time (``(kind, value)`` with kind ``id``, ``name``, ``uid``, ``date``)."""
        for kind, value in values:
            {"id": self.identifier, "name": self.name, "uid": self.uid, "date": self.date}[kind](value)

    # ------------------------------------------------------------------------------------------ rows

    def row(self, row: Mapping[str, Any], *, source_paths: Iterable[str] = ()) -> dict[str, Any]:
        """A copy of a report row with its identifiers replaced.

        Args:
            row: a results row (see :mod:`medvision.reporting.batch`).
            source_paths: absolute paths that the row's ``reason`` may quote; replaced by the
                pseudonymised ``source``.

        Returns:
            The new row; the input row is not changed.
        """
        out = dict(row)
        source = out.get("source")
        for key in _ROW_ID_KEYS:
            out[key] = self.identifier(out.get(key))
        out["patient_name"] = self.name(out.get("patient_name"))
        for key in _ROW_UID_KEYS:
            out[key] = self.uid(out.get(key))
        out["study_date"] = self.date(out.get("study_date"))
        out["source"] = self.path(source)
        reason = out.get("reason")
        if isinstance(reason, str):
            for path in sorted({*source_paths, *([source] if source else [])}, key=len, reverse=True):
                if path and path not in (".",):
                    reason = reason.replace(str(path), out["source"] or "file")
            out["reason"] = self.text(reason)
        for key in ("study_description",):
            out[key] = self.text(out.get(key))
        return out

    # ------------------------------------------------------------------------------------------ DICOM

    def dataset(self, ds: Any) -> Any:
        """A de-identified deep copy of a pydicom ``Dataset`` (see the module docstring for what changes)."""
        out = copy.deepcopy(ds)
        out.remove_private_tags()
        for keyword in REMOVE_KEYWORDS:
            if keyword in out:
                delattr(out, keyword)
        self._walk(out)
        meta = getattr(out, "file_meta", None)
        if meta is not None and "MediaStorageSOPInstanceUID" in meta:
            meta.MediaStorageSOPInstanceUID = self.uid(meta.MediaStorageSOPInstanceUID)
        out.PatientIdentityRemoved = "YES"
        out.DeidentificationMethod = "medvision pseudonymisation (salted hashes, shifted dates)"
        return out

    def _walk(self, ds: Any) -> None:
        for elem in list(ds):
            keyword = elem.keyword
            if elem.VR == "SQ":
                for item in elem.value:
                    self._walk(item)
                continue
            if elem.value in (None, "", b""):
                continue
            if elem.VR == "PN":
                elem.value = self._multi(elem.value, self.name)
            elif elem.VR == "UI" and keyword not in _KEEP_UIDS:
                elem.value = self._multi(elem.value, self.uid)
            elif elem.VR in ("DA", "DT"):
                elem.value = self._multi(elem.value, lambda v: self.date(v) or "")
            elif keyword in ID_KEYWORDS:
                elem.value = self._multi(elem.value, self.identifier)
            elif keyword in ("PatientBirthName", "PatientMotherBirthName"):
                elem.value = ""

    @staticmethod
    def _multi(value: Any, fn: Any) -> Any:
        from pydicom.multival import MultiValue

        if isinstance(value, MultiValue | list | tuple):
            return [fn(str(v)) for v in value]
        return fn(str(value))
