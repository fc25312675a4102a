"""De-identification for a shareable report: PS3.15 Basic Profile (Table E.1-1) through dicognito, consistent
pseudonyms across rows and headers, options, and the stamp that says whether identity is removed."""

from __future__ import annotations

import datetime as dt

import pydicom
import pytest
from pydicom.uid import UID

from medvision.reporting.deid import Deidentifier, DeidOptions, profile_action, profile_table
from tests.reporting.conftest import MixedFolder
from tests.reporting.phi_data import annex_e_header, keyword


def _day(text: str) -> dt.date:
    return dt.datetime.strptime(text[:8], "%Y%m%d").date()


def test_the_table_is_the_standards() -> None:
    table = profile_table()
    assert len(table) == 621  # PS3.15 Table E.1-1 rows
    assert table["00100010"].name == "Patient's Name" and table["00100010"].actions["basic"] == "Z"
    assert profile_action(0x00100010) == "Z"
    assert profile_action(0x00081030) == "X"  # Study Description
    assert profile_action(0x00081030, DeidOptions(clean_descriptors=True)) == "C"
    assert profile_action(0x00181000) == "D"  # Device Serial Number X/Z/D: the dummy keeps every IOD valid
    assert profile_action(0x00181000, DeidOptions(retain_device_identity=True)) == "K"
    assert profile_action(0x00080020) == "C" and profile_action(0x00080020, DeidOptions(retain_dates=False)) == "Z"
    assert profile_action(0x60023000) == "X"  # Overlay Data, a 60xx pattern
    assert profile_action(0x00991001) == "X"  # private
    assert profile_action(0x00280010) is None  # Rows: not an identifier


def test_same_value_same_pseudonym_other_salt_other_pseudonym() -> None:
    a, b, c = Deidentifier("salt-1"), Deidentifier("salt-1"), Deidentifier("salt-2")
    assert a.identifier("PAT-0001") == a.identifier("PAT-0001") == b.identifier("PAT-0001")
    assert a.identifier("PAT-0001") != c.identifier("PAT-0001")
    assert a.identifier("PAT-0001") != a.identifier("PAT-0002")
    assert a.identifier("PAT-0001").startswith("ANON-") and "0001" not in a.identifier("PAT-0001")
    assert a.name("Doe^Jane") == b.name("Doe^Jane") != c.name("Doe^Jane")
    assert "Doe" not in a.name("Doe^Jane") and a.name("Doe^Jane").count("^") >= 1
    assert a.identifier(None) is None and a.name("  ") is None
    assert Deidentifier().salt != Deidentifier().salt  # random when not given
    assert "salt-1" not in repr(a)


def test_uids_are_valid_and_consistent() -> None:
    d = Deidentifier("s")
    uid = d.uid("1.2.826.0.1.3680043.8.498.1")
    assert UID(uid).is_valid and uid.startswith("2.25.") and len(uid) <= 64
    assert d.uid("1.2.826.0.1.3680043.8.498.1") == uid != d.uid("1.2.826.0.1.3680043.8.498.2")


def test_dates_and_times_shift_by_one_offset_keeping_intervals() -> None:
    d = Deidentifier("s")
    first, second = d.date("20240305", "120000"), d.date("20240306", "120000")
    assert first != "20240305"
    assert (_day(second) - _day(first)).days == 1  # intervals kept
    assert 30 <= d.date_shift_days <= 3000
    moved = dt.datetime(2024, 3, 5, 12) + dt.timedelta(hours=d.offset_hours)
    assert first == moved.strftime("%Y%m%d")
    shifted = d.date("20240305123000.5")  # a DT moves with its time
    assert shifted[:10] == (dt.datetime(2024, 3, 5, 12) + dt.timedelta(hours=d.offset_hours)).strftime("%Y%m%d%H")
    assert d.date("not a date") is None
    assert Deidentifier("s", DeidOptions(retain_dates=False)).date("20240305") is None


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
        "study_description": "CHEST PA Lovelace",
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
    assert out["study_description"] is None  # removed (X) without Clean Descriptors
    cleaned = Deidentifier("s", DeidOptions(clean_descriptors=True)).row(row)
    assert cleaned["study_description"].startswith("CHEST PA") and "Lovelace" not in cleaned["study_description"]


