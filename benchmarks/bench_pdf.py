"""report.pdf three ways, side by side on the same rows: reportlab (the layout medvision had before),
the report's HTML printed by headless Chromium (what medvision uses) and by WeasyPrint.

The rows are a realistic batch: ``--studies`` studies (default 40) made like tests/reporting/test_render.py
does, most of them radiographs with a 512-pixel display picture and its Grad-CAM overlay, every fifth a CT
with a key slice and a detected box, every tenth failed and every fifteenth not applicable. The pictures
are read and the thumbnails made once, outside the timings; each engine is then timed from the rows to the
finished PDF (reportlab: the platypus story; Chromium and WeasyPrint: the print document from the Jinja2
templates, then the print), ``--repeats`` times, median kept.

For each engine it prints seconds per study, file size, pages (``pdfinfo``) and how many studies'
key text ``pdftotext`` finds (study key, patient id, finding, probability) and on how many pages it
finds the notice, then the same as ratios to reportlab.

WeasyPrint is a dev dependency (``pip install -e '.[dev]'``; it needs Debian's pango, present here); an
engine that is missing is reported as such, not measured.

Usage:
    .venv/bin/python benchmarks/bench_pdf.py
    .venv/bin/python benchmarks/bench_pdf.py --studies 60 --repeats 3 --image-format jpeg
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape as xml_escape

import numpy as np
from PIL import Image as PILImage

from medvision.reporting.render import (
    _BOX_HEAD,
    _OUTPUTS,
    _PROVENANCE,
    MAX_CELL_CHARS,
    NOTICE,
    STATUS_NOT_APPLICABLE,
    STATUS_OK,
    _box_cells,
    _cap,
    _date,
    _decision,
    _fixed,
    _intended_uses,
    _model_label,
    _models,
    _patient,
    _Picture,
    _print_document,
    _print_pdf,
    _priority_key,
    _studies,
    _Study,
    _study_details,
    _summary_items,
    _text,
)

# ----------------------------------------------------------------------------------------- reportlab, as it was
# medvision/reporting/render.py's _write_pdf and _pdf_fonts before the report had one layout (git history),
# kept here unchanged but for the name so the comparison stays reproducible.

_FONT_CACHE: dict[str, str] = {}


def _pdf_fonts() -> tuple[str, str]:
    """(regular, bold) font names: DejaVu Sans from matplotlib's data (wide Unicode cover), else Helvetica."""
    if _FONT_CACHE:
        return _FONT_CACHE["regular"], _FONT_CACHE["bold"]
    regular, bold = "Helvetica", "Helvetica-Bold"
    try:
        import importlib.util

        from reportlab.lib.fonts import addMapping
        from reportlab.pdfbase import pdfmetrics
        from reportlab.pdfbase.ttfonts import TTFont

        spec = importlib.util.find_spec("matplotlib")
        locations = list(spec.submodule_search_locations or []) if spec else []
        if locations:
            ttf = Path(locations[0]) / "mpl-data" / "fonts" / "ttf"
            pdfmetrics.registerFont(TTFont("MedvisionSans", str(ttf / "DejaVuSans.ttf")))
            pdfmetrics.registerFont(TTFont("MedvisionSans-Bold", str(ttf / "DejaVuSans-Bold.ttf")))
            for is_bold, is_italic, name in ((0, 0, "MedvisionSans"), (1, 0, "MedvisionSans-Bold"),
                                             (0, 1, "MedvisionSans"), (1, 1, "MedvisionSans-Bold")):  # fmt: skip
                addMapping("MedvisionSans", is_bold, is_italic, name)
            regular, bold = "MedvisionSans", "MedvisionSans-Bold"
    except (OSError, ImportError, ValueError):  # pragma: no cover - matplotlib is a dependency
        pass
    _FONT_CACHE.update(regular=regular, bold=bold)
    return regular, bold


