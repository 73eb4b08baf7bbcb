"""FL-TAC reproduction: FL-TAC vs FedIT (one shared LoRA, FedAvg) vs centralized per-task LoRA.

    python benchmarks/fltac.py [--recipe recipes/fltac_glue.toml] [--rounds 10] [--steps 5] [--set key=value ...]

Settings: ``recipes/fltac_glue.toml`` (SST-2 / QNLI / RTE, accuracy) and ``recipes/fltac_dolly.toml`` (Dolly's 8
categories, Rouge-L of generations): 10 clients, each task split over the clients by Dirichlet(0.5), the larger
bundled model (tiny-large). FedIT is the same recipe with ``federation.algorithm = "fedavg"``: one adapter per
client trained on all its tasks for the same local steps. Centralized per-task LoRA trains one adapter per task on
all of that task's training data for as many steps as FL-TAC spent on that task over the whole run (clients
holding it x rounds x local steps).

Reported: per-task score, their mean, trainable parameters per adapter, bytes communicated, and FL-TAC's
clustering (purity, adjusted Rand index) per round. ``--merge`` keeps the rows of methods not rerun from an earlier
``--out`` of the same recipe, model, rounds and steps (each row records its own ``--set`` overrides). Writes
``--out`` (JSON) and a plot beside it (PNG); runs go to runs/bench/.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

import tomllib
import torch

from _machine import machine_info
from fedpeft.config import JobConfig, RunConfig, from_dict, parse_override
from fedpeft.fileio import atomic_write_text
from fedpeft.registry import DATASETS
from fedpeft.runtime import run_federated
from fedpeft.training.centralized import run_centralized

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["fltac", "fedavg", "centralized"]


def events(run: Path, kind: str) -> list[dict[str, Any]]:
    return [e for e in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if e["event"] == kind]


def set_key(raw: dict[str, Any], dotted: str, value: Any) -> None:
    *tables, key = dotted.split(".")
    node = raw
    for t in tables:
        node = node.setdefault(t, {})
    node[key] = value


def federated(raw: dict[str, Any], algorithm: str) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    out["federation"]["algorithm"] = algorithm
    out["name"] = f"bench-{algorithm}-{raw['name']}"
    if algorithm != "fltac":
        out["algorithm"] = {}
    return out


def run_tasks(run: Path) -> list[str]:
    """The job's task names: every task some client holds (from the partition in the setup event)."""
    return sorted({t for part in events(run, "setup")[0]["partition"] for t in part["task_counts"]})


def headline(cfg: RunConfig) -> str:
    """The score reported per task: what FL-TAC's server evaluation scores (``accuracy`` for classification,
    ``rouge_l`` of the generations otherwise)."""
    kinds = {DATASETS.get(name).task_type for name in cfg.data.tasks}
    return "accuracy" if kinds == {"classification"} else "rouge_l"


