"""The report's rows: what one row per study (or per failure) holds, their order, the run that collects them,
and the files written from them.

Owns the row schema (:data:`ROW_KEYS`, and the flattened keys of ``results.csv``), the priority and the
worklist order (flagged first, then by probability; failures and not-applicable studies after), the
base and failure rows and their reasons, :class:`_Run` (one run's state: its folders, de-identifier,
timings and the rows it collects), and what is written from rows: ``results.csv``, ``results.json``, the
DICOM SR (:mod:`medvision.reporting.sr`) and secondary capture (:mod:`medvision.reporting.sc`) of a study.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medvision.errors import MedvisionError
from medvision.reporting.deid import NOT_SHAREABLE
from medvision.reporting.discover import CLASSIFICATION, DETECTION, FAILED, NOT_APPLICABLE, Study

__all__ = ["ROW_KEYS"]

#: The keys of every row of ``results.json`` (``results.csv`` flattens ``model``, ``boxes``, ``images``).
ROW_KEYS = (
    "study_key",
    "status",
    "reason",
    "source",
    "patient_id",
    "patient_name",
    "study_date",
    "study_uid",
    "accession",
    "modality",
    "study_description",
    "task",
    "finding",
    "probability",
    "flagged",
    "threshold",
    "priority",
    "model",
    "boxes",
    "images",
    "sr_path",
    "secondary_capture_path",
    "stored",
    "shareable",
)

#: ``stored`` of a row: every object confirmed by the PACS of ``--store``; nothing to send (e.g. NIfTI, a failure);
#: ``failed: <reason>`` otherwise; ``None`` (empty in the CSV) when the report was not sent anywhere.
STORED_OK = "ok"
STORED_NOT_APPLICABLE = "not_applicable"

_MODEL_AT = ROW_KEYS.index("model")
#: The CSV's columns: the row's, with ``model`` spread into its fields and ``n_boxes`` before ``boxes``.
_CSV_KEYS = (
    *ROW_KEYS[:_MODEL_AT],
    *(f"model_{k}" for k in ("name", "version", "run_id", "uri", "intended_use", "weights_source")),
    "n_boxes",
    *ROW_KEYS[_MODEL_AT + 1 :],
)

_FINDING = {CLASSIFICATION: "pneumonia", DETECTION: "tumour"}


def _base_row(study: Study, key: str) -> dict[str, Any]:
    meta = study.meta
    row: dict[str, Any] = dict.fromkeys(ROW_KEYS)
    row.update(
        study_key=key,
        status=study.route if study.route in (FAILED, NOT_APPLICABLE) else "ok",
        reason=study.reason,
        source=study.source,
        patient_id=meta.get("patient_id"),
        patient_name=meta.get("patient_name"),
        study_date=meta.get("study_date"),
        study_uid=meta.get("study_uid"),
        accession=meta.get("accession"),
        modality=meta.get("modality") or ("NIfTI" if study.kind == "nifti" else None),
        study_description=meta.get("study_description"),
        task=study.route if study.route in (CLASSIFICATION, DETECTION) else None,
        finding=_FINDING.get(study.route),
        boxes=[],
        images=[],
    )
    return row


def _failed(row: dict[str, Any], reason: str) -> dict[str, Any]:
    out = dict(row)
    out.update(status=FAILED, reason=reason, probability=None, flagged=None, priority=None, images=[], boxes=[])
    out["sr_path"] = None
    return out


def _priority(probability: float | None, flagged: bool | None) -> float | None:
    """Flagged studies first (+1), then by probability: higher means read first."""
    if probability is None or not math.isfinite(probability):
        return None
    return round((1.0 if flagged else 0.0) + float(probability), 6)


def _order(row: Mapping[str, Any]) -> tuple:
    rank = {"ok": 0, FAILED: 1, NOT_APPLICABLE: 2}.get(str(row.get("status")), 1)
    priority = row.get("priority")
    return (rank, -(priority if isinstance(priority, int | float) else -math.inf), str(row.get("study_key")))


def _reason(exc: BaseException, study: Study, root: Path) -> str:
    if isinstance(exc, MedvisionError):
        text = exc.one_line()
    else:
        text = f"{study.source}: unexpected {type(exc).__name__}: {' '.join(str(exc).split())}"
    for path in study.paths:
        try:
            text = text.replace(str(path), path.relative_to(root).as_posix())
        except ValueError:
            pass
    return text


# ----------------------------------------------------------------------------------------------- the run


@dataclass
class _Run:
    """State of one report run."""

    root: Path
    tmp: Path
    old_out: Path | None
    deid: Any
    device: str
    batch_size: int
    timings: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("load", "network", "gradcam", "write", "render"), 0.0)
    )
    rows: list[dict[str, Any]] = field(default_factory=list)
    cache_in: dict[str, Any] = field(default_factory=dict)
    cache_out: dict[str, Any] = field(default_factory=dict)
    reused: int = 0
    scratch: Path | None = None
    suffix: str = ".png"
    secondary_capture: bool = False
    #: Put before each row's ``source`` (a PACS input: the address; never with ``--deidentify``).
    source_prefix: str | None = None
    #: Called with each row as soon as it is written (``--store``): returns the row's ``stored``.
    deliver: Callable[[dict[str, Any]], str] | None = None
    #: The Chromium that prints report.pdf, started with the run (:class:`~medvision.reporting.printer.Printer`).
    printer: Any = None

    def key_for(self, study: Study) -> str:
        return self.deid.key(study.key) if self.deid is not None else study.key

    def deidentified(self, header: Any) -> Any:
        """A DICOM header as this report writes it: de-identified under ``--deidentify``, else as read."""
        return self.deid.dataset(header) if self.deid is not None else header

    @property
    def stamp(self) -> Any:
        """The :class:`~medvision.reporting.deid.DeidOptions` stamped on the SR and SC (``None``: not de-identified)."""
        return self.deid.options if self.deid is not None else None

    def withheld(self, study: Study) -> str | None:
        """Why a de-identified report withholds the study's pictures (``None``: it does not).

        Only a DICOM study whose every image says BurnedInAnnotation NO is shareable: pixels are not cleaned,
        so text burned into them (names, dates, ids) would leave with the picture.
        """
        if self.deid is None:
            return None
        if study.kind != "dicom" or not study.instances:
            return f"{NOT_SHAREABLE} unknown ({study.kind} files carry no BurnedInAnnotation); pictures withheld"
        marked = [i.burned_in or "absent" for i in study.instances if i.burned_in != "NO"]
        if not marked:
            return None
        values = "/".join(sorted(set(marked)))
        return (
            f"{NOT_SHAREABLE} (BurnedInAnnotation {values} in {len(marked)} of {len(study.instances)} images);"
            " pictures withheld"
        )

    def add(self, row: dict[str, Any], study: Study | None = None) -> dict[str, Any]:
        if self.deid is not None:
            paths = [] if study is None else [str(p) for p in study.paths] + [_rel(p, self.root) for p in study.paths]
            time_of_study = study.meta.get("study_time") if study is not None else None
            row = self.deid.row(row, source_paths=paths, study_time=time_of_study)
            row["shareable"] = study is not None and self.withheld(study) is None
        elif self.source_prefix and row.get("source"):
            row["source"] = f"{self.source_prefix}{row['source']}"
        self.rows.append(row)
        self.send(row)
        return row

    def send(self, row: dict[str, Any]) -> None:
        """Set the row's ``stored``: sent to the PACS of ``--store`` (its files are complete), else ``None``.

        A deliverer with ``submit`` (:class:`~medvision.reporting.pacs.ReportSender` in the background) sets it
        later: :meth:`sent` waits for it.
        """
        submit = getattr(self.deliver, "submit", None)
        if submit is not None:
            submit(row)
        else:
            row["stored"] = self.deliver(row) if self.deliver is not None else None

    def sent(self) -> None:
        """Every row's ``stored`` final (the background sends done)."""
        wait = getattr(self.deliver, "wait", None)
        if wait is not None:
            wait()

    def tick(self, part: str, start: float) -> float:
        now = time.perf_counter()
        self.timings[part] += now - start
        return now


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