def write_pdf_reportlab(
    path: Path,
    *,
    title: str,
    generated_at: str,
    summary_items: Sequence[tuple[str, str]],
    worklist: Sequence[_Study],
    unprocessed: Sequence[_Study],
    not_applicable: Sequence[_Study],
    all_studies: Sequence[_Study],
) -> None:
    from reportlab import rl_config
    from reportlab.lib import colors
    from reportlab.lib.enums import TA_LEFT
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
    from reportlab.lib.units import mm
    from reportlab.platypus import Image, PageBreak, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    # ASCII85 encoding of every image is reportlab's pure-Python hot spot (half of the render time measured
    # on 32 studies) and makes the file a quarter larger; binary streams are valid PDF.
    rl_config.useA85 = 0
    regular, bold = _pdf_fonts()
    sheet = getSampleStyleSheet()
    body = ParagraphStyle("mv-body", parent=sheet["BodyText"], fontName=regular, fontSize=9, leading=11.5)
    # embeddedHyphenation: long names such as "pneumonia-classifier" break after their hyphen, not mid-word
    cell = ParagraphStyle("mv-cell", parent=body, fontSize=7.5, leading=9, alignment=TA_LEFT, embeddedHyphenation=1)
    cell_head = ParagraphStyle("mv-cell-head", parent=cell, fontName=bold)
    h1 = ParagraphStyle("mv-h1", parent=sheet["Heading1"], fontName=bold, fontSize=16, leading=19)
    h2 = ParagraphStyle("mv-h2", parent=sheet["Heading2"], fontName=bold, fontSize=12, leading=15, spaceBefore=8)
    notice = ParagraphStyle("mv-notice", parent=body, fontName=bold, fontSize=10, leading=13, textColor=colors.white)

    margin = 15 * mm
    page_w, page_h = A4
    frame_w = page_w - 2 * margin

    def para(text: Any, style: ParagraphStyle = body, limit: int | None = None) -> Paragraph:
        value = text if isinstance(text, str) else _text(text)
        return Paragraph(xml_escape(_cap(value, limit) if limit else value), style)

    def c(text: Any, style: ParagraphStyle = cell) -> Paragraph:
        return para(text, style, MAX_CELL_CHARS)

    grid = [
        ("GRID", (0, 0), (-1, -1), 0.4, colors.HexColor("#999999")),
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ("LEFTPADDING", (0, 0), (-1, -1), 3),
        ("RIGHTPADDING", (0, 0), (-1, -1), 3),
    ]
    header_bg = [("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#eef1f5"))]

    def table(rows: list[list[Any]], widths: Sequence[float], *, head: bool = True, extra: Sequence = ()) -> Table:
        t = Table(rows, colWidths=list(widths), repeatRows=1 if head else 0, hAlign="LEFT")
        t.setStyle(TableStyle(grid + (header_bg if head else []) + list(extra)))
        return t

    def kv(items: Iterable[tuple[str, str]]) -> Table:
        rows = [[c(k, cell_head), c(v)] for k, v in items]
        return table(rows, [45 * mm, frame_w - 45 * mm], head=False,
                     extra=[("BACKGROUND", (0, 0), (0, -1), colors.HexColor("#eef1f5"))])  # fmt: skip

    def notice_box() -> Table:
        t = Table([[Paragraph(xml_escape(NOTICE), notice)]], colWidths=[frame_w], hAlign="LEFT")
        t.setStyle(TableStyle([("BACKGROUND", (0, 0), (-1, -1), colors.HexColor("#b00020")),
                               ("LEFTPADDING", (0, 0), (-1, -1), 6), ("TOPPADDING", (0, 0), (-1, -1), 5),
                               ("BOTTOMPADDING", (0, 0), (-1, -1), 6)]))  # fmt: skip
        return t

    def image(picture: _Picture, max_w: float, max_h: float) -> Image:
        scale = min(max_w / picture.width, max_h / picture.height)
        return Image(io.BytesIO(picture.data), width=picture.width * scale, height=picture.height * scale)

    def provenance(models: Sequence[Mapping[str, Any]]) -> Any:
        if not models:
            return para("No model recorded.")
        widths = [frame_w * f for f in (0.2, 0.1, 0.26, 0.24, 0.2)]
        rows = [[c(label, cell_head) for _, label in _PROVENANCE]]
        rows += [[c(m.get(k)) for k, _ in _PROVENANCE] for m in models]
        return table(rows, widths)

    def intended_use(uses: Sequence[str]) -> list[Any]:
        if not uses:
            return [para("The intended use of the model was not recorded.")]
        return [para("• " + use) for use in uses]

    def problems(studies: Sequence[_Study]) -> Any:
        if not studies:
            return para("None.")
        rows = [[c("Source", cell_head), c("Reason", cell_head), c("Study", cell_head)]]
        rows += [[c(s.row.get("source")), c(s.row.get("reason")), c(s.key)] for s in studies]
        return table(rows, [frame_w * 0.4, frame_w * 0.4, frame_w * 0.2])

    story: list[Any] = [notice_box(), Spacer(1, 4 * mm), para(title, h1), para(f"Generated {generated_at}")]
    story += [para("Summary", h2), kv(summary_items)]
    story += [para("Intended use", h2), *intended_use(_intended_uses(all_studies))]

    story.append(para("Worklist (most suspicious first)", h2))
    head = ["Rank", "Patient", "Study date", "Modality", "Finding", "Probability", "Decision", "Model", "Image"]
    widths_mm = [10, 23, 18.5, 15.5, 19, 18.5, 26, 27.5, 20]  # the header words and a date fit unbroken
    widths = [w * frame_w / sum(widths_mm) for w in widths_mm]
    rows: list[list[Any]] = [[c(h, cell_head) for h in head]]
    flagged_rows = []
    for study in worklist:
        row = study.row
        flagged = row.get("flagged") is True
        if flagged:
            flagged_rows.append(len(rows))
        thumb = image(study.thumbnail, widths[-1] - 6, 18 * mm) if study.thumbnail else c("no image")
        rows.append([
            c(str(study.rank)), c(_patient(row)), c(_date(row.get("study_date"))), c(row.get("modality")),
            c(row.get("finding") or row.get("task")), c(_fixed(row.get("probability"))),
            c(_decision(row), cell_head if flagged else cell), c(_model_label(study.model)), thumb,
        ])  # fmt: skip
    if worklist:
        flagged_bg = [("BACKGROUND", (0, r), (-1, r), colors.HexColor("#fdecea")) for r in flagged_rows]
        story.append(table(rows, widths, extra=flagged_bg))
    else:
        story.append(para("No study in the worklist."))
    story += [para("Could not be processed", h2), problems(unprocessed)]
    if not_applicable:
        story += [para("Not applicable", h2), problems(not_applicable)]
    story += [para("Models", h2), provenance(_models(all_studies))]

    for study in [*worklist, *unprocessed, *not_applicable]:
        row = study.row
        story += [PageBreak(), para(f"Study {study.key}: {_patient(row)}", h1)]
        if study.status != STATUS_OK:
            label = "Not applicable" if study.status == STATUS_NOT_APPLICABLE else "Could not be processed"
            story.append(para(f"{label}: {_text(row.get('reason'))}"))
            story.append(Spacer(1, 2 * mm))
        story.append(kv(_study_details(study)))
        if study.pictures or study.image_problems:
            story.append(para("Images", h2))
            per_row = 1 if len(study.pictures) == 1 else 2
            col_w = frame_w / per_row
            cells = [[image(p, col_w - 8, 95 * mm), para(p.caption, cell)] for p in study.pictures]
            grid_rows = [cells[i : i + per_row] for i in range(0, len(cells), per_row)]
            if grid_rows:
                grid_rows[-1] += [""] * (per_row - len(grid_rows[-1]))
                pictures = Table(grid_rows, colWidths=[col_w] * per_row, hAlign="LEFT")
                pictures.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP")]))
                story.append(pictures)
            story += [para(msg) for msg in study.image_problems]
        if study.boxes or row.get("task") == "detection":
            story.append(para("Detected boxes", h2))
            if study.boxes:
                box_rows = [[c(h, cell_head) for h in _BOX_HEAD]]
                box_rows += [[c(str(i)), *(c(v) for v in _box_cells(b))] for i, b in enumerate(study.boxes, 1)]
                box_widths = [frame_w * f for f in (0.06, 0.46, 0.24, 0.12, 0.12)]
                story.append(table(box_rows, box_widths))
            else:
                story.append(para("No box above the detector's score threshold."))
        outputs = [(label, row.get(key)) for label, key in _OUTPUTS if row.get(key) not in (None, "")]
        if outputs:
            story += [para("DICOM outputs", h2), kv([(label, _text(p)) for label, p in outputs])]
        use = study.model.get("intended_use")
        story += [para("Intended use", h2), *intended_use([_text(use)] if use not in (None, "") else [])]
        story += [para("Model provenance", h2), provenance([study.model] if study.model else [])]

    def decorate(canvas: Any, doc: Any) -> None:
        canvas.saveState()
        canvas.setStrokeColor(colors.HexColor("#b00020"))
        canvas.setLineWidth(0.8)
        canvas.line(margin, 13 * mm, page_w - margin, 13 * mm)
        canvas.setFillColor(colors.HexColor("#b00020"))
        canvas.setFont(bold, 6.5)
        canvas.drawString(margin, 9 * mm, NOTICE)
        canvas.setFillColor(colors.black)
        canvas.setFont(regular, 6.5)
        canvas.drawRightString(page_w - margin, 9 * mm, f"page {doc.page}")
        canvas.drawString(margin, page_h - 9 * mm, _cap(f"{title} · generated {generated_at}", 150))
        canvas.restoreState()

    doc = SimpleDocTemplate(
        str(path),
        pagesize=A4,
        leftMargin=margin,
        rightMargin=margin,
        topMargin=14 * mm,
        bottomMargin=18 * mm,
        title=title,
        author="medvision",
        subject=NOTICE,
        invariant=True,
    )
    doc.build(story, onFirstPage=decorate, onLaterPages=decorate)


