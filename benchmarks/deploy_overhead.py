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

Start-up (cluster start, model builds) is reported separately: ``wall_s`` of the summary minus the rounds.

Run: ``python benchmarks/deploy_overhead.py [--rounds 6] [--steps 3] [--out benchmarks/results/deploy_overhead.json]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fedpeft.config import RunConfig, from_dict
from fedpeft.runtime import run_federated

SETTINGS: dict[str, dict[str, Any]] = {
    "local": {"runtime": "local"},
    "flower-sim": {"runtime": "flower-sim"},
    "deploy": {"runtime": "deploy"},
    "deploy-stock": {"runtime": "deploy", "deploy": {"fast_nodes": False}},
}


def job(out: Path, rounds: int, steps: int, setting: dict[str, Any]) -> RunConfig:
    return from_dict(
        RunConfig,
        {
            "name": "overhead",
            "seed": 0,
            "output_dir": str(out),
            "model": {"name": "tiny-small"},
            "data": {"dataset": "sst2", "max_length": 64, "train_limit": 600, "eval_limit": 100},
            "adapter": {"method": "lora", "r": 8},
            "train": {"steps": steps, "batch_size": 16, "lr": 4e-3},
            "federation": {"rounds": rounds, "num_clients": 3},
            "deploy": setting.get("deploy", {}),
        },
    )


def measure(name: str, rounds: int, steps: int, root: Path) -> dict[str, Any]:
    setting = SETTINGS[name]
    t0 = time.perf_counter()
    run = run_federated(job(root / name, rounds, steps, setting), runtime=setting["runtime"], quiet=True)
    total = time.perf_counter() - t0
    events = [json.loads(x) for x in (run.path / "metrics.jsonl").read_text().splitlines()]
    per_round = [float(e["seconds"]) for e in events if e["event"] == "round"]
    client_s = [float(e.get("seconds", 0.0)) for e in events if e["event"] == "client_train" and e["round"] > 1]
    summary = json.loads((run.path / "summary.json").read_text())
    return {
        "round_seconds": per_round,
        "median_round_s": statistics.median(per_round[1:]),
        "client_train_s_mean": statistics.mean(client_s) if client_s else None,
        "total_s": round(total, 2),
        "startup_s": round(total - sum(per_round), 2),
        "final": summary["final"],
        "bytes_up": summary["bytes_up"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/deploy_overhead.json"))
    args = parser.parse_args(argv)
    if "local" not in args.settings:
        parser.error("the overheads are measured against local: keep it in --settings")

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="fpdo-") as tmp:
        for name in args.settings:
            print(f"[{name}] running {args.rounds} rounds ...", flush=True)
            results[name] = measure(name, args.rounds, args.steps, Path(tmp))
            print(f"[{name}] median round {results[name]['median_round_s']:.2f} s, "
                  f"start-up {results[name]['startup_s']:.1f} s", flush=True)  # fmt: skip
    base = results["local"]["median_round_s"]
    for r in results.values():
        r["overhead_s"] = round(r["median_round_s"] - base, 3)
    sim = results.get("flower-sim", {}).get("overhead_s")
    ratios = {}
    for name in ("deploy", "deploy-stock"):
        if name in results and sim is not None:
            # flower-sim can be faster than local (two workers in parallel): floor its overhead at 0.1 s per round
            ratios[f"{name}_over_flower_sim"] = round(results[name]["overhead_s"] / max(sim, 0.1), 2)
    report = {"rounds": args.rounds, "steps": args.steps, "clients": 3, "results": results, "ratios": ratios}
    print(f"\n{'runtime':<14}{'median round s':>16}{'overhead s':>12}{'start-up s':>12}")
    for name, r in results.items():
        print(f"{name:<14}{r['median_round_s']:>16.2f}{r['overhead_s']:>12.2f}{r['startup_s']:>12.1f}")
    for key, value in ratios.items():
        print(f"{key}: {value}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
