"""Training and evaluation engines: one loop (:mod:`~medvision.engine.loop`) for every task."""

from medvision.engine.classification import ClassificationTask, predict_logits, train_classification
from medvision.engine.detection import DetectionTask, train_detection
from medvision.engine.evaluate import evaluate_registered
from medvision.engine.loop import Task, TrainingError, TrainResult, fit
from medvision.engine.reproduce import config_from_run, reproduce_run
from medvision.engine.tasks import TASKS, train

__all__ = [
    "TASKS",
    "ClassificationTask",
    "DetectionTask",
    "Task",
    "TrainResult",
    "TrainingError",
    "config_from_run",
    "evaluate_registered",
    "fit",
    "predict_logits",
    "reproduce_run",
    "train",
    "train_classification",
    "train_detection",
]
