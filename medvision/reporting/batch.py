"""The unattended batch report: a folder of studies in, a radiologist's report folder out.

:func:`run_report` does, in order:

1. **Discovery** (:mod:`medvision.reporting.discover`): every file's header below ``input_dir``,
   grouped into DICOM series and NIfTI volumes, routed to the classifier (CR/DX), the detector
   (CT/MR, NIfTI) or listed as not applicable; unusable files become failure rows.
2. **Models** through the registry only: ``models:/pneumonia-classifier@champion``, else
   ``@candidate`` (:func:`~medvision.tracking.models.resolve_model_uri`), likewise
   ``tumor-detector``. A missing model makes its studies ``failed`` with the reason; the batch goes
   on. Models are loaded only when a study needs them (not when every study is reused).
3. **Radiographs** in batches of ``batch_size`` through the registered model's own preprocessing
   (:func:`~medvision.data.transforms.classification_transforms` with its image size, aspect,
   mean and std, as :func:`~medvision.engine.evaluate.evaluate_registered` does), one forward pass
   giving the logit and the Grad-CAM map (:class:`~medvision.reporting.explain.GradCamExplainer`);
   the probability is calibrated with the model's temperature and decided at its threshold.
4. **Volumes** one at a time through the detector (a :class:`VolumePredictor`); key slices with the
   boxes drawn (radiological view) are written as PNG.
5. **Per study**: a row with the finding, probability, decision, priority, boxes, images and the
   model's provenance; a DICOM SR under ``sr/`` (:mod:`medvision.reporting.sr`; not for NIfTI).
6. **Outputs**: ``results.csv`` and ``results.json`` (one row per study and per failure, worklist
   order), the images under ``studies/<key>/``, then :func:`medvision.reporting.render.render_report`
   (``index.html``, ``studies/<key>.html``, ``report.pdf``).

Nothing half written: everything goes into a hidden temporary folder next to ``out_dir``
(``.<name>.medvision-tmp-<pid>-<token>``) and is moved into place at the end; an existing report
there is renamed aside, replaced, then deleted. An exception or Ctrl-C (``KeyboardInterrupt``) removes
the temporary folder and leaves the previous report as it was. A folder that exists and is not a
medvision report is never replaced.

Re-runs: ``.medvision-report-cache.json`` in the report maps a key per study (a hash of its files'
relative paths, sizes and modification times, the model's name, version and run id, and the report
format) to its row and files; a study whose key is unchanged is copied from the previous report
instead of being recomputed, and the summary says how many were.

Privacy: rows, pages and SR show the identifiers as the source does (the report stays with the
radiologist). With ``deidentify`` they are replaced consistently (:mod:`medvision.reporting.deid`)
everywhere, file names, paths and the cache included; the salt is never written. Nothing goes to
MLflow.

Example:
    >>> summary = run_report("incoming/", "report/")  # doctest: +SKIP
    >>> print(format_summary(summary))  # doctest: +SKIP
    report: 120 studies read, 14 flagged, 2 failed, 3 not applicable, 0 reused, 95.2 s -> report/index.html
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from medvision.errors import ConfigError, InputError, MedvisionError, ModelFormatError
from medvision.reporting.deid import NOT_SHAREABLE, DeidOptions
from medvision.reporting.discover import CLASSIFICATION, DETECTION, FAILED, NOT_APPLICABLE, Discovery, Study, discover

__all__ = [
    "CACHE_NAME",
    "CLASSIFIER_NAME",
    "DETECTOR_NAME",
    "REPORT_FORMAT",
    "ROW_KEYS",
    "LoadedClassifier",
    "VolumePredictor",
    "format_summary",
    "run_report",
]

#: Registered model names the report looks for.
CLASSIFIER_NAME = "pneumonia-classifier"
DETECTOR_NAME = "tumor-detector"
#: The re-run cache inside the report folder.
CACHE_NAME = ".medvision-report-cache.json"
#: Bump when rows, images or SR change, so that older cached studies are recomputed.
REPORT_FORMAT = 1
#: Longer side of the radiograph shown beside its heatmap, in pixels.
DISPLAY_SIZE = 512
#: Key slices written per volume (the slices of the highest-scoring boxes).
MAX_KEY_SLICES = 3

#: The keys of every row of ``results.json`` (``results.csv`` flattens ``model``, ``boxes``, ``images``).
ROW_KEYS = (
    "study_key",
    "status",
    "reason",
    "source",
    "patient_id",
    "patient_name",
    "study_date",
    "study_uid",
    "accession",
    "modality",
    "study_description",
    "task",
    "finding",
    "probability",
    "flagged",
    "threshold",
    "priority",
    "model",
    "boxes",
    "images",
    "sr_path",
    "secondary_capture_path",
    "shareable",
)

_CSV_KEYS = (
    *ROW_KEYS[:17],
    "model_name",
    "model_version",
    "model_run_id",
    "model_uri",
    "model_intended_use",
    "model_weights_source",
    "n_boxes",
    "boxes",
    "images",
    "sr_path",
    "secondary_capture_path",
    "shareable",
)

_FINDING = {CLASSIFICATION: "pneumonia", DETECTION: "tumour"}
_TMP_MARK = ".medvision-tmp-"
_OLD_MARK = ".medvision-old-"
_NO_SR_NIFTI = "no DICOM SR: a NIfTI file has no DICOM study to reference"


@dataclass
class LoadedClassifier:
    """A classifier ready to run: the module, its registered metadata and its provenance.

    Attributes:
        module: the network (a medvision ``Classifier`` gets Grad-CAM; other modules get none).
        metadata: the registered metadata (``image_size``, ``keep_aspect``, ``mean``, ``std``,
            ``temperature``, ``threshold``, ``intended_use``, ``weights_source``).
        provenance: ``name``, ``version``, ``run_id``, ``uri``.
    """

    module: Any
    metadata: dict[str, Any]
    provenance: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class VolumePredictor(Protocol):
    """What the report needs of a tumour detector.

    ``metadata`` holds ``name``, ``version``, ``run_id``, ``threshold``, ``intended_use`` (and
    optionally ``uri``, ``weights_source``). ``predict(path)`` takes a NIfTI file or a DICOM series
    folder and returns an object with ``boxes`` (``[{"world_mm": [x0, y0, z0, x1, y1, z1]`` in RAS
    mm, ``"size_mm"``, ``"score"``, ``"slice"`` (axial index into ``image[:, :, k]``)``}]``),
    ``volume_score``, ``threshold``, ``flagged``, ``image`` (X, Y, Z display volume, RAS) and
    optionally ``affine`` (4x4, index of ``image`` to RAS mm) or per-box ``"voxel"`` boxes, which
    are needed to draw the boxes on the key slices.
    """

    metadata: Mapping[str, Any]

    def predict(self, path: Path) -> Any:
        """Predict the boxes of one volume."""
        ...


# ----------------------------------------------------------------------------------------------- models


@dataclass
class _Model:
    """One route's model: resolved lazily, its provenance known before its weights are loaded."""

    route: str
    provenance: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    loader: Callable[[], Any] | None = None
    value: Any = None

    @property
    def ident(self) -> str | None:
        if self.error is not None:
            return None
        p = self.provenance
        # A registered version is the model, whichever alias or URI named it; otherwise the URI is.
        where = "" if p.get("version") is not None else f"|{p.get('uri')}"
        return f"{p.get('name')}|{p.get('version')}|{p.get('run_id')}{where}"

    def get(self) -> Any:
        if self.value is None and self.error is None and self.loader is not None:
            try:
                self.value = self.loader()
            except ModelFormatError:
                raise  # a refused model (old pickle format, tampered weights) stops the report, not only its studies
            except MedvisionError as exc:
                self.error = exc.one_line()
            except (ImportError, OSError, RuntimeError, ValueError) as exc:
                self.error = f"{self.route} model cannot be loaded ({type(exc).__name__}: {exc})"
        return self.value


