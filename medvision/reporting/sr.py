"""A DICOM Structured Report per study: the model's finding, probability and boxes, as a draft.

Each report is a Comprehensive 3D SR (highdicom :class:`highdicom.sr.Comprehensive3DSR`) holding a TID
1500 Measurement Report (:class:`highdicom.sr.MeasurementReport`). It is written into the source study
(same StudyInstanceUID and patient, copied from the evidence headers) as a new series, lists the
source series and instances in its evidence (``CurrentRequestedProcedureEvidenceSequence``), and is
marked not final and not verified (``CompletionFlag`` PARTIAL, ``VerificationFlag`` UNVERIFIED): a
machine's finding is a draft until a radiologist signs it.

Content:

* Observer: a device observer whose name is the registered model's name, its model name
  ``NAME vVERSION``, its serial number the MLflow run id; every measurement group carries the
  algorithm identification (name, version, parameters ``mlflow_run_id=...``, ``threshold=...``).
* Radiographs (:func:`classification_sr`): one TID 1501 group per image with the finding type
  (SNOMED CT 233604007 Pneumonia), the calibrated probability (DCM 122157 Probability, UCUM ``1``),
  the decision at the model's threshold (Present / Absent) and the source image.
* Volumes (:func:`detection_sr`): one group for the volume (probability that a tumour is present and
  the decision), then one per box: with a FrameOfReferenceUID in the source, a TID 1410 planar ROI
  whose region is the box's cross-section through its centre as a SCOORD3D polygon in patient
  coordinates (LPS mm); otherwise a TID 1501 group. Each box carries its width (x), depth (y) and
  height (z) in mm and its score, and references the source slice nearest to its centre.

NIfTI inputs have no DICOM study to reference, so they get no SR (the report row says so): inventing
a study UID would put a report into the PACS that belongs to no study there.

UIDs of the SR series and instance are derived from the source study, series and model version, so
a re-run writes the same objects (a PACS replaces rather than duplicates them).

Example:
    >>> sr = classification_sr([header], [(header, 0.83, True)], model=model, threshold=0.4)  # doctest: +SKIP
    >>> write_sr(sr, "sr/study.dcm")  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import functools
import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medvision.constants import MANUFACTURER

__all__ = ["SR_SERIES_NUMBER", "classification_sr", "detection_sr", "nearest_instance", "write_sr"]

#: Series number of the SR series in the source study.
SR_SERIES_NUMBER = 9701

_MANUFACTURER = MANUFACTURER


def _codes() -> dict[str, Any]:
    from highdicom.sr import CodedConcept
    from pydicom.sr.codedict import codes

    return {
        "pneumonia": CodedConcept("233604007", "SCT", "Pneumonia"),
        "tumour": codes.SCT.Neoplasm,
        "probability": codes.DCM.Probability,
        "present": codes.SCT.Present,
        "absent": codes.SCT.Absent,
        "width": codes.SCT.Width,
        "depth": codes.SCT.Depth,
        "height": codes.DCM.Height,
        "no_units": CodedConcept("1", "UCUM", "no units"),
        "mm": CodedConcept("mm", "UCUM", "millimeter"),
        "chest_xray": CodedConcept("399208008", "SCT", "Plain X-ray of chest"),
        "imaging": CodedConcept("363679005", "SCT", "Imaging procedure"),
    }


def _uid(*parts: Any) -> str:
    """A ``2.25.<decimal>`` UID from a SHA-256 of ``parts`` (128 bits, as a UUID): the same parts, the same UID."""
    digest = hashlib.sha256("\x1f".join(["medvision-sr", *(str(p) for p in parts)]).encode("utf-8")).hexdigest()
    return f"2.25.{int(digest[:32], 16)}"


def _model_parts(model: Mapping[str, Any]) -> tuple[str, str, str]:
    name = str(model.get("name") or "unknown model")
    version = str(model.get("version") if model.get("version") not in (None, "") else "unknown")
    run_id = str(model.get("run_id") or "")
    return name, version, run_id


def _algorithm(model: Mapping[str, Any], threshold: float | None) -> Any:
    from highdicom.sr import AlgorithmIdentification

    name, version, run_id = _model_parts(model)
    parameters = [f"mlflow_run_id={run_id or 'unknown'}"]
    if threshold is not None:
        parameters.append(f"threshold={float(threshold):.6g}")
    return AlgorithmIdentification(name=name, version=version, parameters=parameters, manufacturer=_MANUFACTURER)


def _observation_context(model: Mapping[str, Any]) -> Any:
    from highdicom.sr import DeviceObserverIdentifyingAttributes, ObservationContext, ObserverContext
    from pydicom.sr.codedict import codes

    name, version, run_id = _model_parts(model)
    device = DeviceObserverIdentifyingAttributes(
        uid=_uid("device", name, version, run_id),
        name=name[:64],
        manufacturer_name=_MANUFACTURER,
        model_name=f"{name} v{version}"[:64],
        serial_number=(run_id or "unknown")[:64],
    )
    return ObservationContext(
        observer_device_context=ObserverContext(observer_type=codes.DCM.Device, observer_identifying_attributes=device)
    )


def _software_version() -> str:
    import medvision

    return f"medvision {medvision.__version__}"


def _decision(flagged: bool, codes: dict[str, Any]) -> Any:
    return codes["present"] if flagged else codes["absent"]


def _probability(value: float, model: Mapping[str, Any], threshold: float | None, codes: dict[str, Any]) -> Any:
    from highdicom.sr import Measurement

    return Measurement(
        name=codes["probability"],
        value=float(np.clip(value, 0.0, 1.0)),
        unit=codes["no_units"],
        algorithm_id=_algorithm(model, threshold),
    )


#: Patient and study attributes the SR copies from its first evidence header (DICOM type 2: present,
#: possibly empty); exports that leave them out get them empty.
_TYPE2 = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate",
          "StudyTime", "ReferringPhysicianName")  # fmt: skip


def _with_type2(header: Any) -> Any:
    missing = [k for k in _TYPE2 if k not in header]
    if not missing:
        return header
    out = copy.deepcopy(header)
    for keyword in missing:
        setattr(out, keyword, "")
    return out


def _document(
    evidence: Sequence[Any],
    groups: list[Any],
    referenced: Sequence[Any],
    procedure: Any,
    model: Mapping[str, Any],
) -> Any:
    from highdicom.sr import MeasurementReport

    if not evidence:
        raise ValueError("an SR needs at least one source DICOM header as evidence")
    evidence = [_with_type2(evidence[0]), *evidence[1:]]
    try:
        report = MeasurementReport(
            observation_context=_observation_context(model),
            procedure_reported=procedure,
            imaging_measurements=groups,
            referenced_images=list(referenced) or None,
        )
    except (AttributeError, KeyError, IndexError, ValueError, TypeError):
        # The image library (TID 1601) wants acquisition facts that many exports lack (PatientOrientation,
        # ImagerPixelSpacing for radiographs); the measurement groups and the evidence still reference the
        # source images, so the library is left out then.
        report = MeasurementReport(
            observation_context=_observation_context(model),
            procedure_reported=procedure,
            imaging_measurements=groups,
        )
    return _comprehensive_3d_sr(evidence, report, model)


def _comprehensive_3d_sr(evidence: list[Any], content: Any, model: Mapping[str, Any]) -> Any:
    """highdicom's document around ``content``: UIDs derived from the study and the model, an unverified draft."""
    from highdicom.sr import Comprehensive3DSR

    first = evidence[0]
    name, version, _ = _model_parts(model)
    study_uid, series_uid = str(first.StudyInstanceUID), str(first.get("SeriesInstanceUID", ""))
    return Comprehensive3DSR(
        evidence=list(evidence),
        content=content,
        series_instance_uid=_uid("series", study_uid, series_uid, name, version),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=_uid("instance", study_uid, series_uid, name, version),
        instance_number=1,
        manufacturer=_MANUFACTURER,
        is_complete=False,
        is_final=False,
        is_verified=False,
        series_description=f"AI draft: {name} v{version}"[:64],
        manufacturer_model_name=f"{name} v{version}"[:64],
        software_versions=_software_version(),
    )


