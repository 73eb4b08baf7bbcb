"""The ``local`` runtime: every client in this process, one base model, adapters swapped per client.

Memory per simulated client is its data references plus its persistent state (e.g. error-feedback residuals);
the model exists once. Messages still go through the same codec/compression path as on Flower (:func:`serve`), so
bytes, compression error and results are the same on both runtimes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from fedpeft.algorithms import get_algorithm
from fedpeft.algorithms.base import ClientApp, ClientContext, ClientData, Msg, Reply
from fedpeft.comm.codec import WireState
from fedpeft.comm.ledger import ByteLedger
from fedpeft.comm.transport import Channel, Packet
from fedpeft.config import RunConfig
from fedpeft.runtime.session import Session
from fedpeft.runtime.setup import ServerModel, build_federated_data, build_model
from fedpeft.runtime.transport import serve, unpack


class LocalGrid:
    """Delivers messages by calling the client handlers in-process, one client after another."""

    def __init__(
        self, app: ClientApp, model: torch.nn.Module, cfg: RunConfig, clients: Sequence[ClientData], quiet: bool = True
    ) -> None:
        self.app, self.model, self.cfg, self.clients, self.quiet = app, model, cfg, clients, quiet
        self.ledger = ByteLedger()
        self.states: dict[int, dict[str, Any]] = {cid: {} for cid in range(len(clients))}

    def client_ids(self) -> list[int]:
        return list(range(len(self.clients)))

    def send_and_receive(
        self, messages: Sequence[tuple[int, Msg]], *, round: int, timeout: float | None = None
    ) -> list[Reply]:
        from tqdm.auto import tqdm

        down, up = Channel(self.cfg.comm, "down"), Channel(self.cfg.comm, "up")
        encoded: dict[tuple[int, str], WireState] = {}  # the same arrays sent to many clients are encoded once
        replies: list[Reply] = []
        ordered = sorted(messages, key=lambda m: m[0])
        for cid, msg in tqdm(ordered, desc=f"round {round}", unit="client", leave=False, disable=self.quiet):
            if cid not in self.states:
                raise ValueError(f"client id {cid} does not exist; clients are 0..{len(self.clients) - 1}")
            key = (id(msg.arrays), repr(sorted(msg.kinds.items())))
            wire = encoded.get(key)
            if wire is None:
                wire = encoded[key] = down.encode(dict(msg.arrays), msg.kinds)
            self.ledger.record_kinds(round, cid, "down", wire.nbytes_by_kind())
            # The handler works on a copy of the client's state, kept only if it succeeds (as Flower does).
            ctx = ClientContext(cid, self.model, self.clients[cid], dict(self.states[cid]), self.cfg)
            t0 = time.perf_counter()
            try:
                out = serve(self.app, ctx, Packet(msg.action, wire, dict(msg.config)))
            except Exception as exc:  # a failing client is a failed reply, as on Flower; the server logs it
                replies.append(Reply(cid, None, f"{type(exc).__name__}: {exc}", 0, wire.nbytes))
                continue
            self.states[cid] = ctx.state
            self.ledger.record_kinds(round, cid, "up", out.wire.nbytes_by_kind())
            seconds = time.perf_counter() - t0
            replies.append(Reply(cid, unpack(out, up), None, out.nbytes, wire.nbytes, seconds, dict(out.cost)))
        return replies

    # client states travel in local checkpoints (on Flower they live on the nodes)
    def state_dict(self) -> dict[str, Any]:
        return {"states": self.states, "ledger": self.ledger.to_records()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.states = {int(k): dict(v) for k, v in state["states"].items()}
        self.ledger.load_records(state["ledger"])


def run_local(session: Session) -> None:
    """Build model, data and grid in this process and run the algorithm (the ``local`` runtime)."""
    cfg = session.cfg
    model, tokenizer = build_model(cfg)
    data = build_federated_data(cfg, tokenizer)
    server = ServerModel(cfg, model, data.task, session.run.path)
    grid = LocalGrid(get_algorithm(cfg.federation.algorithm).client_app, model, cfg, data.clients, session.quiet)
    session.execute(grid, server, data)
