"""FL-TAC reproduction: FL-TAC vs FedIT (one shared LoRA, FedAvg, the same local compute) vs centralized per-task
LoRA, over seeds.

    python benchmarks/fltac.py [--recipe recipes/fltac_glue.toml] [--seeds 0 1 2] [--model tiny-large]
        [--rounds N] [--steps N] [--methods fltac fedit centralized] [--set key=value ...] --out FILE.json

Settings: ``recipes/fltac_glue.toml`` (SST-2 / QNLI / RTE, accuracy on their held-out test splits) and
``recipes/fltac_dolly.toml`` (Dolly's 8 categories, Rouge-L of generations); rounds, local steps and model default
to the recipe's. Per seed (the job seed: partition, sampling, adapter initialisation, batches):

- FL-TAC as the recipe says: every client trains one adapter per local task for ``steps`` local steps;
- FedIT: the same recipe with ``federation.algorithm = "fedavg"``, one adapter per client trained on all its tasks
  for ``--fedit-steps`` local steps, by default ``steps`` x the number of tasks: at least the local steps FL-TAC
  spends on each client (the same on a client holding every task, more on one holding fewer);
- centralized per-task LoRA: one adapter per task on all of that task's training data, for as many steps as
  FL-TAC spent on that task in the whole run (clients holding it x rounds x steps).

Reported per seed: per-task score, their mean, bytes communicated, FL-TAC's clustering (purity, adjusted Rand index
per round), routing; over seeds: mean +- standard deviation per method and task and the paired difference FL-TAC -
FedIT. Writes ``--out`` (JSON, saved after every run) and a plot beside it (PNG); runs go to runs/bench/.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

import tomllib
import torch

from _machine import machine_info, save_result
from fedpeft.config import JobConfig, RunConfig, from_dict, parse_override
from fedpeft.registry import DATASETS
from fedpeft.reports.stats import paired, spread
from fedpeft.runtime import run_federated
from fedpeft.training.centralized import run_centralized

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["fltac", "fedit", "centralized"]
LABELS = {"fltac": "FL-TAC", "fedit": "FedIT (one LoRA, FedAvg)", "centralized": "centralized per-task LoRA"}


def events(run: Path, kind: str) -> list[dict[str, Any]]:
    return [e for e in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if e["event"] == kind]


def set_key(raw: dict[str, Any], dotted: str, value: Any) -> None:
    *tables, key = dotted.split(".")
    node = raw
    for t in tables:
        node = node.setdefault(t, {})
    node[key] = value


def run_tasks(run: Path) -> list[str]:
    """The job's task names: every task some client holds (from the partition in the setup event)."""
    return sorted({t for part in events(run, "setup")[0]["partition"] for t in part["task_counts"]})


