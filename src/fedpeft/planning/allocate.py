"""The FedsLLM planner: exhaustive search over (cut, rank), the optimal radio allocation for each, the baselines and a
brute-force reference.

Objective: total delay = rounds(r) x per-round delay, with rounds(r) the fitted :class:`~fedpeft.planning.rounds.
RoundsModel` and the per-round delay the min-max round time of :mod:`fedpeft.planning.resources`. Every (cut, rank)
gets a cheap lower bound (each client alone on the whole band at its largest power); candidates are solved in the
order of their bound and the search stops when the next bound is no better than the best total found (exact).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedpeft.errors import ConfigError
from fedpeft.fileio import atomic_write_text
from fedpeft.planning import delay as dl
from fedpeft.planning.resources import (
    Array,
    NoRoundWithin,
    Problem,
    client_min_time,
    client_rate,
    power_step,
    solve_bandwidth,
    solve_relaxed,
    solve_subchannels,
)
from fedpeft.planning.scenario import InfeasibleScenarioError, Scenario


def build_problem(sc: Scenario, cut: int, rank: int) -> Problem:
    """The per-client loads of (cut, rank) and the scenario's links, as arrays over clients."""
    dims, tr, k = sc.model.dims, sc.training, sc.num_clients
    lora = dl.lora_params_per_layer(dims, rank, sc.model.lora_targets)
    client_flops = tr.local_steps * dl.client_step_flops(dims, cut, lora, tr.batch_size, tr.seq_len, tr.client_forwards)
    server_flops = tr.local_steps * dl.server_step_flops(dims, cut, lora, tr.batch_size, tr.seq_len)
    act = dl.activation_bits(tr.batch_size, tr.seq_len, dims.hidden, sc.model.activation_bytes)
    lora_bits = 8.0 * sc.model.lora_bytes * cut * lora
    bits = np.full(k, tr.local_steps * act + lora_bits)
    gain = dl.db_to_linear([c.resolved_gain_db for c in sc.clients])
    n0 = dl.dbm_per_hz_to_w_per_hz(sc.network.noise_dbm_per_hz)
    band = sc.network.band_hz
    return Problem(
        client_s=client_flops / np.array([c.flops for c in sc.clients]),
        server_s=np.full(k, server_flops / (sc.server.flops / k)),  # equal share of the server's FLOP/s
        up_bits=bits,
        down_bits=bits.copy(),
        compute_j=client_flops * np.array([c.joules_per_flop for c in sc.clients]),
        gain=gain,
        max_power_w=np.array([c.max_power_w for c in sc.clients]),
        energy_budget_j=np.array([np.inf if c.energy_budget_j is None else c.energy_budget_j for c in sc.clients]),
        down_eff=dl.downlink_efficiency(sc.server.downlink_power_w, gain, n0, band),
        n0=n0,
        band_hz=band,
        total_power_w=np.inf if sc.network.total_power_w is None else sc.network.total_power_w,
    )


def _power_cap(pr: Problem) -> Array:
    """The baselines' power: each client's cap, scaled down evenly so the sum meets the total power cap."""
    return pr.max_power_w * min(1.0, pr.total_power_w / float(np.sum(pr.max_power_w)))


def _lower_bound(pr: Problem) -> float:
    """A round-time lower bound: the slowest client alone on the whole band at its largest allowed power."""
    cap = np.minimum(pr.max_power_w, pr.total_power_w)
    return float(np.max(client_min_time(pr, np.full(cap.shape, pr.band_hz), cap)))


