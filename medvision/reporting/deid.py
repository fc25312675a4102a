"""De-identification of a shareable (``--deidentify``) report: DICOM PS3.15 Basic Profile, consistent pseudonyms.

What is done to a DICOM header (:meth:`Deidentifier.dataset`, used on every header whose values reach the
report: the evidence of each SR, the header of each secondary capture):

1. The Basic Application Level Confidentiality Profile, attribute by attribute, from the standard's own
   table (PS3.15 Table E.1-1, 621 attributes, shipped as ``data/ps3_15_table_e1_1.csv``): ``X`` removed,
   ``Z`` emptied, ``D`` replaced by a dummy, ``U`` replaced by a consistent UID, ``K`` kept, ``C`` cleaned;
   private attributes, curves and overlays removed. Where the table gives a choice that depends on the
   IOD (``X/Z``, ``X/D``, ``Z/D``, ``X/Z/D``, ``X/Z/U*``), the one that keeps any IOD valid is taken
   (``D`` over ``Z`` over ``X``), so the objects written from these headers still pass ``dciodvfy``.
2. The replacements come from **dicognito** (:mod:`dicognito`): names (VR PN), ids, UIDs (VR UI) and dates
   with their times. They are functions of the value and the salt, so the same patient gets the same
   pseudonym in every study and every file of a report (and of another report made with the same salt),
   and the rows, pages, file names, SR and SC agree. Attributes the table does not list are still caught
   by dicognito's rules by VR (every PN, UI, DA, DT), so a vendor's unknown attribute does not slip through.
3. Options (:class:`DeidOptions`, in the CLI and the config):

   * Retain Longitudinal Temporal Information with Modified Dates (default on): every date and time is
     shifted back by one offset of the report (30 to 3,000 days and 1 to 23 hours), so intervals between
     studies are kept; off, dates and times are emptied or replaced by a dummy as the table says.
   * Clean Descriptors (off): descriptions, protocol names and comments are kept with every identifier
     of the header (names, ids, dates, accession) replaced; off, they are removed.
   * Retain Device Identity (off): station name, serial numbers and device ids are kept.

   ``DeidentificationMethodCodeSequence`` lists the CID 7050 codes of the profile and the options used.
4. ``PatientIdentityRemoved`` is ``YES`` only for a study whose every source image says
   ``BurnedInAnnotation`` ``NO`` (:meth:`Deidentifier.stamp`). Otherwise the report marks the study "not
   shareable: burned-in annotation" and withholds its pictures (:mod:`medvision.reporting.batch`); pixels
   are never cleaned (no Clean Pixel Data option).

Why dicognito and not deid, measured (``make bench-deid``, README "De-identification"): on a header holding
the 612 attributes of Table E.1-1 that have a Basic Profile action other than K, deid 0.4.13 with its
default recipe leaves 264 original values and deletes 293 attributes, among them every UID and date, so
the same patient gets no pseudonym (two studies cannot be linked), references between objects break, and
intervals are lost; dicognito 0.19.0 leaves 285 but keeps every UID valid and consistent, gives the same
patient the same pseudonym across studies, keeps the interval between studies, and is about 1.7 times
faster. Neither applies the whole table, so medvision takes dicognito's consistent replacements and puts
the table in front of them (step 1): 0 original values left, a little faster than dicognito alone.

The salt (``MEDVISION_REPORT_SALT`` for the CLI, ``deidentify.salt`` of the
:class:`~medvision.config.ReportConfig` that :func:`~medvision.reporting.batch.run_report` takes) is never
written into the report; without one a random salt is drawn for each report, so its pseudonyms cannot be
linked to another report's.

Example:
    >>> d = Deidentifier("s3cret")
    >>> d.identifier("PAT-001") == d.identifier("PAT-001") != "PAT-001"
    True
    >>> d.uid("1.2.3.4").startswith("2.25.")
    True
"""

from __future__ import annotations

import copy
import csv
import datetime as dt
import functools
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import PurePosixPath
from typing import Any

from medvision.tracking.phi import PhiGuard, new_salt, salted_hash

__all__ = ["PROFILE_CODES", "DeidOptions", "Deidentifier", "profile_action", "profile_table"]

#: CID 7050 codes (scheme DCM) of the profile and of each option.
PROFILE_CODES = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "retain_dates": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "clean_descriptors": ("113105", "Clean Descriptors Option"),
    "retain_device_identity": ("113109", "Retain Device Identity Option"),
}

