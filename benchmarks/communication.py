"""Bytes on the wire per round: full fine-tuning vs each PEFT family vs each compression setting, with accuracy.

One small federated job (FedAvg, ``local`` runtime) is run per row through ``fedpeft.run_federated``, exactly as
``fedpeft run`` would; the bytes come from the run's ``summary.json`` (``bytes_up`` / ``bytes_down``: the exact
encoded payload bytes counted by the codec) and the accuracy is the final global dev accuracy.

Job (the same for every row): tiny-small, SST-2 (``--train-limit`` training rows split over 10 clients with
Dirichlet(alpha=0.5) label skew, full dev split for evaluation), every client sampled every round, ``--rounds``
rounds of ``--steps`` local AdamW steps of batch ``--batch-size``, label-word loss, class-balanced sampling on each
client. Only the adapter, its learning rate (table ``LR``) and the wire compression change between rows.

Rows:

* ``full``: full fine-tuning = adapter method ``named`` with ``module_names = [".*"]`` (every parameter trainable,
  the tied embedding / LM head included, so it is the whole model on the wire every round).
* one row per PEFT method: lora (reparameterized), ffa_lora (reparameterized, A frozen, ``lora_mode = frozen_a``),
  vera (reparameterized), ia3, prompt_tuning, bottleneck (additive), bitfit, layernorm (selective).
* ``lora`` with each compression: fp16, bf16, int8, int4 applied both ways (``comm.up`` and ``comm.down``), and
  top-k 0.1 with error feedback on the uplink (top-k is uplink-only; the downlink stays fp32).

Bytes per client per round = ``bytes_up`` (or ``bytes_down``) / (rounds x clients per round); no per-client
evaluation messages are sent (``client_eval_every = 0``), so the downlink is the global adapter only.

Accuracy is a sanity column at the default size, not a quality ranking: the bundled tiny-small model learns SST-2
slowly (a centralized check of LoRA r=8 all-linear, 150 steps of batch 16 at lr 4e-3 or 1e-2, was still at chance,
and docs/results.md reports the same for tiny-large below ~250 steps), and 8 rounds x 3 steps per client is what fits
14 runs in ~10 minutes on 2 cores. Expect most rows near 49-53% (chance = 49.1%, the dev share of "negative").
For a quality comparison give more local work, e.g. ``--rounds 30 --steps 10 --rows lora full ...`` (much longer).

    python benchmarks/communication.py [--rounds 8] [--steps 3] [--rows lora lora+int8 ...] [--lr vera=5e-2]
    python benchmarks/communication.py --quick --out /tmp/communication.json   # smoke run

Writes benchmarks/results/communication.json (or ``--out``) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import fedpeft  # noqa: F401  (registers methods, datasets, algorithms)
from _machine import machine_info  # type: ignore[import-not-found]  # benchmarks/ is on sys.path
from fedpeft.config import RunConfig, from_dict
from fedpeft.registry import PEFT_METHODS
from fedpeft.runtime import run_federated

RESULTS = Path(__file__).parent / "results"
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# Per-method client learning rate. One shared value would compare badly tuned methods, not communication:
# methods with very few trainable scalars (prompt tuning, IA3, VeRA's scaling vectors, BitFit's biases, the norm
# weights) need a much higher lr than LoRA to move in a few steps; full fine-tuning moves every weight of the model
# and needs a lower one. Not tuned per row beyond this; override with --lr METHOD=VALUE.
LR: dict[str, float] = {
    "named": 3e-4,  # full fine-tuning
    "lora": 4e-3,  # the lr of recipes/demo.toml (LoRA r=8; here on the linear layers only, not the embedding)
    "ffa_lora": 4e-3,  # same as LoRA, for a like-for-like comparison (A frozen)
    "vera": 3e-2,
    "ia3": 3e-2,
    "prompt_tuning": 3e-2,
    "bottleneck": 3e-3,
    "bitfit": 1e-2,
    "layernorm": 1e-2,
}

# name -> (adapter table, comm table, algorithm table)
Row = tuple[dict[str, Any], dict[str, Any], dict[str, Any]]
LORA: dict[str, Any] = {"method": "lora", "r": 8, "alpha": 16.0, "target_modules": ALL_LINEAR}
ROWS: dict[str, Row] = {
    "full": ({"method": "named", "module_names": [".*"]}, {}, {}),
    "lora": (LORA, {}, {}),
    "ffa_lora": ({**LORA, "method": "ffa_lora"}, {}, {"lora_mode": "frozen_a"}),
    "vera": ({"method": "vera", "r": 256}, {}, {}),  # VeRA's usual rank (shared frozen projections; peft default)
    "ia3": ({"method": "ia3"}, {}, {}),
    "prompt_tuning": ({"method": "prompt_tuning", "num_virtual_tokens": 8}, {}, {}),
    "bottleneck": ({"method": "bottleneck", "bottleneck_size": 16}, {}, {}),
    "bitfit": ({"method": "bitfit"}, {}, {}),
    "layernorm": ({"method": "layernorm"}, {}, {}),
    **{f"lora+{c}": (LORA, {"up": c, "down": c}, {}) for c in ("fp16", "bf16", "int8", "int4")},
    "lora+topk0.1-ef": (LORA, {"up": "topk", "topk_ratio": 0.1, "error_feedback": True}, {}),
}


def make_config(name: str, args: argparse.Namespace, output_dir: str, lrs: dict[str, float]) -> RunConfig:
    adapter, comm, algorithm = ROWS[name]
    raw: dict[str, Any] = {
        "name": f"comm-{name}",
        "seed": 0,
        "output_dir": output_dir,
        "model": {"name": args.model},
        "data": {
            "dataset": "sst2",
            "train_limit": args.train_limit,
            "eval_limit": args.eval_limit,
            "max_length": 64,
        },
        "adapter": adapter,
        "train": {
            "steps": args.steps,
            "batch_size": args.batch_size,
            "lr": lrs[adapter["method"]],
            "loss": "label_words",
            "balanced_sampling": True,
        },
        "federation": {
            "num_clients": args.clients,
            "rounds": args.rounds,
            "partition": "dirichlet",
            "alpha": 0.5,
            "eval_every": args.rounds,  # evaluate before training and after the last round only
            "save_adapters_every": 0,
        },
        "comm": comm,
        "algorithm": algorithm,
    }
    return from_dict(RunConfig, raw)


def run_row(name: str, args: argparse.Namespace, tmp: str, lrs: dict[str, float]) -> dict[str, Any]:
    cfg = make_config(name, args, tmp, lrs)
    t0 = time.perf_counter()
    run = run_federated(cfg, quiet=True)
    wall = time.perf_counter() - t0
    s = json.loads((run.path / "summary.json").read_text())
    fed = cfg.federation
    messages = fed.rounds * fed.clients_per_round
    method = cfg.adapter.method
    return {
        "row": name,
        "method": "full fine-tuning (named .*)" if name == "full" else method,
        "family": "full" if name == "full" else PEFT_METHODS.get(method).family,
        "comm_up": cfg.comm.up,
        "comm_down": cfg.comm.down,
        "lr": cfg.train.lr,
        "trainable_params": s["trainable_params"],
        "trainable_bytes": s["trainable_bytes"],
        "total_params": s["total_params"],
        "bytes_up": s["bytes_up"],
        "bytes_down": s["bytes_down"],
        "bytes_up_per_client_round": s["bytes_up"] / messages,
        "bytes_down_per_client_round": s["bytes_down"] / messages,
        "total_mb": (s["bytes_up"] + s["bytes_down"]) / 1e6,
        "accuracy_initial": s["initial"].get("accuracy"),
        "accuracy_final": s["final"].get("accuracy"),
        "accuracy_best": s.get("best", {}).get("accuracy"),
        "wall_s": round(wall, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--model", default="tiny-small")
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3, help="local AdamW steps per client per round")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--train-limit", type=int, default=5000, help="SST-2 training rows split over the clients")
    ap.add_argument("--eval-limit", type=int, default=None, help="dev rows for accuracy (default: all 872)")
    ap.add_argument("--lr", action="append", default=[], metavar="METHOD=VALUE", help="override a LR entry")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="smoke run: every row, 3 clients x 2 rounds x 1 step")
    ap.add_argument("--out", default=str(RESULTS / "communication.json"))
    args = ap.parse_args()
    if args.quick:
        args.clients, args.rounds, args.steps, args.batch_size = 3, 2, 1, 4
        args.train_limit, args.eval_limit = 200, 32
    lrs = dict(LR)
    for item in args.lr:
        key, value = item.split("=", 1)
        if key not in lrs:
            ap.error(f"--lr {item}: unknown method {key!r}; known: {sorted(lrs)}")
        lrs[key] = float(value)
    torch.set_num_threads(args.threads)
    info = machine_info(args.threads)

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fedpeft-comm-") as tmp:
        for name in args.rows:
            r = run_row(name, args, tmp, lrs)
            rows.append(r)
            up, down = r["bytes_up_per_client_round"], r["bytes_down_per_client_round"]
            acc = r["accuracy_final"]
            print(f"{name:16s} up {up:>11,.0f} B  down {down:>11,.0f} B  acc {acc:.3f}  ({r['wall_s']} s)", flush=True)
    full = next((r for r in rows if r["row"] == "full"), None)
    for r in rows:  # total bytes (up + down) relative to full fine-tuning's
        r["ratio_to_full"] = (r["total_mb"] / full["total_mb"]) if full else None

    out = {
        "benchmark": "communication",
        **info,
        "load_average_end": os.getloadavg(),
        "job": {
            "model": args.model,
            "dataset": "sst2",
            "train_limit": args.train_limit,
            "eval_limit": args.eval_limit,
            "clients": args.clients,
            "partition": "dirichlet(alpha=0.5, by label)",
            "rounds": args.rounds,
            "local_steps": args.steps,
            "batch_size": args.batch_size,
            "algorithm": "fedavg",
            "lr": lrs,
        },
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")

    print(
        f"\n{args.model}, SST-2 ({args.train_limit} rows), {args.clients} clients Dirichlet(0.5), FedAvg, "
        f"{args.rounds} rounds x {args.steps} steps x batch {args.batch_size}\n"
    )
    print(
        "| row | method | family | comm up / down | lr | trainable params | bytes up / client / round "
        "| bytes down / client / round | total MB | vs full FT | final accuracy |"
    )
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ratio = f"{100 * r['ratio_to_full']:.3g}%" if r["ratio_to_full"] is not None else "n/a"
        print(
            f"| {r['row']} | {r['method']} | {r['family']} | {r['comm_up']} / {r['comm_down']} | {r['lr']:g} "
            f"| {r['trainable_params']:,} | {r['bytes_up_per_client_round']:,.0f} "
            f"| {r['bytes_down_per_client_round']:,.0f} | {r['total_mb']:.3f} | {ratio} | {r['accuracy_final']:.3f} |"
        )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
