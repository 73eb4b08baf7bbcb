"""FedsLLM planner (docs/planner.md): modeled delay against the baselines, optimality gap to brute force, wall time.

Three parts, all on the delay model of ``fedpeft.planning`` (no training is run; numpy/scipy on one thread):

1. ``recipes/plan_paper.toml`` and two variants (a 1 W cap on the clients' summed power; 100 subchannels of
   200 kHz instead of a continuous 20 MHz): the planner's per-round and total delay against ``baseline_equal`` (equal
   bandwidth, full power, middle cut, rank 8) and ``baseline_random`` (random cut, rank and band split from the
   scenario's seed; also its median over ``--random-seeds`` seeds, since one draw can be very unlucky), as
   % reduction = 100 * (1 - planner total / baseline total).
2. Optimality gap on ``--instances`` random small instances per setting (2-4 clients with compute in [1e12, 1e13]
   FLOP/s and path gains in [-120, -90] dB, cuts {2, 8}, ranks {4, 16}): gap = planner total / brute-force total - 1.
   In bandwidth mode the brute force tries every split of the band into ``grid`` equal parts, so it sits above the
   continuous optimum by the grid's coarseness and the gap is <= 0 when the planner is optimal; in subchannels mode it
   tries every assignment of the 12 (or 16) subchannels with exact powers: the true optimum.
3. Planner wall time for 10 / 100 / 1000 clients: the recipe's model and workload with clients drawn from the seed
   (distances 50-500 m, compute 1e12-1e13 FLOP/s), the band and the server scaled with the number of clients
   (2 MHz and 1e13 FLOP/s per client) so that every size is a comparable cell; with and without a total power cap
   (0.1 W per client); median of ``--repeats`` runs of ``plan()`` (84 cut/rank candidates).

Run: ``OMP_NUM_THREADS=1 python benchmarks/planner.py [--instances 10] [--repeats 3] [--out ...]``
Writes benchmarks/results/planner.json (or ``--out``) and prints a summary.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import tomllib

from _machine import machine_info, save_result  # type: ignore[import-not-found]  # benchmarks/ is on sys.path
from fedpeft.planning import (
    Scenario,
    baseline_equal,
    baseline_random,
    brute_force,
    load_scenario,
    plan,
    scenario_from_dict,
)
from fedpeft.planning.allocate import build_problem, evaluate
from fedpeft.planning.resources import client_rate

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "plan_paper.toml"
RESULTS = Path(__file__).parent / "results"


def reduction(planner: float, baseline: float) -> float:
    return 100.0 * (1.0 - planner / baseline)


def ablation(sets: list[str], sc: Scenario, best: Any, equal: Any) -> dict[str, float]:
    """Where the reduction comes from: the optimal radio at the baseline's cut and rank, and the baseline's radio
    (equal shares, full power) at the planner's cut and rank (total delays, s)."""
    fixed = load_scenario(RECIPE, [*sets, f"training.cuts=[{equal.cut}]", f"training.ranks=[{equal.rank}]"])
    radio_only = plan(fixed).total_s
    pr = build_problem(sc, best.cut, best.rank)  # baseline_equal's power policy at the planner's cut and rank
    cap = pr.max_power_w * min(1.0, pr.total_power_w / float(np.sum(pr.max_power_w)))
    _, p = client_rate(pr, np.asarray(equal.bandwidth_hz), cap)
    cut_rank_only = evaluate(sc, best.cut, best.rank, np.asarray(equal.bandwidth_hz), p, "x").total_s
    return {"radio_only_total_s": radio_only, "radio_only_reduction_pct": reduction(radio_only, equal.total_s),
            "cut_rank_only_total_s": cut_rank_only,
            "cut_rank_only_reduction_pct": reduction(cut_rank_only, equal.total_s)}  # fmt: skip


def paper_rows(random_seeds: int) -> list[dict[str, Any]]:
    variants = {
        "plan_paper": [],
        "plan_paper + total_power_w=1.0": ["network.total_power_w=1.0"],
        "plan_paper, 100 x 200 kHz subchannels": [
            'network.mode="subchannels"', "network.subchannels=100", "network.subchannel_hz=2e5"],
        "plan_paper + server.flops=1e13": ["server.flops=1e13"],
    }  # fmt: skip
    rows = []
    for name, sets in variants.items():
        sc = load_scenario(RECIPE, sets)
        best, equal, rand = plan(sc), baseline_equal(sc), baseline_random(sc)
        randoms = [baseline_random(load_scenario(RECIPE, [*sets, f"seed={s}"])).total_s for s in range(random_seeds)]
        rows.append({
            "scenario": name, "overrides": sets, "cut": best.cut, "rank": best.rank, "rounds": best.rounds,
            "round_s": best.round_s, "total_s": best.total_s, "solve_s": best.solve_s,
            "equal": {"cut": equal.cut, "rank": equal.rank, "round_s": equal.round_s, "total_s": equal.total_s,
                      "reduction_pct": reduction(best.total_s, equal.total_s)},
            "random_seed0": {"cut": rand.cut, "rank": rand.rank, "round_s": rand.round_s, "total_s": rand.total_s,
                             "reduction_pct": reduction(best.total_s, rand.total_s)},
            "random_median": {"seeds": random_seeds, "total_s": statistics.median(randoms),
                              "reduction_pct": reduction(best.total_s, statistics.median(randoms))},
            "ablation_vs_equal": ablation(sets, sc, best, equal),
        })  # fmt: skip
    return rows


