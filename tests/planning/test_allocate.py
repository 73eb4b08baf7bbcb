"""The allocator: optimality conditions (equalized finish times, the band used fully, binding budgets met), the gap
to brute force, monotonicity, the baselines, the plan file and the ``fedpeft plan`` command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from planning_cases import RECIPE, small  # type: ignore[import-not-found]  # tests/planning/

from fedpeft.cli import main
from fedpeft.planning import (
    baseline_equal,
    baseline_random,
    brute_force,
    build_problem,
    evaluate,
    load_plan,
    load_scenario,
    plan,
    save_plan,
)
from fedpeft.planning.resources import greedy_subchannels, power_step


def _times(p) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.array([row["round_s"] for row in p.breakdown])


def test_kkt_equal_finish_and_full_band_on_the_recipe() -> None:
    sc = load_scenario(RECIPE)
    best = plan(sc)
    times = _times(best)
    assert np.ptp(times) <= 1e-9 * best.round_s  # every client finishes at the same time
    assert best.round_s == pytest.approx(times.max())
    assert sum(best.bandwidth_hz) == pytest.approx(sc.network.band_hz, rel=1e-12)  # the whole band is used
    assert best.power_w == pytest.approx([0.2] * 10)  # no total cap: full power is optimal
    assert best.total_s == pytest.approx(best.rounds * best.round_s)
    # farther clients (lower gain) get more bandwidth
    gains = [c.gain_db for c in sc.clients]
    assert np.all(np.diff(np.array(best.bandwidth_hz)[np.argsort(gains)]) < 0)


def test_kkt_with_a_binding_total_power() -> None:
    sc = load_scenario(RECIPE, ["network.total_power_w=1.0"])
    best = plan(sc)
    assert np.ptp(_times(best)) <= 1e-9 * best.round_s
    assert sum(best.bandwidth_hz) == pytest.approx(sc.network.band_hz, rel=1e-12)
    assert sum(best.power_w) == pytest.approx(1.0, rel=1e-9)  # the cap binds
    assert max(best.power_w) <= 0.2 * (1 + 1e-9)
    free = load_scenario(RECIPE)
    assert plan(free).round_s < best.round_s  # a cap never helps


def test_energy_budget_binds_exactly() -> None:
    sc = small(0)
    for c in sc.clients:
        c.energy_budget_j, c.joules_per_flop = 1.0, 1e-11
    best = plan(sc)
    energy = np.array([row["energy_j"] for row in best.breakdown])
    assert np.all(energy <= 1.0 * (1 + 1e-9))
    assert np.all(energy == pytest.approx(1.0, rel=1e-6))  # here every budget binds: powers below the cap
    assert max(best.power_w) < 0.2
    assert np.ptp(_times(best)) <= 1e-9 * best.round_s


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("extra", [{}, {"total_power_w": 0.3}])
def test_gap_to_brute_force_below_one_percent(seed: int, extra: dict[str, float]) -> None:
    sc = small(seed, clients=2, **extra)
    best, ref = plan(sc), brute_force(sc, grid=400)
    assert best.total_s <= ref.total_s * (1 + 1e-9)  # the grid cannot beat the continuous optimum
    assert ref.total_s <= best.total_s * 1.01  # and a fine grid comes within 1% of it
    assert (best.cut, best.rank) == (ref.cut, ref.rank)
    sc3 = small(seed, clients=3, **extra)
    best3, ref3 = plan(sc3), brute_force(sc3, grid=300)
    assert best3.total_s <= ref3.total_s * (1 + 1e-9)
    assert ref3.total_s <= best3.total_s * 1.01


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("extra", [{}, {"total_power_w": 0.3}])
def test_subchannels_match_brute_force(seed: int, extra: dict[str, float]) -> None:
    sc = small(seed, clients=3, mode="subchannels", **extra)
    best, ref = plan(sc), brute_force(sc)  # brute force: every assignment of 12 subchannels, exact powers
    assert best.total_s == pytest.approx(ref.total_s, rel=1e-9)  # the subchannel solver is exact
    assert sum(best.subchannels) == 12 and min(best.subchannels) >= 1


def test_no_single_move_improves_the_continuous_optimum() -> None:
    sc = small(1, clients=4)
    best = plan(sc)
    b, p = np.array(best.bandwidth_hz), np.array(best.power_w)
    for i in range(4):
        for j in range(4):
            if i != j:
                moved = b.copy()
                moved[i] -= 0.01 * b[i]
                moved[j] += 0.01 * b[i]
                assert evaluate(sc, best.cut, best.rank, moved, p, "x").round_s > best.round_s


def test_more_bandwidth_or_power_is_never_slower() -> None:
    rounds = [plan(small(0, bandwidth_hz=bw)).round_s for bw in (2e6, 5e6, 1e7, 2e7)]
    assert np.all(np.diff(rounds) < 0)
    sc = small(0)
    totals = []
    for power in (0.05, 0.1, 0.2, 0.4):
        for c in sc.clients:
            c.max_power_w = power
        totals.append(plan(sc).total_s)
    assert np.all(np.diff(totals) < 0)
    # at the allocation level: the power step's round time falls with the bandwidth of every client
    pr = build_problem(sc, 2, 4)
    _, t = power_step(pr, np.array([[1e6, 1e6, 1e6], [2e6, 1e6, 1e6], [2e6, 2e6, 2e6]]))
    assert t[0] >= t[1] >= t[2]


def test_greedy_gives_the_slowest_client_more_subchannels() -> None:
    sc = small(0, mode="subchannels")
    pr = build_problem(sc, 2, 4)
    n = greedy_subchannels(pr, 12, 5e5, pr.max_power_w)
    gains = [c.gain_db for c in sc.clients]
    assert n.sum() == 12 and n[int(np.argmin(gains))] == n.max()


def test_plan_beats_the_baselines_and_they_are_reproducible() -> None:
    sc = load_scenario(RECIPE)
    best, equal, rand = plan(sc), baseline_equal(sc), baseline_random(sc)
    assert best.total_s < equal.total_s and best.total_s < rand.total_s
    assert (equal.cut, equal.rank) == (15, 8)
    assert equal.bandwidth_hz == pytest.approx([2e6] * 10)
    assert baseline_random(sc).bandwidth_hz == rand.bandwidth_hz  # the scenario's seed, no global state
    other = load_scenario(RECIPE, ["seed=1"])
    assert baseline_random(other).bandwidth_hz != rand.bandwidth_hz


def test_plan_json_round_trip(tmp_path: Path) -> None:
    sc = load_scenario(RECIPE)
    best = plan(sc)
    broken = baseline_equal(sc)
    broken.total_s = math.inf  # an infeasible baseline is written as null and read back as inf
    best.compare([broken, baseline_random(sc)])
    path = save_plan(best, tmp_path / "plan.json")
    back = load_plan(path)
    assert back == best
    assert json.loads(path.read_text())["baselines"]["equal"]["total_s"] is None


def test_cli_plan_prints_the_plan_and_the_baselines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "plan.json"
    assert main(["plan", str(RECIPE), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    best = load_plan(out)
    assert f"cut {best.cut}" in text and f"LoRA rank {best.rank}" in text
    assert "equal" in text and "random" in text and "%" in text
    assert f"{best.baselines['equal']['reduction_pct']:.1f}%" in text
    assert best.baselines["equal"]["reduction_pct"] > 0
    assert len(text.splitlines()) > 15  # the per-client table


def test_cli_plan_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(RECIPE), "--set", "network.bandwidth_hz=-1"]) == 2
    assert "network.bandwidth_hz" in capsys.readouterr().err
    assert main(["plan", str(RECIPE), "--set", "clients.energy_budget_j=1e-3"]) == 2
    assert "infeasible" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [{"clients": 1}, {"clients": 1, "total_power_w": 0.05}, {"clients": 3, "mode": "subchannels", "subchannels": 3}],
)
def test_edge_cases_agree_with_brute_force(args: dict[str, float]) -> None:
    sc = small(0, **args)  # one client (the whole band), or exactly one subchannel per client
    best = plan(sc)
    assert best.total_s == pytest.approx(brute_force(sc, grid=10).total_s, rel=1e-9)
    assert sum(best.power_w) <= (args.get("total_power_w") or math.inf)
