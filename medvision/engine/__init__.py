"""Training and evaluation engines."""

from medvision.engine.classification import TrainingError, TrainResult, predict_logits, train_classification
from medvision.engine.evaluate import evaluate_registered
from medvision.engine.reproduce import config_from_run, reproduce_run

__all__ = [
    "TrainResult",
    "TrainingError",
    "config_from_run",
    "evaluate_registered",
    "predict_logits",
    "reproduce_run",
    "train_classification",
]
