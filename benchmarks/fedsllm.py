"""FedsLLM's split runs measured against the planner's delay model, the price of compressing what crosses the cut,
the device budget against federated LoRA on the whole model and FedPT, and the rounds-vs-rank curve the planner needs.

    python benchmarks/fedsllm.py --part model --out benchmarks/results/fedsllm_model.json
    python benchmarks/fedsllm.py --part compression --out benchmarks/results/fedsllm_compression.json
    python benchmarks/fedsllm.py --part scale --seeds 0 --out benchmarks/results/fedsllm_scale_s0.json
    python benchmarks/fedsllm.py --part ranks --seeds 0 --out benchmarks/results/fedsllm_ranks_s0.json

Every run is ``fedpeft run recipes/fedsllm_sst2.toml`` (the demo's job, split) in its own process with the overrides
listed in the JSON, on ``tiny-large`` (8 layers, H = 256) unless stated:

- ``model``: one round, 3 clients x 10 steps, at cuts 0 / 2 / 4 / 6 / 8, U-shaped at 4, and unsplit ``fedavg``. Per run:
  the bytes of activations and gradients per micro-batch against ``8 B T H 4`` bits (``planning.delay.activation_bits``
  at each micro-batch's [B, T], logged by the server), and the client's FLOPs (FlopCounter, from the device budget)
  against ``planning.delay`` (layers [0, c) forward + backward; our clients run the forward twice, once without
  autograd for what is sent and once to backpropagate, since no graph is kept between messages). The client seconds
  are predicted from the FLOPs at this machine's rate, calibrated on the unsplit run's client (FLOPs / seconds).
- ``compression``: cut 4, three rounds, activations and gradients lossless / fp16 / bf16 / int8: bytes per round,
  the largest deviation of the final adapter from the lossless run's, test accuracy.
- ``scale``: the whole recipe (the default job: 15 rounds x 10 clients, ``tiny-small`` cut after 2 of 4 layers) and
  its unsplit twin (``fedavg``) on the same seeds: test accuracy (the same computation, so it must match after 150
  client-rounds of float arithmetic too), the device budget, and the wall time the exchanges cost; and the split
  run with fp16 and int8 activations and gradients (the compression trade-off on the final accuracy).
- ``ranks``: the rounds-vs-rank curve of the planner (``[rounds]`` of a scenario), measured: federated LoRA on
  ``tiny-small`` (split training is the same computation, so the curve is the split run's), ranks 1-32, evaluated every
  round on SST-2 **dev**, rounds to reach the target accuracy (chosen on dev; the test split is not used here).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import tomli_w
import tomllib

from _machine import machine_info, save_result
from fedpeft.planning.delay import (
    ModelDims,
    activation_bits,
    layer_backward_flops,
    layer_forward_flops,
    lora_params_per_layer,
)
from fedpeft.planning.rounds import fit_rounds
from seeds import run_one  # benchmarks/ is on sys.path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "fedsllm_sst2.toml"
TINY_LARGE = ModelDims(layers=8, hidden=256, intermediate=704, vocab=8192, heads=4, kv_heads=4)
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # the recipe's (+ embedding)
ONE_ROUND = ["model.name=tiny-large", "federation.rounds=1", "federation.fraction=0.3", "federation.eval_every=1"]


def unsplit_recipe(folder: Path) -> Path:
    """The recipe as plain ``fedavg`` (no ``[algorithm]`` table): the unsplit reference, the same computation."""
    raw = tomllib.loads(RECIPE.read_text())
    raw.pop("algorithm", None)
    raw["federation"] = {**raw["federation"], "algorithm": "fedavg"}
    out = folder / "fedsllm_sst2_unsplit.toml"
    out.write_text(tomli_w.dumps(raw))
    return out


def events(run: Path, kind: str) -> list[dict[str, Any]]:
    return [e for e in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if e["event"] == kind]


def summary(run: Path) -> dict[str, Any]:
    return json.loads((run / "summary.json").read_text())


def predicted_client_flops(shapes: list[list[int]], cut: int, rank: int, forwards: int) -> float:
    """The delay model's client FLOPs over the micro-batches ``shapes`` ([B, T] each): ``forwards`` forwards and one
    backward of layers [0, cut) per micro-batch."""
    lora = lora_params_per_layer(TINY_LARGE, rank, TARGETS)
    per_seq = lambda t: forwards * layer_forward_flops(TINY_LARGE, lora, t) + layer_backward_flops(TINY_LARGE, lora, t)  # noqa: E731
    return cut * sum(b * per_seq(t) for b, t in shapes)


def model_part(output_dir: str, log: Path | None = None) -> dict[str, Any]:
    variants: dict[str, list[str]] = {"fedavg": []}
    variants.update({f"cut{c}": [f"algorithm.cut={c}"] for c in (0, 2, 4, 6, 8)})
    variants["cut4_u"] = ["algorithm.cut=4", "algorithm.u_shaped=true"]
    rows: dict[str, Any] = {}
    if log is not None:  # the rows a previous invocation printed (one "name: {json}" line per run)
        for line in log.read_text().splitlines():
            name, _, rest = line.partition(": ")
            if name in variants and rest.startswith("{"):
                rows[name] = json.loads(rest)
    for name, extra in variants.items():
        if name in rows:
            continue
        recipe = unsplit_recipe(Path(output_dir)) if name == "fedavg" else RECIPE
        row = run_one(recipe, 0, ONE_ROUND + extra, output_dir)
        run = Path(row["run_dir"])
        s, rnd = summary(run), events(run, "round")[0]
        budget = s["device_budget"]
        clients = budget["per_client"]
        out = {
            "command": row["command"],
            "accuracy": s["final"].get("accuracy"),
            "client_flops_measured": statistics.fmean(c["flops"] for c in clients.values()),
            "client_seconds_measured": statistics.fmean(c["seconds"] for c in clients.values()),
            "params_held": budget["max"]["params_held"],
            "trainable_params": budget["max"]["trainable_params"],
            "bytes_by_kind": s["bytes_by_kind"],
            "server_seconds": rnd.get("server_seconds"),
            "run_wall_s": row["run_wall_s"],
        }
        if name != "fedavg":
            cut = 4 if name == "cut4_u" else int(name[3:])
            shapes = rnd["split_shapes"]
            n_clients = len(clients)
            act = s["bytes_by_kind"]["activations"]
            sent = act["up"] if name != "cut4_u" else act["up"] + act["down"]
            model_bytes = sum(activation_bits(b, t, TINY_LARGE.hidden, 4.0) for b, t in shapes) / 8
            if name == "cut4_u":
                model_bytes *= 2  # the middle's output comes down as well
            out.update(
                cut=cut,
                micro_batches=len(shapes),
                activation_bytes_measured=sent,
                activation_bytes_model=model_bytes,
                activation_bytes_ratio=sent / model_bytes,
                gradient_bytes_measured=s["bytes_by_kind"]["gradients"].get("down", 0)
                + s["bytes_by_kind"]["gradients"].get("up", 0),
                client_flops_model_ours=predicted_client_flops(shapes, cut, 8, 2) / n_clients,
                client_flops_model_keep_graph=predicted_client_flops(shapes, cut, 8, 1) / n_clients,
            )
        rows[name] = out
        print(f"{name}: {json.dumps({k: v for k, v in out.items() if k != 'bytes_by_kind'})}", flush=True)
    base = rows["fedavg"]
    rate = base["client_flops_measured"] / base["client_seconds_measured"]  # this machine's client FLOP/s
    for name, out in rows.items():
        if name != "fedavg":
            out.pop("client_flops_ratio", None)
            if out["client_flops_model_ours"] > 0:
                out["client_flops_ratio"] = out["client_flops_measured"] / out["client_flops_model_ours"]
            out["client_seconds_model"] = out["client_flops_model_ours"] / rate
            if out["client_seconds_model"] > 0:  # cut 0: no layer on the client, nothing to predict
                out["client_seconds_ratio"] = out["client_seconds_measured"] / out["client_seconds_model"]
    return {"calibrated_client_flops_per_s": rate, "rows": rows}


def compression_part(output_dir: str) -> dict[str, Any]:
    base = ["model.name=tiny-large", "federation.rounds=3", "federation.fraction=0.3", "algorithm.cut=4"]
    rows: dict[str, Any] = {}
    for codec in ("none", "fp16", "bf16", "int8"):
        extra = [] if codec == "none" else [f'comm.payloads={{activations="{codec}", gradients="{codec}"}}']
        row = run_one(RECIPE, 0, base + extra, output_dir)
        run = Path(row["run_dir"])
        s = summary(run)
        kinds = s["bytes_by_kind"]
        rows[codec] = {
            "command": row["command"],
            "run_dir": str(run),
            "accuracy": s["final"]["accuracy"],
            "activation_bytes_per_round": kinds["activations"]["up"] / 3,
            "gradient_bytes_per_round": kinds["gradients"]["down"] / 3,
            "run_wall_s": row["run_wall_s"],
        }
    from safetensors.torch import load_file

    exact = load_file(Path(rows["none"]["run_dir"]) / "adapter" / "adapter_model.safetensors")
    for row in rows.values():
        got = load_file(Path(row["run_dir"]) / "adapter" / "adapter_model.safetensors")
        row["max_adapter_deviation"] = max(float((got[k] - exact[k]).abs().max()) for k in exact)
        row["bytes_vs_lossless"] = row["activation_bytes_per_round"] / rows["none"]["activation_bytes_per_round"]
    return {"rows": rows}


def scale_part(seeds: list[int], output_dir: str) -> dict[str, Any]:
    """The whole recipe (15 rounds x 10 clients, tiny-small cut 2) and its unsplit twin on the same seeds."""
    rows = []
    for seed in seeds:
        row: dict[str, Any] = {"seed": seed}
        runs = {
            "unsplit": (unsplit_recipe(Path(output_dir)), []),
            "fedsllm": (RECIPE, []),
            **{
                f"fedsllm_{codec}": (RECIPE, [f'comm.payloads={{activations="{codec}", gradients="{codec}"}}'])
                for codec in ("fp16", "int8")
            },
        }
        for name, (recipe, extra) in runs.items():
            run = run_one(recipe, seed, extra, output_dir)
            s = summary(Path(run["run_dir"]))
            budget = s["device_budget"]["max"]
            row[name] = {
                "command": run["command"],
                "accuracy": s["final"]["accuracy"],
                "run_wall_s": run["run_wall_s"],
                "flops_per_round": budget["flops_per_round"],
                "seconds_per_round": budget["seconds_per_round"],
                "bytes_per_round": (budget["bytes_up"] + budget["bytes_down"]) / max(1, budget["rounds"]),
                "params_held": budget["params_held"],
                "trainable_params": budget["trainable_params"],
                "bytes_by_kind": s["bytes_by_kind"],
            }
        for name in runs:
            row[name]["accuracy_difference"] = row[name]["accuracy"] - row["unsplit"]["accuracy"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {"rows": rows}


def ranks_part(seeds: list[int], output_dir: str, target: float, ranks: list[int]) -> dict[str, Any]:
    base = ["data.eval_split=dev", "federation.eval_every=1"]
    recipe = unsplit_recipe(Path(output_dir))
    rows: dict[str, Any] = {}
    for rank in ranks:
        for seed in seeds:
            row = run_one(recipe, seed, [*base, f"adapter.r={rank}", f"adapter.alpha={2.0 * rank}"], output_dir)
            curve = [(e["round"], e["accuracy"]) for e in row["evals"]]
            reached = next((r for r, acc in curve if acc >= target), None)
            rows.setdefault(str(rank), []).append(
                {"seed": seed, "command": row["command"], "curve": curve, "rounds_to_target": reached}
            )
            print(f"rank {rank} seed {seed}: reached {target} at round {reached}; final {curve[-1][1]:.4f}", flush=True)
    points = [
        (int(r), statistics.fmean(x["rounds_to_target"] for x in runs))
        for r, runs in rows.items()
        if all(x["rounds_to_target"] is not None for x in runs)
    ]
    out: dict[str, Any] = {"target_accuracy": target, "split": "dev", "rows": rows, "points": points}
    if len(points) >= 3:
        model = fit_rounds([p[0] for p in points], [p[1] for p in points])
        out["fit"] = {"a": model.a, "b": model.b, "gamma": model.gamma, "rmse": model.rmse}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["model", "compression", "scale", "ranks"], required=True)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--ranks", nargs="+", type=int, default=[1, 2, 4, 8, 16, 32])
    ap.add_argument("--target", type=float, default=0.70, help="ranks: dev accuracy that counts as reached")
    ap.add_argument("--output-dir", default=str(ROOT / "runs" / "bench"))
    ap.add_argument("--rows-from", type=Path, help="model: reuse the rows a previous invocation printed to this log")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    import torch

    result: dict[str, Any] = {"machine": machine_info(torch.get_num_threads()), "part": args.part}
    if args.part == "model":
        result.update(model_part(args.output_dir, args.rows_from))
        if args.rows_from is not None:
            result["rows_from"] = str(args.rows_from)
    elif args.part == "compression":
        result.update(compression_part(args.output_dir))
    elif args.part == "scale":
        result.update(scale_part(args.seeds, args.output_dir))
    else:
        result.update(ranks_part(args.seeds, args.output_dir, args.target, args.ranks))
    save_result(args.out, result)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
