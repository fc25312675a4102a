"""Synthetic demo data: chest radiographs (DICOM) and brain MRI (NIfTI and DICOM) with datalists.

Everything is generated from a seed on the spot; no data or weights are downloaded. See
:func:`write_demo_data`.
"""

from __future__ import annotations

from medvision.demo.writer import write_demo_data

__all__ = ["write_demo_data"]