def summarize(run: Path, tasks: list[str], metric: str) -> dict[str, Any]:
    s = json.loads((run / "summary.json").read_text())
    final = s["final"]
    row: dict[str, Any] = {"run_dir": str(run), "wall_s": s["wall_s"], "bytes_up": s["bytes_up"]}
    row["bytes_down"] = s["bytes_down"]
    row["score"] = {t: final.get(f"{metric}_{t}") for t in tasks}
    row["mean_score"] = final.get(metric)
    row["trainable_params_per_adapter"] = s.get("trainable_params")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "fltac_glue.toml")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=5, help="local steps per adapter per round")
    ap.add_argument("--model", default=None, help="override model.name (default: the recipe's tiny-large)")
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    ap.add_argument("--output-dir", default=str(ROOT / "runs" / "bench"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fltac_glue.json")
    ap.add_argument("--merge", action="store_true", help="keep the other methods' rows of an existing --out")
    ap.add_argument("--resume-fltac", type=Path, help="continue (or reuse, if finished) this FL-TAC run directory")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe field")
    args = ap.parse_args()
    torch.set_num_threads(2)

    recipe = args.recipe.resolve()
    raw = tomllib.loads(recipe.read_text())
    raw["output_dir"] = args.output_dir
    set_key(raw, "federation.rounds", args.rounds)
    set_key(raw, "train.steps", args.steps)
    set_key(raw, "federation.eval_every", 1)  # per-task scores every round (--set federation.eval_every=N: fewer)
    set_key(raw, "federation.client_eval_every", 0)
    if args.model:
        set_key(raw, "model.name", args.model)
    for item in args.set:
        keys, value = parse_override(item)
        set_key(raw, ".".join(keys), value)
    setting = {"rounds": args.rounds, "local_steps": args.steps, "model": raw["model"]["name"]}
    name = str(recipe.relative_to(ROOT)) if recipe.is_relative_to(ROOT) else str(recipe)
    # the score per task follows from the recipe's data alone: the same for every method and every --merge
    metric = headline(from_dict(RunConfig, federated(raw, "fltac")))
    result: dict[str, Any] = {"machine": machine_info(2), "recipe": name, "setting": setting, "metric": metric}
    out: Path = args.out
    if args.merge and out.is_file():
        old = json.loads(out.read_text())
        same = old["recipe"] == name and all(old["setting"].get(k) == v for k, v in setting.items())
        if not same:
            raise SystemExit(f"--merge: {out} has recipe {old['recipe']} and setting {old['setting']}, not {setting}")
        result.update({m: old[m] for m in METHODS if m in old and m not in args.methods})
        result["tasks"] = old["tasks"]

    def save() -> None:
        atomic_write_text(out, json.dumps(result, indent=2) + "\n")

    for method in [m for m in args.methods if m != "centralized"]:
        cfg = from_dict(RunConfig, federated(raw, method))
        if method == "fltac" and args.resume_fltac is not None:
            done = (args.resume_fltac / "summary.json").is_file()
            run = args.resume_fltac if done else run_federated(resume=args.resume_fltac, quiet=True).path
        else:
            run = run_federated(cfg, quiet=True).path
        if "tasks" not in result:
            result["tasks"] = run_tasks(run)
        tasks = result["tasks"]
        row = summarize(run, tasks, metric)
        row["set"] = args.set
        keys = ("round", metric, *(f"{metric}_{t}" for t in tasks), f"{metric}_routed", "routing_accuracy")
        row["per_round"] = [{k: e.get(k) for k in keys if k in e} for e in events(run, "eval")]
        if method == "fltac":
            row.update(fltac_fields(run, cfg, metric))
        result[method] = row
        print(json.dumps({method: {k: row[k] for k in ("score", "mean_score", "bytes_up", "wall_s")}}), flush=True)
        save()

    if "centralized" in args.methods:
        if "fltac" not in result:
            raise SystemExit("centralized needs FL-TAC's row (its steps per task): add fltac to --methods or --merge")
        holders = result["fltac"]["task_holders"]
        rows: dict[str, Any] = {}
        for t in result["tasks"]:
            single = {k: copy.deepcopy(v) for k, v in raw.items() if k not in ("federation", "algorithm", "comm")}
            single["name"] = f"bench-central-{t}"
            if "+" in single["data"]["dataset"]:
                single["data"]["dataset"] = t  # one dataset of the mix
            else:
                single["data"]["task_subset"] = [t]  # one task (category) of the dataset, the same examples
            steps = max(1, holders.get(t, raw["federation"]["num_clients"]) * args.rounds * args.steps)
            single["train"] = {**single["train"], "steps": steps, "schedule": "cosine", "warmup_steps": 10}
            single["train"].pop("balanced_sampling", None)
            run = run_centralized(from_dict(JobConfig, single), quiet=True)
            s = json.loads((run.path / "summary.json").read_text())
            rows[t] = {"score": s["final"][metric], "steps": steps, "run_dir": str(run.path)}
            print(json.dumps({"centralized": {t: rows[t]}}), flush=True)
        result["centralized"] = {"set": args.set, "tasks": rows}
        save()
    plot(result, out.with_suffix(".png"))
    print(table(result))


def fltac_fields(run: Path, cfg: RunConfig, metric: str) -> dict[str, Any]:
    """FL-TAC's clustering per round, adapters per client, routing, and the clients training each task."""
    last = events(run, "eval")[-1]
    holders: dict[str, int] = {}
    for part in events(run, "setup")[0]["partition"]:
        for t, n in part["task_counts"].items():
            if n >= cfg.algorithm.min_task_examples:
                holders[t] = holders.get(t, 0) + 1
    return {
        "clustering": [
            {"round": r["round"], "purity": r["purity"], "ari": r["ari"], "sizes": r["cluster_sizes"]}
            for r in events(run, "round")
        ],
        "adapters_per_client": {e["client"]: e["num_tasks"] for e in events(run, "client_tasks")},
        "final_routing_accuracy": last.get("routing_accuracy"),
        "final_score_routed": last.get(f"{metric}_routed"),
        "task_adapters": json.loads((run / "adapter" / "tasks.json").read_text())["task_adapters_measured"],
        "task_holders": holders,
    }


def table(result: dict[str, Any]) -> str:
    tasks, metric = result["tasks"], result["metric"]
    head = f"| method ({metric}) | " + " | ".join(tasks) + " | mean | uplink MB per round |"
    lines = [head, "|---|" + "---:|" * (len(tasks) + 2)]
    rounds = result["setting"]["rounds"]
    for method, label in (("fedavg", "FedIT (one LoRA, FedAvg)"), ("fltac", "FL-TAC")):
        if method in result:
            r = result[method]
            scores = " | ".join(f"{r['score'][t]:.3f}" for t in tasks)
            lines.append(f"| {label} | {scores} | {r['mean_score']:.3f} | {r['bytes_up'] / rounds / 1e6:.2f} |")
    if "centralized" in result:
        c = result["centralized"]["tasks"]
        scores = " | ".join(f"{c[t]['score']:.3f}" for t in tasks)
        mean = sum(c[t]["score"] for t in tasks) / len(tasks)
        lines.append(f"| centralized per-task LoRA | {scores} | {mean:.3f} | - |")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    if "fltac" in result:
        cl = result["fltac"]["clustering"]
        ax1.plot([c["round"] for c in cl], [c["ari"] for c in cl], marker="o", label="adjusted Rand index")
        ax1.plot([c["round"] for c in cl], [c["purity"] for c in cl], marker="s", label="purity")
        ax1.set_ylim(-0.05, 1.05)
        ax1.set_xlabel("round")
        ax1.set_title("FL-TAC clustering vs true tasks")
        ax1.legend()
    tasks = result["tasks"]
    methods = [(m, lab) for m, lab in (("fedavg", "FedIT"), ("fltac", "FL-TAC")) if m in result]
    width = 0.8 / max(1, len(methods) + ("centralized" in result))
    for i, (m, lab) in enumerate(methods):
        ax2.bar([j + i * width for j in range(len(tasks))], [result[m]["score"][t] for t in tasks], width, label=lab)
    if "centralized" in result:
        i = len(methods)
        vals = [result["centralized"]["tasks"][t]["score"] for t in tasks]
        ax2.bar([j + i * width for j in range(len(tasks))], vals, width, label="centralized per task")
    many = len(tasks) > 4  # long category names: slanted, each ending under its own bars
    ax2.set_xticks(
        [j + width * len(methods) / 2 for j in range(len(tasks))],
        tasks,
        rotation=30 if many else 0,
        ha="right" if many else "center",
    )
    ax2.set_ylabel(result["metric"])
    if result["metric"] == "accuracy":
        ax2.set_ylim(0.4, 1.0)
    ax2.set_title(f"per-task {result['metric']}")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
