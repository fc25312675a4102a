"""DICOM SR per study: build + write, the highdicom reference path against the fast path, side by side.

For each demo radiograph (a one-image study) it builds the SR with
:func:`medvision.reporting.sr._classification_sr_reference` (every part by highdicom's constructors) and
with :func:`medvision.reporting.sr.classification_sr` (cached highdicom parts, the same bytes), writes it
with :func:`medvision.reporting.sr.write_sr` into a temporary folder, and prints ms per study for the
build, the write and both, for each path, and the ratio reference / fast. The two paths alternate per
round so that load from other work on the machine hits both alike; the median round is reported. The
first study of the fast path (which fills its caches) is not timed: the report builds hundreds.

Radiographs come from ``--data`` (a demo data set, default ``data/demo``), written there when missing.
``--check`` also compares the written bytes of both paths (with highdicom's clock fixed).

Usage:
    .venv/bin/python benchmarks/bench_sr.py
    .venv/bin/python benchmarks/bench_sr.py --studies 48 --rounds 5 --check
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def ensure_demo(data: Path, n: int) -> list[Path]:
    files = sorted((data / "cxr" / "dicom").glob("*/*/*.dcm"))
    if len(files) < n:
        from medvision.demo import write_demo_data

        print(f"writing demo radiographs to {data} ...", file=sys.stderr)
        write_demo_data(data, 0, n_cxr_patients=max(20, n // 2 + 1), n_mri=0, n_mri_dicom=0)
        files = sorted((data / "cxr" / "dicom").glob("*/*/*.dcm"))
    return files[:n]


MODEL = {"name": "pneumonia-classifier", "version": 3, "run_id": "0123456789abcdef"}


def _time(build, headers, out: Path) -> tuple[float, float]:  # noqa: ANN001 - a classification_sr
    from medvision.reporting.sr import write_sr

    built = written = 0.0
    for n, header in enumerate(headers):
        t0 = time.perf_counter()
        sr = build([header], [(header, (n % 97) / 97, n % 2 == 0)], model=MODEL, threshold=0.42)
        t1 = time.perf_counter()
        write_sr(sr, out / f"{n}.dcm")
        built, written = built + t1 - t0, written + time.perf_counter() - t1
    return built / len(headers) * 1000, written / len(headers) * 1000


def _check(headers) -> int:  # noqa: ANN001
    """Studies whose written bytes differ between the paths (highdicom's clock fixed)."""
    import datetime
    import io
    import types

    import highdicom.base
    import highdicom.base_content
    import highdicom.sr.sop

    from medvision.reporting.sr import _classification_sr_reference, classification_sr

    class Frozen(datetime.datetime):
        @classmethod
        def now(cls, tz=None):  # noqa: ANN001, ANN206
            return cls(2026, 1, 2, 3, 4, 5, 678901, tzinfo=tz)

    clock = types.SimpleNamespace(datetime=Frozen, date=datetime.date, time=datetime.time, timezone=datetime.timezone)
    modules = (highdicom.base, highdicom.base_content, highdicom.sr.sop)
    saved = [m.datetime for m in modules]
    for m in modules:
        m.datetime = clock
    try:
        differ = 0
        for n, header in enumerate(headers):
            args = ([header], [(header, (n % 97) / 97, n % 2 == 0)])
            encoded = []
            for build in (_classification_sr_reference, classification_sr):
                buffer = io.BytesIO()
                build(*args, model=MODEL, threshold=0.42).save_as(buffer, enforce_file_format=True)
                encoded.append(buffer.getvalue())
            differ += encoded[0] != encoded[1]
        return differ
    finally:
        for m, value in zip(modules, saved, strict=True):
            m.datetime = value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per path (the median is reported)")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "demo")
    parser.add_argument("--check", action="store_true", help="also compare the written bytes of both paths")
    args = parser.parse_args()

    import pydicom

    from medvision.reporting.sr import _classification_sr_reference, classification_sr

    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in ensure_demo(args.data, args.studies)]
    paths = {"reference (highdicom)": _classification_sr_reference, "fast (cached parts)": classification_sr}
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in paths}
    with tempfile.TemporaryDirectory() as tmp:
        for build in paths.values():  # warm-up: imports, the fast path's caches
            _time(build, headers[:1], Path(tmp))
        for _ in range(args.rounds):
            for name, build in paths.items():
                results[name].append(_time(build, headers, Path(tmp) / name.split()[0]))
    print(f"SR per study, {len(headers)} one-image radiograph studies, median of {args.rounds} rounds")
    print(f"{'path':24s} {'build ms':>9s} {'write ms':>9s} {'total ms':>9s}")
    totals = {}
    for name, rounds in results.items():
        build = statistics.median(b for b, _ in rounds)
        write = statistics.median(w for _, w in rounds)
        totals[name] = statistics.median(b + w for b, w in rounds)
        print(f"{name:24s} {build:9.2f} {write:9.2f} {totals[name]:9.2f}")
    builds = [statistics.median(b for b, _ in rounds) for rounds in results.values()]
    reference, fast = totals.values()
    print(f"ratio reference / fast: build {builds[0] / builds[1]:.2f}x, build + write {reference / fast:.2f}x")
    if args.check:
        print(f"written bytes differ (clock fixed): {_check(headers)} of {len(headers)} studies")


if __name__ == "__main__":
    main()
