"""What every training run records so that it can be repeated: the data digest, the git state, the package
versions, the command line, and the first params and tags of the MLflow run (both tasks alike)."""

from __future__ import annotations

import hashlib
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

import medvision
from medvision.config import ExperimentConfig, to_yaml

__all__ = ["dataset_digest", "git_state", "invocation_tags", "log_run_start", "package_versions"]


def dataset_digest(items: list[dict[str, Any]]) -> str:
    """A short digest of what was trained on: image paths relative to their common folder, labels, sizes."""
    paths = [Path(it["image"]) for it in items]
    root = Path(*_common_parts(paths)) if paths else Path()
    h = hashlib.sha256()
    for it, p in sorted(zip(items, paths, strict=True), key=lambda x: str(x[1])):
        size = p.stat().st_size if p.exists() else -1
        h.update(f"{p.relative_to(root) if root.parts else p}|{it['label']}|{size}\n".encode())
    return h.hexdigest()[:16]


def _common_parts(paths: list[Path]) -> tuple[str, ...]:
    parts = [p.parent.parts for p in paths]
    common: list[str] = []
    for column in zip(*parts, strict=False):
        if all(c == column[0] for c in column):
            common.append(column[0])
        else:
            break
    return tuple(common)


def git_state() -> dict[str, str]:
    """The medvision checkout's commit and whether it has uncommitted changes ("unknown" outside git)."""
    root = Path(medvision.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        return {"git_commit": commit, "git_dirty": str(bool(dirty)).lower()}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": "unknown", "git_dirty": "unknown"}


def package_versions() -> dict[str, str]:
    """Versions of the libraries that decide the numbers (and of Python)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "monai", "pydicom", "scikit-learn", "mlflow", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "missing"
    return out


def invocation_tags(config_path: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """How this run was started: the full command line, the working folder and the config file."""
    tags = {
        "command": " ".join(shlex.quote(arg) for arg in sys.argv) or sys.executable,
        "working_dir": str(Path.cwd()),
        "platform": platform.platform(),
    }
    if config_path is not None:
        tags["config_path"] = str(Path(config_path).expanduser().resolve())
    return tags


def log_run_start(
    tracker: Any,
    cfg: ExperimentConfig,
    *,
    weights_source: str,
    digest: str,
    device: torch.device,
    environment: Mapping[str, Any],
    config_path: str | os.PathLike[str] | None = None,
    tags: Mapping[str, str] | None = None,
    extra_tags: Mapping[str, str] | None = None,
    fallback_warning: str | None = None,
    skipped: tuple[str, int] = ("skipped_unreadable", 0),
) -> None:
    """What every new training run records first (classification and detection alike): the flattened config
    as params; tags (weights source, data digest, task, version, backbone, device, seed, git state, command
    line, any ``extra_tags`` and ``tags``); the resolved YAML; ``config/environment.json`` (package versions
    plus ``environment``); and the count of skipped inputs as a metric when there are any."""
    from medvision.tracking import flatten_config

    tracker.log_params(flatten_config(cfg.model_dump(mode="json")))
    tracker.set_tags(
        {
            "weights_source": weights_source,
            "dataset_digest": digest,
            "task": cfg.task,
            "medvision_version": medvision.__version__,
            "backbone": cfg.model.backbone,
            **dict(extra_tags or {}),
            "device": device.type,
            "seed": str(cfg.train.seed),
            **git_state(),
            **invocation_tags(config_path),
            **dict(tags or {}),
        }
    )
    if fallback_warning:
        tracker.set_tags({"tracking_fallback": fallback_warning})
    tracker.log_text(to_yaml(cfg), "config/resolved_config.yaml")
    tracker.log_dict({"packages": package_versions(), **dict(environment)}, "config/environment.json")
    name, count = skipped
    if count:
        tracker.log_metrics({name: float(count)})
