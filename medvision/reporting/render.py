"""The radiologist-facing half of the batch report: ``index.html``, one page per study, ``report.pdf``.

:func:`render_report` takes the rows of ``results.json`` (one dict per study, failures included) and
writes a worklist sorted by priority, a page per study and a PDF with the same content.

One layout, in Jinja2 templates (``medvision/reporting/templates``): ``base.html`` carries the notice,
the stylesheet (``report.css``, with its print rules: A4, the notice and the page number in every
page's margin, one study per page) and the page skeleton; ``index.html`` and ``study.html`` are the
pages a browser opens; ``print.html`` is the one document, the worklist followed by every study, that
is printed to ``report.pdf``. Autoescape escapes every value; this module only turns values into text
(:func:`_text` drops control characters), caps PDF cells (:func:`_cap`) and makes hrefs that stay
inside the report folder (:func:`_relative_href`). The pages have no JavaScript and embed their
images as ``data:`` URIs, so one file reads offline and survives being copied. Pillow, already a
dependency, reads the images and makes the thumbnails.

Why headless Chromium prints the PDF (``.venv/bin/python benchmarks/bench_pdf.py``, 40 studies, 2 CPU
cores shared with other work; ratios to the reportlab layout medvision had before, which the benchmark
keeps; every engine's PDF had 44 pages, every study's key text and the notice on every page)::

    pictures  engine       s/study  size (KiB)  time  size
    PNG       reportlab     0.071     19370     1.00  1.00
    PNG       chromium      0.242     22142     3.40  1.14
    PNG       weasyprint    0.287     17220     4.03  0.89
    JPEG      reportlab     0.017      4139     1.00  1.00
    JPEG      chromium      0.060      5159     3.46  1.25
    JPEG      weasyprint    0.141      4187     8.10  1.01

reportlab was fastest but needed a second layout of everything, kept in step by hand; with one layout the
choice is between the two HTML engines. Chromium is faster than WeasyPrint (1.2 times with PNG pictures,
2.3 times with JPEG), it is the engine the tests already open ``index.html`` in and the one a
radiologist's browser prints with, so the PDF is the page as a browser shows it; it is one Debian
package (``apt-get install chromium``, in ``make system-deps``) and nothing in Python. WeasyPrint is
pure-Python layout over pango, slower, and its CSS differs from a browser's. The price is three and a
half times reportlab's time (most of it Chromium re-compressing PNG pictures; JPEG pictures pass
through) and an external binary: :func:`_print_pdf` runs it with a timeout, a temporary profile and a
private temporary folder, writes ``report.pdf`` atomically, and raises :class:`PdfError` naming the fix
when it is missing or fails; :func:`render_report` then still writes every page and says in
``index.html`` why there is no PDF.

Every page, HTML or PDF, carries :data:`NOTICE`, the intended use of the models and their
provenance (name, version, MLflow run id, weights source): a model's finding is a draft until a
radiologist reviews it.

Row keys read (any may be missing or ``None``): ``study_key``, ``status`` (``ok``, ``failed``,
``not_applicable``), ``reason``, ``source``, ``patient_id``, ``patient_name``, ``study_date``,
``study_uid``, ``accession``, ``modality``, ``study_description``, ``task``, ``finding``,
``probability``, ``flagged``, ``threshold``, ``priority``, ``model`` = ``{"name", "version",
"run_id", "uri", "intended_use", "weights_source"}``, ``boxes`` = ``[{"world_mm", "size_mm",
"score", "slice"}]``, ``images`` = ``[{"path" (relative to ``out_dir``), "caption", "kind"}]``,
``sr_path``, ``secondary_capture_path``.

Example:
    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp())
    >>> rows = [{"study_key": "s1", "status": "failed", "source": "a.dcm", "reason": "not a DICOM file"}]
    >>> paths = render_report(rows, out, generated_at="2025-01-01 00:00 UTC")
    >>> sorted(p.name for p in out.iterdir())
    ['index.html', 'report.pdf', 'studies']
    >>> paths["pages"][0].name
    's1.html'
"""

