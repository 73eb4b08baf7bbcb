"""Hidden-state features of encoded examples, shared by the algorithms that represent data by the model's activations.

- :func:`prompt_features`: the mean last-layer hidden state over the prompt tokens (FL-TAC's ``hidden`` router).
- :func:`layer_features`: the hidden state of every layer at the last real token, concatenated over layers
  (FedHDS's "inter-layer feature fusion", Qin et al., arXiv 2410.10926).

Both take examples encoded by :mod:`fedpeft.data.tokenize` and its ``collate`` (right padding, ``attention_mask``
1 on real tokens), run the model without gradients in eval mode, and return float32 CPU tensors. Batching does not
change a row's features: with causal attention and right padding a real token never attends to padding, so they
equal a batch-size-1 computation up to float rounding (``tests/training/test_features.py``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import torch

Collate = Callable[[Sequence[Mapping[str, Any]]], dict[str, torch.Tensor]]


def _batches(
    model: torch.nn.Module, examples: Sequence[Mapping[str, Any]], collate: Collate, batch_size: int
) -> Iterator[tuple[dict[str, torch.Tensor], tuple[torch.Tensor, ...]]]:
    """Each collated batch (on the model's device) with its hidden states: L + 1 tensors [B, T', H] (embedding
    output, then each decoder layer's output; T' = T plus any virtual tokens a prompt-learning adapter prepends)."""
    device = next(model.parameters()).device
    # Only the hidden states are used: when the model allows it, project just one position onto the vocabulary
    # instead of all T (for the tiny bundled models that projection is about half of a forward pass).
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # type: ignore[operator]
    extra = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(base.forward).parameters else {}
    for i in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in collate(examples[i : i + batch_size]).items()}
        out = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True, **extra
        )
        yield batch, out.hidden_states


def _real(hidden: torch.Tensor, length: int) -> torch.Tensor:
    """[B, T', H] -> [B, T, H]: the positions of the input tokens (virtual tokens, when any, come first)."""
    return hidden[:, hidden.shape[1] - length :]


@torch.no_grad()
def prompt_features(
    model: torch.nn.Module, examples: Sequence[Mapping[str, Any]], collate: Collate, batch_size: int = 64
) -> torch.Tensor:
    """[N, H] mean last-layer hidden state over each example's prompt tokens (the response is not looked at).

    Parameters
    ----------
    model:
        Causal LM (with or without an adapter); it is put in eval mode.
    examples:
        Encoded examples (``input_ids``, ``prompt_length``).
    collate:
        The data's collate function (right padding).
    batch_size:
        Examples per forward pass.

    Returns
    -------
    torch.Tensor
        float32 on CPU, [N, H] (``[0, 0]`` when ``examples`` is empty).
    """
    model.eval()
    rows: list[torch.Tensor] = []
    for batch, hidden_states in _batches(model, examples, collate, batch_size):
        hidden = _real(hidden_states[-1], batch["input_ids"].shape[1]).float()  # [B, T, H]
        t = torch.arange(hidden.shape[1], device=hidden.device)[None, :]  # [1, T]
        mask = (t < batch["prompt_length"][:, None]).float()  # [B, T]: prompt positions only
        rows.append(((hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)).cpu())  # [B, H]
    return torch.cat(rows) if rows else torch.zeros(0, 0)


def last_token_features(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Each row's hidden state at its last real (non-padding) token: [B, T, H] with mask [B, T] -> [B, H].

    The last real token is the largest position with ``attention_mask == 1``, so this is right for right padding
    (fedpeft's collate) and left padding alike.
    """
    if hidden.dim() != 3 or attention_mask.shape != hidden.shape[:2]:
        raise ValueError(
            f"need hidden [B, T, H] and attention_mask [B, T], got {tuple(hidden.shape)} and "
            f"{tuple(attention_mask.shape)}"
        )
    t = torch.arange(hidden.shape[1], device=hidden.device)  # [T]
    last = (attention_mask.to(hidden.device).long() * t).argmax(1)  # [B]
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # [B, H]


@torch.no_grad()
def layer_features(
    model: torch.nn.Module,
    examples: Sequence[Mapping[str, Any]],
    collate: Collate,
    *,
    batch_size: int = 32,
    layers: Sequence[int] | Literal["all"] = "all",
    pool: Literal["last", "mean"] = "last",
) -> torch.Tensor:
    """Every layer's hidden state at the last real token of each example (or its mean over the real tokens),
    concatenated over layers.

    The token is the last of the example's whole training sequence as encoded in ``input_ids`` (prompt, response
    and EOS when the template adds one), so the feature has seen the full example: FedHDS's inter-layer feature
    fusion (Qin et al., arXiv 2410.10926), computed in batches instead of the reference code's one at a time.

    Parameters
    ----------
    model:
        Causal LM (with or without an adapter) that returns ``hidden_states``; it is put in eval mode.
    examples:
        Encoded examples (``input_ids``).
    collate:
        The data's collate function.
    batch_size:
        Examples per forward pass.
    layers:
        Indices into the L + 1 hidden states (0 = embedding output, ``i`` = output of decoder layer ``i``, -1 =
        the last, after the final norm in Llama-style models), or ``"all"``.
    pool:
        ``"last"``: the hidden state at the last real token (the reference); ``"mean"``: the mean over every real
        token of the example.

    Returns
    -------
    torch.Tensor
        float32 on CPU, [N, n_layers * H] with layer ``layers[k]`` in columns ``k*H : (k+1)*H``
        (``n_layers = L + 1`` for ``"all"``; ``[0, 0]`` when ``examples`` is empty).
    """
    if pool not in ("last", "mean"):
        raise ValueError(f"pool must be 'last' or 'mean', got {pool!r}")
    model.eval()
    rows: list[torch.Tensor] = []
    for batch, hidden_states in _batches(model, examples, collate, batch_size):
        picked = hidden_states if layers == "all" else [hidden_states[i] for i in layers]
        length = batch["input_ids"].shape[1]
        mask = batch["attention_mask"]  # [B, T]
        if pool == "last":
            per_layer = [last_token_features(_real(h, length), mask) for h in picked]  # [B, H] each
        else:
            w = mask.to(picked[0].dtype)[..., None]  # [B, T, 1]
            per_layer = [(_real(h, length) * w).sum(1) / w.sum(1) for h in picked]  # [B, H] each
        rows.append(torch.cat(per_layer, dim=1).float().cpu())  # [B, n_layers * H]
    return torch.cat(rows) if rows else torch.zeros(0, 0)
