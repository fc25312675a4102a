"""medvision: train, evaluate and report medical-imaging models with MONAI, torchvision and MLflow."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
