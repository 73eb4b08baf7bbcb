"""Per-round overhead of the ``deploy`` runtime (loopback SuperLink + 3 SuperNodes, TLS and authentication on)
against ``flower-sim`` and ``local`` on the same recipe, measured side by side in one run.

For each runtime the same seeded job runs ``--rounds`` rounds; a round's time is its ``round`` event's ``seconds``
(fit + evaluation + adapter save, measured by the server program). Round 1 is left out (warm-up: first messages,
lazy imports). The overhead of a runtime is its median round time minus ``local``'s, i.e. what delivering the
same work through that runtime adds per round; the target of the deployment issue is
``overhead(deploy) <= 3 x overhead(flower-sim)``. Two deploy settings are measured:

- ``deploy``: fedpeft's defaults: each node's fedpeft worker is the SuperNode's task executor (no process per
  message), the SuperNode's idle wait is 0.25 s instead of 3 s, the server pulls replies every 0.1 s;
- ``deploy-stock``: stock Flower nodes (``flower-supernode``, one ``flwr-clientapp`` process per message, whose
  ClientApp forwards the message to the same persistent worker so that the model is still built once).

Two workloads, both measured every time:

- ``compute``: 3 clients x ``--steps`` local steps of batch 16, server evaluation on 100 SST-2 dev phrases every
  round. Its overheads mix the runtime's latency with how each runtime spreads the compute over the two cores
  (``local``: clients one after another with 2 torch threads; ``flower-sim``: 2 Ray workers; ``deploy``: 3 node
  workers with 1 thread each, beside the SuperLink, SuperNodes and ServerApp);
- ``latency``: the same job with 1 local step of batch 1 and server evaluation only at the last round, so that a
  round is almost nothing but delivery: the runtime's own per-round cost, free of how compute is scheduled.

Start-up (cluster start, model builds) is reported separately: ``wall_s`` of the summary minus the rounds.

The overheads are differences of a few tenths of a second between medians of ~1-3 s rounds, on a machine whose
load drifts; each setting therefore runs ``--repeats`` times, in alternating order (local, flower-sim, deploy, ...
then the reverse), and its median is taken over the rounds of all its runs pooled.

The latency workload runs ``--latency-rounds`` rounds (default 30: its rounds take a few tenths of a second and
flower-sim's are quantised by the server's 0.1 s reply poll, so a median needs many of them); besides the pooled
median each setting reports the quartiles of its rounds and the per-run medians, and each ratio is also computed
per repeat (run i of every setting) to show its spread. No floor is applied: a runtime whose overhead is not
positive has no ratio (None), and that is said.

Run: ``python benchmarks/deploy_overhead.py [--rounds 8] [--latency-rounds 30] [--steps 3] [--repeats 3]
[--out benchmarks/results/deploy_overhead.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _machine import machine_info, save_result  # type: ignore[import-not-found]  # benchmarks/ is on sys.path
from fedpeft.config import RunConfig, from_dict
from fedpeft.runtime import run_federated

SETTINGS: dict[str, dict[str, Any]] = {
    "local": {"runtime": "local"},
    "flower-sim": {"runtime": "flower-sim"},
    "deploy": {"runtime": "deploy"},
    "deploy-stock": {"runtime": "deploy", "deploy": {"fast_nodes": False}},
}


#: workload -> (local steps, batch size, server eval every N rounds)
WORKLOADS: dict[str, tuple[int | None, int, int]] = {"compute": (None, 16, 1), "latency": (1, 1, 10_000)}


def job(
    out: Path, rounds: int, steps: int, setting: dict[str, Any], batch_size: int = 16, eval_every: int = 1
) -> RunConfig:
    return from_dict(
        RunConfig,
        {
            "name": "overhead",
            "seed": 0,
            "output_dir": str(out),
            "model": {"name": "tiny-small"},
            "data": {"dataset": "sst2", "max_length": 64, "train_limit": 600, "eval_limit": 100},
            "adapter": {"method": "lora", "r": 8},
            "train": {"steps": steps, "batch_size": batch_size, "lr": 4e-3},
            "federation": {"rounds": rounds, "num_clients": 3, "eval_every": eval_every},
            "deploy": setting.get("deploy", {}),
        },
    )


def measure(name: str, workload: str, rounds: int, steps: int, root: Path) -> dict[str, Any]:
    """One run of setting ``name`` on ``workload``: its round times (round 1 included; the caller drops it)."""
    setting = SETTINGS[name]
    wl_steps, batch_size, eval_every = WORKLOADS[workload]
    cfg = job(root, rounds, wl_steps or steps, setting, batch_size, eval_every)
    t0 = time.perf_counter()
    run = run_federated(cfg, runtime=setting["runtime"], quiet=True)
    total = time.perf_counter() - t0
    events = [json.loads(x) for x in (run.path / "metrics.jsonl").read_text().splitlines()]
    per_round = [float(e["seconds"]) for e in events if e["event"] == "round"]
    client_s = [float(e.get("seconds", 0.0)) for e in events if e["event"] == "client_train" and e["round"] > 1]
    summary = json.loads((run.path / "summary.json").read_text())
    return {
        "round_seconds": per_round,
        "client_train_s": client_s,
        "startup_s": round(total - sum(per_round), 2),
        "final": summary["final"],
        "bytes_up": summary["bytes_up"],
    }


def pool(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One setting's runs summarised: median over every run's rounds 2.. pooled, and the runs themselves."""
    rounds = [s for r in runs for s in r["round_seconds"][1:]]
    client_s = [s for r in runs for s in r["client_train_s"]]
    q1, _, q3 = statistics.quantiles(rounds, n=4)
    return {
        "median_round_s": round(statistics.median(rounds), 3),
        "quartiles_round_s": [round(q1, 3), round(q3, 3)],
        "pooled_rounds": len(rounds),
        "run_medians_s": [round(statistics.median(r["round_seconds"][1:]), 3) for r in runs],
        "client_train_s_mean": round(statistics.mean(client_s), 3) if client_s else None,
        "startup_s": round(statistics.median(r["startup_s"] for r in runs), 2),
        "final": runs[0]["final"],
        "bytes_up": runs[0]["bytes_up"],
        "runs": runs,
    }


