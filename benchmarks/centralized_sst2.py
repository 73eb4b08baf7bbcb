"""Centralized LoRA on SST-2 for each bundled model: dev accuracy before/after, steps, wall time.

    python benchmarks/centralized_sst2.py [--models tiny-small tiny-large]

Runs the recipes recipes/sst2_lora_tiny_small.toml (tiny-small) and recipes/sst2_lora_tiny_large.toml (tiny-large)
through the same code path as `fedpeft finetune`, and writes benchmarks/results/centralized_sst2.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from fedpeft.config import JobConfig, load_config
from fedpeft.training.centralized import run_centralized

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {
    "tiny-small": ROOT / "recipes" / "sst2_lora_tiny_small.toml",
    "tiny-large": ROOT / "recipes" / "sst2_lora_tiny_large.toml",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--output-dir", default=str(ROOT / "runs" / "bench"))
    ap.add_argument("--set", action="append", default=[], help="extra overrides for every run")
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = []
    for name in args.models:
        cfg = load_config(JobConfig, RECIPES[name], [f"output_dir='{args.output_dir}'", *args.set])
        run = run_centralized(cfg, quiet=True)
        s = json.loads((run.path / "summary.json").read_text())
        rows.append(
            {
                "model": name,
                "recipe": str(RECIPES[name].relative_to(ROOT)),
                "overrides": args.set,
                "accuracy_before": s["before"]["accuracy"],
                "accuracy_after": s["final"]["accuracy"],
                "steps": s["steps"],
                "train_seconds": s["train_seconds"],
                "trainable_params": s["trainable_params"],
                "run_dir": str(run.path),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "centralized_sst2.json").write_text(json.dumps({"torch_threads": 2, "runs": rows}, indent=2) + "\n")
    print("| model | dev accuracy before | after | steps | train s |\n|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['model']} | {r['accuracy_before']:.3f} | {r['accuracy_after']:.3f} | {r['steps']} "
            f"| {r['train_seconds']:.0f} |"
        )


if __name__ == "__main__":
    main()