def _classification_sr_reference(
    evidence: Sequence[Any],
    findings: Sequence[tuple[Any, float, bool]],
    *,
    model: Mapping[str, Any],
    threshold: float | None,
    finding: str = "pneumonia",
) -> Any:
    """:func:`classification_sr` built entirely by highdicom's constructors (about 50 ms a study).

    Kept as the reference the fast path is tested against (the written bytes must be equal) and as its
    fallback for inputs the fast path does not handle (no findings, findings outside the evidence).

    Args:
        evidence: pydicom headers of the source images (``stop_before_pixels`` is enough); the first
            gives the patient and study.
        findings: ``(header, calibrated probability, flagged)`` per image.
        model: the row's model provenance (``name``, ``version``, ``run_id``).
        threshold: the model's operating point.
        finding: ``"pneumonia"``.

    Returns:
        A :class:`highdicom.sr.Comprehensive3DSR`.
    """
    from highdicom.sr import (
        MeasurementsAndQualitativeEvaluations,
        QualitativeEvaluation,
        SourceImageForMeasurementGroup,
        TrackingIdentifier,
    )

    codes = _codes()
    concept = codes.get(finding, codes["pneumonia"])
    groups = []
    for n, (header, probability, flagged) in enumerate(findings, 1):
        groups.append(
            MeasurementsAndQualitativeEvaluations(
                tracking_identifier=TrackingIdentifier(
                    uid=_uid("tracking", header.SOPInstanceUID, *_model_parts(model)), identifier=f"{finding} image {n}"
                ),
                finding_type=concept,
                algorithm_id=_algorithm(model, threshold),
                measurements=[_probability(probability, model, threshold, codes)],
                qualitative_evaluations=[QualitativeEvaluation(name=concept, value=_decision(flagged, codes))],
                source_images=[SourceImageForMeasurementGroup.from_source_image(header)],
            )
        )
    return _document(evidence, groups, [h for h, _, _ in findings], codes["chest_xray"], model)


