"""Per-round wall time of the ``flower-sim`` runtime against ``local`` and a hand-written plain PyTorch loop.

The same job (benchmarks/federated_overhead.py's ``make_config``: tiny-small, LoRA r=8 on all linear layers,
10 clients x 5 steps x batch 16 by default, a 16-example server eval so evaluation is negligible) runs:

* **plain** -- federated_overhead's ``PlainRunner`` in this process, ``--rounds`` rounds;
* **local** -- ``run_federated(cfg, runtime="local")``;
* **flower-sim** -- ``run_federated(cfg, runtime="flower-sim")``: Ray workers (one per CPU) run the clients, so
  clients train in parallel there while ``local`` and ``plain`` run them one after another.

Per-round seconds come from each run's ``round`` events (round 1 excluded as warm-up; median of the rest) and from
``PlainRunner.round``. Startup = wall time minus the rounds (model/data build, Ray start, workers importing torch
and building the model once each, teardown). Target: flower-sim per round <= 1.5x the plain loop.

    python benchmarks/flower_sim_overhead.py [--rounds 6] [--clients 10] [--steps 5]
    python benchmarks/flower_sim_overhead.py --quick --out /tmp/flower_sim_overhead.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from _machine import machine_info  # type: ignore[import-not-found]  # benchmarks/ is on sys.path
from federated_overhead import PlainRunner, make_config  # type: ignore[import-not-found]
from fedpeft.runtime import run_federated
from fedpeft.runtime.setup import build_federated_data, build_model

RESULTS = Path(__file__).parent / "results"


def round_seconds(run_path: Path) -> list[float]:
    lines = (run_path / "metrics.jsonl").read_text().splitlines()
    return [e["seconds"] for e in map(json.loads, lines) if e["event"] == "round"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-small")
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--train-limit", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(RESULTS / "flower_sim_overhead.json"))
    args = ap.parse_args()
    if args.quick:
        args.clients, args.steps, args.batch_size, args.train_limit, args.rounds = 3, 1, 4, 200, 2
    args.up = args.down = "none"
    torch.set_num_threads(args.threads)
    info = machine_info(args.threads)

    per_round: dict[str, list[float]] = {}
    wall: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="fedpeft-flower-overhead-") as tmp:
        cfg = make_config(args, tmp)
        cfg.federation.rounds = args.rounds
        model, tokenizer = build_model(cfg)
        data = build_federated_data(cfg, tokenizer)
        plain = PlainRunner(cfg, model, data)
        per_round["plain"] = [plain.round(r) for r in range(1, args.rounds + 1)]
        del plain, model
        for runtime in ("local", "flower-sim"):
            t0 = time.perf_counter()
            run = run_federated(cfg, runtime=runtime, quiet=True)
            wall[runtime] = time.perf_counter() - t0
            per_round[runtime] = round_seconds(run.path)
            print(f"{runtime}: wall {wall[runtime]:.1f} s, rounds {per_round[runtime]}", flush=True)
    warm = {k: v[1:] if len(v) > 1 else v for k, v in per_round.items()}
    med = {k: statistics.median(v) for k, v in warm.items()}
    startup = {k: wall[k] - sum(per_round[k]) for k in wall}
    out = {
        "benchmark": "flower_sim_overhead",
        **info,
        "load_average_end": os.getloadavg(),
        "clients": args.clients,
        "steps_per_client": args.steps,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "round_seconds": per_round,
        "median_round_s": med,
        "ratio_to_plain": {k: med[k] / med["plain"] for k in med},
        "startup_and_teardown_s": startup,
        "target_ratio_flower_sim": 1.5,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"\n{args.clients} clients x {args.steps} steps x batch {args.batch_size}, {args.rounds} rounds\n")
    print("| loop | median s / round | ratio to plain | startup + teardown s |\n|---|---:|---:|---:|")
    for k in ("plain", "local", "flower-sim"):
        print(f"| {k} | {med[k]:.3f} | {med[k] / med['plain']:.2f} | {startup.get(k, 0.0):.1f} |")


if __name__ == "__main__":
    main()
