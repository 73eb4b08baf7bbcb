"""Run directories: resolved config, metrics.jsonl, summary.json; every file written atomically.

A half-written file never appears under its final name: writers go to a temporary file in the same folder and
``os.replace`` it into place, so a killed run leaves either the old file or the new one.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import tomli_w

from fedpeft.config import to_dict


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary sibling and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


class RunDir:
    """One run's folder: ``config.toml``, ``metrics.jsonl``, ``summary.json`` and artefacts."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.mkdir(parents=True, exist_ok=True)

    @classmethod
    def create(cls, output_dir: str | Path, name: str) -> RunDir:
        """A new, uniquely named folder ``<output_dir>/<name>-<YYYYmmdd-HHMMSS>[-N]``."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = Path(output_dir) / f"{name}-{stamp}"
        path, n = base, 1
        while path.exists():
            n += 1
            path = base.with_name(f"{base.name}-{n}")
        return cls(path)

    def save_config(self, cfg: Any) -> None:
        atomic_write_text(self.path / "config.toml", tomli_w.dumps(to_dict(cfg)))

    def log(self, event: str, **fields: Any) -> None:
        """Append one JSON line; a line is written with a single write call, so readers never see half of one."""
        line = json.dumps({"event": event, "time": round(time.time(), 3), **fields}, default=float) + "\n"
        with (self.path / "metrics.jsonl").open("a", encoding="utf-8") as f:
            f.write(line)

    def save_summary(self, summary: dict[str, Any]) -> None:
        write_json(self.path / "summary.json", summary)
