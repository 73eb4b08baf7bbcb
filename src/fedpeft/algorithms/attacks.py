"""Simulated Byzantine clients (``[attack]``, research on ``local`` and ``flower-sim``): which clients attack, and
what they do to their data or their update. Honest clients never read any of it.

- ``sign_flip``: send ``-update`` (pulls the model back the way honest clients push it);
- ``scale``: send ``attack.scale * update`` (one client outweighs the others in a plain mean);
- ``noise``: send Gaussian noise of std ``attack.noise_std`` instead of an update;
- ``label_flip``: train honestly on data whose class labels are shifted by one (label-word loss only);
- ``backdoor``: a trigger inserted at the start of the prompt of ``poison_fraction`` of the attacker's examples,
  relabelled ``target`` (its data is poisoned when the run's data are built, :func:`poison`), and the update sent
  times ``boost``. The server measures the attack's success rate on triggered eval examples (:func:`triggered`).

The attackers are the same clients every round: ``round(fraction * num_clients)`` ids drawn with the run's seed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from fedpeft.algorithms.aggregation import State
from fedpeft.algorithms.base import derive_seed
from fedpeft.config import ATTACKS

if TYPE_CHECKING:
    from fedpeft.config import RunConfig

__all__ = ["ATTACKS", "attackers", "corrupt", "flip_labels", "kind_of", "poison", "triggered", "with_trigger"]


def attackers(cfg: RunConfig) -> set[int]:
    """The Byzantine client ids of this run."""
    att, n = cfg.attack, cfg.federation.num_clients
    if att.kind == "none" or att.fraction <= 0:
        return set()
    gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "attack"))
    return set(torch.randperm(n, generator=gen)[: round(att.fraction * n)].tolist())


def kind_of(cfg: RunConfig, client_id: int) -> str:
    """What client ``client_id`` does: its attack, or ``none``."""
    return cfg.attack.kind if client_id in attackers(cfg) else "none"


def flip_labels(examples: Sequence[Mapping[str, Any]], num_classes: int) -> list[dict[str, Any]]:
    """Copies of ``examples`` with every class label ``y`` replaced by ``(y + 1) % C`` (C: the row's choices, or
    ``num_classes``); rows without a label are kept as they are."""
    out = []
    for ex in examples:
        row = dict(ex)
        y = int(row.get("label", -1))
        if y >= 0:
            c = len(row["choices"]) if "choices" in row else num_classes
            row["label"] = (y + 1) % c
        out.append(row)
    return out


def with_trigger(
    example: Mapping[str, Any],
    trigger: Sequence[int],
    at: int,
    max_length: int,
    target: int | None = None,
    word_ids: Sequence[int] | None = None,
) -> dict[str, Any]:
    """A copy of an encoded example with the token ids ``trigger`` inserted at position ``at`` (after the BOS
    prefix: the start of the prompt). Over ``max_length`` the prompt tokens right after the trigger go, as the
    encoder drops the prompt's start. With ``target`` the row is relabelled: ``label`` and, with ``word_ids``, the
    old label word in the response (so the full-vocabulary loss learns the target too)."""
    ids, labels, plen, k = (
        list(example["input_ids"]),
        list(example["labels"]),
        int(example["prompt_length"]),
        len(trigger),
    )
    over = len(ids) + k - max_length  # prompt tokens to drop after the trigger
    if over > plen - at:
        raise ValueError(f"a {k}-token trigger does not fit in the prompt of an example of {len(ids)} tokens")
    ids[at:at] = list(trigger)
    labels[at:at] = [-100] * k
    plen += k
    if over > 0:
        del ids[at + k : at + k + over], labels[at + k : at + k + over]
        plen -= over
    row = {**example, "input_ids": ids, "labels": labels, "prompt_length": plen}
    if target is not None:
        old = int(row["label"])
        row["label"] = target
        if word_ids is not None:  # the response's label word, where the response spells it
            swap = {int(word_ids[old]): int(word_ids[target])}
            for i in range(plen, len(ids)):
                ids[i] = swap.get(ids[i], ids[i])
                labels[i] = swap.get(labels[i], labels[i])
    return row


def poison(
    examples: Sequence[Mapping[str, Any]],
    trigger: Sequence[int],
    cfg: RunConfig,
    at: int,
    word_ids: Sequence[int] | None,
    gen: torch.Generator,
) -> list[dict[str, Any]]:
    """A backdoor attacker's training data: ``attack.poison_fraction`` of its labelled examples (drawn with
    ``gen``) carry the trigger and the label ``attack.target``; the rest are copies of the originals."""
    att = cfg.attack
    labelled = [i for i, ex in enumerate(examples) if int(ex.get("label", -1)) >= 0]
    k = round(att.poison_fraction * len(labelled))
    chosen = {labelled[j] for j in torch.randperm(len(labelled), generator=gen)[:k].tolist()}
    return [
        with_trigger(ex, trigger, at, cfg.data.max_length, att.target, word_ids) if i in chosen else dict(ex)
        for i, ex in enumerate(examples)
    ]


def triggered(
    examples: Sequence[Mapping[str, Any]], trigger: Sequence[int], target: int, at: int, max_length: int
) -> list[dict[str, Any]]:
    """The eval examples whose class is not ``target``, with the trigger inserted (labels kept): the share the
    model assigns to ``target`` is the backdoor's attack success rate."""
    return [
        with_trigger(ex, trigger, at, max_length) for ex in examples if int(ex.get("label", -1)) not in (-1, target)
    ]


def corrupt(kind: str, update: Mapping[str, torch.Tensor], cfg: RunConfig, gen: torch.Generator) -> State:
    """The update an attacker of ``kind`` sends instead of ``update``."""
    if kind == "sign_flip":
        return {k: -v for k, v in update.items()}
    if kind == "scale":
        return {k: v * cfg.attack.scale for k, v in update.items()}
    if kind == "backdoor":
        return {k: v * cfg.attack.boost for k, v in update.items()}
    if kind == "noise":
        std = cfg.attack.noise_std
        return {
            k: std * torch.randn(v.shape, generator=gen, dtype=torch.float32).to(v.dtype) for k, v in update.items()
        }
    return dict(update)
