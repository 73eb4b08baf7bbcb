"""Step-level training: an AdamW optimizer over a model's trainable parameters that persists across calls.

:func:`fedpeft.training.loop.train` is a loop over :meth:`Trainer.accumulate` and :meth:`Trainer.apply`; algorithms
that need finer control call the steps themselves:

>>> trainer = Trainer(model, cfg)                       # default loss from cfg.loss
>>> trainer.step(batch)                                 # one update: forward, loss, backward, clip, AdamW
>>> hidden = trainer.forward(forward_bottom, model, ids, mask, cut)   # split learning: the client's layers ...
>>> trainer.backward_from(grad_from_server)             # ... backpropagate the server's d loss / d hidden
>>> trainer.apply()
>>> ctx.state.update(trainer.state_dict())              # tensors and ints only: survives Flower's process boundaries

The optimizer state is flat (``opt/<param name>/exp_avg`` ...) so that it fits a client's persistent state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from fedpeft.adapters import adapter_after_step
from fedpeft.errors import ConfigError
from fedpeft.training.flops import FLOPS, add_flops, shape_key
from fedpeft.training.losses import LossFn, loss_key, make_loss

__all__ = ["OptimSettings", "Trainer", "autocast_context", "lr_factor"]


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based) of ``total``.

    Past ``total`` (a trainer kept across calls) linear and cosine stay at their final value, 0.
    """
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
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


class OptimSettings(Protocol):
    """The fields of :class:`fedpeft.training.loop.TrainConfig` a :class:`Trainer` reads (declared here, not
    imported, so that loop.py can build on this module without an import circle)."""

    @property
    def steps(self) -> int: ...  # length of the learning-rate schedule, in updates
    @property
    def grad_accum(self) -> int: ...
    @property
    def lr(self) -> float: ...
    @property
    def weight_decay(self) -> float: ...
    @property
    def betas(self) -> tuple[float, float]: ...
    @property
    def schedule(self) -> str: ...
    @property
    def warmup_steps(self) -> int: ...
    @property
    def max_grad_norm(self) -> float: ...
    @property
    def loss(self) -> str: ...
    @property
    def precision(self) -> str: ...


