"""A guard that keeps patient identifiers out of MLflow, and salted hashes for pseudonyms.

Patient identifiers (patient ids, names, study/series UIDs, accession numbers) live in memory
and in the radiologist's report only. :class:`PhiGuard` holds the identifiers of the data set in
use and refuses any string headed for MLflow that contains one of them: parameter and tag
values, metric and parameter names, text artifacts. It is a safety net for mistakes (a file path
with the patient id in it, a per-patient CSV), not a de-identification tool: it finds the exact
identifiers it was given, case-insensitively, and nothing else (not a name written differently,
not a date of birth).

Matching rules, chosen to avoid false hits:

* Values shorter than 4 characters (``"M"``, ``"F"``, ``"42"``), values made of one repeated
  character, and placeholders such as ``"UNKNOWN"`` or ``"ANONYMOUS"`` are ignored.
* A hit must not be part of a longer word or number: ``P0001`` matches in ``data/P0001_1.png``
  but not in ``P00012``; the id ``1234`` does not match in ``0.1234``, and the UID ``1.2.3.4``
  does not match inside ``1.2.3.45`` or ``1.2.3.4.5``.
* DICOM person names (``Doe^Jane``) are also looked for as ``Jane Doe``, ``Doe Jane`` and
  ``Doe, Jane``.

Error messages name the parameter, tag or artifact but never the identifier.

Example:
    >>> guard = PhiGuard(["P0001", "1.2.826.0.1.3680043.8.498.1"])
    >>> guard.contains("image: data/P0001/view1.png")
    True
    >>> guard.contains("lr: 0.0001")
    False
    >>> guard.redact("data/P0001/view1.png")
    'data/[redacted]/view1.png'
    >>> salted_hash("P0001", "s3cret") == salted_hash("P0001", "s3cret")
    True
"""

from __future__ import annotations

import codecs
import hashlib
import os
import re
import secrets
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from medvision.errors import TrackingError

__all__ = ["IDENTIFIER_KEYS", "MIN_IDENTIFIER_LENGTH", "PhiGuard", "new_salt", "salted_hash"]

#: Identifiers shorter than this are ignored (sex codes, ages, small integers).
MIN_IDENTIFIER_LENGTH = 4

#: Sample (or ``sample["meta"]``) keys whose values :meth:`PhiGuard.from_items` collects, besides
#: any key that contains ``patient_name``, ``patientname`` or ``accession``.
IDENTIFIER_KEYS = frozenset(
    {
        "patient_id",
        "patientid",
        "study_uid",
        "studyinstanceuid",
        "series_uid",
        "seriesinstanceuid",
        "sop_uid",
        "sopinstanceuid",
        "accession",
        "accession_number",
        "accessionnumber",
        "patient_name",
        "patientname",
    }
)

_NAME_KEY_PARTS = ("patient_name", "patientname")
_ACCESSION_KEY_PART = "accession"

#: Values that de-identified data sets use in place of an identifier; never matched.
_PLACEHOLDERS = frozenset(
    {
        "anon",
        "anonymous",
        "anonymized",
        "anonymised",
        "deidentified",
        "de-identified",
        "none",
        "null",
        "nan",
        "n/a",
        "unknown",
        "patient",
        "redacted",
        "removed",
        "test",
        "[redacted]",
    }
)

# Not preceded by a letter or digit, nor by "<digit>." (the tail of a decimal or a longer UID);
# not followed by a letter or digit, nor by ".<digit>".
_BEFORE = r"(?<![^\W_])(?<![0-9]\.)"
_AFTER = r"(?![^\W_])(?!\.[0-9])"

_REDACTED = "[redacted]"
_CHUNK_CHARS = 4 << 20
_LOOKBEHIND_CONTEXT = 4  # >= the longest look-behind of _BEFORE ("<digit>.")
_LOOKAHEAD_CONTEXT = 2  # the longest look-ahead of _AFTER (".<digit>")
_OVERLAP_SLACK = 8


def salted_hash(value: str, salt: str) -> str:
    """A pseudonym for ``value``: the first 16 hex characters of ``sha256(salt + value)``.

    The same value and salt always give the same pseudonym; another salt gives another. Keep
    the salt out of MLflow (with it, anyone who can guess ids can test them).

    Args:
        value: The identifier.
        salt: A secret, e.g. from :func:`new_salt`.

    Returns:
        16 lowercase hex characters.

    Example:
        >>> len(salted_hash("P0001", "abc"))
        16
    """
    return hashlib.sha256((str(salt) + str(value)).encode("utf-8")).hexdigest()[:16]


