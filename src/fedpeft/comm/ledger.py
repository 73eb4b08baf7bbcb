"""Byte ledger: every transfer, per round, client, direction, payload kind and phase of the run."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["DIRECTIONS", "PHASES", "ByteLedger", "Transfer"]

DIRECTIONS = ("up", "down")
#: the phases of a run: ``prepare`` (before round 1), ``round`` (the rounds), ``finish`` (after the last round)
PHASES = ("prepare", "round", "finish")


@dataclass(frozen=True)
class Transfer:
    """One transfer: ``nbytes`` of payload ``kind`` sent in ``round`` between the server and ``client_id``
    (``up`` = client to server), during ``phase``."""

    round: int
    client_id: str
    direction: str
    nbytes: int
    kind: str = "adapter"
    phase: str = "round"


class ByteLedger:
    """Records transfers and sums them per round, per client, per kind and overall.

    Transfers are tagged with the phase the ledger is in (:meth:`phase`), so runtimes record bytes without knowing
    which phase of the algorithm asked for the exchange.
    """

    def __init__(self) -> None:
        self.transfers: list[Transfer] = []
        self.current_phase = "round"

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Tag the transfers recorded inside the block with phase ``name``."""
        if name not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {name!r}")
        previous, self.current_phase = self.current_phase, name
        try:
            yield
        finally:
            self.current_phase = previous

    def record(
        self,
        round: int,
        client_id: str | int,
        direction: str,
        nbytes: int,
        kind: str = "adapter",
        phase: str | None = None,
    ) -> Transfer:
        """Add one transfer (tagged with the current phase unless ``phase`` is given); bad values raise ValueError."""
        if isinstance(round, bool) or not isinstance(round, int) or round < 0:
            raise ValueError(f"round must be a non-negative int, got {round!r}")
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
            raise ValueError(f"nbytes must be a non-negative int, got {nbytes!r}")
        if isinstance(client_id, bool) or not isinstance(client_id, (str, int)) or client_id == "":
            raise ValueError(f"client_id must be a non-empty str or an int, got {client_id!r}")
        if not isinstance(kind, str) or not kind:
            raise ValueError(f"kind must be a non-empty str, got {kind!r}")
        phase = self.current_phase if phase is None else phase
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        t = Transfer(round, str(client_id), direction, nbytes, kind, phase)
        self.transfers.append(t)
        return t

    def record_kinds(self, round: int, client_id: str | int, direction: str, by_kind: dict[str, int]) -> None:
        """One transfer per payload kind of one message (``WireState.nbytes_by_kind``); an empty message records
        a zero-byte adapter transfer, so every message is seen."""
        for kind, nbytes in (by_kind or {"adapter": 0}).items():
            self.record(round, client_id, direction, nbytes, kind)

    def _select(self, direction: str | None, phase: str | None = None) -> list[Transfer]:
        if direction is not None and direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS} or None, got {direction!r}")
        return [
            t
            for t in self.transfers
            if (direction is None or t.direction == direction) and (phase is None or t.phase == phase)
        ]

    def total(self, direction: str | None = None, phase: str | None = None) -> int:
        """All bytes (of one direction and/or phase, or all)."""
        return sum(t.nbytes for t in self._select(direction, phase))

    def per_round(self, direction: str | None = None, phase: str | None = None) -> dict[int, int]:
        """Bytes per round, rounds ascending."""
        acc: dict[int, int] = defaultdict(int)
        for t in self._select(direction, phase):
            acc[t.round] += t.nbytes
        return dict(sorted(acc.items()))

    def per_client(self, direction: str | None = None) -> dict[str, int]:
        """Bytes per client, in order of first appearance."""
        acc: dict[str, int] = defaultdict(int)
        for t in self._select(direction):
            acc[t.client_id] += t.nbytes
        return dict(acc)

    def per_kind(self, phase: str | None = None, round: int | None = None) -> dict[str, dict[str, int]]:
        """``{kind: {"up": bytes, "down": bytes}}`` (of one phase and/or round, or all), kinds in order of first
        appearance."""
        acc: dict[str, dict[str, int]] = {}
        for t in self._select(None, phase):
            if round is not None and t.round != round:
                continue
            row = acc.setdefault(t.kind, {d: 0 for d in DIRECTIONS})
            row[t.direction] += t.nbytes
        return acc

    def to_records(self) -> list[dict[str, Any]]:
        """One dict per transfer (``event="bytes"``), for metrics.jsonl and checkpoints."""
        return [{"event": "bytes", **asdict(t)} for t in self.transfers]

    def load_records(self, records: list[dict[str, Any]]) -> None:
        """Append the transfers of :meth:`to_records` (checkpoints written before kinds and phases were recorded
        read as adapter transfers of the rounds)."""
        for t in records:
            kind, phase = t.get("kind", "adapter"), t.get("phase", "round")
            self.record(t["round"], t["client_id"], t["direction"], t["nbytes"], kind, phase)
