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


def _phi_header(ds: Dataset, p: int, s: int) -> list[str]:
    """Fill ``ds`` with made-up identifiers of every attribute class; return the values a scan looks for."""
    name = f"Zorblatt{p:02d}^Quintessa{p:02d}"
    pid = f"PHIPID{p:02d}X7"
    # every study date within 16 days: the report's shift (30 days or more) never lands on another original
    day = f"201903{10 + p + 8 * s:02d}"
    values = {
        "PatientName": name,
        "PatientID": pid,
        "OtherPatientIDs": f"PHIOTHER{p:02d}K",
        "PatientBirthDate": f"1953{p % 9 + 1:02d}1{p % 9}",
        "PatientAddress": f"{p} Quarkstrasse, Phitown",
        "PatientTelephoneNumbers": f"+41 79 555 {p:02d} {s:02d}",
        "AccessionNumber": f"PHIACC{p:02d}{s}Q",
        "StudyID": f"PHISTUDY{p:02d}{s}",
        "StudyDate": day,
        "StudyTime": f"1{s}{p % 6}517.12{p:02d}{s}6",
        "SeriesDate": day,
        "SeriesTime": f"1{s}{p % 6}518.13{p:02d}{s}7",
        "ContentDate": day,
        "ContentTime": f"1{s}{p % 6}519.14{p:02d}{s}8",
        "AcquisitionDateTime": f"{day}1{s}{p % 6}520.15{p:02d}{s}9",
        "InstitutionName": "Phi Memorial Infirmary",
        "InstitutionAddress": "1 Phi Road, Phitown",
        "ReferringPhysicianName": f"Drquibble{p:02d}^Ottoline",
        "OperatorsName": f"Techwhistle{s}^Bram",
        "StationName": f"PHISTN{p:02d}",
        "DeviceSerialNumber": f"PHISN{p:02d}{s}",
        "StudyDescription": f"CHEST PA for Zorblatt{p:02d} PHIDESC",
        "SeriesDescription": f"PA upright PHISERIES{p:02d}",
        "ImageComments": f"Patient Zorblatt{p:02d} was uncooperative PHICOMMENT",
        "ProtocolName": f"PHIPROTOCOL{p:02d}",
        "AdditionalPatientHistory": f"PHIHISTORY{p:02d} smoker",
    }
    for keyword_, value in values.items():
        setattr(ds, keyword_, value)
    # a sequence nested three deep, with an id, a name, a date and a UID at the bottom
    bottom = Dataset()
    bottom.PersonName = f"Deepnest{p:02d}^Olwen"
    bottom.PersonIdentificationCodeSequence = []
    bottom.ReferencedSOPInstanceUID = f"{UID_ROOT}.77.{p}.{s}"
    bottom.ObservationDateTime = f"{day}101010.11{p:02d}{s}"
    middle = Dataset()
    middle.RequestedProcedureID = f"PHIRPID{p:02d}{s}"
    middle.ReferencedStudySequence = Sequence([bottom])
    top = Dataset()
    top.RequestedProcedureDescription = f"PHIREQDESC{p:02d}"
    top.ReferencedStudySequence = Sequence([middle])
    ds.RequestAttributesSequence = Sequence([top])
    # private attributes
    block = ds.private_block(0x0029, "PHI VENDOR", create=True)
    block.add_new(0x10, "LO", f"PHIPRIVATE{p:02d}{s}")
    block.add_new(0x11, "PN", f"Privwhistle{p:02d}^Ida")
    # file meta
    ds.file_meta.SourceApplicationEntityTitle = f"PHIAE{p:02d}"
    needles = [str(v) for v in values.values()] + [
        f"Zorblatt{p:02d}",
        f"Drquibble{p:02d}",
        f"Deepnest{p:02d}",
        f"Privwhistle{p:02d}",
        str(bottom.ReferencedSOPInstanceUID),
        str(bottom.ObservationDateTime),
        str(middle.RequestedProcedureID),
        str(top.RequestedProcedureDescription),
        f"PHIPRIVATE{p:02d}{s}",
        f"PHIAE{p:02d}",
        str(ds.StudyInstanceUID),
        str(ds.SeriesInstanceUID),
        str(ds.SOPInstanceUID),
        "Phi Memorial",
        "Quarkstrasse",
    ]
    return needles


def write_phi_study_set(root: Any, *, n_patients: int = 8, size: int = 48, seed: int = 0) -> tuple[Any, list[str]]:
    """Chest radiographs (two studies per patient, half of them with a bright blob: the label) whose headers carry
    made-up identifiers in every attribute class, and the CSV manifest that training reads.

    Every image says BurnedInAnnotation NO except the first patient's second study (absent), whose pictures a
    de-identified report must withhold.

    Returns:
        ``(manifest path, the original values that must never leave)``.
    """
    import csv
    from pathlib import Path

    import numpy as np
    import pydicom

    from tests.conftest import write_dicom

    root = Path(root)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    rows, needles = [], []
    for p in range(n_patients):
        for s in range(2):
            label = int((p + s) % 2 == 0)
            img = rng.normal(1500, 120, (size, size))
            if label:
                cy, cx = rng.integers(12, size - 12, 2)
                img += 900 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 5.0**2))
            rel = Path(f"case{p:02d}") / f"study{s}" / "image.dcm"
            study_uid = f"{UID_ROOT}.5.{p}.{s}"
            write_dicom(root / rel, img.clip(0, 4095).astype(np.uint16), bits_stored=12, study_uid=study_uid)
            ds = pydicom.dcmread(root / rel)
            needles += _phi_header(ds, p, s)
            ds.BodyPartExamined = "CHEST"
            ds.PatientOrientation = ["L", "F"]  # PA: rows run to the patient's left, columns to the feet
            if (p, s) != (0, 1):
                ds.BurnedInAnnotation = "NO"
            ds.save_as(root / rel, enforce_file_format=True)
            rows.append({"image": rel.as_posix(), "label": label, "patient_id": ds.PatientID,
                         "study_uid": study_uid, "sex": "F", "age": 40 + p, "view": "PA"})  # fmt: skip
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest, sorted(set(needles))