#: Table E.1-1 column of each option.
_OPTION_COLUMNS = {
    "retain_dates": "modified_dates",
    "clean_descriptors": "clean_descriptors",
    "retain_device_identity": "device_identity",
}

NOT_SHAREABLE = "not shareable: burned-in annotation"

_ID_PREFIX = "ANON"
_TEXT_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC", "CS", "AE", "UR", "AS"})
_NUMBER_VRS = {"DS": "0", "IS": "0"}
_BINARY_VRS = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"})
_DUMMY_DATE = {"DA": "19000101", "DT": "19000101000000", "TM": "000000"}
_DUMMY_TEXT = "ANONYMIZED"
# Instance UIDs of standard things (classes, syntaxes, coding schemes), not of a patient's data.
_KEEP_UID_SUFFIXES = ("ClassUID", "SyntaxUID")
_KEEP_UIDS = frozenset({"CodingSchemeUID", "ImplementationClassUID", "ContextUID", "ContextGroupExtensionCreatorUID",
                        "MappingResourceUID", "TemplateExtensionCreatorUID"})  # fmt: skip


@dataclass(frozen=True)
class DeidOptions:
    """The PS3.15 options a de-identified report applies (see the module docstring).

    Attributes:
        retain_dates: Retain Longitudinal Temporal Information with Modified Dates (shift all dates).
        clean_descriptors: keep descriptions and comments, cleaned of the header's identifiers.
        retain_device_identity: keep station names, device serial numbers and ids.
    """

    retain_dates: bool = True
    clean_descriptors: bool = False
    retain_device_identity: bool = False

    def enabled(self) -> list[str]:
        """The names of the options that are on, in :data:`PROFILE_CODES` order."""
        return [name for name in _OPTION_COLUMNS if getattr(self, name)]

    def codes(self) -> list[tuple[str, str]]:
        """``(code value, meaning)`` of the profile and each option used (CID 7050, scheme DCM)."""
        return [PROFILE_CODES["basic"], *(PROFILE_CODES[name] for name in self.enabled())]

    def describe(self) -> str:
        """One line for ``DeidentificationMethod`` (at most 64 characters) and the report."""
        short = {"retain_dates": "modified dates", "clean_descriptors": "clean descriptors",
                 "retain_device_identity": "device identity"}  # fmt: skip
        text = "PS3.15 Basic Profile" + "".join(f"; {short[name]}" for name in self.enabled())
        return text[:64]


# ---------------------------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class _Row:
    name: str
    actions: Mapping[str, str]


@functools.cache
def profile_table() -> dict[str, _Row]:
    """PS3.15 Table E.1-1 by tag (8 upper-case hex digits, or a pattern with ``x`` for any hex digit).

    Returns:
        ``{tag: row}``; ``row.actions`` maps ``basic`` and each option column to its action code.
    """
    text = resources.files("medvision.reporting").joinpath("data/ps3_15_table_e1_1.csv").read_text("utf-8")
    reader = csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    table: dict[str, _Row] = {}
    for record in reader:
        tag = record.pop("tag")
        name = record.pop("name")
        table[tag] = _Row(name, {key: value for key, value in record.items() if value})
    return table


@functools.cache
def _patterns() -> list[tuple[re.Pattern[str], str]]:
    return [(re.compile(tag.replace("x", "[0-9A-F]")), tag) for tag in profile_table() if "x" in tag]


def _resolve(action: str) -> str:
    """One action for a table entry that offers several (the one that keeps every IOD valid)."""
    if "/" not in action:
        return action.rstrip("*")
    choices = [part.rstrip("*") for part in action.split("/")]
    for choice in ("U", "D", "Z", "X"):
        if choice in choices:
            return choice
    return choices[0]


def profile_action(tag: int, options: DeidOptions = DeidOptions()) -> str | None:
    """The action for one attribute: ``X``, ``Z``, ``D``, ``U``, ``K`` or ``C``; ``None`` when Table E.1-1
    does not list it (private attributes: ``X``).

    Args:
        tag: the attribute's tag as an int (``0x00100010``).
        options: the options in use; an option's action replaces the Basic Profile's.
    """
    if (tag >> 16) % 2 == 1:
        return "X"  # private attributes (no Retain Safe Private option)
    key = f"{tag:08X}"
    row = profile_table().get(key)
    if row is None:
        for pattern, pattern_tag in _patterns():
            if pattern.fullmatch(key):
                row = profile_table()[pattern_tag]
                break
    if row is None:
        return None
    action = row.actions["basic"]
    for name, column in _OPTION_COLUMNS.items():
        if getattr(options, name) and column in row.actions:
            action = row.actions[column]
    return _resolve(action)


