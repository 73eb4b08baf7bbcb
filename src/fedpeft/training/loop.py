"""The local training loop: one readable function that every runtime and algorithm calls for client-side steps.

It trains whatever parameters have ``requires_grad`` (the attached adapter) on already-encoded examples
(``input_ids`` / ``labels`` / ``prompt_length`` / ``label`` per example, see :mod:`fedpeft.data.tokenize`).
Two named losses: ``lm`` (next-token cross-entropy on response tokens only) and ``label_words`` (cross-entropy over
the label words' logits at the last prompt position: the classification loss that works best for small models); any
other loss ``(model, batch) -> scalar`` plugs in through ``loss_fn`` (see :mod:`fedpeft.training.losses`).

The updates themselves are :class:`fedpeft.training.trainer.Trainer`'s; this module draws the data and loops.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from fedpeft.config import TrainConfig
from fedpeft.errors import ConfigError
from fedpeft.training.losses import LossFn, forward_logits, label_scores, loss_key, make_loss
from fedpeft.training.losses import _supports_logits_to_keep as _supports_logits_to_keep  # used by benchmarks
from fedpeft.training.trainer import Trainer, autocast_context, lr_factor

__all__ = [
    "TrainConfig",
    "TrainResult",
    "autocast_context",
    "batch_loss",
    "forward_logits",
    "label_scores",
    "lr_factor",
    "sample_indices",
    "train",
]


@dataclass
class TrainResult:
    """What one call of :func:`train` did."""

    steps: int
    examples: int
    seconds: float
    losses: list[float] = field(default_factory=list)  # one per optimizer step

    @property
    def mean_loss(self) -> float:
        return sum(self.losses) / len(self.losses) if self.losses else float("nan")


def sample_indices(labels: Sequence[int], n: int, generator: torch.Generator, balanced: bool) -> list[int]:
    """``n`` example indices: shuffled epochs (sampling without replacement), or class-balanced with replacement."""
    size = len(labels)
    if balanced:
        lab = torch.tensor(list(labels))
        counts = torch.bincount(lab.clamp(min=0))
        weights = 1.0 / counts[lab.clamp(min=0)].double()  # [size]: rare labels drawn as often as common ones
        return torch.multinomial(weights, n, replacement=True, generator=generator).tolist()
    out: list[int] = []
    while len(out) < n:
        out.extend(torch.randperm(size, generator=generator).tolist())
    return out[:n]


def batch_loss(
    model: torch.nn.Module, batch: Mapping[str, torch.Tensor], loss: str, word_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean loss of one collated batch (see :func:`fedpeft.data.collate`) under the named loss."""
    return make_loss(loss, word_ids)(model, batch)


def train(
    model: torch.nn.Module,
    examples: Sequence[Mapping[str, Any]],
    cfg: TrainConfig,
    collate: Callable[[Sequence[Mapping[str, Any]]], dict[str, torch.Tensor]],
    *,
    word_ids: torch.Tensor | None = None,
    extra_loss: Callable[[torch.nn.Module], torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    on_step: Callable[[int, float], None] | None = None,
    loss_fn: LossFn | None = None,
    trainer: Trainer | None = None,
) -> TrainResult:
    """Run ``cfg.steps`` optimizer steps of AdamW on the model's trainable parameters.

    Parameters
    ----------
    model:
        Model with the adapter attached; only parameters with ``requires_grad`` are optimised.
    examples:
        Encoded examples (``input_ids``, ``labels``, ``prompt_length``, ``label``).
    cfg:
        Local optimisation settings; ``steps``, ``batch_size``, ``balanced_sampling`` and ``seed`` decide the data
        this call draws.
    collate:
        Turns a list of examples into padded tensors (``fedpeft.data.collate`` bound to a pad id).
    word_ids:
        Label-word token ids, required for ``loss="label_words"``.
    extra_loss:
        Added to the task loss every micro-batch, e.g. FedProx's proximal term ``mu/2 * ||w - w_global||^2``.
    generator:
        Data-order generator; defaults to one seeded with ``cfg.seed`` (0 when None; never the global RNG).
    on_step:
        Called with (step, loss) after each optimizer step, for progress display.
    loss_fn:
        The task loss ``(model, batch) -> scalar`` (e.g. :func:`fedpeft.training.losses.distillation_loss`);
        default: the trainer's loss, which for a new trainer is ``cfg.loss`` with ``word_ids``.
    trainer:
        A :class:`Trainer` of ``model`` to continue (its optimizer state, step count and schedule); default a new
        one built from ``cfg``, i.e. a fresh AdamW per call.
    """
    if not examples:
        raise ConfigError("examples", "[]", "at least one training example")
    if loss_fn is None and cfg.loss == "label_words" and word_ids is None and "choices" not in examples[0]:
        raise ConfigError("train.loss", cfg.loss, "'lm' unless the dataset defines label words")
    if trainer is None:
        trainer = Trainer(model, cfg, loss_fn, word_ids=word_ids)
    elif trainer.model is not model:
        raise ValueError("trainer was built for another model")
    elif trainer.cfg.grad_accum != cfg.grad_accum:
        raise ConfigError("train.grad_accum", cfg.grad_accum, f"the trainer's grad_accum ({trainer.cfg.grad_accum})")
    task_loss = loss_fn if loss_fn is not None else trainer.loss
    loss = task_loss if extra_loss is None else _plus(task_loss, extra_loss)
    gen = generator if generator is not None else torch.Generator().manual_seed(cfg.seed or 0)

    micro = cfg.steps * cfg.grad_accum
    order = sample_indices(
        [int(e.get("label", -1)) for e in examples], micro * cfg.batch_size, gen, cfg.balanced_sampling
    )
    result = TrainResult(steps=0, examples=0, seconds=0.0)
    t0 = time.perf_counter()
    model.train()
    for step in range(cfg.steps):
        step_loss = 0.0
        for m in range(cfg.grad_accum):
            start = (step * cfg.grad_accum + m) * cfg.batch_size
            batch = collate([examples[i] for i in order[start : start + cfg.batch_size]])
            step_loss += trainer.accumulate(batch, loss) / cfg.grad_accum
            result.examples += batch["input_ids"].shape[0]
        trainer.apply()
        result.steps += 1
        result.losses.append(step_loss)
        if on_step is not None:
            on_step(step, step_loss)
    model.eval()
    result.seconds = time.perf_counter() - t0
    return result


def _plus(task_loss: LossFn, extra_loss: Callable[[torch.nn.Module], torch.Tensor]) -> LossFn:
    """``task_loss(model, batch) + extra_loss(model)``: a regulariser added to every micro-batch's loss."""

    def loss(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return task_loss(model, batch) + extra_loss(model)

    loss.flops_key = ("plus", *loss_key(task_loss), *loss_key(extra_loss))  # type: ignore[attr-defined,arg-type]
    return loss
