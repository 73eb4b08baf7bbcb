"""Plain-text summary of a plan, as ``fedpeft plan`` prints it."""

from __future__ import annotations

import math

from fedpeft.planning.allocate import Plan
from fedpeft.planning.scenario import Scenario


def _hours(seconds: float) -> str:
    return f"{seconds:,.1f} s ({seconds / 3600:.2f} h)" if math.isfinite(seconds) else "infeasible"


def format_plan(sc: Scenario, plan: Plan) -> str:
    """The chosen cut and rank, the per-client allocation table, the modeled delays and the baselines' delays with the
    plan's % reduction of the total delay (``plan.baselines``, filled by :meth:`Plan.compare`)."""
    dims, net = sc.model.dims, sc.network
    band = f"{net.band_hz / 1e6:g} MHz" + (
        f" ({net.subchannels} subchannels x {net.subchannel_hz / 1e3:g} kHz)"  # type: ignore[operator]
        if net.mode == "subchannels"
        else ""
    )
    power = "" if net.total_power_w is None else f", total power cap {net.total_power_w:g} W"
    lines = [
        f"scenario {sc.name}: {sc.num_clients} clients, {net.mode} mode, {band}{power}, {dims.layers}-layer model "
        f"(H={dims.hidden}), {sc.training.local_steps} local steps of {sc.training.batch_size}x{sc.training.seq_len} "
        "tokens per round",
        f"plan: cut {plan.cut} (clients run layers 0-{plan.cut - 1}, the server {plan.cut}-{dims.layers - 1} + head), "
        f"LoRA rank {plan.rank}, rounds({plan.rank}) = {plan.rounds:.1f}, solved in {plan.solve_s:.3f} s",
        "",
        f"{'client':>6} {'gain_dB':>8} {'TFLOP/s':>8} {'band_MHz':>9}"
        + (f" {'subch':>5}" if plan.subchannels is not None else "")
        + f" {'power_W':>8} {'client_s':>9} {'server_s':>9} {'up_s':>8} {'down_s':>8} {'round_s':>8} {'energy_J':>9}",
    ]
    for i, (client, row) in enumerate(zip(sc.clients, plan.breakdown, strict=True)):
        sub = f" {plan.subchannels[i]:>5d}" if plan.subchannels is not None else ""
        lines.append(
            f"{i:>6d} {client.resolved_gain_db:>8.1f} {client.flops / 1e12:>8.2f}"
            f" {plan.bandwidth_hz[i] / 1e6:>9.3f}{sub}"
            f" {plan.power_w[i]:>8.4f} {row['client_s']:>9.3f} {row['server_s']:>9.3f} {row['uplink_s']:>8.3f}"
            f" {row['downlink_s']:>8.3f} {row['round_s']:>8.3f} {row['energy_j']:>9.4g}"
        )
    lines += [
        "",
        f"per-round delay {plan.round_s:.3f} s; total delay {_hours(plan.total_s)} = {plan.rounds:.1f} rounds x "
        f"{plan.round_s:.3f} s",
    ]
    if plan.baselines:
        lines += [
            "",
            f"{'method':<12} {'cut':>4} {'rank':>5} {'round_s':>10} {'rounds':>7} {'total_s':>12} {'reduction':>10}",
        ]
        lines.append(
            f"{'planner':<12} {plan.cut:>4d} {plan.rank:>5d} {plan.round_s:>10.3f} {plan.rounds:>7.1f} "
            f"{plan.total_s:>12.1f} {'':>10}"
        )
        for name, b in plan.baselines.items():
            total = f"{b['total_s']:>12.1f}" if math.isfinite(b["total_s"]) else f"{'infeasible':>12}"
            lines.append(
                f"{name:<12} {int(b['cut']):>4d} {int(b['rank']):>5d} {b['round_s']:>10.3f} {b['rounds']:>7.1f} "
                f"{total} {b['reduction_pct']:>9.1f}%"
            )
        lines.append(
            "reduction = 1 - planner total delay / method total delay (the paper reports 47.63% vs unoptimized)"
        )
    return "\n".join(lines)
