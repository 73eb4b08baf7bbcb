"""Is FL-TAC's clustering of token profiles a property of the data or luck of the k-means seed? Offline, on the
token profiles one round's uploads had (saved by ``benchmarks/fltac_distances.py --dump PREFIX``).

    python benchmarks/fltac_kmeans.py benchmarks/results/fltac_profiles_glue_tiny_large_round1_steps5.npz \
        benchmarks/results/fltac_profiles_glue_tiny_large_round1_steps10.npz \
        --out benchmarks/results/fltac_kmeans_glue_tiny_large.json

For each profile file and each setting (``cluster_min_examples``: centroids fitted on the adapters trained on at
least that many examples, every adapter then joining its nearest centroid; ``n_init`` restarts; tf-idf weighting
of the profiles), k-means with K = number of tasks is run with 20 different seeds, as FL-TAC's server does
(``fedpeft.algorithms.fltac.cluster.kmeans``). Reported: adjusted Rand index against the true tasks (min, mean
over seeds), and whether the partition into the true tasks has the lowest inertia k-means can find (the true
partition's inertia against the best of 200 restarts), i.e. whether k-means' objective wants the right answer at
all. Writes ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _machine import machine_info, save_result
from fedpeft.algorithms.fltac import cluster

SEEDS = range(20)
MIN_EXAMPLES = (1, 16, 32, 64)
N_INIT = (10, 50)


def tfidf(x: np.ndarray) -> np.ndarray:
    """Profiles [n, V] weighted by log(n / document frequency): tokens every adapter moved (common words) drop out."""
    df = (x > 0).sum(0)  # [V]
    y = x * np.log(len(x) / np.maximum(df, 1))
    return y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)


def inertia(x: np.ndarray, labels: np.ndarray) -> float:
    return float(sum(((x[labels == c] - x[labels == c].mean(0)) ** 2).sum() for c in set(labels.tolist())))


def study(path: Path) -> dict[str, Any]:
    d = np.load(path)
    profiles, truth, counts = d["profiles"], d["truth"], d["counts"]
    k = len(set(truth.tolist()))
    out: dict[str, Any] = {"file": str(path), "adapters": len(truth), "examples": sorted(counts.tolist())}
    rows = []
    for weighting, x in (("none", profiles), ("tf-idf", tfidf(profiles))):
        for m in MIN_EXAMPLES:
            fit = (counts >= m).tolist()
            for n_init in N_INIT:
                aris = []
                for seed in SEEDS:
                    labels, _ = cluster.kmeans(torch.from_numpy(x), k, seed=seed, n_init=n_init, fit=fit)
                    aris.append(cluster.adjusted_rand(labels, truth.tolist()))
                kept = x[np.array(fit)]
                best, _ = cluster.kmeans(torch.from_numpy(kept), k, seed=0, n_init=200)
                true_inertia, best_inertia = inertia(kept, truth[np.array(fit)]), inertia(kept, np.array(best))
                rows.append(
                    {
                        "weighting": weighting,
                        "cluster_min_examples": m,
                        "fitted_on": int(sum(fit)),
                        "n_init": n_init,
                        "ari_min": min(aris),
                        "ari_mean": float(np.mean(aris)),
                        "true_partition_inertia": true_inertia,
                        "best_inertia_found": best_inertia,
                        "true_partition_is_best": true_inertia <= best_inertia + 1e-9,
                    }
                )
                r = rows[-1]
                print(
                    f"{path.stem} {weighting:6s} fit>={m:<3d} n_init {n_init:<3d} ARI min {r['ari_min']:.3f} "
                    f"mean {r['ari_mean']:.3f}  true partition best: {r['true_partition_is_best']}",
                    flush=True,
                )
    out["rows"] = rows
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("profiles", nargs="+", type=Path, help="NPZ files written by fltac_distances.py --dump")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    result = {"machine": machine_info(threads=1), "seeds": list(SEEDS), "files": [study(p) for p in args.profiles]}
    save_result(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
