"""Train, evaluate and register the pneumonia classifier: a thin script over medvision.

Usage:
    python pipelines/pneumonia_classification.py configs/pneumonia_demo.yaml [--set key=value ...] [--resume]
    torchrun --nproc_per_node 2 pipelines/pneumonia_classification.py configs/pneumonia_densenet121.yaml
"""

from __future__ import annotations

import argparse

from medvision.config import load_config
from medvision.engine import train_classification


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    train_classification(load_config(args.config, args.overrides), resume=args.resume)


if __name__ == "__main__":
    main()
