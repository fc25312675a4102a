"""The long fuzz campaign behind ``make fuzz``: seeded, bounded by time, failures saved for replay.

Usage (from the repository root)::

    .venv/bin/python -m tests.io.fuzz_campaign --seconds 600 --seed 0 --out outputs/fuzz-failures

Prints the outcome counts per mutation class and the first failing inputs; each failing input is copied
under ``--out`` with ``case.json`` (seed, mutation recipe, exception, innermost medvision frame) and a
traceback. ``--findings`` writes the failures grouped by cause as Markdown. Exits 1 when any input
broke the contract (untyped error, bad message, non-finite result, mismatch, memory, hang, crash).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

from tests.io.fuzz_corpus import (
    DEFAULT_MAX_VOXELS,
    FAILURES,
    MIB,
    build_corpus,
    counts_table,
    findings_markdown,
    run_fuzz,
)

LEGEND = """Outcomes that break the contract: **untyped** (an exception that is not a MedvisionError left
`medvision.io.load`), **badmessage** (typed, but `one_line()` does not name the path or says "unexpected"),
**nonfinite** (loaded, but NaN/inf voxels, a non-finite affine or one with a zero column, `spacing_mm` not
equal to the affine's column norms, a shape that disagrees with `spatial_shape`, or a summary that is not
strict JSON), **mismatch** (a series with shuffled InstanceNumber/file names loads differently), **accepted** (a
series with a gap, uneven steps, a duplicate, mixed sizes or samples per pixel or a bad position loaded
instead of being refused), **memory**
(a MemoryError, also one turned into SizeLimitError, under the worker's address-space cap of
256 MiB + 16 x input size, or peak RSS growth over that bound), **hang** (no answer within the time limit),
**crash** (the worker process died). The frame is the innermost medvision frame of the exception.

Rerun: `.venv/bin/python -m tests.io.fuzz_campaign --seconds 120 --seed N [--only nibabel|series|pydicom|deid]`
(`--only` keeps corpus entries whose name contains the text); the short suite test is tests/io/test_fuzz.py.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("FUZZ_SECONDS", 600)))
    parser.add_argument("--seed", type=int, default=int(os.environ.get("FUZZ_SEED", 0)))
    parser.add_argument("--out", type=Path, default=Path("outputs/fuzz-failures"))
    parser.add_argument("--findings", type=Path, default=None, help="also write the grouped findings here")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds one input may take (else: hang)")
    parser.add_argument("--max-voxels", type=int, default=DEFAULT_MAX_VOXELS)
    parser.add_argument("--max-file-mib", type=float, default=8.0, help="skip corpus files larger than this")
    parser.add_argument("--max-cases", type=int, default=None)
    parser.add_argument("--only", default=None, help="keep corpus entries whose name contains this text")
    args = parser.parse_args(argv)

    os.environ.setdefault("MEDVISION_OFFLINE", "1")
    warnings.simplefilter("ignore")  # pydicom warns on every damaged file the mutators write
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    work = Path(tempfile.mkdtemp(prefix="medvision-fuzz-"))
    try:
        started = time.monotonic()
        seeds = build_corpus(
            work,
            max_file_bytes=int(args.max_file_mib * MIB),
            name_filter=(lambda name: args.only in name) if args.only else None,
        )
        kinds = {k: sum(s.kind == k for s in seeds) for k in ("dicom", "nifti", "series")}
        print(f"corpus: {len(seeds)} seeds {kinds}, built in {time.monotonic() - started:.0f} s", flush=True)
        print(f"fuzzing for {args.seconds:.0f} s with seed {args.seed} (max_voxels {args.max_voxels:,})", flush=True)
        result = run_fuzz(
            seeds,
            work,
            run_seed=args.seed,
            seconds=args.seconds,
            max_cases=args.max_cases,
            timeout=args.timeout,
            max_voxels=args.max_voxels,
            failures_dir=args.out,
            progress=lambda line: print(line, flush=True),
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    cases = result.cases
    print()
    print(counts_table(cases))
    if result.skipped:
        print("mutations that did not apply to the bytes drawn (skipped): " + json.dumps(result.skipped))
    failing = [c for c in cases if c.outcome in FAILURES]
    print(f"\n{len(cases)} inputs in {result.seconds:.0f} s; {len(failing)} broke the contract")
    for case in failing[:20]:
        where = result.saved.get(case.index, case.path)
        print(f"  {case.outcome:10s} {case.seed.name} | {case.mutation}: {case.recipe[:100]}")
        print(f"             {case.detail.get('exc_type', '')} {case.detail.get('message', '')[:160]}")
        print(f"             {case.detail.get('frame', '')}  -> {where}")
    header = (
        f"# medvision.io fuzz findings\n\nRun: seed {args.seed}, {result.seconds:.0f} s, {len(cases)} inputs, "
        f"max_voxels {args.max_voxels:,}, written {time.strftime('%Y-%m-%d %H:%M:%S')}.\n\n"
        f"```\n{counts_table(cases)}\n```\n\nSaved failing inputs (with case.json, traceback.txt): {args.out}/\n\n"
        f"{LEGEND}"
    )
    text = findings_markdown(cases, result.saved, header)
    (args.out / "findings.md").write_text(text)
    summary = {o: sum(c.outcome == o for c in cases) for o in ("ok", "typed", *FAILURES)}
    (args.out / "summary.json").write_text(json.dumps({"seed": args.seed, "counts": summary}, indent=2) + "\n")
    if args.findings is not None:
        args.findings.write_text(text)
    print(f"\nfindings: {args.out / 'findings.md'}")
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
