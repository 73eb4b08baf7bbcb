"""What an honest-but-curious server reads off an upload: the tokens a client trained on.

An adapter tensor with an axis the size of the vocabulary (peft's embedding LoRA ``lora_embedding_A`` [r, V], a
LoRA or a saved copy of the LM head [V, ...], a trained embedding matrix) has one slice per token, and a client's
update of it is non-zero exactly on the tokens its training touched (the embedding's gradient is zero for every
other row; Adam keeps zero moments at zero). Reading the non-zero slices gives back the client's vocabulary:
:func:`recovered_tokens`. Under noise (DP) nothing is exactly zero: :func:`top_tokens` ranks slices by norm. Other
parameters (LoRA on the attention and MLP projections) carry no per-token slice; inverting their gradients is a
harder attack this probe does not try (docs/privacy.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

__all__ = ["per_token_axes", "precision_recall", "recovered_tokens", "top_tokens", "warning_text"]


def per_token_axes(state: Mapping[str, Tensor], vocab: int) -> dict[str, int]:
    """``{key: axis}`` of the tensors with an axis of length ``vocab`` (the last such axis)."""
    out: dict[str, int] = {}
    for key, t in state.items():
        axes = [i for i, n in enumerate(t.shape) if n == vocab]
        if axes and t.dim() >= 1:
            out[key] = axes[-1]
    return out


def _slice_norms(update: Mapping[str, Tensor], axes: Mapping[str, int], vocab: int) -> Tensor:
    """(V,) float64: the L2 norm of each token's slices over every per-token tensor of ``update``."""
    sq = torch.zeros(vocab, dtype=torch.float64)
    for key, axis in axes.items():
        t = update[key].detach().to(torch.float64)
        sq += (t.movedim(axis, 0).reshape(vocab, -1) ** 2).sum(1)
    return sq.sqrt()


def recovered_tokens(update: Mapping[str, Tensor], axes: Mapping[str, int], vocab: int, tol: float = 0.0) -> set[int]:
    """Token ids whose slices of ``update`` are not all (within ``tol``) zero: what the server reads in the clear."""
    if not axes:
        return set()
    return set(torch.nonzero(_slice_norms(update, axes, vocab) > tol).flatten().tolist())


def top_tokens(update: Mapping[str, Tensor], axes: Mapping[str, int], vocab: int, k: int) -> set[int]:
    """The ``k`` token ids with the largest slice norms (the attack when noise leaves nothing exactly zero)."""
    if not axes or k <= 0:
        return set()
    return set(torch.topk(_slice_norms(update, axes, vocab), min(k, vocab)).indices.tolist())


def precision_recall(recovered: Iterable[int], true: Iterable[int]) -> tuple[float, float]:
    """(precision, recall) of the ``recovered`` token set against the ``true`` one (0 for an empty side)."""
    rec, tru = set(recovered), set(true)
    hit = len(rec & tru)
    return (hit / len(rec) if rec else 0.0, hit / len(tru) if tru else 0.0)


def module_name(key: str) -> str:
    """The adapted module of a state key (``...embed_tokens.lora_embedding_A`` -> ``embed_tokens``)."""
    parts = [p for p in key.split(".") if p not in ("weight", "default")]
    for i, part in enumerate(parts):
        if part.startswith("lora_") and i:
            return parts[i - 1]
    return parts[-1] if parts else key


def warning_text(state: Mapping[str, Tensor], vocab: int, secure_aggregation: bool) -> str | None:
    """The run's privacy warning when its adapter has per-token slices (None when it has none)."""
    axes = per_token_axes(state, vocab)
    if not axes:
        return None
    names = ", ".join(sorted({module_name(k) for k in axes}))
    if secure_aggregation:
        return (
            f"the adapter has per-token slices ({names}); under secure aggregation the server reads which tokens "
            "the round's clients used together (the union), not which client used which"
        )
    return (
        f"the adapter has per-token slices ({names}) and its updates travel in the clear: each upload names the "
        "tokens that client trained on, and the server can read them; set privacy.secure_aggregation = true "
        "(the server then sees only the round's sum) or leave embed_tokens / lm_head out of adapter.target_modules"
    )
