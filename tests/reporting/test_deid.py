"""Pseudonyms for a shareable report (issue 5, --deidentify): consistent, salted, valid DICOM."""

from __future__ import annotations

import datetime as dt

import pydicom
from pydicom.uid import UID

from medvision.reporting.deid import Deidentifier
from tests.reporting.conftest import MixedFolder


def test_same_value_same_pseudonym_other_salt_other_pseudonym() -> None:
    a, b, c = Deidentifier("salt-1"), Deidentifier("salt-1"), Deidentifier("salt-2")
    assert a.identifier("PAT-0001") == a.identifier("PAT-0001") == b.identifier("PAT-0001")
    assert a.identifier("PAT-0001") != c.identifier("PAT-0001")
    assert a.identifier("PAT-0001") != a.identifier("PAT-0002")
    assert a.identifier("PAT-0001").startswith("ANON-") and "0001" not in a.identifier("PAT-0001")
    assert a.name("Doe^Jane").startswith("ANON^") and a.name("Doe^Jane") == b.name("Doe^Jane")
    assert a.identifier(None) is None and a.name("  ") is None
    assert Deidentifier().salt != Deidentifier().salt  # random when not given
    assert "salt-1" not in repr(a)


def test_uids_are_valid_and_consistent() -> None:
    d = Deidentifier("s")
    uid = d.uid("1.2.826.0.1.3680043.8.498.1")
    assert UID(uid).is_valid and uid.startswith("2.25.") and len(uid) <= 64
    assert d.uid("1.2.826.0.1.3680043.8.498.1") == uid != d.uid("1.2.826.0.1.3680043.8.498.2")


def test_dates_shift_by_one_offset_keeping_intervals() -> None:
    d = Deidentifier("s")
    first, second = d.date("20240305"), d.date("20240306")
    assert first != "20240305"
    day = lambda text: dt.datetime.strptime(text, "%Y%m%d").date()  # noqa: E731
    assert (day(second) - day(first)).days == 1  # intervals kept
    assert (day("20240305") - day(first)).days == d.date_shift_days
    assert 30 <= d.date_shift_days <= 3000
    assert d.date("20240305123000.5")[8:] == "123000.5"  # a DT keeps its time
    assert d.date("not a date") is None


def test_paths_and_keys_lose_their_identifying_parts() -> None:
    d = Deidentifier("s")
    path = d.path("PATIENT0001/ST1/IM0001.dcm")
    assert path.startswith("file-") and path.endswith(".dcm") and "PATIENT" not in path
    assert d.path("research/BRAIN_901.nii.gz").endswith(".nii.gz")
    assert d.key("dx-0123456789ab").startswith("dx-") and d.key("dx-0123456789ab") != "dx-0123456789ab"


def test_row_copy_has_no_identifier_and_reason_paths_are_replaced() -> None:
    d = Deidentifier("s")
    row = {
        "study_key": "dx-1",
        "patient_id": "PATIENT0001",
        "patient_name": "Lovelace^Ada",
        "study_uid": "1.2.3.4.5.6",
        "accession": "ACCN0001",
        "study_date": "20240305",
        "source": "PATIENT0001/ST1/IM0001.dcm",
        "reason": "PATIENT0001/ST1/IM0001.dcm: pixel data is truncated; Ada Lovelace 1.2.3.4.5.6",
    }
    out = d.row(row)
    assert row["patient_id"] == "PATIENT0001"  # the input row is not changed
    text = repr(out)
    for value in ("PATIENT0001", "Lovelace", "1.2.3.4.5.6", "ACCN0001", "20240305"):
        assert value not in text, value
    assert out["reason"].startswith(out["source"] + ": pixel data is truncated")
    assert out["patient_id"] == d.identifier("PATIENT0001") and out["study_uid"] == d.uid("1.2.3.4.5.6")


def test_dataset_copy_replaces_names_ids_dates_and_uids(mixed: MixedFolder) -> None:
    ds = pydicom.dcmread(mixed.ct_files[0], stop_before_pixels=True)
    ds.InstitutionName = "St Elsewhere"
    ds.add_new(0x00091001, "LO", "private PATIENT")
    d = Deidentifier("s")
    out = d.dataset(ds)
    assert ds.PatientName == "Hopper^Grace"  # the original is not changed
    assert out.PatientName == d.name("Hopper^Grace") and out.PatientID == d.identifier(ds.PatientID)
    assert out.StudyInstanceUID == d.uid(ds.StudyInstanceUID)
    assert out.SeriesInstanceUID == d.uid(ds.SeriesInstanceUID)
    assert out.SOPInstanceUID == d.uid(ds.SOPInstanceUID) == out.file_meta.MediaStorageSOPInstanceUID
    assert out.FrameOfReferenceUID == d.uid(ds.FrameOfReferenceUID)
    assert out.SOPClassUID == ds.SOPClassUID  # a class, not an identifier
    assert out.StudyDate == d.date("20240306") and out.AccessionNumber == d.identifier(ds.AccessionNumber)
    assert "InstitutionName" not in out and 0x00091001 not in out
    assert out.PatientIdentityRemoved == "YES"
    text = str(out)
    for value in ("Hopper", "CTPATIENT", str(ds.StudyInstanceUID), str(ds.SOPInstanceUID), "St Elsewhere"):
        assert value not in text, value