# ---------------------------------------------------------------------------------------------- dicognito


class _Engine:
    """dicognito's element anonymizers, arranged under the PS3.15 table (see the module docstring)."""

    def __init__(self, salt: str, offset_hours: int, options: DeidOptions, deid: Deidentifier) -> None:
        from dicognito.anonymizer import Anonymizer
        from dicognito.datetimeanonymizer import DateTimeAnonymizer
        from dicognito.element_anonymizer import ElementAnonymizer
        from dicognito.idanonymizer import IDAnonymizer
        from dicognito.pnanonymizer import PNAnonymizer
        from dicognito.randomizer import Randomizer
        from pydicom.dataset import Dataset

        randomizer = Randomizer(salt)
        self.options = options
        self.anonymizer = Anonymizer(id_prefix=f"{_ID_PREFIX}-", seed=salt)
        self.dates = DateTimeAnonymizer(offset_hours)
        self.ids = IDAnonymizer(randomizer, f"{_ID_PREFIX}-", "", "PatientID")
        names = PNAnonymizer(randomizer)
        self.names = names
        engine = self

        class SexNeutralNames(ElementAnonymizer):
            """dicognito's names, chosen without PatientSex: a patient's pseudonym is then the same in the
            rows (which have no sex) and in the headers."""

            def __call__(self, dataset: Any, data_element: Any) -> bool:
                return names(Dataset(), data_element) if data_element.VR == "PN" else False

            def describe_actions(self) -> Any:
                yield from names.describe_actions()

        class Profile(ElementAnonymizer):
            """PS3.15 Table E.1-1, before dicognito's rules by VR."""

            def __call__(self, dataset: Any, data_element: Any) -> bool:
                return engine.profile(dataset, data_element)

            def describe_actions(self) -> Any:
                yield "Apply DICOM PS3.15 Table E.1-1 (Basic Application Level Confidentiality Profile)"

        class Uids(ElementAnonymizer):
            """dicognito's salted hash of the UID, written under the UUID arc (``2.25.<int>``, PS3.5 B.2): dicognito's
            own ``2.<int>`` sits directly under the joint ISO/ITU-T root, which allocates no such arc."""

            def __call__(self, dataset: Any, data_element: Any) -> bool:
                return engine.new_uid(data_element)

            def describe_actions(self) -> Any:
                yield "Replace all UI elements (not class or syntax UIDs) with 2.25 UIDs from the salt"

        # add_element_handler puts a handler first: the table, then dicognito's dates with our offset, then
        # sex-neutral names and 2.25 UIDs, then dicognito's own pipeline (ids, addresses, equipment).
        self.anonymizer.add_element_handler(Uids())
        self.anonymizer.add_element_handler(SexNeutralNames())
        self.anonymizer.add_element_handler(self.dates)
        self.anonymizer.add_element_handler(Profile())
        self.deid = deid
        self.offset_hours = offset_hours
        self._id_anonymizer = IDAnonymizer
        self._id_handlers: dict[str, Any] = {"PatientID": self.ids}
        self._randomizer = randomizer

    # ------------------------------------------------------------------------------------------ one element

    def profile(self, dataset: Any, elem: Any) -> bool:
        """Apply the table's action to one element; ``False`` hands it on to dicognito."""
        tag = int(elem.tag)
        if tag >> 16 == 0x0002 and elem.keyword not in ("MediaStorageSOPInstanceUID",):
            return True  # file meta: syntax and class UIDs, implementation: not about the patient
        action = profile_action(tag, self.options)
        vr = elem.VR
        if action is None:
            if vr in ("DA", "DT", "TM") and not self.options.retain_dates:
                elem.value = ""
                return True
            if vr == "TM" and self.options.retain_dates:
                return self._lone_time(dataset, elem)
            return False
        if action == "X":
            del dataset[elem.tag]
            return True
        if elem.value in (None, "", b"") and vr != "SQ":
            return True  # nothing to replace (dicognito would make a pseudonym of the empty string)
        if action == "K":
            return True
        if action == "U" or (action == "D" and vr == "UI"):
            return self.new_uid(elem, force=True) if vr == "UI" else False
        if vr == "SQ":
            if action == "Z":
                elem.value = []
                return True
            return False  # D or C: kept, and its items are walked
        if action == "C":
            if vr in ("DA", "DT"):
                return False  # dicognito shifts it (and the time that goes with a date)
            if vr == "TM":
                return self._lone_time(dataset, elem)
            if vr in ("OB", "OW", "UN"):
                elem.value = bytes(len(elem.value))  # a binary timestamp: zeros (it cannot be shifted in place)
                return True
            if elem.keyword == "TimezoneOffsetFromUTC":
                elem.value = "+0000"  # the shifted times are not tied to a real place and day
                return True
            elem.value = self._clean(elem.value)
            return True
        if action == "Z":
            if vr == "PN":
                return False  # a consistent pseudonym is a valid Z dummy; it links the patient's studies
            if self._is_id(elem):
                return self._replace_id(dataset, elem)
            elem.value = b"" if vr in ("OB", "OW", "UN") else ("" if vr not in _BINARY_VRS else None)
            return True
        # D: a dummy value consistent with the VR
        if vr == "PN":
            return False
        if vr in _DUMMY_DATE:
            if self.options.retain_dates and vr != "TM":
                return False
            elem.value = _DUMMY_DATE[vr]
            return True
        if self._is_id(elem):
            return self._replace_id(dataset, elem)
        if vr in _TEXT_VRS:
            elem.value = _DUMMY_TEXT if vr != "AS" else "000D"
        elif vr in _NUMBER_VRS:
            elem.value = _NUMBER_VRS[vr]
        elif vr in _BINARY_VRS:
            elem.value = 0
        else:
            elem.value = b"\x00\x00"
        return True

    def _replace_id(self, dataset: Any, elem: Any) -> bool:
        """dicognito's id pseudonym (a function of the value and the salt, whatever the attribute)."""
        keyword = elem.keyword
        if keyword not in self._id_handlers:
            self._id_handlers[keyword] = self._id_anonymizer(self._randomizer, f"{_ID_PREFIX}-", "", keyword)
        self._id_handlers[keyword](dataset, elem)
        return True

    @staticmethod
    def _is_id(elem: Any) -> bool:
        keyword = elem.keyword or ""
        return elem.VR in ("LO", "SH", "CS", "UC") and bool(re.search(r"(ID|IDs|Identifier|Number|Numbers)$", keyword))

    def new_uid(self, elem: Any, *, force: bool = False) -> bool:
        """Replace an instance UID by ``2.25.<salted md5>``; class, syntax and coding scheme UIDs are kept
        unless ``force`` (Table E.1-1 lists the attribute with U)."""
        from pydicom.multival import MultiValue

        keyword = elem.keyword or ""
        if elem.VR != "UI" or not elem.value:
            return False
        if not force and (keyword.endswith(_KEEP_UID_SUFFIXES) or keyword in _KEEP_UIDS):
            return False
        new = [f"2.25.{self._randomizer.to_int(str(v).strip())}" for v in
               (elem.value if isinstance(elem.value, MultiValue | list) else [elem.value])]  # fmt: skip
        elem.value = new if len(new) > 1 else new[0]
        return True

    def _lone_time(self, dataset: Any, elem: Any) -> bool:
        """A time without its date (dicognito shifts only times that go with a date): shifted by the hours of
        the offset, wrapping at midnight."""
        from pydicom.datadict import tag_for_keyword

        date_keyword = (elem.keyword or "").replace("Time", "Date")
        date_tag = tag_for_keyword(date_keyword) if date_keyword != elem.keyword else None
        if date_tag is not None and dataset.get(date_tag) is not None and dataset[date_tag].value:
            return False  # shifted together with its date
        if not elem.value:
            return True
        from pydicom.multival import MultiValue

        values = list(elem.value) if isinstance(elem.value, MultiValue | list) else [elem.value]
        shifted = [self._shift_time(str(v)) for v in values]
        elem.value = shifted if len(shifted) > 1 else shifted[0]
        return True

    def _shift_time(self, value: str) -> str:
        text = value.replace(":", "").strip()
        match = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(\.\d{1,6})?", text)
        if not match:
            return _DUMMY_DATE["TM"]
        hours = (int(match[1]) + self.offset_hours) % 24
        return f"{hours:02d}" + text[2:]

    def _clean(self, value: Any) -> Any:
        from pydicom.multival import MultiValue

        if isinstance(value, MultiValue | list):
            return [self.deid.text(str(v)) for v in value]
        return self.deid.text(str(value)) if value is not None else value


