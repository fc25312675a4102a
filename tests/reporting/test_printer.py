"""The pre-started Chromium (issue 15): report.pdf printed through the DevTools pipe by a browser started with the
report. It must print the PDF the one-shot path prints, fall back to that path when its browser is gone, keep the
time limit, and leave no process or file behind. Real Chromium, as in test_render.py."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

import medvision.reporting.printer as printer_module
from medvision.config import ReportConfig
from medvision.reporting import render
from medvision.reporting.batch import run_report
from medvision.reporting.printer import Printer
from medvision.reporting.render import PdfError, render_report
from tests.reporting.conftest import FakeDetector, MixedFolder
from tests.reporting.test_render import fake_chromium, make_rows, pdf_pages_text

GENERATED = "2025-01-02 03:04 UTC"


def _same_but_dates_and_tag_ids(pdf: Path) -> bytes:
    # A PDF's creation and modification dates, and the DOM node numbers Chromium writes into its structure tags
    # (the numbers of the nodes as the browser made them: they differ from one print to the next, either way).
    data = re.sub(rb"D:\d{14}[^)]*", b"D:", pdf.read_bytes())
    return re.sub(rb"\(node\d+\)", b"(node)", data)  # an element's /ID, and the /Headers that name it


def _living_in_group(group: int, wait_s: float = 5.0) -> list[int]:
    """The processes of a process group that are not zombies (an orphan that nobody has reaped yet is dead)."""
    deadline = time.monotonic() + wait_s
    while True:
        living = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] != "Z" and int(fields[2]) == group:
                living.append(int(stat.parent.name))
        if not living or time.monotonic() > deadline:
            return living
        time.sleep(0.1)


def test_the_started_printer_prints_the_pdf_that_the_one_shot_path_prints(tmp_path: Path) -> None:
    one_shot, started = tmp_path / "one-shot", tmp_path / "started"
    render_report(make_rows(one_shot), one_shot, generated_at=GENERATED)
    with Printer.start() as printer:
        assert printer.process is not None and printer.why is None
        time.sleep(0.5)  # as in a report: the browser starts while the studies go through the network
        render_report(make_rows(started), started, generated_at=GENERATED, printer=printer)
        assert printer.process is not None and printer.why is None, "it printed the one-shot way"
        pid = printer.process.pid
        scratch = Path(printer.scratch.name)
        assert list(scratch.glob("*.html")) == []  # the document holds identifiers: gone once printed
    a, b = one_shot / "report.pdf", started / "report.pdf"
    assert pdf_pages_text(a) == pdf_pages_text(b) and len(pdf_pages_text(b)) >= 2
    assert _same_but_dates_and_tag_ids(a) == _same_but_dates_and_tag_ids(b)
    assert not [p for p in started.rglob("*") if p.name.endswith(".tmp")]
    assert _living_in_group(pid) == [], "closed, Chromium and its processes are gone"
    assert not scratch.exists()  # its profile too


def test_a_printer_whose_browser_died_prints_the_one_shot_way(tmp_path: Path) -> None:
    out = tmp_path / "report"
    with Printer.start() as printer:
        assert printer.process is not None
        os.killpg(printer.process.pid, 9)
        printer.process.wait(timeout=10)
        render_report(make_rows(out), out, generated_at=GENERATED, printer=printer)
        assert printer.process is None and printer.why  # it said why, and printed with a new browser
    assert (out / "report.pdf").read_bytes()[:5] == b"%PDF-"
    assert len(pdf_pages_text(out / "report.pdf")) >= 2


def test_a_printer_that_does_not_answer_in_time_is_killed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "child-survived"
    # A "browser" that never answers on its pipe, with a child in the background like Chromium's renderer.
    monkeypatch.setenv(render.CHROMIUM_ENV, fake_chromium(tmp_path, f"(sleep 3; touch {marker}) & sleep 60"))
    pdf = tmp_path / "report.pdf"
    with Printer.start() as printer:
        start = time.monotonic()
        with pytest.raises(PdfError, match="did not print the report within 1 s"):
            printer.print_pdf("<html><body>x</body></html>", pdf, timeout_s=1.0)
        assert time.monotonic() - start < 15
        assert printer.process is None
    assert not pdf.exists() and not list(tmp_path.glob(".report.pdf.*"))
    time.sleep(3.5)
    assert not marker.exists(), "a process the browser started outlived the time limit"


def test_without_chromium_the_printer_says_what_the_one_shot_path_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(render.CHROMIUM_ENV, raising=False)
    monkeypatch.setattr(render, "CHROMIUM_BINARIES", ("medvision-no-such-chromium",))
    printer = Printer.start()  # never raises: the report goes on, and only the PDF is missing
    assert printer.process is None and "medvision-no-such-chromium" in str(printer.why)
    with pytest.raises(PdfError, match="install chromium: apt-get install chromium"):
        printer.print_pdf("<html></html>", tmp_path / "report.pdf", timeout_s=5)
    printer.close()


def test_the_report_prints_with_the_browser_it_started(
    mixed: MixedFolder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    class Mean(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(1, 2, 3))[:, None]

    printed: list[tuple[bool, str | None]] = []
    real = Printer.print_pdf

    def recording(self: Printer, document: str, pdf: Path, *, timeout_s: float) -> None:
        started = self.process is not None
        real(self, document, pdf, timeout_s=timeout_s)
        printed.append((started and self.process is not None, self.why))

    monkeypatch.setattr(Printer, "print_pdf", recording)
    assert printer_module.PRESTART
    metadata = {"backbone": "mean", "image_size": 32, "mean": 0.5, "std": 0.25, "threshold": 0.5, "intended_use": "t"}
    out = tmp_path / "out"
    summary = run_report(ReportConfig(input=mixed.root, out=out), classifier=(Mean(), metadata),
                         detector=FakeDetector(), progress=False)  # fmt: skip
    assert printed == [(True, None)]
    assert summary["pdf"] == str(out / "report.pdf") and (out / "report.pdf").read_bytes()[:5] == b"%PDF-"