def check_feasible(sc: Scenario) -> None:
    """Refuse a scenario no (cut, rank) can serve, before any solving: an energy budget at or below a round's compute
    energy plus its least radio energy at every candidate, or no round within ``max_round_s`` even with each client
    alone on the whole band. Raises :class:`InfeasibleScenarioError` naming the field."""
    combos = [(c, r) for c in sc.training.cuts for r in sc.training.ranks]
    problems = [build_problem(sc, c, r) for c, r in combos]
    need = np.array([pr.compute_j + dl.min_transmit_energy(pr.up_bits, pr.gain, pr.n0) for pr in problems])
    budget = problems[0].energy_budget_j
    for i in np.flatnonzero(np.all(need >= budget, axis=0)):
        j = int(np.argmin(need[:, i]))
        raise InfeasibleScenarioError(
            f"clients[{i}].energy_budget_j",
            f"{budget[i]:.4g} J per round; every cut/rank needs more (at least {need[j, i]:.4g} J at cut "
            f"{combos[j][0]}, rank {combos[j][1]}: compute {problems[j].compute_j[i]:.4g} J + radio)",
        )
    energy_ok = np.all(need < budget, axis=1)
    if not np.any(energy_ok):
        raise InfeasibleScenarioError("clients", "no cut/rank meets every client's energy budget at once")
    bounds = np.array([_lower_bound(pr) for pr, ok in zip(problems, energy_ok, strict=True) if ok])
    if np.min(bounds) > sc.max_round_s:
        pr = problems[int(np.flatnonzero(energy_ok)[np.argmin(bounds)])]
        full = float(np.max(client_min_time(pr, np.full(pr.gain.shape, pr.band_hz), pr.max_power_w)))
        if pr.total_power_w < np.max(pr.max_power_w) and full <= sc.max_round_s:
            raise InfeasibleScenarioError(
                "network.total_power_w",
                f"{pr.total_power_w:.4g} W cannot finish a round within max_round_s={sc.max_round_s:g} s "
                f"(the slowest client alone on the whole band needs {np.min(bounds):.4g} s)",
            )
        raise InfeasibleScenarioError(
            "max_round_s", f"{sc.max_round_s:g} s; the fastest possible round takes {np.min(bounds):.4g} s"
        )


@dataclass
class Plan:
    """A cut, a rank and a radio allocation with its modeled delays. Per-client lists follow the scenario's clients;
    ``breakdown`` has, per client and round, client_s, server_s, uplink_s, downlink_s (s), round_s and energy_j."""

    method: str  # "planner", "equal", "random" or "brute_force"
    scenario: str
    mode: str
    cut: int
    rank: int
    bandwidth_hz: list[float]
    power_w: list[float]
    subchannels: list[int] | None
    round_s: float  # per-round delay (s): the slowest client's round
    rounds: float  # rounds(rank) of the fitted rounds model
    total_s: float  # rounds x round_s
    breakdown: list[dict[str, float]]
    solve_s: float = 0.0  # wall time of the solver (s)
    #: other methods on the same scenario: {name: {cut, rank, round_s, rounds, total_s, reduction_pct}}, where
    #: reduction_pct = 100 * (1 - this plan's total / theirs)
    baselines: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)

    def compare(self, others: list[Plan]) -> None:
        """Record each other plan's delays and this plan's % reduction of the total delay against it."""
        for other in others:
            pct = 100.0 * (1.0 - self.total_s / other.total_s) if math.isfinite(other.total_s) else 100.0
            self.baselines[other.method] = {
                "cut": other.cut, "rank": other.rank, "round_s": other.round_s, "rounds": other.rounds,
                "total_s": other.total_s, "reduction_pct": pct,
            }  # fmt: skip

    @property
    def energy_j(self) -> list[float]:
        """Each client's energy per round (J): radio + compute."""
        return [row["energy_j"] for row in self.breakdown]

    def to_json(self) -> str:
        """JSON text; an infeasible plan's infinite delays are written as null."""

        def clean(v: Any) -> Any:
            if isinstance(v, float) and not math.isfinite(v):
                return None
            if isinstance(v, list):
                return [clean(x) for x in v]
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            return v

        return json.dumps(clean(dataclasses.asdict(self)), indent=1) + "\n"


def save_plan(plan: Plan, path: str | Path) -> Path:
    """Write :meth:`Plan.to_json` atomically."""
    atomic_write_text(Path(path), plan.to_json())
    return Path(path)


def load_plan(path: str | Path) -> Plan:
    """Read a plan written by :func:`save_plan` (null delays come back as inf)."""
    expected = "a plan JSON file written by `fedpeft plan --json`"
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ConfigError("plan", str(path), expected) from None
    names = {f.name for f in dataclasses.fields(Plan)}
    if not isinstance(data, dict) or set(data) - names:
        raise ConfigError("plan", str(path), expected)
    try:
        for key in ("round_s", "total_s", "rounds"):
            data[key] = math.inf if data.get(key) is None else data[key]
        data["breakdown"] = [{k: math.inf if v is None else v for k, v in row.items()} for row in data["breakdown"]]
        for row in data.get("baselines", {}).values():
            row.update({k: math.inf for k, v in row.items() if v is None})
        return Plan(**data)
    except (KeyError, TypeError, AttributeError):
        raise ConfigError("plan", str(path), expected) from None