def new_salt() -> str:
    """A new random salt: 32 hex characters from :func:`secrets.token_hex`."""
    return secrets.token_hex(16)


def _clean(value: Any) -> str | None:
    """The identifier as a stripped string, or ``None`` when it is too short or a placeholder."""
    if value is None or isinstance(value, bool):
        return None
    text = str(value).strip().strip("^").strip()
    if len(text) < MIN_IDENTIFIER_LENGTH or len(set(text)) == 1:
        return None
    if text.lower() in _PLACEHOLDERS or not any(c.isalnum() for c in text):
        return None
    return text


def _name_variants(name: str) -> list[str]:
    """A DICOM person name ``Family^Given^Middle`` and the ways it is commonly written out."""
    parts = [p.strip() for p in name.split("^") if p.strip()]
    variants = [name]
    if len(parts) >= 2:
        family, given = parts[0], parts[1]
        variants += [f"{given} {family}", f"{family} {given}", f"{family}, {given}", f"{family}^{given}"]
        if len(parts) >= 3:
            variants.append(" ".join([given, *parts[2:3], family]))
    return variants


def _trie_pattern(words: Iterable[str]) -> str:
    """One regular expression matching any of ``words``, organised as a trie (fast for thousands)."""
    trie: dict[str, Any] = {}
    for word in words:
        node = trie
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}

    def build(node: dict[str, Any]) -> str | None:
        if "" in node and len(node) == 1:
            return None
        singles: list[str] = []
        branches: list[str] = []
        for char in sorted(k for k in node if k):
            sub = build(node[char])
            if sub is None:
                singles.append(re.escape(char))
            else:
                branches.append(re.escape(char) + sub)
        if singles:
            branches.append(singles[0] if len(singles) == 1 else "[" + "".join(singles) + "]")
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        if "" in node:
            return "(?:" + body + ")?"
        return body

    return build(trie) or ""