# ----------------------------------------------------------------------------------------- the rows

INTENDED_CXR = "Triage of adult chest radiographs for pneumonia; a radiologist reads every study."
INTENDED_CT = "Prioritisation of CT/MR volumes with suspected tumour; not a diagnosis."
DISPLAY_PX = 512  # medvision.reporting.radiographs.DISPLAY_SIZE


def _model(name: str, version: int, run_id: str, intended_use: str) -> dict:
    weights = "imagenet (torchvision DenseNet121_Weights.IMAGENET1K_V1)"
    return {"name": name, "version": version, "run_id": run_id, "uri": f"models:/{name}@champion",
            "intended_use": intended_use, "weights_source": weights}  # fmt: skip


def _radiograph(rng: np.random.Generator) -> np.ndarray:
    """A smooth grey picture with some texture, like a display radiograph (compresses like one)."""
    y, x = np.mgrid[0:DISPLAY_PX, 0:DISPLAY_PX] / DISPLAY_PX
    lungs = np.exp(-(((x - 0.32) / 0.13) ** 2 + ((y - 0.5) / 0.3) ** 2)) + np.exp(
        -(((x - 0.68) / 0.13) ** 2 + ((y - 0.5) / 0.3) ** 2)
    )
    grey = 200 - 120 * lungs + 18 * np.sin(40 * y + 3 * rng.random()) * lungs + rng.normal(0, 6, lungs.shape)
    return np.clip(grey, 0, 255).astype(np.uint8)


