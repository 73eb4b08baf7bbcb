"""Which adapter distance lets FL-TAC's k-means find the tasks? Round by round, on the very same uploads.

    python benchmarks/fltac_distances.py [--recipe recipes/fltac_glue.toml] [--model tiny-small] [--rounds 3]

Runs FL-TAC (the recipe as given, LoRA on the input embedding added if missing so that every space is defined)
and, every round, k-means (K = number of tasks, n_init = 10, the round's seed) on the round's uploads in each
space: ``flat`` (the paper), ``flat`` scaled to unit length, ``product`` (B·A), and ``tokens`` (token profiles).
Reported: adjusted Rand index and purity against the true tasks, and the mean cosine similarity of the flattened
updates within and between tasks. The run itself clusters with the recipe's ``algorithm.distance``; from round 2
on, every space sees the same members starting from the run's own clusters. Writes ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import tomllib
import torch
from sklearn.cluster import KMeans

from _machine import machine_info
from fedpeft.algorithms.aggregation import State
from fedpeft.algorithms.base import derive_seed
from fedpeft.algorithms.fltac import cluster
from fedpeft.algorithms.fltac.server import FLTAC
from fedpeft.config import RunConfig, from_dict, parse_override
from fedpeft.fileio import atomic_write_text
from fedpeft.registry import register_algorithm
from fedpeft.runtime import run_federated
from fltac import set_key

ROOT = Path(__file__).resolve().parents[1]
SPACES = {"flat": ("flat", False), "flat, unit length": ("flat", True), "product": ("product", False)}
SPACES["tokens"] = ("tokens", False)  # unit length by definition
# Variants of the token profile (investigation of issue 17: why 'tokens' separates at 5 local steps and not 10):
# which tokens an adapter moved at all (presence), sqrt-damped counts, and the profile restricted to the tokens
# that at least a quarter of the round's adapters moved (drops client-specific content words, keeps each task's
# template words).
VARIANTS = ("tokens, presence", "tokens, sqrt", "tokens, shared vocabulary")
ROUNDS: list[dict[str, Any]] = []
DUMP: Path | None = None  # --dump: where the rounds' token profiles go (.npz per round)


def token_variant(x: torch.Tensor, name: str) -> torch.Tensor:
    """``x`` [n, V]: the round's unit token profiles -> the variant's rows, unit length."""
    if name == "tokens, presence":
        y = (x > 0).double()
    elif name == "tokens, sqrt":
        y = x.sqrt()
    else:
        shared = (x > 0).double().mean(0) >= 0.25  # [V]
        y = x * shared
    return y / y.norm(dim=1, keepdim=True).clamp_min(1e-12)


@register_algorithm("fltac_distances")
class Recording(FLTAC):
    """FL-TAC that also clusters each round's uploads in every space (for this benchmark only)."""

    def recluster(self, rnd: int, members: list[str], states: list[State], updates: list[State]) -> dict[str, Any]:
        truth = [self.truth[m] for m in members]  # reporting only
        seed = derive_seed(self.cfg.seed, rnd, "kmeans")
        points = states if self.opts.cluster_on == "adapter" else updates
        row: dict[str, Any] = {"round": rnd, "adapters": len(members), "spaces": {}}
        labels_by_space: dict[str, list[int]] = {}  # the clusters each space gave every adapter
        for name, (space, unit) in SPACES.items():
            x = torch.stack([cluster.adapter_vector(s, space, self.scaling) for s in points])  # [n, D]
            if unit:
                x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
            labels, _ = cluster.kmeans(x, self.num_clusters, seed=seed, n_init=self.opts.n_init)
            labels_by_space[name] = labels
            row["spaces"][name] = score(labels, truth)
            if space == "tokens":
                for variant in VARIANTS:
                    labels, _ = cluster.kmeans(token_variant(x, variant), self.num_clusters, seed=seed, n_init=10)
                    row["spaces"][variant] = score(labels, truth)
                # k-means weighted by each adapter's example count (the cluster means are weighted the same way):
                # an adapter trained on a handful of examples cannot claim a centroid of its own
                weights = np.array([self.counts[m] for m in members])
                for name_w, xw in (("tokens, example-weighted", x), ("flat, example-weighted", None)):
                    if xw is None:
                        xw = torch.stack([cluster.adapter_vector(s, "flat") for s in points])
                    km = KMeans(n_clusters=self.num_clusters, n_init=10, random_state=seed % 2**32)
                    labels = [int(v) for v in km.fit(xw.numpy(), sample_weight=weights).labels_]
                    row["spaces"][name_w] = score(labels, truth)
        row["cosine"] = task_cosines(updates, truth, self.task_names)
        profiles = torch.stack([cluster.adapter_vector(s, "tokens") for s in points])  # [n, V], unit rows
        row["cosine_tokens"] = task_cosines(updates, truth, self.task_names, x=profiles)
        # per adapter: who it is, how much data it had, how far its update moved, and the clusters each space gave
        # it (to see which adapters merge or stand alone)
        flat = torch.stack([cluster.adapter_vector(u, "flat") for u in updates])
        if DUMP is not None:  # the round's profiles, to try other token weightings offline
            np.savez_compressed(
                DUMP.with_name(f"{DUMP.stem}_round{rnd}.npz"),
                profiles=profiles.numpy(),
                truth=np.array(truth),
                counts=np.array([self.counts[m] for m in members]),
            )
        row["per_adapter"] = [
            {
                "member": m,
                "task": self.task_names[truth[i]],
                "examples": self.counts[m],
                "update_norm": float(flat[i].norm()),
                "tokens_moved": int((profiles[i] > 0).sum()),
                **{f"cluster_{k}": labels_by_space[k][i] for k in ("flat", "tokens")},
            }
            for i, m in enumerate(members)
        ]
        ROUNDS.append(row)
        print(json.dumps({"round": rnd, **{k: round(v["ari"], 3) for k, v in row["spaces"].items()}}), flush=True)
        return super().recluster(rnd, members, states, updates)


