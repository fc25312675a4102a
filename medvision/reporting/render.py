"""The radiologist-facing half of the batch report: ``index.html``, one page per study, ``report.pdf``.

:func:`render_report` takes the rows of ``results.json`` (one dict per study, failures included) and
writes a worklist sorted by priority, a page per study and a PDF with the same content.

Why these libraries: the field's libraries stop short of a report a radiologist reads. MONAI and
highdicom produce heatmaps and DICOM SR objects but nothing renders a worklist; so the HTML is
written here with the standard library (``html.escape`` on every value, inline CSS, no JavaScript,
images embedded as ``data:`` URIs so one file reads offline and survives being copied), and the PDF
with reportlab's platypus, the long-standing pure-Python PDF layout engine (tables that split across
pages with a repeated header, images, paragraphs; no browser or system library needed). Pillow,
already a dependency, reads the images and makes the thumbnails.

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
import html
import io
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import escape as xml_escape

__all__ = ["NOTICE", "render_report"]

#: The notice every page carries, word for word.
NOTICE = "DRAFT — not for diagnostic use without review by a radiologist. Results are not final and not verified."

STATUS_OK = "ok"
STATUS_FAILED = "failed"
STATUS_NOT_APPLICABLE = "not_applicable"

MISSING = "—"
THUMBNAIL_PX = 160
# Table cells cannot split across PDF pages: a cell taller than a page is a layout error, so cell text is capped.
MAX_CELL_CHARS = 600

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")

_CSS = """
body { font-family: "DejaVu Sans", "Liberation Sans", Arial, sans-serif; margin: 1.5em 2em; color: #1a1a1a;
       line-height: 1.4; }
