"""FLoRA: stacking-based exact aggregation of (heterogeneous-rank) LoRA adapters.

Wang et al., "FLoRA: Federated Fine-Tuning Large Language Models with Heterogeneous Low-Rank Adaptations",
NeurIPS 2024. Each round every sampled client trains a *fresh* LoRA (rank ``r_k``) on top of the merged model
``W_t = W_0 + sum_{τ<t} ΔW_τ``; the server stacks the client factors along the rank
(:func:`~fedpeft.algorithms.lora_aggregation.stack_lora`), so ``ΔW_t = s · B_stack · A_stack`` is exactly the
weighted sum of the clients' ``s · B_k · A_k`` (averaging A and B separately is not), and the clients merge it into
their weights. Here each client keeps its merged update as dense per-module matrices in its persistent state (the
"merged weights" a FLoRA client holds) and receives, with its next message, every stacked round it has not merged
yet, so downlink bytes are the stacks, as in the paper. The global adapter is the concatenation of all stacks: a
LoRA of rank ``sum_t sum_k r_k``, evaluated by merging it into the base and exported as such a LoRA in Hugging Face
PEFT format.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from fedpeft.adapters import adapter_state
from fedpeft.adapters.merge import added_to_base, lora_scaling
from fedpeft.algorithms.aggregation import State
from fedpeft.algorithms.base import Algorithm, ClientApp, ClientContext, Grid, Msg, Scalar, ServerContext
from fedpeft.algorithms.fedavg.config import FLoRAConfig
from fedpeft.algorithms.local_training import evaluate_local, round_train_config, train_local, train_metrics
from fedpeft.algorithms.lora_aggregation import concat_lora, lora_deltas, lora_pairs, stack_lora, truncate_to_rank
from fedpeft.errors import ConfigError
from fedpeft.registry import register_algorithm

if TYPE_CHECKING:
    from fedpeft.config import RunConfig

MERGED = "flora_merged/"  # client state keys: this client's merged dense update per LoRA module


def merge_pending(ctx: ClientContext, pending: State, scaling: float) -> dict[str, torch.Tensor]:
    """Fold the stacked rounds just received into the client's merged update (kept in its state); return it."""
    merged = {k[len(MERGED) :]: v for k, v in ctx.state.items() if k.startswith(MERGED)}
    for prefix, delta in lora_deltas(pending, scaling).items():  # [out, in] each
        merged[prefix] = merged[prefix] + delta if prefix in merged else delta
    ctx.state.update({MERGED + k: v for k, v in merged.items()})
    return merged


def fresh_lora(ctx: ClientContext, rnd: int, rank: int) -> State:
    """A new LoRA for this round, as PEFT initialises one (A ~ U(-1/sqrt(in), 1/sqrt(in)), B = 0), seeded by
    (seed, round, client); components beyond ``rank`` are zero, so they stay zero while training."""
    gen = ctx.generator(rnd, "flora_init")
    state = {k: torch.zeros_like(v) for k, v in adapter_state(ctx.model).items()}
    for a_key, _ in lora_pairs(state).values():
        a = state[a_key]  # [r, in]
        bound = 1.0 / a.shape[1] ** 0.5
        a[:rank] = (torch.rand(rank, a.shape[1], generator=gen) * 2 - 1) * bound
    return state


app = ClientApp("flora")


@app.on("train.flora")
def flora_train(ctx: ClientContext, msg: Msg) -> Msg:
    rnd, rank, scaling = int(msg.config["round"]), int(msg.config["rank"]), float(msg.config["scaling"])
    merged = merge_pending(ctx, msg.arrays, scaling)
    start = fresh_lora(ctx, rnd, rank)
    with added_to_base(ctx.model, merged):  # train on top of W_0 + sum of the merged rounds
        local, result = train_local(ctx, start, ctx.data.train, round_train_config(ctx, msg), rnd)
    return Msg("train.flora", arrays=truncate_to_rank(local, rank), metrics=train_metrics(ctx, result))


