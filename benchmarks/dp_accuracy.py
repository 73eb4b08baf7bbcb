"""Accuracy vs epsilon on the default job: client-level DP (central, local) and sample-level DP-SGD.

The default job (`recipes/demo.toml`: tiny-small, 10 clients all training every round, SST-2 Dirichlet(0.5),
15 rounds, secure aggregation on) with `[privacy] dp` set, everything else equal. Two stages:

1. dev (seed 0, `data.eval_split=dev`): the clipping norm of each DP mode is chosen from a small grid by dev
   accuracy, client-level at noise multiplier 0.3, DP-SGD at 1.0 (`local` uses `central`'s clip: the same clip
   bounds the same update);
2. test (the labelled SST-2 test, `--seeds`): each (mode, noise multiplier) with its chosen clip, and the
   baselines without DP. Reported: accuracy mean and sd over seeds, and the epsilon the run reports for its delta.

    python benchmarks/dp_accuracy.py --seeds 0 1 2 --out benchmarks/results/dp_accuracy.json

Sample-level DP-SGD cannot train peft's embedding LoRA (Opacus computes no per-example gradient for it), so its
rows drop `embed_tokens` from the adapter, and a no-DP baseline without it is run alongside. Client-level epsilon
is for adding or removing one client's whole data (delta 0.1 / num_clients = 0.01), sample-level epsilon for one
training example of the worst client (delta 1e-5): the two are not the same guarantee.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from _machine import machine_info, save_result
from seeds import run_one

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "demo.toml"
BASE = ["federation.client_eval_every=0", "federation.eval_every=15"]
NO_EMBED = 'adapter.target_modules=["q_proj","k_proj","v_proj","o_proj","gate_proj","up_proj","down_proj"]'
MODES: dict[str, list[str]] = {
    "central": ["privacy.dp=central"],
    "local": ["privacy.dp=local"],
    "sample": ["privacy.dp=sample", NO_EMBED],
}
DEV_CLIPS = {"sample": [0.1, 1.0], "central": [0.25, 1.0, 4.0]}  # sample first: its failure would show early
DEV_NOISE = {"sample": 1.0, "central": 0.3}
BASELINES = {"none": [], "none (no embedding LoRA)": [NO_EMBED]}


def run(seed: int, overrides: list[str], out_dir: str) -> dict[str, Any]:
    row = run_one(RECIPE, seed, [*BASE, *overrides], out_dir)
    summary = json.loads((Path(row["run_dir"]) / "summary.json").read_text())
    row["privacy"] = summary.get("privacy")
    return row


def cell(rows: list[dict[str, Any]]) -> dict[str, Any]:
    accs = [r["final"]["accuracy"] for r in rows]
    eps = [r["privacy"]["epsilon"] for r in rows if r.get("privacy")]
    return {
        "accuracy": accs,
        "mean": statistics.mean(accs),
        "sd": statistics.stdev(accs) if len(accs) > 1 else None,
        "epsilon": max(eps) if eps else None,
        "rows": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--noise", nargs="+", type=float, default=[0.1, 0.3, 1.0], help="central's noise multipliers")
    ap.add_argument("--local-noise", nargs="+", type=float, default=[0.3])
    ap.add_argument("--sample-noise", nargs="+", type=float, default=[1.0])
    ap.add_argument("--baselines", nargs="*", choices=sorted(BASELINES), default=list(BASELINES))
    ap.add_argument("--output-dir", default=str(ROOT / "runs" / "dp"))
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    result: dict[str, Any] = {"machine": machine_info(0), "recipe": str(RECIPE), "seeds": args.seeds}

    # 1. dev: the clip of each mode, seed 0
    dev: dict[str, dict[str, float]] = {}
    for mode, clips in DEV_CLIPS.items():
        for clip in clips:
            z = DEV_NOISE[mode]
            over = [*MODES[mode], f"privacy.dp_clip={clip}", f"privacy.dp_noise_multiplier={z}", "data.eval_split=dev"]
            acc = run(0, over, args.output_dir)["final"]["accuracy"]
            dev.setdefault(mode, {})[str(clip)] = acc
            print(f"dev {mode:8s} clip {clip}: {acc:.4f}", flush=True)
    chosen = {mode: float(max(accs, key=lambda c: accs[c])) for mode, accs in dev.items()}
    chosen["local"] = chosen["central"]
    result.update(dev=dev, chosen_clip=chosen)
    save_result(args.out, result)

    # 2. test: every (mode, z) with its clip, and the baselines, over the seeds
    grid = {name: BASELINES[name] for name in args.baselines}
    for mode, noises in (("central", args.noise), ("local", args.local_noise), ("sample", args.sample_noise)):
        for z in noises:
            grid[f"{mode} z={z}"] = [*MODES[mode], f"privacy.dp_noise_multiplier={z}"]
    cells: dict[str, Any] = {}
    for name, over in grid.items():
        mode = next((m for m in MODES if over[:1] == MODES[m][:1]), None)
        over = [*over, f"privacy.dp_clip={chosen[mode]}"] if mode else over
        rows = []
        for seed in args.seeds:
            rows.append(run(seed, over, args.output_dir))
            print(f"{name:26s} seed {seed}: {rows[-1]['final']['accuracy']:.4f}", flush=True)
        cells[name] = {"overrides": over, **cell(rows)}
        result["cells"] = cells
        save_result(args.out, result)

    print("\n| setting | clip | epsilon | SST-2 test accuracy |")
    print("|---|---:|---:|---:|")
    for name, c in cells.items():
        clip = next((o.split("=")[1] for o in c["overrides"] if o.startswith("privacy.dp_clip=")), "-")
        eps = "inf" if c["epsilon"] is None else f"{c['epsilon']:.1f}"
        sd = f" ± {100 * c['sd']:.1f}" if c["sd"] is not None else ""
        print(f"| {name} | {clip} | {eps if clip != '-' else '-'} | {100 * c['mean']:.1f}{sd} |")


if __name__ == "__main__":
    main()
