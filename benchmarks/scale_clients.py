"""Peak memory (RSS) of the ``local`` runtime against the number of simulated clients: 10, 100, 1000.

Each setting runs in a fresh child process (``python benchmarks/scale_clients.py --child N --up none|topk``), so its
peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) belongs to that setting alone. The child does what
``fedpeft.runtime.local.run_local`` does, step by step, with the same public pieces (build_model,
build_federated_data, ServerModel, LocalGrid, Session), reading memory between the steps:

* ``rss_*``: current RSS (``VmRSS``) after imports, the model, the encoded + partitioned data, and the grid +
  algorithm (= "after setup, before training"), and at the end.
* ``peak_*``: the peak RSS of each phase. Between phases the kernel's high-water mark is reset by writing ``5`` to
  ``/proc/self/clear_refs`` (Linux >= 4.0; ``ru_maxrss`` follows it), so ``peak_round`` is the peak of round 0's
  evaluation + round 1's training and aggregation alone, not an earlier transient of data encoding. Without that
  file the peaks are cumulative (``peak_reset: false`` in the JSON). ``peak_overall`` is the largest phase peak.
* ``client_state_bytes``: exact bytes of the tensors the clients keep between rounds (``LocalGrid.states``).

Job: tiny-small, LoRA r=8 on all linear layers, ``train_limit`` SST-2 rows split IID, every client sampled, 1 round
of 1 local step of batch 4. Variants: ``comm.up = "none"`` (clients keep nothing between rounds) and ``"topk"``
with error feedback (each client keeps an fp32 residual the size of its adapter). The parent fits the growth per
client, ``d(peak_round - rss_setup) / dN`` (least squares over the client counts), and sets it beside the adapter
size (``trainable_bytes`` of the setup event) and the measured per-client state. Every round peak also holds a fixed
~100-150 MiB of first forward/backward/eval allocations (activations, autograd and thread-pool buffers) that varies by
~+-10 MiB from run to run; it cancels in the slope at 10/100/1000 clients but swamps it at a handful (``--quick``).

    python benchmarks/scale_clients.py [--clients 10 100 1000] [--train-limit 20000]
    python benchmarks/scale_clients.py --quick --out /tmp/scale_clients.json   # smoke run, seconds

Writes benchmarks/results/scale_clients.json (or ``--out``) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _machine import machine_info  # type: ignore[import-not-found]  # benchmarks/ is on sys.path

RESULTS = Path(__file__).parent / "results"
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MARK = "SCALE_RESULT "


# ---------------------------------------------------------------------------------------------------- memory probes


def rss_bytes() -> int:
    """Current resident set size."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def peak_bytes() -> int:
    """Peak RSS since the process started or the last :func:`reset_peak` (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak() -> bool:
    """Reset the kernel's RSS high-water mark (which ru_maxrss reports); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------------- the child


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    import fedpeft  # noqa: F401  (registers methods, datasets, algorithms)
    from fedpeft.algorithms import get_algorithm
    from fedpeft.config import RunConfig, from_dict
    from fedpeft.runs import RunDir
    from fedpeft.runtime.local import LocalGrid
    from fedpeft.runtime.session import Session
    from fedpeft.runtime.setup import ServerModel, build_federated_data, build_model

    m: dict[str, Any] = {"num_clients": args.child, "up": args.up}
    phases: list[int] = []

    def phase(name: str) -> None:
        m[f"rss_{name}"] = rss_bytes()
        m[f"peak_{name}"] = peak_bytes()
        phases.append(m[f"peak_{name}"])
        m["peak_reset"] = reset_peak()

    phase("imports")
    with tempfile.TemporaryDirectory(prefix="fedpeft-scale-") as tmp:
        raw: dict[str, Any] = {
            "name": "scale",
            "seed": 0,
            "output_dir": tmp,
            "model": {"name": "tiny-small"},
            "data": {"dataset": "sst2", "train_limit": args.train_limit, "eval_limit": 64, "max_length": 64},
            "adapter": {"method": "lora", "r": 8, "alpha": 16.0, "target_modules": ALL_LINEAR},
            "train": {"steps": 1, "batch_size": 4, "lr": 3e-3, "loss": "label_words"},
            "federation": {
                "num_clients": args.child,
                "rounds": 1,
                "partition": "iid",
                "min_partition_size": 2,
                "save_adapters_every": 0,
            },
            "comm": {"up": args.up, "topk_ratio": 0.1, "error_feedback": True},
        }
        cfg = from_dict(RunConfig, raw)
        model, tokenizer = build_model(cfg)
        phase("model")
        data = build_federated_data(cfg, tokenizer)
        phase("data")
        run = RunDir.create(tmp, "scale")
        run.save_config(cfg)
        session = Session(cfg, run, None, quiet=True)
        server = ServerModel(cfg, model, data.task, run.path)
        grid = LocalGrid(get_algorithm(cfg.federation.algorithm).client_app, model, cfg, data.clients, True)
        ctx, close = session.server_context(server, lambda: {"grid": grid.state_dict()})
        save_checkpoint = ctx.checkpoint

        def checkpoint(rnd: int, state: dict[str, Any]) -> None:
            phase("round")  # round 0 eval + round 1 fit (all clients hold their updates until aggregation)
            save_checkpoint(rnd, state)
            phase("checkpoint")

        ctx.checkpoint = checkpoint
        session.log_setup(server, data)
        algo = session.make_algorithm(ctx)
        phase("setup")
        t0 = time.perf_counter()
        results = algo.run(grid)
        m["run_seconds"] = round(time.perf_counter() - t0, 2)
        close()
        phase("end")
        m.update(server.size())
        m["client_state_bytes"] = sum(
            t.numel() * t.element_size()
            for st in grid.states.values()
            for t in st.values()
            if isinstance(t, torch.Tensor)
        )
        m["bytes_up"] = grid.ledger.total("up")
        m["bytes_down"] = grid.ledger.total("down")
        m["accuracy"] = results["final"].get("accuracy")
        m["train_examples"] = len(data.task.train)
        m["client_train_sizes"] = sorted({len(c.train) for c in data.clients})
    m["peak_overall"] = max(phases)
    print(MARK + json.dumps(m), flush=True)


