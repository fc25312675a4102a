"""Synthetic headers full of made-up identifiers, for the de-identification tests and benchmark.

:func:`annex_e_header` holds every attribute of DICOM PS3.15 Table E.1-1 that pydicom's dictionary knows,
each with a distinctive value valid for its VR, plus private attributes, a sequence nested three deep and
file meta. Every value is synthetic (no real person); each text value carries the marker ``PHI`` and a
number, each date and time is distinctive, so a byte scan of any output can tell whether it survived.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from medvision.reporting.deid import profile_table

UID_ROOT = "1.2.826.0.1.3680043.10.543"  # pydicom's example root, a sub-arc only these fixtures use


def marker_value(vr: str, n: int) -> Any:
    """A distinctive value for VR ``vr``; ``n`` makes it unique."""
    day = dt.date(1960, 1, 1) + dt.timedelta(days=37 * n + 11)
    if vr == "PN":
        return f"Phiname{n:03d}^Given{n:03d}"
    if vr in ("LO", "SH", "CS", "AE", "UC"):
        return f"PHI{n:03d}ZQ"
    if vr in ("LT", "ST", "UT"):
        return f"Free text PHI{n:03d}ZQ about Phiname{n:03d}"
    if vr == "UR":
        return f"http://example.org/PHI{n:03d}ZQ"
    if vr == "UI":
        return f"{UID_ROOT}.{n}.{7919 * n + 13}"
    if vr == "DA":
        return day.strftime("%Y%m%d")
    if vr == "TM":
        return f"{n % 24:02d}{(n * 7) % 60:02d}{(n * 13) % 60:02d}.{100000 + n:06d}"
    if vr == "DT":
        return day.strftime("%Y%m%d") + f"{n % 24:02d}{(n * 7) % 60:02d}{(n * 13) % 60:02d}.{200000 + n:06d}"
    if vr == "AS":
        return f"{n % 100:03d}Y"
    if vr in ("DS", "IS"):
        return str(90000 + n)
    if vr in ("US", "SS", "UL", "SL"):
        return 9000 + n
    if vr in ("FL", "FD"):
        return 9000.5 + n
    if vr in ("OB", "OW", "UN"):
        return f"PHI{n:03d}ZQ".encode()
    raise ValueError(vr)


def _nested(n: int) -> Sequence:
    """A sequence three deep, with names, ids, dates and UIDs at every level."""
    inner = Dataset()
    inner.PersonName = marker_value("PN", n + 2)
    inner.ReferencedSOPInstanceUID = marker_value("UI", n + 2)
    middle = Dataset()
    middle.PatientID = marker_value("LO", n + 1)
    middle.ObservationDateTime = marker_value("DT", n + 1)
    middle.ContentSequence = Sequence([inner])
    outer = Dataset()
    outer.VerifyingObserverName = marker_value("PN", n)
    outer.VerificationDateTime = marker_value("DT", n)
    outer.ContentSequence = Sequence([middle])
    return Sequence([outer])


def annex_e_header(offset: int = 0) -> tuple[Dataset, dict[int, Any]]:
    """A header with every Table E.1-1 attribute pydicom knows, and the original value of each.

    Args:
        offset: added to every marker number (two headers with different offsets share no value).

    Returns:
        ``(dataset, {tag: original value})`` for the top-level attributes set from the table.
    """
    ds = Dataset()
    originals: dict[int, Any] = {}
    for n, tag_text in enumerate(sorted(profile_table())):
        if "x" in tag_text or "-" in tag_text:
            continue
        tag = int(tag_text, 16)
        if tag >> 16 in (0x0000, 0x0002) or tag in (0xFFFAFFFA, 0xFFFCFFFC):
            continue  # command group, file meta and the trailing padding / signatures go elsewhere
        try:
            vr = dictionary_VR(tag).split(" or ")[0]
        except KeyError:
            continue
        number = n + 1 + offset
        if vr == "SQ":
            value: Any = _nested(number)
        else:
            value = marker_value(vr, number)
        ds.add_new(tag, vr, value)
        originals[tag] = value
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.Modality = "OT"
    ds.PatientSex = "F"
    # private attributes, one of them a name
    block = ds.private_block(0x0099, "MEDVISION PHI TEST", create=True)
    block.add_new(0x01, "LO", f"PHI{900 + offset:03d}PRIVATE")
    block.add_new(0x02, "PN", f"Privatename{offset:03d}^Given")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds, originals


def keyword(tag: int) -> str:
    return keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
