"""The report's writer processes (issue 15): each study's overlays, SR and secondary capture are written by
forked processes (one, and a second when the first falls behind) while the next batch goes through the network.
They must change nothing that is written, and a writer that dies must lose no study."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pydicom
import pytest

import medvision.reporting.radiographs as radiographs
from medvision.config import ReportConfig
from medvision.reporting.batch import run_report
from tests.reporting.conftest import FakeDetector, MixedFolder
from tests.reporting.test_sr import frozen_clock  # noqa: F401 - a fixture

pytestmark = pytest.mark.usefixtures("mlflow_globals")


def _report(root: Path, out: Path, uri: str) -> dict:
    config = ReportConfig(input=root, out=out, tracking_uri=uri, image_format="jpeg", secondary_capture=True,
                          deidentify={"enabled": True, "salt": "writer-test"})  # fmt: skip
    return run_report(config, detector=FakeDetector(), progress=False)


def _oriented(mixed: MixedFolder, tmp_path: Path) -> Path:
    # A patient orientation on every radiograph, so that each study gets a secondary capture.
    root = tmp_path / "in"
    shutil.copytree(mixed.root, root)
    for path in mixed.radiographs:
        target = root / path.relative_to(mixed.root)
        ds = pydicom.dcmread(target)
        ds.PatientOrientation = ["L", "F"]
        ds.BurnedInAnnotation = "NO"
        ds.save_as(target)
    return root


def _files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.suffix in (".dcm", ".jpg")}  # fmt: skip


def test_the_writer_process_writes_what_the_report_writes_inline(
    mixed: MixedFolder, registered_classifier: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    frozen_clock: None,  # noqa: F811
) -> None:  # fmt: skip
    import datetime
    import types

    import highdicom.sc.sop

    from tests.reporting.test_sr import _FrozenDateTime

    # highdicom's secondary capture stamps its capture time with now(): fixed, as the SR's clock is.
    monkeypatch.setattr(highdicom.sc.sop, "datetime", types.SimpleNamespace(datetime=_FrozenDateTime,
                                                                            date=datetime.date, time=datetime.time))
    root = _oriented(mixed, tmp_path)
    monkeypatch.setattr(radiographs, "WRITER_MIN_STUDIES", 10**9)  # inline
    _report(root, tmp_path / "inline", registered_classifier)
    forks = []
    real = radiographs._Writer.__init__

    def counting(self, studies: int) -> None:
        real(self, studies)
        forks.append(len(self.pools))

    monkeypatch.setattr(radiographs._Writer, "__init__", counting)
    monkeypatch.setattr(radiographs, "WRITER_MIN_STUDIES", 1)  # one writer process (3 studies: no backlog of 8)
    _report(root, tmp_path / "forked", registered_classifier)
    # Two writer processes, the second taking a study whenever the first has one waiting. Each study takes 0.3 s
    # more in a writer, so that the first has one waiting when the next comes: the studies are spread over both.
    _WHO[:] = [tmp_path / "who"]
    _WHO[0].mkdir()
    monkeypatch.setattr(radiographs, "WRITER_BACKLOG", 1)
    monkeypatch.setattr(radiographs, "_write_study_files", _slow_in_a_writer)
    _report(root, tmp_path / "two", registered_classifier)
    assert forks == [1, 2]

    inline = json.loads((tmp_path / "inline" / "results.json").read_text())["rows"]
    written = [r for r in inline if r.get("task") == "classification" and r.get("sr_path")]
    assert len(written) == 3 and all(r.get("secondary_capture_path") and r.get("images") for r in written)
    a = _files(tmp_path / "inline")
    assert len([k for k in a if k.startswith("sc/")]) >= 3
    for folder in ("forked", "two"):
        assert json.loads((tmp_path / folder / "results.json").read_text())["rows"] == inline, folder
        b = _files(tmp_path / folder)
        assert sorted(a) == sorted(b), folder
        for name in a:
            assert a[name] == b[name], (folder, name)  # the same bytes: SR, SC and pictures
    writers = {p.read_text() for p in _WHO[0].iterdir()}
    assert len(list(_WHO[0].iterdir())) == 3 and len(writers) == 2 and str(os.getpid()) not in writers


_WHO: list[Path] = []  # where each study's writer leaves its pid


def _slow_in_a_writer(job):  # noqa: ANN001, ANN202 - pickled by name to the writer processes
    import time

    time.sleep(0.3)
    (_WHO[0] / job.key).write_text(str(os.getpid()))
    return _REAL(job)


_PARENT: list[int] = []
_INLINE: list[str] = []
_REAL = radiographs._write_study_files


def _dies_in_the_child(job):  # noqa: ANN001, ANN202 - pickled by name to the writer process
    if os.getpid() not in _PARENT:
        os._exit(1)  # the writer process is killed (out of memory, a signal)
    _INLINE.append(job.key)
    return _REAL(job)


@pytest.mark.parametrize("backlog", [8, 1], ids=["one writer", "two writers"])
def test_a_writer_process_that_dies_loses_no_study(
    mixed: MixedFolder, registered_classifier: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backlog: int
) -> None:
    root = _oriented(mixed, tmp_path)
    _PARENT[:] = [os.getpid()]
    _INLINE.clear()
    monkeypatch.setattr(radiographs, "_write_study_files", _dies_in_the_child)
    monkeypatch.setattr(radiographs, "WRITER_MIN_STUDIES", 1)
    monkeypatch.setattr(radiographs, "WRITER_BACKLOG", backlog)  # 1: a second process, which dies too
    summary = _report(root, tmp_path / "report", registered_classifier)
    rows = json.loads((tmp_path / "report" / "results.json").read_text())["rows"]
    ok = [r for r in rows if r["status"] == "ok" and r.get("task") == "classification"]
    assert summary["failed"] == sum(1 for r in rows if r["status"] == "failed")
    assert len(ok) == 3
    assert sorted(_INLINE) == sorted(r["study_key"] for r in ok)  # each written again here, once
    for row in ok:
        assert (tmp_path / "report" / row["sr_path"]).is_file()
        assert (tmp_path / "report" / row["secondary_capture_path"]).is_file()
        assert all((tmp_path / "report" / i["path"]).is_file() for i in row["images"])
