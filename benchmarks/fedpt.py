"""FedPT against federated LoRA on the large model itself, over seeds, with an alpha sweep and the device budget.

    python benchmarks/fedpt.py [--recipe recipes/fedpt_sst2.toml] --seeds 0 1 2 \
        [--variants fedpt nodistill direct] [--alphas 0.5 1 1.5 2] --out benchmarks/results/fedpt_sst2.json

Per seed, every variant is ``fedpeft run`` of the recipe in its own process (benchmarks/seeds.py), the same clients,
rounds, local steps and learning rate:

- ``fedpt``: the recipe (proxy-tuning + distillation into the small model every round);
- ``nodistill``: ``algorithm.distill = false`` (proxy-tuning only; its small model is plain federated LoRA on the
  small model: ``tests/federated/test_fedpt.py`` checks it equals ``fedavg`` bit for bit);
- ``direct``: federated LoRA (``fedavg``) on the large model itself: the clients hold the large model. The
  reference the proxy is measured against.

Reported per run: the proxy-tuned large model's metric, the small model's, the untuned large model's; the share of
the gap between the untuned large model and ``direct`` that the proxy closes, ``(proxy - large) / (direct -
large)``, paired by seed; the device budget per client (FLOPs, seconds, bytes per round, parameters held and
trained, from ``summary.json``) and the peak resident memory of one client's local round (a fresh process that loads
the client's model with its adapter and runs ``train.steps`` steps; what a device needs). The alpha sweep
re-evaluates each ``nodistill`` and ``fedpt`` run's final adapters (``fedpeft.runtime.generate``) at every
``--alphas`` on ``--sweep-splits`` (choose alpha on dev, report it on test).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import tomli_w
import tomllib
import torch

from _machine import machine_info, save_result
from fedpeft.reports.stats import paired, spread
from seeds import run_one  # benchmarks/ is on sys.path

ROOT = Path(__file__).resolve().parents[1]
LABELS = {
    "fedpt": "FedPT (proxy + distillation)",
    "nodistill": "FedPT without distillation",
    "direct": "federated LoRA on the large model",
}


def direct_recipe(recipe: Path, folder: Path) -> Path:
    """The recipe with the clients on the large model and plain FedAvg (no server models, no [algorithm])."""
    raw = tomllib.loads(recipe.read_text())
    large = raw["server"]["models"][raw.get("algorithm", {}).get("large", "large")]
    raw.pop("server")
    raw.pop("algorithm", None)
    raw["model"] = {**raw["model"], "name": large}
    raw["federation"] = {**raw["federation"], "algorithm": "fedavg"}
    raw["name"] = f"{raw.get('name', 'fedpt')}-direct"
    out = folder / f"{recipe.stem}_direct.toml"
    out.write_text(tomli_w.dumps(raw))
    return out


def shared_overrides(items: list[str], variant: str) -> list[str]:
    """``--set`` items for ``variant``: FedPT's own tables (``algorithm.``, ``server.``) do not apply to ``direct``."""
    if variant != "direct":
        return items
    return [i for i in items if not i.startswith(("algorithm.", "server."))]


MEMORY_PROBE = """
import json, resource, sys, torch
from fedpeft.config import RunConfig, load_config
from fedpeft.runtime.setup import build_federated_data, build_model
from fedpeft.training.loop import train
cfg = load_config(RunConfig, sys.argv[1], sys.argv[2:])
torch.set_num_threads(1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
model, tok = build_model(cfg)
data = build_federated_data(cfg, tok).clients[0]
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
train(model, data.train, cfg.train, data.collate, word_ids=data.word_ids)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"rss_start_kb": before, "rss_loaded_kb": loaded, "rss_peak_kb": peak}))
"""


def client_memory(recipe: Path, overrides: list[str]) -> dict[str, Any]:
    """Peak resident memory (KiB) of a fresh process that does one client's local round of ``recipe``."""
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(recipe), *overrides], check=True, capture_output=True, text=True
    )
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    probe["round_kb"] = probe["rss_peak_kb"] - probe["rss_start_kb"]  # model, adapter, optimizer, activations
    return probe


def measure(row: dict[str, Any], metric: str) -> dict[str, Any]:
    """The FedPT figures of one run, from its run directory."""
    run = Path(row["run_dir"])
    summary = json.loads((run / "summary.json").read_text())
    final, budget = summary["final"], summary.get("device_budget", {})
    rounds = summary.get("rounds") or len([e for e in row["evals"] if e["round"] > 0])
    mean = budget.get("mean", {})
    return {
        "metric": metric,
        "proxy" if "large_" + metric in final else "model": final[metric],
        **(
            {"small": final[f"small_{metric}"], "large": final[f"large_{metric}"]} if f"large_{metric}" in final else {}
        ),
        "before": summary["initial"][metric],
        "device": {
            "flops_per_round": mean.get("flops_per_round"),
            "seconds_per_round": mean.get("seconds_per_round"),
            "bytes_per_round": (mean.get("bytes_up", 0) + mean.get("bytes_down", 0)) / max(1, mean.get("rounds", 1)),
            "params_held": mean.get("params_held"),
            "trainable_params": mean.get("trainable_params"),
        },
        "rounds": rounds,
    }


