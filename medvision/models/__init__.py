"""Models: the backbone registry, ImageNet weights and the image classifier.

Example:
    >>> from medvision.models import create_model, list_models
    >>> list_models()
    ['densenet121', 'densenet169', 'densenet201', 'resnet101', 'resnet18', 'resnet34', 'resnet50']
    >>> model = create_model("resnet18", weights="none", in_channels=1, num_classes=1)
    >>> model.preprocessing["mean"]
    (0.449,)
"""

from __future__ import annotations

from medvision.models.classifier import Classifier, RandomInitWarning, create_model
from medvision.models.registry import BackboneSpec, get_spec, list_models, register_backbone
from medvision.models.weights import cache_dir, cached_weights_path, import_weights, is_cached

__all__ = [
    "BackboneSpec",
    "Classifier",
    "RandomInitWarning",
    "cache_dir",
    "cached_weights_path",
    "create_model",
    "get_spec",
    "import_weights",
    "is_cached",
    "list_models",
    "register_backbone",
]
