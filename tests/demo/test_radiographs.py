"""Synthetic chest radiographs: decoding, headers, label leakage and visible opacities."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)
from scipy.stats import chi2_contingency

from medvision.demo.radiographs import CxrStudy, plan_cxr_studies, render_cxr, write_cxr

SEED = 3
N_PATIENTS = 10


@pytest.fixture(scope="module")
def cxr(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("cxr")
    return root, write_cxr(root, seed=SEED, n_patients=N_PATIENTS)


def _display(ds: pydicom.Dataset) -> np.ndarray:
    """Pixels in display convention (bright = dense), MONOCHROME1 inverted."""
    pixels = ds.pixel_array.astype(np.float64)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        pixels = (2 ** int(ds.BitsStored) - 1) - pixels
    return pixels


def test_small_set_covers_every_variant(cxr: tuple[Path, list[dict]]) -> None:
    _, records = cxr
    studies = [r["study"] for r in records]
    assert {s.modality for s in studies} == {"DX", "CR"}
    assert {s.photometric for s in studies} == {"MONOCHROME1", "MONOCHROME2"}
    assert {s.transfer_syntax for s in studies} == {ExplicitVRLittleEndian, RLELossless, JPEG2000Lossless}
    assert {s.label for s in studies} == {0, 1}


def test_every_file_decodes_to_the_rendered_pixels(cxr: tuple[Path, list[dict]]) -> None:
    root, records = cxr
    for record in records:
        study: CxrStudy = record["study"]
        ds = pydicom.dcmread(record["path"])
        assert ds.file_meta.TransferSyntaxUID == study.transfer_syntax
        assert ds.PhotometricInterpretation == study.photometric
        pixels = ds.pixel_array
        assert pixels.shape == (study.rows, study.cols) == (ds.Rows, ds.Columns)
        assert pixels.dtype == np.uint16
        assert int(pixels.max()) <= 2**study.bits_stored - 1
        expected = render_cxr(study).display
        if study.photometric == "MONOCHROME1":
            np.testing.assert_array_equal(pixels, study.max_value - expected.astype(np.int32))
        else:
            np.testing.assert_array_equal(pixels, expected)
        if study.transfer_syntax != ExplicitVRLittleEndian:
            assert ds.file_meta.TransferSyntaxUID.is_compressed
            assert ds["PixelData"].is_undefined_length  # encapsulated


def test_monochrome1_is_stored_inverted(cxr: tuple[Path, list[dict]]) -> None:
    """The lungs are dark once displayed; stored MONOCHROME1 values there are high."""
    _, records = cxr
    for record in records:
        study: CxrStudy = record["study"]
        render = render_cxr(study)
        assert render.lungs is not None
        lungs, body = render.lungs > 0.9, render.lungs < 0.1
        raw = pydicom.dcmread(record["path"]).pixel_array.astype(np.float64)
        lung_darker_raw = raw[lungs].mean() < np.median(raw[body])
        assert lung_darker_raw == (study.photometric == "MONOCHROME2")


def test_headers(cxr: tuple[Path, list[dict]]) -> None:
    _, records = cxr
    sop_uids = set()
    for record in records:
        study: CxrStudy = record["study"]
        ds = pydicom.dcmread(record["path"])  # no force=True: preamble and file meta are present
        meta = ds.file_meta
        assert meta.MediaStorageSOPClassUID == ds.SOPClassUID
        assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        expected_class = (
            DigitalXRayImageStorageForPresentation if ds.Modality == "DX" else ComputedRadiographyImageStorage
        )
        assert ds.SOPClassUID == expected_class
        for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID):
            assert UID(uid).is_valid
        sop_uids.add(ds.SOPInstanceUID)
        assert re.fullmatch(r"DEMO\d{5}", ds.PatientID)
        assert re.fullmatch(r"Demo\^P\d{4}", str(ds.PatientName))
        assert ds.PatientSex in ("M", "F")
        assert re.fullmatch(r"\d{3}Y", ds.PatientAge)
        birth = dt.datetime.strptime(ds.PatientBirthDate, "%Y%m%d").date()
        day = dt.datetime.strptime(ds.StudyDate, "%Y%m%d").date()
        assert int(ds.PatientAge[:3]) == day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))
        assert 18 <= int(ds.PatientAge[:3]) <= 95
        assert dt.date(2015, 1, 1) <= day <= dt.date(2024, 12, 31)
        assert ds.AccessionNumber.startswith("ACC")
        assert ds.ViewPosition in ("PA", "AP")
        assert ds.BodyPartExamined == "CHEST"
        assert ds.Manufacturer == "medvision-demo"
        assert ds.InstitutionName == "Demo Hospital"
        assert all(0.13 <= float(v) <= 0.21 for v in ds.PixelSpacing)
        assert all(0.14 <= float(v) <= 0.21 for v in ds.ImagerPixelSpacing)
        assert float(ds.PixelSpacing[0]) < float(ds.ImagerPixelSpacing[0])
        assert ds.BitsAllocated == 16 and ds.BitsStored in (12, 14, 16) and ds.HighBit == ds.BitsStored - 1
        assert ds.PixelRepresentation == 0 and ds.SamplesPerPixel == 1
        assert float(ds.RescaleSlope) > 0 and "RescaleIntercept" in ds
        assert float(ds.WindowWidth) > 0 and "WindowCenter" in ds
        assert 512 <= ds.Rows <= 640 and 512 <= ds.Columns <= 640
        assert ds.PatientID == study.patient_id
        assert (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) == (
            study.study_uid,
            study.series_uid,
            study.sop_uid,
        )  # compression keeps the planned UIDs
    assert len(sop_uids) == len(records)


def test_class_is_in_no_path_or_header(cxr: tuple[Path, list[dict]]) -> None:
    root, records = cxr
    for record in records:
        path = Path(record["path"])
        assert not re.search("pneumonia|normal", str(path.relative_to(root)), re.IGNORECASE)
        ds = pydicom.dcmread(path)
        for element in [*ds.file_meta.iterall(), *ds.iterall()]:
            if element.tag == 0x7FE00010:  # PixelData
                continue
            text = str(element.value).lower()
            assert "pneumonia" not in text and "normal" not in text, element


def test_label_is_independent_of_headers() -> None:
    """On a large plan, no header attribute predicts the label (chi-squared, fixed seed)."""
    studies = plan_cxr_studies(11, 1500)
    labels = np.array([s.label for s in studies])
    assert 0.35 < labels.mean() < 0.45
    attributes = {
        "modality": [s.modality for s in studies],
        "photometric": [s.photometric for s in studies],
        "bits": [s.bits_stored for s in studies],
        "syntax": [s.transfer_syntax for s in studies],
        "view": [s.view for s in studies],
        "sex": [s.sex for s in studies],
        "age": [s.age_years // 20 for s in studies],
        "rows": [s.rows // 32 for s in studies],
        "cols": [s.cols // 32 for s in studies],
        "slope": [s.rescale_slope for s in studies],
        "spacing": [round(s.pixel_spacing, 2) for s in studies],
        "study_index": [min(s.study_index, 3) for s in studies],
    }
    for name, values in attributes.items():
        levels = sorted(set(values))
        table = np.array([[np.sum((np.array(values) == v) & (labels == c)) for c in (0, 1)] for v in levels])
        table = table[table.sum(axis=1) > 0]
        p_value = chi2_contingency(table).pvalue
        assert p_value > 1e-3, f"label depends on {name}: p={p_value:.2g}"
    by_patient: dict[str, set[int]] = {}
    for s in studies:
        by_patient.setdefault(s.patient_id, set()).add(s.label)
    assert any(len(v) == 2 for v in by_patient.values())  # patients with both labels exist
    assert {len([s for s in studies if s.patient_id == p]) for p in list(by_patient)[:200]} == {1, 2, 3, 4}


def test_boxes_are_valid_and_inside_the_lungs(cxr: tuple[Path, list[dict]]) -> None:
    _, records = cxr
    for record in records:
        study: CxrStudy = record["study"]
        boxes = record["boxes"]
        assert (len(boxes) > 0) == (study.label == 1)
        assert len(boxes) <= 3
        render = render_cxr(study)
        assert render.lungs is not None
        for x0, y0, x1, y1 in boxes:
            assert 0 <= x0 < x1 <= study.cols and 0 <= y0 < y1 <= study.rows
            assert render.lungs[(y0 + y1) // 2, (x0 + x1) // 2] > 0.5  # x = column, y = row


def test_opacity_is_brighter_inside_the_boxes(cxr: tuple[Path, list[dict]]) -> None:
    """Positive boxes are brighter than the same lung region of negative images, and than their twin.

    Each image is read from its file (MONOCHROME1 inverted) and scaled so that its lungs are 0 and
    its soft tissue 1; the box is compared over lung pixels only.
    """
    _, records = cxr

    def normalised(record: dict) -> tuple[np.ndarray, np.ndarray]:
        pixels = _display(pydicom.dcmread(record["path"]))
        lungs = render_cxr(record["study"]).lungs
        assert lungs is not None
        lung, tissue = np.median(pixels[lungs > 0.9]), np.median(pixels[lungs < 0.05])
        return (pixels - lung) / (tissue - lung), lungs > 0.9

    negatives = [normalised(r) for r in records if r["study"].label == 0]
    differences, gains = [], []
    for record in records:
        study = record["study"]
        if study.label == 0:
            continue
        image, lungs = normalised(record)
        twin = render_cxr(study, opacities=False).display.astype(np.float64)
        added = render_cxr(study).display.astype(np.float64) - twin
        assert added.min() >= -1  # opacities only add density (up to rounding)
        inside = np.zeros(added.shape, dtype=bool)
        for x0, y0, x1, y1 in record["boxes"]:
            inside[y0:y1, x0:x1] = True
            region = (slice(y0, y1), slice(x0, x1))
            others = [n[region][m[region]].mean() for n, m in negatives if m[region].sum() > 20]
            differences.append(image[region][lungs[region]].mean() - np.mean(others))
            gains.append(added[region].mean() / study.max_value)
        assert added[inside].sum() > 0.85 * added.sum()  # the boxes hold the opacities
    assert len(differences) >= 5
    assert np.mean(differences) > 0.2  # a fifth of the lung-to-soft-tissue contrast on average
    assert np.mean(np.array(differences) > 0) > 0.9
    assert min(gains) > 0.02  # every box at least 2 % of the full range brighter than its twin