# ---------------------------------------------------------------------------------------------------- the parent


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys on xs."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else float("nan")


def run_child(n: int, up: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", str(n), "--up", up]
    cmd += ["--train-limit", str(args.train_limit), "--threads", str(args.threads)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"child {shlex.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith(MARK))
    out = json.loads(line[len(MARK) :])
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    out["command"] = shlex.join(cmd)
    return out


def mib(x: float) -> str:
    return f"{x / 2**20:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument("--variants", nargs="+", default=["none", "topk"], choices=["none", "topk"])
    ap.add_argument("--train-limit", type=int, default=20000, help="SST-2 training rows split over the clients")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 and 8 clients, 200 rows")
    ap.add_argument("--out", default=str(RESULTS / "scale_clients.json"))
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--up", default="none", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        child(args)
        return
    if args.quick:
        args.clients, args.train_limit = [2, 8], 200
    info = machine_info(args.threads)

    rows: list[dict[str, Any]] = []
    for up in args.variants:
        for n in args.clients:
            r = run_child(n, up, args)
            rows.append(r)
            print(
                f"up={up:4s} N={n:5d}: rss after setup {mib(r['rss_setup'])} MiB, peak round "
                f"{mib(r['peak_round'])} MiB, peak overall {mib(r['peak_overall'])} MiB ({r['wall_s']} s)",
                flush=True,
            )

    fits = []
    for up in args.variants:
        rs = [r for r in rows if r["up"] == up]
        ns = [float(r["num_clients"]) for r in rs]
        fits.append(
            {
                "up": up,
                "growth_per_client_round": slope(ns, [float(r["peak_round"] - r["rss_setup"]) for r in rs]),
                "growth_per_client_peak_overall": slope(ns, [float(r["peak_overall"]) for r in rs]),
                "growth_per_client_setup": slope(ns, [float(r["rss_setup"]) for r in rs]),
                "growth_per_client_after_run": slope(ns, [float(r["rss_end"] - r["rss_setup"]) for r in rs]),
                "state_bytes_per_client": slope(ns, [float(r["client_state_bytes"]) for r in rs]),
                "trainable_bytes": rs[0]["trainable_bytes"],
            }
        )

    out = {
        "benchmark": "scale_clients",
        **info,
        "load_average_end": os.getloadavg(),
        "job": {
            "model": "tiny-small",
            "adapter": {"method": "lora", "r": 8, "target_modules": ALL_LINEAR},
            "train_limit": args.train_limit,
            "partition": "iid",
            "rounds": 1,
            "local_steps": 1,
            "batch_size": 4,
            "topk": {"ratio": 0.1, "error_feedback": True},
        },
        "runs": rows,
        "fits": fits,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")

    print(f"\ntiny-small + LoRA r=8 all-linear, {args.train_limit} SST-2 rows IID, 1 round x 1 step x batch 4\n")
    print(
        "| comm.up | clients | RSS after data MiB | RSS after setup MiB | peak round MiB | peak checkpoint MiB "
        "| peak overall MiB | RSS at end MiB | client state MiB | run s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['up']} | {r['num_clients']} | {mib(r['rss_data'])} | {mib(r['rss_setup'])} | {mib(r['peak_round'])} "
            f"| {mib(r['peak_checkpoint'])} | {mib(r['peak_overall'])} | {mib(r['rss_end'])} "
            f"| {mib(r['client_state_bytes'])} | {r['run_seconds']} |"
        )
    print(
        "\n| comm.up | growth / client in round (peak - setup) | growth / client, peak overall "
        "| setup growth / client | kept after run / client | client state / client | adapter (trainable_bytes) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for f in fits:
        print(
            f"| {f['up']} | {f['growth_per_client_round']:,.0f} B | {f['growth_per_client_peak_overall']:,.0f} B "
            f"| {f['growth_per_client_setup']:,.0f} B | {f['growth_per_client_after_run']:,.0f} B "
            f"| {f['state_bytes_per_client']:,.0f} B | {f['trainable_bytes']:,} B |"
        )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
