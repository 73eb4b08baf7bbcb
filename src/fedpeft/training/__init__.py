"""Local training loop, step-level trainer, pluggable losses, evaluation, metrics and hidden-state features."""

from fedpeft.training.evaluate import evaluate_classification, evaluate_generation, evaluate_lm, generate
from fedpeft.training.features import last_token_features, layer_features, prompt_features
from fedpeft.training.loop import TrainConfig, TrainResult, train
from fedpeft.training.losses import LossFn, distillation_loss, label_words_loss, lm_loss, make_loss
from fedpeft.training.trainer import Trainer

__all__ = [
    "LossFn",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "distillation_loss",
    "evaluate_classification",
    "evaluate_generation",
    "evaluate_lm",
    "generate",
    "label_words_loss",
    "last_token_features",
    "layer_features",
    "lm_loss",
    "make_loss",
    "prompt_features",
    "train",
]
