"""Scenario TOML: the shipped recipe parses; bad fields and infeasible budgets are refused before any solving; the
planning package runs without torch."""

from __future__ import annotations

import ast
import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from planning_cases import RECIPE, small_dict  # type: ignore[import-not-found]  # tests/planning/

from fedpeft.errors import ConfigError
from fedpeft.planning import InfeasibleScenarioError, load_scenario, plan, scenario_from_dict
from fedpeft.planning.scenario import PRESETS

SRC = Path(__file__).resolve().parents[2] / "src"


def test_shipped_recipe_parses() -> None:
    sc = load_scenario(RECIPE)
    assert sc.num_clients == 10
    assert sc.model.dims == PRESETS["smollm2-135m"]
    assert (sc.model.dims.layers, sc.model.dims.hidden, sc.model.dims.kv_heads) == (30, 576, 3)
    assert sc.network.band_hz == 20e6 and sc.network.total_power_w is None
    assert sc.clients[0].gain_db == pytest.approx(-(128.1 + 37.6 * -1.2218487), abs=1e-4)  # 60 m
    assert all(c.max_power_w == 0.2 for c in sc.clients)
    assert sc.training.default_rank == 8 and 2 in sc.training.cuts
    assert sc.rounds_model(8) == pytest.approx(2.241 + 5.234 / 8**0.505, rel=0.01)  # the measured curve's fit


def test_overrides_and_client_forms() -> None:
    sc = load_scenario(RECIPE, ["network.bandwidth_hz=1e7", "clients.flops.3=7e12", 'name="x"'])
    assert sc.network.band_hz == 1e7 and sc.clients[3].flops == 7e12 and sc.name == "x"
    data = small_dict(0)
    tables = scenario_from_dict(data)
    lists = copy.deepcopy(data)
    lists["clients"] = {k: [c[k] for c in data["clients"]] for k in data["clients"][0]}
    assert [vars(c) for c in scenario_from_dict(lists).clients] == [vars(c) for c in tables.clients]
    scalar = copy.deepcopy(lists)
    scalar["clients"]["max_power_w"] = 0.2  # one value for every client
    assert all(c.max_power_w == 0.2 for c in scenario_from_dict(scalar).clients)


def _with(change: dict[str, Any], client: dict[str, Any] | None = None) -> dict[str, Any]:
    data = small_dict(0)
    for key, value in change.items():
        section, _, name = key.rpartition(".")
        (data.setdefault(section, {}) if section else data)[name] = value
    if client is not None:
        data["clients"][1].update(client)
    return data


@pytest.mark.parametrize(
    ("change", "client", "field"),
    [
        ({"network.bandwidth_hz": 0.0}, None, "network.bandwidth_hz"),
        ({"network.bandwidth_hz": -5e6}, None, "network.bandwidth_hz"),
        ({"network.mode": "ofdma"}, None, "network.mode"),
        ({"network.total_power_w": 0.0}, None, "network.total_power_w"),
        ({"network.noise_dbm_per_hz": 10.0}, None, "network.noise_dbm_per_hz"),
        ({"server.flops": -1.0}, None, "server.flops"),
        ({"model.preset": "gpt-5"}, None, "model.preset"),
        ({"model.lora_targets": ["q_proj", "x_proj"]}, None, "model.lora_targets"),
        ({"training.cuts": [0, 2]}, None, "training.cuts"),
        ({"training.cuts": [2, 30]}, None, "training.cuts"),
        ({"training.ranks": []}, None, "training.ranks"),
        ({"training.batch_size": 0}, None, "training.batch_size"),
        ({"training.client_forwards": 3}, None, "training.client_forwards"),
        ({"network.colour": 1}, None, "network.colour"),  # unknown keys name the known ones
        ({}, {"gain_db": 3.0}, "clients[1].gain_db"),  # a gain above 1 (linear)
        ({}, {"gain_db": None, "distance_m": -10.0}, "clients[1].distance_m"),
        ({}, {"distance_m": 100.0}, "clients[1].gain_db"),  # both a gain and a distance
        ({}, {"max_power_w": -0.1}, "clients[1].max_power_w"),
        ({}, {"flops": 0}, "clients[1].flops"),
        ({}, {"energy_budget_j": -1.0}, "clients[1].energy_budget_j"),
        ({}, {"flops": "fast"}, "clients[1].flops"),
    ],
)
def test_bad_fields_name_the_field(change: dict[str, Any], client: dict[str, Any] | None, field: str) -> None:
    data = _with(change, client)
    if client and client.get("gain_db", 0) is None:
        del data["clients"][1]["gain_db"]
    with pytest.raises(ConfigError) as err:
        scenario_from_dict(data)
    assert err.value.field == field


def test_missing_file_and_bad_override() -> None:
    with pytest.raises(ConfigError, match="scenario"):
        load_scenario("no/such/file.toml")
    with pytest.raises(ConfigError, match="--set"):
        load_scenario(RECIPE, ["network.bandwidth_hz"])


def test_fewer_subchannels_than_clients_is_infeasible() -> None:
    with pytest.raises(InfeasibleScenarioError, match="network.subchannels"):
        scenario_from_dict(small_dict(0, clients=3, mode="subchannels", subchannels=2))


def test_energy_budget_below_compute_is_refused_before_solving() -> None:
    data = small_dict(0)
    data["clients"][2].update(energy_budget_j=0.5, joules_per_flop=1e-11)  # compute alone takes ~0.77 J at cut 2
    sc = scenario_from_dict(data)
    with pytest.raises(InfeasibleScenarioError) as err:
        plan(sc)
    assert err.value.field == "clients[2].energy_budget_j"
    assert "compute" in str(err.value)


def test_energy_budget_below_radio_minimum_is_refused() -> None:
    data = small_dict(0)
    data["clients"][0]["energy_budget_j"] = 1e-6  # below up_bits * n0 * ln2 / g for any allocation
    with pytest.raises(InfeasibleScenarioError, match=r"clients\[0\].energy_budget_j"):
        plan(scenario_from_dict(data))


def test_total_power_too_small_for_any_round_is_refused() -> None:
    with pytest.raises(InfeasibleScenarioError, match="network.total_power_w"):
        plan(scenario_from_dict(small_dict(0, total_power_w=1e-15)))
    with pytest.raises(InfeasibleScenarioError, match="max_round_s"):
        plan(scenario_from_dict({**small_dict(0), "max_round_s": 1.0}))


def test_planning_imports_only_numpy_scipy_and_its_own_layer() -> None:
    allowed = {"__future__", "numpy", "scipy", "tomllib", "fedpeft.errors", "fedpeft.fileio", "fedpeft.planning"}
    stdlib = set(sys.stdlib_module_names)
    for path in (SRC / "fedpeft" / "planning").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                ok = top in stdlib or any(name == a or name.startswith(a + ".") for a in allowed)
                assert ok, f"{path.name} imports {name}"


def test_planning_runs_without_torch() -> None:
    """The planner with torch unimportable (the fedpeft package root, which imports torch, is bypassed)."""
    code = (
        "import sys, types; sys.modules['torch'] = None\n"
        f"pkg = types.ModuleType('fedpeft'); pkg.__path__ = [{str(SRC / 'fedpeft')!r}]; sys.modules['fedpeft'] = pkg\n"
        "from fedpeft.planning import load_scenario, plan\n"
        f"print(plan(load_scenario({str(RECIPE)!r})).cut)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().isdigit()
