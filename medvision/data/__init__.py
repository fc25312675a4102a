"""Chest-radiograph data: datalists, patient-level splits, MONAI transforms and cached datasets.

The usual order::

    items = load_datalist("csv", "data/demo/cxr/manifest.csv")
    items, skipped = check_readable(items)              # every header once; fills ids from DICOM
    splits = assign_splits(items, by="patient", val=0.15, test=0.15, seed=0)
    settings = dict(image_size=224, keep_aspect=True, mean=0.5, std=0.25)
    digest = transform_digest(**settings)
    train = make_dataset(splits["train"], classification_transforms(**settings, train=True),
                         cache_dir=".cache/medvision", settings_digest=digest)
"""

from medvision.data.datalist import FORMATS, kermany_patient_id, load_datalist
from medvision.data.dataset import (
    CachedRadiographDataset,
    RadiographDataset,
    check_readable,
    class_balance,
    fill_from_headers,
    make_dataset,
)
from medvision.data.splits import assign_splits, check_no_patient_overlap, split_by_patient, split_summary
from medvision.data.transforms import (
    DEFAULT_AUGMENT,
    TRANSFORM_VERSION,
    LoadRadiographd,
    MedvisionCompose,
    classification_transforms,
    transform_digest,
)

__all__ = [
    "DEFAULT_AUGMENT",
    "FORMATS",
    "TRANSFORM_VERSION",
    "CachedRadiographDataset",
    "LoadRadiographd",
    "MedvisionCompose",
    "RadiographDataset",
    "assign_splits",
    "check_no_patient_overlap",
    "check_readable",
    "class_balance",
    "classification_transforms",
    "fill_from_headers",
    "kermany_patient_id",
    "load_datalist",
    "make_dataset",
    "split_by_patient",
    "split_summary",
    "transform_digest",
]
