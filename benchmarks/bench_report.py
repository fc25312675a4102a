"""Batch-report throughput on the demo radiographs: the whole report against the bare network forward pass.

Measured side by side in one process, on the same studies and the same registered classifier:

(a) **bare forward**: the studies preloaded as model-ready tensors (the model's own preprocessing), then
    only ``model(x)`` under ``torch.no_grad()`` in batches of ``--batch-size``;
(b) **whole report**: :func:`medvision.reporting.batch.run_report` from the DICOM folder to the finished
    report folder (discovery, model loading from MLflow, loading, forward + Grad-CAM, overlays, DICOM
    SR, results, HTML and PDF, the move into place), and the same run with the model already loaded.

It prints studies per minute for each, the share of the report's time in each part (``load``: reading
and preprocessing; ``network+gradcam``: the forward pass that also yields the heatmap, and its
backward to the feature map; ``write``: display image, overlay PNG, DICOM SR; ``render``: HTML and
PDF; ``other``: discovery, model loading, results files), and the ratio (b) / (a). The issue's target:
at least 0.5.

The classifier is ``--model`` in ``--tracking-uri`` (default ``models:/pneumonia-classifier@candidate``
in ``./mlflow.db``); with ``--train`` (or when none is registered there) a one-epoch demo classifier is
trained into a temporary MLflow store first. Radiographs come from ``--data`` (a demo data set,
default ``data/demo``), written there when missing.

``--backbone densenet121 --image-size 224`` times an untrained model of that architecture instead (the
reference network of the design notes; timings do not depend on the weights), and ``--image-format jpeg``
the report with JPEG pictures.

``--ablation N`` times the report N more times with each of its overlaps on and off (the loader thread that
reads the next batch while the network runs, the writer process that writes each study's files meanwhile, the
second writer process that takes studies while the first has a backlog, and Chromium started with the report).

Usage:
    .venv/bin/python benchmarks/bench_report.py --studies 64 --threads 2
    .venv/bin/python benchmarks/bench_report.py --studies 64 --backbone densenet121 --image-format jpeg
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def ensure_demo(data: Path, n: int) -> list[Path]:
    files = sorted((data / "cxr" / "dicom").glob("*/*/*.dcm"))
    if len(files) < n:
        from medvision.demo import write_demo_data

        print(f"writing demo radiographs to {data} ...", file=sys.stderr)
        write_demo_data(data, 0, n_cxr_patients=max(40, n // 2 + 1), n_mri=0, n_mri_dicom=0)
        files = sorted((data / "cxr" / "dicom").glob("*/*/*.dcm"))
    return files[:n]


def train_classifier(data: Path, store: Path) -> str:
    uri = f"sqlite:///{store / 'mlflow.db'}"
    cmd = [
        str(Path(sys.executable).parent / "medvision"),
        "train",
        str(REPO / "configs" / "pneumonia_demo.yaml"),
        "--set",
        f"data.path={data / 'cxr' / 'manifest.csv'}",
        "--set",
        "train.epochs=1",
        "--set",
        f"tracking.uri={uri}",
        "--set",
        f"train.output_dir={store / 'outputs'}",
        "--set",
        f"data.cache_dir={store / 'cache'}",
        "--no-progress",
    ]
    print("training a one-epoch demo classifier ...", file=sys.stderr)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return uri


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the issue's figure: 2 CPU cores)")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "demo")
    parser.add_argument("--model", default="models:/pneumonia-classifier@candidate")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--train", action="store_true", help="train a one-epoch classifier into a temporary store")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of the bare forward pass")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--backbone",
        help="time an untrained model of this architecture (e.g. densenet121) instead of the registered one;"
        " the timing does not depend on the weights",
    )
    parser.add_argument("--image-size", type=int, default=224, help="input size with --backbone")
    parser.add_argument("--image-format", choices=("png", "jpeg"), default="png", help="overlays and key slices")
    parser.add_argument(
        "--ablation", type=int, default=0, metavar="N",
        help="also time the report N times with and without the loader thread and the writer processes, interleaved",
    )  # fmt: skip
    args = parser.parse_args()

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import torch

    torch.set_num_threads(args.threads)
    if hasattr(os, "sched_setaffinity") and args.threads <= (os.cpu_count() or 1):
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: args.threads]))

    from medvision.data.transforms import classification_transforms
    from medvision.engine.classify import ClassifierBundle
    from medvision.errors import MedvisionError
    from medvision.reporting.batch import ReportConfig, run_report
    from medvision.tracking.registry import load_classifier, model_provenance

    files = ensure_demo(args.data, args.studies)
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp_name:
        tmp = Path(tmp_name)
        tracking = args.tracking_uri
        model_uri = args.model
        if args.backbone:
            pass
        elif not args.train:
            try:
                model_provenance(model_uri, tracking_uri=tracking)
            except MedvisionError as exc:
                print(f"no classifier at {model_uri} ({exc.reason}); training one", file=sys.stderr)
                args.train = True
        if args.train and not args.backbone:
            tracking = train_classifier(args.data, tmp / "store")
            model_uri = "models:/pneumonia-classifier@candidate"
        inp = tmp / "input"
        for i, path in enumerate(files):
            target = inp / f"S{i:04d}" / path.name
            target.parent.mkdir(parents=True)
            os.symlink(path, target)

        if args.backbone:
            from medvision.models import create_model

            module = create_model(args.backbone, weights="none", in_channels=1, num_classes=1)
            meta = {"backbone": args.backbone, "image_size": args.image_size, "keep_aspect": True, "mean": 0.5,
                    "std": 0.25, "temperature": 1.0, "threshold": 0.5, "intended_use": "benchmark only",
                    "weights_source": "none"}  # fmt: skip
        else:
            module, meta = load_classifier(model_uri, tracking_uri=tracking)
        module = module.to(args.device).eval()
        tf = classification_transforms(
            image_size=int(meta["image_size"]),
            keep_aspect=bool(meta["keep_aspect"]),
            mean=float(meta["mean"]),
            std=float(meta["std"]),
            train=False,
        )
        start = time.perf_counter()
        tensors = [tf({"image": str(p)})["image"] for p in files]
        load_s = time.perf_counter() - start
        batches = [torch.stack(tensors[i : i + args.batch_size]) for i in range(0, len(tensors), args.batch_size)]
        with torch.no_grad():
            module(batches[0].to(args.device))  # warm-up
            rates = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                for batch in batches:
                    module(batch.to(args.device))
                rates.append(len(files) / (time.perf_counter() - start))
        forward = statistics.median(rates)

        # (b) the whole report, twice: from the registry (as the CLI runs), then with the model given.
        summary = None
        if not args.backbone:
            summary = run_report(
                ReportConfig(input=inp, out=tmp / "report", classifier=model_uri, tracking_uri=tracking,
                             device=args.device, batch_size=args.batch_size, image_format=args.image_format),
                progress=False,
            )  # fmt: skip
            shutil.rmtree(tmp / "report")
            provenance = {**model_provenance(model_uri, tracking_uri=tracking), "uri": model_uri}
        else:
            provenance = {"name": f"untrained {args.backbone}", "version": None, "run_id": None, "uri": None}
        loaded = ClassifierBundle.of(module, meta, provenance)
        warm = run_report(
            ReportConfig(input=inp, out=tmp / "report", device=args.device, batch_size=args.batch_size,
                         image_format=args.image_format),
            classifier=loaded, progress=False,
        )  # fmt: skip
        ablation = _ablation(args, inp, tmp, loaded) if args.ablation else None

    n = len(files)
    report_rate = n / summary["seconds"] if summary is not None else None
    warm_rate = n / warm["seconds"]
    t = warm["timings"]
    parts = {
        "load": t["load"],
        "network+gradcam": t["gradcam"] + t["network"],
        "write (overlay, SR)": t["write"],
        "render (HTML, PDF)": t["render"],
    }
    parts["other (discovery, results)"] = max(warm["seconds"] - sum(parts.values()), 0.0)
    print(
        f"{n} demo radiographs, {meta.get('backbone')} at {meta['image_size']} px, batch {args.batch_size}, "
        f"{args.threads} torch threads, device {args.device}, {args.image_format} pictures"
    )
    print(f"{'measure':44s} {'studies/min':>12s} {'s/study':>9s}")
    print(f"{'(a) bare forward (tensors preloaded)':44s} {forward * 60:12.1f} {1 / forward:9.4f}")
    print(f"{'    loading + preprocessing alone':44s} {n / load_s * 60:12.1f} {load_s / n:9.4f}")
    if report_rate is not None:
        print(f"{'(b) whole report, model from MLflow':44s} {report_rate * 60:12.1f} {1 / report_rate:9.4f}")
    print(f"{'(b) whole report, model already loaded':44s} {warm_rate * 60:12.1f} {1 / warm_rate:9.4f}")
    print("share of the report's time (model already loaded):")
    for name, seconds in parts.items():
        print(f"  {name:42s} {seconds:8.2f} s  {100 * seconds / warm['seconds']:5.1f} %")
    cold = f"{report_rate / forward:.3f} (model from MLflow), " if report_rate is not None else ""
    # The targets on 2 cores: DenseNet-121 224 px >= 0.5, ResNet-18 128 px (a 6x faster network) >= 0.25.
    target = 0.25 if meta.get("backbone") == "resnet18" else 0.5
    print(f"ratio whole report / bare forward: {cold}{warm_rate / forward:.3f} (model loaded); target >= {target}")
    if ablation:
        print("each step on and off (model loaded, interleaved runs, median):")
        for name, seconds in ablation.items():
            rate = n / statistics.median(seconds)
            print(f"  {name:42s} {rate * 60:8.1f} studies/min  ratio {rate / forward:.3f}")


def _ablation(args: argparse.Namespace, inp: Path, tmp: Path, loaded: object) -> dict[str, list[float]]:
    """The report with the loader thread and the writer processes each on and off, interleaved runs."""
    import medvision.reporting.printer as printer
    import medvision.reporting.radiographs as radiographs
    from medvision.reporting.batch import ReportConfig, run_report

    # (loader thread, fewest studies for a writer process, most writer processes, Chromium started with the report)
    modes = {
        "neither (one thread, files written inline)": (False, 10**9, 1, False),
        "loader thread only": (True, 10**9, 1, False),
        "one writer process only": (False, 1, 1, False),
        "loader thread, one writer process": (True, 1, 1, False),
        "loader thread, up to two writers": (True, 1, 2, False),
        "all, and Chromium started with the report (shipped)": (True, 1, 2, True),
    }
    shipped = (radiographs.LOADER_THREAD, radiographs.WRITER_MIN_STUDIES, radiographs.WRITER_PROCESSES,
               printer.PRESTART)  # fmt: skip
    seconds: dict[str, list[float]] = {name: [] for name in modes}
    try:
        for repeat in range(args.ablation):
            for k, (name, setting) in enumerate(modes.items()):
                (radiographs.LOADER_THREAD, radiographs.WRITER_MIN_STUDIES, radiographs.WRITER_PROCESSES,
                 printer.PRESTART) = setting  # fmt: skip
                out = tmp / f"ablation-{repeat}-{k}"
                config = ReportConfig(input=inp, out=out, device=args.device, batch_size=args.batch_size,
                                      image_format=args.image_format)  # fmt: skip
                seconds[name].append(run_report(config, classifier=loaded, progress=False)["seconds"])
                shutil.rmtree(out)
    finally:
        (radiographs.LOADER_THREAD, radiographs.WRITER_MIN_STUDIES, radiographs.WRITER_PROCESSES,
         printer.PRESTART) = shipped  # fmt: skip
    return seconds


if __name__ == "__main__":
    main()
