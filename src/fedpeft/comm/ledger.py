"""Byte ledger: every transfer of a round, per client and direction."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["DIRECTIONS", "ByteLedger", "Transfer"]

DIRECTIONS = ("up", "down")


@dataclass(frozen=True)
class Transfer:
    """One transfer: ``nbytes`` sent in ``round`` between the server and ``client_id`` (``up`` = client to server)."""

    round: int
    client_id: str
    direction: str
    nbytes: int


class ByteLedger:
    """Records transfers and sums them per round, per client and overall."""

    def __init__(self) -> None:
        self.transfers: list[Transfer] = []

    def record(self, round: int, client_id: str | int, direction: str, nbytes: int) -> Transfer:
        """Add one transfer; bad round/direction/nbytes raise ValueError."""
        if isinstance(round, bool) or not isinstance(round, int) or round < 0:
            raise ValueError(f"round must be a non-negative int, got {round!r}")
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
            raise ValueError(f"nbytes must be a non-negative int, got {nbytes!r}")
        if isinstance(client_id, bool) or not isinstance(client_id, (str, int)) or client_id == "":
            raise ValueError(f"client_id must be a non-empty str or an int, got {client_id!r}")
        t = Transfer(round, str(client_id), direction, nbytes)
        self.transfers.append(t)
        return t

    def _select(self, direction: str | None) -> list[Transfer]:
        if direction is not None and direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS} or None, got {direction!r}")
        return [t for t in self.transfers if direction is None or t.direction == direction]

    def total(self, direction: str | None = None) -> int:
        """All bytes (of one direction, or both)."""
        return sum(t.nbytes for t in self._select(direction))

    def per_round(self, direction: str | None = None) -> dict[int, int]:
        """Bytes per round, rounds ascending."""
        acc: dict[int, int] = defaultdict(int)
        for t in self._select(direction):
            acc[t.round] += t.nbytes
        return dict(sorted(acc.items()))

    def per_client(self, direction: str | None = None) -> dict[str, int]:
        """Bytes per client, in order of first appearance."""
        acc: dict[str, int] = defaultdict(int)
        for t in self._select(direction):
            acc[t.client_id] += t.nbytes
        return dict(acc)

    def to_records(self) -> list[dict[str, Any]]:
        """One dict per transfer (``event="bytes"``), for metrics.jsonl."""
        return [{"event": "bytes", **asdict(t)} for t in self.transfers]