h1 { font-size: 1.6em; margin: .4em 0; } h2 { font-size: 1.25em; margin-top: 1.6em;
  border-bottom: 2px solid #ccc; padding-bottom: .2em; }
.notice { background: #b00020; color: #fff; font-weight: bold; padding: .8em 1em; border-radius: 4px;
          font-size: 1.05em; }
.meta { color: #555; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { border: 1px solid #bbb; padding: .35em .6em; text-align: left; vertical-align: top; }
th { background: #eef1f5; }
table.kv th { width: 14em; }
tr.flagged td { background: #fdecea; }
.flag { color: #b00020; font-weight: bold; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
img.thumb { max-width: 140px; max-height: 140px; display: block; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; max-width: 48%; } figure img { max-width: 100%; height: auto; border: 1px solid #999; }
figcaption { font-size: .9em; color: #444; }
.reason { background: #fff4e5; border-left: 4px solid #e07b00; padding: .5em 1em; }
.missing { color: #888; font-style: italic; }
footer { margin-top: 2em; border-top: 1px solid #ccc; padding-top: .5em; font-size: .9em; }
@media print { .notice { -webkit-print-color-adjust: exact; print-color-adjust: exact; } }
"""


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

    def data_uri(self) -> str:
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
            if fmt not in ("PNG", "JPEG"):  # browsers and reportlab both take PNG; re-encode the rest
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


# ----------------------------------------------------------------------------------------- HTML


def _e(value: Any) -> str:
    return html.escape(value if isinstance(value, str) else _text(value), quote=True)


def _html_page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
        "style-src 'unsafe-inline'\">\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f'<div class="notice" id="notice" role="alert">{_e(NOTICE)}</div>\n'
        f"{body}\n<footer><p>{_e(NOTICE)}</p></footer>\n</body>\n</html>\n"
    )


def _html_kv(items: Iterable[tuple[str, str]], css_class: str = "kv") -> str:
    cells = "".join(f'<tr><th scope="row">{_e(k)}</th><td>{_e(v)}</td></tr>' for k, v in items)
    return f'<table class="{css_class}">{cells}</table>'


def _html_intended_use(uses: Sequence[str]) -> str:
    if not uses:
        return '<p class="missing">The intended use of the model was not recorded.</p>'
    return "<ul>" + "".join(f"<li>{_e(u)}</li>" for u in uses) + "</ul>"


def _html_provenance(models: Sequence[Mapping[str, Any]]) -> str:
    if not models:
        return '<p class="missing">No model recorded.</p>'
    head = "".join(f'<th scope="col">{_e(label)}</th>' for _, label in _PROVENANCE)
    body = "".join("<tr>" + "".join(f"<td>{_e(m.get(k))}</td>" for k, _ in _PROVENANCE) + "</tr>" for m in models)
    return f'<table class="provenance"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _html_index(
    title: str,
    generated_at: str,
    summary_items: Sequence[tuple[str, str]],
    worklist: Sequence[_Study],
    unprocessed: Sequence[_Study],
    not_applicable: Sequence[_Study],
    all_studies: Sequence[_Study],
) -> str:
    parts = [
        f"<header><h1>{_e(title)}</h1><p class=\"meta\">Generated {_e(generated_at)}</p></header>",
        "<section id=\"summary\"><h2>Summary</h2>" + _html_kv(summary_items) + "</section>",
        "<section id=\"intended-use\"><h2>Intended use</h2>" + _html_intended_use(_intended_uses(all_studies))
        + "</section>",
    ]  # fmt: skip
    head = ("Rank", "Patient", "Study date", "Modality", "Finding", "Probability", "Decision", "Model", "Image",
            "Study")  # fmt: skip
    rows = []
    for study in worklist:
        row = study.row
        flagged = row.get("flagged") is True
        priority = _number(row.get("priority"))
        thumb = (
            f'<img class="thumb" src="{study.thumbnail.data_uri()}" alt="{_e(study.thumbnail.caption)}"'
            f' width="{study.thumbnail.width}" height="{study.thumbnail.height}">'
            if study.thumbnail
            else '<span class="missing">no image</span>'
        )
        href = f"studies/{quote(study.page_name)}.html"
        rows.append(
            f'<tr class="worklist-row{" flagged" if flagged else ""}" data-study-key="{_e(study.key)}"'
            f' data-priority="{"" if priority is None else f"{priority:g}"}">'
            f'<td class="num">{study.rank}</td><td class="patient">{_e(_patient(row))}</td>'
            f"<td>{_e(_date(row.get('study_date')))}</td><td>{_e(row.get('modality'))}</td>"
            f'<td>{_e(_finding(row))}</td><td class="num">{_e(_fixed(row.get("probability")))}</td>'
            f'<td class="decision{" flag" if flagged else ""}">{_e(_decision(row))}</td>'
            f"<td>{_e(_model_label(study.model))}</td><td>{thumb}</td>"
            f'<td><a href="{href}">{_e(study.key)}</a></td></tr>'
        )
    if not rows:
        rows.append(f'<tr><td colspan="{len(head)}" class="missing">No study in the worklist.</td></tr>')
    parts.append(
        "<section id=\"worklist\"><h2>Worklist (most suspicious first)</h2><table class=\"worklist\"><thead><tr>"
        + "".join(f"<th scope=\"col\">{_e(h)}</th>" for h in head)
        + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table></section>"
    )  # fmt: skip
    parts.append(_html_problem_section("could-not-process", "Could not be processed", unprocessed))
    if not_applicable:
        parts.append(_html_problem_section("not-applicable", "Not applicable", not_applicable))
    parts.append('<section id="provenance"><h2>Models</h2>' + _html_provenance(_models(all_studies)) + "</section>")
    return _html_page(title, "\n".join(parts))


def _html_problem_section(section_id: str, heading: str, studies: Sequence[_Study]) -> str:
    if not studies:
        return f'<section id="{section_id}"><h2>{_e(heading)}</h2><p>None.</p></section>'
    rows = "".join(
        f'<tr class="problem-row" data-study-key="{_e(s.key)}"><td class="source">{_e(s.row.get("source"))}</td>'
        f'<td class="reason">{_e(s.row.get("reason"))}</td>'
        f'<td><a href="studies/{quote(s.page_name)}.html">{_e(s.key)}</a></td></tr>'
        for s in studies
    )
    return (
        f'<section id="{section_id}"><h2>{_e(heading)}</h2><table><thead><tr><th scope="col">Source</th>'
        f'<th scope="col">Reason</th><th scope="col">Study</th></tr></thead><tbody>{rows}</tbody></table></section>'
    )


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


def _html_study(study: _Study, title: str, generated_at: str) -> str:
    row = study.row
    heading = f"Study {study.key}: {_patient(row)}"
    parts = [
        '<nav><a href="../index.html">&larr; Worklist</a></nav>',
        f'<header><h1>{_e(heading)}</h1><p class="meta">{_e(title)} · generated {_e(generated_at)}</p></header>',
    ]
    if study.status != STATUS_OK:
        label = "Not applicable" if study.status == STATUS_NOT_APPLICABLE else "Could not be processed"
        parts.append(f'<p class="reason" id="reason"><strong>{_e(label)}:</strong> {_e(row.get("reason"))}</p>')
    parts.append('<section id="details"><h2>Study</h2>' + _html_kv(_study_details(study)) + "</section>")
    if study.pictures or study.image_problems:
        figures = "".join(
            f'<figure class="{_e(p.kind)}"><img src="{p.data_uri()}" alt="{_e(p.caption or p.kind)}"'
            f' width="{p.width}" height="{p.height}"><figcaption>{_e(p.caption)}</figcaption></figure>'
            for p in study.pictures
        )
        problems = "".join(f'<p class="missing">{_e(msg)}</p>' for msg in study.image_problems)
        parts.append(f'<section id="images"><h2>Images</h2><div class="figures">{figures}</div>{problems}</section>')
    if study.boxes or row.get("task") == "detection":
        parts.append('<section id="boxes"><h2>Detected boxes</h2>' + _html_boxes(study.boxes) + "</section>")
    links = []
    for label, key in _OUTPUTS:
        path = row.get(key)
        href = _relative_href(path, up=1)
        if href:
            links.append(f'<li>{_e(label)}: <a href="{_e(href)}">{_e(path)}</a></li>')
    if links:
        parts.append('<section id="outputs"><h2>DICOM outputs</h2><ul>' + "".join(links) + "</ul></section>")
    use = study.model.get("intended_use")
    parts.append(
        '<section id="intended-use"><h2>Intended use</h2>'
        + _html_intended_use([_text(use)] if use not in (None, "") else [])
        + "</section>"
    )
    parts.append(
        '<section id="provenance"><h2>Model provenance</h2>'
        + _html_provenance([study.model] if study.model else [])
        + "</section>"
    )
    return _html_page(heading, "\n".join(parts))


def _html_boxes(boxes: Sequence[Any]) -> str:
    if not boxes:
        return "<p>No box above the detector's score threshold.</p>"
    head = "".join(f'<th scope="col">{_e(h)}</th>' for h in _BOX_HEAD)
    body = "".join(
        f'<tr class="box-row"><td class="num">{i}</td>'
        + "".join(f"<td>{_e(cell)}</td>" for cell in _box_cells(b))
        + "</tr>"
        for i, b in enumerate(boxes, 1)
    )
    return f'<table class="boxes"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


# ----------------------------------------------------------------------------------------- PDF

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


def _write_pdf(
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
) -> dict[str, Any]:
    """Write the worklist ``index.html``, ``studies/<study_key>.html`` per row and ``report.pdf``.

    The worklist holds the studies with status ``ok``: flagged ones first, then by ``priority`` and
    ``probability``, highest first. Failed studies (and any unknown status) are listed under "Could
    not be processed" (``id="could-not-process"``), not-applicable ones under "Not applicable"
    (``id="not-applicable"``), each with its source and reason. Every row gets a page. Images named
    by a row (paths relative to ``out_dir``) are embedded as ``data:`` URIs; one that cannot be
    read is reported on the study's page rather than stopping the report. The rows are not changed.

    Args:
        rows: the rows of ``results.json`` (see the module docstring for the keys read).
        out_dir: the report folder; created when missing. The caller moves it into place.
        title: the title of the report.
        generated_at: the time shown as "Generated ..."; now, in UTC, when ``None``.
        summary: counts and facts shown in the summary table (``studies``, ``flagged``, ``failed``,
            ``not_applicable``, ``seconds``, ``input``, ``deidentified``, others as given); the counts
            not given are counted from ``rows``.

    Returns:
        ``{"index": Path, "pdf": Path, "pages": [Path, ...]}``, the study pages in the order of ``rows``.

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

    pages = []
    for study in studies:
        page = studies_dir / f"{study.page_name}.html"
        _write_text(page, _html_study(study, title, generated_at))
        pages.append(page)
    index = out_dir / "index.html"
    _write_text(index, _html_index(title, generated_at, summary_items, worklist, unprocessed, not_applicable, studies))

    pdf = out_dir / "report.pdf"
    tmp_pdf = pdf.with_name(pdf.name + ".tmp")
    _write_pdf(
        tmp_pdf,
        title=title,
        generated_at=generated_at,
        summary_items=summary_items,
        worklist=worklist,
        unprocessed=unprocessed,
        not_applicable=not_applicable,
        all_studies=studies,
    )
    os.replace(tmp_pdf, pdf)
    return {"index": index, "pdf": pdf, "pages": pages}