# --- The fast path --------------------------------------------------------------------------------------
# highdicom's Comprehensive3DSR constructor deep-copies the whole content tree, re-parses the copy into
# typed content items and walks the tree twice for the referenced images; with the per-group constructors
# (each re-validating its codes) that is ~40-50 ms a radiograph. The fast path builds the same document from
# parts, each by the highdicom constructor the reference uses:
#
# * what depends on the model only (language, observer context, procedure reported, the root and the
#   Imaging Measurements containers, a group's finding, algorithm identification, probability concept and
#   decision) is built once by highdicom and cached; each document gets its own structural copy
#   (:func:`_copy_tree`), so no Dataset is shared between two documents or with the cache;
# * what depends on the study (tracking identifier, probability value, source image, image library) is
#   built per study by highdicom, as in the reference;
# * the document is built by highdicom's Comprehensive3DSR around the root container with an empty content
#   sequence (patient and study attributes, evidence sequences and contributing equipment all come from
#   highdicom), then the content sequence is put in and parsed in place for ``content``.
#
# tests/reporting/test_sr.py checks that the written bytes equal the reference's on varied inputs.

_LIBRARY_ERRORS = (AttributeError, KeyError, IndexError, ValueError, TypeError)


def _copy_tree(ds: Any) -> Any:
    """A structural copy of a pydicom Dataset tree: new Datasets, Sequences and DataElements.

    Written by hand because pydicom offers only ``copy.deepcopy`` (~27 ms for an SR's content tree; this
    takes ~2 ms). Values that are not sequences are shared when immutable (str, numbers, UID, DS, IS,
    PersonName) and deep-copied when they are lists (``MultiValue``). Items come back as plain Datasets:
    the element content, hence the encoding, is the same.
    """
    from pydicom.dataset import Dataset
    from pydicom.multival import MultiValue
    from pydicom.sequence import Sequence as DicomSequence

    out = Dataset()
    elements = out._dict  # noqa: SLF001 - pydicom has no public way to add an element without re-validating it
    for tag, elem in ds._dict.items():  # noqa: SLF001
        new = copy.copy(elem)
        value = elem._value  # noqa: SLF001
        if elem.VR == "SQ":
            new._value = DicomSequence([_copy_tree(item) for item in value])  # noqa: SLF001
        elif isinstance(value, (MultiValue, list)):
            new._value = copy.deepcopy(value)  # noqa: SLF001
        elements[tag] = new
    return out