def _overlay(grey: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:DISPLAY_PX, 0:DISPLAY_PX] / DISPLAY_PX
    cx, cy = rng.uniform(0.3, 0.7, 2)
    heat = np.exp(-(((x - cx) / 0.12) ** 2 + ((y - cy) / 0.12) ** 2))
    rgb = np.stack([grey] * 3, axis=-1).astype(float)
    colour = np.stack([255 * heat, 255 * np.clip(1.5 - 2 * np.abs(heat - 0.5), 0, 1) * heat, 255 * (1 - heat)], -1)
    return np.clip(0.6 * rgb + 0.4 * colour, 0, 255).astype(np.uint8)


def make_rows(out: Path, n: int, suffix: str, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    cxr = _model("pneumonia-classifier", 3, "a1b2c3d4e5f6", INTENDED_CXR)
    ct = _model("tumor-detector", 1, "f6e5d4c3b2a1", INTENDED_CT)
    rows = []
    for i in range(n):
        key = f"S{i:04d}"
        folder = out / "studies" / key
        folder.mkdir(parents=True, exist_ok=True)
        base = {"study_key": key, "source": f"in/{key}/IM0001.dcm", "patient_id": f"PID-{i:04d}",
                "patient_name": f"DOE^PATIENT{i:04d}", "study_date": f"2024{1 + i % 12:02d}{1 + i % 28:02d}",
                "study_uid": f"1.2.826.0.1.3680043.10.999.{i}", "accession": f"ACC{i:05d}"}  # fmt: skip
        if i % 10 == 9:
            rows.append({**base, "status": "failed", "reason": "not a DICOM file (no DICM preamble)", "model": None})
            continue
        if i % 15 == 14:
            reason = "modality US: no model for it (CR, DX go to the classifier; CT, MR to the detector)"
            rows.append({**base, "status": "not_applicable", "modality": "US", "model": None, "reason": reason})
            continue
        grey = _radiograph(rng)
        probability = float(rng.uniform(0.02, 0.98))
        save = {"format": "JPEG", "quality": 90} if suffix == ".jpg" else {"format": "PNG"}
        if i % 5 == 4:
            threshold = 0.4
            PILImage.fromarray(_overlay(grey, rng)).save(folder / f"slice{suffix}", **save)
            rows.append({**base, "status": "ok", "modality": "CT", "study_description": "CT HEAD", "task": "detection",
                         "finding": "tumour", "probability": probability, "flagged": probability >= threshold,
                         "threshold": threshold, "priority": probability / threshold, "model": ct,
                         "boxes": [{"world_mm": [10.0, -20.5, 30.0, 25.0, -5.5, 42.0], "size_mm": [15, 15, 12],
                                    "score": probability, "slice": 17}],
                         "images": [{"path": f"studies/{key}/slice{suffix}", "caption": "slice 17 with box 1",
                                     "kind": "slice"}]})  # fmt: skip
        else:
            threshold = 0.5
            PILImage.fromarray(grey).save(folder / f"image{suffix}", **save)
            PILImage.fromarray(_overlay(grey, rng)).save(folder / f"overlay{suffix}", **save)
            rows.append({**base, "status": "ok", "modality": "DX", "study_description": "CHEST PA",
                         "task": "classification", "finding": "pneumonia", "probability": probability,
                         "flagged": probability >= threshold, "threshold": threshold,
                         "priority": probability / threshold, "model": cxr, "sr_path": f"studies/{key}/sr.dcm",
                         "images": [{"path": f"studies/{key}/image{suffix}", "caption": "radiograph", "kind": "image"},
                                    {"path": f"studies/{key}/overlay{suffix}", "caption": "Grad-CAM overlay",
                                     "kind": "heatmap"}]})  # fmt: skip
    return rows


def prepare(rows: list[dict], out: Path) -> tuple:
    """What render_report computes before writing anything: the studies with their pictures, in report order."""
    studies = _studies(rows, out)
    worklist = sorted((s for s in studies if s.status == STATUS_OK), key=_priority_key)
    for rank, study in enumerate(worklist, 1):
        study.rank = rank
    not_applicable = [s for s in studies if s.status == STATUS_NOT_APPLICABLE]
    unprocessed = [s for s in studies if s.status not in (STATUS_OK, STATUS_NOT_APPLICABLE)]
    summary_items = _summary_items({"seconds": 12.3, "input": "in/"}, studies)
    return ("medvision batch report", "2025-01-02 03:04 UTC", summary_items, worklist, unprocessed, not_applicable,
            studies)  # fmt: skip


# ----------------------------------------------------------------------------------------- the engines


def engine_reportlab(parts: tuple, pdf: Path) -> None:
    title, generated_at, summary_items, worklist, unprocessed, not_applicable, studies = parts
    write_pdf_reportlab(pdf, title=title, generated_at=generated_at, summary_items=summary_items, worklist=worklist,
                        unprocessed=unprocessed, not_applicable=not_applicable, all_studies=studies)  # fmt: skip


def engine_chromium(parts: tuple, pdf: Path) -> None:
    _print_pdf(_print_document(*parts), pdf, timeout_s=600)


def engine_weasyprint(parts: tuple, pdf: Path) -> None:
    import weasyprint

    weasyprint.HTML(string=_print_document(*parts)).write_pdf(pdf)


def available(name: str) -> str | None:
    """Why an engine cannot run here, or None."""
    if name == "chromium":
        from medvision.reporting.render import PdfError, _chromium

        try:
            _chromium()
        except PdfError as exc:
            return exc.one_line()
    if name == "weasyprint":
        try:
            import weasyprint  # noqa: F401
        except (ImportError, OSError) as exc:  # OSError: pango missing
            return f"weasyprint does not import ({type(exc).__name__}: {exc}); pip install weasyprint"
    return None


ENGINES: dict[str, Callable[[tuple, Path], None]] = {
    "reportlab": engine_reportlab,
    "chromium": engine_chromium,
    "weasyprint": engine_weasyprint,
}


# ----------------------------------------------------------------------------------------- the checks


def pdf_pages(pdf: Path) -> int:
    done = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, check=True, timeout=60)
    return int(next(line.split()[-1] for line in done.stdout.splitlines() if line.startswith("Pages:")))