def _resolve(name: str, uri: str | None, tracking_uri: str | None) -> tuple[str | None, dict[str, Any], str | None]:
    """``(pinned uri, provenance, error)`` for a registered model (``uri`` given, or the default aliases).

    A local tracking store that does not exist raises :class:`~medvision.errors.TrackingError` (checked
    before MLflow would create it); any other error comes back as ``error``. An alias is pinned to the
    version it names now (``models:/NAME/VERSION``), so the weights loaded later are the version the
    provenance and the re-run cache speak of, even if the alias moves.
    """
    import mlflow

    from medvision.tracking.models import model_provenance, resolve_model_uri
    from medvision.tracking.store import require_existing_store

    # Reading must not create a store where there is none (MLflow would): a missing store stops the report.
    current = None if tracking_uri or not mlflow.is_tracking_uri_set() else mlflow.get_tracking_uri()
    require_existing_store(tracking_uri or current)
    try:
        asked = uri or resolve_model_uri(name, tracking_uri=tracking_uri)
        info = model_provenance(asked, tracking_uri=tracking_uri)
    except MedvisionError as exc:
        return None, {}, exc.one_line()
    provenance = {"name": info.get("name"), "version": info.get("version"), "run_id": info.get("run_id"), "uri": asked}
    return str(info.get("model_uri") or asked), provenance, None


def _classifier_model(classifier: Any, uri: str | None, tracking_uri: str | None, device: str, needed: bool) -> _Model:
    model = _Model(CLASSIFICATION)
    if classifier is not None:
        if isinstance(classifier, tuple):
            classifier = LoadedClassifier(classifier[0], dict(classifier[1]))
        meta = dict(classifier.metadata)
        model.provenance = {
            "name": meta.get("name", "classifier"),
            "version": meta.get("version"),
            "run_id": meta.get("run_id"),
            "uri": meta.get("uri"),
            **dict(classifier.provenance),
        }
        model.value = _prepare_classifier(classifier, device)
        _complete_provenance(model)
        return model
    if not needed:
        return model

    def load(resolved: str) -> LoadedClassifier:
        from medvision.tracking.models import load_classifier

        with _quiet_mlflow():
            module, metadata = load_classifier(resolved, tracking_uri=tracking_uri)
        loaded = _prepare_classifier(LoadedClassifier(module, dict(metadata), model.provenance), device)
        model.value = loaded
        _complete_provenance(model)
        return loaded

    return _registered(
        model, CLASSIFIER_NAME, uri, tracking_uri, "`medvision train configs/pneumonia_demo.yaml`", "--classifier", load
    )


def _registered(
    model: _Model,
    name: str,
    uri: str | None,
    tracking_uri: str | None,
    how: str,
    option: str,
    load: Callable[[str], Any],
) -> _Model:
    """Resolve a registered model now (the error, if any, fails only the studies that need it) and load it
    the first time a study needs it."""
    resolved, provenance, error = _resolve(name, uri, tracking_uri)
    if error is not None:
        model.error = f"no usable {name} ({error}); train and register one ({how}) or pass {option} URI"
        return model
    model.provenance = provenance
    model.loader = lambda: load(str(resolved))
    return model