def _without_content(item: Any) -> Any:
    out = _copy_tree(item)
    if "ContentSequence" in out:
        del out.ContentSequence
    return out


@functools.lru_cache(maxsize=64)
def _report_parts(model_parts: tuple[str, str, str], procedure: str) -> tuple[Any, tuple[Any, ...], Any]:
    """The model's parts of a TID 1500 report, by highdicom's MeasurementReport: the root container and the
    Imaging Measurements container (both without content) and the items before the image library."""
    from highdicom.sr import MeasurementReport, MeasurementsAndQualitativeEvaluations, TrackingIdentifier

    name, version, run_id = model_parts
    model = {"name": name, "version": version, "run_id": run_id}
    placeholder = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid="1.2.3", identifier="placeholder")
    )
    report = MeasurementReport(
        observation_context=_observation_context(model),
        procedure_reported=_codes()[procedure],
        imaging_measurements=[placeholder],
    )
    root = report[0]
    *before, container = root.ContentSequence
    return _without_content(root), tuple(_copy_tree(i) for i in before), _without_content(container)


@functools.lru_cache(maxsize=256)
def _group_template(
    model_parts: tuple[str, str, str], threshold: float | None, finding: str, flagged: bool
) -> tuple[Any, tuple[Any, ...], int]:
    """A radiograph's TID 1501 group by highdicom with placeholders for the study's values: the group
    container (without content), its items after the tracking identifier, and the index of the probability."""
    from highdicom.sr import MeasurementsAndQualitativeEvaluations, QualitativeEvaluation, TrackingIdentifier

    name, version, run_id = model_parts
    model = {"name": name, "version": version, "run_id": run_id}
    codes = _codes()
    concept = codes.get(finding, codes["pneumonia"])
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid="1.2.3", identifier="placeholder"),
        finding_type=concept,
        algorithm_id=_algorithm(model, threshold),
        measurements=[_probability(0.5, model, threshold, codes)],
        qualitative_evaluations=[QualitativeEvaluation(name=concept, value=_decision(flagged, codes))],
    )
    items = list(group[0].ContentSequence)
    # highdicom puts the tracking identifier first and the source images last (appended per study).
    concepts = [str(i.ConceptNameCodeSequence[0].CodeValue) for i in items[:2]]
    if concepts != ["112039", "112040"]:
        raise RuntimeError(f"unexpected TID 1501 layout from highdicom: {concepts}")
    rest = tuple(_copy_tree(i) for i in items[2:])
    (num,) = [k for k, i in enumerate(rest) if i.ValueType == "NUM"]
    return _without_content(group[0]), rest, num


