"""Temporarily folding dense weight updates into a LoRA model's frozen base weights.

FLoRA clients train a fresh LoRA on top of the merged model ``W0 + sum_t ΔW_t``; with one shared base model per
process (the ``local`` runtime) the merge must be undone afterwards, so it is a context manager.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from fedpeft.adapters.base import AdapterConfig, AdapterStateError


def lora_scaling(cfg: AdapterConfig) -> float:
    """The factor LoRA applies to ``B·A``: ``alpha / r`` (``alpha / sqrt(r)`` for rsLoRA)."""
    if cfg.method == "rslora":
        return cfg.alpha / cfg.r**0.5
    return cfg.alpha / cfg.r


@contextmanager
def added_to_base(model: nn.Module, deltas: Mapping[str, Tensor]) -> Iterator[None]:
    """Add ``deltas`` (LoRA module path -> dense ``[out, in]`` update) to those modules' base weights for the
    duration of the block; the original weights are restored exactly afterwards (copied back, not subtracted)."""
    saved: list[tuple[Tensor, Tensor]] = []
    try:
        with torch.no_grad():
            for prefix, delta in deltas.items():
                module = model.get_submodule(prefix)
                base = getattr(module, "base_layer", None)
                weight = getattr(base, "weight", None)
                if weight is None or weight.numel() != delta.numel() or weight.shape[0] != delta.shape[0]:
                    raise AdapterStateError(
                        f"{prefix!r} is not a LoRA linear layer matching a {tuple(delta.shape)} update"
                    )
                saved.append((weight, weight.detach().clone()))
                weight.add_(delta.reshape(weight.shape).to(weight.dtype))
        yield
    finally:
        with torch.no_grad():
            for weight, original in saved:
                weight.copy_(original)