def evaluate(
    sc: Scenario, cut: int, rank: int, b: Array, p: Array, method: str, solve_s: float = 0.0, subchannels: Any = None
) -> Plan:
    """The :class:`Plan` of bandwidths b (Hz) and powers p (W) at (cut, rank): per-client times, energy, delays."""
    pr = build_problem(sc, cut, rank)
    with np.errstate(divide="ignore", invalid="ignore"):
        up_s = pr.up_bits / dl.rate(b, p, pr.gain, pr.n0)
        down_s = pr.down_bits / (b * pr.down_eff)
    up_s, down_s = np.where(b > 0, up_s, np.inf), np.where(b > 0, down_s, np.inf)
    times = pr.compute_s + up_s + down_s
    energy = p * up_s + pr.compute_j
    times = np.where(energy <= pr.energy_budget_j * (1 + 1e-9), times, np.inf)  # a broken budget: infeasible
    rows = [
        {"client_s": float(pr.client_s[i]), "server_s": float(pr.server_s[i]), "uplink_s": float(up_s[i]),
         "downlink_s": float(down_s[i]), "round_s": float(times[i]), "energy_j": float(energy[i])}
        for i in range(sc.num_clients)
    ]  # fmt: skip
    rounds = float(sc.rounds_model(rank))
    round_s = float(np.max(times))
    return Plan(
        method=method, scenario=sc.name, mode=sc.network.mode, cut=int(cut), rank=int(rank),
        bandwidth_hz=[float(x) for x in b], power_w=[float(x) for x in p],
        subchannels=None if subchannels is None else [int(x) for x in subchannels],
        round_s=round_s, rounds=rounds, total_s=rounds * round_s, breakdown=rows, solve_s=solve_s,
    )  # fmt: skip


def plan(sc: Scenario) -> Plan:
    """The planner: the (cut, rank) and radio allocation of least total delay = rounds(rank) x round time.

    Candidates go in the order of a cheap lower bound (each client alone on the whole band); the search stops at the
    first bound no better than the best total. In bandwidth mode each candidate is first solved without the total
    power cap (fast, and exact when the cap does not bind); the candidates where it binds are solved in full
    afterwards, in the order of that relaxed total (again a lower bound), with the same stopping rule. Exact overall
    (up to the subchannel heuristic's gap in subchannels mode)."""
    check_feasible(sc)
    start = time.perf_counter()
    net = sc.network
    candidates = []
    for cut in sc.training.cuts:
        for rank in sc.training.ranks:
            pr = build_problem(sc, cut, rank)
            rounds = float(sc.rounds_model(rank))
            candidates.append((rounds * _lower_bound(pr), cut, rank, rounds, pr))
    candidates.sort(key=lambda c: c[:3])
    best: tuple[float, int, int, Any, Any, Any] | None = None
    pending = []  # bandwidth mode, total power binding: (relaxed total, cut, rank, rounds, problem, relaxed answer)
    for bound, cut, rank, rounds, pr in candidates:
        if (best is not None and bound >= best[0]) or not math.isfinite(bound):
            break  # sorted bounds: no later candidate can beat the best
        try:
            if net.mode == "subchannels":
                width = float(net.subchannel_hz)  # type: ignore[arg-type]
                n, p, t = solve_subchannels(pr, int(net.subchannels), width, sc.max_round_s)  # type: ignore[arg-type]
                b = n * width
            else:
                n, (b, p, t) = None, solve_relaxed(pr, sc.max_round_s)
                if np.sum(p) > pr.total_power_w * (1 + 1e-12):
                    pending.append((rounds * t, cut, rank, rounds, pr, (b, p, t)))
                    continue
        except NoRoundWithin:
            continue
        if best is None or rounds * t < best[0]:
            best = (rounds * t, cut, rank, b, p, n)
    pending.sort(key=lambda c: c[:3])
    for bound, cut, rank, rounds, pr, relaxed in pending:
        if best is not None and bound >= best[0]:
            break
        try:
            b, p, t = solve_bandwidth(pr, sc.max_round_s, relaxed)
        except NoRoundWithin:
            continue
        if best is None or rounds * t < best[0]:
            best = (rounds * t, cut, rank, b, p, None)
    if best is None:
        raise InfeasibleScenarioError("max_round_s", f"no allocation finishes a round within {sc.max_round_s:g} s")
    _, cut, rank, b, p, n = best
    return evaluate(sc, cut, rank, b, p, "planner", time.perf_counter() - start, n)