def overhead_ratio(deploy: float, sim: float) -> float | None:
    """``deploy / sim`` overheads, None when flower-sim's overhead is not positive (no meaningful ratio)."""
    return round(deploy / sim, 2) if sim > 0 else None


def summarise(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Overheads against ``local`` and the deploy settings' ratios to flower-sim's overhead (pooled, and per repeat:
    run i of each setting, so the spread of the ratio shows)."""
    base = results["local"]["median_round_s"]
    for r in results.values():
        r["overhead_s"] = round(r["median_round_s"] - base, 3)
    ratios: dict[str, Any] = {}
    if "flower-sim" not in results:
        return {"results": results, "ratios": ratios}
    sim = results["flower-sim"]
    for name in ("deploy", "deploy-stock"):
        if name not in results:
            continue
        ratios[f"{name}_over_flower_sim"] = overhead_ratio(results[name]["overhead_s"], sim["overhead_s"])
        ratios[f"{name}_over_flower_sim_per_repeat"] = [
            overhead_ratio(d - loc, s - loc)
            for d, s, loc in zip(
                results[name]["run_medians_s"], sim["run_medians_s"], results["local"]["run_medians_s"], strict=True
            )
        ]
    return {"results": results, "ratios": ratios}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8, help="rounds of the compute workload")
    parser.add_argument("--latency-rounds", type=int, default=30, help="rounds of the latency workload")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting, in alternating order")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/deploy_overhead.json"))
    args = parser.parse_args(argv)
    if "local" not in args.settings:
        parser.error("the overheads are measured against local: keep it in --settings")

    report: dict[str, Any] = {
        "machine": machine_info(threads=2),
        "rounds": {"compute": args.rounds, "latency": args.latency_rounds},
        "steps": args.steps,
        "repeats": args.repeats,
        "clients": 3,
        "cpu_count": os.cpu_count(),
    }
    with tempfile.TemporaryDirectory(prefix="fpdo-") as tmp:
        for workload in args.workloads:
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in args.settings}
            rounds = args.latency_rounds if workload == "latency" else args.rounds
            for rep in range(args.repeats):
                for name in args.settings if rep % 2 == 0 else args.settings[::-1]:
                    tag = f"[{workload} {name} #{rep + 1}]"
                    print(f"{tag} running {rounds} rounds ...", flush=True)
                    run = measure(name, workload, rounds, args.steps, Path(tmp) / f"{workload}-{name}-{rep}")
                    runs[name].append(run)
                    print(f"{tag} median round {statistics.median(run['round_seconds'][1:]):.3f} s, "
                          f"start-up {run['startup_s']:.1f} s", flush=True)  # fmt: skip
            report[workload] = summarise({name: pool(r) for name, r in runs.items()})
    for workload in args.workloads:
        print(f"\n{workload}: {'runtime':<14}{'median round s':>16}{'overhead s':>12}{'start-up s':>12}  run medians")
        for name, r in report[workload]["results"].items():
            print(f"{workload}: {name:<14}{r['median_round_s']:>16.3f}{r['overhead_s']:>12.3f}{r['startup_s']:>12.1f}  "
                  f"{r['run_medians_s']}")  # fmt: skip
        for key, value in report[workload]["ratios"].items():
            print(f"{workload}: {key}: {value}")
    save_result(args.out, report)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