def pdf_text(pdf: Path) -> list[str]:
    done = subprocess.run(["pdftotext", "-enc", "UTF-8", str(pdf), "-"], capture_output=True, check=True, timeout=60)
    pages = done.stdout.decode("utf-8").split("\f")
    return [" ".join(p.split()) for p in (pages[:-1] if pages and not pages[-1].strip() else pages)]


def key_texts(row: Mapping[str, Any]) -> list[str]:
    """What a reader must find for the study: its key and patient id, and for a processed one the finding and the
    probability as the report prints them."""
    texts = [f"Study {row['study_key']}:", str(row["patient_id"])]
    if row.get("status") == "ok":
        texts += [str(row["finding"]), _fixed(row["probability"])]
    return texts


def check(pdf: Path, rows: Iterable[Mapping[str, Any]]) -> tuple[int, int, int]:
    """(studies whose key texts are all in the PDF, pages carrying the notice, pages)."""
    pages = pdf_text(pdf)
    whole = " ".join(pages)
    found = sum(all(t in whole for t in key_texts(r)) for r in rows)
    return found, sum(NOTICE in p for p in pages), len(pages)


# ----------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image-format", choices=("png", "jpeg"), default="png")
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma-separated, from " + ", ".join(ENGINES))
    parser.add_argument("--keep", type=Path, help="copy each engine's PDF into this folder")
    args = parser.parse_args()
    for tool in ("pdfinfo", "pdftotext"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing: apt-get install poppler-utils")

    with tempfile.TemporaryDirectory(prefix="bench-pdf-") as tmp_name:
        out = Path(tmp_name)
        rows = make_rows(out, args.studies, ".jpg" if args.image_format == "jpeg" else ".png")
        start = time.perf_counter()
        parts = prepare(rows, out)
        print(f"{args.studies} studies, {args.image_format} pictures; pictures read and thumbnails made in"
              f" {time.perf_counter() - start:.2f} s (not in the timings below)\n")  # fmt: skip
        results: dict[str, dict[str, Any]] = {}
        for name in args.engines.split(","):
            why = available(name)
            if why:
                results[name] = {"missing": why}
                continue
            pdf = out / f"{name}.pdf"
            seconds = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                ENGINES[name](parts, pdf)
                seconds.append(time.perf_counter() - start)
            found, notice_pages, text_pages = check(pdf, rows)
            results[name] = {"s_per_study": statistics.median(seconds) / args.studies, "bytes": pdf.stat().st_size,
                             "pages": pdf_pages(pdf), "found": found, "notice": notice_pages,
                             "text_pages": text_pages}  # fmt: skip
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                shutil.copy(pdf, args.keep / pdf.name)

    base = results.get("reportlab", {})
    print(f"{'engine':<11} {'s/study':>8} {'size KiB':>9} {'pages':>6} {'studies found':>14} {'notice on pages':>16}"
          f"   {'ratio to reportlab: time':>25} {'size':>6} {'pages':>6}")  # fmt: skip
    for name, r in results.items():
        if "missing" in r:
            print(f"{name:<11} not measured: {r['missing']}")
            continue
        ratios = ""
        if "s_per_study" in base:
            ratios = (f"   {r['s_per_study'] / base['s_per_study']:>25.2f} {r['bytes'] / base['bytes']:>6.2f}"
                      f" {r['pages'] / base['pages']:>6.2f}")  # fmt: skip
        print(f"{name:<11} {r['s_per_study']:>8.4f} {r['bytes'] / 1024:>9.0f} {r['pages']:>6}"
              f" {r['found']:>6}/{args.studies:<7} {r['notice']:>8}/{r['text_pages']:<7}{ratios}")  # fmt: skip


if __name__ == "__main__":
    main()
