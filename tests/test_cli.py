"""The ``medvision`` command: ``inspect`` on pydicom's files (one error line per bad input, exit 3); the exit codes
(0, 2 usage, 3 MedvisionError, 130 interrupted, 1 bug), ``--version``, help without torch/monai/mlflow, run-id
prefixes and reading commands that never create a tracking store (issue 13, item 6)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut
from typer.testing import CliRunner

import medvision
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


def test_every_bad_input_gets_one_line_and_exit_3(tmp_path, rng) -> None:
    bad = _bad_inputs(tmp_path, rng)
    good = str(pydicom_file("MR_small.dcm"))
    args = [str(tmp_path / name) for name in bad]
    result = _invoke("inspect", "--json", args[0], good, *args[1:])
    assert result.exit_code == 3
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
    assert proc.returncode == 3
    expected = f"error: {tmp_path / 'empty.dcm'}: empty file (0 bytes); re-export or re-copy the file"
    assert proc.stderr.strip() == expected
    debug = subprocess.run([*cmd[:3], "--debug", *cmd[3:]], capture_output=True, text=True, timeout=120)
    assert debug.returncode == 3 and "Traceback" in debug.stderr


def test_inspect_human_output() -> None:
    result = _invoke("inspect", str(pydicom_file("CT_small.dcm")))
    assert result.exit_code == 0
    assert "modality CT" in result.stdout and "shape 128x128" in result.stdout


# ---------------------------------------------------------------------------------------------- exit codes


def _medvision(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m medvision.cli ARGS`` in a fresh process (the console script's main(), exit code and all)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return subprocess.run(
        [sys.executable, "-m", "medvision.cli", *args],
        cwd=cwd,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("args", "hint", "said"),
    [
        (["inspect", "--no-such-option", "x.dcm"], "medvision inspect", "No such option: --no-such-option"),
        (["evaluate", "--data", "x.csv"], "medvision evaluate", "Missing option '--model'"),
        (["no-such-command"], "medvision", "No such command 'no-such-command'"),
        (["runs", "list", "--uri", "sqlite:///x.db"], "medvision runs list", "No such option: --uri"),  # the old name
    ],
)
def test_a_usage_error_exits_2_with_clicks_usage(tmp_path: Path, args: list[str], hint: str, said: str) -> None:
    proc = _medvision(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"Usage: {hint} ") and f"Try '{hint} --help' for help." in proc.stderr
    assert f"Error: {said}" in proc.stderr, proc.stderr
    assert "unexpected" not in proc.stderr and "Traceback" not in proc.stderr and proc.stdout == ""


def test_a_medvision_error_exits_3_with_one_line(tmp_path: Path) -> None:
    proc = _medvision("train", cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.splitlines() == [
        "error: train: give either a CONFIG file or --from-run RUN_ID; e.g. medvision train"
        " configs/pneumonia_demo.yaml, or medvision train --from-run RUN_ID"
    ]
    debug = _medvision("--debug", "train", cwd=tmp_path)
    assert debug.returncode == 3 and "Traceback" in debug.stderr and "ConfigError" in debug.stderr


def test_version(tmp_path: Path) -> None:
    proc = _medvision("--version", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout == f"medvision {medvision.__version__}\n" and proc.stderr == ""


def test_a_bug_exits_1_and_ctrl_c_exits_130(monkeypatch: pytest.MonkeyPatch) -> None:
    """In this process: CliRunner runs the same handler as the console script (the root command's main)."""
    from medvision.tracking import review

    def boom(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("a bug\nover two lines")

    monkeypatch.setattr(review, "list_runs", boom)
    result = _invoke("runs", "list")
    assert result.exit_code == 1 and result.stderr == "error: unexpected RuntimeError: a bug over two lines\n"

    def interrupted(*_args: Any, **_kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(review, "list_runs", interrupted)
    result = _invoke("runs", "list")
    assert result.exit_code == 130 and result.stderr == "interrupted\n"


# ---------------------------------------------------------------------------------------------- fast help

#: Every command and sub-command, with --help; and --version.
HELP_ARGVS = [
    ["--help"],
    ["--version"],
    *[
        [c, "--help"]
        for c in ("inspect", "demo-data", "train", "evaluate", "predict", "report", "listen", "runs", "weights")
    ],
    *[["runs", c, "--help"] for c in ("list", "compare", "promote", "show")],
    *[["weights", c, "--help"] for c in ("import", "list")],
]
HEAVY = ("torch", "torchvision", "monai", "mlflow")


def test_help_and_version_import_no_torch_monai_or_mlflow(tmp_path: Path) -> None:
    script = (
        "from medvision.cli import main\n"
        f"for argv in {HELP_ARGVS!r}:\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, (argv, exc.code)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert {"typer", "medvision.cli", "medvision.cli.runs", "medvision.cli.weights"} <= imported  # the parse works
    heavy = sorted(name for name in imported if name.split(".")[0] in HEAVY)
    assert heavy == [], heavy
    for command in ("inspect", "train", "report", "runs", "weights"):
        assert f"{command} " in proc.stdout
    assert f"medvision {medvision.__version__}" in proc.stdout
    assert proc.stdout.count("--tracking-uri") >= 8  # train, evaluate, predict, report, runs list/compare/promote/show


# ---------------------------------------------------------------------------------------------- run-id prefixes

#: Run ids chosen so that "abc1" and "abc2" are unique prefixes and "abc" is ambiguous.
RUN_IDS = ("abc10000000000000000000000000001", "abc20000000000000000000000000002", "def30000000000000000000000000003")


@pytest.fixture
def three_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An SQLite store with three runs whose ids are :data:`RUN_IDS`, made with MLflow directly."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'runs.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("prefix-test")
    ids = iter(uuid.UUID(hex=run_id) for run_id in RUN_IDS)
    with monkeypatch.context() as patch:
        patch.setattr(uuid, "uuid4", lambda: next(ids))  # MLflow's store names a new run uuid.uuid4().hex
        runs = [client.create_run(experiment, run_name=f"run-{n}") for n in range(len(RUN_IDS))]
    assert [r.info.run_id for r in runs] == list(RUN_IDS)
    for run in runs:
        client.set_terminated(run.info.run_id)
    return uri


def test_a_unique_run_id_prefix_names_its_run(three_runs: str) -> None:
    from medvision.tracking.review import resolve_run_id

    assert resolve_run_id(three_runs, "abc2") == RUN_IDS[1]
    assert resolve_run_id(three_runs, " DEF3 ") == RUN_IDS[2]
    assert resolve_run_id(three_runs, RUN_IDS[0]) == RUN_IDS[0]
    result = _invoke("runs", "show", "abc1", "--tracking-uri", three_runs, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["run_id"] == RUN_IDS[0]


def test_an_ambiguous_or_unknown_run_id_prefix_is_refused(three_runs: str) -> None:
    result = _invoke("runs", "show", "abc", "--tracking-uri", three_runs)
    assert result.exit_code == 3 and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: run abc: the prefix 'abc' is ambiguous")
    assert RUN_IDS[0] in result.stderr and RUN_IDS[1] in result.stderr and RUN_IDS[2] not in result.stderr
    assert "give more characters of the run id" in result.stderr

    result = _invoke("runs", "compare", "abc1", "0123", "--tracking-uri", three_runs)
    assert result.exit_code == 3 and result.stderr.startswith("error: run 0123: there is no such run in sqlite:")
    assert "no run id starts with '0123'" in result.stderr and "medvision runs list" in result.stderr


@pytest.mark.usefixtures("mlflow_globals")
def test_a_runs_model_uri_takes_a_prefix_too(three_runs: str) -> None:
    from medvision.errors import TrackingError
    from medvision.tracking.registry import model_provenance

    assert model_provenance("runs:/abc2/model", tracking_uri=three_runs)["run_id"] == RUN_IDS[1]
    with pytest.raises(TrackingError, match="the prefix 'abc' is ambiguous"):
        model_provenance("runs:/abc/model", tracking_uri=three_runs)


# ---------------------------------------------------------------------------------------------- no store created


def test_runs_list_never_creates_a_store(tmp_path: Path) -> None:
    proc = _medvision("runs", "list", cwd=tmp_path)  # the default store, ./mlflow.db
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.splitlines() == [
        f"error: tracking.uri: there is no tracking store at {tmp_path.resolve() / 'mlflow.db'}"
        f" (sqlite:///{tmp_path.resolve() / 'mlflow.db'}); train a model first (`medvision train CONFIG`), or"
        " point --tracking-uri (or $MLFLOW_TRACKING_URI) at the store the runs were logged to"
    ]
    assert list(tmp_path.iterdir()) == []

    empty = tmp_path / "empty.db"
    empty.touch()
    proc = _medvision("runs", "list", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": f"sqlite:///{empty}"})
    assert proc.returncode == 3 and f"the tracking store {empty} is an empty file" in proc.stderr, proc.stderr
    assert empty.stat().st_size == 0  # not turned into an MLflow database


def test_evaluate_never_creates_a_store(tmp_path: Path) -> None:
    store = tmp_path / "none" / "mlflow.db"
    args = ["--model", "models:/pneumonia-classifier@champion", "--data", str(tmp_path / "data.csv")]
    proc = _medvision("evaluate", *args, "--tracking-uri", f"sqlite:///{store}", cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]  # after warnings of the libraries, if any
    assert last.startswith(f"error: tracking.uri: there is no tracking store at {store}"), proc.stderr
    assert not store.exists() and not store.parent.exists()


def test_report_never_creates_a_store(tmp_path: Path) -> None:
    from tests.reporting.conftest import _radiograph

    write_dicom(tmp_path / "in" / "a.dcm", _radiograph(np.random.default_rng(0)), modality="DX", bits_stored=12)
    store = tmp_path / "mlflow.db"
    proc = _medvision("report", "--input", "in", "--out", "out", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]  # after warnings of the libraries, if any
    assert last.startswith(f"error: tracking.uri: there is no tracking store at {store}"), proc.stderr
    assert not store.exists() and not (tmp_path / "out").exists()