def test_rows_and_headers_agree(mixed: MixedFolder) -> None:
    """The row of a study and the de-identified header of its images (the SR is built from it) carry the same
    pseudonyms, whatever the patient's sex (dicognito would otherwise pick names by sex)."""
    ds = pydicom.dcmread(mixed.ct_files[0], stop_before_pixels=True)
    ds.PatientSex = "F"
    d = Deidentifier("s")
    out = d.dataset(ds)
    assert ds.PatientName == "Hopper^Grace"  # the original is not changed
    assert out.PatientName == d.name("Hopper^Grace") and out.PatientID == d.identifier(ds.PatientID)
    assert out.StudyInstanceUID == d.uid(ds.StudyInstanceUID)
    assert out.SeriesInstanceUID == d.uid(ds.SeriesInstanceUID)
    assert out.SOPInstanceUID == d.uid(ds.SOPInstanceUID) == out.file_meta.MediaStorageSOPInstanceUID
    assert out.FrameOfReferenceUID == d.uid(ds.FrameOfReferenceUID)
    assert out.SOPClassUID == ds.SOPClassUID  # a class, not an identifier
    assert out.StudyDate == d.date(ds.StudyDate, ds.get("StudyTime"))
    assert out.AccessionNumber == d.identifier(ds.AccessionNumber)
    assert out.PatientIdentityRemoved == "NO"  # not stamped yet: the study's shareability decides
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"


def test_two_studies_of_one_patient_link_and_keep_their_interval(mixed: MixedFolder) -> None:
    d = Deidentifier("s")
    one = pydicom.dcmread(mixed.ct_files[0], stop_before_pixels=True)
    two = pydicom.dcmread(mixed.ct_files[0], stop_before_pixels=True)
    one.StudyDate, one.StudyTime = "20240105", "083000"
    two.StudyDate, two.StudyTime, two.StudyInstanceUID = "20240215", "083000", "1.2.826.0.1.3680043.10.543.9"
    a, b = d.dataset(one), d.dataset(two)
    assert a.PatientID == b.PatientID and a.PatientName == b.PatientName
    assert a.StudyInstanceUID != b.StudyInstanceUID
    assert (_day(b.StudyDate) - _day(a.StudyDate)).days == 41 and a.StudyTime == b.StudyTime != "083000"


@pytest.mark.parametrize(
    "options",
    [DeidOptions(), DeidOptions(retain_dates=False), DeidOptions(clean_descriptors=True, retain_device_identity=True)],
    ids=["default", "dates-removed", "descriptors-device"],
)
def test_every_table_attribute_gets_its_action(options: DeidOptions) -> None:
    """A header with every Table E.1-1 attribute pydicom knows: each one is removed, emptied, replaced, kept or
    cleaned as the table and the options say; no original value of a non-K attribute is left."""
    ds, originals = annex_e_header()
    out = Deidentifier("s", options).dataset(ds)
    header_values = {str(v) for v in originals.values() if isinstance(v, str) and len(str(v)) >= 6}
    wrong = []
    for tag, value in originals.items():
        action = profile_action(tag, options)
        elem = out.get(tag)
        now = None if elem is None else elem.value
        name = keyword(tag)
        if action == "X":
            ok = elem is None
        elif action == "K" and elem is not None and elem.VR == "SQ":
            ok = True  # kept; identifiers inside its items are still replaced (the text scan below)
        elif action == "K":
            ok = elem is not None and now == value
        elif action == "U" and elem is not None and elem.VR == "SQ":
            ok = True  # a sequence of references: its items are walked (checked by the text scan below)
        elif action == "U":
            ok = elem is not None and now != value and UID(str(now)).is_valid and str(now).startswith("2.25.")
        elif action in ("Z", "D"):
            ok = elem is not None and now != value
            if action == "D" and elem is not None and elem.VR != "SQ":
                ok = ok and now not in (None, "", b"")
        else:  # C: dates shifted, descriptors kept without any identifier of the header
            if elem is None or elem.VR == "SQ":
                ok = elem is not None
            elif elem.VR in ("DA", "DT", "TM"):
                ok = now != value
            else:
                text = str(now)
                ok = now != value or not any(v in text for v in header_values if v != value)
        if not ok:
            wrong.append(f"{name} ({action}): {value!r} -> {now!r}")
    assert not wrong, "\n".join(wrong)
    # private attributes, and values nested three deep
    assert not [e for e in out.iterall() if e.tag.is_private]
    text = str(out)
    names = [str(v).split("^")[0] for v in originals.values() if isinstance(v, str) and "^Given" in v]
    assert len(names) > 20
    for value in ("Privatename", "PHI900PRIVATE", *names):
        assert value not in text, value
    if not options.clean_descriptors:  # free text is removed, with every name it quotes
        assert "Phiname" not in text
    # the file meta moves with the dataset
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID != ds.SOPInstanceUID


