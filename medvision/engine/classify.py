"""A registered classifier ready for radiographs: :class:`ClassifierBundle` (the detector's is
:class:`~medvision.engine.detect.DetectorBundle`). ``report`` and ``evaluate`` both use it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from medvision.models.contract import ClassifierMetadata, parse_metadata

__all__ = ["ClassifierBundle", "load_classifier_bundle"]


@dataclass
class ClassifierBundle:
    """The network, its contract (preprocessing, temperature, threshold, intended use) and its provenance.

    Attributes:
        module: the network (a medvision ``Classifier`` gets Grad-CAM in the report; other modules none).
        metadata: the typed contract it was registered with.
        provenance: ``name``, ``version``, ``run_id``, ``uri`` (what the report and the SR cite).
    """

    module: Any
    metadata: ClassifierMetadata
    provenance: dict[str, Any] = field(default_factory=dict)
    _chain: Any = field(default=None, init=False, repr=False)

    @classmethod
    def of(
        cls, module: Any, metadata: Any, provenance: dict[str, Any] | None = None, where: str = "classifier"
    ) -> ClassifierBundle:
        """A bundle from a module and its metadata (a registry document or an already typed contract)."""
        if not isinstance(metadata, ClassifierMetadata):
            parsed = parse_metadata(metadata, where)
            if not isinstance(parsed, ClassifierMetadata):
                from medvision.errors import ModelFormatError

                raise ModelFormatError(where, f"is a {parsed.task} model, not a classifier", "pass a classifier")
            metadata = parsed
        return cls(module, metadata, dict(provenance or {}))

    @property
    def threshold(self) -> float:
        return self.metadata.threshold

    @property
    def temperature(self) -> float:
        return self.metadata.temperature

    def transforms(self) -> Any:
        """The inference chain (built once)."""
        if self._chain is None:
            self._chain = self.metadata.transforms()
        return self._chain

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of ``logits`` (the registered temperature)."""
        from medvision.metrics import apply_temperature

        return apply_temperature(np.asarray(logits, dtype=np.float64), self.temperature)

    def to(self, device: str | torch.device) -> ClassifierBundle:
        self.module = self.module.to(device)
        return self


def load_classifier_bundle(uri: str, *, tracking_uri: str | None = None) -> ClassifierBundle:
    """Load a registered classifier (``models:/pneumonia-classifier@champion``, ``models:/NAME/VERSION``, ...).

    Raises:
        TrackingError: the model does not exist; ModelFormatError: it is not a medvision classifier, or its
        metadata does not fit the contract (the field is named).
    """
    from medvision.tracking.registry import load_model_with_metadata

    module, raw, pinned = load_model_with_metadata(uri, tracking_uri=tracking_uri)
    return ClassifierBundle.of(module, raw, {"uri": pinned}, where=pinned)
