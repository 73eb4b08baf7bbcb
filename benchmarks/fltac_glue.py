"""FL-TAC reproduction: FL-TAC vs FedIT (one shared LoRA, FedAvg) vs centralized per-task LoRA on SST-2 / QNLI / RTE.

    python benchmarks/fltac_glue.py [--rounds 10] [--steps 5] [--set key=value ...]

Setting (recipes/fltac_glue.toml): 10 clients, each task split over the clients by Dirichlet(0.5), the larger bundled
model (tiny-large), LoRA r=8 on every linear layer, label-word loss. FedIT is the same recipe with
``federation.algorithm = "fedavg"``: one adapter per client trained on all its tasks for the same local steps.
Centralized per-task LoRA trains one adapter per task on all of that task's training data for as many steps as
FL-TAC spent on that task over the whole run (clients holding it x rounds x local steps).

Reported: per-task dev accuracy, their mean, trainable parameters per client, parameters and bytes communicated,
and FL-TAC's clustering (purity, adjusted Rand index) per round. Writes benchmarks/results/fltac_glue.json and
benchmarks/results/fltac_glue.png; runs go to runs/bench/.
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
from fedpeft.runtime import run_federated
from fedpeft.training.centralized import run_centralized

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "fltac_glue.toml"


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
    out["name"] = f"bench-{algorithm}-glue"
    if algorithm != "fltac":
        out["algorithm"] = {}
    return out


def summarize(run: Path, tasks: list[str]) -> dict[str, Any]:
    s = json.loads((run / "summary.json").read_text())
    final = s["final"]
    row: dict[str, Any] = {"run_dir": str(run), "wall_s": s["wall_s"], "bytes_up": s["bytes_up"]}
    row["bytes_down"] = s["bytes_down"]
    row["accuracy"] = {t: final.get(f"accuracy_{t}") for t in tasks}
    row["mean_accuracy"] = final.get("accuracy")
    row["trainable_params_per_adapter"] = s.get("trainable_params")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=5, help="local steps per adapter per round")
    ap.add_argument("--model", default=None, help="override model.name (default: the recipe's tiny-large)")
    ap.add_argument("--methods", nargs="+", default=["fltac", "fedavg", "centralized"])
    ap.add_argument("--output-dir", default=str(ROOT / "runs" / "bench"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fltac_glue.json"))
    ap.add_argument("--resume-fltac", type=Path, help="continue (or reuse, if finished) this FL-TAC run directory")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe field")
    args = ap.parse_args()
    torch.set_num_threads(2)

    raw = tomllib.loads(RECIPE.read_text())
    raw["output_dir"] = args.output_dir
    set_key(raw, "federation.rounds", args.rounds)
    set_key(raw, "train.steps", args.steps)
    set_key(raw, "federation.eval_every", 1)  # per-task accuracy every round
    set_key(raw, "federation.client_eval_every", 0)
    if args.model:
        set_key(raw, "model.name", args.model)
    for item in args.set:
        keys, value = parse_override(item)
        set_key(raw, ".".join(keys), value)
    tasks = [t.strip() for t in raw["data"]["dataset"].split("+")]
    result: dict[str, Any] = {"machine": machine_info(2), "recipe": str(RECIPE.relative_to(ROOT)), "tasks": tasks}
    result["setting"] = {
        "rounds": args.rounds,
        "local_steps": args.steps,
        "model": raw["model"]["name"],
        "set": args.set,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        out.write_text(json.dumps(result, indent=2) + "\n")

    holders: dict[str, int] = {}
    for method in [m for m in args.methods if m != "centralized"]:
        cfg = from_dict(RunConfig, federated(raw, method))
        if method == "fltac" and args.resume_fltac is not None:
            done = (args.resume_fltac / "summary.json").is_file()
            run = args.resume_fltac if done else run_federated(resume=args.resume_fltac, quiet=True).path
        else:
            run = run_federated(cfg, quiet=True).path
        row = summarize(run, tasks)
        row["per_round"] = [
            {k: e.get(k) for k in ("round", "accuracy", *(f"accuracy_{t}" for t in tasks), "routing_accuracy")}
            for e in events(run, "eval")
        ]
        if method == "fltac":
            rounds = events(run, "round")
            row["clustering"] = [
                {"round": r["round"], "purity": r["purity"], "ari": r["ari"], "sizes": r["cluster_sizes"]}
                for r in rounds
            ]
            slots = {e["client"]: e["num_tasks"] for e in events(run, "client_tasks")}
            row["adapters_per_client"] = slots
            row["final_routing_accuracy"] = events(run, "eval")[-1].get("routing_accuracy")
            row["final_accuracy_routed"] = events(run, "eval")[-1].get("accuracy_routed")
            owner = json.loads((run / "adapter" / "tasks.json").read_text())["task_adapters_measured"]
            row["task_adapters"] = owner
            # clients holding each task (for the centralized step budget), from the partition in the setup event
            setup = events(run, "setup")[0]
            for part in setup["partition"]:
                for t, n in part["task_counts"].items():
                    if n >= cfg.algorithm.min_task_examples:
                        holders[t] = holders.get(t, 0) + 1
        result[method] = row
        print(json.dumps({method: {k: row[k] for k in ("accuracy", "mean_accuracy", "bytes_up", "wall_s")}}))
        save()

    if "centralized" in args.methods:
        rows: dict[str, Any] = {}
        for t in tasks:
            single = {k: copy.deepcopy(v) for k, v in raw.items() if k not in ("federation", "algorithm", "comm")}
            single["name"] = f"bench-central-{t}"
            single["data"]["dataset"] = t
            steps = max(1, holders.get(t, raw["federation"]["num_clients"]) * args.rounds * args.steps)
            single["train"] = {**single["train"], "steps": steps, "schedule": "cosine", "warmup_steps": 10}
            single["train"].pop("balanced_sampling", None)
            run = run_centralized(from_dict(JobConfig, single), quiet=True)
            s = json.loads((run.path / "summary.json").read_text())
            rows[t] = {"accuracy": s["final"]["accuracy"], "steps": steps, "run_dir": str(run.path)}
            print(json.dumps({"centralized": {t: rows[t]}}), flush=True)
        result["centralized"] = rows
        save()
    plot(result, out.with_suffix(".png"))
    print(table(result))


def table(result: dict[str, Any]) -> str:
    tasks = result["tasks"]
    head = "| method | " + " | ".join(tasks) + " | mean | uplink MB per round |"
    lines = [head, "|---|" + "---:|" * (len(tasks) + 2)]
    rounds = result["setting"]["rounds"]
    for method, label in (("fedavg", "FedIT (one LoRA, FedAvg)"), ("fltac", "FL-TAC")):
        if method in result:
            r = result[method]
            accs = " | ".join(f"{r['accuracy'][t]:.3f}" for t in tasks)
            lines.append(f"| {label} | {accs} | {r['mean_accuracy']:.3f} | {r['bytes_up'] / rounds / 1e6:.2f} |")
    if "centralized" in result:
        c = result["centralized"]
        accs = " | ".join(f"{c[t]['accuracy']:.3f}" for t in tasks)
        mean = sum(c[t]["accuracy"] for t in tasks) / len(tasks)
        lines.append(f"| centralized per-task LoRA | {accs} | {mean:.3f} | - |")
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
        ax2.bar([j + i * width for j in range(len(tasks))], [result[m]["accuracy"][t] for t in tasks], width, label=lab)
    if "centralized" in result:
        i = len(methods)
        vals = [result["centralized"][t]["accuracy"] for t in tasks]
        ax2.bar([j + i * width for j in range(len(tasks))], vals, width, label="centralized per task")
    ax2.set_xticks([j + width * len(methods) / 2 for j in range(len(tasks))], tasks)
    ax2.set_ylabel("dev accuracy")
    ax2.set_ylim(0.4, 1.0)
    ax2.set_title("per-task accuracy")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
