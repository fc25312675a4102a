"""Train, evaluate and register the pneumonia classifier: a thin script over medvision.

Usage:
    python pipelines/pneumonia_classification.py configs/pneumonia_demo.yaml [--set key=value ...] [--resume]
    torchrun --nproc_per_node 2 pipelines/pneumonia_classification.py configs/pneumonia_densenet121.yaml

It is ``medvision train CONFIG ...`` (same options, output and exit codes; ``--help`` lists them).
"""

from __future__ import annotations

import sys

from medvision.cli import main as medvision


def main() -> None:
    medvision(["train", *sys.argv[1:]])


if __name__ == "__main__":
    main()
