"""Study discovery on a mixed folder (issue 5): one study per series or volume, one failure per bad file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from medvision.errors import InputError
from medvision.reporting.discover import CLASSIFICATION, DETECTION, FAILED, NOT_APPLICABLE, discover
from tests.reporting.conftest import CT_SLICES, MixedFolder


def _by_source(found) -> dict[str, object]:
    return {s.source: s for s in found.studies}


def test_mixed_folder_gives_one_row_per_study_and_per_failure(mixed: MixedFolder) -> None:
    found = discover(mixed.root)
    rel = lambda p: p.relative_to(mixed.root).as_posix()  # noqa: E731
    routes = {s.source: s.route for s in found.studies}
    assert routes == {
        **{rel(p): CLASSIFICATION for p in mixed.radiographs},
        rel(mixed.pixels_cut): CLASSIFICATION,  # its header reads; the pixels fail later, at inference
        "ct/series1": DETECTION,
        rel(mixed.nifti): DETECTION,
        rel(mixed.mask): NOT_APPLICABLE,
        rel(mixed.header_cut): FAILED,
        rel(mixed.empty): FAILED,
        rel(mixed.text): FAILED,
        rel(mixed.ultrasound): NOT_APPLICABLE,
        rel(mixed.hand): NOT_APPLICABLE,
    }
    assert found.hidden_skipped == 1  # .DS_Store
    studies = _by_source(found)
    ct = studies["ct/series1"]
    assert len(ct.paths) == CT_SLICES and ct.kind == "dicom" and ct.meta["modality"] == "CT"
    # Sorted by InstanceNumber (written in reverse), then path.
    assert [p.name for p in ct.paths] == [f"slice{k:02d}.dcm" for k in reversed(range(CT_SLICES))]
    assert ct.meta["patient_name"] == "Hopper^Grace" and ct.meta["accession"].startswith("ACCCT")
    assert ct.meta["frame_of_reference_uid"]
    for s in found.studies:
        if s.route in (FAILED, NOT_APPLICABLE):
            assert s.reason, s.source
        else:
            assert s.reason is None
    # Every reason names the file (relative to the input), says why and, for failures, what to do.
    assert studies[rel(mixed.text)].reason.startswith("notes.txt: not a DICOM file")
    assert "check that the file is DICOM" in studies[rel(mixed.text)].reason
    assert studies[rel(mixed.empty)].reason == "bad/empty.dcm: empty file (0 bytes); re-export or re-copy the file"
    assert studies[rel(mixed.header_cut)].reason.startswith("bad/header_cut.dcm: ")
    assert str(mixed.root) not in studies[rel(mixed.header_cut)].reason
    assert "modality US" in studies[rel(mixed.ultrasound)].reason
    assert "body part HAND" in studies[rel(mixed.hand)].reason
    assert "label mask" in studies[rel(mixed.mask)].reason


def test_keys_are_stable_unique_and_safe_file_names(mixed: MixedFolder) -> None:
    first, second = discover(mixed.root), discover(mixed.root)
    keys = [s.key for s in first.studies]
    assert keys == [s.key for s in second.studies]
    assert len(set(keys)) == len(keys)
    assert all(re.fullmatch(r"[a-z0-9]+-[0-9a-f]{12}", k) for k in keys), keys
    studies = _by_source(first)
    assert studies["ct/series1"].key.startswith("ct-")
    # Keys do not carry identifiers.
    assert not any(i.lower() in " ".join(keys) for i in mixed.all_identifiers())


def test_fingerprint_changes_when_a_file_changes(mixed: MixedFolder) -> None:
    study = _by_source(discover(mixed.root))["ct/series1"]
    before = study.fingerprint(mixed.root)
    assert study.fingerprint(mixed.root) == before
    path = study.paths[2]
    path.write_bytes(path.read_bytes() + b"\x00\x00")
    assert study.fingerprint(mixed.root) != before


def test_excluded_folders_are_not_entered(mixed: MixedFolder) -> None:
    found = discover(mixed.root, exclude=[mixed.root / "ct", mixed.root / "bad"])
    sources = {s.source for s in found.studies}
    assert not any(s.startswith(("ct/", "bad/")) for s in sources)
    assert len(sources) == len(discover(mixed.root).studies) - 4  # the CT series and three bad files


def test_two_series_of_one_study_in_one_folder_are_two_studies(tmp_path: Path) -> None:
    import numpy as np
    from pydicom.uid import generate_uid

    from tests.conftest import write_dicom

    study = generate_uid()
    pixels = np.full((16, 16), 100, np.uint16)
    write_dicom(tmp_path / "a.dcm", pixels, modality="DX", study_uid=study, series_uid="1.2.3.1")
    write_dicom(tmp_path / "b.dcm", pixels, modality="DX", study_uid=study, series_uid="1.2.3.2")
    found = discover(tmp_path)
    assert [(s.source, s.route) for s in found.studies] == [("a.dcm", CLASSIFICATION), ("b.dcm", CLASSIFICATION)]
    assert found.studies[0].meta["study_uid"] == found.studies[1].meta["study_uid"] == study


def test_not_a_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such folder"):
        discover(tmp_path / "missing")
    (tmp_path / "file.dcm").write_bytes(b"x")
    with pytest.raises(InputError, match="is a file, not a folder"):
        discover(tmp_path / "file.dcm")


def test_a_corrupt_nifti_fails_and_a_2d_nifti_is_not_applicable(tmp_path: Path) -> None:
    import nibabel as nib
    import numpy as np

    (tmp_path / "corrupt.nii.gz").write_bytes(b"\x1f\x8b\x08\x00not really gzip" + bytes(range(200)))
    nib.save(nib.Nifti1Image(np.zeros((16, 16), np.float32), np.eye(4)), tmp_path / "flat.nii.gz")
    found = discover(tmp_path)
    studies = _by_source(found)
    assert studies["corrupt.nii.gz"].route == FAILED
    assert studies["corrupt.nii.gz"].reason.startswith("corrupt.nii.gz: not a readable NIfTI file")
    assert studies["flat.nii.gz"].route == NOT_APPLICABLE
    assert "is not a 3-D volume" in studies["flat.nii.gz"].reason
