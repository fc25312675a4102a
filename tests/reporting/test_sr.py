"""DICOM SR per study (issue 5): read back with pydicom and highdicom, references checked against the sources."""

from __future__ import annotations

import copy
import datetime
import tempfile
import types
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from medvision.reporting import sr as sr_module
from medvision.reporting.sr import SR_SERIES_NUMBER, classification_sr, detection_sr, nearest_instance, write_sr
from tests.reporting.conftest import CT_SPACING, MixedFolder

MODEL = {"name": "pneumonia-classifier", "version": 3, "run_id": "0123456789abcdef", "uri": "models:/x@champion"}
DETECTOR = {"name": "tumor-detector", "version": 2, "run_id": "fedcba9876543210"}


def _header(path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)


def _evidence(sr: pydicom.Dataset) -> dict[str, dict[str, list[str]]]:
    """study -> series -> SOP instance UIDs listed as current evidence."""
    out: dict[str, dict[str, list[str]]] = {}
    for study in sr.CurrentRequestedProcedureEvidenceSequence:
        for series in study.ReferencedSeriesSequence:
            sops = [str(i.ReferencedSOPInstanceUID) for i in series.ReferencedSOPSequence]
            out.setdefault(str(study.StudyInstanceUID), {})[str(series.SeriesInstanceUID)] = sops
    return out


def _image_refs(items) -> set[str]:
    """SOP instance UIDs of every IMAGE content item in a content tree."""
    found: set[str] = set()
    for item in items:
        if item.ValueType == "IMAGE":
            found |= {str(r.ReferencedSOPInstanceUID) for r in item.ReferencedSOPSequence}
        if "ContentSequence" in item:
            found |= _image_refs(item.ContentSequence)
    return found


def _num(items, code) -> list[float]:
    return [float(m.value) for m in items if m.name == code]


def test_radiograph_sr_reads_back_with_references_probability_and_draft_flags(
    mixed: MixedFolder, tmp_path: Path
) -> None:
    source = mixed.radiographs[0]
    header = _header(source)
    sr = classification_sr([header], [(header, 0.8312, True)], model=MODEL, threshold=0.42)
    path = write_sr(sr, tmp_path / "sr" / "a.dcm")

    raw = pydicom.dcmread(path)
    assert raw.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert raw.CompletionFlag == "PARTIAL" and raw.VerificationFlag == "UNVERIFIED"
    assert raw.StudyInstanceUID == header.StudyInstanceUID  # filed into the source study
    assert raw.SeriesInstanceUID != header.SeriesInstanceUID and raw.SeriesNumber == SR_SERIES_NUMBER
    assert raw.PatientID == header.PatientID and raw.PatientName == header.PatientName
    assert _evidence(raw) == {
        str(header.StudyInstanceUID): {str(header.SeriesInstanceUID): [str(header.SOPInstanceUID)]}
    }

    doc = hd.sr.srread(path)
    assert isinstance(doc, hd.sr.Comprehensive3DSR)
    group = doc.content.get_image_measurement_groups()[0]
    assert group.finding_type.value == "233604007"  # SNOMED CT Pneumonia
    assert _num(group.get_measurements(), codes.DCM.Probability) == [pytest.approx(0.8312, abs=1e-6)]
    assert group.get_qualitative_evaluations()[0].value == codes.SCT.Present
    assert [s.referenced_sop_instance_uid for s in group.source_images] == [header.SOPInstanceUID]
    assert _image_refs(raw.ContentSequence) == {str(header.SOPInstanceUID)}
    observer = doc.content.get_observer_contexts()[0]
    text = str(raw)
    assert "pneumonia-classifier" in text and "0123456789abcdef" in text and "threshold=0.42" in text
    assert observer.observer_type == codes.DCM.Device


def test_the_same_inputs_give_the_same_sr_uids(mixed: MixedFolder) -> None:
    header = _header(mixed.radiographs[1])
    a = classification_sr([header], [(header, 0.1, False)], model=MODEL, threshold=0.5)
    b = classification_sr([header], [(header, 0.2, False)], model=MODEL, threshold=0.5)
    c = classification_sr([header], [(header, 0.1, False)], model={**MODEL, "version": 4}, threshold=0.5)
    assert a.SOPInstanceUID == b.SOPInstanceUID and a.SeriesInstanceUID == b.SeriesInstanceUID
    assert c.SOPInstanceUID != a.SOPInstanceUID
    group = hd.sr.Comprehensive3DSR.from_dataset(a).content.get_image_measurement_groups()[0]
    assert group.get_qualitative_evaluations()[0].value == codes.SCT.Absent


