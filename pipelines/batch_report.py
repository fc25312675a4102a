"""Write the radiologist's batch report of a folder of studies: a thin script over medvision.

Usage:
    python pipelines/batch_report.py --input studies/ --out report/ [--classifier URI] [--detector URI]
        [--device cpu|cuda] [--batch-size N] [--deidentify] [--no-progress] [--tracking-uri URI]
        [--image-format png|jpeg]

The same as ``medvision report``; see :func:`medvision.reporting.batch.run_report`.
"""

from __future__ import annotations

import argparse
import os
import sys

from medvision.errors import MedvisionError
from medvision.reporting.batch import format_summary, run_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--classifier")
    parser.add_argument("--detector")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--deidentify", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--tracking-uri")
    parser.add_argument("--image-format", choices=("png", "jpeg"), default="png")
    args = parser.parse_args()
    try:
        summary = run_report(
            args.input,
            args.out,
            classifier_uri=args.classifier,
            detector_uri=args.detector,
            device=args.device,
            batch_size=args.batch_size,
            deidentify=args.deidentify,
            progress=not args.no_progress,
            tracking_uri=args.tracking_uri,
            deid_salt=os.environ.get("MEDVISION_REPORT_SALT") or None,
            image_format=args.image_format,
        )
    except MedvisionError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    print(format_summary(summary))
    print(f"report: {summary['index']}")


if __name__ == "__main__":
    main()
