"""The HTML and PDF batch report (issue 5), checked in a real headless Chromium and with poppler.

Chromium renders ``index.html`` and a study page (the DOM it built is parsed back) and takes a
screenshot; ``report.pdf`` is the same templates printed by Chromium, and ``pdftoppm`` turns it into
PNG pages, ``pdftotext`` reads its text and ``pdfinfo`` counts its pages. The binaries come from
Debian's ``chromium`` and ``poppler-utils``, installed by ``make system-deps`` (a prerequisite of
``make test``); without them those tests are skipped and say so. A missing or failing Chromium is
played by scripts in a temporary folder (``$MEDVISION_CHROMIUM``).
"""

from __future__ import annotations

import base64
import copy
import fnmatch
import html
import importlib.resources
import io
import logging
import re
import shutil
import subprocess
import time
import tomllib
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import jinja2
import numpy as np
import pytest
from PIL import Image

from medvision.errors import MedvisionError
from medvision.reporting import render
from medvision.reporting.render import NOTICE, PdfError, render_report

TIMEOUT_S = 60
NASTY_NAME = "Doe^<b>Jane</b> & Co"
MALICIOUS = '<script>alert("pwned")</script><img src=x onerror=alert(1)>'
INTENDED_CXR = "Triage of adult chest radiographs for pneumonia; a radiologist reads every study."
INTENDED_CT = "Prioritisation of CT/MR volumes with suspected tumour; not a diagnosis."
# Flagged first, then priority: cxr-b (0.91), ct-c (flagged detection), cxr-a (not flagged).
EXPECTED_ORDER = ["cxr-b", "ct-c", "cxr-a"]
NOTICE_RGB = (176, 0, 32)  # the notice's background, #b00020
MARK_RGB = (0, 200, 0)  # a block painted into every test image, looked for in the screenshot


# ----------------------------------------------------------------------------------------- fixtures