def test_volume_sr_carries_boxes_as_scoord3d_with_sizes_scores_and_key_slices(
    mixed: MixedFolder, tmp_path: Path
) -> None:
    headers = [_header(p) for p in mixed.ct_files]
    # A box around z = 5 mm (RAS; LPS z is the same): the slice at z = 2 * CT_SPACING = 4 mm is nearest.
    box = {"world_mm": [-10.0, 2.0, 3.0, 6.0, 14.0, 7.0], "size_mm": [16.0, 12.0, 4.0], "score": 0.91, "slice": 2}
    sr = detection_sr(headers, [box], model=DETECTOR, threshold=0.5, volume_score=0.91, flagged=True)
    path = write_sr(sr, tmp_path / "ct.dcm")
    raw = pydicom.dcmread(path)
    assert raw.CompletionFlag == "PARTIAL" and raw.VerificationFlag == "UNVERIFIED"
    series_uid = str(headers[0].SeriesInstanceUID)
    assert _evidence(raw) == {str(headers[0].StudyInstanceUID): {series_uid: [str(h.SOPInstanceUID) for h in headers]}}

    doc = hd.sr.srread(path)
    volume = doc.content.get_image_measurement_groups()[0]
    assert _num(volume.get_measurements(), codes.DCM.Probability) == [pytest.approx(0.91)]
    assert volume.get_qualitative_evaluations()[0].value == codes.SCT.Present
    (roi,) = doc.content.get_planar_roi_measurement_groups()
    measurements = roi.get_measurements()
    assert _num(measurements, codes.SCT.Width) == [16.0]
    assert _num(measurements, codes.SCT.Depth) == [12.0]
    assert _num(measurements, codes.DCM.Height) == [4.0]
    assert _num(measurements, codes.DCM.Probability) == [pytest.approx(0.91)]
    region = roi.roi
    assert region.value_type.value == "SCOORD3D" and region.graphic_type.value == "POLYGON"
    assert region.frame_of_reference_uid == headers[0].FrameOfReferenceUID
    polygon = region.value
    # RAS -> LPS: x and y change sign; the polygon closes and lies at the box's centre height.
    np.testing.assert_allclose(polygon[0], [10.0, -2.0, 5.0])
    np.testing.assert_allclose(polygon[2], [-6.0, -14.0, 5.0])
    np.testing.assert_allclose(polygon[0], polygon[-1])
    key = nearest_instance(headers, [0.0, 0.0, 5.0])
    assert float(key.ImagePositionPatient[2]) == pytest.approx(2 * CT_SPACING)
    # The measurements reference the key slice only (the evidence lists them all).
    assert _image_refs(raw.ContentSequence) == {str(key.SOPInstanceUID)}


def test_volume_sr_without_frame_of_reference_uses_a_measurement_group(mixed: MixedFolder) -> None:
    headers = [_header(p) for p in mixed.ct_files]
    for h in headers:
        del h.FrameOfReferenceUID
    box = {"world_mm": [0.0, 0.0, 0.0, 4.0, 4.0, 4.0], "score": 0.3}
    sr = detection_sr(headers, [box], model=DETECTOR, threshold=0.5, volume_score=0.3, flagged=False)
    doc = hd.sr.Comprehensive3DSR.from_dataset(sr)
    groups = doc.content.get_image_measurement_groups()
    assert len(groups) == 2 and not doc.content.get_planar_roi_measurement_groups()
    assert _num(groups[1].get_measurements(), codes.SCT.Width) == [4.0]
    assert groups[0].get_qualitative_evaluations()[0].value == codes.SCT.Absent
    at_2mm = next(h for h in headers if float(h.ImagePositionPatient[2]) == 2.0)  # the box centre's height
    assert [s.referenced_sop_instance_uid for s in groups[1].source_images] == [at_2mm.SOPInstanceUID]


# --- The fast path (cached highdicom parts) writes the reference's bytes -------------------------------------


