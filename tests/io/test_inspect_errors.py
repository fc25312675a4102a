"""`medvision inspect` on malformed files: one typed error line per bad path on stderr, exit status 3, never
"unexpected" or a traceback, and ``--json`` lines that are strict JSON (no NaN/Infinity) with the notes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
from typer.testing import CliRunner

from medvision.cli import app
from medvision.io import summarise
from tests.conftest import pydicom_file
from tests.io.test_dicom_malformed import MALFORMED, _set

runner = CliRunner()


def _strict(text: str) -> dict:
    def refuse(constant: str) -> None:
        raise AssertionError(f"non-strict JSON constant {constant} in {text}")

    return json.loads(text, parse_constant=refuse)


def _bad_files(tmp_path: Path) -> list[tuple[Path, str]]:
    files = []
    for n, (_case, build, _error, needle) in enumerate(MALFORMED):
        folder = tmp_path / f"case{n:02d}"
        folder.mkdir()
        files.append((build(folder), needle))
    return files


def test_every_malformed_file_gets_one_typed_line_and_exit_3(tmp_path, monkeypatch) -> None:
    bad = _bad_files(tmp_path)
    good = pydicom_file("MR_small.dcm")
    args = [str(p) for p, _ in bad[:3]] + [str(good)] + [str(p) for p, _ in bad[3:]]
    result = runner.invoke(app, ["inspect", "--json", *args])
    assert result.exit_code == 3, result.output
    errors = result.stderr.splitlines()
    assert len(errors) == len(bad), result.stderr
    for line, (path, needle) in zip(errors, bad, strict=True):
        assert line.startswith(f"error: {path}: "), line
        assert needle in line, line
        assert "unexpected" not in line.lower() and "Traceback" not in line
    rows = [_strict(line) for line in result.stdout.splitlines()]
    assert [row["path"] for row in rows] == [str(good)]


def test_memory_error_inside_pydicom_is_one_line(monkeypatch) -> None:
    def no_memory(self):
        raise MemoryError

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(no_memory))
    path = pydicom_file("CT_small.dcm")
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 3
    assert result.stderr.splitlines() == [
        f"error: {path}: ran out of memory while decoding (7FE0,0010) PixelData: the image is larger than this "
        "machine can hold; lower --max-voxels to refuse such files before decoding"
    ]


def test_an_error_inside_summarise_is_typed_too(monkeypatch) -> None:
    import medvision.io as mio

    def broken(array, meta):
        raise ValueError("boom")

    monkeypatch.setattr(mio, "summarise", broken)
    path = pydicom_file("CT_small.dcm")
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 3
    assert result.stderr.splitlines() == [
        f"error: {path}: inspecting the image failed (ValueError: boom); re-export or re-copy the file"
    ]


def test_notes_in_json_and_text(tmp_path) -> None:
    path = _set("PixelSpacing", None)(tmp_path)
    note = "no (0028,0030) PixelSpacing or (0018,1164) ImagerPixelSpacing: 1 mm per pixel assumed"
    result = runner.invoke(app, ["inspect", "--json", str(path), str(pydicom_file("CT_small.dcm"))])
    assert result.exit_code == 0, result.output
    fallback, plain = (_strict(line) for line in result.stdout.splitlines())
    assert fallback["notes"] == [note] and fallback["spacing_mm"] == [1.0, 1.0]
    assert plain["notes"] == [] and plain["non_finite_voxels"] == 0
    text = runner.invoke(app, ["inspect", str(path)])
    assert text.exit_code == 0 and f"  note: {note}" in text.stdout.splitlines()


def test_summary_is_strict_json_for_non_finite_voxels_and_spacings() -> None:
    """A float NIfTI volume may hold NaN by design: the statistics skip them and count them."""
    array = np.array([[1.0, np.nan], [np.inf, 3.0]], dtype=np.float32)
    meta = {"spatial_shape": [2, 2], "spacing_mm": [1.0, float("nan")], "kind": "nifti", "path": "x.nii"}
    info = summarise(array, meta)
    assert (info["min"], info["max"], info["mean"], info["non_finite_voxels"]) == (1.0, 3.0, 2.0, 2)
    assert info["spacing_mm"] == [1.0, None]
    _strict(json.dumps(info, allow_nan=False))
    everything_nan = summarise(np.full((2, 2), np.nan), {"spatial_shape": [2, 2], "spacing_mm": [1.0, 1.0]})
    assert everything_nan["min"] is None and everything_nan["non_finite_voxels"] == 4
    _strict(json.dumps(everything_nan, allow_nan=False))


def test_console_script_prints_one_line_per_file_without_traceback(tmp_path) -> None:
    """The real console entry point (one process for three files: importing torch and MONAI is slow)."""
    cases = ["no-rows-no-syntax (pydicom meta_missing_tsyntax.dcm)", "RescaleSlope-nan", "deflate-truncated"]
    files = []
    for n, case in enumerate(cases):
        build, needle = next((m[1], m[3]) for m in MALFORMED if m[0] == case)
        (tmp_path / str(n)).mkdir()
        files.append((build(tmp_path / str(n)), needle))
    proc = subprocess.run(
        [sys.executable, "-m", "medvision.cli", "inspect", "--json", *[str(p) for p, _ in files]],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == len(files), proc.stderr
    for line, (path, needle) in zip(lines, files, strict=True):
        assert line.startswith(f"error: {path}: ") and needle in line, line
    assert "unexpected" not in proc.stderr.lower() and "Traceback" not in proc.stderr
