"""Readers for DICOM, NIfTI and PNG/JPEG scans, as MONAI ``ImageReader`` subclasses."""

from medvision.io.dicom import DicomReader, read_dataset
from medvision.io.fast import load_radiograph_tensor
from medvision.io.image2d import RadiographImageReader
from medvision.io.loader import load, reader_for, summarise
from medvision.io.nifti import NiftiReader

__all__ = [
    "DicomReader",
    "NiftiReader",
    "RadiographImageReader",
    "load",
    "load_radiograph_tensor",
    "read_dataset",
    "reader_for",
    "summarise",
]
