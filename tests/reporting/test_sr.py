"""DICOM SR per study (issue 5): read back with pydicom and highdicom, references checked against the sources."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

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