@contextmanager
def _quiet_mlflow() -> Iterator[None]:
    """No "Downloading artifacts" bar from MLflow in the middle of the report's own progress bar."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(name)
    os.environ[name] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def _prepare_classifier(loaded: LoadedClassifier, device: str) -> LoadedClassifier:
    for key in ("image_size", "mean", "std", "temperature", "threshold"):
        if loaded.metadata.get(key) is None:
            raise ConfigError(
                f"classifier metadata {key}",
                "is missing",
                "register the model with medvision (log_classifier records preprocessing, temperature and threshold)",
            )
    loaded.module = loaded.module.to(device)
    return loaded


def _complete_provenance(model: _Model) -> None:
    """Intended use and weights source from the loaded model's metadata, where the provenance lacks them."""
    meta = getattr(model.value, "metadata", None) or {}
    for key in ("intended_use", "weights_source"):
        if model.provenance.get(key) is None:
            model.provenance[key] = meta.get(key)


def _detector_provenance(detector: Any) -> dict[str, Any]:
    """Name, version, run id, URI, intended use and weights source of a detector (metadata, then provenance)."""
    meta = dict(getattr(detector, "metadata", {}) or {})
    extra = dict(getattr(detector, "provenance", {}) or {})
    out = {}
    for key in ("name", "version", "run_id", "uri", "intended_use", "weights_source"):
        value = meta.get(key)
        out[key] = extra.get(key) if value is None else value
    if out["uri"] is None:
        out["uri"] = getattr(detector, "uri", None)
    return out


def _detector_model(detector: Any, uri: str | None, tracking_uri: str | None, device: str, needed: bool) -> _Model:
    model = _Model(DETECTION)
    if detector is not None:
        model.provenance = _detector_provenance(detector)
        model.value = detector
        return model
    if not needed:
        return model

    def load(resolved: str) -> Any:
        try:
            from medvision.engine.detect import load_detector
        except ImportError as exc:
            raise InputError(
                resolved, f"the tumour detector cannot be run by this medvision ({exc})", "update medvision"
            ) from exc
        with _quiet_mlflow():
            predictor = load_detector(resolved, device=device, tracking_uri=tracking_uri)
        for key, value in _detector_provenance(predictor).items():
            if model.provenance.get(key) is None:
                model.provenance[key] = value
        return predictor

    return _registered(
        model, DETECTOR_NAME, uri, tracking_uri, "tracking.register_as: tumor-detector", "--detector", load
    )


# ----------------------------------------------------------------------------------------------- rows


def _base_row(study: Study, key: str) -> dict[str, Any]:
    meta = study.meta
    row: dict[str, Any] = dict.fromkeys(ROW_KEYS)
    row.update(
        study_key=key,
        status=study.route if study.route in (FAILED, NOT_APPLICABLE) else "ok",
        reason=study.reason,
        source=study.source,
        patient_id=meta.get("patient_id"),
        patient_name=meta.get("patient_name"),
        study_date=meta.get("study_date"),
        study_uid=meta.get("study_uid"),
        accession=meta.get("accession"),
        modality=meta.get("modality") or ("NIfTI" if study.kind == "nifti" else None),
        study_description=meta.get("study_description"),
        task=study.route if study.route in (CLASSIFICATION, DETECTION) else None,
        finding=_FINDING.get(study.route),
        boxes=[],
        images=[],
    )
    return row


def _failed(row: dict[str, Any], reason: str) -> dict[str, Any]:
    out = dict(row)
    out.update(status=FAILED, reason=reason, probability=None, flagged=None, priority=None, images=[], boxes=[])
    out["sr_path"] = None
    return out


def _priority(probability: float | None, flagged: bool | None) -> float | None:
    """Flagged studies first (+1), then by probability: higher means read first."""
    if probability is None or not math.isfinite(probability):
        return None
    return round((1.0 if flagged else 0.0) + float(probability), 6)


def _order(row: Mapping[str, Any]) -> tuple:
    rank = {"ok": 0, FAILED: 1, NOT_APPLICABLE: 2}.get(str(row.get("status")), 1)
    priority = row.get("priority")
    return (rank, -(priority if isinstance(priority, int | float) else -math.inf), str(row.get("study_key")))


def _reason(exc: BaseException, study: Study, root: Path) -> str:
    if isinstance(exc, MedvisionError):
        text = exc.one_line()
    else:
        text = f"{study.source}: unexpected {type(exc).__name__}: {' '.join(str(exc).split())}"
    for path in study.paths:
        try:
            text = text.replace(str(path), path.relative_to(root).as_posix())
        except ValueError:
            pass
    return text


# ----------------------------------------------------------------------------------------------- the run


