"""The split of one adapter between the clients and the main server, and the main server's view of the top half.

Pure functions on adapter keys and one adapter-free wrapper; the exchange itself is in client.py and server.py.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from fedpeft.algorithms.aggregation import State
from fedpeft.models.split import forward_top
from fedpeft.training.losses import LossFn, loss_key

#: ``...layers.<i>.`` in a parameter name: the decoder layer the parameter belongs to.
LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")
#: Modules below the first decoder layer (they run on the client at every cut).
BOTTOM_MODULES = ("embed_tokens",)
#: The fields of a collated batch the main server needs for the loss (the client sends them with the activations).
BATCH_KEYS = ("attention_mask", "labels", "prompt_length", "label", "choices")


def on_client(key: str, cut: int, u_shaped: bool = False) -> bool:
    """Whether adapter parameter ``key`` lives on the clients under a cut after ``cut`` decoder layers.

    Parameters of decoder layer i go to the clients when i < cut; the input embedding always; everything else (the
    final norm, the LM head) to the main server, or, in a U-shaped split (the head and the labels stay on the
    client), to the clients.
    """
    match = LAYER_RE.search(key)
    if match is not None:
        return int(match.group(1)) < cut
    return u_shaped or any(f"{name}." in key or key.endswith(name) for name in BOTTOM_MODULES)


def partition(state: Mapping[str, Tensor], cut: int, u_shaped: bool = False) -> tuple[State, State]:
    """``state`` split into (client side, server side) by :func:`on_client`; together they are ``state``."""
    client = {k: v for k, v in state.items() if on_client(k, cut, u_shaped)}
    server = {k: v for k, v in state.items() if not on_client(k, cut, u_shaped)}
    return client, server


def bottom_params(model: nn.Module, cut: int, u_shaped: bool = False) -> tuple[int, int]:
    """(trainable, held) parameter counts of the part of ``model`` a client holds at this cut."""
    trainable = held = 0
    for name, p in model.named_parameters():  # tied weights are listed once, under the embedding's name
        if on_client(name, cut, u_shaped):
            held += p.numel()
            trainable += p.numel() if p.requires_grad else 0
    return trainable, held


class TopView:
    """A causal LM whose input is fixed hidden states at the cut: calling it runs layers [cut, L), the norm and the
    head on ``hidden`` (:func:`fedpeft.models.split.forward_top`), whatever ``input_ids`` it is given.

    The training losses call ``model(input_ids=, attention_mask=, labels=, logits_to_keep=)``; handing them this
    view instead of the model makes each of them the main server's loss unchanged (same label-word fast path).
    """

    _is_prompt_learning = False

    def __init__(self, model: nn.Module, hidden: Tensor, cut: int) -> None:
        self.model, self.hidden, self.cut = model, hidden, cut  # hidden: [B, T, H]

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        logits_to_keep: int | Tensor = 0,
    ) -> Any:
        return forward_top(
            self.model, self.hidden, attention_mask, self.cut, labels=labels, logits_to_keep=logits_to_keep
        )

    __call__ = forward


def top_loss(loss: LossFn, hidden: Tensor, cut: int) -> LossFn:
    """``loss`` evaluated on the top half from ``hidden``: a loss ``(model, batch)`` for the main server's trainer."""

    def fn(model: nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
        return loss(TopView(model, hidden, cut), batch)  # type: ignore[arg-type]

    fn.flops_key = ("fedsllm_top", cut, *loss_key(loss))  # type: ignore[attr-defined]  # FLOPs depend on the cut
    return fn
