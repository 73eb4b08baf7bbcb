"""Checkpoints: one file ``checkpoint/state.pt`` rewritten atomically after every round.

It holds the algorithm's state dict (global adapter, server optimizer moments, history), the clients' persistent
states (local runtime), the byte ledger and the length of ``metrics.jsonl`` at that point, so that a resumed run
first cuts off log lines of the unfinished round and then continues exactly where the checkpoint left off.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from fedpeft.errors import FedPeftError
from fedpeft.fileio import atomic_write_bytes

CHECKPOINT = Path("checkpoint") / "state.pt"
FORMAT = 1


def save_checkpoint(run_path: Path, payload: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save({"format": FORMAT, **payload}, buf)
    atomic_write_bytes(run_path / CHECKPOINT, buf.getvalue())


def load_checkpoint(run_path: Path) -> dict[str, Any]:
    path = run_path / CHECKPOINT
    if not path.is_file():
        raise FedPeftError(f"{run_path} has no checkpoint ({CHECKPOINT}); it did not finish a round, start it anew")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != FORMAT:
        raise FedPeftError(f"{path} has checkpoint format {state.get('format')!r}; this fedpeft reads {FORMAT}")
    return state


def truncate_log(path: Path, size: int) -> None:
    """Cut ``metrics.jsonl`` back to ``size`` bytes (drop the lines of a round that did not finish)."""
    if path.is_file() and path.stat().st_size > size:
        with path.open("r+b") as f:
            f.truncate(size)
