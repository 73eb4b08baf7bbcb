"""The FedAvg family's server program: one class, specialised by overriding one hook each.

- :class:`FedAvg` sample -> send the global adapter -> receive updates -> validate -> aggregate -> server step.
- :class:`FedProx` overrides :meth:`FedAvg.train_config` (the client adds the proximal term).
- :class:`FedAvgM`, :class:`FedAdam`, :class:`FedYogi`, :class:`FedAdagrad` override :meth:`FedAvg.make_optimizer`.
- :class:`FedMedian`, :class:`FedTrimmedAvg` override :meth:`FedAvg.combine` (robust aggregation of the updates).
LoRA modes (FFA-LoRA, HetLoRA zero-padding, FlexLoRA SVD re-projection) are chosen by ``algorithm.lora_mode``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from fedpeft.algorithms.aggregation import (
    FedAdagrad as FedAdagradOpt,
)
from fedpeft.algorithms.aggregation import (
    FedAdam as FedAdamOpt,
)
from fedpeft.algorithms.aggregation import (
    FedAvgM as FedAvgMOpt,
)
from fedpeft.algorithms.aggregation import (
    FedAvgServer,
    ServerOptimizer,
    State,
    clip_norms,
    coordinate_median,
    multi_krum,
    state_add,
    state_sub,
    trimmed_mean,
    weighted_average,
)
from fedpeft.algorithms.aggregation import (
    FedYogi as FedYogiOpt,
)
from fedpeft.algorithms.base import Accepted, Algorithm, Grid, Msg, Scalar, ServerContext
from fedpeft.algorithms.fedavg import client
from fedpeft.algorithms.fedavg.config import (
    FedAvgConfig,
    FedAvgMConfig,
    FedOptConfig,
    FedProxConfig,
    KrumConfig,
    TrimmedMeanConfig,
)
from fedpeft.algorithms.lora_aggregation import lora_pairs, svd_reproject, truncate_to_rank, zero_pad_aggregate
from fedpeft.algorithms.secure_aggregation import secure_mean
from fedpeft.errors import ConfigError
from fedpeft.privacy import dp
from fedpeft.registry import register_algorithm

if TYPE_CHECKING:
    from fedpeft.config import RunConfig


@register_algorithm("fedavg")
class FedAvg(Algorithm):
    """FedAvg on adapter updates, sample-weighted (McMahan et al., AISTATS 2017)."""

    config_cls = FedAvgConfig
    client_app = client.app
    opts: FedAvgConfig
    #: the round's aggregate is a (weighted) sum of updates, so SecAgg can compute it (privacy.secure_aggregation)
    supports_secure_aggregation = True
    simulates_attacks = True  # its train handler plays [attack] (robust variants below are the defences)

    def __init__(self, cfg: RunConfig, server: ServerContext) -> None:
        super().__init__(cfg, server)
        self.state: State = {k: v.clone() for k, v in server.initial_state.items()}
        self.optimizer = self.make_optimizer()
        self.dp_rounds: dict[str, int] = {}  # client -> rounds it took part in (local DP accounting)
        self.dp_sample_eps: dict[str, float] = {}  # client -> its examples' epsilon so far (DP-SGD)
        self.dp_epsilon = 0.0
        if self.opts.lora_mode in ("zero_pad", "svd") and not lora_pairs(self.state):
            raise ConfigError("algorithm.lora_mode", self.opts.lora_mode, "a LoRA adapter (no LoRA factors found)")

    # ------------------------------------------------------------------ hooks
    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        opts: FedAvgConfig = cfg.algorithm
        if opts.lora_mode == "frozen_a" and cfg.adapter.method != "ffa_lora":
            raise ConfigError("adapter.method", cfg.adapter.method, "'ffa_lora' when algorithm.lora_mode='frozen_a'")
        if opts.client_ranks and max(opts.client_ranks) > cfg.adapter.r:
            raise ConfigError(
                "algorithm.client_ranks", opts.client_ranks, f"ranks <= adapter.r={cfg.adapter.r} (the global rank)"
            )
        if opts.client_ranks and cfg.adapter.method not in ("lora", "rslora"):
            raise ConfigError("adapter.method", cfg.adapter.method, "'lora' or 'rslora' for heterogeneous ranks")
        summed = cfg.privacy.secure_aggregation or cfg.privacy.dp != "off"
        if opts.clip_norm is not None and opts.lora_mode not in ("average", "frozen_a"):
            raise ConfigError("algorithm.clip_norm", opts.clip_norm, "unset unless lora_mode is average / frozen_a")
        if summed and opts.lora_mode not in ("average", "frozen_a"):
            raise ConfigError(
                "algorithm.lora_mode", opts.lora_mode, "'average' or 'frozen_a' under secure aggregation or DP (a sum)"
            )

    def make_optimizer(self) -> ServerOptimizer:
        """The server step applied to the combined update (plain FedAvg: ``x + server_lr * mean update``)."""
        return FedAvgServer(lr=self.opts.server_lr)

    def train_config(self, rnd: int, client_id: int) -> dict[str, Scalar]:
        """Settings sent with each ``train`` message."""
        cfg: dict[str, Scalar] = {"round": rnd, "lr": self.client_lr(rnd)}
        priv = self.cfg.privacy
        if priv.dp in ("central", "local"):  # the client clips its update (local DP: noises it) before it leaves
            cfg["dp_clip"] = priv.dp_clip
            if priv.dp == "local":
                cfg["dp_noise_std"] = priv.dp_noise_multiplier * priv.dp_clip
        rank = self.client_rank(client_id)
        if rank:
            cfg["rank"] = rank
        return cfg

    def train_message(self, rnd: int, client_id: int, payload: State) -> Msg:
        """One client's message of the round: ``payload`` (the global adapter at its rank) with the ``train``
        action. Override to send more (another action, extra arrays of other payload kinds); the reply must still
        be an update with the keys and shapes of ``payload``."""
        return Msg("train", payload, self.train_config(rnd, client_id))

    def combine(self, updates: Sequence[State], weights: Sequence[float]) -> State:
        """Combine client updates into one (the weighted mean; robust variants override)."""
        return weighted_average(updates, weights if self.opts.weighted else None)

    # ------------------------------------------------------------------ the round
    def client_rank(self, client_id: int) -> int:
        ranks = self.opts.client_ranks
        return ranks[client_id % len(ranks)] if ranks else 0

    def payload(self, client_id: int) -> State:
        """What the client receives: the global adapter, cut to the client's rank under heterogeneous ranks."""
        rank = self.client_rank(client_id)
        return truncate_to_rank(self.state, rank) if rank else self.state

    def fit_round(self, rnd: int, grid: Grid) -> dict[str, Any]:
        clients = self.sample_clients(rnd, grid.client_ids())
        payloads = {c: self.payload(c) for c in clients}
        msgs = [(c, self.train_message(rnd, c, payloads[c])) for c in clients]
        priv = self.cfg.privacy
        if priv.secure_aggregation:  # the server learns the sum only (algorithms/secure_aggregation.py)
            client_level = priv.dp in ("central", "local")
            mean, info = secure_mean(self, rnd, grid, msgs, self.state, self.opts.weighted and not client_level)
            reported = info.pop("reported", {})
            if mean is not None and client_level:  # DP: the sum over the expected count, plus central noise
                mean = self.dp_mean([mean], len(info["clients"]))
            if mean is not None:
                self.state = self.optimizer.step(self.state, mean)
            return self.dp_account(rnd, info, reported)
        accepted = self.collect(rnd, grid, msgs, reference=lambda c: payloads[c])
        info = {"clients": [a.client_id for a in accepted], "sampled": clients}
        reported = {a.client_id: a.metrics for a in accepted}
        if not accepted:
            return self.dp_account(rnd, info, reported)  # nothing valid came back: the global adapter stays
        total = sum(a.num_examples for a in accepted)
        info["train_loss"] = sum(a.metrics.get("loss", 0.0) * a.num_examples for a in accepted) / total
        if priv.dp in ("central", "local"):
            # clipped again here: a client that skipped its own clipping gains nothing
            clipped = clip_norms([a.arrays for a in accepted], priv.dp_clip)
            delta = self.dp_mean(clipped, 1)
        else:
            delta = self.aggregate_updates(accepted, payloads)
        self.state = self.optimizer.step(self.state, delta)
        return self.dp_account(rnd, info, reported)

    # ------------------------------------------------------------------ client-level DP (privacy.dp)
    def dp_mean(self, parts: Sequence[State], scale: int) -> State:
        """DP-FedAvg's mean: ``scale *`` the sum of ``parts`` over the expected clients per round, plus (central)
        Gaussian noise of std ``z * C`` on the sum."""
        priv, k = self.cfg.privacy, self.cfg.federation.clients_per_round
        total = {key: torch.stack([p[key] for p in parts]).sum(0) * scale for key in parts[0]}
        if priv.dp == "central":
            total = dp.add_noise(total, priv.dp_noise_multiplier * priv.dp_clip, dp.noise_generator())
        return {key: v / k for key, v in total.items()}

    def dp_account(self, rnd: int, info: dict[str, Any], reported: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
        """Add the privacy spent so far (epsilon at delta) to the round's ``info``; ``reported``: the clients'
        metrics this round (DP-SGD clients report their own epsilon)."""
        priv, fed = self.cfg.privacy, self.cfg.federation
        if priv.dp == "off":
            return info
        for c in info.get("clients", []):
            self.dp_rounds[str(c)] = self.dp_rounds.get(str(c), 0) + 1
        if priv.dp == "sample":  # each client's examples; the worst client so far
            for c, m in reported.items():
                if "dp_epsilon" in m:
                    self.dp_sample_eps[str(c)] = float(m["dp_epsilon"])
            eps = max(self.dp_sample_eps.values(), default=0.0)
        elif priv.dp == "central":
            eps = dp.epsilon(priv.dp_noise_multiplier, fed.clients_per_round / fed.num_clients, rnd, priv.dp_delta)
        else:  # each client's own releases, unsampled; the worst client
            most = max(self.dp_rounds.values(), default=0)
            eps = dp.epsilon(priv.dp_noise_multiplier, 1.0, most, priv.dp_delta)
        self.dp_epsilon = eps
        info.update(dp_epsilon=eps, dp_delta=priv.dp_delta)
        return info

    def results(self) -> dict[str, Any]:
        out = super().results()
        priv = self.cfg.privacy
        if priv.dp != "off":
            out["privacy"] = {
                "dp": priv.dp,
                "epsilon": self.dp_epsilon,
                "delta": priv.dp_delta,
                "noise_multiplier": priv.dp_noise_multiplier,
                "clip": priv.dp_clip,
                "accountant": "opacus RDP, "
                + ("example-level, worst client" if priv.dp == "sample" else "client-level"),
            }
        return out

    def aggregate_updates(self, accepted: Sequence[Accepted], payloads: Mapping[int, State]) -> State:
        """The pseudo-gradient ``delta`` for the server optimizer, by LoRA mode."""
        weights = [float(a.num_examples) for a in accepted]
        mode = self.opts.lora_mode
        if mode in ("average", "frozen_a"):
            updates = [a.arrays for a in accepted]
            if self.opts.clip_norm is not None:  # bound each client's pull before the combination
                updates = clip_norms(updates, self.opts.clip_norm)
            return self.combine(updates, weights)
        # Heterogeneous ranks: rebuild each client's local adapter at its rank, combine at the global rank.
        locals_ = [state_add(payloads[a.client_id], a.arrays) for a in accepted]
        w = weights if self.opts.weighted else None
        if mode == "zero_pad":
            merged = zero_pad_aggregate(locals_, w, max_rank=self.cfg.adapter.r)
        else:
            merged = svd_reproject(locals_, w, rank=self.cfg.adapter.r)
        return state_sub(merged, self.state)

    def global_state(self) -> State:
        return self.state

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "state": self.state,
            "optimizer": self.optimizer.state_dict(),
            "dp": {"rounds": self.dp_rounds, "epsilon": self.dp_epsilon, "sample": self.dp_sample_eps},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.state = dict(state["state"])
        self.optimizer.load_state_dict(state["optimizer"])
        spent = state.get("dp", {})
        self.dp_rounds = {str(k): int(v) for k, v in spent.get("rounds", {}).items()}
        self.dp_epsilon = float(spent.get("epsilon", 0.0))
        self.dp_sample_eps = {str(k): float(v) for k, v in spent.get("sample", {}).items()}


@register_algorithm("fedprox")
class FedProx(FedAvg):
    """FedProx (Li et al., MLSys 2020): the proximal term limits client drift under heterogeneity."""

    config_cls = FedProxConfig
    opts: FedProxConfig

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        super().check_config(cfg)
        if cfg.privacy.dp == "sample" and cfg.algorithm.mu > 0:  # the proximal term has no per-example gradient
            raise ConfigError("privacy.dp", "sample", "not with FedProx's proximal term (use dp = 'central' / 'local')")

    def train_config(self, rnd: int, client_id: int) -> dict[str, Scalar]:
        return {**super().train_config(rnd, client_id), "proximal_mu": self.opts.mu}


@register_algorithm("fedavgm")
class FedAvgM(FedAvg):
    """FedAvgM (Hsu et al. 2019): server momentum."""

    config_cls = FedAvgMConfig
    opts: FedAvgMConfig

    def make_optimizer(self) -> ServerOptimizer:
        return FedAvgMOpt(lr=self.opts.server_lr, momentum=self.opts.momentum)


@register_algorithm("fedadam")
class FedAdam(FedAvg):
    """FedAdam (Reddi et al., ICLR 2021)."""

    config_cls = FedOptConfig
    opts: FedOptConfig
    optimizer_cls: type[ServerOptimizer] = FedAdamOpt

    def make_optimizer(self) -> ServerOptimizer:
        o = self.opts
        return self.optimizer_cls(eta=o.server_lr, beta1=o.beta1, beta2=o.beta2, tau=o.tau)  # type: ignore[call-arg]


@register_algorithm("fedyogi")
class FedYogi(FedAdam):
    """FedYogi (Reddi et al., ICLR 2021)."""

    optimizer_cls = FedYogiOpt


@register_algorithm("fedadagrad")
class FedAdagrad(FedAdam):
    """FedAdagrad (Reddi et al., ICLR 2021)."""

    optimizer_cls = FedAdagradOpt


@register_algorithm("fedmedian")
class FedMedian(FedAvg):
    """Coordinate-wise median of the updates (Yin et al., ICML 2018); unweighted by definition."""

    supports_secure_aggregation = False  # a median needs every single update

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        super().check_config(cfg)
        if cfg.algorithm.lora_mode not in ("average", "frozen_a"):
            raise ConfigError("algorithm.lora_mode", cfg.algorithm.lora_mode, ["average", "frozen_a"])

    def combine(self, updates: Sequence[State], weights: Sequence[float]) -> State:
        return coordinate_median(updates)


@register_algorithm("fedtrimmedavg")
class FedTrimmedAvg(FedMedian):
    """Coordinate-wise trimmed mean of the updates (Yin et al., ICML 2018)."""

    config_cls = TrimmedMeanConfig
    opts: TrimmedMeanConfig

    def combine(self, updates: Sequence[State], weights: Sequence[float]) -> State:
        return trimmed_mean(updates, self.opts.beta)


@register_algorithm("fedkrum")
class FedKrum(FedMedian):
    """(Multi-)Krum (Blanchard et al., NeurIPS 2017): average the updates closest to their neighbours."""

    config_cls = KrumConfig
    opts: KrumConfig

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        super().check_config(cfg)
        n, f = cfg.federation.clients_per_round, cfg.algorithm.byzantine
        if n <= f + 2:
            raise ConfigError("algorithm.byzantine", f, f"fewer than clients per round - 2 = {n - 2}")

    def combine(self, updates: Sequence[State], weights: Sequence[float]) -> State:
        f = min(self.opts.byzantine, len(updates) - 3)  # a round with dropouts: still a valid Krum
        if f < 0:
            return coordinate_median(updates)  # fewer than 3 updates: nothing to score
        select = self.opts.select or len(updates) - f
        return multi_krum(updates, f, min(select, len(updates)))
