"""A recipe's headline figure over several seeds, run exactly as a user runs it (the CLI, one process per seed).

    python benchmarks/seeds.py --recipes recipes/demo.toml recipes/sst2_lora_tiny_small.toml --seeds 0 1 2 \
        --out benchmarks/results/demo_seeds.json [--set key=value ...]
    python benchmarks/seeds.py --recipes recipes/demo.toml recipes/demo.toml::comm.up=int8::comm.down=int8 ...

A ``RECIPE::key=value::...`` entry is a variant of a recipe (its own overrides after the global ``--set``).

Each (recipe, seed) is ``fedpeft run RECIPE --set seed=S`` (or ``fedpeft finetune`` for a centralized recipe) in
a fresh process; its wall time is the whole command's (start-up included). Recorded per seed: every evaluation
(round 0 / before, intermediate rounds, final), wall time and the run directory; per recipe: mean, sample standard
deviation and 95% Student-t interval over seeds of the final metric and the wall time; and for every recipe after
the first, the paired difference to the first over the shared seeds (paired t-test, wins/losses). The seed sets
the partition, client sampling, adapter initialisation and batches: the evaluation data are the same for every
seed, so the spread is the training's, not the test sample's (the Wilson interval of one run's accuracy on the
evaluation set is reported beside it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import tomllib

from _machine import machine_info, save_result
from fedpeft.reports.stats import accuracy_interval, paired, spread

ROOT = Path(__file__).resolve().parents[1]


def is_federated(recipe: dict[str, Any]) -> bool:
    return "federation" in recipe


def split_variant(spec: str) -> tuple[Path, list[str]]:
    """``RECIPE`` or ``RECIPE::key=value::key=value`` (a variant of a recipe) -> (recipe path, its overrides)."""
    path, *overrides = spec.split("::")
    for item in overrides:
        if "=" not in item:
            raise SystemExit(f"--recipes {spec!r}: {item!r} is not key=value")
    return Path(path).resolve(), overrides


def run_one(recipe: Path, seed: int, overrides: list[str], output_dir: str) -> dict[str, Any]:
    """One seed of one recipe through the CLI; returns its evaluations, wall time and run directory."""
    raw = tomllib.loads(recipe.read_text())
    command = "run" if is_federated(raw) else "finetune"
    cmd = [sys.executable, "-m", "fedpeft.cli", command, str(recipe), "--quiet", "--set", f"seed={seed}"]
    cmd += ["--set", f"output_dir={output_dir}"]
    for item in overrides:
        cmd += ["--set", item]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    run = Path(out.stdout.strip().splitlines()[-1])
    if not run.is_absolute():
        run = ROOT / run
    events = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in events if e["event"] == "eval"]
    summary = json.loads((run / "summary.json").read_text())
    return {
        "seed": seed,
        "command": " ".join(["fedpeft", *cmd[3:]]),
        "run_dir": str(run),
        "wall_s": round(wall, 1),
        "run_wall_s": summary.get("wall_s"),
        "evals": [{k: v for k, v in e.items() if k not in ("event", "time")} for e in evals],
        "final": summary["final"],
        "eval_examples": next((e["eval_examples"] for e in events if "eval_examples" in e), None),
    }


def metric_of(final: dict[str, Any]) -> str:
    return "accuracy" if "accuracy" in final else "rouge_l"


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    metric = metric_of(rows[0]["final"])
    finals = [r["final"][metric] for r in rows]
    out: dict[str, Any] = {
        "metric": metric,
        "final": spread(finals).as_dict(),
        "final_text": spread(finals).format(digits=1, scale=100 if metric == "accuracy" else 1),
        "wall_s": spread([r["wall_s"] for r in rows]).as_dict(),
    }
    n = rows[0]["eval_examples"]
    if metric == "accuracy" and n:
        out["wilson_95_of_one_run"] = [accuracy_interval(round(a * n), n) for a in finals]
    # the same rounds' evaluations over seeds (federated: round 0, every eval_every, the last)
    if "round" in rows[0]["evals"][0]:
        rounds = [e["round"] for e in rows[0]["evals"]]
        out["by_round"] = {
            str(rnd): spread([next(e[metric] for e in r["evals"] if e["round"] == rnd) for r in rows]).as_dict()
            for rnd in rounds
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", nargs="+", required=True, help="RECIPE or RECIPE::key=value::... (a variant)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every recipe")
    ap.add_argument("--output-dir", default=str(ROOT / "runs" / "bench"))
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if len(args.seeds) < 3:
        print("note: fewer than 3 seeds: no headline figure should rest on this", file=sys.stderr)

    # the runs are subprocesses: torch's default (one thread per core) unless OMP_NUM_THREADS says otherwise
    threads = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
    result: dict[str, Any] = {"machine": machine_info(threads), "seeds": args.seeds, "overrides": args.set}
    result["recipes"] = {}
    variants = [split_variant(spec) for spec in args.recipes]  # every spec checked before the first run
    for spec, (recipe, overrides) in zip(args.recipes, variants, strict=True):
        rows = []
        for seed in args.seeds:
            rows.append(run_one(recipe, seed, [*args.set, *overrides], args.output_dir))
            r = rows[-1]
            print(f"{spec} seed {seed}: {r['final']} in {r['wall_s']} s", flush=True)
        result["recipes"][spec] = {"summary": summarize(rows), "rows": rows}
        print(f"{spec}: {result['recipes'][spec]['summary']['final_text']}", flush=True)
        save_result(args.out, result)  # progress kept if a later recipe fails
    first, *others = args.recipes
    for other in others:
        a, b = (result["recipes"][k] for k in (other, first))
        metric = a["summary"]["metric"]
        diff = paired([r["final"][metric] for r in a["rows"]], [r["final"][metric] for r in b["rows"]])
        result.setdefault("paired_to_first", {})[other] = diff.as_dict()
        print(f"{other} - {first}: {diff.diff.format(digits=3)}, p = {diff.p_value:.3f}", flush=True)
    save_result(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