@dataclass
class _Run:
    """State of one report run."""

    root: Path
    tmp: Path
    old_out: Path | None
    deid: Any
    device: str
    batch_size: int
    timings: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("load", "network", "gradcam", "write", "render"), 0.0)
    )
    rows: list[dict[str, Any]] = field(default_factory=list)
    cache_in: dict[str, Any] = field(default_factory=dict)
    cache_out: dict[str, Any] = field(default_factory=dict)
    reused: int = 0
    scratch: Path | None = None
    suffix: str = ".png"
    secondary_capture: bool = False

    def key_for(self, study: Study) -> str:
        return self.deid.key(study.key) if self.deid is not None else study.key

    def withheld(self, study: Study) -> str | None:
        """Why a de-identified report withholds the study's pictures (``None``: it does not).

        Only a DICOM study whose every image says BurnedInAnnotation NO is shareable: pixels are not cleaned,
        so text burned into them (names, dates, ids) would leave with the picture.
        """
        if self.deid is None:
            return None
        if study.kind != "dicom" or not study.instances:
            return f"{NOT_SHAREABLE} unknown ({study.kind} files carry no BurnedInAnnotation); pictures withheld"
        marked = [i.burned_in or "absent" for i in study.instances if i.burned_in != "NO"]
        if not marked:
            return None
        values = "/".join(sorted(set(marked)))
        return (
            f"{NOT_SHAREABLE} (BurnedInAnnotation {values} in {len(marked)} of {len(study.instances)} images);"
            " pictures withheld"
        )

    def add(self, row: dict[str, Any], study: Study | None = None) -> dict[str, Any]:
        if self.deid is not None:
            paths = [] if study is None else [str(p) for p in study.paths] + [_rel(p, self.root) for p in study.paths]
            time_of_study = study.meta.get("study_time") if study is not None else None
            row = self.deid.row(row, source_paths=paths, study_time=time_of_study)
            row["shareable"] = study is not None and self.withheld(study) is None
        self.rows.append(row)
        return row

    def tick(self, part: str, start: float) -> float:
        now = time.perf_counter()
        self.timings[part] += now - start
        return now


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _cache_key(run: _Run, study: Study, model: _Model) -> str | None:
    if model.ident is None:
        return None
    salt = ""
    if run.deid is not None:
        if not run.deid.salt_given:
            return None  # pseudonyms change with every run: nothing to reuse
        salt = run.deid.salt
    h = hashlib.sha256()
    options = run.deid.options.describe() if run.deid is not None else None
    parts = (salt, REPORT_FORMAT, study.key, study.fingerprint(run.root), model.ident, options, run.suffix,
             run.secondary_capture)  # fmt: skip
    for part in parts:
        h.update(f"{part}\x1f".encode())
    return h.hexdigest()


def _row_files(row: Mapping[str, Any]) -> list[str]:
    files = [str(i["path"]) for i in row.get("images") or [] if isinstance(i, Mapping) and i.get("path")]
    files += [str(row[k]) for k in ("sr_path", "secondary_capture_path") if row.get(k)]
    return files


def _reuse(run: _Run, key: str | None) -> list[dict[str, Any]] | None:
    """The cached rows for ``key``, with their files copied from the previous report, or ``None``."""
    if key is None or run.old_out is None or key not in run.cache_in:
        return None
    entry = run.cache_in[key]
    rows = entry.get("rows") if isinstance(entry, Mapping) else None
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        return None
    files = [f for row in rows for f in _row_files(row)]
    sources = [run.old_out / f for f in files]
    if not all(p.is_file() and _inside(p, run.old_out) for p in sources):
        return None
    for rel, src in zip(files, sources, strict=True):
        dst = run.tmp / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    run.cache_out[key] = {"rows": rows}
    run.reused += 1
    return [dict(r) for r in rows]


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


# ----------------------------------------------------------------------------------------------- radiographs


@dataclass
class _Image:
    study: Study
    index: int
    path: Path


def _classify(run: _Run, studies: list[Study], model: _Model, bar: Any) -> None:
    """Batched classification with Grad-CAM of every image of ``studies``; one row per study."""
    import numpy as np
    import torch

    from medvision.data.transforms import classification_transforms
    from medvision.io.fast import shared_decodes
    from medvision.metrics.calibration import apply_temperature
    from medvision.reporting.explain import GradCamExplainer, display_image, heatmap_to_display, write_overlay

    loaded: LoadedClassifier = model.value
    meta = loaded.metadata
    transform = classification_transforms(
        image_size=int(meta["image_size"]),
        keep_aspect=bool(meta.get("keep_aspect", True)),
        mean=float(meta["mean"]),
        std=float(meta["std"]),
        train=False,
    )
    temperature, threshold = float(meta["temperature"]), float(meta["threshold"])
    keep_aspect = bool(meta.get("keep_aspect", True))
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


def _write_sr(
    run: _Run,
    key: str,
    headers: list[Any],
    kind: str,
    row: Mapping[str, Any],
    *,
    findings: list[tuple[Any, float, bool]] | None = None,
    boxes: list[dict[str, Any]] | None = None,
    shareable: bool = True,
) -> str:
    from medvision.reporting.sr import classification_sr, detection_sr, write_sr

    if run.deid is not None:
        by_uid = {str(h.SOPInstanceUID): run.deid.dataset(h) for h in headers}
        headers = [by_uid[str(h.SOPInstanceUID)] for h in headers]
        if findings is not None:
            findings = [(by_uid[str(h.SOPInstanceUID)], p, f) for h, p, f in findings]
    model = row.get("model") or {}
    if kind == "classification":
        sr = classification_sr(headers, findings or [], model=model, threshold=row.get("threshold"))
    else:
        sr = detection_sr(
            headers,
            boxes or [],
            model=model,
            threshold=row.get("threshold"),
            volume_score=float(row.get("probability") or 0.0),
            flagged=bool(row.get("flagged")),
        )
    if run.deid is not None:
        run.deid.stamp(sr, shareable=shareable)
    rel = f"sr/{key}.dcm"
    write_sr(sr, run.tmp / rel)
    return rel


def _write_sc(
    run: _Run, key: str, header: Any, picture: str, orientation: Any, what: str, row: Mapping[str, Any]
) -> str:
    """The study's key picture as a DICOM Secondary Capture (:mod:`medvision.reporting.sc`), pseudonymised
    with the rest of the report under ``--deidentify``."""
    from medvision.reporting.sc import key_picture_sc, write_sc

    if run.deid is not None:
        header = run.deid.dataset(header)
    sc = key_picture_sc(
        header, run.tmp / picture, model=row.get("model") or {}, patient_orientation=orientation, description=what
    )
    if run.deid is not None:
        run.deid.stamp(sc, shareable=True)  # written only for a shareable study
    rel = f"sc/{key}.dcm"
    write_sc(sc, run.tmp / rel)
    return rel