def sweep(run_dir: str, alphas: list[float], splits: list[str]) -> dict[str, dict[str, float]]:
    """The proxy's metric at each alpha on each split, from a finished run's adapters (no retraining)."""
    from fedpeft.config import RunConfig, load_config
    from fedpeft.runtime.generate import load_generator
    from fedpeft.training.centralized import evaluate_task, metric_name, prepare_task

    cfg0 = load_config(RunConfig, Path(run_dir) / "config.toml")
    out: dict[str, dict[str, float]] = {}
    for split in splits:
        # only the eval split matters here; the server's prompts are moved off it so that the config validates
        held = cfg0.server.data.split if cfg0.server.data is not None else ""
        moved = [f"server.data.split={'dev' if split != 'dev' else 'test'}"] if held == split else []
        cfg = load_config(RunConfig, Path(run_dir) / "config.toml", [f"data.eval_split={split}", *moved])
        task = None
        for a in alphas:
            gen = load_generator(run_dir, "proxy", alpha=a)
            task = task or prepare_task(cfg, gen.tokenizer)
            metrics = evaluate_task(gen.model, task, cfg0.eval.batch_size, cfg0.eval.max_new_tokens)
            out.setdefault(split, {})[str(a)] = metrics[metric_name(task)]
    return out


def summarize(result: dict[str, Any]) -> None:
    variants = result["variants"]
    direct = {r["seed"]: r["fedpt"]["model"] for r in variants.get("direct", {}).get("rows", [])}
    for name, block in variants.items():
        rows = block["rows"]
        s: dict[str, Any] = {"seeds": [r["seed"] for r in rows]}
        for key in ("proxy", "small", "large", "model", "before"):
            values = [r["fedpt"][key] for r in rows if key in r["fedpt"]]
            if values:
                s[key] = spread(values).as_dict()
        for key in ("flops_per_round", "seconds_per_round", "bytes_per_round", "params_held", "trainable_params"):
            values = [r["fedpt"]["device"][key] for r in rows if r["fedpt"]["device"].get(key) is not None]
            if values:
                s[key] = spread(values).as_dict()
        if name != "direct" and direct:
            gaps = [
                (r["fedpt"]["proxy"] - r["fedpt"]["large"]) / (direct[r["seed"]] - r["fedpt"]["large"])
                for r in rows
                if r["seed"] in direct and direct[r["seed"]] != r["fedpt"]["large"]
            ]
            if gaps:
                s["gap_closed"] = spread(gaps).as_dict()
            both = [r for r in rows if r["seed"] in direct]
            if len(both) >= 2:
                s["proxy_minus_direct"] = paired(
                    [r["fedpt"]["proxy"] for r in both], [direct[r["seed"]] for r in both]
                ).as_dict()
                s["proxy_minus_small"] = paired(
                    [r["fedpt"]["proxy"] for r in both], [r["fedpt"]["small"] for r in both]
                ).as_dict()
        sweeps = [r["sweep"] for r in rows if "sweep" in r]
        if sweeps:
            s["alpha_sweep"] = {
                split: {a: spread([sw[split][a] for sw in sweeps]).as_dict() for a in sweeps[0][split]}
                for split in sweeps[0]
            }
        block["summary"] = s


def fmt(s: dict[str, Any], key: str, scale: float = 100.0, digits: int = 1) -> str:
    if key not in s:
        return "-"
    m, sd = s[key]["mean"] * scale, s[key].get("std")
    return f"{m:.{digits}f}" + (f" ± {sd * scale:.{digits}f}" if sd is not None and sd == sd else "")  # NaN: one seed


