"""Dictionary keys and shared names, kept in one place (as TorchIO's ``constants.py``)."""

from __future__ import annotations

#: Keys of a sample dict on its way through the pipeline.
IMAGE = "image"
LABEL = "label"
BOXES = "boxes"
BOX_LABELS = "box_labels"
META = "meta"
MASK = "mask"
PATIENT_ID = "patient_id"

#: Kinds of input that :func:`medvision.io.load` understands.
KIND_DICOM_FILE = "dicom-file"
KIND_DICOM_SERIES = "dicom-series"
KIND_NIFTI = "nifti"
KIND_IMAGE = "image"

#: Default ceiling on the number of voxels a header may ask for (about 2 GiB as float32).
DEFAULT_MAX_VOXELS = 512 * 1024 * 1024

NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima", "")

#: The one wording of the draft notice: every report page (HTML and PDF), every `predict` record and every
#: model card carry it. A model's finding is a draft until a radiologist reviews and signs it.
DRAFT_NOTICE = "DRAFT — not for diagnostic use without review by a radiologist. Results are not final and not verified."

#: The Manufacturer (0008,0070) of every DICOM object medvision writes (SR, secondary capture). A PACS source and
#: the listener recognise medvision's own results by it (with their SOP class) and leave them out of what they
#: report, so that results filed back into a PACS are never reported on again.
MANUFACTURER = "medvision"
#: The SOP classes medvision writes: Comprehensive SR, Comprehensive 3D SR, Secondary Capture Image.
OWN_SOP_CLASSES = frozenset(
    {"1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.7"}
)


def is_own_result(manufacturer: object, sop_class: object) -> bool:
    """An object medvision itself wrote: its Manufacturer is medvision's and its SOP class one medvision writes."""
    return str(manufacturer or "").strip() == MANUFACTURER and str(sop_class or "").strip() in OWN_SOP_CLASSES
