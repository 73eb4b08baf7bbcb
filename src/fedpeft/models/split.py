"""Run the decoder layers [0, k) and [k, L) of a Hugging Face causal LM separately (split learning).

The *bottom* (embeddings and layers [0, k)) runs where the data is, the *top* (layers [k, L), final norm, LM head and
loss) elsewhere; only the hidden states [B, T, H] at the cut travel up and their gradient travels back down:

>>> hidden = trainer.forward(forward_bottom, model, ids, mask, cut)        # client
>>> sent = hidden.detach().requires_grad_()                                # ... crosses the network ...
>>> out = forward_top(model, sent, mask, cut, labels=labels)               # server
>>> out.loss.backward()                                                    # server: its own LoRA gets gradients
>>> trainer.backward_from(sent.grad); trainer.apply()                      # client, once sent.grad is back

Both halves reuse the model's own forward with its ``layers`` list temporarily cut (and, for the bottom, its final
norm replaced by the identity; for the top, the token embedding skipped through ``inputs_embeds``), so adapters
inside the layers (LoRA, bottleneck, selective) behave exactly as in the full forward, in every transformers
version that keeps this module layout. That is exact only for decoders whose positions enter inside the layers
(rotary embeddings) and whose ``inputs_embeds`` are used unscaled: the model types in :data:`SUPPORTED_MODEL_TYPES`.
GPT-2 style models add learned positions to the embeddings and Gemma scales them, so the top would add or scale
twice; those raise :class:`~fedpeft.errors.UnsupportedModelError`.

Attention masks and positions: both halves build the same causal + padding mask from ``attention_mask`` and the
same default positions ``0 .. T-1`` (what the full forward does for the right-padded batches of
:func:`fedpeft.data.collate`); pass ``position_ids=`` to both halves for anything else.

The model's module lists are swapped during a call (restored on exit, also on exceptions): do not run two halves
of the same model concurrently from different threads.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn

from fedpeft.errors import ConfigError, UnsupportedModelError

__all__ = ["SUPPORTED_MODEL_TYPES", "forward_bottom", "forward_middle", "forward_top", "num_layers", "split_loss"]

#: Hugging Face ``model_type`` values whose forward was checked to be exact when split this way: rotary positions,
#: embeddings used as given, layers independent of their index apart from ``config.layer_types`` (cut along).
SUPPORTED_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})


def _causal_lm(model: nn.Module) -> Any:  # a transformers *ForCausalLM: attributes typed dynamically
    """The Hugging Face ``*ForCausalLM`` inside ``model`` (a peft ``PeftModel`` is unwrapped), checked splittable.

    The peft wrapper's own forward is bypassed: LoRA-style adapters live inside the base model's layers, and
    prompt-learning adapters (virtual tokens prepended to the input) would be prepended again by the top.
    """
    if getattr(model, "_is_prompt_learning", False):
        raise UnsupportedModelError(
            "split forward does not support prompt-learning adapters (prompt/prefix/P-tuning): their virtual tokens "
            "are not part of the decoder layers"
        )
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # type: ignore[operator]
    model_type = getattr(getattr(base, "config", None), "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"split forward supports the rotary-position decoders {sorted(SUPPORTED_MODEL_TYPES)}; model_type "
            f"{model_type!r} is not one of them (learned or scaled input embeddings would be applied twice)"
        )
    inner = getattr(base, "model", None)
    if not all(hasattr(inner, name) for name in ("embed_tokens", "layers", "norm")):
        raise UnsupportedModelError(f"{type(base).__name__} has no decoder at .model with embed_tokens, layers, norm")
    return base


def num_layers(model: nn.Module) -> int:
    """Number of decoder layers L of ``model`` (the cuts are 0 .. L)."""
    return len(_causal_lm(model).model.layers)


def _check_cut(base: Any, cut: int) -> None:
    n = len(base.model.layers)
    if isinstance(cut, bool) or not isinstance(cut, int) or not 0 <= cut <= n:
        raise ConfigError("cut", cut, f"an integer in [0, {n}]: the number of decoder layers below the cut")


@contextmanager
def _layers_cut(base: Any, start: int, stop: int, *, drop_norm: bool) -> Iterator[None]:
    """Let ``base`` run only its decoder layers [start, stop) (and no final norm with ``drop_norm``), then restore."""
    inner = base.model
    layers, norm = inner.layers, inner.norm
    layer_types = getattr(base.config, "layer_types", None)  # per-layer attention kind, indexed by position
    try:
        inner.layers = layers[start:stop]  # a ModuleList of the same layer objects (and their adapters)
        if drop_norm:
            inner.norm = nn.Identity()
        if layer_types is not None:
            base.config.layer_types = list(layer_types)[start:stop]
        yield
    finally:
        inner.layers, inner.norm = layers, norm
        if layer_types is not None:
            base.config.layer_types = layer_types


def forward_bottom(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None, cut: int, **kwargs: Any
) -> Tensor:
    """Embeddings and decoder layers [0, cut): the hidden states at the cut, [B, T, H].

    Parameters
    ----------
    model
        A supported causal LM, bare or with an adapter attached (``PeftModel`` or fedpeft-native).
    input_ids
        [B, T] token ids.
    attention_mask
        [B, T], 1 on real tokens and 0 on padding (the same mask goes to :func:`forward_top`).
    cut
        k in [0, L]: 0 returns the token embeddings, L every layer's output before the final norm.
    **kwargs
        Passed to the decoder's forward, e.g. ``position_ids`` [B, T].

    Raises
    ------
    ConfigError
        ``cut`` outside [0, L].
    UnsupportedModelError
        An architecture or adapter this split is not exact for.
    """
    base = _causal_lm(model)
    _check_cut(base, cut)
    with _layers_cut(base, 0, cut, drop_norm=True):
        out = base.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs)
    return out.last_hidden_state  # [B, T, H]


def forward_middle(
    model: nn.Module, hidden: Tensor, attention_mask: Tensor | None, start: int, stop: int, **kwargs: Any
) -> Tensor:
    """Decoder layers [start, stop) on hidden states [B, T, H] (no final norm): the middle of a U-shaped split,
    whose bottom (:func:`forward_bottom` to ``start``) and head (:func:`forward_top` from ``L``) run elsewhere."""
    base = _causal_lm(model)
    _check_cut(base, start)
    _check_cut(base, stop)
    with _layers_cut(base, start, stop, drop_norm=True):
        out = base.model(inputs_embeds=hidden, attention_mask=attention_mask, use_cache=False, **kwargs)
    return out.last_hidden_state  # [B, T, H]


def forward_top(
    model: nn.Module,
    hidden: Tensor,
    attention_mask: Tensor | None,
    cut: int,
    labels: Tensor | None = None,
    **kwargs: Any,
) -> Any:
    """Decoder layers [cut, L), final norm and LM head on the hidden states from :func:`forward_bottom`.

    Parameters
    ----------
    model
        The same architecture as the bottom's (the top's own copy, with its own adapter, in split learning).
    hidden
        [B, T, H] hidden states at the cut; make it a leaf with ``requires_grad`` to get d loss / d hidden.
    attention_mask
        [B, T], the bottom's mask.
    cut
        The bottom's k.
    labels
        [B, T] next-token labels (-100 ignored), shifted by the model as in the full forward.
    **kwargs
        Passed to the causal LM's forward, e.g. ``position_ids`` or ``logits_to_keep``.

    Returns
    -------
    transformers.modeling_outputs.CausalLMOutputWithPast
        ``logits`` [B, T, V] and, with ``labels``, ``loss``: equal to the full forward's.
    """
    base = _causal_lm(model)
    _check_cut(base, cut)
    size = base.config.hidden_size
    if hidden.dim() != 3 or hidden.shape[-1] != size:
        raise ValueError(f"hidden states must be [B, T, {size}]; got {tuple(hidden.shape)}")
    with _layers_cut(base, cut, len(base.model.layers), drop_norm=False):
        return base(inputs_embeds=hidden, attention_mask=attention_mask, labels=labels, use_cache=False, **kwargs)


def split_loss(model: nn.Module, batch: Mapping[str, Tensor], cut: int) -> Tensor:
    """Bottom then top on one model in one graph: the LM loss of ``batch`` (a check and a convenience)."""
    hidden = forward_bottom(model, batch["input_ids"], batch["attention_mask"], cut)  # [B, T, H]
    loss: Tensor = forward_top(model, hidden, batch["attention_mask"], cut, labels=batch["labels"]).loss
    return loss
