"""The compute SecAgg adds to a round: each protocol step for n parties over a D-value update, in one process.

    python benchmarks/secagg_cost.py [--parties 10] [--dim 148481] [--repeats 3]

D defaults to the default job's adapter (148,480 values + the weight coordinate). Each step is timed over all
parties together (they run one after another here, as on the `local` runtime); medians of the repeats. Writes
benchmarks/results/secagg_cost.json.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from _machine import machine_info, save_result
from fedpeft.privacy import secagg

RESULTS = Path(__file__).parent / "results"


def one_round(n: int, dim: int, bits: int, threshold: int) -> dict[str, float]:
    t: dict[str, float] = {}
    clock = time.perf_counter
    t0 = clock()
    keys = {p: secagg.make_keys() for p in range(n)}
    t["keys"] = clock() - t0
    public = {p: (k.pk1, k.pk2) for p, k in keys.items()}
    seeds = {p: secagg.fresh_seed() for p in range(n)}
    t0 = clock()
    out = {p: secagg.encrypt_shares(p, keys[p], seeds[p], public, threshold) for p in range(n)}
    t["shares"] = clock() - t0
    t0 = clock()
    held = {p: secagg.open_shares(p, keys[p], public, {s: out[s][0][p] for s in range(n) if s != p}) for p in range(n)}
    t["open_shares"] = clock() - t0
    for p in range(n):
        held[p][p] = out[p][1]
    gen = torch.Generator().manual_seed(0)
    vec = torch.randn(dim, dtype=torch.float64, generator=gen) * 1e-3
    t0 = clock()
    masked = {
        p: secagg.mask_vector(
            p, secagg.quantize(vec, 1.0, 2**24 - 1, gen), seeds[p], keys[p], public, list(range(n)), bits
        )
        for p in range(n)
    }
    t["quantize_and_mask"] = clock() - t0
    t0 = clock()
    secagg.unmask_sum(masked, [], {a: [held[x][a][0] for x in range(n)] for a in range(n)}, {}, public, threshold, bits)
    t["server_unmask"] = clock() - t0
    t0 = clock()
    rest = {p: masked[p] for p in range(1, n)}
    seed_sh = {a: [held[x][a][0] for x in range(1, n)] for a in range(1, n)}
    secagg.unmask_sum(rest, [0], seed_sh, {0: [held[x][0][1] for x in range(1, n)]}, public, threshold, bits)
    t["server_unmask_one_dropout"] = clock() - t0
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parties", type=int, default=10)
    ap.add_argument("--dim", type=int, default=148_481)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    machine = machine_info(args.threads)
    threshold = secagg.threshold_for(args.parties, 0.5)
    runs = [one_round(args.parties, args.dim, 32, threshold) for _ in range(args.repeats)]
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    client = sum(med[k] for k in ("keys", "shares", "open_shares", "quantize_and_mask")) / args.parties
    out = {
        "machine": machine,
        "parties": args.parties,
        "dim": args.dim,
        "threshold": threshold,
        "repeats": args.repeats,
        "seconds_all_parties_median": med,
        "client_seconds_per_round": client,
        "server_seconds_per_round": med["server_unmask"],
    }
    RESULTS.mkdir(exist_ok=True)
    save_result(RESULTS / "secagg_cost.json", out)
    for k, v in med.items():
        print(f"{k}: {1000 * v:.0f} ms")
    print(f"per client per round: {1000 * client:.0f} ms; server per round: {1000 * med['server_unmask']:.0f} ms")


if __name__ == "__main__":
    main()