# ----------------------------------------------------------------------------------------------- files


def _sr_file(
    tmp: Path,
    key: str,
    headers: list[Any],
    kind: str,
    row: Mapping[str, Any],
    *,
    findings: list[tuple[Any, float, bool]] | None = None,
    boxes: list[dict[str, Any]] | None = None,
    stamp: Any = None,
    shareable: bool = True,
) -> str:
    """Build and write a study's SR from headers already de-identified when the report is (:meth:`_Run.deidentified`,
    in the report's process, where the de-identifier's state is); ``stamp``: the
    :class:`~medvision.reporting.deid.DeidOptions` to record on it (``None``: not de-identified). Uses no
    state of the run, so the report's writer process runs it (:mod:`medvision.reporting.radiographs`)."""
    from medvision.reporting.deid import stamp as stamp_deid
    from medvision.reporting.sr import classification_sr, detection_sr, write_sr

    model = row.get("model") or {}
    if kind == "classification":
        sr = classification_sr(headers, findings or [], model=model, threshold=row.get("threshold"))
    else:
        sr = detection_sr(
            headers,
            boxes or [],
            model=model,
            threshold=row.get("threshold"),
            volume_score=float(row.get("probability") or 0.0),
            flagged=bool(row.get("flagged")),
        )
    if stamp is not None:
        stamp_deid(sr, stamp, shareable=shareable)
    rel = f"sr/{key}.dcm"
    write_sr(sr, tmp / rel)
    return rel


