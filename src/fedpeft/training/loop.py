"""The local training loop: one readable function that every runtime and algorithm calls for client-side steps.

It trains whatever parameters have ``requires_grad`` (the attached adapter) on already-encoded examples
(``input_ids`` / ``labels`` / ``prompt_length`` / ``label`` per example, see :mod:`fedpeft.data.tokenize`).
Two losses: ``lm`` (next-token cross-entropy on response tokens only) and ``label_words`` (cross-entropy over the
label words' logits at the last prompt position: the classification loss that works best for small models).
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

from fedpeft.adapters import adapter_after_step
from fedpeft.data.tokenize import label_word_logits, pick_label_words
from fedpeft.errors import ConfigError

Loss = Literal["lm", "label_words"]
Schedule = Literal["constant", "linear", "cosine"]
Precision = Literal["auto", "fp32", "bf16"]

_LOSSES = ("lm", "label_words")
_SCHEDULES = ("constant", "linear", "cosine")
_PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class TrainConfig:
    """Local optimisation settings.

    ``steps`` counts optimizer updates; each update sees ``batch_size * grad_accum`` examples.
    ``balanced_sampling`` draws examples with probability inversely proportional to their label's frequency, which
    counters label skew on a client without sharing anything (ALGORITHMS.md §1, heterogeneity).
    """

    steps: int = 100
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 3e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: Schedule = "constant"
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    loss: Loss = "lm"
    precision: Precision = "auto"
    balanced_sampling: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name}", getattr(self, name), "an integer >= 1")
        if not self.lr > 0:
            raise ConfigError("train.lr", self.lr, "a positive float")
        if self.warmup_steps < 0:
            raise ConfigError("train.warmup_steps", self.warmup_steps, "an integer >= 0")
        if self.max_grad_norm < 0:
            raise ConfigError("train.max_grad_norm", self.max_grad_norm, "a float >= 0 (0 disables clipping)")
        if self.loss not in _LOSSES:
            raise ConfigError("train.loss", self.loss, _LOSSES)
        if self.schedule not in _SCHEDULES:
            raise ConfigError("train.schedule", self.schedule, _SCHEDULES)
        if self.precision not in _PRECISIONS:
            raise ConfigError("train.precision", self.precision, _PRECISIONS)
        self.betas = (float(self.betas[0]), float(self.betas[1]))


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


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based) of ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


def autocast_context(device: torch.device, precision: str) -> Any:
    """bf16 autocast on CUDA with bf16 support (``auto``) or when asked; plain fp32 otherwise.

    On CPU ``auto`` means fp32: for the small matrices of tiny models bf16 autocast is no faster there
    and costs accuracy.
    """
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    return torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()


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
    """Mean loss of one collated batch (see :func:`fedpeft.data.collate`)."""
    if loss == "lm":
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        return out.loss
    scores = label_scores(model, batch, word_ids)  # [B, n_labels]
    return F.cross_entropy(scores.float(), batch["label"])


def _supports_logits_to_keep(model: torch.nn.Module) -> bool:
    """True when the model can project only chosen positions onto the vocabulary (Hugging Face ``logits_to_keep``).

    Prompt-learning adapters prepend virtual tokens, which shifts positions, so they take the full path.
    """
    if getattr(model, "_is_prompt_learning", False):
        return False
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # type: ignore[operator]
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def label_scores(
    model: torch.nn.Module, batch: Mapping[str, torch.Tensor], word_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """Label-word logits at the last prompt position: [B, n_labels].

    ``word_ids`` are the dataset's label words; without them each row's own ``batch["choices"]`` are used (a
    multi-task mix, where tasks have different label words).

    Only that one position per row is projected onto the vocabulary when the model allows it, instead of all T:
    for the tiny bundled models the vocabulary projection is about half of all compute, so this roughly halves a
    classification step. ``test_label_scores_fast_path_matches_full_logits`` checks both paths agree.
    """
    ids = word_ids if word_ids is not None else batch.get("choices")
    if ids is None:
        raise ValueError("label-word scoring needs the dataset's label word ids or per-example 'choices'")
    if _supports_logits_to_keep(model):
        pos = (batch["prompt_length"] - 1).unsqueeze(1)  # [B, 1]
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=pos).logits
        return pick_label_words(logits[:, 0], ids)  # [B, n_labels]
    return label_word_logits(forward_logits(model, batch), batch["prompt_length"], ids)


def forward_logits(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Logits aligned with ``input_ids``: [B, T, V].

    Prompt tuning and P-tuning prepend virtual tokens, so their logits are longer than the input; the real positions
    are the last T.
    """
    ids = batch["input_ids"]
    logits = model(input_ids=ids, attention_mask=batch["attention_mask"]).logits
    return logits[:, -ids.shape[1] :]


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
) -> TrainResult:
    """Run ``cfg.steps`` optimizer steps of AdamW on the model's trainable parameters.

    Parameters
    ----------
    model:
        Model with the adapter attached; only parameters with ``requires_grad`` are optimised.
    examples:
        Encoded examples (``input_ids``, ``labels``, ``prompt_length``, ``label``).
    cfg:
        Local optimisation settings.
    collate:
        Turns a list of examples into padded tensors (``fedpeft.data.collate`` bound to a pad id).
    word_ids:
        Label-word token ids, required for ``loss="label_words"``.
    extra_loss:
        Added to the task loss every micro-batch, e.g. FedProx's proximal term ``mu/2 * ||w - w_global||^2``.
    generator:
        Data-order generator; defaults to one seeded with ``cfg.seed`` (never the global RNG).
    on_step:
        Called with (step, loss) after each optimizer step, for progress display.
    """
    if not examples:
        raise ConfigError("examples", "[]", "at least one training example")
    if cfg.loss == "label_words" and word_ids is None and "choices" not in examples[0]:
        raise ConfigError("train.loss", cfg.loss, "'lm' unless the dataset defines label words")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("adapter", "none", "a model with trainable (adapter) parameters; attach one first")
    device = params[0].device
    gen = generator if generator is not None else torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)

    micro = cfg.steps * cfg.grad_accum
    order = sample_indices(
        [int(e.get("label", -1)) for e in examples], micro * cfg.batch_size, gen, cfg.balanced_sampling
    )
    result = TrainResult(steps=0, examples=0, seconds=0.0)
    t0 = time.perf_counter()
    model.train()
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = cfg.lr * lr_factor(step, cfg.steps, cfg.warmup_steps, cfg.schedule)
        step_loss = 0.0
        for m in range(cfg.grad_accum):
            start = (step * cfg.grad_accum + m) * cfg.batch_size
            batch = collate([examples[i] for i in order[start : start + cfg.batch_size]])
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast_context(device, cfg.precision):
                loss = batch_loss(model, batch, cfg.loss, word_ids)
                if extra_loss is not None:
                    loss = loss + extra_loss(model)
            (loss / cfg.grad_accum).backward()
            step_loss += float(loss.detach()) / cfg.grad_accum
            result.examples += batch["input_ids"].shape[0]
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        adapter_after_step(model, step)  # AdaLoRA reallocates ranks here; a no-op for other methods
        opt.zero_grad(set_to_none=True)
        result.steps += 1
        result.losses.append(step_loss)
        if on_step is not None:
            on_step(step, step_loss)
    model.eval()
    result.seconds = time.perf_counter() - t0
    return result
