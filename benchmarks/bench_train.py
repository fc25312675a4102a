"""Training throughput: the model alone on in-memory tensors vs. the whole step fed from DICOM files.

Prints images/s for (a) the network on tensors already in memory, (b) the full training step fed by the
real data pipeline (DICOM decode -> MONAI transforms -> PersistentDataset of uint16 fixed-point images -> DataLoader ->
normalisation on the device), first epoch (cold cache) and later epochs (cached), and the ratio (b)/(a).
On CUDA it uses bf16 autocast, channels_last and pinned batches, as training does. Run: ``make bench-train`` or
``.venv/bin/python benchmarks/bench_train.py --backbone densenet121 --batch-size 32 --steps 6``.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_io import write_radiograph  # noqa: E402

from medvision.data import classification_transforms, make_dataset, transform_digest  # noqa: E402
from medvision.data.augment import BatchAugment, normalise_batch  # noqa: E402
from medvision.models import create_model  # noqa: E402


def _step_fn(model: nn.Module, device: torch.device, bf16: bool):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = nn.BCEWithLogitsLoss()

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        images = images.to(device, non_blocking=True)
        if device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        labels = labels.to(device, dtype=torch.float32).reshape(-1, 1)
        opt.zero_grad(set_to_none=True)
        cast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with cast:
            out = model(images)
        loss_fn(out.float(), labels).backward()
        opt.step()

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4, help="batches per measured epoch")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--rows", type=int, default=2500)
    parser.add_argument("--cols", type=int, default=2048)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--per-sample-augment",
        action="store_true",
        help="MONAI per-sample random transforms in the workers instead of batched on the device",
    )
    parser.add_argument("--unique", type=int, default=16, help="distinct radiographs written; the rest are copies")
    args = parser.parse_args()
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    bf16 = device.type == "cuda"
    model = create_model(args.backbone, weights="none", in_channels=1, num_classes=1).to(device).train()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    step = _step_fn(model, device, bf16)
    n = args.batch_size * args.steps

    # (a) the network alone
    x = torch.randn(args.batch_size, 1, args.image_size, args.image_size)
    y = torch.randint(0, 2, (args.batch_size,))
    for _ in range(3):  # warm-up: allocator, cuDNN autotuning
        step(x, y)
    _sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step(x, y)
    _sync(device)
    model_only = n / (time.perf_counter() - start)

    # (b) the real pipeline from DICOM files
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        items = []
        for i in range(n):
            path = Path(tmp) / f"cxr{i:04d}.dcm"
            if i < args.unique:
                write_radiograph(path, rng, rows=args.rows, cols=args.cols)
            else:  # copies decode exactly like the originals and save minutes of writing
                shutil.copyfile(Path(tmp) / f"cxr{i % args.unique:04d}.dcm", path)
            items.append({"image": str(path), "label": int(i % 2)})
        pre = model.preprocessing
        mean, std = float(np.mean(pre["mean"])), float(np.mean(pre["std"]))
        # As training does by default: deterministic, cached loading of uint16 fixed-point [0, 1] images; normalisation
        # and augmentation batched on the device.
        tf = classification_transforms(
            image_size=args.image_size,
            keep_aspect=True,
            mean=mean,
            std=std,
            train=args.per_sample_augment,
            normalise_on_device=True,
        )
        augment = None if args.per_sample_augment else BatchAugment(std=std)
        aug_generator = torch.Generator(device=device).manual_seed(0)
        digest = transform_digest(image_size=args.image_size, keep_aspect=True, mean=mean, std=std)
        ds = make_dataset(items, tf, cache_dir=Path(tmp) / "cache", settings_digest=digest)
        loader = DataLoader(
            ds,
            batch_size=args.batch_size,
            shuffle=True,
            num_workers=args.workers,
            persistent_workers=args.workers > 0,
            pin_memory=device.type == "cuda",
        )
        rates = []
        for _epoch in range(3):
            _sync(device)
            start = time.perf_counter()
            for batch in loader:
                images = normalise_batch(batch["image"].to(device, non_blocking=True), mean, std)
                if augment is not None:
                    images = augment(images, aug_generator)
                step(images, torch.as_tensor(batch["label"]))
            _sync(device)
            rates.append(n / (time.perf_counter() - start))

    print(
        f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
        f"{args.backbone}, {args.image_size} px, batch {args.batch_size}, {n} images of {args.cols}x{args.rows} "
        f"16-bit DICOM, workers {args.workers}, {'bf16+channels_last' if bf16 else 'fp32'}, augmentation "
        f"{'per sample (MONAI, workers)' if args.per_sample_augment else 'batched on the device'}"
    )
    print(f"{'(a) model alone, tensors in memory':<52}{model_only:>10.1f} img/s")
    print(f"{'(b) full step from DICOM, first epoch (cold cache)':<52}{rates[0]:>10.1f} img/s")
    print(f"{'(b) full step, cached epochs':<52}{np.mean(rates[1:]):>10.1f} img/s")
    print(f"ratio (b cached)/(a): {np.mean(rates[1:]) / model_only:.2f}   (b cold)/(a): {rates[0] / model_only:.2f}")


if __name__ == "__main__":
    main()
