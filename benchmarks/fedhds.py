"""FedHDS against its baselines in one harness, on the real instruction model (or the test-sized tiny path).

    python benchmarks/fedhds.py --setting ni --variants all hds turbo shared random --seeds 0 1 2 \
        --out benchmarks/results/fedhds_ni.json
    python benchmarks/fedhds.py --setting dolly --set federation.alpha=5.0 ... --out ..._a5.json
    python benchmarks/fedhds.py --combine A.json B.json --out C.json     # merge runs of the same setting

Settings are the shipped recipes: ``ni`` = recipes/fedhds_ni.toml, ``dolly`` = recipes/fedhds_dolly.toml,
``tiny`` = recipes/fedhds_dolly_tiny.toml. Variants (overrides of that recipe, everything else equal):

- ``all``: full-data FedIT (``algorithm.coreset=all``: one epoch over every local example, no selection);
- ``hds``: FedHDS as the paper (features under the current global model, per-client t-SNE);
- ``turbo``: FedHDS-Turbo (features from the fixed bundled ``tiny-small``, re-tokenized for it);
- ``shared``: FedHDS with the server's shared projection (PCA on public anchors) instead of per-client t-SNE;
- ``turbo_shared``: both;
- ``random``: per client and round, as many uniformly drawn examples as ``hds`` chose;
- ``pooled``: the centralized coreset (every feature uploaded; HDBSCAN over the pool): the upper reference.

Each (variant, seed) is ``fedpeft run`` in its own process (benchmarks/seeds.py). Recorded per run: Rouge-L on
the held-out tasks before (round 0) and after; the fraction of the sampled clients' examples trained on; the
rounds' selection and training seconds (the server's wall time of each exchange, evaluation excluded) and the
clients' own feature / reduction / clustering / training seconds; selection bytes per queried client per round
(every payload kind but the adapter). Per variant: mean and sample sd over seeds, the speed-up over ``all``
(its select + train seconds over the variant's, same seed), and paired differences of Rouge-L to ``all`` and
``random``. Settings were fixed before any run (the reference code's values where it has them); nothing was
chosen on the held-out tasks.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

from _machine import machine_info, save_result
from fedpeft.reports.stats import paired, spread
from seeds import run_one  # benchmarks/ is on sys.path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {
    "ni": ROOT / "recipes" / "fedhds_ni.toml",
    "dolly": ROOT / "recipes" / "fedhds_dolly.toml",
    "tiny": ROOT / "recipes" / "fedhds_dolly_tiny.toml",
}
VARIANTS = {
    "all": ["algorithm.coreset=all"],
    "hds": [],
    "turbo": ["algorithm.feature_model=tiny-small"],
    "shared": ["algorithm.reduction=shared"],
    "turbo_shared": ["algorithm.feature_model=tiny-small", "algorithm.reduction=shared"],
    "random": ["algorithm.coreset=random"],
    "pooled": ["algorithm.coreset=pooled"],
}


def events(run: Path, kind: str) -> list[dict[str, Any]]:
    return [e for e in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if e["event"] == kind]


def _mean(values: list[float]) -> float | None:
    return round(statistics.fmean(values), 4) if values else None


def measure(row: dict[str, Any]) -> dict[str, Any]:
    """The FedHDS figures of one run, read from its run directory."""
    run = Path(row["run_dir"])
    summary = json.loads((run / "summary.json").read_text())
    rounds, selects, trains = events(run, "round"), events(run, "client_select"), events(run, "client_train")
    queried = sum(r.get("queried", 0) for r in rounds)
    return {
        "rouge_before": summary["initial"]["rouge_l"],
        "rouge_after": summary["final"]["rouge_l"],
        "data_fraction": summary["fedhds"]["data_fraction"],
        "examples_trained": summary["fedhds"]["examples_trained"],
        "select_s": summary["fedhds"]["select_seconds"],
        "train_s": summary["fedhds"]["train_seconds"],
        "client_features_s": _mean([s["features_s"] for s in selects]),
        "client_reduce_s": _mean([s["reduce_s"] for s in selects if "reduce_s" in s]),
        "client_cluster_s": _mean([s["cluster_s"] for s in selects if "cluster_s" in s]),
        "client_train_s": _mean([t["seconds"] for t in trains]),
        "selection_bytes_per_client_round": sum(r.get("selection_bytes", 0) for r in rounds) / queried
        if queried
        else 0.0,
        "bytes_by_kind": summary.get("bytes_by_kind", {}),
        "local_clusters_per_client": sum(r.get("local_clusters", 0) for r in rounds) / queried if queried else None,
        "server_clusters_per_round": _mean([r["server_clusters"] for r in rounds if "server_clusters" in r]),
    }


def summarize(result: dict[str, Any]) -> None:
    """Per-variant mean / sd, speed-ups over ``all`` and paired Rouge-L differences, in place."""
    variants = result["variants"]
    for rows in variants.values():
        for r in rows["rows"]:
            if "fedhds" not in r:  # measured once, while the run directory exists (combined files keep it)
                r["fedhds"] = measure(r)
    for name, block in variants.items():
        rows = block["rows"]
        out: dict[str, Any] = {"seeds": [r["seed"] for r in rows]}
        for key in ("rouge_before", "rouge_after", "data_fraction", "select_s", "train_s",
                    "selection_bytes_per_client_round", "client_features_s", "client_reduce_s", "client_cluster_s",
                    "client_train_s"):  # fmt: skip
            values = [r["fedhds"][key] for r in rows if r["fedhds"][key] is not None]
            if values:
                out[key] = spread(values).as_dict()
        if "all" in variants:
            base = {r["seed"]: r["fedhds"] for r in variants["all"]["rows"]}
            speed = [
                (base[r["seed"]]["select_s"] + base[r["seed"]]["train_s"])
                / (r["fedhds"]["select_s"] + r["fedhds"]["train_s"])
                for r in rows
                if r["seed"] in base
            ]
            if speed:
                out["speedup_over_all"] = spread(speed).as_dict()
        for ref in ("all", "random"):
            if ref in variants and ref != name:
                mine = {r["seed"]: r["fedhds"]["rouge_after"] for r in rows}
                theirs = {r["seed"]: r["fedhds"]["rouge_after"] for r in variants[ref]["rows"]}
                shared_seeds = sorted(set(mine) & set(theirs))
                if len(shared_seeds) >= 2:
                    diff = paired([mine[s] for s in shared_seeds], [theirs[s] for s in shared_seeds])
                    out[f"rouge_minus_{ref}"] = diff.as_dict()
        block["summary"] = out


def table(result: dict[str, Any]) -> str:
    lines = [
        "| variant | seeds | data used | Rouge-L before -> after | select s | train s | speed-up vs all "
        "| sel. B/client/round |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def g(s: dict[str, Any], key: str, digits: int) -> str:
        return f"{s[key]['mean']:.{digits}f}" if key in s else "-"

    for name, block in result["variants"].items():
        s = block["summary"]
        sd = f" ± {s['rouge_after']['sd']:.2f}" if s["rouge_after"].get("sd") is not None else ""
        lines.append(
            f"| {name} | {len(s['seeds'])} | {100 * s['data_fraction']['mean']:.2f}% | "
            f"{s['rouge_before']['mean']:.2f} -> {s['rouge_after']['mean']:.2f}{sd} | {g(s, 'select_s', 1)} | "
            f"{g(s, 'train_s', 1)} | {g(s, 'speedup_over_all', 1)}x | {g(s, 'selection_bytes_per_client_round', 0)} |"
        )
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    """Held-out Rouge-L per variant (mean, sd over seeds; the base model dashed) beside the seconds of selection and
    training (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["variants"])
    summ = [result["variants"][n]["summary"] for n in names]
    sd = lambda s, k: s[k].get("std") or 0.0  # noqa: E731  (fedpeft.reports.stats.spread: None for one seed)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.bar(names, [s["rouge_after"]["mean"] for s in summ], yerr=[sd(s, "rouge_after") for s in summ], capsize=3)
    ax1.axhline(summ[0]["rouge_before"]["mean"], linestyle="--", color="grey", label="untuned model")
    ax1.set_ylabel("Rouge-L on held-out tasks")
    ax1.set_title(f"{result.get('setting', '')}: Rouge-L after {len(summ[0]['seeds'])} seed(s)")
    ax1.legend()
    select_s = [s["select_s"]["mean"] if "select_s" in s else 0.0 for s in summ]
    train_s = [s["train_s"]["mean"] for s in summ]
    ax2.bar(names, select_s, label="selection")
    ax2.bar(names, train_s, bottom=select_s, label="training")
    ax2.set_yscale("log")
    ax2.set_ylim(bottom=1)
    ax2.set_ylabel("seconds (server wall, all rounds)")
    ax2.set_title("cost of selection and training")
    ax2.legend()
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setting", choices=sorted(SETTINGS))
    ap.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=["all", "hds", "turbo", "random"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every variant")
    ap.add_argument("--output-dir", default=str(ROOT / "runs" / "bench"))
    ap.add_argument("--combine", nargs="+", type=Path, help="merge these result files (same setting) instead")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    if args.combine:
        parts = [json.loads(p.read_text()) for p in args.combine]
        result = {**parts[0], "combined_from": [str(p) for p in args.combine], "variants": {}}
        for part in parts:
            for name, block in part["variants"].items():
                result["variants"].setdefault(name, {"rows": []})["rows"] += block["rows"]
    else:
        if args.setting is None:
            ap.error("--setting is required unless --combine")
        threads = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
        recipe = SETTINGS[args.setting]
        result = {
            "machine": machine_info(threads),
            "setting": args.setting,
            "recipe": str(recipe.relative_to(ROOT)),
            "overrides": args.set,
            "variants": {},
        }
        if len(args.seeds) < 3:
            print("note: fewer than 3 seeds: no headline figure should rest on this", file=sys.stderr)
        for seed in args.seeds:  # seed-major: an interrupted benchmark still has every variant of the first seeds
            for name in args.variants:
                row = run_one(recipe, seed, [*args.set, *VARIANTS[name]], args.output_dir)
                row["fedhds"] = measure(row)
                result["variants"].setdefault(name, {"overrides": VARIANTS[name], "rows": []})["rows"].append(row)
                f = row["fedhds"]
                print(
                    f"{name} seed {seed}: rouge {f['rouge_before']:.2f} -> {f['rouge_after']:.2f}, "
                    f"data {100 * f['data_fraction']:.2f}%, select {f['select_s']:.1f} s, train {f['train_s']:.1f} s, "
                    f"wall {row['wall_s']} s",
                    flush=True,
                )
                summarize(result)
                save_result(args.out, result)
    summarize(result)
    result["table"] = table(result)
    save_result(args.out, result)
    plot(result, args.out.with_suffix(".png"))
    print(result["table"])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