# ---------------------------------------------------------------------------------------------- the facade


class Deidentifier:
    """Consistent pseudonyms and the PS3.15 Basic Profile for one report.

    Args:
        salt: the secret; a new random one (:func:`~medvision.tracking.phi.new_salt`) when ``None``.
        options: the PS3.15 options (default: modified dates retained, descriptors removed, device
            identity removed).
    """

    def __init__(self, salt: str | None = None, options: DeidOptions | None = None) -> None:
        self.salt = salt if salt else new_salt()
        self.salt_given = bool(salt)
        self.options = options or DeidOptions()
        # One offset for the whole report: 30 to 3,000 days and 1 to 23 hours back (times change too).
        days = 30 + int(salted_hash("date-shift", self.salt), 16) % 2971
        hours = 1 + int(salted_hash("time-shift", self.salt), 16) % 23
        self.offset_hours = -(days * 24 + hours)
        self._engine = _Engine(self.salt, self.offset_hours, self.options, self)
        self._guard = PhiGuard()
        self._replacements: dict[str, str] = {}

    def __repr__(self) -> str:  # the salt stays out of logs
        return f"Deidentifier({self.options.describe()})"

    @property
    def date_shift_days(self) -> int:
        """Whole days of the offset (dates move back by this or one day more, depending on the time)."""
        return -self.offset_hours // 24

    # ------------------------------------------------------------------------------------------ values

    def _remember(self, original: str, pseudonym: str | None, *, name: bool = False) -> str | None:
        if pseudonym is not None:
            self._replacements.setdefault(original, pseudonym)
        self._guard.add([original], names=name)
        return pseudonym

    def _one(self, keyword: str, value: str, extra: Mapping[str, str] | None = None) -> Any:
        """The pseudonym dicognito gives ``value`` as attribute ``keyword`` (the same as in a header)."""
        from pydicom.dataset import Dataset

        ds = Dataset()
        setattr(ds, keyword, value)
        for key, other in (extra or {}).items():
            setattr(ds, key, other)
        elem = ds[keyword]
        if keyword in ("PatientID",):
            self._engine.ids(ds, elem)
        elif elem.VR == "PN":
            self._engine.names(Dataset(), elem)
        elif elem.VR == "UI":
            self._engine.new_uid(elem)
        else:
            self._engine.dates(ds, elem)
        return ds[keyword].value

    def identifier(self, value: Any) -> str | None:
        """``ANON-<7 characters>`` for an id, as dicognito writes it in headers (``None`` stays ``None``)."""
        if value is None or not str(value).strip():
            return None
        text = str(value).strip()
        return self._remember(text, str(self._one("PatientID", text)))

    def name(self, value: Any) -> str | None:
        """dicognito's pseudonym for a person name (a made-up name, the same in every header)."""
        if value is None or not str(value).strip():
            return None
        text = str(value).strip()
        # each part of the name on its own too: free text may quote the family name alone
        self._guard.add([part for part in re.split(r"[\^=]", text) if len(part.strip()) >= 4])
        return self._remember(text, str(self._one("PatientName", text)), name=True)

    def uid(self, value: Any) -> str | None:
        """A ``2.25.<decimal>`` UID derived from the salt and ``value`` (dicognito's, as in headers)."""
        if value is None or not str(value).strip():
            return None
        text = str(value).strip()
        return self._remember(text, str(self._one("StudyInstanceUID", text)))

    def date(self, value: Any, time: Any = None) -> str | None:
        """A DICOM date (``YYYYMMDD``) or datetime moved back by the report's offset, as in headers (a date
        with its ``time`` moves like the pair in a header); ``None`` for other text, or when dates are not
        retained."""
        if value is None or not str(value).strip():
            return None
        text = str(value).strip()
        if not re.fullmatch(r"\d{8}(\d{2,6}(\.\d{1,6})?)?([+-]\d{4})?", text):
            return None
        try:
            dt.date(int(text[:4]), int(text[4:6]), int(text[6:8]))
        except ValueError:
            return None
        self._guard.add([text[:8]])
        if not self.options.retain_dates:
            return None
        try:
            if len(text) == 8:
                extra = {"StudyTime": str(time).strip()} if time and str(time).strip() else None
                shifted = str(self._one("StudyDate", text, extra))
            else:
                shifted = str(self._one("AcquisitionDateTime", text))
        except ValueError:
            return None
        self._replacements.setdefault(text[:8], shifted[:8])
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

    def row(self, row: Mapping[str, Any], *, source_paths: Iterable[str] = (), study_time: Any = None) -> dict:
        """A copy of a report row with its identifiers replaced (as in the study's de-identified headers).

        Args:
            row: a results row (see :mod:`medvision.reporting.rows`).
            source_paths: absolute paths that the row's ``reason`` may quote; replaced by the
                pseudonymised ``source``.
            study_time: the study's StudyTime (the date moves with it, as in the headers).

        Returns:
            The new row; the input row is not changed.
        """
        out = dict(row)
        source = out.get("source")
        out["patient_id"] = self.identifier(out.get("patient_id"))
        out["accession"] = self.identifier(out.get("accession"))
        out["patient_name"] = self.name(out.get("patient_name"))
        for key in ("study_uid", "series_uid"):
            out[key] = self.uid(out.get(key))
        out["study_date"] = self.date(out.get("study_date"), study_time)
        out["source"] = self.path(source)
        reason = out.get("reason")
        if isinstance(reason, str):
            for path in sorted({*source_paths, *([source] if source else [])}, key=len, reverse=True):
                if path and path not in (".",):
                    reason = reason.replace(str(path), out["source"] or "file")
            out["reason"] = self.text(reason)
        for key in ("study_description", "series_description"):
            if key in out:
                out[key] = self.text(out.get(key)) if self.options.clean_descriptors else None
        return out

    # ------------------------------------------------------------------------------------------ DICOM

    def _learn_header(self, ds: Any) -> None:
        """Every name, id and date of a header, so that Clean Descriptors can take them out of free text."""
        from pydicom.multival import MultiValue

        def visit(dataset: Any, elem: Any) -> None:
            values = elem.value if isinstance(elem.value, MultiValue | list) else [elem.value]
            if elem.VR == "PN":
                for value in values:
                    self.name(value)
            elif elem.VR in ("DA", "DT"):
                for value in values:
                    self._guard.add([str(value)[:8]])
            elif elem.VR in ("LO", "SH") and _Engine._is_id(elem):
                for value in values:
                    self.identifier(value)

        ds.walk(visit)

    def dataset(self, ds: Any) -> Any:
        """A de-identified deep copy of a pydicom ``Dataset`` (see the module docstring), not yet stamped
        (:meth:`stamp` says whether its identity is removed)."""
        out = copy.deepcopy(ds)
        if self.options.clean_descriptors:
            self._learn_header(out)
        with warnings.catch_warnings():
            # dicognito looks for the time of each date by keyword ("LastMenstrualTime"); pydicom warns when
            # no such keyword exists. Nothing is wrong: such a date has no time to shift with it.
            warnings.filterwarnings("ignore", message=r"Invalid value '\w+' used with the 'in' operator")
            if getattr(out, "file_meta", None) is not None:
                self._engine.anonymizer.anonymize(out)
            else:
                self._anonymize_plain(out)
        self.stamp(out, shareable=False)
        return out

    def _anonymize_plain(self, ds: Any) -> None:
        from pydicom.dataset import FileMetaDataset

        ds.file_meta = FileMetaDataset()
        self._engine.anonymizer.anonymize(ds)
        del ds.file_meta

    def stamp(self, ds: Any, *, shareable: bool) -> Any:
        """Record the de-identification on an object medvision writes (see :func:`stamp`)."""
        return stamp(ds, self.options, shareable=shareable)


def stamp(ds: Any, options: DeidOptions, *, shareable: bool) -> Any:
    """Record the de-identification done with ``options`` on an object medvision writes (or on a de-identified
    header); a function of the options alone, so that the report's writer process stamps what it writes.

    ``PatientIdentityRemoved`` is ``YES`` and ``DeidentificationMethodCodeSequence`` lists the CID 7050
    codes of the profile and options only when ``shareable`` (every source image had
    ``BurnedInAnnotation`` ``NO``); otherwise ``NO`` (the header is de-identified all the same).
    ``LongitudinalTemporalInformationModified`` is ``MODIFIED`` (dates shifted) or ``REMOVED``.
    """
    from pydicom.dataset import Dataset

    ds.LongitudinalTemporalInformationModified = "MODIFIED" if options.retain_dates else "REMOVED"
    ds.PatientIdentityRemoved = "YES" if shareable else "NO"
    method = options.describe()
    ds.DeidentificationMethod = method
    if shareable:
        items = []
        for value, meaning in options.codes():
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
            items.append(item)
        ds.DeidentificationMethodCodeSequence = items
    elif "DeidentificationMethodCodeSequence" in ds:
        del ds.DeidentificationMethodCodeSequence
    return ds
