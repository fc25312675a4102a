"""The unattended batch report: a folder of studies in, a radiologist's report folder out.

This module is the orchestration; each job lives in its own module. :func:`run_report` takes one
validated :class:`~medvision.config.ReportConfig` and does, in order:

1. **Discovery** (:mod:`medvision.reporting.discover`): every file's header below ``config.input``,
   grouped into DICOM series and NIfTI volumes, routed to the classifier (CR/DX), the detector
   (CT/MR, NIfTI) or listed as not applicable; unusable files become failure rows.
2. **Models** (:mod:`medvision.reporting.models`) through the registry only:
   ``models:/pneumonia-classifier@champion``, else ``@candidate``
   (:func:`~medvision.tracking.registry.resolve_model_uri`), likewise ``tumor-detector``. A missing model
   makes its studies ``failed`` with the reason; the batch goes on. Models are loaded only when a study
   needs them (not when every study is reused).
3. **Radiographs** (:mod:`medvision.reporting.radiographs`) in batches of ``batch_size`` through the
   registered model's own preprocessing (:func:`~medvision.data.transforms.classification_transforms` with
   its image size, aspect, mean and std, as :func:`~medvision.engine.evaluate.evaluate_registered` does),
   one forward pass giving the logit and the Grad-CAM map
   (:class:`~medvision.reporting.explain.GradCamExplainer`); the probability is calibrated with the model's
   temperature and decided at its threshold.
4. **Volumes** (:mod:`medvision.reporting.volumes`) one at a time through the detector (a
   :class:`VolumePredictor`); key slices with the boxes drawn (radiological view) are written as PNG.
5. **Per study** (:mod:`medvision.reporting.rows`): a row with the finding, probability, decision,
   priority, boxes, images and the model's provenance; a DICOM SR under ``sr/``
   (:mod:`medvision.reporting.sr`; not for NIfTI).
6. **Outputs**: ``results.csv`` and ``results.json`` (one row per study and per failure, worklist
   order), the images under ``studies/<key>/``, then :func:`medvision.reporting.render.render_report`
   (``index.html``, ``studies/<key>.html``, ``report.pdf``).

Nothing half written (:mod:`medvision.reporting.output`): everything goes into a hidden temporary folder
next to ``config.out`` (``.<name>.medvision-tmp-<pid>-<token>``) and is moved into place at the end; an
existing report there is renamed aside, replaced, then deleted. An exception or Ctrl-C
(``KeyboardInterrupt``) removes the temporary folder and leaves the previous report as it was. A folder
that exists and is not a medvision report is never replaced.

Re-runs (:mod:`medvision.reporting.cache`): ``.medvision-report-cache.json`` in the report maps a key per
study (a hash of its files' relative paths, sizes and modification times, the model's name, version and
run id, and the report format) to its row and files; a study whose key is unchanged is copied from the
previous report instead of being recomputed, and the summary says how many were.

PACS (:mod:`medvision.reporting.pacs`): ``config.input`` may be a PACS address (``dicomweb+http(s)://...`` or
``dimse://AET@host:port``) with ``config.query``: the studies found are retrieved into the PACS cache (default
``<out>.pacs-cache``, beside the report) and exactly those study folders are reported, as a folder holding the
same files would be (``source`` names the address and the path below the cache); a study that cannot be
retrieved is a failed row (``config.pacs_workers`` studies are retrieved at once). With ``config.store`` each
study's SR (and SC) is sent from the temporary folder as soon as its row is written, by a background thread
while the next studies are computed; the rows are written out once every send is done, and a row's ``stored``
says ``ok``, ``failed: <reason>`` or ``not_applicable``;
``medvision report --resend OUT --store ADDRESS`` sends what was not stored.

Privacy: rows, pages and SR show the identifiers as the source does (the report stays with the
radiologist). With ``deidentify.enabled`` they are replaced consistently (:mod:`medvision.reporting.deid`)
everywhere, file names, paths and the cache included; the salt is never written. Nothing goes to
MLflow.

Example:
    >>> from medvision.config import DeidentifyConfig, ReportConfig
    >>> summary = run_report(ReportConfig(input="incoming/", out="report/"))  # doctest: +SKIP
    >>> print(format_summary(summary))  # doctest: +SKIP
    report: 120 studies read, 14 flagged, 2 failed, 3 not applicable, 0 reused, 95.2 s -> report/index.html
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from medvision.config import DeidentifyConfig, ReportConfig
from medvision.errors import InputError
from medvision.pacs import RetryPolicy
from medvision.reporting.cache import CACHE_NAME, REPORT_FORMAT, _cache_key, _load_cache, _reuse, _save_cache
from medvision.reporting.deid import Deidentifier, DeidOptions
from medvision.reporting.discover import CLASSIFICATION, DETECTION, FAILED, NOT_APPLICABLE, Discovery, discover
from medvision.reporting.models import (
    CLASSIFIER_NAME,
    DETECTOR_NAME,
    LoadedClassifier,
    VolumePredictor,
    _classifier_model,
    _detector_model,
)
from medvision.reporting.output import _check_out, _clean_stale, _is_report, _move_into_place, _new_tmp
from medvision.reporting.pacs import (
    PacsFetch,
    ReportSender,
    fetch_studies,
    is_pacs_address,
    not_stored,
    open_store,
    pacs_cache_dir,
)
from medvision.reporting.radiographs import _classify
from medvision.reporting.rows import ROW_KEYS, _base_row, _failed, _order, _Run, _write_results
from medvision.reporting.volumes import _detect

__all__ = [
    "CACHE_NAME",
    "CLASSIFIER_NAME",
    "DETECTOR_NAME",
    "REPORT_FORMAT",
    "ROW_KEYS",
    "LoadedClassifier",
    "ReportConfig",
    "VolumePredictor",
    "format_summary",
    "run_report",
]


def _progress_bar(
    total: int | None, enabled: bool, *, desc: str = "report", unit: str = " scans", leave: bool = True
) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total, desc=desc, unit=unit, disable=not enabled, file=sys.stderr, dynamic_ncols=True, leave=leave
    )


def run_report(
    config: ReportConfig,
    *,
    classifier: LoadedClassifier | tuple[Any, Mapping[str, Any]] | None = None,
    detector: VolumePredictor | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Turn a folder of studies into a report folder (see the module docstring).

    Args:
        config: what to report and how (:class:`~medvision.config.ReportConfig`, validated when it was built):
            ``input`` (a folder or a PACS address, with ``query``, ``calling_aet``, ``ca_bundle``, ``credentials``,
            ``pacs_cache``), ``store`` (with ``store_attempts`` and its backoff), ``out``, ``classifier`` and
            ``detector`` (registered model URIs), ``tracking_uri``, ``device``, ``batch_size``, ``image_format``,
            ``secondary_capture``, ``title`` and ``deidentify``
            (enabled, the PS3.15 options, the salt).
        classifier: a ready :class:`LoadedClassifier` (or ``(module, metadata)``) instead of
            ``config.classifier`` (tests, notebooks, benchmarks).
        detector: a ready :class:`VolumePredictor` instead of ``config.detector``.
        progress: show a progress bar with ETA on stderr.

    Returns:
        The summary: ``studies_read``, ``studies``, ``flagged``, ``failed``, ``not_applicable``,
        ``reused``, ``stored_failed`` (rows whose objects the PACS of ``store`` did not confirm), ``seconds``,
        ``timings`` (seconds in ``load``, ``network``, ``gradcam``, ``write``, ``render``), ``out_dir``, ``index``,
        ``pdf``, ``deidentified``.

    Raises:
        InputError: ``config.input`` is not a folder, or ``config.out`` is something else than a report.
        PacsError: the PACS search failed (nothing is written; a study that cannot be retrieved is a failed row).
        ConfigError: a PACS cache inside ``config.out``, or a credentials file that cannot be used.
        ModelFormatError: a registered model that medvision refuses to load (the old pickle format, or weights
            that fail their check); no report is written and the previous one is unchanged.
        TrackingError: a model is needed but the local tracking store does not exist (nothing is created; no
            report is written).
        KeyboardInterrupt: after cleaning up; the previous report is unchanged.

    A bad ``device``, ``batch_size`` or ``image_format`` is a :class:`~medvision.errors.ConfigError` raised
    when the :class:`~medvision.config.ReportConfig` is built, before anything runs.
    """
    started = time.perf_counter()
    out = config.out
    fetch: PacsFetch | None = None
    if is_pacs_address(config.input):
        root = pacs_cache_dir(config.pacs_cache, out)
    else:
        root = Path(config.input)
        if not root.is_dir():
            what = "no such folder" if not root.exists() else "is not a folder"
            raise InputError(root, what, "pass the folder that holds the studies (--input DIR)")
    _check_out(root, out)
    # The store is opened (address, credentials) before any study is retrieved or computed.
    store = (
        open_store(config.store, credentials=config.credentials, calling_aet=config.calling_aet,
                   ca_bundle=config.ca_bundle, retry=RetryPolicy(config.store_attempts, config.store_base_delay,
                                                                 config.store_max_delay))
        if config.store else None
    )  # fmt: skip
    if is_pacs_address(config.input):
        # Retrieved before the temporary folder exists: a failed search leaves nothing behind.
        fetch = fetch_studies(config, root, progress_bar=lambda total, **kw: _progress_bar(total, progress, **kw))
    out.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(out)

    tmp = _new_tmp(out)
    sender = ReportSender(store, tmp, background=True) if store is not None else None
    run = _Run(
        root=root,
        tmp=tmp,
        old_out=out if _is_report(out) else None,
        deid=_deidentifier(config.deidentify),
        device=config.device,
        batch_size=config.batch_size,
        suffix=".jpg" if config.image_format == "jpeg" else ".png",
        secondary_capture=config.secondary_capture,
        source_prefix=fetch.prefix if fetch is not None else None,
        # Each study's SR and SC go from the temporary folder (complete files) as soon as its row is written.
        deliver=sender,
    )
    from medvision.reporting.printer import Printer

    # Chromium starts now, while the studies go through the network; report.pdf is printed with it at the end.
    run.printer = Printer.start()
    try:
        models = (classifier, config.classifier, detector, config.detector, config.tracking_uri)
        summary = _work(run, out, models, progress=progress, title=config.title, started=started, fetch=fetch)
        _move_into_place(tmp, out)
    except KeyboardInterrupt:
        if sender is not None:
            sender.close()  # before its files go
        shutil.rmtree(tmp, ignore_errors=True)
        kept = f"; the previous report in {out} is unchanged" if run.old_out is not None else ""
        print(f"\ninterrupted: no report written, temporary files removed{kept}", file=sys.stderr, flush=True)
        raise
    except BaseException:
        if sender is not None:
            sender.close()  # before its files go
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        run.printer.close()
        if sender is not None:
            sender.close()
    return summary


