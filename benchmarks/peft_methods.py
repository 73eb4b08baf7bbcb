"""Every registered PEFT method on one bundled model: trainable parameters, bytes per update, step time vs LoRA.

All methods are timed in ONE process, interleaved round-robin over several repeats (these machines are noisy), on
the same fixed SST-2 batch; the figure reported is each method's median step time divided by LoRA's.

    python benchmarks/peft_methods.py [--model tiny-large] [--repeats 5] [--steps 3]

Writes benchmarks/results/peft_methods.json and prints a Markdown table (pasted into docs/results.md).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from pathlib import Path

import torch

import fedpeft  # noqa: F401  (registers every method)
from _machine import machine_info, save_result
from fedpeft.adapters import AdapterConfig, attach_adapter, count_trainable
from fedpeft.data import collate, encode_dataset, label_word_ids
from fedpeft.errors import UnsupportedModelError
from fedpeft.models import load_model, load_tokenizer
from fedpeft.registry import DATASETS, PEFT_METHODS
from fedpeft.training.loop import TrainConfig, train

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-large")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="optimizer steps per timing sample")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    machine = machine_info(args.threads)

    tok = load_tokenizer(args.model)
    spec = DATASETS.get("sst2")
    data = list(encode_dataset(spec.load_split("train", limit=args.batch_size * args.steps), tok, spec.template, 64))
    word_ids = torch.tensor(label_word_ids(tok, spec.label_words))
    coll = functools.partial(collate, pad_id=tok.pad_token_id)
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=1e-3, loss="label_words")

    # Methods that need settings beyond the defaults: AdaLoRA's rank budget spans every step it will take here.
    # `named` needs a subset: the value projections (weights and biases) of every layer.
    extra: dict[str, dict[str, object]] = {
        "adalora": {"options": {"total_step": args.steps * (args.repeats + 1)}},
        "named": {"module_names": [r"self_attn\.v_proj\."]},
    }
    models: dict[str, torch.nn.Module] = {}
    rows: dict[str, dict[str, object]] = {}
    for name in PEFT_METHODS.names():
        base = load_model(args.model)
        try:
            model = attach_adapter(base, AdapterConfig(method=name, **extra.get(name, {})))  # type: ignore[arg-type]
        except UnsupportedModelError as exc:
            rows[name] = {"method": name, "family": PEFT_METHODS.get(name).family, "skipped": str(exc)}
            continue
        size = count_trainable(model)
        models[name] = model
        rows[name] = {
            "method": name,
            "family": PEFT_METHODS.get(name).family,
            "trainable_params": size.params,
            "bytes_per_update": size.bytes,
            "fraction_of_model": size.fraction,
            "times": [],
        }
        train(model, data, cfg, coll, word_ids=word_ids)  # warm-up (allocations, kernels)

    for _ in range(args.repeats):  # round-robin: every method sees the same machine conditions
        for name, model in models.items():
            t0 = time.perf_counter()
            train(model, data, cfg, coll, word_ids=word_ids)
            rows[name]["times"].append((time.perf_counter() - t0) / args.steps)  # type: ignore[union-attr]

    lora = statistics.median(rows["lora"]["times"])  # type: ignore[arg-type]
    for row in rows.values():
        if "times" in row:
            row["step_s"] = statistics.median(row.pop("times"))  # type: ignore[arg-type]
            row["step_time_vs_lora"] = row["step_s"] / lora  # type: ignore[operator]

    out = {
        "machine": machine,
        "model": args.model,
        "batch_size": args.batch_size,
        "steps_per_repeat": args.steps,
        "threads": args.threads,
        "repeats": args.repeats,
        "seeds": "AdapterConfig / TrainConfig defaults (one fixed SST-2 batch; timings, not accuracy)",
        "torch": torch.__version__,
        "methods": list(rows.values()),
    }
    RESULTS.mkdir(exist_ok=True)
    save_result(RESULTS / "peft_methods.json", out)
    print(f"model {args.model}, batch {args.batch_size}, {args.threads} threads, median of {args.repeats}\n")
    print("| method | family | trainable params | % of model | bytes per update | step time vs LoRA |")
    print("|---|---|---:|---:|---:|---:|")
    for r in out["methods"]:
        if "skipped" in r:
            print(f"| {r['method']} | {r['family']} | n/a | n/a | n/a | n/a ({r['skipped']}) |")
        else:
            print(
                f"| {r['method']} | {r['family']} | {r['trainable_params']:,} | {100 * r['fraction_of_model']:.2f} "
                f"| {r['bytes_per_update']:,} | {r['step_time_vs_lora']:.2f} |"
            )


if __name__ == "__main__":
    main()