class _FrozenDateTime(datetime.datetime):
    @classmethod
    def now(cls, tz=None):  # noqa: ANN001, ANN206 - the signature of datetime.now
        return cls(2026, 1, 2, 3, 4, 5, 678901, tzinfo=tz)


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """highdicom stamps creation, content and contribution times with ``now()``: fix it so bytes compare."""
    import highdicom.base
    import highdicom.base_content
    import highdicom.sr.sop

    clock = types.SimpleNamespace(
        datetime=_FrozenDateTime, date=datetime.date, time=datetime.time, timezone=datetime.timezone
    )
    for module in (highdicom.base, highdicom.base_content, highdicom.sr.sop):
        monkeypatch.setattr(module, "datetime", clock)


def _bytes(sr: pydicom.Dataset, path: Path) -> bytes:
    return write_sr(sr, path).read_bytes()


def _variant(header: pydicom.Dataset, **changes: object) -> pydicom.Dataset:
    out = copy.deepcopy(header)
    for keyword, value in changes.items():
        if value is None:
            if keyword in out:
                delattr(out, keyword)
        else:
            setattr(out, keyword, value)
    return out


def _same_series(header: pydicom.Dataset, n: int) -> list[pydicom.Dataset]:
    """``n`` images of the header's series (new SOP instance UIDs)."""
    return [_variant(header, SOPInstanceUID=generate_uid(), InstanceNumber=k + 1) for k in range(n)]


def _library_facts(header: pydicom.Dataset) -> pydicom.Dataset:
    """The header with what the TID 1601 image library needs, so the SR carries one."""
    return _variant(header, PatientOrientation=["L", "F"], ImagerPixelSpacing=[0.187, 0.187])


def _deidentified(header: pydicom.Dataset) -> pydicom.Dataset:
    return _variant(
        header,
        PatientName="ANONYMOUS^",
        PatientID="3f2a9c0d11e4",
        PatientBirthDate="",
        PatientSex="O",
        AccessionNumber="",
        StudyDate="20230101",
        StudyTime="",
        ReferringPhysicianName="",
        PatientIdentityRemoved="YES",
        DeidentificationMethod="PS3.15 basic profile",
        InstitutionName=None,
        StudyDescription=None,
    )


def _radiograph_cases(mixed: MixedFolder) -> list[tuple[str, list, list, dict, float | None]]:
    dx, cr, dx2 = (_header(p) for p in mixed.radiographs)
    several = _same_series(_library_facts(cr), 3)
    other_series = _variant(dx, SeriesInstanceUID=generate_uid(), SOPInstanceUID=generate_uid())
    lean = _variant(
        dx2,
        PatientBirthDate=None,
        PatientSex=None,
        ReferringPhysicianName=None,
        AccessionNumber=None,
        StudyID=None,
        StudyTime=None,
        SpecificCharacterSet=None,
    )
    mono1 = _library_facts(_variant(dx, PhotometricInterpretation="MONOCHROME1"))
    mono2 = _variant(cr, PhotometricInterpretation="MONOCHROME2")
    anon = _deidentified(_library_facts(dx2))
    return [
        ("DX flagged", [dx], [(dx, 0.8312, True)], MODEL, 0.42),
        ("DX not flagged", [dx], [(dx, 0.1, False)], MODEL, 0.42),
        ("CR", [cr], [(cr, 0.55, True)], MODEL, 0.5),
        ("DX with image library", [mono1], [(mono1, 0.3, False)], MODEL, 0.42),
        ("CR MONOCHROME2", [mono2], [(mono2, 0.61, True)], MODEL, 0.42),
        (
            "several images, mixed decisions",
            several,
            [(h, k / 4, k % 2 == 0) for k, h in enumerate(several)],
            MODEL,
            0.4,
        ),
        ("evidence beyond the findings", [dx, other_series], [(dx, 0.7, True)], MODEL, 0.42),
        ("header lacking optional attributes", [lean], [(lean, 0.49, False)], MODEL, 0.42),
        ("de-identified header", [anon], [(anon, 0.93, True)], MODEL, 0.42),
        ("probability clipped, numpy types", [dx], [(dx, np.float32(1.3), np.bool_(True))], MODEL, np.float64(0.3)),
        ("no threshold, sparse model", [cr], [(cr, -0.2, False)], {"name": "", "version": None}, None),
        ("another model version", [dx], [(dx, 0.8312, True)], {**MODEL, "version": 4}, 0.42),
    ]