def score(labels: list[int], truth: list[int]) -> dict[str, Any]:
    """ARI and purity against the true tasks, and the cluster sizes (largest first)."""
    sizes = sorted((labels.count(c) for c in set(labels)), reverse=True)
    return {"ari": cluster.adjusted_rand(labels, truth), "purity": cluster.purity(labels, truth), "sizes": sizes}


def task_cosines(
    updates: list[State], truth: list[int], names: list[str], x: torch.Tensor | None = None
) -> dict[str, float]:
    """Mean cosine similarity of the flattened updates (or of the rows of ``x`` [n, D]) for every pair of tasks
    (within a task: distinct pairs)."""
    if x is None:
        x = torch.stack([cluster.adapter_vector(u, "flat") for u in updates])
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    sim = x @ x.T  # [n, n]
    t = torch.tensor(truth)
    out: dict[str, float] = {}
    for a in range(len(names)):
        for b in range(a, len(names)):
            block = sim[t == a][:, t == b]
            if a == b:
                n = block.shape[0]
                value = (block.sum() - block.diagonal().sum()) / max(1, n * (n - 1))
            else:
                value = block.mean() if block.numel() else torch.tensor(float("nan"))
            out[f"{names[a]}/{names[b]}"] = float(value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "fltac_glue.toml")
    ap.add_argument("--model", default="tiny-small")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5, help="local steps per adapter per round")
    ap.add_argument("--output-dir", default=str(ROOT / "runs" / "bench"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fltac_distances.json")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe field")
    ap.add_argument("--dump", type=Path, default=None, help="save each round's token profiles (PREFIX_roundN.npz)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    global DUMP
    DUMP = args.dump

    raw = tomllib.loads(args.recipe.read_text())
    raw.update(output_dir=args.output_dir, name=f"distances-{raw['name']}")
    raw["model"]["name"] = args.model
    raw["train"]["steps"] = args.steps
    raw["federation"].update(algorithm="fltac_distances", rounds=args.rounds, eval_every=args.rounds)
    raw["federation"]["client_eval_every"] = 0
    targets = raw["adapter"]["target_modules"]
    if "embed_tokens" not in targets:
        raw["adapter"]["target_modules"] = ["embed_tokens", *targets]
    for item in args.set:
        keys, value = parse_override(item)
        set_key(raw, ".".join(keys), value)
    run = run_federated(from_dict(RunConfig, raw), quiet=True).path
    result = {"machine": machine_info(2), "recipe": str(args.recipe), "run_dir": str(run), "model": args.model}
    result.update(steps=args.steps, set=args.set, clustered_with=raw["algorithm"].get("distance", "flat"))
    result["rounds"] = ROUNDS
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    for row in ROUNDS:
        print(row["round"], {k: f"{v['ari']:.3f}" for k, v in row["spaces"].items()}, row["cosine"])


if __name__ == "__main__":
    main()
