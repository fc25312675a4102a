"""Write the radiologist's batch report of a folder of studies: a thin script over medvision.

Usage:
    python pipelines/batch_report.py --input studies/ --out report/ [any option of `medvision report`]

It is ``medvision report`` (same options, output and exit codes; ``--help`` lists them); see
:func:`medvision.reporting.batch.run_report`.
"""

from __future__ import annotations

import sys

from medvision.cli import main as medvision


def main() -> None:
    medvision(["report", *sys.argv[1:]])


if __name__ == "__main__":
    main()
