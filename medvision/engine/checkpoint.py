"""Checkpoints written atomically, so a crash mid-write never leaves a broken ``last.pt``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from medvision.errors import InputError


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (tensors and plain values only)."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no checkpoint to resume from", "run without --resume to start a new run")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises several types for a corrupt file
        raise InputError(
            path, f"checkpoint cannot be read ({type(exc).__name__})", "delete it and start again without --resume"
        ) from exc
