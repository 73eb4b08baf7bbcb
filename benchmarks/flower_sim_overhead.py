"""Per-round wall time of the ``flower-sim`` runtime against ``local`` and a hand-written plain PyTorch loop,
at matched parallelism.

The same job (benchmarks/federated_overhead.py's ``make_config``: tiny-small, LoRA r=8 on all linear layers,
10 clients x 5 steps x batch 16 by default, a 16-example server eval so evaluation is negligible) runs as:

* **plain-1t** -- federated_overhead's ``PlainRunner`` in this process, clients one after another, 1 torch thread;
* **local-1t** -- ``run_federated(cfg, runtime="local")`` with 1 torch thread;
* **sim-1w** -- ``flower-sim`` with ``federation.sim_workers = 1``: one Ray worker with 1 thread trains the clients
  one after another. These three do the same compute with the same parallelism: the ratios are the overhead.
* **plain-2t** and **sim-2w** -- the machine's default use of two cores: the plain loop with 2 torch threads, and
  two single-thread Ray workers training two clients at a time. Different parallelism, reported beside the
  like-for-like rows, not as the overhead.

Rounds are interleaved at run level: the settings run in the order above, then in reverse, ``--repeats`` times in
all, and each setting's median is over the rounds (round 1 of each run excluded as warm-up) of all its runs
pooled, with the spread of the per-run medians. Startup (model/data build, Ray start, workers importing torch and
building the model once each, teardown) is the wall time minus the rounds, reported beside the ratio.

    python benchmarks/flower_sim_overhead.py [--rounds 6] [--clients 10] [--steps 5] [--repeats 2]
    python benchmarks/flower_sim_overhead.py --quick --out /tmp/flower_sim_overhead.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from _machine import machine_info, save_result  # type: ignore[import-not-found]  # benchmarks/ is on sys.path
from federated_overhead import PlainRunner, make_config  # type: ignore[import-not-found]
from fedpeft.config import RunConfig
from fedpeft.runtime import run_federated
from fedpeft.runtime.setup import build_federated_data, build_model

RESULTS = Path(__file__).parent / "results"
#: setting -> (torch threads in this process, runtime or "plain", flower-sim workers)
SETTINGS: dict[str, tuple[int, str, int]] = {
    "plain-1t": (1, "plain", 0),
    "local-1t": (1, "local", 0),
    "sim-1w": (1, "flower-sim", 1),
    "plain-2t": (2, "plain", 0),
    "sim-2w": (2, "flower-sim", 2),
}
LIKE_FOR_LIKE = ("plain-1t", "local-1t", "sim-1w")


def round_seconds(run_path: Path) -> list[float]:
    lines = (run_path / "metrics.jsonl").read_text().splitlines()
    return [e["seconds"] for e in map(json.loads, lines) if e["event"] == "round"]


def one_run(name: str, cfg: RunConfig, rounds: int) -> tuple[list[float], float]:
    """Round seconds and wall seconds of one run of setting ``name``."""
    threads, runtime, workers = SETTINGS[name]
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    if runtime == "plain":
        model, tokenizer = build_model(cfg)
        plain = PlainRunner(cfg, model, build_federated_data(cfg, tokenizer))
        per_round = [plain.round(r) for r in range(1, rounds + 1)]
    else:
        cfg.federation.sim_workers = workers
        per_round = round_seconds(run_federated(cfg, runtime=runtime, quiet=True).path)
    return per_round, time.perf_counter() - t0


def summarize(runs: list[tuple[list[float], float]]) -> dict[str, Any]:
    warm = [s for per_round, _ in runs for s in per_round[1:]]
    return {
        "median_round_s": statistics.median(warm),
        "run_medians_s": [statistics.median(r[1:]) for r, _ in runs],
        "startup_and_teardown_s": statistics.median(wall - sum(r) for r, wall in runs),
        "round_seconds": [r for r, _ in runs],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-small")
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--train-limit", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2, help="runs per setting, alternating forward/reverse order")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(RESULTS / "flower_sim_overhead.json"))
    args = ap.parse_args()
    if args.quick:
        args.clients, args.steps, args.batch_size, args.train_limit, args.rounds = 3, 1, 4, 200, 3
    args.up = args.down = "none"
    info = machine_info(threads=0)  # per setting, below

    runs: dict[str, list[tuple[list[float], float]]] = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory(prefix="fedpeft-flower-overhead-") as tmp:
        for rep in range(args.repeats):
            order = list(SETTINGS) if rep % 2 == 0 else list(reversed(SETTINGS))
            for name in order:
                cfg = make_config(args, f"{tmp}/{name}-{rep}")
                cfg.federation.rounds = args.rounds
                per_round, wall = one_run(name, cfg, args.rounds)
                runs[name].append((per_round, wall))
                print(f"[{rep}] {name}: wall {wall:.1f} s, rounds {[round(s, 3) for s in per_round]}", flush=True)
    res = {name: summarize(r) for name, r in runs.items()}

    def ratio(a: str, b: str) -> float:
        return res[a]["median_round_s"] / res[b]["median_round_s"]

    out = {
        "benchmark": "flower_sim_overhead",
        "machine": info,
        "settings": {name: {"threads": t, "runtime": rt, "sim_workers": w} for name, (t, rt, w) in SETTINGS.items()},
        "clients": args.clients,
        "steps_per_client": args.steps,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "repeats": args.repeats,
        "results": res,
        "ratio_like_for_like": {"local-1t": ratio("local-1t", "plain-1t"), "sim-1w": ratio("sim-1w", "plain-1t")},
        "ratio_two_cores": {"sim-2w_over_plain-2t": ratio("sim-2w", "plain-2t")},
        "target_ratio_flower_sim": 1.5,
    }
    save_result(Path(args.out), out)
    print(f"\n{args.clients} clients x {args.steps} steps x batch {args.batch_size}, {args.rounds} rounds, "
          f"{args.repeats} runs each\n")  # fmt: skip
    print("| setting | median s / round | run medians | ratio | startup + teardown s |\n|---|---:|---|---:|---:|")
    for name in SETTINGS:
        r = res[name]
        base = "plain-1t" if name in LIKE_FOR_LIKE else "plain-2t"
        print(
            f"| {name} | {r['median_round_s']:.3f} | {[round(m, 3) for m in r['run_medians_s']]} | "
            f"{ratio(name, base):.2f} | {r['startup_and_teardown_s']:.1f} |"
        )


if __name__ == "__main__":
    main()