from __future__ import annotations

import base64
import functools
import io
import logging
import math
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from medvision.constants import DRAFT_NOTICE
from medvision.errors import MedvisionError

__all__ = ["NOTICE", "PdfError", "render_report"]

log = logging.getLogger(__name__)

#: The notice every page carries, word for word: the one wording of the report, HTML and PDF (``base.html``).
NOTICE = DRAFT_NOTICE  # the one wording (medvision.constants)

#: The Chromium binaries looked for on ``PATH``, in order; ``$MEDVISION_CHROMIUM`` (a path or a name) replaces them.
CHROMIUM_BINARIES = ("chromium", "chromium-browser", "google-chrome-stable", "google-chrome")
CHROMIUM_ENV = "MEDVISION_CHROMIUM"
#: Printing is given this long, plus PDF_TIMEOUT_PER_STUDY_S per study, before Chromium is killed.
PDF_TIMEOUT_S = 60.0
PDF_TIMEOUT_PER_STUDY_S = 2.0
#: Headless Chromium as the report prints with it (both ways: here, and pre-started, :mod:`.printer`).
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
    "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-quic", "--mute-audio", "--force-color-profile=srgb",
)  # fmt: skip
_CHROMIUM_FIX = "install chromium: apt-get install chromium (or set MEDVISION_CHROMIUM to its path)"

STATUS_OK = "ok"
STATUS_FAILED = "failed"
STATUS_NOT_APPLICABLE = "not_applicable"

MISSING = "—"
THUMBNAIL_PX = 160
# The PDF caps the text of a table cell: a pasted log as a "reason" would otherwise fill pages of one cell.
MAX_CELL_CHARS = 600

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")

# ----------------------------------------------------------------------------------------- values


def _text(value: Any, missing: str = MISSING) -> str:
    """A value as display text: ``None`` and blanks read ``missing``; control characters are dropped."""
    if value is None:
        return missing
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return missing if math.isnan(value) else f"{value:g}"
    text = _CONTROL.sub("", str(value)).strip()
    return text if text else missing


