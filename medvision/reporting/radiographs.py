"""The radiograph pipeline: radiograph series (CR/DX) through the registered classifier, one row per study.

Owns the batched pass: each image decoded once for the model input (the registered model's own
preprocessing, :func:`~medvision.data.transforms.classification_transforms` with its image size, aspect,
mean and std) and for its display picture; one forward pass giving the logit and the Grad-CAM map
(:class:`~medvision.reporting.explain.GradCamExplainer`); the probability calibrated with the model's
temperature and decided at its threshold; the overlay picture. Then each study's row: the highest
probability of its images, the pictures, the DICOM SR whose evidence is the images the finding rests on,
the optional secondary capture of its most suspicious image, and a failure row per unreadable image.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medvision.engine.classify import ClassifierBundle
from medvision.reporting.cache import _remember
from medvision.reporting.discover import CLASSIFICATION, Study
from medvision.reporting.models import _Model
from medvision.reporting.rows import _FINDING, _base_row, _failed, _priority, _reason, _rel, _Run, _write_sc, _write_sr

#: Longer side of the radiograph shown beside its heatmap, in pixels.
DISPLAY_SIZE = 512


@dataclass
class _Image:
    study: Study
    index: int
    path: Path


def _classify(run: _Run, studies: list[Study], model: _Model, bar: Any) -> None:
    """Batched classification with Grad-CAM of every image of ``studies``; one row per study."""
    import numpy as np
    import torch

    from medvision.io.fast import shared_decodes
    from medvision.metrics.calibration import apply_temperature
    from medvision.reporting.explain import GradCamExplainer, display_image, heatmap_to_display, write_overlay

    loaded: ClassifierBundle = model.value
    transform = loaded.transforms()  # the inference chain of the model's contract
    temperature, threshold = loaded.temperature, loaded.threshold
    keep_aspect = loaded.metadata.keep_aspect
    explainer = None
    if getattr(loaded.module, "feature_layer_name", None):
        explainer = GradCamExplainer(loaded.module)
    results: dict[str, list[tuple[int, float, bool, str | None]]] = {s.key: [] for s in studies}
    failures: dict[str, list[tuple[int, str]]] = {s.key: [] for s in studies}  # images that cannot be read
    notes: dict[str, list[str]] = {s.key: [] for s in studies}  # what is missing from a finding that stands
    remaining = {s.key: len(s.paths) for s in studies}
    items = [_Image(s, n, p) for s in studies for n, p in enumerate(s.paths, 1)]

    def done(item: _Image) -> None:
        # A study's row (and SR) is written as soon as its last image is through.
        bar.update(1)
        remaining[item.study.key] -= 1
        if remaining[item.study.key] == 0:
            start = time.perf_counter()
            study = item.study
            outcome = (results[study.key], failures[study.key], notes[study.key])
            _classification_row(run, study, model, outcome, threshold, has_cam)
            run.tick("write", start)

    has_cam = explainer is not None
    try:
        # Each radiograph is decoded once for the model input and its display picture.
        with shared_decodes() as decoded:
            for batch in _chunks(items, run.batch_size):
                decoded.clear()  # the previous batch's pixels
                start = time.perf_counter()
                tensors, ok = [], []
                for item in batch:
                    try:
                        tensors.append(transform({"image": str(item.path)})["image"])
                        ok.append(item)
                    except Exception as exc:  # noqa: BLE001 - one bad image never stops the batch
                        failures[item.study.key].append((item.index, _reason(exc, item.study, run.root)))
                start = run.tick("load", start)
                loaded_ids = {id(item) for item in ok}
                for item in batch:
                    if id(item) not in loaded_ids:
                        done(item)
                if not ok:
                    continue
                images = torch.stack(tensors).to(run.device)
                if explainer is not None:
                    logits, maps = explainer(images)
                    start = run.tick("gradcam", start)
                else:
                    with torch.no_grad():
                        logits = loaded.module(images).reshape(len(ok), -1)[:, 0].float().cpu()
                    maps = None
                    start = run.tick("network", start)
                probs = apply_temperature(logits.numpy(), temperature)
                for i, item in enumerate(ok):
                    start = time.perf_counter()
                    prob = float(probs[i])
                    rel: str | None = None
                    if run.withheld(item.study) is None:  # de-identified: pixels may carry burned-in identifiers
                        rel = f"studies/{run.key_for(item.study)}/radiograph-{item.index}{run.suffix}"
                        try:
                            picture, original = display_image(item.path, size=DISPLAY_SIZE)
                            heat = (
                                heatmap_to_display(maps[i], original, picture.shape, keep_aspect=keep_aspect)
                                if maps is not None
                                else np.zeros_like(picture)
                            )
                            write_overlay(picture, heat, run.tmp / str(rel))
                        except Exception as exc:  # noqa: BLE001 - the finding stands without its picture
                            rel = None
                            notes[item.study.key].append(f"image not written: {_reason(exc, item.study, run.root)}")
                    results[item.study.key].append((item.index, prob, prob >= threshold, rel))
                    run.tick("write", start)
                    done(item)
    finally:
        if explainer is not None:
            explainer.close()


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _classification_row(
    run: _Run,
    study: Study,
    model: _Model,
    outcome: tuple[list[tuple[int, float, bool, str | None]], list[tuple[int, str]], list[str]],
    threshold: float,
    has_cam: bool,
) -> None:
    """The row (and SR) of one radiograph series, plus a failure row per image that could not be read."""
    results, failures, notes = outcome
    key = run.key_for(study)
    row = _base_row(study, key)
    row["model"] = dict(model.provenance)
    row["threshold"] = threshold
    if not results:
        reason = "; ".join(r for _, r in failures) or f"{study.source}: no image could be read"
        run.add(_failed(row, reason), study)
        return
    probability = max(p for _, p, _, _ in results)
    flagged = any(f for _, _, f, _ in results)
    row.update(probability=round(probability, 6), flagged=flagged, priority=_priority(probability, flagged))
    what = "Grad-CAM heatmap over it (right)" if has_cam else "no heatmap (the model has no feature layer)"
    row["images"] = [
        {
            "path": rel,
            "caption": f"image {n}: radiograph (left), {what}; pneumonia probability {p:.3f}"
            f" ({'flagged' if f else 'not flagged'} at threshold {threshold:.3f})",
            "kind": "heatmap" if has_cam else "image",
        }
        for n, p, f, rel in sorted(results)
        if rel is not None
    ]
    if failures:
        notes = [*notes, f"{len(failures)} of {len(study.paths)} images could not be read (listed apart)"]
    if run.withheld(study) is not None:
        notes = [*notes, str(run.withheld(study))]
    from medvision.io.dicom import read_dataset

    headers: dict[int, Any] = {}  # read once, for the SR and the secondary capture
    try:
        # The SR's evidence is the images the finding rests on.
        for n, _, _, _ in sorted(results):
            headers[n] = read_dataset(study.paths[n - 1], stop_before_pixels=True)
        findings = [(headers[n], p, f) for n, p, f, _ in sorted(results)]
        row["sr_path"] = _write_sr(
            run, key, [h for h, _, _ in findings], "classification", row, findings=findings,
            shareable=run.withheld(study) is None,
        )  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - the finding stands without its SR
        notes = [*notes, f"no DICOM SR ({type(exc).__name__}: {exc})"]
    pictured = [(p, n, rel) for n, p, _, rel in results if rel is not None]
    if run.secondary_capture and pictured:
        _, n, rel = max(pictured)  # the image with the highest probability
        try:
            header = headers.get(n) or read_dataset(study.paths[n - 1], stop_before_pixels=True)
            what = "radiograph (left) and Grad-CAM heat map (right)" if has_cam else "radiograph"
            orientation = header.get("PatientOrientation")
            row["secondary_capture_path"] = _write_sc(run, key, header, rel, orientation, what, row)
        except Exception as exc:  # noqa: BLE001 - the finding stands without its secondary capture
            notes = [*notes, f"no DICOM secondary capture ({type(exc).__name__}: {exc})"]
    if notes:
        row["reason"] = "; ".join(notes)
    rows = [run.add(row, study)]
    for n, reason in failures:
        # "Nothing lost": an unreadable image of a series that was reported is listed as a failure of its own.
        failed = _failed(_base_row(study, f"{key}-img{n}"), reason)
        failed["source"] = _rel(study.paths[n - 1], run.root)
        failed["task"], failed["finding"], failed["model"] = CLASSIFICATION, _FINDING[CLASSIFICATION], row["model"]
        rows.append(run.add(failed, study))
    _remember(run, study, model, rows)