def _deidentifier(deid: DeidentifyConfig) -> Deidentifier | None:
    """The run's de-identifier (``None`` when the report is not de-identified)."""
    if not deid.enabled:
        return None
    options = DeidOptions(
        retain_dates=deid.retain_dates,
        clean_descriptors=deid.clean_descriptors,
        retain_device_identity=deid.retain_device_identity,
    )
    return Deidentifier(deid.salt.get_secret_value() if deid.salt is not None else None, options)


def _work(
    run: _Run, out: Path, models: tuple, *, progress: bool, title: str, started: float, fetch: PacsFetch | None = None
) -> dict[str, Any]:
    from medvision.reporting.render import render_report

    classifier, classifier_uri, detector, detector_uri, tracking_uri = models

    # A PACS input: the cache's folders of the studies retrieved now, nothing else that the cache holds.
    excluded = fetch.excluded() if fetch is not None else []
    # tqdm writes the count and the unit together: " files" reads "120 files [00:01, 95 files/s]", not "120file".
    reading = _progress_bar(None, progress, desc="reading headers", unit=" files", leave=False)
    try:
        found: Discovery = discover(
            run.root, exclude=[out, run.tmp, *excluded], progress=lambda n: reading.update(n - reading.n)
        )
    finally:
        reading.close()
    for study in fetch.failure_studies() if fetch is not None else []:
        run.add(_base_row(study, run.key_for(study)), study)  # never silently lost
    run.scratch = run.tmp / ".scratch"
    radiographs, volumes = found.by_route(CLASSIFICATION), found.by_route(DETECTION)
    run.cache_in = _load_cache(out) if run.old_out is not None else {}
    cls_model = _classifier_model(classifier, classifier_uri, tracking_uri, run.device, bool(radiographs))
    det_model = _detector_model(detector, detector_uri, tracking_uri, run.device, bool(volumes))

    # Studies unchanged since the previous report are copied from it.
    todo_cls, todo_det = [], []
    for studies, model, todo in ((radiographs, cls_model, todo_cls), (volumes, det_model, todo_det)):
        for study in studies:
            rows = _reuse(run, _cache_key(run, study, model))
            if rows is not None:
                for row in rows:
                    run.rows.append(row)
                    run.send(row)  # a reused SR has the same UIDs: the PACS updates it, never holds a copy
            else:
                todo.append(study)

    # Weights are loaded before the progress bar starts, so that its ETA measures the studies.
    if todo_cls:
        cls_model.get()
    if todo_det:
        det_model.get()
    total = sum(len(s.paths) for s in todo_cls) + len(todo_det)
    bar = _progress_bar(total, progress)
    try:
        if todo_cls:
            if cls_model.value is None:
                for study in todo_cls:
                    row = _base_row(study, run.key_for(study))
                    row["model"] = dict(cls_model.provenance) or None
                    run.add(_failed(row, str(cls_model.error)), study)
                bar.update(sum(len(s.paths) for s in todo_cls))
            else:
                _classify(run, todo_cls, cls_model, bar)
        if todo_det:
            if det_model.value is None:
                for study in todo_det:
                    row = _base_row(study, run.key_for(study))
                    row["model"] = dict(det_model.provenance) or None
                    run.add(_failed(row, str(det_model.error)), study)
                bar.update(len(todo_det))
            else:
                for study in todo_det:
                    _detect(run, study, det_model)
                    bar.update(1)
    finally:
        bar.close()
    for study in found.studies:
        if study.route in (FAILED, NOT_APPLICABLE):
            run.add(_base_row(study, run.key_for(study)), study)
    if run.scratch.exists():
        shutil.rmtree(run.scratch, ignore_errors=True)
    run.sent()  # every row's stored final before the rows are written

    run.rows.sort(key=_order)
    ok = [r for r in run.rows if r.get("status") == "ok"]
    summary: dict[str, Any] = {
        "studies_read": len(run.rows),
        "studies": len(ok),
        "flagged": sum(1 for r in ok if r.get("flagged") is True),
        "failed": sum(1 for r in run.rows if r.get("status") == FAILED),
        "not_applicable": sum(1 for r in run.rows if r.get("status") == NOT_APPLICABLE),
        "reused": run.reused,
        "deidentified": run.deid is not None,
        "input": None if run.deid is not None else (str(fetch.address) if fetch is not None else str(run.root)),
        "stored_failed": not_stored(run.rows),
    }
    if run.deid is not None:
        summary["deidentification"] = run.deid.options.describe()
        summary["not_shareable"] = sum(1 for r in run.rows if r.get("shareable") is False)
    generated_at = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    start = time.perf_counter()
    shown = {
        "studies": summary["studies_read"],
        "flagged": summary["flagged"],
        "failed": summary["failed"],
        "not_applicable": summary["not_applicable"],
        "reused_from_previous_report": run.reused,
        "deidentified": summary.get("deidentification") or False,
        **({"not_shareable": summary["not_shareable"]} if run.deid is not None else {}),
        **({"input": summary["input"]} if summary["input"] else {}),
    }
    render_report(run.rows, run.tmp, title=title, generated_at=generated_at, summary=shown, printer=run.printer)
    run.tick("render", start)
    summary["timings"] = {k: round(v, 3) for k, v in run.timings.items()}
    summary["seconds"] = round(time.perf_counter() - started, 2)
    # A PDF that could not be printed is said in index.html (with the fix) and here: never a path to nothing.
    printed = (run.tmp / "report.pdf").exists()
    summary.update(out_dir=str(out), index=str(out / "index.html"), pdf=str(out / "report.pdf") if printed else None)
    report = {"title": title, "generated_at": generated_at, "format": REPORT_FORMAT}
    _write_results(run, summary, report)
    _save_cache(run)
    return summary


