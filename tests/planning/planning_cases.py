"""Small FedsLLM planning scenarios built in code for the tests of tests/planning (numpy only: no torch, no model)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fedpeft.planning import Scenario, scenario_from_dict

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "plan_paper.toml"


def small_dict(seed: int = 0, clients: int = 3, mode: str = "bandwidth", **network: Any) -> dict[str, Any]:
    """A 3-client, 2-cut, 2-rank scenario as a TOML-shaped dict: random compute in [1e12, 1e13] FLOP/s and path gains
    in [-120, -90] dB from ``seed``; 5 MHz (or 12 subchannels of 500 kHz)."""
    rng = np.random.default_rng(seed)
    table = [
        {"flops": float(rng.uniform(1e12, 1e13)), "max_power_w": 0.2, "gain_db": float(rng.uniform(-120, -90))}
        for _ in range(clients)
    ]
    net: dict[str, Any] = {"mode": mode, "bandwidth_hz": 5e6}
    if mode == "subchannels":
        net = {"mode": mode, "subchannels": 12, "subchannel_hz": 5e5}
    net.update(network)
    return {
        "name": f"small-{seed}",
        "seed": seed,
        "model": {"preset": "smollm2-135m"},
        "training": {"batch_size": 4, "seq_len": 128, "local_steps": 5, "cuts": [2, 8], "ranks": [4, 16]},
        "rounds": {"ranks": [1, 4, 16], "rounds": [200, 140, 120]},
        "network": net,
        "clients": table,
    }


def small(seed: int = 0, clients: int = 3, mode: str = "bandwidth", **network: Any) -> Scenario:
    """:func:`small_dict` as a validated :class:`Scenario`."""
    return scenario_from_dict(small_dict(seed, clients, mode, **network))
