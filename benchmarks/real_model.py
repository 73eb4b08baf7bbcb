"""FedIT (federated LoRA, FedAvg) on a real instruction model, SmolLM2-135M-Instruct, on this machine.

    python benchmarks/real_model.py [--settings ni dolly] [--seeds 0 1 2] [--set key=value ...]

Settings (the shipped recipes, unchanged unless ``--set``):

- ``ni``: ``recipes/fedit_ni_smollm2.toml``: Natural Instructions, ten seen tasks, one per client. Scored with
  Rouge-L of greedy generations on the seen tasks' held-back instances (split ``test``, by the server every
  evaluation) and, after the run, on the six held-out tasks (split ``unseen``, first 20 instances each).
- ``dolly``: ``recipes/fedit_dolly_smollm2.toml``: Dolly-15K, categories over 10 clients by Dirichlet(0.5),
  Rouge-L per category on our held-out test split.

"Before" is the untuned model (the run's round-0 evaluation; greedy, so the same for every seed); "after" is the
final global adapter. Each (setting, seed) runs in its own process so its peak resident memory (``ru_maxrss``) is
its own; time per round and per client step are read from the run's events. Writes ``--out`` (JSON) with the
command, machine, per-seed rows and mean / standard deviation over seeds.

Nothing is tuned: the learning rate, rounds and steps in the recipes were fixed before any run, so the test
splits are not used for selection.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import tomllib
import torch

from _machine import machine_info, save_result
from fedpeft.config import JobConfig, RunConfig, from_dict, parse_override
from fedpeft.fileio import atomic_write_text
from fedpeft.reports.stats import spread
from fltac import events, set_key  # benchmarks/ is on sys.path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"ni": ROOT / "recipes" / "fedit_ni_smollm2.toml", "dolly": ROOT / "recipes" / "fedit_dolly_smollm2.toml"}
UNSEEN_PER_TASK = 20  # first instances of each held-out NI task scored after the run


def rouge_by_task(metrics: dict[str, Any]) -> dict[str, float]:
    """``rouge_l_<task>`` entries of an eval event, keyed by task (the mean stays under ``rouge_l``)."""
    return {k.removeprefix("rouge_l_"): v for k, v in metrics.items() if k.startswith("rouge_l_")}


def unseen_scores(cfg: RunConfig, adapter: Path, base_too: bool) -> dict[str, Any]:
    """Rouge-L on Natural Instructions' held-out tasks with the run's ``adapter`` (``"after"``) and, with
    ``base_too``, of the untuned model first (``"before"``): one model load and one encoding for both."""
    from fedpeft.adapters import load_saved_adapter
    from fedpeft.models import load_model, load_tokenizer
    from fedpeft.training.centralized import evaluate_task, prepare_task

    job = from_dict(
        JobConfig,
        {
            "seed": cfg.seed,
            "model": {"name": cfg.model.name},
            "data": {
                "dataset": "natural_instructions",
                "data_dir": cfg.data.data_dir,
                "train_split": "test",  # unused here; the smallest split
                "eval_split": "unseen",
                "max_length": cfg.data.max_length,
                "options": {"max_instances_per_task": UNSEEN_PER_TASK},
            },
        },
    )
    task = prepare_task(job, load_tokenizer(cfg.model.name))
    model = load_model(cfg.model.name)

    def score() -> dict[str, Any]:
        metrics = evaluate_task(model, task, cfg.eval.batch_size, cfg.eval.max_new_tokens)
        return {"rouge_l": metrics["rouge_l"], "by_task": rouge_by_task(metrics), "examples": len(task.eval)}

    out = {"before": score()} if base_too else {}
    model = load_saved_adapter(model, adapter)
    out["after"] = score()
    return out


def worker(setting: str, seed: int, overrides: list[str], base_unseen: bool, out: Path, output_dir: str) -> None:
    """One (setting, seed): the federated run, then (NI) the held-out tasks; writes one JSON row to ``out``."""
    from fedpeft.runtime import run_federated

    torch.set_num_threads(2)
    raw = tomllib.loads(RECIPES[setting].read_text())
    raw["seed"] = seed
    raw["output_dir"] = output_dir
    raw["name"] = f"bench-{raw['name']}-s{seed}"
    for item in overrides:
        keys, value = parse_override(item)
        set_key(raw, ".".join(keys), value)
    cfg = from_dict(RunConfig, raw)
    start = time.perf_counter()
    run = Path(run_federated(cfg, quiet=True).path)
    train_wall = time.perf_counter() - start
    peak_run = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB: the federated run alone
    evals = {e["round"]: e for e in events(run, "eval")}
    rounds = events(run, "round")
    clients = events(run, "client_train")
    row: dict[str, Any] = {
        "setting": setting,
        "seed": seed,
        "run_dir": str(run),
        "run_wall_s": round(train_wall, 1),
        "before": {"rouge_l": evals[0]["rouge_l"], "by_task": rouge_by_task(evals[0])},
        "after": {"rouge_l": evals[max(evals)]["rouge_l"], "by_task": rouge_by_task(evals[max(evals)])},
        "seconds_per_round": statistics.mean(r["seconds"] for r in rounds),
        "seconds_per_client_step": sum(c["seconds"] for c in clients) / sum(c["steps"] for c in clients),
        "client_steps": sum(c["steps"] for c in clients),
        "train_loss_by_round": [r["train_loss"] for r in rounds],
        "bytes_up": json.loads((run / "summary.json").read_text())["bytes_up"],
    }
    if setting == "ni":
        t = time.perf_counter()
        scores = unseen_scores(cfg, run / "adapter", base_too=base_unseen)
        row["unseen_after"] = scores["after"]
        if base_unseen:
            row["unseen_before"] = scores["before"]
        row["unseen_eval_s"] = round(time.perf_counter() - t, 1)
    row["peak_rss_run_mib"] = peak_run
    # the whole worker, incl. the held-out-task evaluation after the run (NI: one more model load)
    row["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    atomic_write_text(out, json.dumps(row, indent=1))


def over_seeds(values: list[float]) -> dict[str, Any]:
    return spread(values).as_dict()


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, sample standard deviation and 95% Student-t interval over seeds of one setting's rows."""
    out: dict[str, Any] = {
        "seeds": [r["seed"] for r in rows],
        "before": rows[0]["before"],  # greedy untuned model: identical for every seed (checked below)
        "after_rouge_l": over_seeds([r["after"]["rouge_l"] for r in rows]),
        "delta_rouge_l": over_seeds([r["after"]["rouge_l"] - r["before"]["rouge_l"] for r in rows]),
        "after_by_task": {t: over_seeds([r["after"]["by_task"][t] for r in rows]) for t in rows[0]["after"]["by_task"]},
        "seconds_per_round": over_seeds([r["seconds_per_round"] for r in rows]),
        "seconds_per_client_step": over_seeds([r["seconds_per_client_step"] for r in rows]),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in rows),
        "peak_rss_run_mib": max((r["peak_rss_run_mib"] for r in rows if "peak_rss_run_mib" in r), default=None),
    }
    out["before_identical_across_seeds"] = all(r["before"] == rows[0]["before"] for r in rows)
    if "unseen_after" in rows[0]:
        before = next(r["unseen_before"] for r in rows if "unseen_before" in r)
        out["unseen_before"] = before
        out["unseen_after_rouge_l"] = over_seeds([r["unseen_after"]["rouge_l"] for r in rows])
        out["unseen_delta_rouge_l"] = over_seeds([r["unseen_after"]["rouge_l"] - before["rouge_l"] for r in rows])
        out["unseen_after_by_task"] = {
            t: over_seeds([r["unseen_after"]["by_task"][t] for r in rows]) for t in before["by_task"]
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe field")
    ap.add_argument("--output-dir", default=str(ROOT / "runs" / "bench"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "real_model_smollm2.json")
    ap.add_argument("--worker", nargs=3, metavar=("SETTING", "SEED", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--base-unseen", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--resummarize", action="store_true", help="recompute the summaries of an existing --out")
    args = ap.parse_args()
    if args.resummarize:
        result = json.loads(args.out.read_text())
        for entry in result["settings"].values():
            entry["summary"] = summarize(entry["rows"])
        atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
        return
    if args.worker:
        setting, seed, out = args.worker
        worker(setting, int(seed), args.set, args.base_unseen, Path(out), args.output_dir)
        return

    info = machine_info(threads=2)
    started = time.perf_counter()
    result: dict[str, Any] = {"machine": info, "overrides": args.set, "settings": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for setting in args.settings:
            rows = []
            for i, seed in enumerate(args.seeds):
                out = Path(tmp) / f"{setting}-{seed}.json"
                cmd = [sys.executable, __file__, "--worker", setting, str(seed), str(out)]
                cmd += ["--output-dir", args.output_dir] + [f"--set={s}" for s in args.set]
                if i == 0:
                    cmd.append("--base-unseen")
                subprocess.run(cmd, check=True)
                rows.append(json.loads(out.read_text()))
                r = rows[-1]
                print(
                    f"{setting} seed {seed}: Rouge-L {r['before']['rouge_l']:.2f} -> {r['after']['rouge_l']:.2f}"
                    + (f", unseen -> {r['unseen_after']['rouge_l']:.2f}" if "unseen_after" in r else "")
                    + f"; {r['seconds_per_round']:.1f} s/round, {r['seconds_per_client_step']:.2f} s/step,"
                    f" peak {r['peak_rss_mib']:.0f} MiB",
                    flush=True,
                )
            result["settings"][setting] = {
                "recipe": str(RECIPES[setting].relative_to(ROOT)),
                "summary": summarize(rows),
                "rows": rows,
            }
    result["wall_s"] = round(time.perf_counter() - started, 1)
    save_result(args.out, result)
    print(f"wrote {args.out} ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
