"""Simulated Byzantine clients (``[attack]``, research on ``local`` and ``flower-sim``): which clients attack, and
what they do to their data or their update. Honest clients never read any of it.

- ``sign_flip``: send ``-update`` (pulls the model back the way honest clients push it);
- ``scale``: send ``attack.scale * update`` (one client outweighs the others in a plain mean);
- ``noise``: send Gaussian noise of std ``attack.noise_std`` instead of an update;
- ``label_flip``: train honestly on data whose class labels are shifted by one (label-word loss only).

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

__all__ = ["ATTACKS", "attackers", "corrupt", "flip_labels", "kind_of"]


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


def corrupt(kind: str, update: Mapping[str, torch.Tensor], cfg: RunConfig, gen: torch.Generator) -> State:
    """The update an attacker of ``kind`` sends instead of ``update``."""
    if kind == "sign_flip":
        return {k: -v for k, v in update.items()}
    if kind == "scale":
        return {k: v * cfg.attack.scale for k, v in update.items()}
    if kind == "noise":
        std = cfg.attack.noise_std
        return {
            k: std * torch.randn(v.shape, generator=gen, dtype=torch.float32).to(v.dtype) for k, v in update.items()
        }
    return dict(update)
