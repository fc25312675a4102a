"""Train, evaluate and register the tumour detector: a thin script over medvision.

Usage:
    python pipelines/tumor_detection.py configs/tumor_detection_demo.yaml [--set key=value ...] [--resume]
    python pipelines/tumor_detection.py configs/tumor_detection_resnet50.yaml \\
        --set data.format=decathlon --set data.path=/data/Task01_BrainTumour/dataset.json
"""

from __future__ import annotations

import argparse

from medvision.config import load_config
from medvision.engine.detection import train_detection


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    train_detection(load_config(args.config, args.overrides), resume=args.resume)


if __name__ == "__main__":
    main()
