"""DICOM radiograph -> model-ready 1x224x224 float tensor: medvision vs MONAI's stock chain.

Both paths run side by side in one process on the same 2048x2500 16-bit radiographs, and the ratio
is printed. Run with ``make bench-io`` (or ``.venv/bin/python benchmarks/bench_io.py --images 8``).

A third row times the input checks alone (the header checks that refuse malformed files: VR scan, Image Pixel
elements and the bytes they promise, rescale, Modality LUT, spacing and orientation, normalised metadata) on
already-read headers, as a share of the whole fast path; a fourth, reading the header through the
bounded file object against pydicom's plain ``open``. The checks may cost at most 5% of the fast path.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from monai.data import PydicomReader
from monai.transforms import Compose, EnsureChannelFirst, LoadImage, Resize, ScaleIntensity
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medvision.io import load_radiograph_tensor
from medvision.io.dicom import (
    _check_vrs,
    _modality_lut_bits,
    _rescale,
    _SizedFile,
    check_pixel_module,
    normalised_meta,
    read_dataset,
)


def write_radiograph(
    path: Path, rng: np.random.Generator, rows: int = 2500, cols: int = 2048, photometric: str = "MONOCHROME2"
) -> None:
    """A 16-bit chest-radiograph-sized DICOM with smooth structure and noise (no identifiers)."""
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    img = 30000 + 12000 * np.sin(xx / 150.0) * np.cos(yy / 210.0) + rng.normal(0, 800, (rows, cols))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID = "DX", "BENCH"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelSpacing = ["0.139", "0.139"]
    ds.RescaleSlope, ds.RescaleIntercept = "1", "0"
    ds.PixelData = img.clip(0, 65535).astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def run_checks(ds, path: Path) -> None:
    """The checks medvision runs on a radiograph's header (their cost, without reading or decoding)."""
    _check_vrs(ds, path)
    check_pixel_module(ds, path)
    _rescale(ds, path)
    _modality_lut_bits(ds, path)
    normalised_meta(ds, path)


def read_header(path: Path, *, bounded: bool) -> None:
    """pydicom's read with the pixel data deferred, through medvision's bounded file or plain ``open``."""
    import pydicom

    with _SizedFile(path) if bounded else open(path, "rb") as fh:
        pydicom.dcmread(fh, defer_size="64 KB")


def time_per_image(fn, paths: list[Path], repeats: int) -> list[float]:
    """Seconds per image for each call, after one warm-up pass."""
    for p in paths[:2]:
        fn(p)
    times = []
    for _ in range(repeats):
        for p in paths:
            start = time.perf_counter()
            fn(p)
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rng = np.random.default_rng(0)
    stock = Compose(
        [
            LoadImage(reader=PydicomReader(), image_only=True),
            EnsureChannelFirst(),
            ScaleIntensity(),
            Resize((args.size, args.size)),
        ]
    )
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / f"cxr{i}.dcm" for i in range(args.images)]
        for p in paths:
            write_radiograph(p, rng)
        ours_t = time_per_image(lambda p: load_radiograph_tensor(p, size=args.size), paths, args.repeats)
        stock_t = time_per_image(lambda p: stock(str(p)), paths, args.repeats)
        headers = {p: read_dataset(p) for p in paths}
        checks_t = time_per_image(lambda p: run_checks(headers[p], p), paths, args.repeats)
        plain_t = time_per_image(lambda p: read_header(p, bounded=False), paths, args.repeats)
        bounded_t = time_per_image(lambda p: read_header(p, bounded=True), paths, args.repeats)
        diff = float(
            (load_radiograph_tensor(paths[0], size=args.size)[0] - torch.as_tensor(stock(str(paths[0])))).abs().max()
        )
    ours_ms, stock_ms = statistics.median(ours_t) * 1e3, statistics.median(stock_t) * 1e3
    checks_ms = statistics.median(checks_t) * 1e3
    plain_ms, bounded_ms = statistics.median(plain_t) * 1e3, statistics.median(bounded_t) * 1e3
    print(
        f"images: {args.images} x {args.repeats}, 2048x2500 16-bit DICOM -> 1x{args.size}x{args.size} float32, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"{'path':<58}{'ms/image (median)':>18}")
    print(f"{'medvision load_radiograph_tensor':<58}{ours_ms:>18.1f}")
    print(f"{'MONAI LoadImage(PydicomReader)+EnsureChannelFirst+Scale+Resize':<58}{stock_ms:>18.1f}")
    print(f"{'input checks alone (already-read header)':<58}{checks_ms:>18.3f}")
    print(f"{'header read, bounded file / plain open':<58}{bounded_ms:>9.3f} /{plain_ms:>7.3f}")
    print(f"speed-up (stock / medvision): {stock_ms / ours_ms:.1f}x   max |difference|: {diff:.2e}")
    print(
        f"input checks: {100 * checks_ms / ours_ms:.2f}% of the fast path; bounded header read: "
        f"{100 * (bounded_ms - plain_ms) / ours_ms:+.2f}% of the fast path"
    )


if __name__ == "__main__":
    main()