def write_picture(path: Path, *, seed: int, size: tuple[int, int] = (96, 64)) -> str:
    """A small RGB picture with a noise background and a solid green block; returns its path as given."""
    rng = np.random.default_rng(seed)
    w, h = size
    pixels = rng.integers(0, 120, (h, w, 3), dtype=np.uint8)
    pixels[h // 4 : h // 4 + h // 2, w // 4 : w // 4 + w // 2] = MARK_RGB
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path.as_posix()


def model(name: str, version: int, run_id: str, intended_use: str) -> dict:
    return {
        "name": name,
        "version": version,
        "run_id": run_id,
        "uri": f"models:/{name}@champion",
        "intended_use": intended_use,
        "weights_source": "imagenet (torchvision DenseNet121_Weights.IMAGENET1K_V1)",
    }


def make_rows(out_dir: Path) -> list[dict]:
    cxr_model = model("pneumonia-classifier", 3, "a1b2c3d4e5f6", INTENDED_CXR)
    ct_model = model("tumor-detector", 1, "f6e5d4c3b2a1", INTENDED_CT)
    for key, seed in (("cxr-a", 1), ("cxr-b", 2), ("ct-c", 3)):
        write_picture(out_dir / "studies" / key / "image.png", seed=seed)
    common = {"study_description": "CHEST PA", "accession": "ACC1", "sr_path": None, "secondary_capture_path": None}
    return [
        {
            **common,
            "study_key": "cxr-a",
            "status": "ok",
            "reason": None,
            "source": "cxr/a/IM0001.dcm",
            "patient_id": "P-001",
            "patient_name": NASTY_NAME,
            "study_date": "20240131",
            "study_uid": "1.2.826.0.1.3680043.10.999.1",
            "modality": "DX",
            "task": "classification",
            "finding": "pneumonia",
            "probability": 0.48,
            "flagged": False,
            "threshold": 0.5,
            "priority": 0.96,
            "model": cxr_model,
            "boxes": [],
            "images": [
                {"path": "studies/cxr-a/image.png", "caption": "radiograph", "kind": "image"},
                {"path": "studies/cxr-a/image.png", "caption": "Grad-CAM overlay", "kind": "heatmap"},
            ],
            "sr_path": "studies/cxr-a/sr.dcm",
        },
        {
            **common,
            "study_key": "cxr-b",
            "status": "ok",
            "study_description": MALICIOUS,
            "reason": None,
            "source": "cxr/b/IM0001.dcm",
            "patient_id": "P-002",
            "patient_name": "ROE^RICHARD",
            "study_date": "20240202",
            "study_uid": "1.2.826.0.1.3680043.10.999.2",
            "modality": "CR",
            "task": "classification",
            "finding": "pneumonia",
            "probability": 0.9134,
            "flagged": True,
            "threshold": 0.5,
            "priority": 1.8268,
            "model": cxr_model,
            "boxes": [],
            "images": [{"path": "studies/cxr-b/image.png", "caption": "Grad-CAM overlay", "kind": "heatmap"}],
        },
        {
            **common,
            "study_key": "ct-c",
            "status": "ok",
            "reason": None,
            "source": "ct/c",
            "patient_id": "P-003",
            "patient_name": "SMITH^ANN",
            "study_date": "20231115",
            "study_uid": "1.2.826.0.1.3680043.10.999.3",
            "modality": "CT",
            "study_description": "CT HEAD",
            "task": "detection",
            "finding": "tumour",
            "probability": 0.45,
            "flagged": True,
            "threshold": 0.4,
            "priority": 1.125,
            "model": ct_model,
            "boxes": [
                {"world_mm": [10.0, -20.5, 30.0, 25.0, -5.5, 42.0], "size_mm": [15, 15, 12], "score": 0.45, "slice": 17}
            ],  # fmt: skip
            "images": [{"path": "studies/ct-c/image.png", "caption": "slice 17 with box 1", "kind": "slice"}],
        },
        {
            "study_key": "bad-d",
            "status": "failed",
            "reason": "not a DICOM file (no DICM preamble) & not NIfTI",
            "source": "junk/readme.txt",
            "model": None,
            "images": [],
        },
        {
            "study_key": "us-e",
            "status": "not_applicable",
            "reason": "modality US: no model for it (CR, DX go to the classifier; CT, MR to the detector)",
            "source": "us/e",
            "patient_name": "LEE^MAY",
            "modality": "US",
            "model": None,
        },
    ]


@dataclass
class Report:
    out: Path
    rows: list[dict]
    rows_before: list[dict]
    paths: dict


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Report:
    out = tmp_path_factory.mktemp("report")
    rows = make_rows(out)
    before = copy.deepcopy(rows)
    summary = {"studies": 5, "flagged": 2, "failed": 1, "not_applicable": 1, "seconds": 4.2, "input": "in/"}
    paths = render_report(rows, out, generated_at="2025-01-02 03:04 UTC", summary=summary)
    return Report(out, rows, before, paths)


# ----------------------------------------------------------------------------------------- a small DOM


VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list = field(default_factory=list)

    def iter(self):
        yield self
        for child in self.children:
            if isinstance(child, Node):
                yield from child.iter()

    def find_all(self, tag: str | None = None, *, cls: str | None = None, id: str | None = None) -> list[Node]:
        return [
            n
            for n in self.iter()
            if (tag is None or n.tag == tag)
            and (cls is None or cls in n.attrs.get("class", "").split())
            and (id is None or n.attrs.get("id") == id)
        ]

    def text(self) -> str:
        return " ".join(" ".join((c if isinstance(c, str) else c.text()).split()) for c in self.children if c).strip()


class TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag, attrs):
        self.stack[-1].children.append(Node(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data):
        self.stack[-1].children.append(data)


def parse(markup: str) -> Node:
    builder = TreeBuilder()
    builder.feed(markup)
    builder.close()
    return builder.root


# ----------------------------------------------------------------------------------------- the binaries


def need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} is not installed; `make system-deps` (a step of `make test`) installs it")
    return path