def _cap(text: str, limit: int = MAX_CELL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _fixed(value: Any, digits: int = 3) -> str:
    number = _number(value)
    return MISSING if number is None else f"{number:.{digits}f}"


def _date(value: Any) -> str:
    """DICOM dates (``YYYYMMDD``) as ``YYYY-MM-DD``; anything else as given."""
    text = _text(value)
    if re.fullmatch(r"\d{8}", text):
        return f"{text[:4]}-{text[4:6]}-{text[6:]}"
    return text


def _patient(row: Mapping[str, Any]) -> str:
    name, pid = row.get("patient_name"), row.get("patient_id")
    if name not in (None, "") and pid not in (None, ""):
        return f"{_text(name)} ({_text(pid)})"
    return _text(name if name not in (None, "") else pid)


def _decision(row: Mapping[str, Any]) -> str:
    flagged, threshold = row.get("flagged"), _number(row.get("threshold"))
    at = f" at threshold {threshold:.3f}" if threshold is not None else ""
    if flagged is True:
        return "FLAGGED" + at
    if flagged is False:
        return "not flagged" + at
    return "no decision"


def _model(row: Mapping[str, Any]) -> dict[str, Any]:
    model = row.get("model")
    return dict(model) if isinstance(model, Mapping) else {}


def _model_label(model: Mapping[str, Any]) -> str:
    name, version = model.get("name"), model.get("version")
    if name in (None, ""):
        return "not recorded"
    return f"{_text(name)} v{_text(version)}" if version not in (None, "") else _text(name)


def _finding(row: Mapping[str, Any]) -> str:
    finding, task = row.get("finding"), row.get("task")
    if finding in (None, ""):
        return _text(task)
    return f"{_text(finding)} ({_text(task)})" if task not in (None, "") else _text(finding)


def _mm_triplet(values: Any) -> str:
    if not isinstance(values, Sequence) or isinstance(values, str):
        return _text(values)
    return ", ".join(_fixed(v, 1) for v in values)


def _box_cells(box: Any) -> tuple[str, str, str, str]:
    """World box ``(x0, y0, z0) – (x1, y1, z1)`` mm, size ``dx × dy × dz`` mm, score, slice."""
    if not isinstance(box, Mapping):
        return _text(box), MISSING, MISSING, MISSING
    world = box.get("world_mm")
    if isinstance(world, Sequence) and not isinstance(world, str) and len(world) == 6:
        world_text = f"({_mm_triplet(world[:3])}) – ({_mm_triplet(world[3:])})"
    else:
        world_text = _mm_triplet(world)
    size = box.get("size_mm")
    if isinstance(size, Sequence) and not isinstance(size, str):
        size_text = " × ".join(_fixed(v, 1) for v in size)
    else:
        size_text = _text(size)
    return world_text, size_text, _fixed(box.get("score")), _text(box.get("slice"))


def _relative_href(path: Any, *, up: int = 0) -> str | None:
    """A link to a file inside the report folder, or ``None`` for anything else (absolute, ``..``, a URL)."""
    if not isinstance(path, str | os.PathLike) or not str(path).strip():
        return None
    posix = PurePosixPath(str(path).replace("\\", "/"))
    if posix.is_absolute() or ".." in posix.parts or ":" in str(path):
        return None
    return "../" * up + quote(posix.as_posix())


# ----------------------------------------------------------------------------------------- images


@dataclass(frozen=True)
class _Picture:
    data: bytes
    mime: str
    width: int
    height: int
    caption: str
    kind: str

    @cached_property
    def data_uri(self) -> str:
        """The picture as a ``data:`` URI (encoded once: the study page and the print document both embed it)."""
        return f"data:{self.mime};base64,{base64.b64encode(self.data).decode('ascii')}"


def _read_picture(out_dir: Path, entry: Any) -> _Picture | str:
    """The image an ``images`` entry names (relative to ``out_dir``), or a message saying why not."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(entry, Mapping):
        return f"image entry {_text(entry)!r} is not a mapping"
    rel = entry.get("path")
    caption, kind = _text(entry.get("caption"), ""), _text(entry.get("kind"), "image")
    if _relative_href(rel) is None:
        return f"image path {_text(rel)!r} is not a path inside the report folder"
    path = out_dir / str(rel)
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            fmt, size = img.format, img.size
            if fmt not in ("PNG", "JPEG"):  # what every browser and PDF engine takes; re-encode the rest
                buffer = io.BytesIO()
                img.convert("RGBA" if "A" in img.getbands() else "RGB").save(buffer, format="PNG")
                data, fmt = buffer.getvalue(), "PNG"
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        return f"image {_text(rel)} could not be read ({type(exc).__name__}: {exc})"
    return _Picture(data, "image/png" if fmt == "PNG" else "image/jpeg", size[0], size[1], caption, kind)


def _thumbnail(picture: _Picture, px: int = THUMBNAIL_PX) -> _Picture:
    """The worklist's small copy, in the picture's own format: JPEG stays JPEG (a tenth of the time and size of
    an optimised PNG), PNG stays lossless at a low zlib level."""
    from PIL import Image

    jpeg = picture.mime == "image/jpeg"
    with Image.open(io.BytesIO(picture.data)) as img:
        img = img.convert("RGB" if jpeg or "A" not in img.getbands() else "RGBA")
        img.thumbnail((px, px))
        buffer = io.BytesIO()
        if jpeg:
            img.save(buffer, format="JPEG", quality=85)
        else:
            img.save(buffer, format="PNG", compress_level=3)
        return _Picture(buffer.getvalue(), picture.mime, img.width, img.height, picture.caption, picture.kind)


# ----------------------------------------------------------------------------------------- studies


@dataclass
class _Study:
    row: dict[str, Any]
    key: str
    page_name: str
    status: str
    pictures: list[_Picture] = field(default_factory=list)
    image_problems: list[str] = field(default_factory=list)
    thumbnail: _Picture | None = None
    rank: int | None = None

    @property
    def model(self) -> dict[str, Any]:
        return _model(self.row)

    @property
    def boxes(self) -> list[Any]:
        boxes = self.row.get("boxes")
        return list(boxes) if isinstance(boxes, Sequence) and not isinstance(boxes, str) else []


def _page_name(key: str, taken: set[str]) -> str:
    """A file name (without ``.html``) for the study page; never leaves ``studies/``, never collides."""
    stem = _UNSAFE_NAME.sub("_", key).lstrip(".") or "study"
    stem = stem[:120]
    name, n = stem, 2
    while name.lower() in taken:
        name, n = f"{stem}-{n}", n + 1
    taken.add(name.lower())
    return name


def _studies(rows: Iterable[Mapping[str, Any]], out_dir: Path) -> list[_Study]:
    studies, taken = [], set()
    for i, source_row in enumerate(rows):
        row = dict(source_row)  # never mutate the caller's rows
        key = _text(row.get("study_key"), f"study-{i + 1}")
        status = _text(row.get("status"), STATUS_FAILED)
        study = _Study(row=row, key=key, page_name=_page_name(key, taken), status=status)
        images = row.get("images")
        for entry in images if isinstance(images, Sequence) and not isinstance(images, str) else []:
            picture = _read_picture(out_dir, entry)
            if isinstance(picture, str):
                study.image_problems.append(picture)
            else:
                study.pictures.append(picture)
        if study.pictures:
            first = next((p for p in study.pictures if p.kind == "heatmap"), study.pictures[0])
            study.thumbnail = _thumbnail(first)
        studies.append(study)
    return studies


def _priority_key(study: _Study) -> tuple:
    """Flagged first, then higher priority, then higher probability; the study key breaks ties."""
    row = study.row
    priority, probability = _number(row.get("priority")), _number(row.get("probability"))
    return (
        row.get("flagged") is not True,
        -priority if priority is not None else math.inf,
        -probability if probability is not None else math.inf,
        study.key,
    )


def _intended_uses(studies: Iterable[_Study]) -> list[str]:
    uses: list[str] = []
    for study in studies:
        use = study.model.get("intended_use")
        if use not in (None, "") and _text(use) not in uses:
            uses.append(_text(use))
    return uses


_PROVENANCE = (("name", "Model"), ("version", "Version"), ("run_id", "MLflow run id"), ("uri", "Model URI"),
               ("weights_source", "Weights source"))  # fmt: skip


def _models(studies: Iterable[_Study]) -> list[dict[str, Any]]:
    seen, models = set(), []
    for study in studies:
        model = study.model
        if not model:
            continue
        ident = tuple(_text(model.get(k)) for k, _ in _PROVENANCE)
        if ident not in seen:
            seen.add(ident)
            models.append(model)
    return models


_SUMMARY_LABELS = {
    "studies": "Studies",
    "flagged": "Flagged",
    "failed": "Could not be processed",
    "not_applicable": "Not applicable",
    "seconds": "Time (s)",
    "input": "Input",
    "deidentified": "Patient identifiers",
    "not_shareable": "Pictures withheld (burned-in annotation)",
}


def _summary_items(summary: Mapping[str, Any] | None, studies: Sequence[_Study]) -> list[tuple[str, str]]:
    counted: dict[str, Any] = {
        "studies": len(studies),
        "flagged": sum(1 for s in studies if s.status == STATUS_OK and s.row.get("flagged") is True),
        "failed": sum(1 for s in studies if s.status not in (STATUS_OK, STATUS_NOT_APPLICABLE)),
        "not_applicable": sum(1 for s in studies if s.status == STATUS_NOT_APPLICABLE),
    }
    counted.update(summary or {})
    items = []
    for key, value in counted.items():
        if key == "deidentified":
            text = f"removed (de-identified: {value})" if isinstance(value, str) else (
                "removed (de-identified report)" if value else "shown as in the source"
            )
        elif key == "seconds":
            text = _fixed(value, 1)
        else:
            text = _text(value)
        items.append((_SUMMARY_LABELS.get(key, str(key).replace("_", " ").capitalize()), text))
    return items


def _study_details(study: _Study) -> list[tuple[str, str]]:
    row = study.row
    items = [
        ("Patient name", _text(row.get("patient_name"))),
        ("Patient id", _text(row.get("patient_id"))),
        ("Study date", _date(row.get("study_date"))),
        ("Modality", _text(row.get("modality"))),
        ("Study description", _text(row.get("study_description"))),
        ("Accession", _text(row.get("accession"))),
        ("Study instance UID", _text(row.get("study_uid"))),
        ("Source", _text(row.get("source"))),
        ("Status", study.status.replace("_", " ")),
    ]
    if study.status == STATUS_OK:
        items += [
            ("Finding", _finding(row)),
            ("Probability", _fixed(row.get("probability"))),
            ("Decision", _decision(row)),
            ("Priority", _fixed(row.get("priority"))),
        ]
        if study.rank is not None:
            items.append(("Worklist rank", str(study.rank)))
    return items


_BOX_HEAD = ("#", "World box (mm)", "Size (mm)", "Score", "Slice")
_OUTPUTS = (("DICOM Structured Report", "sr_path"), ("DICOM secondary capture", "secondary_capture_path"))


# ----------------------------------------------------------------------------------------- views


_WORKLIST_HEAD = ("Rank", "Patient", "Study date", "Modality", "Finding", "Probability", "Decision", "Model",
                  "Image", "Study")  # fmt: skip


def _screen_href(study: _Study) -> str:
    return f"studies/{quote(study.page_name)}.html"


def _print_href(study: _Study) -> str:
    return f"#study-{quote(study.page_name)}"


def _capper(limit: int | None) -> Callable[[str], str]:
    return (lambda text: _cap(text, limit)) if limit else (lambda text: text)


def _picture_view(picture: _Picture) -> dict[str, Any]:
    return {"src": picture.data_uri, "width": picture.width, "height": picture.height, "caption": picture.caption,
            "kind": picture.kind}  # fmt: skip


def _provenance_view(models: Iterable[Mapping[str, Any]], cell: Callable[[str], str]) -> list[list[str]]:
    return [[cell(_text(model.get(key))) for key, _ in _PROVENANCE] for model in models]


def _problem_view(studies: Sequence[_Study], href: Callable[[_Study], str], cell: Callable[[str], str]) -> list:
    return [{"key": s.key, "source": cell(_text(s.row.get("source"))), "reason": cell(_text(s.row.get("reason"))),
             "href": href(s)} for s in studies]  # fmt: skip


def _index_view(
    title: str,
    generated_at: str,
    summary_items: Sequence[tuple[str, str]],
    worklist: Sequence[_Study],
    unprocessed: Sequence[_Study],
    not_applicable: Sequence[_Study],
    all_studies: Sequence[_Study],
    *,
    href: Callable[[_Study], str] = _screen_href,
    limit: int | None = None,
    pdf_error: str | None = None,
) -> dict[str, Any]:
    """What ``index_body`` in ``_sections.html`` shows: plain text, escaped by the template."""
    cell = _capper(limit)
    rows = []
    for study in worklist:
        row = study.row
        priority = _number(row.get("priority"))
        rows.append({
            "key": study.key, "flagged": row.get("flagged") is True, "rank": study.rank,
            "priority": "" if priority is None else f"{priority:g}",
            "patient": cell(_patient(row)), "date": cell(_date(row.get("study_date"))),
            "modality": cell(_text(row.get("modality"))), "finding": cell(_finding(row)),
            "probability": _fixed(row.get("probability")), "decision": _decision(row),
            "model": cell(_model_label(study.model)),
            "thumb": _picture_view(study.thumbnail) if study.thumbnail else None, "href": href(study),
        })  # fmt: skip
    return {
        "title": _text(title),
        "generated_at": _text(generated_at),
        "pdf_error": pdf_error,
        "summary": [(cell(k), cell(v)) for k, v in summary_items],
        "intended_uses": [cell(use) for use in _intended_uses(all_studies)],
        "worklist": rows,
        "unprocessed": _problem_view(unprocessed, href, cell),
        "not_applicable": _problem_view(not_applicable, href, cell),
        "models": _provenance_view(_models(all_studies), cell),
    }


def _study_view(study: _Study, title: str, generated_at: str, *, for_print: bool = False) -> dict[str, Any]:
    """What ``study_body`` in ``_sections.html`` shows. For print, cells are capped and DICOM outputs are
    named without a link (a relative link means nothing inside a PDF)."""
    cell = _capper(MAX_CELL_CHARS if for_print else None)
    row = study.row
    reason_label = None
    if study.status != STATUS_OK:
        reason_label = "Not applicable" if study.status == STATUS_NOT_APPLICABLE else "Could not be processed"
    outputs = []
    for label, key in _OUTPUTS:
        path = row.get(key)
        href = _relative_href(path, up=1)
        if href:
            outputs.append({"label": label, "path": _text(path), "href": None if for_print else href})
    use = study.model.get("intended_use")
    return {
        "page_name": study.page_name,
        "heading": cell(f"Study {study.key}: {_patient(row)}"),
        "title": _text(title),
        "generated_at": _text(generated_at),
        "reason_label": reason_label,
        "reason": cell(_text(row.get("reason"))),
        "details": [(k, cell(v)) for k, v in _study_details(study)],
        "pictures": [_picture_view(p) for p in study.pictures],
        "image_problems": [cell(message) for message in study.image_problems],
        "show_boxes": bool(study.boxes) or row.get("task") == "detection",
        "boxes": [[cell(c) for c in _box_cells(b)] for b in study.boxes],
        "outputs": outputs,
        "intended_uses": [cell(_text(use))] if use not in (None, "") else [],
        "models": _provenance_view([study.model] if study.model else [], cell),
    }


# ----------------------------------------------------------------------------------------- templates


def _css_string(value: Any) -> Markup:
    """A CSS string literal (``@page`` margin content) that says ``value`` and can close neither the string nor
    the ``<style>`` element: every character but ASCII letters, digits and a few marks is a six-digit hex escape
    (the space after it ends the escape and is not shown)."""
    text = _text(value, "")
    safe = "".join(ch if ch.isascii() and (ch.isalnum() or ch in " .,:;()^_-") else f"\\{ord(ch):06x} " for ch in text)
    return Markup(f'"{safe}"')


@functools.cache
def _templates() -> Environment:
    env = Environment(
        loader=PackageLoader("medvision.reporting", "templates"),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["css_string"] = _css_string
    env.globals.update(
        notice=NOTICE,
        worklist_head=_WORKLIST_HEAD,
        box_head=_BOX_HEAD,
        provenance_head=[label for _, label in _PROVENANCE],
    )
    return env


def _render(template: str, *, page_title: str, title: str, generated_at: str, **context: Any) -> str:
    running_head = _cap(f"{_text(title)} · generated {_text(generated_at)}", 150)
    page = _templates().get_template(template)
    return page.render(page_title=_text(page_title), running_head=running_head, **context)


def _print_document(
    title: str,
    generated_at: str,
    summary_items: Sequence[tuple[str, str]],
    worklist: Sequence[_Study],
    unprocessed: Sequence[_Study],
    not_applicable: Sequence[_Study],
    all_studies: Sequence[_Study],
) -> str:
    """The single HTML document ``report.pdf`` is printed from: the worklist, then each study on its own page."""
    index = _index_view(title, generated_at, summary_items, worklist, unprocessed, not_applicable, all_studies,
                        href=_print_href, limit=MAX_CELL_CHARS)  # fmt: skip
    studies = [_study_view(s, title, generated_at, for_print=True) for s in [*worklist, *unprocessed, *not_applicable]]
    return _render("print.html", page_title=title, title=title, generated_at=generated_at, index=index,
                   studies=studies)  # fmt: skip


# ----------------------------------------------------------------------------------------- PDF


class PdfError(MedvisionError):
    """``report.pdf`` could not be printed: Chromium is missing, failed, timed out or wrote no PDF."""


def _chromium() -> str:
    """The Chromium binary: ``$MEDVISION_CHROMIUM`` when set, else the first of :data:`CHROMIUM_BINARIES` on PATH."""
    named = os.environ.get(CHROMIUM_ENV, "").strip()
    for name in (named,) if named else CHROMIUM_BINARIES:
        found = shutil.which(name)
        if found:
            return found
    if named:
        fix = "point it at the chromium binary, or unset it and install chromium: apt-get install chromium"
        raise PdfError(CHROMIUM_ENV, f"{named!r} is not an executable Chromium", fix)
    raise PdfError("chromium", f"not found on PATH (looked for {', '.join(CHROMIUM_BINARIES)})", _CHROMIUM_FIX)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _late(binary: str, timeout_s: float) -> PdfError:
    """Chromium did not print within the time limit (it has been killed): the error both print paths raise."""
    return PdfError(binary, f"did not print the report within {timeout_s:.0f} s",
                    "check that chromium runs (chromium --headless --version)")  # fmt: skip


def _print_pdf(document: str, pdf: Path, *, timeout_s: float) -> None:
    """Print ``document`` (HTML) to ``pdf`` with headless Chromium, atomically: a temporary file beside ``pdf``,
    renamed once Chromium has written a whole PDF. Raises :class:`PdfError` with the reason and the fix."""
    binary = _chromium()
    partial = pdf.with_name(f".{pdf.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        # The document holds the report's identifiers: a private folder (0700), removed with the profile.
        with tempfile.TemporaryDirectory(prefix="medvision-pdf-") as scratch:
            page = Path(scratch) / "report.html"
            page.write_text(document, encoding="utf-8")
            command = [
                binary, *CHROMIUM_FLAGS, f"--user-data-dir={Path(scratch) / 'profile'}", "--no-pdf-header-footer",
                "--generate-pdf-document-outline", f"--print-to-pdf={partial}", page.as_uri(),
            ]  # fmt: skip
            try:
                # A session of its own, so that a timeout ends Chromium's renderer and zygote processes too.
                process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
            except OSError as exc:
                raise PdfError(binary, f"could not be started ({exc})", _CHROMIUM_FIX) from exc
            try:
                _, stderr = process.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _kill_group(process.pid)
                try:
                    process.communicate(timeout=10)  # a process that left the group may still hold the pipes
                except subprocess.TimeoutExpired:
                    pass
                raise _late(binary, timeout_s) from None
            finally:
                _kill_group(process.pid)
            said = " ".join(stderr.decode("utf-8", "replace").split())[-400:]
            if process.returncode != 0:
                raise PdfError(binary, f"exited with status {process.returncode} while printing the report: {said}",
                               "run it by hand on index.html to see why")  # fmt: skip
            try:
                with open(partial, "rb") as written:
                    magic = written.read(5)
            except OSError:
                magic = b""
            if magic != b"%PDF-":
                raise PdfError(binary, f"wrote no PDF ({said or 'nothing on stderr'})",
                               "run it by hand on index.html to see why")  # fmt: skip
        os.replace(partial, pdf)
    finally:
        partial.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------- entry point


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def render_report(
    rows: list[dict],
    out_dir: Path,
    *,
    title: str = "medvision batch report",
    generated_at: str | None = None,
    summary: dict | None = None,
    printer: Any = None,
) -> dict[str, Any]:
    """Write the worklist ``index.html``, ``studies/<study_key>.html`` per row and ``report.pdf``.

    The worklist holds the studies with status ``ok``: flagged ones first, then by ``priority`` and
    ``probability``, highest first. Failed studies (and any unknown status) are listed under "Could
    not be processed" (``id="could-not-process"``), not-applicable ones under "Not applicable"
    (``id="not-applicable"``), each with its source and reason. Every row gets a page. Images named
    by a row (paths relative to ``out_dir``) are embedded as ``data:`` URIs; one that cannot be
    read is reported on the study's page rather than stopping the report. The rows are not changed.

    ``report.pdf`` is the same HTML printed by headless Chromium. When it cannot be printed (Chromium
    missing, failing or timing out) the pages are written all the same: ``index.html`` says so under
    its title (``id="pdf-status"``, ``data-status="failed"``, with the reason and the fix), the reason
    is logged as a warning, and no ``report.pdf`` is left in ``out_dir``.

    Args:
        rows: the rows of ``results.json`` (see the module docstring for the keys read).
        out_dir: the report folder; created when missing. The caller moves it into place.
        title: the title of the report.
        generated_at: the time shown as "Generated ..."; now, in UTC, when ``None``.
        summary: counts and facts shown in the summary table (``studies``, ``flagged``, ``failed``,
            ``not_applicable``, ``seconds``, ``input``, ``deidentified``, others as given); the counts
            not given are counted from ``rows``.
        printer: a :class:`~medvision.reporting.printer.Printer` started earlier (the report's); ``None``:
            Chromium is started here for the print.

    Returns:
        ``{"index": Path, "pdf": Path, "pages": [Path, ...]}``, the study pages in the order of ``rows``
        (``pdf`` is where the PDF is; it does not exist when printing failed).

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp())
        >>> row = {"study_key": "a1", "status": "ok", "probability": 0.91, "flagged": True, "threshold": 0.5}
        >>> paths = render_report([row], out)
        >>> 'data-study-key="a1"' in paths["index"].read_text()
        True
    """
    out_dir = Path(out_dir)
    studies_dir = out_dir / "studies"
    studies_dir.mkdir(parents=True, exist_ok=True)
    if generated_at is None:
        generated_at = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")

    studies = _studies(rows, out_dir)
    worklist = sorted((s for s in studies if s.status == STATUS_OK), key=_priority_key)
    for rank, study in enumerate(worklist, 1):
        study.rank = rank
    not_applicable = [s for s in studies if s.status == STATUS_NOT_APPLICABLE]
    unprocessed = [s for s in studies if s.status not in (STATUS_OK, STATUS_NOT_APPLICABLE)]
    summary_items = _summary_items(summary, studies)
    parts = (title, generated_at, summary_items, worklist, unprocessed, not_applicable, studies)

    pages = []
    for study in studies:
        page = studies_dir / f"{study.page_name}.html"
        view = _study_view(study, title, generated_at)
        _write_text(page, _render("study.html", page_title=view["heading"], title=title, generated_at=generated_at,
                                  study=view))  # fmt: skip
        pages.append(page)

    pdf = out_dir / "report.pdf"
    pdf_error = None
    try:
        print_pdf = printer.print_pdf if printer is not None else _print_pdf
        print_pdf(_print_document(*parts), pdf, timeout_s=PDF_TIMEOUT_S + PDF_TIMEOUT_PER_STUDY_S * len(studies))
    except PdfError as exc:
        pdf.unlink(missing_ok=True)  # never leave an older PDF that disagrees with the pages
        pdf_error = exc.one_line()
        log.warning("report.pdf not written: %s", pdf_error)

    index = out_dir / "index.html"
    index_view = _index_view(*parts, pdf_error=pdf_error)
    _write_text(index, _render("index.html", page_title=title, title=title, generated_at=generated_at,
                               index=index_view))  # fmt: skip
    return {"index": index, "pdf": pdf, "pages": pages}
