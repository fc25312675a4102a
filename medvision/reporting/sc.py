"""A study's key picture as a DICOM Secondary Capture image, filed into the source study.

The picture the report shows first for a study (the Grad-CAM overlay beside the radiograph, or the key
slice with the detector's boxes) becomes one Secondary Capture instance (highdicom's ``SCImage``), so that a
PACS shows it next to the images it was made from: same patient and study, a series of its own
(:data:`SC_SERIES_NUMBER`), ``ImageType DERIVED\\SECONDARY``, ``BurnedInAnnotation YES`` (boxes, scores
and the heat map are burned in), the model's name and version in the series description, the source's
laterality (the picture shows the same body part), and ``LossyImageCompression 01`` when the picture was a
JPEG. Like the SR it is an unverified AI draft.

UIDs are derived from the source study and series and the model (the same inputs give the same UIDs, so
a re-run replaces rather than duplicates). A picture needs the patient orientation of its rows and columns
(DICOM's PATIENT coordinate system): the radiograph's own ``PatientOrientation``, or the radiological view
of a key slice.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medvision.reporting.sr import _MANUFACTURER, _model_parts, _software_version, _uid, _with_type2

__all__ = ["KEY_SLICE_ORIENTATION", "SC_SERIES_NUMBER", "key_picture_sc", "write_sc"]

#: Series number of the key pictures (the SRs use 9701).
SC_SERIES_NUMBER = 9702

#: Rows and columns of a key slice in radiological view: to the patient's left, to posterior.
KEY_SLICE_ORIENTATION = ("L", "P")


def key_picture_sc(
    header: Any,
    picture: str | os.PathLike[str],
    *,
    model: Mapping[str, Any],
    patient_orientation: Sequence[str] | None,
    description: str,
) -> Any:
    """The Secondary Capture of ``picture`` (PNG or JPEG) in the study of ``header``.

    Args:
        header: a pydicom header of the source series (patient and study are copied from it).
        picture: the report's picture file.
        model: the row's model provenance (``name``, ``version``, ``run_id``).
        patient_orientation: ``(row direction, column direction)``, e.g. ``("L", "F")``.
        description: what the picture shows (``DerivationDescription``).

    Raises:
        ValueError: without a patient orientation (the picture would be filed without one).
    """
    from highdicom.sc import SCImage
    from PIL import Image

    orientation = tuple(str(v) for v in patient_orientation or ())
    if len(orientation) != 2 or not all(orientation):
        raise ValueError("the source has no PatientOrientation, so the picture's orientation is unknown")
    with Image.open(picture) as img:
        lossy = img.format == "JPEG"
        pixels = np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))
    name, version, run_id = _model_parts(model)
    study_uid, series_uid = str(header.StudyInstanceUID), str(header.get("SeriesInstanceUID", ""))
    sc = SCImage.from_ref_dataset(
        ref_dataset=_with_type2(header),
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=_uid("sc-series", study_uid, series_uid, name, version),
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=_uid("sc-instance", study_uid, series_uid, name, version),
        instance_number=1,
        manufacturer=_MANUFACTURER,
        patient_orientation=orientation,
    )
    sc.ImageType = ["DERIVED", "SECONDARY"]
    _copy_laterality(header, sc)
    sc.BurnedInAnnotation = "YES"
    sc.SeriesDescription = f"AI draft picture: {name} v{version}"[:64]
    sc.DerivationDescription = f"{description} (model {name} v{version}, run {run_id or 'unknown'}; unverified)"[:1024]
    sc.ManufacturerModelName = f"{name} v{version}"[:64]
    sc.SoftwareVersions = _software_version()
    if lossy:
        sc.LossyImageCompression = "01"
    return sc


def _copy_laterality(header: Any, sc: Any) -> None:
    """The source's laterality on the picture (it shows the same body part).

    General Series ``Laterality`` (type 2C) is needed unless ``ImageLaterality`` is given: the source's
    ``Laterality`` (``R``, ``L``), else its ``ImageLaterality`` (``R``, ``L``, ``B``, or ``U`` for an unpaired
    body part), else an empty ``Laterality`` (unknown).
    """
    laterality = str(header.get("Laterality", "") or "").strip().upper()
    image_laterality = str(header.get("ImageLaterality", "") or "").strip().upper()
    if laterality in ("R", "L"):
        sc.Laterality = laterality
    elif image_laterality in ("R", "L", "B", "U"):
        sc.ImageLaterality = image_laterality
    else:
        sc.Laterality = ""


def write_sc(sc: Any, path: str | os.PathLike[str]) -> Path:
    """Save a Secondary Capture as a DICOM file (parent folders are created)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    sc.save_as(out, enforce_file_format=True)
    return out
