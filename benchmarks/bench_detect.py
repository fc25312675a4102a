"""Seconds per volume for tumour-detector inference on the demo MRI volumes, split by stage.

Stages: loading (reader: NIfTI or DICOM series), preprocessing (RAS, spacing, intensity: the MONAI chain
after the load), the network (2.5D RetinaNet over every non-empty axial slice), merging (slice boxes -> 3D
boxes, 3D NMS). The slowest stage is marked. A benchmark, not a test.

Usage:
    python benchmarks/bench_detect.py [--model models:/tumor-detector@candidate] [--data data/demo/mri]
        [--volumes 8] [--device cpu|cuda] [--amp auto|off|bf16] [--backbone resnet18]

Without a registered model (or with --untrained) a freshly initialised detector of --backbone is timed: the
network's cost does not depend on its weights, only the number of boxes to merge does.

On CUDA the model and the slice stacks are on the GPU, the network runs in channels_last and, with --amp
auto (default) or bf16, under bf16 autocast (boxes and scores stay float32), as in training; the GPU is
synchronised before each clock reading, so that the split is true. On the CPU: float32, NCHW, as before.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models:/tumor-detector@candidate")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--data", default="data/demo/mri")
    parser.add_argument("--volumes", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--amp", default="auto", choices=("auto", "off", "bf16"), help="bf16 autocast on CUDA (auto, bf16) or not"
    )
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--untrained", action="store_true")
    parser.add_argument("--dicom", action="store_true", help="read the DICOM series instead of the NIfTI files")
    args = parser.parse_args()

    from medvision.constants import BOX_LABELS, BOXES, IMAGE
    from medvision.engine.detect import DetectorBundle, detect_slices, load_detector, merge_slices

    device = torch.device(args.device)
    cuda = device.type == "cuda"

    def clock() -> float:
        if cuda:
            torch.cuda.synchronize(device)  # queued GPU work belongs to the stage that queued it
        return time.perf_counter()

    bundle = None
    if not args.untrained:
        try:
            bundle = load_detector(args.model, device=device, tracking_uri=args.tracking_uri)
            print(f"model: {bundle.uri} ({bundle.metadata.backbone})")
        except Exception as exc:  # no registered model yet: time an untrained one
            print(f"no registered model ({exc}); timing an untrained {args.backbone}")
    if bundle is None:
        from medvision.models.detector import create_detector

        model = create_detector(args.backbone, weights="none", slice_shape=(117, 99)).to(device).eval()
        from medvision.models.contract import DetectorMetadata

        meta = DetectorMetadata(
            task="detection",
            backbone=args.backbone,
            intended_use="benchmark only",
            spacing=(2.0, 2.0, 2.0),
            modality="MR",
            threshold=0.5,
        )
        bundle = DetectorBundle(model, meta, "untrained", device)
    if cuda:
        bundle.model.to_channels_last()  # weights and batched slices in NHWC, as the detector trains on CUDA

    root = Path(args.data)
    if args.dicom:
        paths = sorted(p for p in (root / "dicom").iterdir() if p.is_dir())[: args.volumes]
    else:
        paths = sorted((root / "imagesTr").glob("*.nii.gz"))[: args.volumes]
    if not paths:
        raise SystemExit(f"no volumes under {root}; run `medvision demo-data` first")
    chain = bundle.transforms()
    load, rest = chain.transforms[0], chain.transforms[1:]
    from monai.transforms import Compose

    rest = Compose(rest)
    merge = bundle.merge
    times: dict[str, list[float]] = {"load": [], "preprocess": [], "network": [], "merge": []}
    n_slices = []
    for i, path in enumerate([paths[0], *paths]):  # the first volume warms up and is not counted
        sample = {IMAGE: str(path), BOXES: np.zeros((0, 6), np.float32), BOX_LABELS: np.zeros(0, np.int64)}
        t0 = clock()
        data = load(sample)
        t1 = clock()
        data = rest(data)
        t2 = clock()
        per_slice = detect_slices(bundle.model, data[IMAGE], device=device, amp=args.amp)
        t3 = clock()
        merge_slices(per_slice, **merge)
        t4 = clock()
        if i == 0:
            continue
        for key, value in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            times[key].append(value)
        n_slices.append(len(per_slice))
    total = sum(statistics.mean(v) for v in times.values())
    slowest = max(times, key=lambda k: statistics.mean(times[k]))
    if cuda:
        precision = "bf16 autocast" if args.amp in ("auto", "bf16") else "fp32"
        where = f"device cuda ({torch.cuda.get_device_name(device)}), {precision}, channels_last"
    else:
        where = "device cpu, fp32"
    print(
        f"{len(paths)} volumes ({'DICOM' if args.dicom else 'NIfTI'}), {statistics.mean(n_slices):.0f} slices each,"
        f" {where}, torch threads {torch.get_num_threads()}"
    )
    print(f"{'stage':<12}{'s/volume':>10}{'share':>8}")
    for key, values in times.items():
        mean = statistics.mean(values)
        print(f"{key:<12}{mean:>10.3f}{mean / total:>8.0%}{'  <- slowest' if key == slowest else ''}")
    print(f"{'total':<12}{total:>10.3f}   ({60 / total:.1f} volumes per minute)")


if __name__ == "__main__":
    main()