def format_summary(summary: Mapping[str, Any]) -> str:
    """The one-line summary printed at the end of a run.

    Example:
        >>> format_summary({"studies_read": 3, "flagged": 1, "failed": 1, "not_applicable": 0, "reused": 0,
        ...                 "seconds": 2.5, "index": "out/index.html"})
        'report: 3 studies read, 1 flagged, 1 failed, 0 not applicable, 2.5 s -> out/index.html'
    """
    reused = int(summary.get("reused") or 0)
    read = int(summary.get("studies_read") or 0)
    parts = [
        f"{read} {'study' if read == 1 else 'studies'} read",
        f"{summary.get('flagged', 0)} flagged",
        f"{summary.get('failed', 0)} failed",
        f"{summary.get('not_applicable', 0)} not applicable",
    ]
    if reused:
        parts.append(f"{reused} {'study' if reused == 1 else 'studies'} reused from the previous report")
    if "pdf" in summary and summary["pdf"] is None:
        parts.append("no report.pdf (index.html says why)")
    unsent = int(summary.get("stored_failed") or 0)
    if unsent:
        parts.append(f"{unsent} not stored (medvision report --resend {summary.get('out_dir')})")
    return f"report: {', '.join(parts)}, {float(summary.get('seconds') or 0):.1f} s -> {summary.get('index')}"