def _remember(run: _Run, study: Study, model: _Model, rows: list[dict[str, Any]]) -> None:
    """Put a study's rows (its finding and the failures of some of its images) into the re-run cache."""
    key = _cache_key(run, study, model)
    if key is not None and rows and rows[0].get("status") == "ok":
        run.cache_out[key] = {"rows": rows}


# ----------------------------------------------------------------------------------------------- volumes


def _series_path(run: _Run, study: Study) -> Path:
    """What the detector reads: the NIfTI file, the series folder, or a folder of links to the series' files."""
    if study.kind == "nifti":
        return study.paths[0]
    folder = study.paths[0].parent
    files = {p.name for p in study.paths}
    if all(p.parent == folder for p in study.paths):
        others = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.name not in files]
        if not others:
            return folder
    assert run.scratch is not None
    target = run.scratch / study.key
    target.mkdir(parents=True, exist_ok=True)
    for n, path in enumerate(study.paths):
        link = target / f"{n:05d}.dcm"
        try:
            link.symlink_to(path.resolve())
        except OSError:
            shutil.copy2(path, link)
    return target


def _voxel_boxes(prediction: Any, boxes: Sequence[Mapping[str, Any]]) -> list[list[float] | None]:
    """Each box in voxel indices of ``prediction.image`` (``"voxel"`` key, else through ``prediction.affine``)."""
    import numpy as np

    affine = getattr(prediction, "affine", None)
    inverse = np.linalg.inv(np.asarray(affine, dtype=np.float64)) if affine is not None else None
    out: list[list[float] | None] = []
    for box in boxes:
        voxel = box.get("voxel") or box.get("voxel_box")
        if voxel is not None and len(voxel) == 6:
            out.append([float(v) for v in voxel])
            continue
        if inverse is None or box.get("world_mm") is None:
            out.append(None)
            continue
        w = np.asarray(box["world_mm"], dtype=np.float64).reshape(2, 3)
        corners = np.array([[w[i, 0], w[j, 1], w[k, 2], 1.0] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
        idx = (inverse @ corners.T).T[:, :3]
        # Edges in continuous index space (voxel centres at integers) -> index boxes, max corner exclusive.
        lo, hi = idx.min(axis=0) + 0.5, idx.max(axis=0) + 0.5
        out.append([*lo.tolist(), *hi.tolist()])
    return out


def _key_slices(
    run: _Run, key: str, prediction: Any, boxes: list[dict[str, Any]], *, candidate: bool = False
) -> list[dict[str, Any]]:
    """PNG of the slices of the highest-scoring boxes, radiological view, boxes drawn with their scores.

    Args:
        run: the run (its temporary folder).
        key: the study's key (folder of the images).
        prediction: the detector's output (``image``, ``affine``).
        boxes: the boxes to show, best first.
        candidate: the boxes are below the operating point (captions say so).
    """
    import numpy as np

    from medvision.reporting.explain import write_key_slice

    volume = np.asarray(prediction.image, dtype=np.float32)
    if volume.ndim == 4:
        volume = volume[0]
    nz = volume.shape[2]
    voxels = _voxel_boxes(prediction, boxes)
    slices: list[int] = []
    for box in boxes:
        k = int(np.clip(int(box.get("slice") if box.get("slice") is not None else nz // 2), 0, nz - 1))
        if k not in slices:
            slices.append(k)
        if len(slices) == MAX_KEY_SLICES:
            break
    if not slices:
        slices = [nz // 2]
    images = []
    for k in slices:
        drawn, scores, labels = [], [], []
        for box, voxel in zip(boxes, voxels, strict=True):
            if voxel is None or not (voxel[2] <= k < voxel[5] or box.get("slice") == k):
                continue
            drawn.append([voxel[0], voxel[1], voxel[3], voxel[4]])
            scores.append(float(box.get("score") or 0.0))
            size = " x ".join(f"{float(v):.0f}" for v in box.get("size_mm") or [])
            labels.append(f"score {scores[-1]:.2f}, {size} mm")
        rel = f"studies/{key}/slice-{k:03d}{run.suffix}"
        write_key_slice(volume, k, drawn, scores, run.tmp / rel, title=f"axial slice {k}")
        if drawn:
            what = "; ".join(labels)
            if candidate:
                what = f"best candidate, below the threshold {float(prediction.threshold):.2f}: {what}"
        elif any(b.get("slice") == k for b in boxes):
            what = "box position on the slice not available from the detector"
        else:
            what = "no box found; middle slice"
        images.append(
            {
                "path": rel,
                "caption": f"axial slice {k} (radiological view: patient's right on the left, anterior up): {what}",
                "kind": "slice",
            }
        )
    return images


def _public_box(box: Mapping[str, Any]) -> dict[str, Any]:
    """A box as the row carries it: ``world_mm``, ``size_mm``, ``score``, ``slice``."""
    import numpy as np

    world = [round(float(v), 3) for v in box["world_mm"]]
    size = box.get("size_mm")
    if size is None:
        size = np.ptp(np.reshape(world, (2, 3)), axis=0)
    return {
        "world_mm": world,
        "size_mm": [round(float(v), 3) for v in size],
        "score": round(float(box.get("score") or 0.0), 6),
        "slice": int(box["slice"]) if box.get("slice") is not None else None,
    }


def _detect(run: _Run, study: Study, model: _Model) -> None:
    from medvision.io.dicom import read_dataset

    key = run.key_for(study)
    row = _base_row(study, key)
    row["model"] = dict(model.provenance)
    start = time.perf_counter()
    try:
        prediction = model.value.predict(_series_path(run, study))
    except Exception as exc:  # noqa: BLE001 - one bad volume never stops the batch
        run.tick("network", start)
        run.add(_failed(row, _reason(exc, study, run.root)), study)
        return
    start = run.tick("network", start)
    probability = float(prediction.volume_score)
    flagged = bool(prediction.flagged)
    threshold = float(prediction.threshold) if prediction.threshold is not None else None
    found = sorted((dict(b) for b in (prediction.boxes or [])), key=lambda b: -float(b.get("score") or 0.0))
    # The row, the pages and the SR carry the boxes at or above the operating point; when there is none,
    # the key slice shows the best candidate, said to be below it.
    kept = [b for b in found if threshold is None or float(b.get("score") or 0.0) >= threshold]
    boxes = [_public_box(b) for b in kept]
    row.update(
        probability=round(probability, 6),
        flagged=flagged,
        threshold=threshold,
        priority=_priority(probability, flagged),
        boxes=boxes,
    )
    notes = []
    withheld = run.withheld(study)
    if withheld is not None:
        notes.append(withheld)  # de-identified: pixels may carry burned-in identifiers
    else:
        try:
            row["images"] = _key_slices(run, key, prediction, kept or found[:1], candidate=not kept and bool(found))
        except Exception as exc:  # noqa: BLE001 - the finding stands without its pictures
            notes.append(f"key slices not written ({type(exc).__name__}: {exc})")
    if study.kind == "nifti":
        notes.append(_NO_SR_NIFTI)
    else:
        headers: list[Any] = []  # read once, for the SR and the secondary capture
        try:
            headers.extend(read_dataset(p, stop_before_pixels=True) for p in study.paths)
            row["sr_path"] = _write_sr(run, key, headers, "detection", row, boxes=boxes, shareable=withheld is None)
        except Exception as exc:  # noqa: BLE001 - the finding stands without its SR
            notes.append(f"no DICOM SR ({type(exc).__name__}: {exc})")
        if run.secondary_capture and row.get("images"):
            from medvision.reporting.sc import KEY_SLICE_ORIENTATION

            try:
                header = headers[0] if headers else read_dataset(study.paths[0], stop_before_pixels=True)
                picture = str(row["images"][0]["path"])
                what = "axial key slice in radiological view with the detector's boxes and scores"
                row["secondary_capture_path"] = _write_sc(run, key, header, picture, KEY_SLICE_ORIENTATION, what, row)
            except Exception as exc:  # noqa: BLE001 - the finding stands without its secondary capture
                notes.append(f"no DICOM secondary capture ({type(exc).__name__}: {exc})")
    if notes:
        row["reason"] = "; ".join(notes)
    run.tick("write", start)
    _remember(run, study, model, [run.add(row, study)])


# ----------------------------------------------------------------------------------------------- files


def _write_results(run: _Run, summary: Mapping[str, Any], report: Mapping[str, Any]) -> None:
    doc = {"report": dict(report), "summary": dict(summary), "rows": run.rows}
    (run.tmp / "results.json").write_text(json.dumps(doc, indent=2, default=_json_default), encoding="utf-8")
    with (run.tmp / "results.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(_CSV_KEYS))
        writer.writeheader()
        for row in run.rows:
            writer.writerow(_csv_row(row))


def _csv_row(row: Mapping[str, Any]) -> dict[str, Any]:
    model = row.get("model") or {}
    out = {k: row.get(k) for k in _CSV_KEYS if k in row and k not in ("model", "boxes", "images")}
    out.update({f"model_{k}": model.get(k) for k in ("name", "version", "run_id", "uri", "intended_use")})
    out["model_weights_source"] = model.get("weights_source")
    boxes = row.get("boxes") or []
    out["n_boxes"] = len(boxes) if row.get("task") == DETECTION else None
    out["boxes"] = json.dumps(boxes) if boxes else None
    out["images"] = "; ".join(str(i.get("path")) for i in row.get("images") or [] if isinstance(i, Mapping))
    return {k: ("" if v is None else v) for k, v in out.items()}


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return value.as_posix()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _load_cache(out: Path) -> dict[str, Any]:
    try:
        doc = json.loads((out / CACHE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict) or doc.get("format") != REPORT_FORMAT or not isinstance(doc.get("entries"), dict):
        return {}
    return doc["entries"]


def _is_report(folder: Path) -> bool:
    return (folder / "results.json").is_file() or (folder / CACHE_NAME).is_file()


def _check_out(input_dir: Path, out: Path) -> None:
    if _inside(input_dir, out):
        reason = f"holds the input folder {input_dir}; replacing the report would delete it"
        raise InputError(out, reason, "choose an --out folder outside the input")
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder", "choose another --out")
    if out.is_dir() and any(out.iterdir()) and not _is_report(out):
        raise InputError(
            out,
            "exists, is not empty and is not a medvision report; it would be replaced",
            "choose a new or empty --out folder, or remove it",
        )


def _clean_stale(out: Path) -> None:
    """Remove temporary folders of earlier runs whose process is gone (killed, not interrupted)."""
    for mark in (_TMP_MARK, _OLD_MARK):
        for path in out.parent.glob(f".{out.name}{mark}*"):
            pid = path.name[len(f".{out.name}{mark}") :].split("-", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _move_into_place(tmp: Path, out: Path) -> None:
    """Replace ``out`` by ``tmp``: rename the old report aside, move the new one in, delete the old one."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}{_OLD_MARK}{os.getpid()}-{secrets.token_hex(4)}"
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:  # an OSError or a Ctrl-C between the two renames: the old report goes back
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- entry point


def _progress_bar(
    total: int | None, enabled: bool, *, desc: str = "report", unit: str = " scans", leave: bool = True
) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total, desc=desc, unit=unit, disable=not enabled, file=sys.stderr, dynamic_ncols=True, leave=leave
    )


def run_report(
    input_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    classifier_uri: str | None = None,
    detector_uri: str | None = None,
    device: str = "cpu",
    batch_size: int = 8,
    deidentify: bool = False,
    progress: bool = True,
    detector: VolumePredictor | None = None,
    classifier: LoadedClassifier | tuple[Any, Mapping[str, Any]] | None = None,
    tracking_uri: str | None = None,
    deid_salt: str | None = None,
    title: str = "medvision batch report",
    image_format: str = "png",
    secondary_capture: bool = False,
    deid_options: DeidOptions | None = None,
) -> dict[str, Any]:
    """Turn a folder of studies into a report folder (see the module docstring).

    Args:
        input_dir: the folder of studies (walked recursively).
        out_dir: the report folder; replaced when it holds an earlier report, refused when it holds
            anything else.
        classifier_uri: the pneumonia classifier (default ``models:/pneumonia-classifier@champion``,
            else ``@candidate``).
        detector_uri: the tumour detector (default ``models:/tumor-detector@champion``, else ``@candidate``).
        device: ``"cpu"`` or ``"cuda"``.
        batch_size: radiographs per forward pass.
        deidentify: apply the DICOM PS3.15 Basic Profile to every header, row, page and file name, and withhold
            the pictures of studies that may carry burned-in annotation (see :mod:`~medvision.reporting.deid`).
        deid_options: the profile's options (default: dates shifted, descriptors removed, device identity removed).
        progress: show a progress bar with ETA on stderr.
        detector: a ready :class:`VolumePredictor` instead of ``detector_uri`` (tests, notebooks).
        classifier: a ready :class:`LoadedClassifier` (or ``(module, metadata)``) instead of ``classifier_uri``.
        tracking_uri: the MLflow store holding the models (default: MLflow's current one, then
            ``$MLFLOW_TRACKING_URI``, then ``./mlflow.db``).
        deid_salt: the de-identification salt (default: a new random one, so pseudonyms differ per
            run and nothing is reused); never written into the report.
        title: the report's title.
        image_format: ``"png"`` (lossless) or ``"jpeg"`` (quality 90) for the overlays and key slices.
        secondary_capture: also file each DICOM study's key picture (overlay or key slice) into the study as
            a DICOM Secondary Capture (``sc/<key>.dcm``; :mod:`medvision.reporting.sc`).
            JPEG makes the report about five times smaller and its rendering about four times faster
            (``benchmarks/bench_report.py``); the pictures are for triage, the diagnostic read is in the PACS.

    Returns:
        The summary: ``studies_read``, ``studies``, ``flagged``, ``failed``, ``not_applicable``,
        ``reused``, ``seconds``, ``timings`` (seconds in ``load``, ``network``, ``gradcam``,
        ``write``, ``render``), ``out_dir``, ``index``, ``pdf``, ``deidentified``.

    Raises:
        InputError: ``input_dir`` is not a folder, or ``out_dir`` is something else than a report.
        ConfigError: a bad ``device`` or ``batch_size``.
        ModelFormatError: a registered model that medvision refuses to load (the old pickle format, or weights
            that fail their check); no report is written and the previous one is unchanged.
        TrackingError: a model is needed but the local tracking store does not exist (nothing is created; no
            report is written).
        KeyboardInterrupt: after cleaning up; the previous report is unchanged.
    """
    started = time.perf_counter()
    root = Path(input_dir).expanduser().resolve()
    out = Path(out_dir).expanduser().resolve()
    if device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
        raise ConfigError("--device", f"unknown device {device!r}", "use cpu or cuda")
    if str(device).startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("--device", f"{device} was asked for but no CUDA device is available", "use --device cpu")
    if image_format not in ("png", "jpeg"):
        raise ConfigError("--image-format", f"unknown format {image_format!r}", "use png or jpeg")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError("--batch-size", f"must be an integer >= 1, got {batch_size!r}", "use e.g. 8")
    if not root.is_dir():
        what = "no such folder" if not root.exists() else "is not a folder"
        raise InputError(root, what, "pass the folder that holds the studies (--input DIR)")
    _check_out(root, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(out)

    from medvision.reporting.deid import Deidentifier

    tmp = out.parent / f".{out.name}{_TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    run = _Run(
        root=root,
        tmp=tmp,
        old_out=out if _is_report(out) else None,
        deid=Deidentifier(deid_salt, deid_options) if deidentify else None,
        device=str(device),
        batch_size=batch_size,
        suffix=".jpg" if image_format == "jpeg" else ".png",
        secondary_capture=bool(secondary_capture),
    )
    try:
        models = (classifier, classifier_uri, detector, detector_uri, tracking_uri)
        summary = _work(run, out, models, progress=progress, title=title, started=started)
        _move_into_place(tmp, out)
    except KeyboardInterrupt:
        shutil.rmtree(tmp, ignore_errors=True)
        kept = f"; the previous report in {out} is unchanged" if run.old_out is not None else ""
        print(f"\ninterrupted: no report written, temporary files removed{kept}", file=sys.stderr, flush=True)
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _work(run: _Run, out: Path, models: tuple, *, progress: bool, title: str, started: float) -> dict[str, Any]:
    from medvision.reporting.render import render_report

    classifier, classifier_uri, detector, detector_uri, tracking_uri = models

    # tqdm writes the count and the unit together: " files" reads "120 files [00:01, 95 files/s]", not "120file".
    reading = _progress_bar(None, progress, desc="reading headers", unit=" files", leave=False)
    try:
        found: Discovery = discover(run.root, exclude=[out, run.tmp], progress=lambda n: reading.update(n - reading.n))
    finally:
        reading.close()
    run.scratch = run.tmp / ".scratch"
    radiographs, volumes = found.by_route(CLASSIFICATION), found.by_route(DETECTION)
    run.cache_in = _load_cache(out) if run.old_out is not None else {}
    cls_model = _classifier_model(classifier, classifier_uri, tracking_uri, run.device, bool(radiographs))
    det_model = _detector_model(detector, detector_uri, tracking_uri, run.device, bool(volumes))

    # Studies unchanged since the previous report are copied from it.
    todo_cls, todo_det = [], []
    for studies, model, todo in ((radiographs, cls_model, todo_cls), (volumes, det_model, todo_det)):
        for study in studies:
            rows = _reuse(run, _cache_key(run, study, model))
            if rows is not None:
                run.rows.extend(rows)
            else:
                todo.append(study)

    # Weights are loaded before the progress bar starts, so that its ETA measures the studies.
    if todo_cls:
        cls_model.get()
    if todo_det:
        det_model.get()
    total = sum(len(s.paths) for s in todo_cls) + len(todo_det)
    bar = _progress_bar(total, progress)
    try:
        if todo_cls:
            if cls_model.value is None:
                for study in todo_cls:
                    row = _base_row(study, run.key_for(study))
                    row["model"] = dict(cls_model.provenance) or None
                    run.add(_failed(row, str(cls_model.error)), study)
                bar.update(sum(len(s.paths) for s in todo_cls))
            else:
                _classify(run, todo_cls, cls_model, bar)
        if todo_det:
            if det_model.value is None:
                for study in todo_det:
                    row = _base_row(study, run.key_for(study))
                    row["model"] = dict(det_model.provenance) or None
                    run.add(_failed(row, str(det_model.error)), study)
                bar.update(len(todo_det))
            else:
                for study in todo_det:
                    _detect(run, study, det_model)
                    bar.update(1)
    finally:
        bar.close()
    for study in found.studies:
        if study.route in (FAILED, NOT_APPLICABLE):
            run.add(_base_row(study, run.key_for(study)), study)
    if run.scratch.exists():
        shutil.rmtree(run.scratch, ignore_errors=True)

    run.rows.sort(key=_order)
    ok = [r for r in run.rows if r.get("status") == "ok"]
    summary: dict[str, Any] = {
        "studies_read": len(run.rows),
        "studies": len(ok),
        "flagged": sum(1 for r in ok if r.get("flagged") is True),
        "failed": sum(1 for r in run.rows if r.get("status") == FAILED),
        "not_applicable": sum(1 for r in run.rows if r.get("status") == NOT_APPLICABLE),
        "reused": run.reused,
        "deidentified": run.deid is not None,
        "input": None if run.deid is not None else str(run.root),
    }
    if run.deid is not None:
        summary["deidentification"] = run.deid.options.describe()
        summary["not_shareable"] = sum(1 for r in run.rows if r.get("shareable") is False)
    generated_at = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    start = time.perf_counter()
    shown = {
        "studies": summary["studies_read"],
        "flagged": summary["flagged"],
        "failed": summary["failed"],
        "not_applicable": summary["not_applicable"],
        "reused_from_previous_report": run.reused,
        "deidentified": summary.get("deidentification") or False,
        **({"not_shareable": summary["not_shareable"]} if run.deid is not None else {}),
        **({"input": summary["input"]} if summary["input"] else {}),
    }
    render_report(run.rows, run.tmp, title=title, generated_at=generated_at, summary=shown)
    run.tick("render", start)
    summary["timings"] = {k: round(v, 3) for k, v in run.timings.items()}
    summary["seconds"] = round(time.perf_counter() - started, 2)
    summary.update(out_dir=str(out), index=str(out / "index.html"), pdf=str(out / "report.pdf"))
    report = {"title": title, "generated_at": generated_at, "format": REPORT_FORMAT}
    _write_results(run, summary, report)
    (run.tmp / CACHE_NAME).write_text(
        json.dumps({"format": REPORT_FORMAT, "entries": run.cache_out}, default=_json_default), encoding="utf-8"
    )
    return summary


def format_summary(summary: Mapping[str, Any]) -> str:
    """The one-line summary printed at the end of a run.

    Example:
        >>> format_summary({"studies_read": 3, "flagged": 1, "failed": 1, "not_applicable": 0, "reused": 0,
        ...                 "seconds": 2.5, "index": "out/index.html"})
        'report: 3 studies read, 1 flagged, 1 failed, 0 not applicable, 2.5 s -> out/index.html'
    """
    reused = int(summary.get("reused") or 0)
    read = int(summary.get("studies_read") or 0)
    parts = [
        f"{read} {'study' if read == 1 else 'studies'} read",
        f"{summary.get('flagged', 0)} flagged",
        f"{summary.get('failed', 0)} failed",
        f"{summary.get('not_applicable', 0)} not applicable",
    ]
    if reused:
        parts.append(f"{reused} {'study' if reused == 1 else 'studies'} reused from the previous report")
    return f"report: {', '.join(parts)}, {float(summary.get('seconds') or 0):.1f} s -> {summary.get('index')}"