class PhiGuard:
    """The identifiers of a data set, and checks that refuse any text containing one.

    Args:
        identifiers: Patient ids, names, study/series UIDs, accession numbers. Empty, very short
            (< 4 characters) and placeholder values are ignored.

    Example:
        >>> guard = PhiGuard(["P0001", "Doe^Jane", "M"])
        >>> len(guard)  # "M" is ignored; the name counts once per written form
        5
        >>> guard.check("backbone: densenet121", where="params.model.backbone")
    """

    def __init__(self, identifiers: Iterable[Any] = ()) -> None:
        self._identifiers: set[str] = set()
        self._compiled: re.Pattern[str] | None = None
        self._stale = False
        self._longest = 0
        self.add(identifiers)

    def add(self, identifiers: Iterable[Any], *, names: bool = False) -> None:
        """Add identifiers (a string is one identifier, not a sequence of characters).

        Args:
            identifiers: Values to refuse.
            names: Treat the values as DICOM person names and add their written-out forms.
        """
        if isinstance(identifiers, str):
            identifiers = [identifiers]
        for value in identifiers:
            text = _clean(value)
            if text is None:
                continue
            for variant in _name_variants(text) if names or "^" in text else [text]:
                cleaned = _clean(variant)
                if cleaned is not None:
                    self._identifiers.add(cleaned.lower())
        self._stale = True  # compiled on first use: adding many identifiers one by one stays linear

    @property
    def _regex(self) -> re.Pattern[str] | None:
        if self._stale:
            self._compile()
        return self._compiled

    def _compile(self) -> None:
        self._stale = False
        if not self._identifiers:
            self._compiled = None
            self._longest = 0
            return
        pattern = _trie_pattern(sorted(self._identifiers))
        self._compiled = re.compile(_BEFORE + "(?:" + pattern + ")" + _AFTER, re.IGNORECASE)
        self._longest = max(len(i) for i in self._identifiers)

    @classmethod
    def from_items(cls, items: Iterable[Mapping[str, Any]]) -> PhiGuard:
        """Collect the identifiers of a datalist (a list of sample dicts).

        Looks at each sample and at its ``"meta"`` dict for the keys in :data:`IDENTIFIER_KEYS`
        (compared case-insensitively: ``PatientID`` works too) and any key containing
        ``patient_name`` or ``accession``.

        Args:
            items: Sample dicts.

        Returns:
            A guard holding every identifier found.
        """
        plain: list[Any] = []
        names: list[Any] = []
        for item in items:
            for mapping in _mappings(item):
                for key, value in mapping.items():
                    lowered = str(key).lower()
                    is_name = any(part in lowered for part in _NAME_KEY_PARTS)
                    if not (is_name or lowered in IDENTIFIER_KEYS or _ACCESSION_KEY_PART in lowered):
                        continue
                    values = value if isinstance(value, list | tuple | set) else [value]
                    (names if is_name else plain).extend(values)
        guard = cls(plain)
        guard.add(names, names=True)
        return guard

    def __len__(self) -> int:
        """The number of distinct identifiers (name variants counted separately)."""
        return len(self._identifiers)

    def __repr__(self) -> str:
        return f"PhiGuard({len(self)} identifiers)"

    def find(self, text: str) -> re.Match[str] | None:
        """The first identifier in ``text`` as a regex match, or ``None``."""
        if self._regex is None or not text:
            return None
        return self._regex.search(text)

    def contains(self, text: str) -> bool:
        """Whether ``text`` contains one of the identifiers."""
        return self.find(text) is not None

    def redact(self, text: str) -> str:
        """``text`` with every identifier replaced by ``[redacted]``."""
        if self._regex is None or not text:
            return text
        return self._regex.sub(_REDACTED, text)

    def _error(self, where: str, what: str) -> TrackingError:
        return TrackingError(
            self.redact(where),
            f"a patient identifier would reach MLflow ({what} contains one); it was not logged",
            "remove or de-identify it before logging (e.g. replace ids by"
            " medvision.tracking.phi.salted_hash), or keep the file out of the run",
        )

    def check(self, text: str, where: str, *, what: str = "the value") -> None:
        """Refuse ``text`` if it contains an identifier.

        Args:
            text: The string headed for MLflow.
            where: What it is, for the error: ``params.data.path``, ``artifact eval/cases.csv``.
                Identifiers inside ``where`` itself are redacted.
            what: How the message refers to the text (``"the value"``, ``"the name"``, ``"the file"``).

        Raises:
            TrackingError: If ``text`` contains an identifier. The message never contains it.
        """
        if self.find(str(text)) is not None:
            raise self._error(where, what)

    def scan_file(self, path: str | os.PathLike[str], where: str | None = None) -> None:
        """Refuse a file whose bytes contain an identifier (UTF-8 text or ASCII inside binary).

        The file is read in 4 MiB pieces that overlap by the longest identifier, so a large CSV
        costs little memory. Binary files (a DICOM header) are searched too: undecodable bytes
        are replaced, so ASCII identifiers inside them are still found.

        Args:
            path: The file.
            where: What it is, for the error (default: the file name).

        Raises:
            TrackingError: If the file contains an identifier, or cannot be read.
        """
        file = Path(path)
        label = where or f"artifact {file.name}"
        if self._regex is None:
            return
        regex = self._regex
        try:
            for chunk, first, final in _read_chunks(file, overlap=self._longest + _OVERLAP_SLACK):
                # In a later piece the first characters only give the look-behind its context; a
                # hit ending in the last characters of a non-final piece lacks its look-ahead
                # context and is searched again, whole, in the next piece.
                match = regex.search(chunk, 0 if first else _LOOKBEHIND_CONTEXT)
                if match is not None and (final or match.end() <= len(chunk) - _LOOKAHEAD_CONTEXT):
                    raise self._error(label, "the file")
        except OSError as exc:
            raise TrackingError(
                self.redact(label), f"cannot be read to check it for patient identifiers ({exc})", None
            ) from exc


def _mappings(item: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    if not isinstance(item, Mapping):
        return
    yield item
    meta = item.get("meta")
    if isinstance(meta, Mapping):
        yield meta


def _read_chunks(path: Path, *, overlap: int) -> Iterator[tuple[str, bool, bool]]:
    """``(text, first, final)`` pieces of a file; each piece repeats the last ``overlap`` characters."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    tail = ""
    first = True
    with open(path, "rb") as handle:
        block = handle.read(_CHUNK_CHARS)
        while True:
            following = handle.read(_CHUNK_CHARS) if block else b""
            final = not following
            text = tail + decoder.decode(block, final=final)
            yield text, first, final
            if final:
                return
            first = False
            tail = text[-overlap:]
            block = following