def _sc_file(
    tmp: Path, key: str, header: Any, picture: str, orientation: Any, what: str, row: Mapping[str, Any],
    *, stamp: Any = None,
) -> str:  # fmt: skip
    """Build and write the study's key picture as a DICOM Secondary Capture (:mod:`medvision.reporting.sc`) from a
    header already de-identified when the report is (no state of the run: see :func:`_sr_file`)."""
    from medvision.reporting.deid import stamp as stamp_deid
    from medvision.reporting.sc import key_picture_sc, write_sc

    sc = key_picture_sc(
        header, tmp / picture, model=row.get("model") or {}, patient_orientation=orientation, description=what
    )
    if stamp is not None:
        stamp_deid(sc, stamp, shareable=True)  # written only for a shareable study
    rel = f"sc/{key}.dcm"
    write_sc(sc, tmp / rel)
    return rel


def _write_results(run: _Run, summary: Mapping[str, Any], report: Mapping[str, Any]) -> None:
    doc = {"report": dict(report), "summary": dict(summary), "rows": run.rows}
    _write_json(run.tmp / "results.json", doc)
    _write_csv(run.tmp / "results.csv", run.rows)


def _write_json(path: Path, doc: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(doc, indent=2, default=_json_default), encoding="utf-8")


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(_CSV_KEYS))
        writer.writeheader()
        for row in rows:
            writer.writerow(_csv_row(row))


def _csv_row(row: Mapping[str, Any]) -> dict[str, Any]:
    model = row.get("model") or {}
    out = {k: row.get(k) for k in _CSV_KEYS if k in row and k not in ("model", "boxes", "images")}
    out.update({f"model_{k}": model.get(k) for k in ("name", "version", "run_id", "uri", "intended_use")})
    out["model_weights_source"] = model.get("weights_source")
    boxes = row.get("boxes") or []
    out["n_boxes"] = len(boxes) if row.get("task") == DETECTION else None
    out["boxes"] = json.dumps(boxes) if boxes else None
    out["images"] = "; ".join(str(i.get("path")) for i in row.get("images") or [] if isinstance(i, Mapping))
    return {k: ("" if v is None else v) for k, v in out.items()}


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return value.as_posix()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
