"""A throwaway algorithm for the contract tests, registered from outside the package (``plugins`` in a recipe).

FedAvg plus:
- a ``prepare`` phase: each client reports its label counts, a large int64 and a bool mask (integer payloads of
  their own kinds) and the mean of its examples' layer features (a float ``features`` payload);
- rounds whose clients continue one persistent optimizer (a ``Trainer`` whose state lives in the client's state, so
  it must survive Flower's process boundaries);
- a ``finish`` phase: client 0 reports its counts again and how far the split forward (layers [0, k) then [k, L))
  is from the full forward, for every cut.
"""

from __future__ import annotations

from typing import Any

import torch

from fedpeft.algorithms.aggregation import State, state_sub
from fedpeft.algorithms.base import ClientApp, ClientContext, Grid, Msg
from fedpeft.algorithms.fedavg import FedAvg
from fedpeft.algorithms.fedavg.client import app as fedavg_app
from fedpeft.algorithms.local_training import round_train_config, train_local, train_metrics
from fedpeft.models.split import num_layers, split_loss
from fedpeft.registry import ALGORITHMS, register_algorithm
from fedpeft.training.features import layer_features
from fedpeft.training.losses import lm_loss
from fedpeft.training.trainer import Trainer

app = ClientApp("test_phases")
app.include(fedavg_app)
CALLS = {"prepare": 0, "finish": 0}  # how often this process ran each phase's server side


@app.on("query.label_counts")
def label_counts(ctx: ClientContext, msg: Msg) -> Msg:
    labels = torch.tensor([int(ex["label"]) for ex in ctx.data.train], dtype=torch.int64)
    counts = torch.bincount(labels, minlength=int(msg.config["num_labels"]))  # [num_labels] int64
    big = torch.tensor([2**40 + ctx.client_id], dtype=torch.int64)  # would not survive a float32 cast
    arrays = {"counts": counts, "big": big, "seen": counts > 0}
    kinds = {"counts": "counts", "big": "counts", "seen": "mask"}
    if msg.config.get("features"):
        arrays["feature"] = layer_features(ctx.model, list(ctx.data.train)[:8], ctx.data.collate).mean(0)  # [(L+1)H]
        kinds["feature"] = "features"
    return Msg("query.label_counts", arrays, metrics={"num_examples": len(ctx.data.train)}, kinds=kinds)


@app.on("train.persistent")
def train_persistent(ctx: ClientContext, msg: Msg) -> Msg:
    """FedAvg's client step, but the AdamW moments carry over from this client's previous rounds."""
    cfg, rnd = round_train_config(ctx, msg), int(msg.config["round"])
    trainer = Trainer(ctx.model, cfg, word_ids=ctx.data.word_ids)
    trainer.load_state_dict(ctx.state)  # empty on first contact: a fresh optimizer
    local, result = train_local(ctx, msg.arrays, ctx.data.train, cfg, rnd, trainer=trainer)
    ctx.state.update(trainer.state_dict())
    metrics = {**train_metrics(ctx, result), "optimizer_steps": float(trainer.step_count)}
    return Msg("train.persistent", state_sub(local, msg.arrays), metrics=metrics)


@app.on("query.split_check")
def split_check(ctx: ClientContext, msg: Msg) -> Msg:
    batch = ctx.data.collate(list(ctx.data.train)[:4])
    with torch.no_grad():
        full = float(lm_loss(ctx.model, batch))
        gaps = [abs(float(split_loss(ctx.model, batch, cut)) - full) for cut in range(num_layers(ctx.model) + 1)]
    return Msg("query.split_check", metrics={"max_gap": max(gaps), "cuts": float(len(gaps)), "loss": full})


if "test_phases" not in ALGORITHMS:

    @register_algorithm("test_phases")
    class PhaseAlgo(FedAvg):
        client_app = app

        def prepare(self, grid: Grid) -> dict[str, Any]:
            CALLS["prepare"] += 1
            ask = {"num_labels": 2, "features": True}
            msgs = [(c, Msg("query.label_counts", config=ask)) for c in grid.client_ids()]
            replies = grid.send_and_receive(msgs, round=0)
            self.counts = {r.client_id: r.msg.arrays for r in replies if r.ok and r.msg is not None}
            total = sum(a["counts"] for a in self.counts.values())
            held = self.server.server_data
            return {
                "label_counts": [int(x) for x in total],
                "big": [int(a["big"]) for a in self.counts.values()],
                "feature_sums": [float(a["feature"].sum()) for a in self.counts.values()],
                "server_models": {r: sum(p.numel() for p in m.parameters()) for r, m in self.server.models.items()},
                "server_examples": len(held.examples) if held is not None else 0,
            }

        def train_message(self, rnd: int, client_id: int, payload: State) -> Msg:
            return Msg("train.persistent", payload, self.train_config(rnd, client_id))

        def finish(self, grid: Grid) -> dict[str, Any]:
            CALLS["finish"] += 1
            msgs = [(0, Msg("query.label_counts", config={"num_labels": 2})), (0, Msg("query.split_check"))]
            replies = grid.send_and_receive(msgs, round=self.cfg.federation.rounds)
            check = replies[1].msg.metrics if replies[1].msg is not None else {}
            return {"clients": len(replies), **{f"split_{k}": v for k, v in check.items()}}