def _radiograph_group(header: Any, probability: float, flagged: bool, n: int, model: Mapping[str, Any],
                      threshold: float | None, finding: str) -> Any:  # fmt: skip
    from highdicom.sr import CodedConcept, NumContentItem, SourceImageForMeasurementGroup, TrackingIdentifier
    from pydicom.sr.codedict import codes

    parts = _model_parts(model)
    key_threshold = None if threshold is None else float(threshold)
    container, rest, num = _group_template(parts, key_threshold, finding, bool(flagged))
    group = _copy_tree(container)
    items = [_copy_tree(i) for i in rest]
    value = NumContentItem(
        name=codes.DCM.Probability,
        value=float(np.clip(probability, 0.0, 1.0)),
        unit=CodedConcept("1", "UCUM", "no units"),
        relationship_type="CONTAINS",
    )
    items[num].MeasuredValueSequence = value.MeasuredValueSequence
    tracking = TrackingIdentifier(
        uid=_uid("tracking", header.SOPInstanceUID, *parts), identifier=f"{finding} image {n}"
    )
    group.ContentSequence = [*tracking, *items, SourceImageForMeasurementGroup.from_source_image(header)]
    return group


def _document_fast(
    evidence: Sequence[Any],
    group_items: list[Any],
    referenced: Sequence[Any],
    procedure: str,
    model: Mapping[str, Any],
) -> Any:
    """:func:`_document` from cached parts (see above); ``group_items`` are the measurement groups' items."""
    from highdicom.sr import ContentSequence, ImageLibrary
    from highdicom.sr.value_types import ContentItem

    if not evidence:
        raise ValueError("an SR needs at least one source DICOM header as evidence")
    evidence = [_with_type2(evidence[0]), *evidence[1:]]
    root, before, container = _report_parts(_model_parts(model), procedure)
    try:
        library = list(ImageLibrary(list(referenced))) if referenced else []
    except _LIBRARY_ERRORS:
        library = []  # as in _document: the image library is left out when the headers lack its facts
    measurements = _copy_tree(container)
    measurements.ContentSequence = group_items
    items = [*(_copy_tree(i) for i in before), *library, measurements]
    stub = _copy_tree(root)
    stub.ContentSequence = []
    sr = _comprehensive_3d_sr(evidence, stub, model)
    # ``sr.content`` is highdicom's parsed view of the tree. Its constructor parses a deep copy; here the
    # tree is parsed in place (as highdicom's ``from_dataset(copy=False)`` does), so the document's items
    # are typed content items as in the reference, and ``sr.content`` shares them. ``_from_dataset_derived`` and
    # ``_content`` are highdicom's private parser and attribute: highdicom is pinned in pyproject.toml, and
    # tests/reporting/test_sr.py's byte-equality tests fail if a new version changes them.
    root = _copy_tree(stub)
    root.ContentSequence = items
    parsed = ContentItem._from_dataset_derived(root)
    sr.ContentSequence = parsed.ContentSequence
    sr._content = ContentSequence([parsed], is_root=True)  # noqa: SLF001
    return sr


def _references_in_evidence(evidence: Sequence[Any], referenced: Sequence[Any]) -> bool:
    """Whether every referenced image is in the evidence (highdicom refuses the document otherwise)."""
    try:
        known = {str(e.SOPInstanceUID) for e in evidence}
        return all(str(h.SOPInstanceUID) in known for h in referenced)
    except AttributeError:
        return False


def classification_sr(
    evidence: Sequence[Any],
    findings: Sequence[tuple[Any, float, bool]],
    *,
    model: Mapping[str, Any],
    threshold: float | None,
    finding: str = "pneumonia",
) -> Any:
    """The SR of a radiograph series: one measurement group per classified image.

    Built from cached highdicom parts (about 2x faster to build than building it whole, see
    ``benchmarks/bench_sr.py``); the written document is the one :func:`_classification_sr_reference`
    builds, byte for byte.

    Args:
        evidence: pydicom headers of the source images (``stop_before_pixels`` is enough); the first
            gives the patient and study.
        findings: ``(header, calibrated probability, flagged)`` per image.
        model: the row's model provenance (``name``, ``version``, ``run_id``).
        threshold: the model's operating point.
        finding: ``"pneumonia"``.

    Returns:
        A :class:`highdicom.sr.Comprehensive3DSR`.
    """
    referenced = [h for h, _, _ in findings]
    if not evidence or not findings or not _references_in_evidence(evidence, referenced):
        # The reference raises for these, with highdicom's message.
        return _classification_sr_reference(evidence, findings, model=model, threshold=threshold, finding=finding)
    group_items = [
        _radiograph_group(header, probability, flagged, n, model, threshold, finding)
        for n, (header, probability, flagged) in enumerate(findings, 1)
    ]
    return _document_fast(evidence, group_items, referenced, "chest_xray", model)


