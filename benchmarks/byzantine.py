"""Byzantine clients against robust aggregation: attack x defence on the default job.

The default job (`recipes/demo.toml`: tiny-small, 10 clients, SST-2 Dirichlet(0.5), 15 rounds) with 20% of the
clients (2, the same ones every round, drawn with the seed) attacking, against each defence with everything else
equal. Secure aggregation is off in every cell (the robust rules need single updates); the plain mean is the
baseline. Reported: SST-2 test accuracy after the last round (mean and sd over seeds).

    python benchmarks/byzantine.py --seeds 0 [--attacks ...] [--defences ...] --out benchmarks/results/byzantine.json

Attacks (`[attack]`): none, sign_flip (-update), scale (x10), noise (std 0.1 random update), label_flip (labels
shifted by one, trained honestly), backdoor (the trigger " cf" at the start of half of the attacker's examples,
relabelled negative, trained honestly, sent unboosted; its success rate `backdoor_asr` is the share of the positive
test examples that the model calls negative once triggered). Defences: mean (FedAvg, unweighted), clip
(`algorithm.clip_norm`, each update scaled to L2 norm <= 0.5), median (`fedmedian`), trimmed (`fedtrimmedavg`, beta
0.2), krum (`fedkrum`, f = 2, multi-Krum over n - f = 8). The settings were fixed before any run, not tuned on these
results.
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
BASE = ["privacy.secure_aggregation=false", "federation.client_eval_every=0", "federation.eval_every=15"]
ATTACKS = {
    "none": [],
    "sign_flip": ["attack.kind=sign_flip", "attack.fraction=0.2"],
    "scale": ["attack.kind=scale", "attack.fraction=0.2", "attack.scale=10.0"],
    "noise": ["attack.kind=noise", "attack.fraction=0.2", "attack.noise_std=0.1"],
    "label_flip": ["attack.kind=label_flip", "attack.fraction=0.2"],
    "backdoor": ["attack.kind=backdoor", "attack.fraction=0.2", "attack.poison_fraction=0.5", "attack.target=0"],
}
DEFENCES = {
    "mean": ["algorithm.weighted=false"],
    "clip": ["algorithm.weighted=false", "algorithm.clip_norm=0.5"],
    "median": ["federation.algorithm=fedmedian"],
    "trimmed": ["federation.algorithm=fedtrimmedavg", "algorithm.beta=0.2"],
    "krum": ["federation.algorithm=fedkrum", "algorithm.byzantine=2"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--attacks", nargs="+", choices=sorted(ATTACKS), default=list(ATTACKS))
    ap.add_argument("--defences", nargs="+", choices=sorted(DEFENCES), default=list(DEFENCES))
    ap.add_argument("--output-dir", default=str(ROOT / "runs" / "byzantine"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--combine", nargs="+", type=Path, help="merge the cells of these results into --out, no runs")
    args = ap.parse_args()
    if args.combine:  # e.g. the attacks split over two processes
        parts = [json.loads(p.read_text()) for p in args.combine]
        cells = {k: v for part in parts for k, v in part["cells"].items()}
        for c in cells.values():  # the trigger's reference rate on the models trained without attackers
            if c["attack"] == "none" and not c.get("backdoor_asr"):
                c["backdoor_asr"] = [reference_asr(r["run_dir"]) for r in c["rows"]]
        merged = {
            "machine": machine_info(0),
            "parts": [{"file": str(p), "machine": d["machine"]} for p, d in zip(args.combine, parts, strict=True)],
            "recipe": parts[0]["recipe"],
            "cells": cells,
        }
        merged["seeds"] = sorted({s for d in parts for s in d["seeds"]})
        save_result(args.out, merged)
        attacks = list(dict.fromkeys(c["attack"] for c in cells.values()))
        print_table(cells, attacks, list(dict.fromkeys(c["defence"] for c in cells.values())))
        return
    machine = machine_info(0)
    cells: dict[str, dict[str, Any]] = {}
    for attack in args.attacks:
        for defence in args.defences:
            rows = []
            for seed in args.seeds:
                row = run_one(RECIPE, seed, [*BASE, *ATTACKS[attack], *DEFENCES[defence]], args.output_dir)
                rows.append(row)
                if attack == "none":  # the trigger's rate without any attacker, for reference
                    row["final"]["backdoor_asr"] = reference_asr(row["run_dir"])
                asr = f", backdoor success {row['final']['backdoor_asr']:.4f}" if "backdoor_asr" in row["final"] else ""
                print(f"{attack:10s} {defence:8s} seed {seed}: {row['final']['accuracy']:.4f}{asr}", flush=True)
            accs = [r["final"]["accuracy"] for r in rows]
            cells[f"{attack}/{defence}"] = {
                "attack": attack,
                "defence": defence,
                "accuracy": accs,
                "mean": statistics.mean(accs),
                "sd": statistics.stdev(accs) if len(accs) > 1 else None,
                "backdoor_asr": [r["final"]["backdoor_asr"] for r in rows if "backdoor_asr" in r["final"]],
                "rows": rows,
            }
            save_result(args.out, {"machine": machine, "recipe": str(RECIPE), "seeds": args.seeds, "cells": cells})
    print_table(cells, args.attacks, args.defences)


def reference_asr(run_dir: str) -> float:
    """The backdoor's trigger on a model no attacker touched: the share of the other class's test examples it
    already sends to the target class once triggered (what an attack-success rate is measured against)."""
    from fedpeft.adapters.export import load_saved_adapter
    from fedpeft.config import RunConfig, load_config
    from fedpeft.models import load_model, load_tokenizer
    from fedpeft.runtime.setup import backdoor_success, triggered_examples
    from fedpeft.training.centralized import prepare_task

    run = Path(run_dir)
    cfg = load_config(RunConfig, run / "config.toml", ATTACKS["backdoor"])
    task = prepare_task(cfg, load_tokenizer(cfg.model.name))
    model = load_saved_adapter(load_model(cfg.model.name, cfg.model.dtype, "cpu"), run / "adapter")
    return backdoor_success(model, cfg, task, triggered_examples(cfg, task))


def print_table(cells: dict[str, dict[str, Any]], attacks: list[str], defences: list[str]) -> None:
    print("\n| attack | " + " | ".join(defences) + " |")
    print("|---|" + "---:|" * len(defences))
    for attack in attacks:
        vals = []
        for defence in defences:
            c = cells[f"{attack}/{defence}"]
            asr = f" (ASR {100 * statistics.mean(c['backdoor_asr']):.1f})" if c["backdoor_asr"] else ""
            vals.append(f"{100 * c['mean']:.1f}" + (f" ± {100 * c['sd']:.1f}" if c["sd"] is not None else "") + asr)
        print(f"| {attack} | " + " | ".join(vals) + " |")


if __name__ == "__main__":
    main()
