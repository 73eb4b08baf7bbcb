"""A small, fast federated job on the bundled tiny-small model and real SST-2 rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fedpeft.config import RunConfig, from_dict


def small_job(output_dir: Path, **tables: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "t",
        "seed": 3,
        "output_dir": str(output_dir),
        "model": {"name": "tiny-small"},
        "data": {"dataset": "sst2", "train_limit": 300, "eval_limit": 48, "max_length": 48},
        "adapter": {"method": "lora", "r": 4, "alpha": 8.0, "target_modules": ["q_proj", "v_proj"]},
        "train": {"steps": 2, "batch_size": 8, "lr": 3e-3, "loss": "label_words"},
        "federation": {"num_clients": 3, "rounds": 2, "alpha": 1.0, "min_partition_size": 4},
    }
    for key, value in tables.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return raw


@pytest.fixture
def job(tmp_path: Path):
    def build(**tables: Any) -> RunConfig:
        return from_dict(RunConfig, small_job(tmp_path / "runs", **tables))

    return build


def crash_and_resume(algorithm: type, make_cfg: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """Run ``make_cfg()`` whole, then again stopped inside round 2 (``KeyboardInterrupt`` from ``fit_round``) and
    resumed from its round-1 checkpoint; returns (whole run, resumed run) directories."""
    from fedpeft.runtime import run_federated

    whole = run_federated(make_cfg(), quiet=True).path
    original = algorithm.fit_round

    def stop_in_round_two(self: Any, rnd: int, grid: Any) -> Any:
        if rnd == 2:
            raise KeyboardInterrupt
        return original(self, rnd, grid)

    monkeypatch.setattr(algorithm, "fit_round", stop_in_round_two)
    with pytest.raises(KeyboardInterrupt):
        run_federated(make_cfg(), quiet=True)
    monkeypatch.setattr(algorithm, "fit_round", original)
    stopped = max((p for p in whole.parent.iterdir() if p != whole), key=lambda p: p.stat().st_mtime)
    return whole, run_federated(resume=stopped, quiet=True).path