@app.on("evaluate.flora")
def flora_evaluate(ctx: ClientContext, msg: Msg) -> Msg:
    merged = merge_pending(ctx, msg.arrays, float(msg.config["scaling"]))
    zero = {k: torch.zeros_like(v) for k, v in adapter_state(ctx.model).items()}
    with added_to_base(ctx.model, merged):
        metrics = evaluate_local(ctx, zero, int(msg.config.get("limit", 64)))
    return Msg("evaluate.flora", metrics=metrics)


@register_algorithm("flora")
class FLoRA(Algorithm):
    """FLoRA (Wang et al., NeurIPS 2024): exact aggregation by stacking client LoRAs; heterogeneous ranks allowed."""

    config_cls = FLoRAConfig
    client_app = app
    opts: FLoRAConfig

    def __init__(self, cfg: RunConfig, server: ServerContext) -> None:
        super().__init__(cfg, server)
        self.initial = {k: v.clone() for k, v in server.initial_state.items()}
        self.scaling = lora_scaling(cfg.adapter)
        self.stacks: list[State] = []  # ΔW_t = scaling * B_t A_t for each finished round t
        self.synced: dict[int, int] = {}  # client -> how many stacks it has merged

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        if cfg.adapter.method != "lora":
            raise ConfigError("adapter.method", cfg.adapter.method, "'lora' for federation.algorithm='flora'")
        ranks = cfg.algorithm.client_ranks
        if ranks and max(ranks) > cfg.adapter.r:
            raise ConfigError("algorithm.client_ranks", ranks, f"ranks <= adapter.r={cfg.adapter.r}")

    def client_rank(self, client_id: int) -> int:
        ranks = self.opts.client_ranks
        return ranks[client_id % len(ranks)] if ranks else self.cfg.adapter.r

    def pending(self, client_id: int) -> State:
        """Every stacked round this client has not merged yet, as one adapter (rank = their summed ranks)."""
        return concat_lora(self.stacks[self.synced.get(client_id, 0) :])

    def _send(
        self, rnd: int, clients: Sequence[int], action: str, extra: Mapping[str, Scalar]
    ) -> list[tuple[int, Msg]]:
        msgs = []
        for c in clients:
            config: dict[str, Scalar] = {"round": rnd, "lr": self.client_lr(rnd), "rank": self.client_rank(c)}
            config["scaling"] = self.scaling
            config.update(extra)
            msgs.append((c, Msg(action, self.pending(c), config)))
        return msgs

    def fit_round(self, rnd: int, grid: Grid) -> dict[str, Any]:
        clients = self.sample_clients(rnd, grid.client_ids())
        template = {k: torch.zeros_like(v) for k, v in self.initial.items()}
        msgs = self._send(rnd, clients, "train.flora", {})
        accepted = self.collect(rnd, grid, msgs, reference=lambda c: truncate_to_rank(template, self.client_rank(c)))
        for c in self.replied:  # their handlers ran, so they merged what they were sent
            self.synced[c] = len(self.stacks)
        info: dict[str, Any] = {"clients": [a.client_id for a in accepted], "sampled": clients}
        if not accepted:
            return info
        total = sum(a.num_examples for a in accepted)
        info["train_loss"] = sum(a.metrics.get("loss", 0.0) * a.num_examples for a in accepted) / total
        weights = [float(a.num_examples) for a in accepted] if self.opts.weighted else None
        self.stacks.append(stack_lora([a.arrays for a in accepted], weights))
        a_key = next(iter(lora_pairs(self.stacks[-1]).values()))[0]
        info["global_rank"] = sum(s[a_key].shape[0] for s in self.stacks)
        return info

    def client_eval_messages(self, rnd: int, clients: Sequence[int]) -> list[tuple[int, Msg]]:
        return self._send(rnd, clients, "evaluate.flora", {"limit": self.cfg.federation.client_eval_limit})

    def evaluate_clients(self, rnd: int, grid: Grid) -> None:
        super().evaluate_clients(rnd, grid)
        for c in self.replied:  # they merged the stacks they were sent
            self.synced[c] = len(self.stacks)

    def global_state(self) -> State:
        """All stacks concatenated (exact global update), or the initial adapter (B = 0) before round 1."""
        return concat_lora(self.stacks) if self.stacks else self.initial

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "stacks": self.stacks, "synced": self.synced}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.stacks = list(state["stacks"])
        self.synced = {int(k): int(v) for k, v in state["synced"].items()}
