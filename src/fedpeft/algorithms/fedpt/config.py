"""FedPT's ``[algorithm]`` table."""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedpeft.algorithms.fedavg.config import FedAvgConfig
from fedpeft.errors import ConfigError

DISTILL_POSITIONS = ("all", "last")


@dataclass
class FedPTConfig(FedAvgConfig):
    """FedPT (Gao et al., arXiv 2410.00362): federated LoRA on a small model; the server proxy-tunes a large
    black-box model with it (``z_L + alpha * (z_S_tuned - z_S_pre)``, Liu et al. 2024) and distills the
    proxy-tuned large model back into the aggregated small model, which starts the next round. The FedAvg fields
    (``weighted``, ``server_lr``, ``lora_mode``) apply to the small model's aggregation.

    ``large``: the role in ``[server.models]`` of the large model (it must share the clients' vocabulary; list
    both in ``server.same_vocab``). ``alpha``: the proxy strength (the paper: 1.0).
    ``distill``: distill after each round's aggregation (False = proxy-tuning only: the small model is plain
    federated LoRA). ``distill_steps`` server steps per round of ``distill_batch`` prompts from ``[server.data]``
    (unlabeled), Adam at ``distill_lr``; ``temperature`` of the forward KL; ``distill_positions``: ``all`` (every
    prompt position's next-token distribution) or ``last`` (the position after the prompt only: the answer's first
    token, all that label-word classification reads).
    ``eval_small`` / ``eval_large``: also evaluate, every evaluated round, the small model (the global adapter)
    and, once, the untuned large model (a reference), next to the proxy-tuned large model, whose metrics are the
    round's headline.
    """

    large: str = "large"
    alpha: float = 1.0
    distill: bool = True
    distill_steps: int = 20
    distill_batch: int = 16
    distill_lr: float = 1e-3
    temperature: float = 1.0
    distill_positions: str = "all"
    eval_small: bool = True
    eval_large: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.large, str) or not self.large.isidentifier():
            raise ConfigError("algorithm.large", self.large, "a role name of [server.models]")
        for name in ("alpha", "distill_lr", "temperature"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"algorithm.{name}", value, "a finite number")
        for name in ("distill_lr", "temperature"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"algorithm.{name}", getattr(self, name), "a number > 0")
        for name in ("distill_steps", "distill_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "distill_steps" else 1):
                raise ConfigError(f"algorithm.{name}", value, f"an integer >= {0 if name == 'distill_steps' else 1}")
        if self.distill_positions not in DISTILL_POSITIONS:
            raise ConfigError("algorithm.distill_positions", self.distill_positions, DISTILL_POSITIONS)
        if self.client_ranks is not None:
            raise ConfigError("algorithm.client_ranks", self.client_ranks, "omitted (the server's copy has one rank)")