def test_stamp_records_the_profile_and_options_only_when_shareable() -> None:
    d = Deidentifier("s", DeidOptions(clean_descriptors=True))
    ds = pydicom.Dataset()
    d.stamp(ds, shareable=True)
    assert ds.PatientIdentityRemoved == "YES"
    codes = [(c.CodeValue, c.CodingSchemeDesignator) for c in ds.DeidentificationMethodCodeSequence]
    assert codes == [("113100", "DCM"), ("113107", "DCM"), ("113105", "DCM")]
    assert "Basic Profile" in ds.DeidentificationMethod
    d.stamp(ds, shareable=False)
    assert ds.PatientIdentityRemoved == "NO" and "DeidentificationMethodCodeSequence" not in ds


def _report_app():
    from medvision.cli import app

    return app


def test_cli_options_need_deidentify_and_the_config_sets_them(
    mixed: MixedFolder, registered_classifier: str, tmp_path
) -> None:
    import json
    from pathlib import Path

    from typer.testing import CliRunner

    args = ["report", "--input", str(mixed.root), "--tracking-uri", registered_classifier, "--no-progress"]
    result = CliRunner().invoke(_report_app(), [*args, "--out", str(tmp_path / "a"), "--clean-descriptors"])
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "Usage: medvision report" in said, said
    assert "--clean-descriptors only applies with --deidentify" in said, said
    assert not (tmp_path / "a").exists()

    config = Path(__file__).resolve().parents[2] / "configs" / "report_deidentified.yaml"
    out = tmp_path / "b"
    result = CliRunner().invoke(_report_app(), [*args, "--out", str(out), "--config", str(config), "--remove-dates"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "results.json").read_text())
    assert report["summary"]["deidentification"] == "PS3.15 Basic Profile"  # dates removed: no option code
    radiographs = [r for r in report["rows"] if r["task"] == "classification" and r["status"] == "ok"]
    assert radiographs and all(r["study_date"] is None for r in radiographs)
    assert any(r["images"][0]["path"].endswith(".jpg") for r in radiographs if r["images"])  # the config's jpeg
    sr = pydicom.dcmread(out / radiographs[0]["sr_path"])
    assert sr.LongitudinalTemporalInformationModified == "REMOVED" and "20240305" not in str(sr)


def test_report_config_names_a_bad_key(tmp_path) -> None:
    from medvision.config import load_report_config
    from medvision.errors import ConfigError

    path = tmp_path / "r.yaml"
    path.write_text("deidentify: {enabled: true, keep_faces: true}\n")
    with pytest.raises(ConfigError, match=r"deidentify.keep_faces.*allowed here: enabled, retain_dates"):
        load_report_config(path)