def headline(cfg: RunConfig) -> str:
    """The score reported per task: what FL-TAC's server evaluation scores (``accuracy`` for classification,
    ``rouge_l`` of the generations otherwise)."""
    kinds = {DATASETS.get(name).task_type for name in cfg.data.tasks}
    return "accuracy" if kinds == {"classification"} else "rouge_l"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "fltac_glue.toml")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--rounds", type=int, default=None, help="default: the recipe's")
    ap.add_argument("--steps", type=int, default=None, help="local steps per adapter per round (default: recipe's)")
    ap.add_argument("--fedit-steps", type=int, default=None, help="FedIT's local steps (default: steps x tasks)")
    ap.add_argument("--model", default=None, help="override model.name")
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    ap.add_argument("--output-dir", default=str(ROOT / "runs" / "bench"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe field")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (1: run seeds as parallel processes)")
    ap.add_argument("--combine", nargs="+", type=Path, help="merge these --out files (one per seed) into --out")
    args = ap.parse_args()
    if args.combine:
        return combine(args.combine, args.out)
    torch.set_num_threads(args.threads)

    recipe = args.recipe.resolve()
    raw = tomllib.loads(recipe.read_text())
    raw["output_dir"] = args.output_dir
    for dotted, value in (("federation.rounds", args.rounds), ("train.steps", args.steps), ("model.name", args.model)):
        if value is not None:
            set_key(raw, dotted, value)
    set_key(raw, "federation.client_eval_every", 0)
    for item in args.set:
        keys, value = parse_override(item)
        set_key(raw, ".".join(keys), value)
    cfg0 = from_dict(RunConfig, federated(raw, "fltac"))  # validates the recipe and the overrides before any run
    rounds, steps = cfg0.federation.rounds, cfg0.train.steps
    if "fltac" not in args.methods and args.fedit_steps is None and len(cfg0.data.tasks) < 2:
        # one dataset whose categories are the tasks (Dolly): their number is known from FL-TAC's run
        raise SystemExit("--fedit-steps is needed without fltac in --methods for a dataset of categories")
    setting = {"rounds": rounds, "local_steps": steps, "model": cfg0.model.name, "eval_split": cfg0.data.eval_split}
    name = str(recipe.relative_to(ROOT)) if recipe.is_relative_to(ROOT) else str(recipe)
    result: dict[str, Any] = {"machine": machine_info(args.threads), "recipe": name, "setting": setting}
    result["set"] = args.set
    result.update(metric=headline(cfg0), seeds=args.seeds, runs={})
    metric = result["metric"]

    for seed in args.seeds:
        per: dict[str, Any] = result["runs"].setdefault(str(seed), {})
        seeded = {**copy.deepcopy(raw), "seed": seed}
        if "fltac" in args.methods or "centralized" in args.methods:  # centralized takes its steps from FL-TAC's
            cfg = from_dict(RunConfig, federated(seeded, "fltac"))
            run = run_federated(cfg, quiet=True).path
            result.setdefault("tasks", run_tasks(run))
            per["fltac"] = {**row_of(run, result["tasks"], metric), **fltac_fields(run, cfg, metric)}
            report(seed, "fltac", per["fltac"])
            save_result(args.out, result)
        if "fedit" in args.methods:
            fedit = federated(seeded, "fedavg")
            n_steps = args.fedit_steps or steps * len(result.get("tasks") or cfg0.data.tasks)
            set_key(fedit, "train.steps", n_steps)
            run = run_federated(from_dict(RunConfig, fedit), quiet=True).path
            result.setdefault("tasks", run_tasks(run))
            per["fedit"] = {**row_of(run, result["tasks"], metric), "local_steps": n_steps}
            report(seed, "fedit", per["fedit"])
            save_result(args.out, result)
        if "centralized" in args.methods:
            per["centralized"] = centralized(
                seeded, result["tasks"], per["fltac"]["task_holders"], rounds, steps, metric
            )
            report(seed, "centralized", per["centralized"])
            save_result(args.out, result)
        result["summary"] = summarize_seeds(result)
        save_result(args.out, result)
    plot(result, args.out.with_suffix(".png"))
    print(table(result))


def combine(parts: list[Path], out: Path) -> None:
    """One result from runs of the same recipe and setting made in separate processes (e.g. one seed each, in
    parallel): their runs merged, the summary over all seeds recomputed; each part's machine record is kept."""
    loaded = [json.loads(p.read_text()) for p in parts]
    first = loaded[0]
    for p, r in zip(parts, loaded, strict=True):
        if any(r[k] != first[k] for k in ("recipe", "setting", "set", "metric", "tasks")):
            raise SystemExit(f"--combine: {p} is not the same recipe, setting and overrides as {parts[0]}")
    seeds = [s for r in loaded for s in r["runs"]]
    if len(seeds) != len(set(seeds)):
        raise SystemExit(f"--combine: a seed appears in more than one file ({sorted(seeds)})")
    result = {k: first[k] for k in ("recipe", "setting", "set", "metric", "tasks")}
    result["machine"] = {str(p): r["machine"] for p, r in zip(parts, loaded, strict=True)}
    result["runs"] = {s: per for r in loaded for s, per in r["runs"].items()}
    result["seeds"] = sorted(int(s) for s in result["runs"])
    result["summary"] = summarize_seeds(result)
    save_result(out, result)
    plot(result, out.with_suffix(".png"))
    print(table(result))


def federated(raw: dict[str, Any], algorithm: str) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    out["federation"]["algorithm"] = algorithm
    out["name"] = f"bench-{algorithm}-{raw['name']}"
    if algorithm != "fltac":
        out["algorithm"] = {}
    return out


def row_of(run: Path, tasks: list[str], metric: str) -> dict[str, Any]:
    """One federated run: final per-task scores and mean, bytes, wall time, and the evaluations per round."""
    s = json.loads((run / "summary.json").read_text())
    final = s["final"]
    row: dict[str, Any] = {"run_dir": str(run), "wall_s": s["wall_s"], "bytes_up": s["bytes_up"]}
    row["bytes_down"] = s["bytes_down"]
    row["score"] = {t: final.get(f"{metric}_{t}") for t in tasks}
    row["mean_score"] = final.get(metric)
    row["trainable_params_per_adapter"] = s.get("trainable_params")
    keys = ("round", metric, *(f"{metric}_{t}" for t in tasks), f"{metric}_routed", "routing_accuracy")
    row["per_round"] = [{k: e.get(k) for k in keys if k in e} for e in events(run, "eval")]
    return row


def centralized(
    raw: dict[str, Any], tasks: list[str], holders: dict[str, int], rounds: int, steps: int, metric: str
) -> dict[str, Any]:
    """One LoRA per task on all of that task's training data, for the steps FL-TAC spent on the task."""
    out: dict[str, Any] = {"score": {}, "steps": {}, "run_dirs": {}}
    for t in tasks:
        single = {k: copy.deepcopy(v) for k, v in raw.items() if k not in ("federation", "algorithm", "comm")}
        single["name"] = f"bench-central-{t}"
        if "+" in single["data"]["dataset"]:
            single["data"]["dataset"] = t  # one dataset of the mix
        else:
            single["data"]["task_subset"] = [t]  # one task (category) of the dataset, the same examples
        n = max(1, holders.get(t, raw["federation"]["num_clients"]) * rounds * steps)
        single["train"] = {**single["train"], "steps": n, "schedule": "cosine", "warmup_steps": 10}
        single["train"].pop("balanced_sampling", None)
        run = run_centralized(from_dict(JobConfig, single), quiet=True)
        s = json.loads((run.path / "summary.json").read_text())
        out["score"][t], out["steps"][t], out["run_dirs"][t] = s["final"][metric], n, str(run.path)
    out["mean_score"] = sum(out["score"].values()) / len(tasks)
    return out


def report(seed: int, method: str, row: dict[str, Any]) -> None:
    brief = {k: row[k] for k in ("score", "mean_score", "bytes_up", "wall_s") if k in row}
    print(json.dumps({"seed": seed, method: brief}), flush=True)


def summarize_seeds(result: dict[str, Any]) -> dict[str, Any]:
    """Over the seeds run so far: mean +- sd per method and task, FL-TAC's clustering and routing, and the paired
    difference FL-TAC - FedIT (per task and on the mean)."""
    tasks, runs = result["tasks"], result["runs"]
    seeds = [s for s in map(str, result["seeds"]) if s in runs]
    out: dict[str, Any] = {}
    for m in METHODS:
        rows = [runs[s][m] for s in seeds if m in runs[s]]
        if rows:
            out[m] = {t: spread([r["score"][t] for r in rows]).as_dict() for t in tasks}
            out[m]["mean"] = spread([r["mean_score"] for r in rows]).as_dict()
    both = [s for s in seeds if {"fltac", "fedit"} <= set(runs[s])]
    if both:
        diff: dict[str, Any] = {}
        for t in [*tasks, "mean"]:
            a = [runs[s]["fltac"]["score"][t] if t != "mean" else runs[s]["fltac"]["mean_score"] for s in both]
            b = [runs[s]["fedit"]["score"][t] if t != "mean" else runs[s]["fedit"]["mean_score"] for s in both]
            diff[t] = paired(a, b).as_dict()
        out["fltac_minus_fedit"] = diff
    fl = [runs[s]["fltac"] for s in seeds if "fltac" in runs[s]]
    if fl:
        out["fltac_ari_last_round"] = spread([r["clustering"][-1]["ari"] for r in fl]).as_dict()
        out["fltac_ari_min_over_rounds"] = [min(c["ari"] for c in r["clustering"]) for r in fl]
        routing = [r["final_routing_accuracy"] for r in fl if r["final_routing_accuracy"] is not None]
        if routing:
            out["fltac_routing_accuracy"] = spread(routing).as_dict()
    return out


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
    """Mean +- sd over seeds per method and task (percent for accuracy), uplink per round and local steps."""
    tasks, summary, rounds = result["tasks"], result["summary"], result["setting"]["rounds"]
    scale = 100 if result["metric"] == "accuracy" else 1
    head = f"| method ({result['metric']}, n seeds) | " + " | ".join(tasks) + " | mean | uplink MB per round |"
    lines = [head, "|---|" + "---:|" * (len(tasks) + 2)]
    for m in METHODS:
        if m not in summary:
            continue
        cells = [fmt(summary[m][t], scale) for t in [*tasks, "mean"]]
        first = next(r[m] for r in result["runs"].values() if m in r)
        uplink = f"{first['bytes_up'] / rounds / 1e6:.2f}" if "bytes_up" in first else "-"
        lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + f" | {uplink} |")
    if "fltac_minus_fedit" in summary:
        d = summary["fltac_minus_fedit"]
        cells = [f"{d[t]['diff']['mean'] * scale:+.1f} (p={d[t]['p_value']:.2f})" for t in [*tasks, "mean"]]
        lines.append("| FL-TAC - FedIT, paired | " + " | ".join(cells) + " | |")
    return "\n".join(lines)


