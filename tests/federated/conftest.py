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
