"""Pluggable training losses: every loss is a function ``(model, collated batch) -> scalar mean loss``.

A collated batch is what :func:`fedpeft.data.collate` returns: ``input_ids`` / ``attention_mask`` / ``labels`` [B, T],
``prompt_length`` [B], and ``label`` [B] / ``choices`` [B, C] where the data has them.

- :func:`lm_loss`: next-token cross-entropy on the response tokens (``labels != -100``).
- :func:`label_words_loss`: cross-entropy over the label words' logits at the last prompt position (classification).
- :func:`distillation_loss`: forward KL from a teacher's next-token distribution (knowledge distillation).

:func:`make_loss` builds the two named losses of ``TrainConfig.loss``; the distillation loss needs a teacher, so it is
built directly.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from fedpeft import registry
from fedpeft.data.tokenize import IGNORE_INDEX, label_word_logits, pick_label_words
from fedpeft.errors import ConfigError

__all__ = [
    "LOSSES",
    "LossFn",
    "distillation_loss",
    "forward_logits",
    "label_scores",
    "label_words_loss",
    "lm_loss",
    "make_loss",
]

#: (model, collated batch) -> scalar mean loss of that batch, differentiable in the model's trainable parameters.
LossFn = Callable[[torch.nn.Module, Mapping[str, Tensor]], Tensor]


# --- scoring helpers the losses (and evaluation) share ---------------------------------------------------------------


def _supports_logits_to_keep(model: torch.nn.Module) -> bool:
    """True when the model can project only chosen positions onto the vocabulary (Hugging Face ``logits_to_keep``).

    Prompt-learning adapters prepend virtual tokens, which shifts positions, so they take the full path.
    """
    if getattr(model, "_is_prompt_learning", False):
        return False
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # type: ignore[operator]
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def forward_logits(model: torch.nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
    """Logits aligned with ``input_ids``: [B, T, V].

    Prompt tuning and P-tuning prepend virtual tokens, so their logits are longer than the input; the real positions
    are the last T.
    """
    ids = batch["input_ids"]
    logits = model(input_ids=ids, attention_mask=batch["attention_mask"]).logits
    return logits[:, -ids.shape[1] :]


def label_scores(model: torch.nn.Module, batch: Mapping[str, Tensor], word_ids: Tensor | None = None) -> Tensor:
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


# --- the losses ------------------------------------------------------------------------------------------------------


def lm_loss(model: torch.nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
    """Mean next-token cross-entropy over the response tokens (the model shifts ``labels`` itself)."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    return out.loss