def small(seed: int, clients: int, mode: str, total_power_w: float | None) -> Scenario:
    rng = np.random.default_rng(1000 + seed)
    table = [
        {"flops": float(rng.uniform(1e12, 1e13)), "max_power_w": 0.2, "gain_db": float(rng.uniform(-120, -90))}
        for _ in range(clients)
    ]
    net: dict[str, Any] = {"mode": mode, "bandwidth_hz": 5e6}
    if mode == "subchannels":
        net = {"mode": mode, "subchannels": 4 * clients, "subchannel_hz": 5e5}
    if total_power_w is not None:
        net["total_power_w"] = total_power_w
    return scenario_from_dict({
        "name": f"small-{seed}", "model": {"preset": "smollm2-135m"},
        "training": {"batch_size": 4, "seq_len": 128, "local_steps": 5, "cuts": [2, 8], "ranks": [4, 16]},
        "rounds": {"ranks": [1, 4, 16], "rounds": [200, 140, 120]}, "network": net, "clients": table,
    })  # fmt: skip


def gap_rows(instances: int) -> list[dict[str, Any]]:
    settings = [  # (clients, mode, total power cap W (0.2 W each at most), grid of the band)
        (2, "bandwidth", None, 1000), (3, "bandwidth", None, 300), (3, "bandwidth", 0.3, 300),
        (3, "subchannels", None, 0), (3, "subchannels", 0.3, 0), (4, "subchannels", 0.5, 0),
    ]  # fmt: skip
    rows = []
    for clients, mode, power, grid in settings:
        gaps, same = [], 0
        for seed in range(instances):
            sc = small(seed, clients, mode, power)
            best, ref = plan(sc), brute_force(sc, grid=grid or 20)
            gaps.append(best.total_s / ref.total_s - 1.0)
            same += (best.cut, best.rank) == (ref.cut, ref.rank)
        rows.append({
            "clients": clients, "mode": mode, "total_power_w": power,
            "grid": grid or None, "instances": instances, "gap_mean": float(np.mean(gaps)),
            "gap_max": float(np.max(gaps)), "gap_min": float(np.min(gaps)), "same_cut_rank": same,
        })  # fmt: skip
    return rows


def scaled(base: dict[str, Any], k: int, total_power: bool) -> Scenario:
    rng = np.random.default_rng(k)
    data = copy.deepcopy(base)
    data["clients"] = {"count": k, "max_power_w": 0.2, "distance_m": rng.uniform(50, 500, k).tolist(),
                       "flops": (10 ** rng.uniform(12, 13, k)).tolist()}  # fmt: skip
    data["network"]["bandwidth_hz"] = 2e6 * k
    data["server"]["flops"] = 1e13 * k
    if total_power:
        data["network"]["total_power_w"] = 0.1 * k
    return scenario_from_dict(data)


def timing_rows(repeats: int) -> list[dict[str, Any]]:
    base = tomllib.loads(RECIPE.read_text())
    rows = []
    for k in (10, 100, 1000):
        for total_power in (False, True):
            sc = scaled(base, k, total_power)
            walls = []
            for _ in range(repeats):
                start = time.perf_counter()
                best = plan(sc)
                walls.append(time.perf_counter() - start)
            rows.append({"clients": k, "total_power_cap": total_power, "wall_s_median": statistics.median(walls),
                         "wall_s": walls, "cut": best.cut, "rank": best.rank, "round_s": best.round_s})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=10, help="random small instances per gap setting")
    parser.add_argument("--repeats", type=int, default=3, help="runs per timing size (median reported)")
    parser.add_argument("--random-seeds", type=int, default=100, help="seeds for the random baseline's median")
    parser.add_argument("--out", type=Path, default=RESULTS / "planner.json")
    args = parser.parse_args()
    result: dict[str, Any] = {"machine": machine_info(threads=1)}
    start = time.perf_counter()
    result["paper"] = paper_rows(args.random_seeds)
    for row in result["paper"]:
        print(f"{row['scenario']}: cut {row['cut']}, rank {row['rank']}, round {row['round_s']:.2f} s, total "
              f"{row['total_s']:.0f} s; vs equal {row['equal']['total_s']:.0f} s ({row['equal']['reduction_pct']:.1f}%"
              f" less), vs random seed 0 {row['random_seed0']['reduction_pct']:.1f}% less, vs random median of "
              f"{args.random_seeds} {row['random_median']['reduction_pct']:.1f}% less; radio alone "
              f"{row['ablation_vs_equal']['radio_only_reduction_pct']:.1f}%, cut+rank alone "
              f"{row['ablation_vs_equal']['cut_rank_only_reduction_pct']:.1f}%")  # fmt: skip
    result["gap"] = gap_rows(args.instances)
    for row in result["gap"]:
        print(f"gap {row['clients']} clients {row['mode']} power cap {row['total_power_w']} grid {row['grid']}: "
              f"mean {row['gap_mean']:+.2e}, max {row['gap_max']:+.2e}, min {row['gap_min']:+.2e}, "
              f"same cut/rank {row['same_cut_rank']}/{row['instances']}")  # fmt: skip
    result["timing"] = timing_rows(args.repeats)
    for row in result["timing"]:
        print(f"{row['clients']} clients, power cap {row['total_power_cap']}: {row['wall_s_median']:.3f} s "
              f"(cut {row['cut']}, rank {row['rank']})")  # fmt: skip
    result["wall_s"] = time.perf_counter() - start
    save_result(args.out, result)
    print(args.out)


if __name__ == "__main__":
    main()
