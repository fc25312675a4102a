"""Shared fixtures of the batch-report tests: a mixed input folder, a tiny registered classifier, a fake detector.

The mixed folder holds what a PACS export or a research share holds: chest radiographs (DX, CR), a small
CT series, a NIfTI volume and its label mask, a truncated DICOM (header cut), a DICOM whose pixel data
is cut, an empty file, a text file, an ultrasound image, a hand radiograph and a hidden file. Every
identifier in it is synthetic and recorded in :class:`MixedFolder` so that tests can look for them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import write_dicom

CT_SHAPE = (32, 32)
CT_SLICES = 6
CT_SPACING = 2.0


@dataclass
class MixedFolder:
    """The mixed input folder and the facts the tests check against."""

    root: Path
    radiographs: list[Path] = field(default_factory=list)
    ct_files: list[Path] = field(default_factory=list)
    nifti: Path | None = None
    mask: Path | None = None
    header_cut: Path | None = None
    pixels_cut: Path | None = None
    empty: Path | None = None
    text: Path | None = None
    ultrasound: Path | None = None
    hand: Path | None = None
    identifiers: dict[str, list[str]] = field(default_factory=dict)

    def all_identifiers(self) -> list[str]:
        return [v for values in self.identifiers.values() for v in values]


def _annotate(path: Path, **values: Any) -> Any:
    """Add identifying attributes to a file written by ``write_dicom`` and save it again."""
    import pydicom

    ds = pydicom.dcmread(path)
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return ds


def _radiograph(rng: np.random.Generator, size: int = 48, blob: bool = False) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    img = rng.normal(1500, 120, (size, size))
    if blob:
        img += 900 * np.exp(-((yy - 20) ** 2 + (xx - 28) ** 2) / (2 * 5.0**2))
    return img.clip(0, 4095).astype(np.uint16)


def make_mixed_folder(root: Path, *, seed: int = 0) -> MixedFolder:
    """Write the mixed input folder (see the module docstring) below ``root``."""
    import nibabel as nib
    from pydicom.uid import generate_uid

    rng = np.random.default_rng(seed)
    folder = MixedFolder(root=root)
    ids: dict[str, list[str]] = {"patient_id": [], "patient_name": [], "uid": [], "accession": []}

    for n, (modality, blob) in enumerate((("DX", True), ("CR", False), ("DX", False))):
        pid, name, acc = f"PATIENT{seed}{n:03d}", f"Lovelace{n}^Ada{n}", f"ACCN{seed}{n:04d}"
        path = root / f"{pid}" / "ST1" / "IM0001.dcm"
        write_dicom(path, _radiograph(rng, blob=blob), modality=modality, bits_stored=12)
        # The third radiograph does not say whether text is burned into its pixels: a de-identified report
        # withholds its pictures.
        burned = {"BurnedInAnnotation": "NO"} if n < 2 else {}
        ds = _annotate(
            path,
            PatientID=pid,
            PatientName=name,
            AccessionNumber=acc,
            StudyDate="20240305",
            StudyTime="141516.171819",
            BodyPartExamined="CHEST",
            StudyDescription=f"CHEST PA {name.split('^')[0]}",
            InstitutionName="St Elsewhere Infirmary",
            **burned,
        )
        folder.radiographs.append(path)
        ids["patient_id"].append(pid)
        ids["patient_name"].append(name)
        ids["accession"].append(acc)
        ids["uid"] += [str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)]

    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    ct_pid, ct_name, ct_acc = f"CTPATIENT{seed}", "Hopper^Grace", f"ACCCT{seed}99"
    for k in range(CT_SLICES):
        pixels = rng.normal(1000, 30, CT_SHAPE).clip(0, 4095).astype(np.uint16)
        path = root / "ct" / "series1" / f"slice{k:02d}.dcm"
        write_dicom(
            path,
            pixels,
            modality="CT",
            study_uid=study,
            series_uid=series,
            position=(-31.0, -31.0, k * CT_SPACING),
            instance_number=CT_SLICES - k,  # scrambled, as exports often are
            spacing=(2.0, 2.0),
            slope=1.0,
            intercept=-1024.0,
        )
        ds = _annotate(
            path,
            PatientID=ct_pid,
            PatientName=ct_name,
            AccessionNumber=ct_acc,
            StudyDate="20240306",
            FrameOfReferenceUID=frame,
            BurnedInAnnotation="NO",
        )
        folder.ct_files.append(path)
        ids["uid"].append(str(ds.SOPInstanceUID))
    ids["patient_id"].append(ct_pid)
    ids["patient_name"].append(ct_name)
    ids["accession"].append(ct_acc)
    ids["uid"] += [study, series, frame]

    volume = rng.normal(100, 10, (24, 24, 12)).astype(np.float32)
    folder.nifti = root / "research" / "imagesTr" / "BRAIN_901.nii.gz"
    folder.nifti.parent.mkdir(parents=True)
    nib.save(nib.Nifti1Image(volume, np.diag([2.0, 2.0, 3.0, 1.0])), folder.nifti)
    folder.mask = root / "research" / "labelsTr" / "BRAIN_901.nii.gz"
    folder.mask.parent.mkdir(parents=True)
    nib.save(nib.Nifti1Image((volume > 110).astype(np.uint8), np.diag([2.0, 2.0, 3.0, 1.0])), folder.mask)

    good = root / "bad" / "header_cut.dcm"
    write_dicom(good, _radiograph(rng))
    folder.header_cut = good
    good.write_bytes(good.read_bytes()[:200])  # inside the file meta: no readable header

    folder.pixels_cut = root / "bad" / "pixels_cut.dcm"
    write_dicom(folder.pixels_cut, _radiograph(rng), modality="DX")
    ds = _annotate(folder.pixels_cut, PatientID=f"CUT{seed}PATIENT", PatientName="Babbage^Charles")
    ids["patient_id"].append(f"CUT{seed}PATIENT")
    ids["patient_name"].append("Babbage^Charles")
    ids["uid"] += [str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)]
    data = folder.pixels_cut.read_bytes()
    folder.pixels_cut.write_bytes(data[: len(data) - 2000])  # the header reads, the pixels are short

    folder.empty = root / "bad" / "empty.dcm"
    folder.empty.write_bytes(b"")
    folder.text = root / "notes.txt"
    folder.text.write_text("Worklist exported from PACS; ask the registrar.\n")

    folder.ultrasound = root / "us" / "IM1.dcm"
    write_dicom(folder.ultrasound, _radiograph(rng), modality="US")
    folder.hand = root / "hand" / "IM1.dcm"
    write_dicom(folder.hand, _radiograph(rng), modality="DX")
    _annotate(folder.hand, BodyPartExamined="HAND")
    (root / ".DS_Store").write_bytes(b"\x00\x01")
    folder.identifiers = ids
    return folder


@pytest.fixture
def mixed(tmp_path: Path) -> MixedFolder:
    return make_mixed_folder(tmp_path / "incoming")


@dataclass
class FakePrediction:
    boxes: list[dict[str, Any]]
    volume_score: float
    threshold: float
    flagged: bool
    image: np.ndarray
    affine: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)


class FakeDetector:
    """A duck-typed volume predictor: reads the volume with medvision.io and puts one box in it.

    The box covers voxels ``[8, 16) x [10, 20) x [2, 5)`` of the volume as read; its score is 0.9 for
    DICOM series and 0.2 for NIfTI files (below the 0.5 threshold). ``calls`` records the paths given.
    """

    metadata = {
        "name": "tumor-detector",
        "version": 7,
        "run_id": "fakedetectorrun",
        "threshold": 0.5,
        "intended_use": "Test double of the tumour detector.",
    }

    def __init__(self) -> None:
        self.calls: list[Path] = []

    def predict(self, path: Path) -> FakePrediction:
        from medvision.io import load

        self.calls.append(Path(path))
        array, meta = load(path)  # a folder of one series only, else this raises
        affine = np.asarray(meta["affine"], dtype=np.float64)
        voxel = [8.0, 10.0, 2.0, 16.0, 20.0, 5.0]
        corners = np.array([[*voxel[:3], 1.0], [*voxel[3:], 1.0]])
        corners[:, :3] -= 0.5  # voxel centres sit at integer indices
        world = (affine @ corners.T).T[:, :3]
        lo, hi = world.min(axis=0), world.max(axis=0)
        score = 0.2 if str(path).endswith((".nii", ".nii.gz")) else 0.9
        box = {
            "world_mm": [*lo.tolist(), *hi.tolist()],
            "size_mm": (hi - lo).tolist(),
            "score": score,
            "slice": 3,
        }
        return FakePrediction(
            boxes=[box],
            volume_score=score,
            threshold=0.5,
            flagged=score >= 0.5,
            image=np.asarray(array, dtype=np.float32),
            affine=affine,
        )


@pytest.fixture
def fake_detector() -> FakeDetector:
    return FakeDetector()