class Trainer:
    """AdamW on the trainable parameters of ``model``, one micro-batch or one update at a time.

    Parameters
    ----------
    model
        Model with the adapter attached; only parameters with ``requires_grad`` are optimised. The trainer does not
        switch train/eval mode: that is the caller's choice (``train()`` sets train mode for its loop).
    cfg
        A ``TrainConfig``: lr, betas, weight decay, schedule over ``cfg.steps`` updates (counted by
        :attr:`step_count`, across calls), warmup, gradient clipping, ``grad_accum`` and precision.
    loss
        The loss ``(model, batch) -> scalar``; default ``make_loss(cfg.loss, word_ids)``.
    word_ids
        Label-word token ids for the default ``label_words`` loss.

    Attributes
    ----------
    step_count : int
        Updates applied so far (restored by :meth:`load_state_dict`); drives the schedule and the adapter hook.
    """

    def __init__(
        self, model: torch.nn.Module, cfg: OptimSettings, loss: LossFn | None = None, *, word_ids: Tensor | None = None
    ) -> None:
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ConfigError("adapter", "none", "a model with trainable (adapter) parameters; attach one first")
        self.model = model
        self.cfg = cfg
        self.loss: LossFn = loss if loss is not None else make_loss(cfg.loss, word_ids)
        self.param_names = [name for name, _ in named]
        self.params = [p for _, p in named]
        self.device = self.params[0].device
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        self.step_count = 0
        self._output: Tensor | None = None  # the last forward()'s output, for backward_from

    # --- one update ---------------------------------------------------------------------------------------------

    def accumulate(self, batch: Mapping[str, Tensor], loss: LossFn | None = None) -> float:
        """Forward, loss and backward of one micro-batch; gradients add up until :meth:`apply`.

        The loss is divided by ``cfg.grad_accum`` before backward, so ``grad_accum`` calls then :meth:`apply` make
        one update on the mean loss. ``loss`` overrides the trainer's loss for this call. Returns the micro-batch's
        (undivided) loss.
        """
        batch = {k: v.to(self.device) for k, v in batch.items()}
        fn = loss if loss is not None else self.loss

        b, t = (int(n) for n in batch["input_ids"].shape[:2]) if "input_ids" in batch else (0, 0)
        key = shape_key(self.model, "train", loss_key(fn))
        known = FLOPS.predict(key, b, t)
        counting = known is None  # FLOPs of this shape not known yet: count this step (numbers unchanged)
        counter = FlopCounterMode(display=False) if counting else nullcontext()
        with counter as fwd, autocast_context(self.device, self.cfg.precision):
            value = fn(self.model, batch)  # scalar
        scaled = value / self.cfg.grad_accum
        if counting and scaled.requires_grad:
            assert fwd is not None
            known = int(fwd.get_total_flops()) + self.count_backward(scaled)
            FLOPS.record(key, b, t, known)
        add_flops(known or 0)
        scaled.backward()  # the real backward, never under the counter
        return float(value.detach())

    def count_backward(self, scaled: Tensor) -> int:
        """FLOPs of the backward of ``scaled``, counted on a throwaway pass (gradients are not accumulated)."""
        with FlopCounterMode(display=False) as bwd:
            torch.autograd.grad(scaled, self.params, retain_graph=True, allow_unused=True)
        return int(bwd.get_total_flops())

    def grad_sq_norm(self) -> float:
        """The squared L2 norm of the accumulated gradients (parameters without a gradient count 0)."""
        grads = [p.grad.detach().double() for p in self.params if p.grad is not None]
        return float(sum((g * g).sum() for g in grads)) if grads else 0.0

    def apply(self, other_sq_norm: float | None = None) -> None:
        """One optimizer update from the accumulated gradients, then clear them.

        Order (kept bit-identical to the loop before this class existed): learning rate of this step, gradient
        clipping to ``cfg.max_grad_norm`` (0 disables), AdamW step, the adapter's per-step hook (AdaLoRA rank
        reallocation), gradients set to None.

        ``other_sq_norm``: the squared gradient norm of parameters trained elsewhere in the same step (split
        learning: the other side's :meth:`grad_sq_norm`). Clipping then uses the joint norm
        ``sqrt(own^2 + other^2)``, so that both sides scale their gradients exactly as one model's clipping would.
        """
        cfg = self.cfg
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.lr * lr_factor(self.step_count, cfg.steps, cfg.warmup_steps, cfg.schedule)
        if cfg.max_grad_norm > 0 and other_sq_norm is not None:
            total = math.sqrt(self.grad_sq_norm() + other_sq_norm)
            coef = min(1.0, cfg.max_grad_norm / (total + 1e-6))  # torch's clip_grad_norm_ rule
            for p in self.params:
                if p.grad is not None:
                    p.grad.mul_(coef)
        elif cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
        self.optimizer.step()
        adapter_after_step(self.model, self.step_count)  # a no-op for every method but AdaLoRA
        self.optimizer.zero_grad(set_to_none=True)
        self.step_count += 1

    def step(self, batch: Mapping[str, Tensor]) -> float:
        """One update on one batch (:meth:`accumulate` then :meth:`apply`); returns its loss.

        With ``cfg.grad_accum > 1`` the batch's gradient is scaled down like one of several micro-batches; call
        :meth:`accumulate` ``grad_accum`` times and :meth:`apply` instead to use accumulation.
        """
        value = self.accumulate(batch)
        self.apply()
        return value

    # --- split learning: gradients that come from elsewhere -----------------------------------------------------

    def forward(self, fn: Callable[..., Tensor], *args: Any, **kwargs: Any) -> Tensor:
        """Run ``fn(*args, **kwargs)`` under the trainer's autocast and remember its output for :meth:`backward_from`.

        Typically the client's part of a split model (:func:`fedpeft.models.split.forward_bottom`); send
        ``output.detach()`` on, and feed the gradient that comes back to :meth:`backward_from`.
        """
        with autocast_context(self.device, self.cfg.precision):
            output = fn(*args, **kwargs)
        if not isinstance(output, Tensor):
            raise TypeError(f"forward() needs a function returning a tensor; got {type(output).__name__}")
        self._output = output
        return output

    def backward_from(self, grad: Tensor, output: Tensor | None = None, *, scale: bool = True) -> None:
        """Backpropagate ``grad`` = d loss / d ``output`` into the trainable parameters (gradients accumulate).

        ``output`` defaults to the last :meth:`forward` output, whose graph is released afterwards. Like
        :meth:`accumulate`, the gradient is divided by ``cfg.grad_accum`` (``scale=False``: ``grad`` is already
        d (loss / grad_accum) / d output, e.g. computed by a :meth:`accumulate` on the other side); then call
        :meth:`apply`. Nothing happens
        when ``output`` does not depend on a trainable parameter.
        """
        out = output if output is not None else self._output
        if out is None:
            raise RuntimeError("backward_from() needs an output: call forward() first or pass output=")
        if grad.shape != out.shape:
            raise ValueError(f"gradient shape {tuple(grad.shape)} does not match the output's {tuple(out.shape)}")
        if out.requires_grad:  # else no trainable parameter lies below it (e.g. cut 0: frozen embeddings only)
            out.backward(grad.to(device=out.device, dtype=out.dtype) / (self.cfg.grad_accum if scale else 1))
        if output is None:
            self._output = None

    # --- persistent state ---------------------------------------------------------------------------------------

    def state_dict(self, prefix: str = "opt/") -> dict[str, Tensor | int | float]:
        """The optimizer state, flat: ``<prefix><param name>/<field>`` tensors and ``<prefix>step_count``.

        Only tensors and Python numbers, so that it can live in a client's persistent state (Flower's
        ``context.state``). Parameters that never received a gradient have no entries, as in AdamW itself.
        """
        out: dict[str, Tensor | int | float] = {}
        for name, p in zip(self.param_names, self.params, strict=True):
            for field, value in self.optimizer.state.get(p, {}).items():  # step, exp_avg, exp_avg_sq
                out[f"{prefix}{name}/{field}"] = value.detach().clone() if isinstance(value, Tensor) else value
        out[f"{prefix}step_count"] = self.step_count
        return out

    def load_state_dict(self, state: Mapping[str, Any], prefix: str = "opt/") -> None:
        """Restore :meth:`state_dict` output found under ``prefix`` in ``state`` (other keys are ignored).

        No key under ``prefix`` means a fresh optimizer (first round). The tensors are copied, so later updates do
        not write into ``state``.

        Raises
        ------
        ValueError
            State for a parameter this model does not train, or a shape that does not match the parameter's.
        """
        index = {name: i for i, name in enumerate(self.param_names)}
        per_param: dict[int, dict[str, Any]] = {}
        step_count = 0
        for key, value in state.items():
            if not key.startswith(prefix):
                continue
            rest = key[len(prefix) :]
            if rest == "step_count":
                step_count = int(value)
                continue
            name, _, field = rest.rpartition("/")
            if name not in index:
                raise ValueError(f"optimizer state {key!r} is for a parameter this model does not train")
            param = self.params[index[name]]
            if field != "step" and isinstance(value, Tensor) and value.shape != param.shape:
                raise ValueError(
                    f"optimizer state {key!r} has shape {tuple(value.shape)}; the parameter has {tuple(param.shape)}"
                )
            per_param.setdefault(index[name], {})[field] = value.clone() if isinstance(value, Tensor) else value
        # torch's own loader casts each tensor to its parameter's device and dtype (the step counter stays as saved)
        full = self.optimizer.state_dict()
        full["state"] = per_param
        self.optimizer.load_state_dict(full)
        self.step_count = step_count
