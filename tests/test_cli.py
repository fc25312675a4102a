"""`medvision inspect`: pydicom's values on pydicom's files, one error line per bad input, exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut
from typer.testing import CliRunner

from medvision.cli import app
from tests.conftest import nibabel_file, pydicom_file, write_dicom

runner = CliRunner()

FILES = [
    "CT_small.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "JPGExtended.dcm",
    "693_J2KI.dcm",
]


def _invoke(*args: str):
    return runner.invoke(app, list(args))


def test_inspect_json_gives_pydicom_values() -> None:
    result = _invoke("inspect", "--json", *[str(pydicom_file(f)) for f in FILES])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == len(FILES)
    for name, row in zip(FILES, rows, strict=True):
        ds = pydicom.dcmread(pydicom_file(name))
        ref = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
        assert row["kind"] == "dicom-file"
        assert row["modality"] == ds.Modality
        assert row["photometric"] == ds.PhotometricInterpretation
        assert row["shape"] == [int(ds.Columns), int(ds.Rows)]
        assert row["min"] == pytest.approx(ref.min()) and row["max"] == pytest.approx(ref.max())
        assert row["mean"] == pytest.approx(ref.mean(), rel=1e-5)
        assert row["study_uid"] == ds.StudyInstanceUID and row["series_uid"] == ds.SeriesInstanceUID
        assert row["spacing_mm"] == pytest.approx([float(ds.PixelSpacing[1]), float(ds.PixelSpacing[0])])
        assert row["n_slices"] == 1 and row["dtype"] == "float32"


def test_inspect_series_and_nifti(tmp_path, rng) -> None:
    uid = pydicom.uid.generate_uid()
    for k in range(4):
        write_dicom(
            tmp_path / "s" / f"{k}.dcm",
            rng.integers(0, 100, (10, 12)).astype(np.uint16),
            modality="MR",
            series_uid=uid,
            position=(0, 0, 3.0 * k),
            instance_number=4 - k,
        )
    result = _invoke("inspect", "--json", str(tmp_path / "s"), str(nibabel_file("anatomical.nii")))
    assert result.exit_code == 0, result.output
    series, nifti = (json.loads(line) for line in result.stdout.splitlines())
    assert series["kind"] == "dicom-series" and series["n_slices"] == 4 and series["shape"] == [12, 10, 4]
    assert series["spacing_mm"] == pytest.approx([0.2, 0.2, 3.0]) and series["series_uid"] == uid
    img = nib.load(nibabel_file("anatomical.nii"))
    assert nifti["kind"] == "nifti" and nifti["shape"] == list(img.shape)
    assert nifti["mean"] == pytest.approx(float(img.get_fdata().mean()), rel=1e-5)


def _bad_inputs(tmp_path: Path, rng) -> dict[str, str]:
    """Every bad input the foundation issue lists, with a word its error must carry."""
    bad = {}
    (tmp_path / "empty.dcm").write_bytes(b"")
    bad["empty.dcm"] = "empty file"
    (tmp_path / "text.dcm").write_text("this is a text file\n" * 10)
    bad["text.dcm"] = "not a DICOM file"
    data = pydicom_file("CT_small.dcm").read_bytes()
    (tmp_path / "truncated.dcm").write_bytes(data[:-6000])
    bad["truncated.dcm"] = "truncated"
    (tmp_path / "nopixels.dcm").write_bytes(pydicom_file("rtplan.dcm").read_bytes())
    bad["nopixels.dcm"] = "no pixel data"
    nib.save(nib.Nifti1Image(np.full((6, 6, 6), np.nan, np.float32), np.eye(4)), tmp_path / "nan.nii.gz")
    bad["nan.nii.gz"] = "NaN"
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.102"
    ds.PixelData = encapsulate([b"\x00" * 64])
    ds.save_as(tmp_path / "mpeg4.dcm")
    bad["mpeg4.dcm"] = "unsupported transfer syntax"
    huge = write_dicom(tmp_path / "oversized.dcm", rng.integers(0, 9, (4, 4)).astype(np.uint16))
    ds = pydicom.dcmread(huge)
    ds.Rows, ds.Columns, ds.NumberOfFrames = 50000, 50000, 50
    ds.save_as(huge)
    bad["oversized.dcm"] = "over the limit"
    return bad


def test_every_bad_input_gets_one_line_and_exit_2(tmp_path, rng) -> None:
    bad = _bad_inputs(tmp_path, rng)
    good = str(pydicom_file("MR_small.dcm"))
    args = [str(tmp_path / name) for name in bad]
    result = _invoke("inspect", "--json", args[0], good, *args[1:])
    assert result.exit_code == 2
    errors = result.stderr.splitlines()
    assert len(errors) == len(bad), result.stderr
    for line, (name, needle) in zip(errors, bad.items(), strict=True):
        assert line.startswith(f"error: {tmp_path / name}: "), line
        assert needle in line, line
        assert "Traceback" not in line
    # The good file in the middle was still processed.
    assert [json.loads(x)["path"] for x in result.stdout.splitlines()] == [good]


def test_console_script_exit_status_and_debug(tmp_path) -> None:
    (tmp_path / "empty.dcm").write_bytes(b"")
    cmd = [sys.executable, "-m", "medvision.cli", "inspect", str(tmp_path / "empty.dcm")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    expected = f"error: {tmp_path / 'empty.dcm'}: empty file (0 bytes); re-export or re-copy the file"
    assert proc.stderr.strip() == expected
    debug = subprocess.run([*cmd[:3], "--debug", *cmd[3:]], capture_output=True, text=True, timeout=120)
    assert debug.returncode == 2 and "Traceback" in debug.stderr


def test_inspect_human_output() -> None:
    result = _invoke("inspect", str(pydicom_file("CT_small.dcm")))
    assert result.exit_code == 0
    assert "modality CT" in result.stdout and "shape 128x128" in result.stdout
