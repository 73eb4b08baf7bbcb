"""Configs of the FedAvg family (the ``[algorithm]`` table of a recipe); each algorithm accepts only its own fields."""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedpeft.errors import ConfigError

#: How LoRA factors are aggregated (ALGORITHMS.md section 1); see fedpeft.algorithms.lora_aggregation.
LORA_MODES = ("average", "frozen_a", "zero_pad", "svd")


def _positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"algorithm.{name}", value, "a finite number > 0")


@dataclass
class FedAvgConfig:
    """FedAvg (McMahan et al. 2017) on adapters.

    ``weighted``: average client updates by their number of training examples (else uniformly).
    ``server_lr``: step size on the averaged update (1 = adopt the average).
    ``lora_mode``: ``average`` (FedIT: A and B averaged separately), ``frozen_a`` (FFA-LoRA; needs adapter method
    ``ffa_lora``, which makes averaging exact), ``zero_pad`` (HetLoRA) or ``svd`` (FlexLoRA) for heterogeneous ranks.
    ``client_ranks``: LoRA rank of each client for ``zero_pad`` / ``svd``, repeated cyclically over the clients
    (e.g. ``[4, 8, 16]``); every rank <= ``adapter.r``, the global rank.
    ``clip_norm``: scale every client update to L2 norm at most this before combining (a norm-clipping defence
    against scaled updates; unlike ``federation.max_update_norm``, which rejects them). ``lora_mode`` average /
    frozen_a only.
    """

    weighted: bool = True
    server_lr: float = 1.0
    lora_mode: str = "average"
    client_ranks: list[int] | None = None
    clip_norm: float | None = None

    def __post_init__(self) -> None:
        _positive("server_lr", self.server_lr)
        if self.clip_norm is not None:
            _positive("clip_norm", self.clip_norm)
        if self.lora_mode not in LORA_MODES:
            raise ConfigError("algorithm.lora_mode", self.lora_mode, LORA_MODES)
        heterogeneous = self.lora_mode in ("zero_pad", "svd")
        if heterogeneous and not self.client_ranks:
            raise ConfigError("algorithm.client_ranks", self.client_ranks, f"a list of ranks for {self.lora_mode!r}")
        if self.client_ranks is not None:
            if not heterogeneous:
                raise ConfigError(
                    "algorithm.client_ranks", self.client_ranks, "omitted unless lora_mode is zero_pad/svd"
                )
            if not self.client_ranks or any(
                isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in self.client_ranks
            ):
                raise ConfigError("algorithm.client_ranks", self.client_ranks, "a non-empty list of integers >= 1")


@dataclass
class FedProxConfig(FedAvgConfig):
    """FedProx (Li et al. 2020): each client adds ``mu/2 ||w - w_global||^2`` to its loss."""

    mu: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.mu, bool) or not isinstance(self.mu, (int, float)) or not self.mu >= 0:
            raise ConfigError("algorithm.mu", self.mu, "a number >= 0")


@dataclass
class FedAvgMConfig(FedAvgConfig):
    """FedAvgM (Hsu et al. 2019): server momentum on the averaged update."""

    momentum: float = 0.9

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.momentum < 1:
            raise ConfigError("algorithm.momentum", self.momentum, "a number in [0, 1)")


@dataclass
class FedOptConfig(FedAvgConfig):
    """FedAdam / FedYogi / FedAdagrad (Reddi et al. 2021): an adaptive server optimizer on the pseudo-gradient.

    ``server_lr`` is the paper's eta; ``tau`` its adaptivity (epsilon).
    """

    server_lr: float = 1e-2
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"algorithm.{name}", getattr(self, name), "a number in [0, 1)")
        _positive("tau", self.tau)


@dataclass
class TrimmedMeanConfig(FedAvgConfig):
    """Coordinate-wise trimmed mean (Yin et al. 2018): drop the ``beta`` fraction of largest and smallest values."""

    beta: float = 0.2

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.beta < 0.5:
            raise ConfigError("algorithm.beta", self.beta, "a number in [0, 0.5)")


@dataclass
class FLoRAConfig:
    """FLoRA (Wang et al., NeurIPS 2024): clients train fresh LoRAs each round, the server stacks them (exact).

    ``client_ranks``: each client's LoRA rank, repeated cyclically over the clients (default: ``adapter.r`` for all).
    """

    weighted: bool = True
    client_ranks: list[int] | None = None

    def __post_init__(self) -> None:
        ranks = self.client_ranks
        if ranks is not None and (
            not ranks or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in ranks)
        ):
            raise ConfigError("algorithm.client_ranks", ranks, "a non-empty list of integers >= 1")


@dataclass
class KrumConfig(FedAvgConfig):
    """(Multi-)Krum (Blanchard et al. 2017): ``byzantine`` = f, the number of Byzantine clients tolerated per round
    (needs clients per round > f + 2); ``select`` = m updates averaged (1 = Krum; 0 = n - f, multi-Krum)."""

    byzantine: int = 1
    select: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.byzantine, bool) or not isinstance(self.byzantine, int) or self.byzantine < 0:
            raise ConfigError("algorithm.byzantine", self.byzantine, "an integer >= 0")
        if isinstance(self.select, bool) or not isinstance(self.select, int) or self.select < 0:
            raise ConfigError("algorithm.select", self.select, "an integer >= 0 (0 = clients per round - byzantine)")