def label_words_loss(word_ids: Tensor | None = None) -> LossFn:
    """Cross-entropy over the label words' logits at the last prompt position, against ``batch["label"]``.

    ``word_ids`` [n_labels] are the dataset's label words; ``None`` reads each row's ``batch["choices"]``.
    """

    def loss(model: torch.nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
        scores = label_scores(model, batch, word_ids)  # [B, n_labels]
        return F.cross_entropy(scores.float(), batch["label"])

    return loss


def _lm_loss_factory(word_ids: Tensor | None) -> LossFn:
    return lm_loss  # the language-model loss has no label words


#: ``TrainConfig.loss`` name -> factory taking the label word ids (or None).
LOSSES: dict[str, Callable[[Tensor | None], LossFn]] = {"lm": _lm_loss_factory, "label_words": label_words_loss}
for _name, _factory in LOSSES.items():  # the names TrainConfig validates against, from the registry
    registry.LOSSES.register(_name, _factory)


def loss_key(loss: LossFn) -> tuple[str, ...]:
    """What a loss's FLOPs depend on besides the batch shape and the model (:mod:`fedpeft.training.flops`): a
    ``flops_key`` attribute when the loss has one (the named losses, sums of losses), else its qualified name. A
    custom loss whose matrix products depend on more than that (e.g. which teacher it runs) sets ``flops_key``."""
    key = getattr(loss, "flops_key", None)
    if key is not None:
        return tuple(key)
    return (getattr(loss, "__module__", "") or "", getattr(loss, "__qualname__", type(loss).__qualname__))


def make_loss(name: str, word_ids: Tensor | None = None) -> LossFn:
    """The named loss of :data:`LOSSES` (``"lm"`` or ``"label_words"``); ConfigError listing the names otherwise."""
    if name not in LOSSES:
        raise ConfigError("train.loss", name, list(LOSSES))
    return LOSSES[name](word_ids)


Positions = Literal["response", "all", "last"]


def _distillation_mask(batch: Mapping[str, Tensor], positions: str) -> Tensor:
    """[B, T] bool: the positions whose next-token distributions are matched."""
    if positions == "all":
        return batch["attention_mask"].bool()
    if positions == "last":  # the last prompt token, whose logits predict the answer's first token
        mask = torch.zeros_like(batch["attention_mask"], dtype=torch.bool)
        rows = torch.arange(mask.shape[0], device=mask.device)
        mask[rows, batch["prompt_length"].to(mask.device) - 1] = True
        return mask
    # logits at t predict token t + 1 (Hugging Face causal-LM shift), so position t counts when label t + 1 does
    labels = batch["labels"]  # [B, T]
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return mask


def distillation_loss(
    teacher: Callable[[Mapping[str, Tensor]], Tensor], temperature: float = 1.0, positions: Positions = "response"
) -> LossFn:
    r"""Knowledge distillation: forward KL from the teacher's next-token distribution to the student's.

    With teacher logits :math:`z^T` and student logits :math:`z^S` at a position, temperature :math:`\tau` and
    :math:`p = \mathrm{softmax}(z^T / \tau)`, :math:`q = \mathrm{softmax}(z^S / \tau)`, the loss is

    .. math::

        \mathcal{L} = \frac{\tau^2}{|P|} \sum_{(b, t) \in P} \sum_v p_{b,t,v} \,(\log p_{b,t,v} - \log q_{b,t,v})

    i.e. :math:`\tau^2 \cdot` the mean over the chosen positions :math:`P` of KL(teacher || student). The
    :math:`\tau^2` factor keeps the gradient scale independent of :math:`\tau` (Hinton et al., "Distilling the
    Knowledge in a Neural Network", 2015). It is 0 exactly when both distributions agree on every chosen position.

    Parameters
    ----------
    teacher
        ``teacher(batch) -> logits [B, T, V]`` aligned with ``batch["input_ids"]``; a callable, so that the teacher
        can be computed on the fly (e.g. a proxy-tuned combination of models on the server). Its output is detached:
        only the student learns.
    temperature
        :math:`\tau > 0`; higher softens both distributions.
    positions
        ``"response"``: positions whose next token is a response token (``labels[:, t + 1] != -100``, the positions
        :func:`lm_loss` trains); ``"all"``: every non-padded position (``attention_mask == 1``); ``"last"``: the last
        prompt position of each row (``prompt_length - 1``), whose next token is the answer's first (all that
        label-word classification reads).

    Returns
    -------
    LossFn
        ``loss(model, batch) -> scalar``; 0 (still attached to the student graph) when no position is chosen.
    """
    if not temperature > 0:
        raise ConfigError("temperature", temperature, "a float > 0")
    if positions not in ("response", "all", "last"):
        raise ConfigError("positions", positions, ["response", "all", "last"])

    def loss(model: torch.nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
        student = forward_logits(model, batch)  # [B, T, V]
        target = teacher(batch).detach()  # [B, T, V]
        if target.shape != student.shape:
            raise ValueError(f"teacher logits {tuple(target.shape)} do not match the student's {tuple(student.shape)}")
        mask = _distillation_mask(batch, positions).to(student.device)  # [B, T]
        # float32 for the softmaxes: bf16 log-probabilities of a large vocabulary lose the small KL terms
        log_q = F.log_softmax(student[mask].float() / temperature, dim=-1)  # [N, V]
        log_p = F.log_softmax(target.to(student.device)[mask].float() / temperature, dim=-1)  # [N, V]
        kl = F.kl_div(log_q, log_p, reduction="sum", log_target=True)  # sum over N positions and V
        return kl * temperature**2 / max(1, int(mask.sum()))

    return loss
