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
    from highdicom.sr import Comprehensive3DSR, MeasurementReport

    if not evidence:
        raise ValueError("an SR needs at least one source DICOM header as evidence")
    first = _with_type2(evidence[0])
    evidence = [first, *evidence[1:]]
    name, version, _ = _model_parts(model)
    study_uid, series_uid = str(first.StudyInstanceUID), str(first.get("SeriesInstanceUID", ""))
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
    return Comprehensive3DSR(
        evidence=list(evidence),
        content=report,
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


def classification_sr(
    evidence: Sequence[Any],
    findings: Sequence[tuple[Any, float, bool]],
    *,
    model: Mapping[str, Any],
    threshold: float | None,
    finding: str = "pneumonia",
) -> Any:
    """The SR of a radiograph series: one measurement group per classified image.

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
    return _document(evidence, groups, list(referenced.values()), codes["imaging"], model)


def write_sr(sr: Any, path: str | os.PathLike[str]) -> Path:
    """Save an SR as a DICOM file (parent folders are created)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    sr.save_as(out, enforce_file_format=True)
    return out