def chromium(tmp: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    command = [
        need("chromium"),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--force-color-profile=srgb",
        f"--user-data-dir={tmp / 'chromium-profile'}",
        *args,
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, f"chromium failed ({done.returncode}): {done.stderr[-2000:]}"
    return done


def rendered_dom(tmp: Path, page: Path) -> Node:
    done = chromium(tmp, page.resolve().as_uri(), "--dump-dom")
    assert "<body" in done.stdout, done.stdout[:500]
    return parse(done.stdout)


def pdf_pages_text(pdf: Path) -> list[str]:
    done = subprocess.run(
        [need("pdftotext"), "-layout", "-enc", "UTF-8", str(pdf), "-"], capture_output=True, timeout=TIMEOUT_S
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    pages = done.stdout.decode("utf-8").split("\f")
    return pages[:-1] if pages and not pages[-1].strip() else pages


def colour_count(img: Image.Image, rgb: tuple[int, int, int], tolerance: int = 4) -> int:
    pixels = np.asarray(img.convert("RGB")).astype(int)
    return int((np.abs(pixels - np.array(rgb)).max(axis=-1) <= tolerance).sum())


# ----------------------------------------------------------------------------------------- the files


def test_writes_index_pdf_and_one_page_per_row(report: Report) -> None:
    paths = report.paths
    assert paths["index"] == report.out / "index.html" and paths["index"].is_file()
    assert paths["pdf"] == report.out / "report.pdf" and paths["pdf"].read_bytes().startswith(b"%PDF")
    assert [p.name for p in paths["pages"]] == [f"{r['study_key']}.html" for r in report.rows]
    assert all(p.is_file() and p.parent == report.out / "studies" for p in paths["pages"])
    assert report.rows == report.rows_before, "render_report changed the caller's rows"
    assert not list(report.out.rglob("*.tmp"))


def test_pages_are_self_contained_and_escaped(report: Report) -> None:
    for page in [report.paths["index"], *report.paths["pages"]]:
        markup = page.read_text(encoding="utf-8")
        assert "<script" not in markup.lower(), page
        assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:|//)""", markup, re.I), page
        for src in re.findall(r'<img[^>]*\ssrc="([^"]*)"', markup):
            assert src.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")), (page, src[:60])
            with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as img:
                img.load()
    index = report.paths["index"].read_text(encoding="utf-8")
    assert html.escape(NASTY_NAME) in index
    assert NASTY_NAME not in index and "<b>Jane" not in index


def test_every_page_carries_notice_intended_use_and_provenance(report: Report) -> None:
    index = report.paths["index"].read_text(encoding="utf-8")
    for needle in (NOTICE, INTENDED_CXR, INTENDED_CT, "a1b2c3d4e5f6", "f6e5d4c3b2a1", "imagenet (torchvision"):
        assert html.escape(needle) in index, needle
    by_key = {r["study_key"]: r for r in report.rows}
    for page in report.paths["pages"]:
        markup = page.read_text(encoding="utf-8")
        assert html.escape(NOTICE) in markup, page
        model = by_key[page.stem]["model"]
        if model:
            for key in ("intended_use", "name", "run_id", "weights_source"):
                assert html.escape(str(model[key])) in markup, (page, key)
        else:
            assert "intended use of the model was not recorded" in markup, page


def test_worklist_puts_flagged_first_then_higher_probability(tmp_path: Path) -> None:
    rows = [
        {"study_key": "low", "status": "ok", "probability": 0.2, "flagged": False, "threshold": 0.5},
        {"study_key": "flag-low", "status": "ok", "probability": 0.55, "flagged": True, "threshold": 0.5},
        {"study_key": "high-unflagged", "status": "ok", "probability": 0.49, "flagged": False, "threshold": 0.5},
        {"study_key": "flag-high", "status": "ok", "probability": 0.97, "flagged": True, "threshold": 0.5},
        {"study_key": "none", "status": "ok", "probability": None, "flagged": None},
    ]
    index = render_report(rows, tmp_path)["index"].read_text(encoding="utf-8")
    keys = re.findall(r'<tr class="worklist-row[^"]*" data-study-key="([^"]*)"', index)
    assert keys == ["flag-high", "flag-low", "high-unflagged", "low", "none"]
    assert "FLAGGED at threshold 0.500" in index and "not flagged at threshold 0.500" in index


def test_unreadable_or_outside_images_are_reported_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "broken.png").write_bytes(b"not a png")
    images = [
        {"path": "studies/missing.png", "caption": "gone", "kind": "heatmap"},
        {"path": "studies/broken.png", "caption": "broken", "kind": "heatmap"},
        {"path": "../../etc/passwd", "caption": "outside", "kind": "image"},
    ]
    rows = [{"study_key": "../x y", "status": "ok", "probability": 0.7, "flagged": True, "images": images}]
    paths = render_report(rows, tmp_path)
    (page,) = paths["pages"]
    assert page.parent == tmp_path / "studies" and page.name == "_x_y.html"
    markup = page.read_text(encoding="utf-8")
    assert "studies/missing.png could not be read" in markup
    assert "studies/broken.png could not be read" in markup
    assert "not a path inside the report folder" in markup
    assert "<img" not in markup
    assert 'href="studies/_x_y.html"' in paths["index"].read_text(encoding="utf-8")


# ----------------------------------------------------------------------------------------- Chromium


def test_index_renders_in_chromium(report: Report, tmp_path: Path) -> None:
    dom = rendered_dom(tmp_path, report.paths["index"])
    (worklist,) = dom.find_all("section", id="worklist")
    rows = worklist.find_all("tr", cls="worklist-row")
    assert [r.attrs["data-study-key"] for r in rows] == EXPECTED_ORDER
    priorities = [float(r.attrs["data-priority"]) for r in rows]
    assert priorities == sorted(priorities, reverse=True)
    for rank, row in enumerate(rows, 1):
        cells = row.find_all("td")
        assert cells[0].text() == str(rank)
        imgs = row.find_all("img")
        assert imgs and imgs[0].attrs["src"].startswith("data:image/png;base64,")
        links = [a.attrs["href"] for a in row.find_all("a")]
        key = row.attrs["data-study-key"]
        assert f"studies/{key}.html" in links
        assert (report.out / "studies" / f"{key}.html").is_file()
    first = rows[0].text()
    assert "ROE^RICHARD" in first and "0.913" in first and "FLAGGED at threshold 0.500" in first
    assert "pneumonia-classifier v3" in first
    last = rows[-1]
    assert NASTY_NAME in last.find_all("td", cls="patient")[0].text()
    assert not last.find_all("b"), "a patient name became markup"

    (problems,) = dom.find_all("section", id="could-not-process")
    assert "Could not be processed" in problems.text()
    (bad,) = problems.find_all("tr", cls="problem-row")
    assert bad.attrs["data-study-key"] == "bad-d"
    assert "junk/readme.txt" in bad.text() and "no DICM preamble) & not NIfTI" in bad.text()
    (not_applicable,) = dom.find_all("section", id="not-applicable")
    assert "modality US: no model for it" in not_applicable.text()
    in_worklist = {r.attrs["data-study-key"] for r in rows}
    assert not in_worklist & {"bad-d", "us-e"}

    (notice,) = dom.find_all(id="notice")
    assert notice.text() == NOTICE


def test_study_page_renders_in_chromium(report: Report, tmp_path: Path) -> None:
    dom = rendered_dom(tmp_path, report.out / "studies" / "ct-c.html")
    assert dom.find_all(id="notice")[0].text() == NOTICE
    (box,) = dom.find_all("tr", cls="box-row")
    cells = [td.text() for td in box.find_all("td")]
    assert cells == ["1", "(10.0, -20.5, 30.0) – (25.0, -5.5, 42.0)", "15.0 × 15.0 × 12.0", "0.450", "17"]
    imgs = dom.find_all("section", id="images")[0].find_all("img")
    assert len(imgs) == 1 and imgs[0].attrs["src"].startswith("data:image/png;base64,")
    assert INTENDED_CT in dom.find_all("section", id="intended-use")[0].text()
    provenance = dom.find_all("section", id="provenance")[0].text()
    assert "tumor-detector" in provenance and "f6e5d4c3b2a1" in provenance
    back = [a.attrs["href"] for a in dom.find_all("a")]
    assert "../index.html" in back

    failed = rendered_dom(tmp_path, report.out / "studies" / "bad-d.html")
    assert "no DICM preamble" in failed.find_all(id="reason")[0].text()


def test_index_screenshot(report: Report, tmp_path: Path) -> None:
    shot = tmp_path / "index.png"
    chromium(tmp_path, report.paths["index"].resolve().as_uri(), f"--screenshot={shot}", "--window-size=1280,1600")
    assert shot.is_file()
    with Image.open(shot) as img:
        assert img.size == (1280, 1600)
        assert img.convert("RGB").getcolors(maxcolors=1) is None, "the screenshot is a single colour"
        assert colour_count(img, NOTICE_RGB) > 5000, "the red DRAFT notice is not on screen"
        assert colour_count(img, MARK_RGB) > 3 * 200, "the embedded thumbnails were not drawn"


# ----------------------------------------------------------------------------------------- the PDF


def test_pdf_pages_render_and_carry_the_content(report: Report, tmp_path: Path) -> None:
    pdf = report.paths["pdf"]
    done = subprocess.run(
        [need("pdftoppm"), "-png", "-r", "50", str(pdf), str(tmp_path / "page")], capture_output=True, timeout=TIMEOUT_S
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    pngs = sorted(tmp_path.glob("page-*.png"))
    texts = pdf_pages_text(pdf)
    assert len(pngs) == len(texts) >= 1 + len(report.rows)
    for png in pngs:
        with Image.open(png) as img:
            assert img.convert("L").getextrema()[0] < 128, f"{png.name} is blank"

    collapsed = [" ".join(t.split()) for t in texts]
    assert all(NOTICE in t for t in collapsed), "a PDF page lacks the notice"
    first = collapsed[0]
    names = ["ROE^RICHARD", "SMITH^ANN", "Doe^<b>Jane"]
    positions = [first.find(n) for n in names]
    assert -1 not in positions and positions == sorted(positions), positions
    assert "Could not be processed" in first and "junk/readme.txt" in first
    assert INTENDED_CXR.split(";")[0] in first and "a1b2c3d4e5f6" in first
    # one page per study, in worklist order, then the unprocessed ones
    starts = [next(i for i, t in enumerate(collapsed) if f"Study {key}:" in t) for key in [*EXPECTED_ORDER, "bad-d"]]
    assert starts == sorted(starts) and starts[0] >= 1
    ct = collapsed[starts[1]]
    assert "(10.0, -20.5, 30.0) – (25.0, -5.5, 42.0)" in ct and "tumor-detector" in ct and INTENDED_CT[:40] in ct


def test_pdf_long_worklist_splits_across_pages(tmp_path: Path) -> None:
    rows = [
        {"study_key": f"s{i:03d}", "status": "ok", "patient_name": f"PATIENT^{i:03d}", "probability": 1 - i / 100,
         "flagged": i < 10, "threshold": 0.9, "priority": 2 - i / 100}
        for i in range(70)
    ]  # fmt: skip
    texts = pdf_pages_text(render_report(rows, tmp_path)["pdf"])
    summary_pages = [t for t in texts if "Study s0" not in t]
    assert len(texts) == len(summary_pages) + 70, "one page per study"
    worklist_pages = [t for t in summary_pages if "PATIENT^" in t]
    assert len(worklist_pages) >= 2, "70 rows should not fit on one page"
    assert all(re.search(r"Rank +Patient", t) for t in worklist_pages), "the table header is not repeated"
    text = " ".join(worklist_pages)
    positions = [text.find(f"PATIENT^{i:03d}") for i in range(70)]
    assert -1 not in positions and positions == sorted(positions)


def test_thumbnails_keep_the_picture_format() -> None:
    from medvision.reporting.render import THUMBNAIL_PX, _Picture, _thumbnail

    rng = np.random.default_rng(0)
    pixels = (rng.random((300, 620, 3)) * 255).astype(np.uint8)
    for fmt, mime in (("JPEG", "image/jpeg"), ("PNG", "image/png")):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format=fmt)
        small = _thumbnail(_Picture(buffer.getvalue(), mime, 620, 300, "c", "overlay"))
        with Image.open(io.BytesIO(small.data)) as img:
            assert img.format == fmt and img.size == (small.width, small.height)
            assert max(img.size) == THUMBNAIL_PX and img.size[1] == round(300 * THUMBNAIL_PX / 620)
        assert small.mime == mime and (small.caption, small.kind) == ("c", "overlay")


# ----------------------------------------------------------------------------------------- escaping, one layout


def test_a_malicious_study_description_is_escaped_by_the_template(report: Report) -> None:
    markup = (report.out / "studies" / "cxr-b.html").read_text(encoding="utf-8")
    assert MALICIOUS not in markup
    assert html.escape(MALICIOUS, quote=False).replace('"', "&#34;") in markup
    dom = parse(markup)
    assert not dom.find_all("script") and len(dom.find_all("img")) == 1, "the description became markup"
    (details,) = dom.find_all("section", id="details")
    cells = {tr.find_all("th")[0].text(): tr.find_all("td")[0].text() for tr in details.find_all("tr")}
    assert cells["Study description"] == MALICIOUS
    assert "<script" not in report.paths["index"].read_text(encoding="utf-8").lower()


def test_a_malicious_title_cannot_leave_the_style_element(tmp_path: Path) -> None:
    title = '</style><script>alert(1)</script> "quoted" \\ back'
    rows = [{"study_key": "s1", "status": "ok", "probability": 0.7, "flagged": True, "threshold": 0.5}]
    paths = render_report(rows, tmp_path, title=title)
    for page in [paths["index"], *paths["pages"]]:
        markup = page.read_text(encoding="utf-8")
        assert "<script" not in markup.lower() and markup.count("</style>") == 1, page
        style = markup[markup.index("<style>") : markup.index("</style>")]
        assert '"quoted"' not in style and "\\" + "00003c" in style  # the running head is CSS-escaped
    if shutil.which("pdftotext"):
        text = " ".join(" ".join(t.split()) for t in pdf_pages_text(paths["pdf"]))
        assert f"{title} · generated" in text, "the running head does not say the title as given"


def test_templates_autoescape_and_refuse_undefined_values() -> None:
    env = render._templates()
    assert env.undefined is jinja2.StrictUndefined
    assert env.autoescape("index.html") is True
    assert env.autoescape("report.css") is False
    with pytest.raises(jinja2.UndefinedError):
        env.get_template("study.html").render(page_title="t", running_head="h")


def test_templates_ship_as_package_data() -> None:
    folder = importlib.resources.files("medvision.reporting") / "templates"
    names = sorted(entry.name for entry in folder.iterdir() if entry.is_file())
    assert {"base.html", "index.html", "study.html", "print.html", "_sections.html", "report.css"} <= set(names)
    assert "{% block body %}" in (folder / "base.html").read_text(encoding="utf-8")
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text(encoding="utf-8"))
    globs = pyproject["tool"]["setuptools"]["package-data"]["medvision"]
    for name in names:
        assert any(fnmatch.fnmatch(f"reporting/templates/{name}", g) for g in globs), f"{name} would not ship"


def test_one_wording_of_the_notice_in_html_and_pdf(report: Report) -> None:
    assert NOTICE == (
        "DRAFT — not for diagnostic use without review by a radiologist. Results are not final and not verified."
    )
    for page in [report.paths["index"], *report.paths["pages"]]:
        markup = page.read_text(encoding="utf-8")
        # the banner, the footer and the print margin (CSS-escaped), and no "DRAFT" in any other wording
        in_html, in_css = markup.count(html.escape(NOTICE)), markup.count(render._css_string(NOTICE))
        assert (in_html, in_css) == (2, 1), page
        assert markup.count("DRAFT") == in_html + in_css, page


# ----------------------------------------------------------------------------------------- the PDF, printed


def pdf_page_count(pdf: Path) -> int:
    done = subprocess.run([need("pdfinfo"), str(pdf)], capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    (pages,) = [int(line.split()[-1]) for line in done.stdout.splitlines() if line.startswith("Pages:")]
    return pages


def test_pdf_says_every_study_its_finding_and_the_notice(report: Report) -> None:
    pdf = report.paths["pdf"]
    texts = [" ".join(t.split()) for t in pdf_pages_text(pdf)]
    pages = pdf_page_count(pdf)
    assert pages == len(texts)
    # one page at least for the worklist and one per study; a study needs no more than two here
    assert 1 + len(report.rows) <= pages <= 1 + 2 * len(report.rows), pages
    assert all(NOTICE in t for t in texts), "a page lacks the notice"
    assert all(re.search(rf"page {i} of {pages}\b", t) for i, t in enumerate(texts, 1)), "page numbers"
    whole = " ".join(texts)
    for row in report.rows:
        key = row["study_key"]
        (page,) = [t for t in texts if f"Study {key}:" in t]
        assert row.get("patient_id", "—") in page, key
        if row["status"] == "ok":
            finding = f"{row['finding']} ({row['task']})"
            assert finding in page and f"{row['probability']:.3f}" in page, key
        else:
            assert row["reason"] in page, key
    assert MALICIOUS in whole, "the description is shown as text in the PDF"


# ----------------------------------------------------------------------------------------- no PDF engine


def fake_chromium(tmp_path: Path, body: str) -> str:
    script = tmp_path / "fake-chromium"
    script.write_text("#!/bin/sh\n" + body + "\n", encoding="utf-8")
    script.chmod(0o755)
    return str(script)


def render_without_pdf(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> tuple[dict, Node, str]:
    out = tmp_path / "report"
    rows = make_rows(out)
    (out / "report.pdf").write_bytes(b"%PDF-1.4 an older report")
    with caplog.at_level(logging.WARNING, logger="medvision.reporting.render"):
        paths = render_report(rows, out, generated_at="2025-01-02 03:04 UTC")
    assert paths["index"].is_file() and all(p.is_file() for p in paths["pages"]), "the pages were not written"
    assert paths["pdf"] == out / "report.pdf" and not paths["pdf"].exists(), "an older PDF was left"
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    (status,) = parse(paths["index"].read_text(encoding="utf-8")).find_all(id="pdf-status")
    assert status.attrs["data-status"] == "failed"
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "report.pdf not written" in warning.getMessage()
    return paths, status, warning.getMessage()


def test_missing_chromium_is_a_failure_status_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv(render.CHROMIUM_ENV, raising=False)
    monkeypatch.setattr(render, "CHROMIUM_BINARIES", ("medvision-no-such-chromium",))
    with pytest.raises(PdfError) as raised:
        render._chromium()
    assert isinstance(raised.value, MedvisionError)
    assert "install chromium: apt-get install chromium" in str(raised.value)
    _, status, message = render_without_pdf(tmp_path, caplog)
    for said in (status.text(), message):
        assert "medvision-no-such-chromium" in said and "install chromium: apt-get install chromium" in said


def test_a_chromium_path_that_is_not_there_is_a_failure_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(render.CHROMIUM_ENV, str(tmp_path / "bin" / "chromium"))
    _, status, _ = render_without_pdf(tmp_path, caplog)
    assert "MEDVISION_CHROMIUM" in status.text() and "is not an executable Chromium" in status.text()


# writes something that is not a PDF where it was told to write the PDF, and says it went well
WRITE_HALF = 'for a in "$@"; do case "$a" in --print-to-pdf=*) printf half > "${a#*=}";; esac; done; exit 0'


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ("echo 'cannot open display' >&2; exit 3", "exited with status 3 while printing the report: cannot open"),
        ("exit 0", "wrote no PDF"),
        (WRITE_HALF, "wrote no PDF"),
    ],
    ids=["exits-non-zero", "writes-nothing", "writes-no-pdf"],
)
def test_a_failing_chromium_is_a_failure_status(
    body: str, said: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(render.CHROMIUM_ENV, fake_chromium(tmp_path, body))
    _, status, _ = render_without_pdf(tmp_path, caplog)
    assert said in status.text()


def test_a_hanging_chromium_is_killed_after_the_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    marker = tmp_path / "child-survived"
    # a child in the background, like Chromium's renderer: it must end with the browser
    monkeypatch.setenv(render.CHROMIUM_ENV, fake_chromium(tmp_path, f"(sleep 3; touch {marker}) & sleep 60"))
    monkeypatch.setattr(render, "PDF_TIMEOUT_S", 1.0)
    monkeypatch.setattr(render, "PDF_TIMEOUT_PER_STUDY_S", 0.0)
    start = time.monotonic()
    _, status, _ = render_without_pdf(tmp_path, caplog)
    assert time.monotonic() - start < 30
    assert "did not print the report within 1 s" in status.text()
    time.sleep(3.5)
    assert not marker.exists(), "a process Chromium started outlived the timeout"
