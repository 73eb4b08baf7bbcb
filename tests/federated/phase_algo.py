"""A throwaway algorithm for the contract tests, registered from outside the package (``plugins`` in a recipe).

FedAvg plus a ``prepare`` phase (each client reports its label counts, a large int64 and a bool mask: integer
payloads of their own kinds) and a ``finish`` phase (client 0 reports them again).
"""

from __future__ import annotations

from typing import Any

import torch

from fedpeft.algorithms.base import ClientApp, ClientContext, Grid, Msg
from fedpeft.algorithms.fedavg import FedAvg
from fedpeft.algorithms.fedavg.client import app as fedavg_app
from fedpeft.registry import ALGORITHMS, register_algorithm

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
    return Msg("query.label_counts", arrays, metrics={"num_examples": len(ctx.data.train)}, kinds=kinds)


if "test_phases" not in ALGORITHMS:

    @register_algorithm("test_phases")
    class PhaseAlgo(FedAvg):
        client_app = app

        def prepare(self, grid: Grid) -> dict[str, Any]:
            CALLS["prepare"] += 1
            msgs = [(c, Msg("query.label_counts", config={"num_labels": 2})) for c in grid.client_ids()]
            replies = grid.send_and_receive(msgs, round=0)
            self.counts = {r.client_id: r.msg.arrays for r in replies if r.ok and r.msg is not None}
            total = sum(a["counts"] for a in self.counts.values())
            held = self.server.server_data
            return {
                "label_counts": [int(x) for x in total],
                "big": [int(a["big"]) for a in self.counts.values()],
                "server_models": {r: sum(p.numel() for p in m.parameters()) for r, m in self.server.models.items()},
                "server_examples": len(held.examples) if held is not None else 0,
            }

        def finish(self, grid: Grid) -> dict[str, Any]:
            CALLS["finish"] += 1
            replies = grid.send_and_receive([(0, Msg("query.label_counts", config={"num_labels": 2}))], round=0)
            return {"clients": len(replies)}
