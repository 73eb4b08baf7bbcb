"""Client-side local training and local evaluation, shared by every algorithm's client handlers.

An algorithm's client loads a start adapter, trains it with the job's local settings, and sends something derived
from the result (an update, a truncated state, one state per task). Written once here, so the FedAvg family, FLoRA
and FL-TAC draw the same random stream for the same (round, client, salt), report the same metrics, and score
adapters the same way; no algorithm package imports another's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from fedpeft.adapters import adapter_state, load_adapter_state
from fedpeft.algorithms.aggregation import State
from fedpeft.algorithms.base import ClientContext, Msg
from fedpeft.config import TrainConfig
from fedpeft.training.evaluate import evaluate_classification, evaluate_lm
from fedpeft.training.loop import TrainResult, train
from fedpeft.training.losses import LossFn
from fedpeft.training.trainer import Trainer

Examples = Sequence[Mapping[str, Any]]


def round_train_config(ctx: ClientContext, msg: Msg) -> TrainConfig:
    """The job's local training settings with this round's learning rate (sent by the server)."""
    return dataclasses.replace(ctx.cfg.train, lr=float(msg.config.get("lr", ctx.cfg.train.lr)))


def train_local(
    ctx: ClientContext,
    start: State,
    examples: Examples,
    cfg: TrainConfig,
    rnd: int,
    *salt: int | str,
    extra_loss: Callable[[torch.nn.Module], torch.Tensor] | None = None,
    loss_fn: LossFn | None = None,
    trainer: Trainer | None = None,
) -> tuple[State, TrainResult]:
    """Load ``start`` into the client's model and train it on ``examples``.

    Parameters
    ----------
    ctx:
        The client; its model, collate function and label words are used.
    start:
        Adapter state to start from (the one received, or one the algorithm built, e.g. a fresh LoRA).
    examples:
        Encoded examples to train on (the client's whole train split, or one task's share of it).
    cfg:
        Local settings, usually :func:`round_train_config`.
    rnd:
        Round number.
    salt:
        Further seed parts after ``"train"`` (FL-TAC: the task slot), so that each training run of a round has
        its own stream: the generator is ``ctx.generator(rnd, "train", *salt)``.
    extra_loss:
        Added to the loss every step (FedProx's proximal term).
    loss_fn:
        The task loss ``(model, batch) -> scalar`` instead of ``cfg.loss`` (e.g. a class-weighted or a
        distillation loss; see :mod:`fedpeft.training.losses`).
    trainer:
        A :class:`~fedpeft.training.trainer.Trainer` of ``ctx.model`` to continue (its optimizer state restored
        from the client's state with ``load_state_dict``); default a fresh AdamW.

    Returns
    -------
    (State, TrainResult)
        The trained adapter state (detached clones) and what :func:`~fedpeft.training.loop.train` did.
    """
    load_adapter_state(ctx.model, start)
    result = train(
        ctx.model,
        examples,
        cfg,
        ctx.data.collate,
        word_ids=ctx.data.word_ids,
        extra_loss=extra_loss,
        loss_fn=loss_fn,
        trainer=trainer,
        generator=ctx.generator(rnd, "train", *salt),
    )
    return adapter_state(ctx.model), result


def train_metrics(ctx: ClientContext, result: TrainResult) -> dict[str, float]:
    """What a client reports after training on its whole train split."""
    return {
        "num_examples": len(ctx.data.train),
        "loss": result.mean_loss,
        "steps": result.steps,
        "seconds": round(result.seconds, 3),
    }


def _score_label_words(ctx: ClientContext, examples: Examples) -> dict[str, float]:
    metrics = evaluate_classification(ctx.model, examples, ctx.data.collate, ctx.data.word_ids)
    return {"accuracy": metrics["accuracy"]}


def _score_lm(ctx: ClientContext, examples: Examples) -> dict[str, float]:
    return evaluate_lm(ctx.model, examples, ctx.data.collate)


#: How local examples are scored, by ``ClientData.eval_mode`` (any other mode: the LM loss on the responses),
#: and the metric each scorer headlines.
_SCORERS: dict[str, tuple[Callable[[ClientContext, Examples], dict[str, float]], str]] = {
    "label_words": (_score_label_words, "accuracy"),
}
_LM = (_score_lm, "loss")


def local_metric(ctx: ClientContext) -> str:
    """The metric :func:`evaluate_examples` headlines for this client's data: ``accuracy`` or ``loss``."""
    return _SCORERS.get(ctx.data.eval_mode, _LM)[1]


def evaluate_examples(ctx: ClientContext, state: State, examples: Examples) -> dict[str, float]:
    """Score ``state`` on ``examples``: ``num_examples`` plus :func:`local_metric` (and the LM's other metrics)."""
    if not examples:
        return {"num_examples": 0}
    load_adapter_state(ctx.model, state)
    score = _SCORERS.get(ctx.data.eval_mode, _LM)[0]
    return {"num_examples": len(examples), **score(ctx, examples)}


def evaluate_local(ctx: ClientContext, state: State, limit: int) -> dict[str, float]:
    """Score ``state`` on this client's local test split (at most ``limit`` examples)."""
    return evaluate_examples(ctx, state, list(ctx.data.test)[:limit])
