"""Proxy-tuning (Liu et al., "Tuning Language Models by Proxy", arXiv 2401.08565) as FedPT uses it.

At every position the proxy-tuned large model's next-token logits are

    z~ = z_L + alpha * (z_E - z_A)

with ``z_L`` the large model's logits, ``z_E`` the tuned small model's (the expert) and ``z_A`` the original small
model's (the anti-expert); softmax of ``z~`` is the proxy-tuned distribution (raw logits and log-probabilities give
the same distribution: the per-model log-normalisers are constants per position). :class:`LogitSum` is the general
form, a weighted sum of several models' logits, each model with its own KV cache.

The large model enters only as a :class:`LogitSource`: something that returns next-token logits for a batch of token
ids, and nothing else. A source built from an in-process model runs it under ``torch.no_grad`` with its parameters
frozen; one built from a callable (a remote endpoint, another process) never exposes weights at all. Nothing here
reads or writes a source's parameters or asks it for gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor
from transformers.modeling_utils import slice_logits_to_keep

from fedpeft.errors import ConfigError

__all__ = ["LogitSource", "LogitSum", "check_same_vocab_size", "proxy_logits"]


def proxy_logits(large: Tensor, expert: Tensor, antiexpert: Tensor, alpha: float = 1.0) -> Tensor:
    """``large + alpha * (expert - antiexpert)`` in float32; every input [..., V] of one shape."""
    if not (large.shape == expert.shape == antiexpert.shape):
        raise ValueError(
            f"logit shapes differ: large {tuple(large.shape)}, expert {tuple(expert.shape)}, "
            f"anti-expert {tuple(antiexpert.shape)}"
        )
    return large.float() + alpha * (expert.float() - antiexpert.float())


@dataclass
class _Cache:
    """What a source keeps between calls of one sequence batch: the model's KV cache (or, for a callable, the ids
    so far) and the attention mask of every position seen."""

    state: Any
    mask: Tensor  # [B, T_seen]


def _positions(mask: Tensor, new: int) -> Tensor:
    """Position ids of the last ``new`` positions under a left-padded ``mask`` [B, T]: each row counts from its
    first real token, as Hugging Face ``generate`` does (pads get 0; they are masked anyway)."""
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, T]
    return pos[:, -new:]


class LogitSource:
    """Next-token logits for a batch of token ids, and nothing else.

    ``logits(input_ids, attention_mask, cache=None, logits_to_keep=0) -> (logits [B, K, V], cache)``: the logits
    at the positions of ``input_ids`` (appended to whatever ``cache`` covers, with ``attention_mask`` for those new
    positions only), ``logits_to_keep`` choosing which of them (Hugging Face's convention: 0 = all, an int = the
    last ones, a tensor = positions). Pass the returned cache back with the next tokens to decode incrementally.

    Build one with :meth:`of_model` (an in-process causal LM, KV-cached) or :meth:`of_callable` (any
    ``fn(input_ids, attention_mask) -> logits [B, T, V]``, e.g. a remote large model; it recomputes the whole
    sequence at each call).
    """

    def __init__(
        self,
        name: str,
        vocab_size: int,
        call: Callable[[Tensor, Tensor, _Cache | None, Any], tuple[Tensor, _Cache]],
        device: torch.device | None = None,
    ) -> None:
        self.name = name
        self.vocab_size = vocab_size
        self.device = device or torch.device("cpu")  # where its inputs go
        self._call = call

    def logits(
        self, input_ids: Tensor, attention_mask: Tensor, cache: _Cache | None = None, logits_to_keep: Any = 0
    ) -> tuple[Tensor, _Cache]:
        return self._call(input_ids, attention_mask, cache, logits_to_keep)

    @classmethod
    def of_model(cls, model: torch.nn.Module, name: str = "", freeze: bool = True) -> LogitSource:
        """An in-process causal LM (Hugging Face or peft), run under ``torch.no_grad`` with its KV cache. With
        ``freeze`` (a black box) its parameters are frozen here (``requires_grad_(False)``); without (the server's
        tuned small expert, whose adapter it reloads) they keep their flags. Either way no gradient is computed."""
        if freeze:
            model.requires_grad_(False)
        model.eval()
        config = getattr(model, "config", None)
        vocab = int(getattr(config, "vocab_size", 0) or 0)

        @torch.no_grad()
        def call(ids: Tensor, mask: Tensor, cache: _Cache | None, keep: Any) -> tuple[Tensor, _Cache]:
            full = mask if cache is None else torch.cat([cache.mask, mask], dim=1)  # [B, T_seen + T]
            out = model(
                input_ids=ids,
                attention_mask=full,
                position_ids=_positions(full, ids.shape[1]),
                cache=None if cache is None else cache.state,
                use_cache=True,
                logits_to_keep=keep,
            )
            return out.logits, _Cache(out.cache, full)

        return cls(name or type(model).__name__, vocab, call, next(model.parameters()).device)

    @classmethod
    def of_callable(
        cls, fn: Callable[[Tensor, Tensor], Tensor], vocab_size: int, name: str = "black-box"
    ) -> LogitSource:
        """Any ``fn(input_ids [B, T], attention_mask [B, T]) -> logits [B, T, V]`` (left-padded batches); the
        cache is the sequence so far, recomputed whole at each call."""

        @torch.no_grad()
        def call(ids: Tensor, mask: Tensor, cache: _Cache | None, keep: Any) -> tuple[Tensor, _Cache]:
            seq = ids if cache is None else torch.cat([cache.state, ids], dim=1)
            full = mask if cache is None else torch.cat([cache.mask, mask], dim=1)
            logits = fn(seq, full)[:, -ids.shape[1] :]  # [B, T, V]: the new positions
            if logits.shape[-1] != vocab_size:
                raise ValueError(f"{name} returned {logits.shape[-1]} logits per position; expected {vocab_size}")
            return slice_logits_to_keep(logits, keep), _Cache(seq, full)

        return cls(name, vocab_size, call)


def check_same_vocab_size(sources: Sequence[LogitSource]) -> None:
    """ConfigError naming two sources whose logits are not over the same vocabulary size."""
    first = sources[0]
    for other in sources[1:]:
        if other.vocab_size != first.vocab_size:
            raise ConfigError(
                "server.models",
                [first.name, other.name],
                f"models with one vocabulary; {first.name!r} has {first.vocab_size} logits per token and "
                f"{other.name!r} {other.vocab_size}",
            )


class LogitSum(torch.nn.Module):
    """A causal LM whose logits are ``sum_i w_i * z_i`` over several :class:`LogitSource` s (DExperts-style).

    It quacks like a Hugging Face causal LM where fedpeft's evaluation needs it: ``forward(input_ids,
    attention_mask, logits_to_keep)`` returns an object with ``.logits`` (label-word scoring, distillation
    targets) and :meth:`generate` decodes greedily with one KV cache per source (generation metrics,
    ``fedpeft generate``). ``terms`` are ``(weight, source)`` pairs; the proxy-tuned model is
    ``[(1, large), (alpha, expert), (-alpha, anti_expert)]``.
    """

    def __init__(self, terms: Sequence[tuple[float, LogitSource]]) -> None:
        super().__init__()
        if not terms:
            raise ValueError("LogitSum needs at least one (weight, source) term")
        check_same_vocab_size([s for _, s in terms])
        self.terms = list(terms)
        self._anchor = torch.nn.Parameter(torch.zeros(0, device=terms[0][1].device), requires_grad=False)

    def _combine(self, ids: Tensor, mask: Tensor, caches: list[_Cache | None], keep: Any) -> tuple[Tensor, list]:
        total: Tensor | None = None
        new_caches = []
        for (weight, source), cache in zip(self.terms, caches, strict=True):
            dev = source.device  # the large model may live on another device than the small ones
            z, c = source.logits(ids.to(dev), mask.to(dev), cache, keep.to(dev) if isinstance(keep, Tensor) else keep)
            z = weight * z.float()
            total = z if total is None else total + z.to(total.device)
            new_caches.append(c)
        assert total is not None
        return total, new_caches

    def forward(  # type: ignore[override]
        self, input_ids: Tensor, attention_mask: Tensor | None = None, logits_to_keep: Any = 0, **_: Any
    ) -> SimpleNamespace:
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        logits, _caches = self._combine(input_ids, mask, [None] * len(self.terms), logits_to_keep)
        return SimpleNamespace(logits=logits)  # [B, K, V] float32

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        max_new_tokens: int = 32,
        do_sample: bool = False,
        pad_token_id: int | None = None,
        eos_token_id: int | Sequence[int] | None = None,
        use_cache: bool = True,
    ) -> Tensor:
        """Greedy decoding of left-padded prompts: [B, T + new] (rows that stopped are padded with
        ``pad_token_id``). ``use_cache=False`` recomputes every sequence from scratch at each step (the reference
        the cached path is tested against)."""
        if do_sample:
            raise ValueError("LogitSum.generate is greedy; sampling is not implemented")
        stops = torch.tensor(
            [] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id),
            dtype=torch.long,
            device=input_ids.device,
        )
        pad = int(pad_token_id if pad_token_id is not None else 0)
        seq, mask = input_ids, attention_mask
        caches: list[_Cache | None] = [None] * len(self.terms)
        step_ids, step_mask = input_ids, attention_mask
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for _ in range(max_new_tokens):
            if use_cache:
                logits, caches = self._combine(step_ids, step_mask, caches, 1)
            else:
                logits, _ = self._combine(seq, mask, [None] * len(self.terms), 1)
            nxt = logits[:, -1].argmax(-1)  # [B]
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            seq = torch.cat([seq, nxt[:, None]], dim=1)
            mask = torch.cat([mask, (~done).long()[:, None].to(mask.dtype)], dim=1)
            step_ids, step_mask = nxt[:, None], mask[:, -1:]
            done = done | torch.isin(nxt, stops)
            if bool(done.all()):
                break
        return seq
