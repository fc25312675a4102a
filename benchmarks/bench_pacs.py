"""Batch-report throughput through a real PACS against the folder report, on the same studies, in one run.

Measured side by side in one process, on the same demo radiographs (one image per study) and the same
classifier, loaded once before anything is timed:

(a) **folder**: :func:`medvision.reporting.batch.run_report` with ``input`` a folder holding the studies;
(b) **DICOMweb**: a local Orthanc (:class:`medvision.pacs.orthanc.Orthanc`: Debian's Orthanc as a child process
    on free loopback ports, HTTP basic authentication, the DICOMweb plugin) holding the same studies, uploaded
    through its REST API (not timed); then ``run_report`` with ``input=dicomweb+http://127.0.0.1:<port>/dicom-web``,
    a ``query`` selecting exactly those studies (their StudyDate range; Orthanc holds nothing else), ``store``
    the same address (each study's SR and secondary capture go back by STOW-RS) and a fresh, cold PACS cache;
(c) **DIMSE** (``--dimse``, on by default): the same through ``dimse://ORTHANC@127.0.0.1:<port>`` (C-FIND,
    C-GET, C-STORE back), medvision's AE title ``MEDVISION`` registered in Orthanc as a modality.

Every report is written as ``make demo`` writes it: JPEG pictures and secondary captures. Timed: the whole
``run_report`` call (wall clock), for the PACS paths search + retrieve + report + store. The repeats are
interleaved (folder, DICOMweb, DIMSE, folder, ...; ``--repeats``), each into a new report folder (nothing
reused) with a new PACS cache, and the median is printed, after one untimed warm-up of each path on one study
(imports, first forward pass). The results medvision filed into Orthanc are deleted between runs (not timed),
so that each run finds the same studies as the first.

It prints studies per minute for each path, the ratio PACS / folder, and the seconds of each run by part:
``search + retrieve`` (``fetch_studies``, ``--pacs-workers`` studies at once) and ``store`` (``ReportSender``,
one call per study, on the report's background thread while the next studies are computed: not on the
critical path, so not in the sum) are timed by wrapping those two functions in this process; the report's
own parts come from the summary's ``timings``; ``other`` is the rest (discovery, results files, waiting for
the last stores, the move into place). A run fails the benchmark (exit status 1, with the reason) when a
study failed, a study is missing, or a row of a PACS path is not ``stored == "ok"`` in ``<out>/results.json``.

The project's target: the DICOMweb path reaches at least 0.8x the folder report's studies per minute.

The classifier is ``--model`` in ``--tracking-uri`` (default ``models:/pneumonia-classifier@candidate`` in
``./mlflow.db``); with ``--train`` (or when none is registered there) a one-epoch demo classifier is trained
into a temporary MLflow store first (benchmarks/bench_report.py). Radiographs come from ``--data`` (a demo data
set, default ``data/demo``), written there when missing.

Needs Debian's ``orthanc`` and ``orthanc-dicomweb`` (``make system-deps``); without them it exits and says so.

Usage:
    .venv/bin/python benchmarks/bench_pacs.py --studies 24
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_report import ensure_demo, train_classifier  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TARGET = 0.8
CALLING_AET = "MEDVISION"
FOLDER, DICOMWEB, DIMSE = "folder", "dicomweb", "dimse"
LABELS = {
    FOLDER: "(a) folder",
    DICOMWEB: "(b) DICOMweb (QIDO-RS, WADO-RS, STOW-RS)",
    DIMSE: "(c) DIMSE (C-FIND, C-GET, C-STORE)",
}
PARTS = ("search + retrieve", "load", "network+gradcam", "write (overlay, SR, SC)", "render (HTML, PDF)",
         "other (discovery, results)", "store (in the background)", "total")  # fmt: skip

#: Seconds spent in the wrapped PACS functions during the current run.
SPLIT = {"retrieve": 0.0, "store": 0.0}


def timed(part: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn``, adding the seconds of each call to ``SPLIT[part]``."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            SPLIT[part] += time.perf_counter() - start

    return wrapper


def fail(reason: str) -> None:
    print(f"bench_pacs: {reason}", file=sys.stderr)
    sys.exit(1)


def check_run(path: str, summary: dict[str, Any], out: Path, n: int, stored: bool) -> None:
    """Exit non-zero when the run did not report every study (and, with ``stored``, store every row)."""
    if summary["failed"] or summary["studies"] != n or summary["studies_read"] != n:
        rows = json.loads((out / "results.json").read_text(encoding="utf-8"))["rows"]
        reasons = sorted({str(r.get("reason") or r.get("status")) for r in rows if r.get("status") != "ok"})
        fail(
            f"{path}: {summary['studies']} of {n} studies reported, {summary['failed']} failed, "
            f"{summary['studies_read']} rows: {'; '.join(reasons)[:2000]}"
        )
    if stored:
        rows = json.loads((out / "results.json").read_text(encoding="utf-8"))["rows"]
        bad = [f"{r.get('study_key')}: {r.get('stored')}" for r in rows if r.get("stored") != "ok"]
        if bad or len(rows) != n:
            fail(f"{path}: {len(bad)} of {len(rows)} rows not stored: {'; '.join(bad)[:2000]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each path, interleaved; the median")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the issue's figure: 2 CPU cores)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--data", type=Path, default=REPO / "data" / "demo")
    parser.add_argument("--model", default="models:/pneumonia-classifier@candidate")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--train", action="store_true", help="train a one-epoch classifier into a temporary store")
    parser.add_argument("--pacs-workers", type=int, default=4, help="studies retrieved at once (ReportConfig)")
    parser.add_argument("--dimse", action=argparse.BooleanOptionalAction, default=True, help="also time (c) DIMSE")
    args = parser.parse_args()

    from medvision.pacs.orthanc import orthanc_missing

    missing = orthanc_missing()
    if missing:
        sys.exit(f"bench_pacs: cannot start a local Orthanc: {missing}")

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import torch

    torch.set_num_threads(args.threads)
    if hasattr(os, "sched_setaffinity") and args.threads <= (os.cpu_count() or 1):
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: args.threads]))

    import pydicom

    import medvision.reporting.batch as batch
    import medvision.reporting.pacs as report_pacs
    from medvision.config import ReportConfig
    from medvision.engine.classify import load_classifier_bundle
    from medvision.errors import MedvisionError
    from medvision.pacs.orthanc import Orthanc, free_port
    from medvision.pacs.uris import ENV_PASSWORD, ENV_TOKEN, ENV_USER
    from medvision.tracking.registry import model_provenance

    batch.fetch_studies = timed("retrieve", batch.fetch_studies)
    report_pacs.ReportSender.__call__ = timed("store", report_pacs.ReportSender.__call__)

    files = ensure_demo(args.data, args.studies)
    n = len(files)
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    if len({str(h.StudyInstanceUID) for h in headers}) != n:
        fail(f"the first {n} demo radiographs are not {n} different studies")
    dates = sorted(str(h.StudyDate) for h in headers)
    query = f"StudyDate={dates[0]}-{dates[-1]}"  # Orthanc holds these studies only
    paths = [FOLDER, DICOMWEB] + ([DIMSE] if args.dimse else [])

    with tempfile.TemporaryDirectory(prefix="bench-pacs-") as tmp_name:
        tmp = Path(tmp_name)
        tracking, model_uri = args.tracking_uri, args.model
        if not args.train:
            try:
                model_provenance(model_uri, tracking_uri=tracking)
            except MedvisionError as exc:
                print(f"no classifier at {model_uri} ({exc.reason}); training one", file=sys.stderr)
                args.train = True
        if args.train:
            tracking = train_classifier(args.data, tmp / "store")
            model_uri = "models:/pneumonia-classifier@candidate"
        bundle = load_classifier_bundle(model_uri, tracking_uri=tracking)

        # The folder input: a copy of the studies, one folder each (files, as the PACS cache will hold).
        inp = tmp / "studies"
        for i, path in enumerate(files):
            (inp / f"S{i:04d}").mkdir(parents=True)
            shutil.copy2(path, inp / f"S{i:04d}" / path.name)
        warm_inp = tmp / "warm-studies"
        shutil.copytree(inp / "S0000", warm_inp / "S0000")

        server = Orthanc(tmp / "orthanc", modalities={"medvision": (CALLING_AET, free_port())})
        server.start()
        try:
            server.upload_all(files)
            originals = set(server.rest("GET", "/instances").json())
            if len(originals) != n:
                fail(f"Orthanc holds {len(originals)} instances after uploading {n}")
            version = server.rest("GET", "/system").json().get("Version", "?")
            os.environ.pop(ENV_TOKEN, None)
            os.environ[ENV_USER], os.environ[ENV_PASSWORD] = server.user, server.password
            addresses = {DICOMWEB: str(server.dicomweb), DIMSE: str(server.dimse)}

            def clean_pacs() -> int:
                """Delete what medvision filed into Orthanc (SR, SC); how many instances that was."""
                extra = set(server.rest("GET", "/instances").json()) - originals
                for ident in extra:
                    server.rest("DELETE", f"/instances/{ident}").raise_for_status()
                return len(extra)

            def run(path: str, name: str, studies: int, *, warm: bool = False) -> dict[str, float]:
                out = tmp / "runs" / name / "report"
                common = {"out": out, "device": "cpu", "batch_size": args.batch_size, "image_format": "jpeg",
                          "secondary_capture": True}  # fmt: skip
                if path == FOLDER:
                    config = ReportConfig(input=warm_inp if warm else inp, **common)
                else:
                    config = ReportConfig(
                        input=addresses[path],
                        query=f"StudyInstanceUID={headers[0].StudyInstanceUID}" if warm else query,
                        store=addresses[path], calling_aet=CALLING_AET, pacs_cache=out.parent / "cache",
                        pacs_workers=args.pacs_workers, **common,
                    )  # fmt: skip
                SPLIT.update(retrieve=0.0, store=0.0)
                start = time.perf_counter()
                summary = batch.run_report(config, classifier=bundle, progress=False)
                wall = time.perf_counter() - start
                check_run(f"{name} ({LABELS[path]})", summary, out, studies, stored=path != FOLDER)
                filed = clean_pacs() if path != FOLDER else 0
                if path != FOLDER and filed < studies:
                    fail(f"{name}: Orthanc received {filed} objects back for {studies} studies")
                shutil.rmtree(out.parent)
                t = summary["timings"]
                parts = {
                    "search + retrieve": SPLIT["retrieve"],
                    "load": t["load"],
                    "network+gradcam": t["network"] + t["gradcam"],
                    "write (overlay, SR, SC)": t["write"],
                    "render (HTML, PDF)": t["render"],
                }
                parts["other (discovery, results)"] = max(wall - sum(parts.values()), 0.0)
                parts["store (in the background)"] = SPLIT["store"]
                parts["total"] = wall
                return parts

            print("warming up (one study per path) ...", file=sys.stderr)
            for path in paths:
                run(path, f"warm-{path}", 1, warm=True)
            results: dict[str, list[dict[str, float]]] = {p: [] for p in paths}
            for repeat in range(args.repeats):
                for path in paths:
                    print(f"repeat {repeat + 1}/{args.repeats}: {path} ...", file=sys.stderr)
                    results[path].append(run(path, f"{path}-{repeat}", n))
        finally:
            server.stop(graceful=False)

    median = {p: {part: statistics.median(r[part] for r in results[p]) for part in PARTS} for p in paths}
    rate = {p: n / median[p]["total"] * 60 for p in paths}
    meta = bundle.metadata
    print(
        f"{n} demo radiographs (CR/DX, one per study), {getattr(meta, 'backbone', '?')} at "
        f"{getattr(meta, 'image_size', '?')} px, batch {args.batch_size}, {args.threads} torch threads, cpu, "
        f"jpeg pictures + secondary captures; median of {args.repeats} interleaved repeat(s)"
    )
    print(f"Orthanc {version} with DICOMweb on 127.0.0.1 (HTTP {server.http_port}, DICOM {server.dicom_port}); "
          f"query {query}; {args.pacs_workers} retrieving at once; SR + SC stored back, cold PACS cache each run"
          )  # fmt: skip
    print(f"{'path':44s} {'studies/min':>12s} {'s/study':>9s} {'x folder':>9s}")
    for p in paths:
        print(f"{LABELS[p]:44s} {rate[p]:12.1f} {60 / rate[p]:9.3f} {rate[p] / rate[FOLDER]:9.3f}")
    print("seconds per run by part (median of each part):")
    print(f"  {'part':42s}" + "".join(f" {p:>9s}" for p in paths))
    for part in PARTS:
        print(f"  {part:42s}" + "".join(f" {median[p][part]:9.2f}" for p in paths))
    ratio = rate[DICOMWEB] / rate[FOLDER]
    verdict = "met" if ratio >= TARGET else "NOT met"
    extra = f"; DIMSE / folder: {rate[DIMSE] / rate[FOLDER]:.3f}" if DIMSE in rate else ""
    print(f"ratio DICOMweb / folder: {ratio:.3f} (target >= {TARGET}: {verdict}){extra}")


if __name__ == "__main__":
    main()
