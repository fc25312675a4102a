"""The task registry: ``task:`` in a config names a :class:`~medvision.engine.loop.Task` here.

``train``, ``evaluate`` and ``reproduce`` all dispatch through :data:`TASKS`, so a new task (segmentation,
say) is one module with a class that follows the protocol, added with :func:`register_task`. This module
imports the tasks, and the tasks import :mod:`medvision.engine.loop`: the loop never imports a task.
"""

from __future__ import annotations

from typing import Any

from medvision.config import ExperimentConfig
from medvision.engine.classification import ClassificationTask
from medvision.engine.detection import DetectionTask
from medvision.engine.loop import Task, TrainResult, fit
from medvision.errors import ConfigError

__all__ = ["TASKS", "get_task", "register_task", "task_class", "train"]

#: The tasks by name (``task:`` in the config, ``task`` in a registered model's metadata).
TASKS: dict[str, Any] = {}


def register_task(cls: type) -> type:
    """Make a task class available to ``train``, ``evaluate`` and ``reproduce`` under its ``name``."""
    if not isinstance(getattr(cls, "name", None), str):
        raise TypeError(f"{cls.__name__} has no task name (a class attribute `name`)")
    TASKS[cls.name] = cls
    return cls


register_task(ClassificationTask)
register_task(DetectionTask)


def task_class(name: str, where: str = "task") -> Any:
    """The task class registered as ``name`` (its ``evaluate`` needs no config)."""
    if name not in TASKS:
        raise ConfigError(where, f"{name!r} has no trainer in this version", f"use one of: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def get_task(cfg: ExperimentConfig) -> Task:
    """The task ``cfg.task`` names, built for ``cfg``."""
    return task_class(cfg.task)(cfg)


def train(cfg: ExperimentConfig, **options: Any) -> TrainResult:
    """Train, evaluate and register the model ``cfg`` describes, whatever its task: :func:`~medvision.engine.loop.fit`
    (``options``: ``resume``, ``progress``, ``config_path``, ``tags``)."""
    return fit(get_task(cfg), cfg, **options)