def _positions(headers: Sequence[Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """Slice positions (N, 3) in LPS mm and the slice normal, or ``None`` without geometry."""
    pos, normal = [], None
    for h in headers:
        ipp, iop = h.get("ImagePositionPatient"), h.get("ImageOrientationPatient")
        if ipp is None or iop is None or len(ipp) != 3 or len(iop) != 6:
            return None
        pos.append([float(v) for v in ipp])
        if normal is None:
            o = np.asarray([float(v) for v in iop])
            normal = np.cross(o[:3], o[3:])
    return (np.asarray(pos), normal) if normal is not None else None


def nearest_instance(headers: Sequence[Any], point_lps: Sequence[float]) -> Any | None:
    """The header of the slice whose plane is nearest to ``point_lps`` (``None`` without geometry)."""
    found = _positions(headers)
    if found is None:
        return None
    pos, normal = found
    distance = np.abs((pos - np.asarray(point_lps, dtype=np.float64)) @ normal)
    return headers[int(np.argmin(distance))]


def _ras_to_lps(points: np.ndarray) -> np.ndarray:
    out = np.array(points, dtype=np.float64)
    out[..., :2] *= -1
    return out


def _detection_groups(
    evidence: Sequence[Any],
    boxes: Sequence[Mapping[str, Any]],
    *,
    model: Mapping[str, Any],
    threshold: float | None,
    volume_score: float,
    flagged: bool,
    finding: str = "tumour",
) -> tuple[list[Any], list[Any]]:
    """The measurement groups of :func:`detection_sr` and the slices they reference."""
    from highdicom.sr import (
        ImageRegion3D,
        Measurement,
        MeasurementsAndQualitativeEvaluations,
        PlanarROIMeasurementsAndQualitativeEvaluations,
        QualitativeEvaluation,
        SourceImageForMeasurement,
        SourceImageForMeasurementGroup,
        TrackingIdentifier,
    )

    codes = _codes()
    concept = codes["tumour"]
    name, version, run_id = _model_parts(model)
    first = evidence[0]
    frame_of_reference = str(first.get("FrameOfReferenceUID", "") or "")
    groups: list[Any] = [
        MeasurementsAndQualitativeEvaluations(
            tracking_identifier=TrackingIdentifier(
                uid=_uid("tracking", first.SeriesInstanceUID, name, version, "volume"), identifier=f"{finding} volume"
            ),
            finding_type=concept,
            algorithm_id=_algorithm(model, threshold),
            measurements=[_probability(volume_score, model, threshold, codes)],
            qualitative_evaluations=[QualitativeEvaluation(name=concept, value=_decision(flagged, codes))],
        )
    ]
    referenced: dict[str, Any] = {}
    for n, box in enumerate(boxes, 1):
        world = np.asarray(box["world_mm"], dtype=np.float64).reshape(2, 3)
        lo, hi = world.min(axis=0), world.max(axis=0)
        centre = (lo + hi) / 2
        size = [float(v) for v in box.get("size_mm") or (hi - lo)]
        key_slice = nearest_instance(evidence, _ras_to_lps(centre))
        refs = [SourceImageForMeasurement.from_source_image(key_slice)] if key_slice is not None else None
        if key_slice is not None:
            referenced[str(key_slice.SOPInstanceUID)] = key_slice

        def num(code: Any, value: float, unit: Any, refs: Any = refs) -> Any:
            return Measurement(
                name=code, value=value, unit=unit, algorithm_id=_algorithm(model, threshold), referenced_images=refs
            )

        measurements = [
            num(codes["width"], size[0], codes["mm"]),
            num(codes["depth"], size[1], codes["mm"]),
            num(codes["height"], size[2], codes["mm"]),
            num(codes["probability"], float(np.clip(box.get("score", 0.0), 0, 1)), codes["no_units"]),
        ]
        tracking = TrackingIdentifier(
            uid=_uid("tracking", first.SeriesInstanceUID, name, version, run_id, n, *world.ravel().round(3)),
            identifier=f"{finding} box {n}",
        )
        if frame_of_reference:
            corners = np.array(
                [[lo[0], lo[1]], [hi[0], lo[1]], [hi[0], hi[1]], [lo[0], hi[1]], [lo[0], lo[1]]], dtype=np.float64
            )
            polygon = _ras_to_lps(np.column_stack([corners, np.full(5, centre[2])]))
            groups.append(
                PlanarROIMeasurementsAndQualitativeEvaluations(
                    tracking_identifier=tracking,
                    referenced_region=ImageRegion3D("POLYGON", polygon, frame_of_reference),
                    finding_type=concept,
                    algorithm_id=_algorithm(model, threshold),
                    measurements=measurements,
                )
            )
        else:
            groups.append(
                MeasurementsAndQualitativeEvaluations(
                    tracking_identifier=tracking,
                    finding_type=concept,
                    algorithm_id=_algorithm(model, threshold),
                    measurements=measurements,
                    source_images=[SourceImageForMeasurementGroup.from_source_image(key_slice)]
                    if key_slice is not None
                    else None,
                )
            )
    return groups, list(referenced.values())


def detection_sr(
    evidence: Sequence[Any],
    boxes: Sequence[Mapping[str, Any]],
    *,
    model: Mapping[str, Any],
    threshold: float | None,
    volume_score: float,
    flagged: bool,
    finding: str = "tumour",
) -> Any:
    """The SR of a CT/MR series: the volume's probability and decision, then one group per box.

    Args:
        evidence: pydicom headers of the series' slices.
        boxes: ``{"world_mm": [x0, y0, z0, x1, y1, z1] (RAS mm), "size_mm": [dx, dy, dz], "score"}``.
        model: the row's model provenance.
        threshold: the model's operating point.
        volume_score: the probability that the volume holds a tumour.
        flagged: the decision at the threshold.
        finding: ``"tumour"``.

    Returns:
        A :class:`highdicom.sr.Comprehensive3DSR`.
    """
    groups, referenced = _detection_groups(
        evidence, boxes, model=model, threshold=threshold, volume_score=volume_score, flagged=flagged, finding=finding
    )
    if not evidence or not _references_in_evidence(evidence, referenced):
        return _document(evidence, groups, referenced, _codes()["imaging"], model)  # raises with highdicom's message
    return _document_fast(evidence, [item for group in groups for item in group], referenced, "imaging", model)


def _detection_sr_reference(
    evidence: Sequence[Any],
    boxes: Sequence[Mapping[str, Any]],
    *,
    model: Mapping[str, Any],
    threshold: float | None,
    volume_score: float,
    flagged: bool,
    finding: str = "tumour",
) -> Any:
    """:func:`detection_sr` built entirely by highdicom's constructors (the reference of the tests)."""
    groups, referenced = _detection_groups(
        evidence, boxes, model=model, threshold=threshold, volume_score=volume_score, flagged=flagged, finding=finding
    )
    return _document(evidence, groups, referenced, _codes()["imaging"], model)


def write_sr(sr: Any, path: str | os.PathLike[str]) -> Path:
    """Save an SR as a DICOM file (parent folders are created)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    sr.save_as(out, enforce_file_format=True)
    return out
