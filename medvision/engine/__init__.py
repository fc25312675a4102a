"""Training and evaluation engines."""

from medvision.engine.classification import TrainingError, TrainResult, predict_logits, train_classification
from medvision.engine.evaluate import evaluate_registered

__all__ = ["TrainResult", "TrainingError", "evaluate_registered", "predict_logits", "train_classification"]
