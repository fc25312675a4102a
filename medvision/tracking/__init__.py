"""MLflow tracking: the store, the run, the model registry, the PHI guard and the model card.

This is the only part of medvision that talks to MLflow. MLflow (and torch) are imported inside
the functions that need them, so ``import medvision.tracking`` stays cheap.

Example:
    >>> from medvision.tracking import resolve_tracking_uri, ensure_tracking_available
    >>> uri, warning = ensure_tracking_available(resolve_tracking_uri(None))  # doctest: +SKIP
"""

from __future__ import annotations

from medvision.tracking.card import render_model_card
from medvision.tracking.phi import PhiGuard, new_salt, salted_hash
from medvision.tracking.registry import (
    load_classifier,
    load_model_with_metadata,
    load_state_dict_from_uri,
    log_classifier,
    model_provenance,
    parse_model_uri,
    resolve_model_uri,
)
from medvision.tracking.run import RunTracker, flatten_config
from medvision.tracking.store import DEFAULT_TRACKING_URI, ensure_tracking_available, resolve_tracking_uri

__all__ = [
    "DEFAULT_TRACKING_URI",
    "PhiGuard",
    "RunTracker",
    "ensure_tracking_available",
    "flatten_config",
    "load_classifier",
    "load_model_with_metadata",
    "load_state_dict_from_uri",
    "log_classifier",
    "model_provenance",
    "new_salt",
    "parse_model_uri",
    "render_model_card",
    "resolve_model_uri",
    "resolve_tracking_uri",
    "salted_hash",
]
