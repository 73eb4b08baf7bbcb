"""The device budget of a run: what each client's device spent, from the cost every reply carries.

Every reply of every runtime carries its device cost (:func:`fedpeft.runtime.transport.serve`): wall seconds,
FLOPs, trainable parameters and parameters the device holds. :class:`MeteredGrid` wraps the runtime's grid so that
the algorithm's every exchange (whatever phase, whatever action) lands in one :class:`DeviceBudget`; bytes per kind
come from the grid's ledger. The budget is the yardstick of the resource-constrained-device techniques: a method
that saves device FLOPs or memory shows it here, next to what it costs in bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fedpeft.algorithms.base import Grid, Msg, Reply
from fedpeft.comm.ledger import ByteLedger

__all__ = ["DeviceBudget", "MeteredGrid"]

_SUMMED = ("seconds", "flops")  # per message, added up
_PEAK = ("trainable_params", "params_held")  # per message, the largest seen


class DeviceBudget:
    """Per client: messages served, rounds taken part in, summed seconds and FLOPs, peak parameter counts."""

    def __init__(self) -> None:
        self.clients: dict[int, dict[str, Any]] = {}

    def add(self, client: int, round: int, cost: dict[str, float]) -> None:
        row = self.clients.setdefault(client, {"messages": 0, "rounds": [], **dict.fromkeys(_SUMMED + _PEAK, 0.0)})
        row["messages"] += 1
        if round not in row["rounds"]:
            row["rounds"].append(round)
        for key in _SUMMED:
            row[key] += float(cost.get(key, 0.0))
        for key in _PEAK:
            row[key] = max(row[key], float(cost.get(key, 0.0)))

    def table(self, ledger: ByteLedger) -> dict[str, Any]:
        """``{"per_client": {id: row}, "max": row, "mean": row}``; a row has seconds and FLOPs in total and per
        round taken part in, peak parameter counts, and bytes up / down in total and by payload kind."""
        per_kind: dict[str, dict[str, dict[str, int]]] = {}
        for t in ledger.transfers:
            row = per_kind.setdefault(t.client_id, {})
            row.setdefault(t.kind, {"up": 0, "down": 0})[t.direction] += t.nbytes
        rows: dict[str, dict[str, Any]] = {}
        for cid, acc in sorted(self.clients.items()):
            rounds = max(1, len(acc["rounds"]))
            kinds = per_kind.get(str(cid), {})
            rows[str(cid)] = {
                "messages": acc["messages"],
                "rounds": len(acc["rounds"]),
                "seconds": round(acc["seconds"], 3),
                "seconds_per_round": round(acc["seconds"] / rounds, 3),
                "flops": int(acc["flops"]),
                "flops_per_round": int(acc["flops"] / rounds),
                "trainable_params": int(acc["trainable_params"]),
                "params_held": int(acc["params_held"]),
                "bytes_up": sum(k["up"] for k in kinds.values()),
                "bytes_down": sum(k["down"] for k in kinds.values()),
                "bytes_by_kind": kinds,
            }
        numeric = [k for k in next(iter(rows.values()), {}) if k != "bytes_by_kind"]
        out: dict[str, Any] = {"per_client": rows}
        if rows:
            out["max"] = {k: max(r[k] for r in rows.values()) for k in numeric}
            out["mean"] = {k: round(sum(r[k] for r in rows.values()) / len(rows), 3) for k in numeric}
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"clients": {cid: dict(row, rounds=list(row["rounds"])) for cid, row in self.clients.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.clients = {int(cid): dict(row, rounds=list(row["rounds"])) for cid, row in state["clients"].items()}


class MeteredGrid:
    """The runtime's grid as the algorithm sees it: every reply's device cost goes into :attr:`budget`."""

    def __init__(self, grid: Grid, budget: DeviceBudget | None = None) -> None:
        self.inner = grid
        self.budget = budget if budget is not None else DeviceBudget()
        self.ledger: ByteLedger = grid.ledger  # the same object: the runtime records, the algorithm reads

    def client_ids(self) -> list[int]:
        return self.inner.client_ids()

    def send_and_receive(
        self, messages: Sequence[tuple[int, Msg]], *, round: int, timeout: float | None = None
    ) -> list[Reply]:
        replies = self.inner.send_and_receive(messages, round=round, timeout=timeout)
        for reply in replies:
            if reply.ok:
                self.budget.add(reply.client_id, round, reply.cost)
        return replies

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)
