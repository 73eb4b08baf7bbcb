"""Run directories: resolved config, metrics.jsonl, summary.json; every file written atomically (see fileio)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import tomli_w

from fedpeft.config import to_dict
from fedpeft.fileio import atomic_write_text


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
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        path, n = base, 1
        while True:
            try:  # mkdir, not exists(): two processes starting in the same second must not share a folder
                path.mkdir()
                return cls(path)
            except FileExistsError:
                n += 1
                path = base.with_name(f"{base.name}-{n}")

    def save_config(self, cfg: Any) -> None:
        atomic_write_text(self.path / "config.toml", tomli_w.dumps(to_dict(cfg)))

    def log(self, event: str, **fields: Any) -> None:
        """Append one JSON line; a line is written with a single write call, so readers never see half of one."""
        line = json.dumps({"event": event, "time": round(time.time(), 3), **fields}, default=float) + "\n"
        with (self.path / "metrics.jsonl").open("a", encoding="utf-8") as f:
            f.write(line)

    def save_summary(self, summary: dict[str, Any]) -> None:
        write_json(self.path / "summary.json", summary)