def fmt(s: dict[str, Any], scale: float) -> str:
    return f"{s['mean'] * scale:.1f} ± {s['std'] * scale:.1f}" if s["n"] > 1 else f"{s['mean'] * scale:.1f}"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for seed, per in result["runs"].items():
        if "fltac" in per:
            cl = per["fltac"]["clustering"]
            ax1.plot([c["round"] for c in cl], [c["ari"] for c in cl], marker="o", label=f"ARI, seed {seed}")
    ax1.set_ylim(-0.05, 1.05)
    ax1.set_xlabel("round")
    ax1.set_title("FL-TAC clustering vs true tasks")
    ax1.legend()
    tasks, summary = result["tasks"], result["summary"]
    methods = [m for m in METHODS if m in summary]
    width = 0.8 / max(1, len(methods))
    for i, m in enumerate(methods):
        means = [summary[m][t]["mean"] for t in tasks]
        errs = [summary[m][t]["std"] if summary[m][t]["n"] > 1 else 0.0 for t in tasks]
        ax2.bar([j + i * width for j in range(len(tasks))], means, width, yerr=errs, capsize=3, label=LABELS[m])
    many = len(tasks) > 4  # long category names: slanted, each ending under its own bars
    ax2.set_xticks(
        [j + width * (len(methods) - 1) / 2 for j in range(len(tasks))],
        tasks,
        rotation=30 if many else 0,
        ha="right" if many else "center",
    )
    ax2.set_ylabel(result["metric"])
    if result["metric"] == "accuracy":
        ax2.set_ylim(0.4, 1.0)
    ax2.set_title(f"per-task {result['metric']}, mean ± sd over seeds")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
