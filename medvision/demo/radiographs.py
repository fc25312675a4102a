"""Synthetic chest radiographs (normal / pneumonia) written as DICOM DX and CR files.

Each study is planned first (:func:`plan_cxr_studies`: identity, headers, label) and rendered
later (:func:`render_cxr`). The plan draws headers, label, anatomy and opacities from separate
seeded streams, so the class is visible in the pixels only: modality, photometric
interpretation, bit depth, transfer syntax, size, view, sex and age are independent of it.

Boxes are ``[x_min, y_min, x_max, y_max]`` in pixels, ``x`` the column index and ``y`` the row
index (MONAI's order for a loaded 2D image), minimum inclusive and maximum exclusive: the
opacity lies in ``pixel_array[y_min:y_max, x_min:x_max]``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from medvision.demo._common import (
    INSTITUTION,
    MANUFACTURER,
    age_on,
    demo_uid,
    dicom_date,
    format_ds,
    random_date,
    random_patient,
    random_time,
    rng_for,
    smooth_field,
    soft_step,
)

LABEL_NAMES = ("normal", "pneumonia")

#: Transfer syntaxes and how often they are drawn.
TRANSFER_SYNTAXES: tuple[tuple[str, float], ...] = (
    (str(ExplicitVRLittleEndian), 0.7),
    (str(RLELossless), 0.15),
    (str(JPEG2000Lossless), 0.15),
)
MODALITIES: tuple[tuple[str, float], ...] = (("DX", 0.6), ("CR", 0.4))
PHOTOMETRICS: tuple[tuple[str, float], ...] = (("MONOCHROME2", 0.65), ("MONOCHROME1", 0.35))
BITS_STORED: tuple[tuple[int, float], ...] = ((12, 0.4), (14, 0.3), (16, 0.3))
VIEWS: tuple[tuple[str, float], ...] = (("PA", 0.65), ("AP", 0.35))
#: Rescale (slope, intercept) pairs and how often they are drawn. Every study draws one, but only CR files
#: carry it: the DX Image Module allows RescaleSlope 1 and RescaleIntercept 0 only, so DX studies are
#: planned with the identity (the draw is kept so that the header draws after it do not move).
RESCALES: tuple[tuple[tuple[float, float], float], ...] = (
    ((1.0, 0.0), 0.85),
    ((1.0, -1024.0), 0.05),
    ((0.5, 0.0), 0.05),
    ((2.0, 0.0), 0.05),
)
SOP_CLASSES = {"DX": str(DigitalXRayImageStorageForPresentation), "CR": str(ComputedRadiographyImageStorage)}
#: ``ViewCodeSequence`` of a ``ViewPosition`` (CID 4010 DX View).
VIEW_CODES = {"PA": codes.SCT.PosteroAnterior, "AP": codes.SCT.AnteroPosterior}

#: Share of pneumonia studies (the mean of the per-patient risk).
PNEUMONIA_RATE = 0.4


def _choice(rng: np.random.Generator, options: tuple[tuple[object, float], ...]) -> object:
    values = [v for v, _ in options]
    weights = np.array([w for _, w in options], dtype=float)
    return values[int(rng.choice(len(values), p=weights / weights.sum()))]


@dataclass(frozen=True)
class CxrStudy:
    """Everything about one planned radiograph except its pixels.

    Attributes:
        seed: Data set seed (the render streams are keyed by it).
        patient_index: 1-based patient number.
        study_index: 1-based study number within the patient.
        label: 0 normal, 1 pneumonia.
        relpath: Path of the DICOM file relative to the ``cxr`` folder.
    """

    seed: int
    patient_index: int
    study_index: int
    patient_id: str
    patient_name: str
    sex: str
    birth_date: str
    age_years: int
    study_date: str
    study_time: str
    accession_number: str
    label: int
    modality: str
    photometric: str
    bits_stored: int
    transfer_syntax: str
    view: str
    rows: int
    cols: int
    imager_pixel_spacing: float
    magnification: float
    rescale_slope: float
    rescale_intercept: float
    study_uid: str
    series_uid: str
    sop_uid: str
    relpath: str

    @property
    def label_name(self) -> str:
        """``"normal"`` or ``"pneumonia"``."""
        return LABEL_NAMES[self.label]

    @property
    def max_value(self) -> int:
        """Largest stored value, ``2**BitsStored - 1``."""
        return (1 << self.bits_stored) - 1

    @property
    def pixel_spacing(self) -> float:
        """Pixel spacing at the patient (imager spacing over the magnification), mm."""
        return round(self.imager_pixel_spacing / self.magnification, 4)


def plan_cxr_studies(seed: int, n_patients: int) -> list[CxrStudy]:
    """Plan the radiograph studies of ``n_patients`` synthetic patients (no pixels yet).

    Args:
        seed: Data set seed.
        n_patients: Number of patients; each has 1 to 4 studies.

    Returns:
        The studies, ordered by patient and study.
    """
    if not 0 <= n_patients <= 9999:
        raise ValueError(f"n_cxr_patients must be in [0, 9999], got {n_patients}")
    studies: list[CxrStudy] = []
    for p in range(1, n_patients + 1):
        prng = rng_for(seed, "cxr-patient", p)
        n_studies = int(prng.integers(1, 5))
        first = random_date(prng, last=dt.date(2022, 6, 30))
        patient = random_patient(prng, f"DEMO1{p:04d}", f"Demo^P{p:04d}", first)
        risk = float(rng_for(seed, "cxr-risk", p).beta(2.0, 3.0))
        day = first
        for s in range(1, n_studies + 1):
            if s > 1:
                day = day + dt.timedelta(days=int(prng.integers(1, 200)))
            hrng = rng_for(seed, "cxr-header", p, s)
            label = int(rng_for(seed, "cxr-label", p, s).random() < risk)
            modality = str(_choice(hrng, MODALITIES))
            photometric = str(_choice(hrng, PHOTOMETRICS))
            bits_stored = int(_choice(hrng, BITS_STORED))  # type: ignore[call-overload]
            syntax = str(_choice(hrng, TRANSFER_SYNTAXES))
            view = str(_choice(hrng, VIEWS))
            slope, intercept = _choice(hrng, RESCALES)  # type: ignore[misc]
            if modality == "DX":
                slope, intercept = 1.0, 0.0  # DX Image Module: identity only (see RESCALES)
            studies.append(
                CxrStudy(
                    seed=seed,
                    patient_index=p,
                    study_index=s,
                    patient_id=patient.patient_id,
                    patient_name=patient.patient_name,
                    sex=patient.sex,
                    birth_date=dicom_date(patient.birth_date),
                    age_years=age_on(patient.birth_date, day),
                    study_date=dicom_date(day),
                    study_time=random_time(hrng),
                    accession_number=f"ACC{int(hrng.integers(10**7, 10**8))}",
                    label=label,
                    modality=modality,
                    photometric=photometric,
                    bits_stored=bits_stored,
                    transfer_syntax=syntax,
                    view=view,
                    rows=int(hrng.integers(512, 641)),
                    cols=int(hrng.integers(512, 641)),
                    imager_pixel_spacing=round(float(hrng.uniform(0.15, 0.2)), 3),
                    magnification=round(float(hrng.uniform(1.05, 1.15)), 3),
                    rescale_slope=float(slope),
                    rescale_intercept=float(intercept),
                    study_uid=demo_uid(seed, "cxr", p, s, "study"),
                    series_uid=demo_uid(seed, "cxr", p, s, "series"),
                    sop_uid=demo_uid(seed, "cxr", p, s, "instance"),
                    relpath=f"dicom/P{p:04d}/ST{s:02d}/IM0001.dcm",
                )
            )
    return studies


@dataclass
class CxrRender:
    """Pixels of one study.

    Attributes:
        display: Stored values in display convention (what MONOCHROME2 stores: bright = dense),
            ``uint16``, shape ``(rows, cols)``.
        boxes: Opacity boxes ``[x_min, y_min, x_max, y_max]`` (see the module docstring).
        lungs: Soft lung mask in ``[0, 1]``, float32.
        window: ``(center, width)`` in modality units, computed without the opacities.
    """

    display: np.ndarray
    boxes: list[list[int]] = field(default_factory=list)
    lungs: np.ndarray | None = None
    window: tuple[float, float] = (0.0, 1.0)


def _anatomy(
    rng: np.random.Generator, rows: int, cols: int, view: str = "PA"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noise-free chest anatomy in display intensity (0 air ... ~0.8 bone over tissue).

    An AP view magnifies the heart, as the heart is further from the detector.

    Returns:
        ``(intensity, lungs, heart)``: float32 arrays of shape ``(rows, cols)``; ``lungs`` and
        ``heart`` are soft masks in ``[0, 1]``.
    """
    s = float(min(rows, cols))
    cx = cols / 2 + rng.uniform(-0.03, 0.03) * s
    cy = 0.1 * rows + 0.36 * s + rng.uniform(-0.03, 0.03) * s
    tilt = rng.uniform(-0.04, 0.04)  # small rotation of the patient, radians
    scale = rng.uniform(0.92, 1.08)
    r = (np.arange(rows, dtype=np.float32)[:, None] - cy) / (s * scale)
    c = (np.arange(cols, dtype=np.float32)[None, :] - cx) / (s * scale)
    X = (c * np.cos(tilt) - r * np.sin(tilt)).astype(np.float32)
    Y = (c * np.sin(tilt) + r * np.cos(tilt)).astype(np.float32)
    aX = np.abs(X)
    edge = 0.006

    # Body outline: neck widening into sloping shoulders, a chest wider than the lungs, arms at the sides.
    chest_hw = rng.uniform(0.42, 0.48)
    neck_hw = rng.uniform(0.08, 0.11)
    y_shoulder = rng.uniform(-0.5, -0.44)
    hw = neck_hw + (chest_hw - neck_hw) * np.sqrt(np.clip((Y - y_shoulder) / 0.22, 0.0, 1.0))
    hw = hw + 0.025 * np.clip(Y + 0.2, 0.0, 0.5)
    body = soft_step((hw - aX) / edge)
    arm_in = hw + rng.uniform(0.01, 0.03)
    arms = soft_step((aX - arm_in) / edge) * soft_step((arm_in + 0.12 - aX) / 0.02)
    arms *= soft_step((Y - y_shoulder - 0.12) / 0.03)
    tissue = rng.uniform(0.5, 0.6)
    img = 0.03 + tissue * body + 0.8 * tissue * arms
    img += 0.05 * soft_step((Y - 0.2) / 0.05) * body  # abdomen a little denser

    # Heart (to the image right: the patient's left on a PA view): soft tissue hiding part of the lung.
    hx, hy = rng.uniform(0.03, 0.07), rng.uniform(0.07, 0.12)
    ha, hb, hr = rng.uniform(0.14, 0.18), rng.uniform(0.11, 0.14), rng.uniform(-0.5, -0.25)
    if view == "AP":
        ha, hb = ha * 1.12, hb * 1.08
    dx, dy = X - hx, Y - hy
    u = (dx * np.cos(hr) + dy * np.sin(hr)) / ha
    v = (-dx * np.sin(hr) + dy * np.cos(hr)) / hb
    heart = soft_step((1.0 - np.sqrt(u**2 + v**2)) / 0.05)

    # Lungs: ellipses cut below by the diaphragm domes and medially by the mediastinum; darker
    # towards the apices, with a little uneven aeration.
    lungs = np.zeros_like(X)
    for side in (-1.0, 1.0):
        lx = side * rng.uniform(0.18, 0.22)
        ly = rng.uniform(-0.08, -0.04)
        ax = rng.uniform(0.14, 0.17) * (0.95 if side > 0 else 1.0)
        ay = rng.uniform(0.28, 0.32)
        q = np.sqrt(((X - lx) / ax) ** 2 + ((Y - ly) / ay) ** 2)
        dome_top = ly + ay * rng.uniform(0.55, 0.7) + (0.02 if side > 0 else 0.0)  # left side lower
        dome = dome_top + 0.09 * ((X - lx) / ax) ** 2
        medial = 0.055 + 0.02 * np.clip(Y, 0.0, None)
        lung = soft_step((1.0 - q) / 0.05) * soft_step((dome - Y) / edge) * soft_step((side * X - medial) / 0.01)
        lungs = np.maximum(lungs, lung)
    aeration = 0.9 + 0.1 * smooth_field(rng, X.shape, (5, 5)) - 0.15 * np.clip(Y + 0.1, 0.0, None)
    img -= rng.uniform(0.28, 0.34) * lungs * (1.0 - 0.85 * heart) * aeration

    # Mediastinum, aortic knob and spine (faint behind the heart and below the diaphragm).
    media = soft_step((0.07 + 0.03 * np.clip(Y + 0.1, 0.0, None) - aX) / 0.01) * soft_step((Y + 0.5) / 0.02)
    img += 0.04 * media
    knob = soft_step((1.0 - np.sqrt(((X - 0.075) / 0.035) ** 2 + ((Y + 0.16) / 0.03) ** 2)) / 0.1)
    img += 0.1 * knob
    spine_hw = rng.uniform(0.028, 0.034)
    spine = soft_step((spine_hw - aX) / 0.008) * body
    vert_period = rng.uniform(0.045, 0.055)
    img += 0.045 * spine * (0.8 + 0.2 * np.cos(2 * np.pi * Y / vert_period))

    # Ribs: posterior arcs curving down laterally (bright cortex), faint anterior arcs, clavicles.
    # Bone shows best against the air of the lungs.
    t = aX - 0.035
    inside = soft_step(t / 0.01) * soft_step((hw - 0.02 - aX) / 0.02) * soft_step((0.32 - Y) / 0.05) * body
    rib_w = rng.uniform(0.010, 0.013)
    y0 = rng.uniform(-0.42, -0.38)
    step = rng.uniform(0.056, 0.064)
    bend = rng.uniform(1.6, 2.2)
    # One periodic profile instead of a loop over ribs: ``rho`` counts ribs from the first one.
    rho = (Y - y0 + 0.3 * t - bend * t**2) / step
    d = (rho - np.round(rho)) * step / (rib_w * (1.0 + 0.6 * t))
    ribs = np.exp(-0.5 * d**2) * (0.7 + 0.5 * np.exp(-0.5 * ((np.abs(d) - 0.9) / 0.3) ** 2))
    ribs *= soft_step((rho + 0.5) / 0.1) * soft_step((10.5 - rho) / 0.1)
    rho_a = (Y - y0 - 0.5 * np.clip(0.32 - t, 0.0, None)) / step
    d_a = (rho_a - np.round(rho_a)) * step / (rib_w * 1.5)
    ribs += 0.3 * np.exp(-0.5 * d_a**2) * soft_step((0.34 - t) / 0.03) * soft_step((rho_a + 0.5) / 0.1)
    img += rng.uniform(0.07, 0.1) * ribs * inside * (0.35 + 0.65 * lungs * (1.0 - heart))
    clav_y = -0.37 + rng.uniform(-0.02, 0.02) - 0.22 * (aX - 0.05)
    clav = np.exp(-0.5 * ((Y - clav_y) / 0.013) ** 2) * soft_step((aX - 0.04) / 0.01) * soft_step((0.3 - aX) / 0.02)
    img += 0.1 * clav * body

    # Gas bubble under the left hemidiaphragm.
    gas = soft_step((1.0 - np.sqrt(((X - 0.22) / 0.05) ** 2 + ((Y - 0.3) / 0.03) ** 2)) / 0.1)
    img -= 0.08 * gas * body

    # Hilar shadows and vascular markings: broken wavy lines radiating from the hila, fading
    # towards the periphery.
    wobble = smooth_field(rng, X.shape, (max(X.shape[0] // 40, 4), max(X.shape[1] // 40, 4)))
    breaks = soft_step(2.0 * smooth_field(rng, X.shape, (max(X.shape[0] // 16, 4), max(X.shape[1] // 16, 4))))
    markings = np.zeros_like(X)
    for side in (-1.0, 1.0):
        hxl, hyl = side * rng.uniform(0.05, 0.07), rng.uniform(-0.04, 0.0)
        phi = np.arctan2(Y - hyl, side * (X - hxl))
        dist = np.sqrt((X - hxl) ** 2 + (Y - hyl) ** 2)
        lines = np.exp(-((np.sin(8.0 * phi + 0.8 * wobble) / (0.1 + 0.3 * dist)) ** 2) * dist * 6)
        markings += lines * np.exp(-dist / 0.16) * soft_step((dist - 0.04) / 0.015)
        img += 0.05 * np.exp(-0.5 * (dist / 0.035) ** 2) * lungs  # hilum
    img += 0.07 * markings * (0.3 + 0.7 * breaks) * lungs * (1.0 - heart)
    return img.astype(np.float32), lungs.astype(np.float32), heart.astype(np.float32)


def _opacities(rng: np.random.Generator, lungs: np.ndarray, heart: np.ndarray) -> tuple[np.ndarray, list[list[int]]]:
    """1 to 3 patchy soft-edged opacities inside the lungs.

    Returns:
        ``(added intensity, boxes)``: the boxes bound where each opacity is at least a quarter of
        its peak.
    """
    rows, cols = lungs.shape
    s = float(min(rows, cols))
    added = np.zeros_like(lungs)
    core = (lungs > 0.95) & (heart < 0.3)
    candidates = np.flatnonzero(core[::4, ::4])
    sub_cols = (cols + 3) // 4
    boxes: list[list[int]] = []
    n = int(rng.integers(1, 4))
    for _ in range(40):
        if len(boxes) == n or candidates.size == 0:
            break
        idx = int(candidates[rng.integers(candidates.size)])
        r0, c0 = (idx // sub_cols) * 4, (idx % sub_cols) * 4
        a, b = rng.uniform(0.035, 0.09, size=2) * s
        theta = rng.uniform(0.0, np.pi)
        amp = rng.uniform(0.14, 0.3)
        half = int(1.5 * max(a, b)) + 2
        rs, re = max(r0 - half, 0), min(r0 + half + 1, rows)
        cs, ce = max(c0 - half, 0), min(c0 + half + 1, cols)
        rr = np.arange(rs, re, dtype=np.float32)[:, None] - r0
        cc = np.arange(cs, ce, dtype=np.float32)[None, :] - c0
        u = (cc * np.cos(theta) + rr * np.sin(theta)) / a
        v = (-cc * np.sin(theta) + rr * np.cos(theta)) / b
        q = np.sqrt(u**2 + v**2)
        shape = (re - rs, ce - cs)
        patch = soft_step(2.0 * smooth_field(rng, shape, (6, 6)))
        blob = amp * soft_step((1.0 - q) / 0.18) * (0.5 + 0.5 * patch) * lungs[rs:re, cs:ce]
        on = blob >= 0.25 * blob.max()
        if not on.any():
            continue
        ys, xs = np.nonzero(on)
        box = [int(xs.min()) + cs, int(ys.min()) + rs, int(xs.max()) + cs + 1, int(ys.max()) + rs + 1]
        if any(box[0] < o[2] + 4 and o[0] < box[2] + 4 and box[1] < o[3] + 4 and o[1] < box[3] + 4 for o in boxes):
            continue  # keep opacities apart so that each box bounds one of them
        added[rs:re, cs:ce] += blob
        boxes.append(box)
    return added, boxes


def render_cxr(study: CxrStudy, *, opacities: bool = True) -> CxrRender:
    """Render the pixels of a planned study.

    Anatomy, intensity variation and noise come from one stream and the opacities from another,
    so ``render_cxr(study, opacities=False)`` gives the same image without the opacities.

    Args:
        study: A study from :func:`plan_cxr_studies`.
        opacities: Draw the pneumonia opacities (only for pneumonia studies).

    Returns:
        The rendered study.
    """
    arng = rng_for(study.seed, "cxr-anatomy", study.patient_index, study.study_index)
    img, lungs, heart = _anatomy(arng, study.rows, study.cols, study.view)
    boxes: list[list[int]] = []
    added = None
    if study.label == 1:
        added, boxes = _opacities(
            rng_for(study.seed, "cxr-opacity", study.patient_index, study.study_index), lungs, heart
        )
    # Smooth exposure variation and the heel effect, then quantum noise.
    gain = 1.0 + 0.06 * smooth_field(arng, img.shape, (4, 4))
    ramp = arng.uniform(-0.04, 0.04) * (np.arange(img.shape[0], dtype=np.float32)[:, None] / img.shape[0] - 0.5)
    offset = 0.02 * smooth_field(arng, img.shape, (3, 3)) + ramp
    noise = arng.standard_normal(img.shape, dtype=np.float32) * arng.uniform(0.008, 0.018)
    lo = arng.uniform(0.0, 0.08) * study.max_value
    hi = arng.uniform(0.85, 1.0) * study.max_value

    def to_stored(x: np.ndarray) -> np.ndarray:
        y = np.clip(x * gain + offset + noise, 0.0, 1.0)
        return np.rint(lo + y * (hi - lo)).astype(np.uint16)

    base = to_stored(img)
    sample = base[::4, ::4]
    if study.photometric == "MONOCHROME1":
        sample = study.max_value - sample.astype(np.int64)
    p_lo, p_hi = np.percentile(sample, [2.0, 98.0])
    slope, intercept = study.rescale_slope, study.rescale_intercept
    window = (round(float((p_lo + p_hi) / 2 * slope + intercept), 1), round(float(max(p_hi - p_lo, 1) * slope), 1))
    display = base if added is None or not opacities else to_stored(img + added)
    return CxrRender(display=display, boxes=boxes if opacities else [], lungs=lungs, window=window)


def stored_pixels(study: CxrStudy, render: CxrRender) -> np.ndarray:
    """The values written to ``PixelData``: inverted for MONOCHROME1 (``max - intensity``)."""
    if study.photometric == "MONOCHROME1":
        return (study.max_value - render.display.astype(np.int32)).astype(np.uint16)
    return render.display


def _code_item(code: Code) -> Dataset:
    """One item of a code sequence (Code Sequence Macro)."""
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


def cxr_dataset(study: CxrStudy, render: CxrRender) -> Dataset:
    """The DICOM data set of a rendered study (pixels encoded in its transfer syntax).

    Args:
        study: The planned study.
        render: Its pixels.

    Returns:
        A data set with file meta, ready for ``save_as(..., enforce_file_format=True)``.
    """
    sop_class = SOP_CLASSES[study.modality]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = study.sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = study.sop_uid
    for prefix in ("Study", "Series", "Acquisition", "Content"):
        setattr(ds, f"{prefix}Date", study.study_date)
        setattr(ds, f"{prefix}Time", study.study_time)
    ds.AccessionNumber = study.accession_number
    ds.Modality = study.modality
    if study.modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = MANUFACTURER
    ds.InstitutionName = INSTITUTION
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "XR CHEST"
    ds.SeriesDescription = f"CHEST {study.view}"
    ds.ManufacturerModelName = "Synthetic DR" if study.modality == "DX" else "Synthetic CR"
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = study.birth_date
    ds.PatientSex = study.sex
    ds.PatientAge = f"{study.age_years:03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.DeviceSerialNumber = "DEMO-0001"
    ds.SoftwareVersions = "medvision-demo"
    ds.DistanceSourceToDetector = "1800" if study.view == "PA" else "1000"
    ds.ImagerPixelSpacing = [format_ds(study.imager_pixel_spacing)] * 2
    ds.PixelSpacing = [format_ds(study.pixel_spacing)] * 2
    ds.EstimatedRadiographicMagnificationFactor = format_ds(study.magnification)
    # PixelSpacing is ImagerPixelSpacing corrected by the estimated magnification (Basic Pixel Spacing
    # Calibration Macro).
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    ds.PixelSpacingCalibrationDescription = "Imager Pixel Spacing / estimated magnification"
    ds.ViewPosition = study.view
    ds.PatientPosition = ""
    ds.AnatomicRegionSequence = [_code_item(codes.SCT.Chest)]
    ds.ImageLaterality = "U"  # unpaired body part
    if study.modality == "DX":
        ds.ViewCodeSequence = [_code_item(VIEW_CODES[study.view])]
        ds.PositionerType = ""  # type 2, empty: unknown (a synthetic image)
        ds.AcquisitionContextSequence = []
        ds.DetectorType = "SCINTILLATOR"
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = 1 if study.photometric == "MONOCHROME1" else -1
    ds.StudyInstanceUID = study.study_uid
    ds.SeriesInstanceUID = study.series_uid
    ds.StudyID = f"{study.study_index}"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["L", "F"]
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = study.photometric
    ds.Rows = study.rows
    ds.Columns = study.cols
    ds.BitsAllocated = 16
    ds.BitsStored = study.bits_stored
    ds.HighBit = study.bits_stored - 1
    ds.PixelRepresentation = 0
    ds.WindowCenter = format_ds(render.window[0], 1)
    ds.WindowWidth = format_ds(render.window[1], 1)
    ds.RescaleIntercept = format_ds(study.rescale_intercept)
    ds.RescaleSlope = format_ds(study.rescale_slope)
    ds.RescaleType = "US"
    if study.modality == "DX":
        # DX Image Module: IDENTITY for MONOCHROME2, INVERSE for MONOCHROME1 (the pixels are not changed).
        ds.PresentationLUTShape = "INVERSE" if study.photometric == "MONOCHROME1" else "IDENTITY"

    pixels = stored_pixels(study, render)
    if study.transfer_syntax == str(ExplicitVRLittleEndian):
        ds.PixelData = pixels.astype("<u2").tobytes()
        ds["PixelData"].VR = "OW"
    else:
        ds.compress(study.transfer_syntax, pixels, generate_instance_uid=False)
    return ds


def write_cxr(
    root: str | Path,
    seed: int = 0,
    n_patients: int = 60,
    progress: Callable[[str], None] | None = None,
) -> list[dict]:
    """Render and write the radiographs under ``root/cxr/dicom``.

    Args:
        root: Output root; files go to ``root/cxr/dicom/P0001/ST01/IM0001.dcm`` and so on.
        seed: Data set seed.
        n_patients: Number of patients.
        progress: Called with a short message now and then.

    Returns:
        One record per study (keys ``study``: the :class:`CxrStudy`, ``boxes``, ``path``).
    """
    base = Path(root) / "cxr"
    studies = plan_cxr_studies(seed, n_patients)
    records: list[dict] = []
    for i, study in enumerate(studies, start=1):
        render = render_cxr(study)
        path = base / study.relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        cxr_dataset(study, render).save_as(path, enforce_file_format=True)
        records.append({"study": study, "boxes": render.boxes, "path": path})
        if progress is not None and (i % 25 == 0 or i == len(studies)):
            progress(f"cxr: {i}/{len(studies)} studies")
    return records