def test_fast_radiograph_sr_writes_the_reference_bytes(mixed: MixedFolder, tmp_path: Path, frozen_clock: None) -> None:
    cases = _radiograph_cases(mixed)
    for n, (label, evidence, findings, model, threshold) in enumerate(cases):
        reference = sr_module._classification_sr_reference(evidence, findings, model=model, threshold=threshold)
        fast = classification_sr(evidence, findings, model=model, threshold=threshold)
        assert _bytes(fast, tmp_path / f"fast{n}.dcm") == _bytes(reference, tmp_path / f"ref{n}.dcm"), label
        # highdicom's parsed view of the content (``sr.content``) matches too.
        assert fast.content[0] == reference.content[0], label
        assert type(fast.content[0]) is type(reference.content[0]), label
    # A second pass (cached parts in use) writes the same bytes again.
    for n, (label, evidence, findings, model, threshold) in enumerate(cases):
        fast = classification_sr(evidence, findings, model=model, threshold=threshold)
        assert _bytes(fast, tmp_path / f"again{n}.dcm") == (tmp_path / f"ref{n}.dcm").read_bytes(), label


def test_fast_radiograph_sr_carries_the_image_library_only_when_the_headers_allow(mixed: MixedFolder) -> None:
    dx = _header(mixed.radiographs[0])
    full = _library_facts(dx)

    def library(header: pydicom.Dataset) -> bool:
        sr = classification_sr([header], [(header, 0.5, True)], model=MODEL, threshold=0.42)
        return any(item.ConceptNameCodeSequence[0].CodeValue == "111028" for item in sr.ContentSequence)

    assert library(full) and not library(_variant(full, PatientOrientation=None))


def _datasets(ds: pydicom.Dataset) -> list[int]:
    found = [id(ds)]
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                found += _datasets(item)
    return found


def test_fast_radiograph_srs_share_no_dataset_with_each_other(mixed: MixedFolder, frozen_clock: None) -> None:
    """Cached parts are copied into each document: changing one document leaves the next one as it was."""
    dx = _header(mixed.radiographs[0])
    a = classification_sr([dx], [(dx, 0.8, True)], model=MODEL, threshold=0.42)
    b = classification_sr([dx], [(dx, 0.8, True)], model=MODEL, threshold=0.42)
    assert not set(_datasets(a)) & set(_datasets(b))
    before = bytes(sr_module.write_sr(b, Path(tempfile.mkdtemp()) / "b.dcm").read_bytes())
    for item in a.ContentSequence:  # vandalise every item of the first document
        item.ConceptNameCodeSequence[0].CodeMeaning = "changed"
    c = classification_sr([dx], [(dx, 0.8, True)], model=MODEL, threshold=0.42)
    assert sr_module.write_sr(c, Path(tempfile.mkdtemp()) / "c.dcm").read_bytes() == before


def test_fast_radiograph_sr_refuses_what_the_reference_refuses(mixed: MixedFolder) -> None:
    dx, cr = _header(mixed.radiographs[0]), _header(mixed.radiographs[1])
    with pytest.raises(ValueError):
        classification_sr([dx], [], model=MODEL, threshold=0.5)
    with pytest.raises(ValueError):
        classification_sr([dx], [(cr, 0.5, True)], model=MODEL, threshold=0.5)  # finding outside the evidence
    with pytest.raises(ValueError):
        classification_sr([], [(dx, 0.5, True)], model=MODEL, threshold=0.5)


def test_fast_volume_sr_writes_the_reference_bytes(mixed: MixedFolder, tmp_path: Path, frozen_clock: None) -> None:
    headers = [_header(p) for p in mixed.ct_files]
    no_frame = [_variant(h, FrameOfReferenceUID=None) for h in headers]
    box = {"world_mm": [-10.0, 2.0, 3.0, 6.0, 14.0, 7.0], "size_mm": [16.0, 12.0, 4.0], "score": 0.91}
    other = {"world_mm": [0.0, 0.0, 0.0, 4.0, 4.0, 4.0], "score": 0.3}
    cases = [
        (headers, [box, other], 0.91, True),
        (headers, [], 0.2, False),
        (no_frame, [other], 0.3, False),
        ([_deidentified(h) for h in headers], [box], 0.7, True),
    ]
    for n, (evidence, boxes, score, flagged) in enumerate(cases):
        kwargs = {"model": DETECTOR, "threshold": 0.5, "volume_score": score, "flagged": flagged}
        reference = sr_module._detection_sr_reference(evidence, boxes, **kwargs)
        fast = detection_sr(evidence, boxes, **kwargs)
        assert _bytes(fast, tmp_path / f"fast{n}.dcm") == _bytes(reference, tmp_path / f"ref{n}.dcm"), n
