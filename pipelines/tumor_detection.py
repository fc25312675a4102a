"""Train, evaluate and register the tumour detector: a thin script over medvision.

Usage:
    python pipelines/tumor_detection.py configs/tumor_detection_demo.yaml [--set key=value ...] [--resume]
    python pipelines/tumor_detection.py configs/tumor_detection_resnet50.yaml \\
        --set data.format=decathlon --set data.path=/data/Task01_BrainTumour/dataset.json

It is ``medvision train CONFIG ...`` (same options, output and exit codes; ``--help`` lists them); the
config's ``task: detection`` selects the detector.
"""

from __future__ import annotations

import sys

from medvision.cli import main as medvision


def main() -> None:
    medvision(["train", *sys.argv[1:]])


if __name__ == "__main__":
    main()
