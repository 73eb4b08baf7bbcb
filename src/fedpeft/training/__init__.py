"""Local training loop, evaluation and metrics."""

from fedpeft.training.evaluate import evaluate_classification, evaluate_generation, evaluate_lm, generate
from fedpeft.training.loop import TrainConfig, TrainResult, train

__all__ = [
    "TrainConfig",
    "TrainResult",
    "evaluate_classification",
    "evaluate_generation",
    "evaluate_lm",
    "generate",
    "train",
]
