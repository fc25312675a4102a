"""The re-run cache: a study unchanged since the previous report is copied from it, not recomputed.

``.medvision-report-cache.json`` (:data:`CACHE_NAME`) in the report maps a key per study to its rows. The
key hashes the study's files (relative paths, sizes, modification times), the model's name, version and run
id, the report format (:data:`REPORT_FORMAT`), the de-identification options and salt, the picture format
and whether secondary captures are written. A de-identified run without a given salt reuses nothing (its
pseudonyms change with every run). Reused rows bring their files (pictures, SR, secondary capture) along
from the previous report.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medvision.reporting.discover import Study
from medvision.reporting.models import _Model
from medvision.reporting.rows import _json_default, _Run

__all__ = ["CACHE_NAME", "REPORT_FORMAT"]

#: The re-run cache inside the report folder.
CACHE_NAME = ".medvision-report-cache.json"
#: Bump when rows, images or SR change, so that older cached studies are recomputed.
REPORT_FORMAT = 1


def _cache_key(run: _Run, study: Study, model: _Model) -> str | None:
    if model.ident is None:
        return None
    salt = ""
    if run.deid is not None:
        if not run.deid.salt_given:
            return None  # pseudonyms change with every run: nothing to reuse
        salt = run.deid.salt
    h = hashlib.sha256()
    options = run.deid.options.describe() if run.deid is not None else None
    parts = (salt, REPORT_FORMAT, study.key, study.fingerprint(run.root), model.ident, options, run.suffix,
             run.secondary_capture)  # fmt: skip
    for part in parts:
        h.update(f"{part}\x1f".encode())
    return h.hexdigest()


def _row_files(row: Mapping[str, Any]) -> list[str]:
    files = [str(i["path"]) for i in row.get("images") or [] if isinstance(i, Mapping) and i.get("path")]
    files += [str(row[k]) for k in ("sr_path", "secondary_capture_path") if row.get(k)]
    return files


def _reuse(run: _Run, key: str | None) -> list[dict[str, Any]] | None:
    """The cached rows for ``key``, with their files copied from the previous report, or ``None``."""
    if key is None or run.old_out is None or key not in run.cache_in:
        return None
    entry = run.cache_in[key]
    rows = entry.get("rows") if isinstance(entry, Mapping) else None
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        return None
    files = [f for row in rows for f in _row_files(row)]
    sources = [run.old_out / f for f in files]
    if not all(p.is_file() and _inside(p, run.old_out) for p in sources):
        return None
    for rel, src in zip(files, sources, strict=True):
        dst = run.tmp / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    run.cache_out[key] = {"rows": rows}
    run.reused += 1
    return [dict(r) for r in rows]


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def _remember(run: _Run, study: Study, model: _Model, rows: list[dict[str, Any]]) -> None:
    """Put a study's rows (its finding and the failures of some of its images) into the re-run cache."""
    key = _cache_key(run, study, model)
    if key is not None and rows and rows[0].get("status") == "ok":
        run.cache_out[key] = {"rows": rows}


def _load_cache(out: Path) -> dict[str, Any]:
    try:
        doc = json.loads((out / CACHE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict) or doc.get("format") != REPORT_FORMAT or not isinstance(doc.get("entries"), dict):
        return {}
    return doc["entries"]


def _save_cache(run: _Run) -> None:
    """Write the cache of this run's computed and reused studies into its temporary folder."""
    (run.tmp / CACHE_NAME).write_text(
        json.dumps({"format": REPORT_FORMAT, "entries": run.cache_out}, default=_json_default), encoding="utf-8"
    )
