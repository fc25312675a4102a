"""The report's models: which registered classifier and detector a run uses, and their provenance.

Owns model resolution through the registry only (``models:/pneumonia-classifier@champion``, else
``@candidate``, :func:`~medvision.tracking.registry.resolve_model_uri`; likewise ``tumor-detector``), the
lazy loading of their weights (only when a study needs them), and the provenance every row carries
(name, version, run id, URI, intended use, weights source). A missing model is not an exception here: it
becomes the error of its :class:`_Model`, and only the studies that need it fail.

A :class:`~medvision.engine.classify.ClassifierBundle` (or ``(module, metadata)``, checked against the typed
contract) and a :class:`VolumePredictor` (a :class:`~medvision.engine.detect.DetectorBundle`, or any object
with ``metadata`` and ``predict``) are what a caller may pass instead of a registered model (tests,
notebooks, benchmarks).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel

from medvision.engine.classify import ClassifierBundle
from medvision.errors import InputError, MedvisionError, ModelFormatError
from medvision.reporting.discover import CLASSIFICATION, DETECTION

__all__ = ["CLASSIFIER_NAME", "DETECTOR_NAME", "LoadedClassifier", "VolumePredictor"]

#: Registered model names the report looks for.
CLASSIFIER_NAME = "pneumonia-classifier"
DETECTOR_NAME = "tumor-detector"


#: What a caller may pass as the classifier: the bundle ``report``, ``predict`` and ``evaluate`` share (the name
#: this class had in the report before the typed model contract).
LoadedClassifier = ClassifierBundle


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

    from medvision.tracking.registry import model_provenance, resolve_model_uri
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
            classifier = ClassifierBundle.of(classifier[0], classifier[1], where="the classifier passed to the report")
        meta = _as_dict(classifier.metadata)
        model.provenance = {
            "name": meta.get("name", "classifier"),
            "version": meta.get("version"),
            "run_id": meta.get("run_id"),
            "uri": meta.get("uri"),
            **dict(classifier.provenance),
        }
        model.value = classifier.to(device)
        _complete_provenance(model)
        return model
    if not needed:
        return model

    def load(resolved: str) -> ClassifierBundle:
        from medvision.engine.classify import load_classifier_bundle

        with _quiet_mlflow():
            loaded = load_classifier_bundle(resolved, tracking_uri=tracking_uri)  # the contract, typed and checked
        loaded.provenance = model.provenance
        model.value = loaded.to(device)
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


def _as_dict(metadata: Any) -> dict[str, Any]:
    """A model's metadata as a dict: the typed contract (``medvision.models.contract``) or a plain mapping (a test
    double's)."""
    if isinstance(metadata, BaseModel):
        return metadata.model_dump()
    return dict(metadata or {})


def _complete_provenance(model: _Model) -> None:
    """Intended use and weights source from the loaded model's metadata, where the provenance lacks them."""
    meta = _as_dict(getattr(model.value, "metadata", None))
    for key in ("intended_use", "weights_source"):
        if model.provenance.get(key) is None:
            model.provenance[key] = meta.get(key)


def _detector_provenance(detector: Any) -> dict[str, Any]:
    """Name, version, run id, URI, intended use and weights source of a detector (metadata, then provenance)."""
    meta = _as_dict(getattr(detector, "metadata", None))
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