def table(result: dict[str, Any]) -> str:
    lines = [
        "| variant | seeds | proxy-tuned large | small | untuned large | direct (large) | gap closed |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    v = result["variants"]
    for name, block in v.items():
        s = block["summary"]
        lines.append(
            f"| {LABELS[name]} | {len(s['seeds'])} | {fmt(s, 'proxy')} | {fmt(s, 'small')} | {fmt(s, 'large')} | "
            f"{fmt(s, 'model') if name == 'direct' else '-'} | {fmt(s, 'gap_closed')} |"
        )
    lines += ["", "| variant | device params held | trained | FLOPs / round | bytes / round | peak RSS (process) |",
              "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for name, block in v.items():
        s, mem = block["summary"], block.get("client_memory", {})
        lines.append(
            f"| {LABELS[name]} | {fmt(s, 'params_held', 1e-6, 2)} M | {fmt(s, 'trainable_params', 1e-3, 1)} k | "
            f"{fmt(s, 'flops_per_round', 1e-9, 1)} G | {fmt(s, 'bytes_per_round', 1e-3, 0)} kB | "
            f"{mem.get('rss_peak_kb', 0) / 1024:.0f} MiB |"
        )
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    v = result["variants"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    bars, values, errs = [], [], []
    first = next(iter(v.values()))["summary"]
    for label, s, key in [("untuned large", first, "large")] + [
        (LABELS[n] if n != "nodistill" else "small (FedAvg)", v[n]["summary"], "small") for n in v if n == "nodistill"
    ] + [(LABELS[n], v[n]["summary"], "proxy") for n in v if n != "direct"] + [
        (LABELS["direct"], v["direct"]["summary"], "model") for _ in [0] if "direct" in v
    ]:  # fmt: skip
        if key in s:
            bars.append(label)
            values.append(100 * s[key]["mean"])
            errs.append(100 * (s[key].get("std") or 0.0))
    ax1.barh(bars, values, xerr=errs, capsize=3)
    ax1.set_xlabel(f"{result.get('metric', 'metric')} (%), mean ± sd over seeds")
    ax1.set_xlim(left=min(values) - 5 if values else 0)
    for name in ("nodistill", "fedpt"):
        sw = v.get(name, {}).get("summary", {}).get("alpha_sweep", {})
        for split, points in sw.items():
            alphas = sorted(points, key=float)
            ax2.plot([float(a) for a in alphas], [100 * points[a]["mean"] for a in alphas], marker="o",
                     label=f"{LABELS[name]}, {split}")  # fmt: skip
    ax2.set_xlabel("alpha")
    ax2.set_ylabel("proxy-tuned large (%)")
    ax2.set_title("alpha sweep (final adapters, no retraining)")
    if ax2.lines:
        ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "fedpt_sst2.toml")
    ap.add_argument("--variants", nargs="+", choices=list(LABELS), default=list(LABELS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--alphas", nargs="*", type=float, default=[0.5, 1.0, 1.5, 2.0])
    ap.add_argument("--sweep-splits", nargs="*", default=["dev", "test"])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every variant")
    ap.add_argument("--output-dir", default=str(ROOT / "runs" / "bench"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--combine", nargs="+", type=Path, help="merge these result files (same recipe) instead")
    args = ap.parse_args()

    if args.combine:
        parts = [json.loads(p.read_text()) for p in args.combine]
        result = {**parts[0], "combined_from": [str(p) for p in args.combine], "variants": {}}
        for part in parts:
            for name, block in part["variants"].items():
                merged = result["variants"].setdefault(name, {k: v for k, v in block.items() if k != "rows"})
                merged.setdefault("rows", []).extend(block["rows"])
        summarize(result)
        result["table"] = table(result)
        save_result(args.out, result)
        plot(result, args.out.with_suffix(".png"))
        print(result["table"])
        return

    recipe = args.recipe.resolve()
    folder = Path(tempfile.mkdtemp(prefix="fedpt-bench-"))
    direct = direct_recipe(recipe, folder)
    plans = {"fedpt": (recipe, []), "nodistill": (recipe, ["algorithm.distill=false"]), "direct": (direct, [])}
    result: dict[str, Any] = {
        "machine": machine_info(torch.get_num_threads()),
        "recipe": str(recipe.relative_to(ROOT)) if recipe.is_relative_to(ROOT) else str(recipe),
        "overrides": args.set,
        "variants": {},
    }
    for name in args.variants:
        path, extra = plans[name]
        result["variants"][name] = {"recipe_overrides": extra, "rows": []}
        if name == "direct":
            result["variants"][name]["direct_recipe"] = tomllib.loads(path.read_text())
    for seed in args.seeds:
        for name in args.variants:
            path, extra = plans[name]
            row = run_one(path, seed, [*shared_overrides(args.set, name), *extra], args.output_dir)
            metric = "accuracy" if "accuracy" in row["final"] else "rouge_l"
            result["metric"] = metric
            row["fedpt"] = measure(row, metric)
            if name != "direct" and args.alphas:
                row["sweep"] = sweep(row["run_dir"], args.alphas, args.sweep_splits)
            result["variants"][name]["rows"].append(row)
            print(f"seed {seed} {name}: {json.dumps(row['fedpt'])}", flush=True)
            save_result(args.out, result)
    for name in args.variants:  # what one client's device needs for a round (small model vs the large one)
        path, extra = plans[name]
        result["variants"][name]["client_memory"] = client_memory(path, [*shared_overrides(args.set, name), *extra])
    summarize(result)
    result["table"] = table(result)
    save_result(args.out, result)
    plot(result, args.out.with_suffix(".png"))
    print(result["table"])


if __name__ == "__main__":
    main()