def _even_subchannels(n_sub: int, k: int) -> np.ndarray:
    return np.array([n_sub // k + (1 if i < n_sub % k else 0) for i in range(k)])


def baseline_equal(sc: Scenario) -> Plan:
    """Equal bandwidth (or subchannels dealt evenly), largest power (each cap, scaled evenly to the total power cap;
    lower where an energy budget demands), the middle cut L // 2 and the scenario's default rank."""
    start = time.perf_counter()
    cut, rank = sc.model.dims.layers // 2, int(sc.training.default_rank)  # type: ignore[arg-type]
    pr, k, net = build_problem(sc, cut, rank), sc.num_clients, sc.network
    n = _even_subchannels(net.subchannels, k) if net.mode == "subchannels" else None  # type: ignore[arg-type]
    b = n * float(net.subchannel_hz) if n is not None else np.full(k, net.band_hz / k)  # type: ignore[arg-type]
    _, p = client_rate(pr, b, _power_cap(pr))
    return evaluate(sc, cut, rank, b, p, "equal", time.perf_counter() - start, n)


def baseline_random(sc: Scenario) -> Plan:
    """A random candidate cut and rank and a random split of the band (Dirichlet(1) shares, or one subchannel each
    plus a uniform multinomial of the rest), powers as :func:`baseline_equal`; drawn from ``scenario.seed``."""
    start = time.perf_counter()
    rng = np.random.default_rng(sc.seed)
    cut, rank = int(rng.choice(sc.training.cuts)), int(rng.choice(sc.training.ranks))
    pr, k, net = build_problem(sc, cut, rank), sc.num_clients, sc.network
    if net.mode == "subchannels":
        n = 1 + rng.multinomial(net.subchannels - k, np.full(k, 1.0 / k))  # type: ignore[operator]
        b = n * float(net.subchannel_hz)  # type: ignore[arg-type]
    else:
        n, b = None, rng.dirichlet(np.ones(k)) * net.band_hz
    _, p = client_rate(pr, b, _power_cap(pr))
    return evaluate(sc, cut, rank, b, p, "random", time.perf_counter() - start, n)


def brute_force(sc: Scenario, grid: int = 20, max_points: int = 200_000) -> Plan:
    """Exhaustive reference on a small instance: every candidate (cut, rank) x every split of the band into ``grid``
    equal parts with at least one per client (subchannels mode: every assignment of the subchannels), each with its
    exact optimal powers (:func:`~fedpeft.planning.resources.power_step`). Above the continuous optimum by at most the
    grid's coarseness; exact in subchannels mode."""
    k, net = sc.num_clients, sc.network
    units = int(net.subchannels) if net.mode == "subchannels" else grid  # type: ignore[arg-type]
    if math.comb(units - 1, k - 1) > max_points:
        raise ConfigError("grid", units, f"at most {max_points} splits of {units} parts over {k} clients")
    splits = list(itertools.combinations(range(1, units), k - 1))
    cuts = np.array(splits, dtype=np.int64).reshape(len(splits), k - 1)
    parts = np.diff(np.concatenate([np.zeros((len(cuts), 1), np.int64), cuts, np.full((len(cuts), 1), units)], 1))
    width = float(net.subchannel_hz) if net.mode == "subchannels" else net.band_hz / units  # type: ignore[arg-type]
    b_all = parts * width
    start = time.perf_counter()
    best: tuple[float, int, int, int, Array] | None = None
    for cut in sc.training.cuts:
        for rank in sc.training.ranks:
            p_all, t_all = power_step(build_problem(sc, cut, rank), b_all, sc.max_round_s)
            j = int(np.argmin(t_all))
            total = float(sc.rounds_model(rank)) * float(t_all[j])
            if best is None or total < best[0]:
                best = (total, cut, rank, j, p_all[j])
    assert best is not None
    _, cut, rank, j, p = best
    if not math.isfinite(best[0]):
        raise InfeasibleScenarioError("max_round_s", f"no split on the grid finishes a round within {sc.max_round_s}")
    n = parts[j] if net.mode == "subchannels" else None
    return evaluate(sc, cut, rank, b_all[j], p, "brute_force", time.perf_counter() - start, n)
