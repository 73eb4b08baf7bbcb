"""What an honest-but-curious server reads off one client's upload: the tokens it trained on, for every PEFT method
and, on the default job's adapter, under each defence.

One client's round of the default job (`recipes/demo.toml`: `tiny-small`, 10 steps of batch 16 of SST-2, label-word
loss) is trained with each registered PEFT method at its defaults (plus `lora_emb` = the default job's LoRA with
`embed_tokens`). The upload is the update (trained - received), as the FedAvg client sends it. The client's true
token set is every id its training forward passes saw (padding excluded). The probe (`fedpeft.privacy.audit`)
reads the tokens whose per-token slices of the update are non-zero; under noise it ranks slices by norm and takes
as many as the client really used (an upper bound on what a threshold could do). Defences on `lora_emb`: uplink
compression (int8, int4, top-k 10% as decoded by the server), and secure aggregation of a round of 10 such
clients (the server sees only the sum: what it reads is the union; per client it cannot tell which tokens are
whose, measured as the precision of the union against each client's own set).

    python benchmarks/leakage.py [--clients 10] [--seed 0]

Writes benchmarks/results/leakage.json and prints the Markdown table of docs/results.md.
"""

from __future__ import annotations

import argparse
import functools
import statistics
from pathlib import Path
from typing import Any

import torch

import fedpeft  # noqa: F401  (registers every method)
from _machine import machine_info, save_result
from fedpeft.adapters import AdapterConfig, adapter_state, attach_adapter, load_adapter_state
from fedpeft.comm.codec import decode_state, encode_state
from fedpeft.comm.compression import make_compressor
from fedpeft.data import collate, encode_dataset, label_word_ids
from fedpeft.errors import UnsupportedModelError
from fedpeft.models import load_model, load_tokenizer
from fedpeft.privacy.audit import per_token_axes, precision_recall, recovered_tokens, top_tokens
from fedpeft.registry import DATASETS, PEFT_METHODS
from fedpeft.training.loop import TrainConfig, train

RESULTS = Path(__file__).parent / "results"
DEMO_TARGETS = ["embed_tokens", "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def client_round(model: torch.nn.Module, examples: list[Any], cfg: TrainConfig, coll: Any, word_ids: Any, pad: int):
    """Train one client's round; return (its update, the token ids its forward passes saw)."""
    before = {k: v.detach().clone() for k, v in adapter_state(model).items()}
    seen: set[int] = set()
    hook = model.get_input_embeddings().register_forward_pre_hook(
        lambda m, args: seen.update(args[0].flatten().tolist())
    )
    try:
        train(model, examples, cfg, coll, word_ids=word_ids)
    finally:
        hook.remove()
    after = adapter_state(model)
    return {k: after[k].detach() - before[k] for k in before}, seen - {pad}


def probe(update: dict[str, torch.Tensor], true: set[int], vocab: int) -> dict[str, Any]:
    axes = per_token_axes(update, vocab)
    exact = recovered_tokens(update, axes, vocab)
    ranked = top_tokens(update, axes, vocab, len(true))
    p, r = precision_recall(exact, true)
    pr, rr = precision_recall(ranked, true)
    return {
        "per_token_tensors": len(axes),
        "true_tokens": len(true),
        "read_back": len(exact),
        "precision": p,
        "recall": r,
        "ranked_precision": pr if axes else 0.0,
        "ranked_recall": rr if axes else 0.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-small")
    ap.add_argument("--clients", type=int, default=10, help="clients summed under secure aggregation")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    machine = machine_info(args.threads)
    tok = load_tokenizer(args.model)
    spec = DATASETS.get("sst2")
    per_client = args.steps * args.batch_size
    rows_all = list(encode_dataset(spec.load_split("train", limit=per_client * args.clients), tok, spec.template, 64))
    shards = [rows_all[i * per_client : (i + 1) * per_client] for i in range(args.clients)]
    word_ids = torch.tensor(label_word_ids(tok, spec.label_words))
    coll = functools.partial(collate, pad_id=tok.pad_token_id)
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=4e-3, loss="label_words", seed=args.seed)
    vocab = len(tok)

    extra: dict[str, dict[str, Any]] = {
        "adalora": {"options": {"total_step": args.steps}},
        "named": {"module_names": [r"self_attn\.v_proj\."]},
    }
    methods: dict[str, AdapterConfig] = {}
    for name in PEFT_METHODS.names():
        methods[name] = AdapterConfig(method=name, **extra.get(name, {}))  # type: ignore[arg-type]
    methods["lora_emb"] = AdapterConfig(method="lora", r=8, alpha=16.0, target_modules=DEMO_TARGETS)

    rows: list[dict[str, Any]] = []
    emb_updates: list[tuple[dict[str, torch.Tensor], set[int]]] = []
    for name, acfg in methods.items():
        try:
            model = attach_adapter(load_model(args.model), acfg)
        except UnsupportedModelError as exc:
            rows.append({"method": name, "skipped": str(exc)})
            continue
        fam = PEFT_METHODS.get("lora" if name == "lora_emb" else name).family
        if name == "lora_emb":
            initial = {k: v.detach().clone() for k, v in adapter_state(model).items()}
            for shard in shards:  # every client starts from the same received adapter, as in one FedAvg round
                load_adapter_state(model, initial)
                emb_updates.append(client_round(model, shard, cfg, coll, word_ids, tok.pad_token_id))
            update, true = emb_updates[0]
        else:
            update, true = client_round(model, shards[0], cfg, coll, word_ids, tok.pad_token_id)
        rows.append({"method": name, "family": fam, "defence": "none (in the clear)", **probe(update, true, vocab)})
        print(f"{name}: {rows[-1]}", flush=True)

    # defences on the default job's adapter
    update, true = emb_updates[0]
    for comp in ("int8", "int4", "topk"):
        opts = {"ratio": 0.1, "error_feedback": False} if comp == "topk" else {}
        seen_by_server = decode_state(encode_state(update, make_compressor(comp, **opts)))
        label = f"uplink {comp}" + (" (10%)" if comp == "topk" else "")
        row = probe(seen_by_server, true, vocab)
        rows.append({"method": "lora_emb", "family": "reparameterized", "defence": label, **row})
    summed = {k: sum(u[k] for u, _ in emb_updates) for k in update}  # what SecAgg's server unmasks
    union = set().union(*(t for _, t in emb_updates))
    per_client = [probe(summed, t, vocab) for _, t in emb_updates]
    axes = per_token_axes(summed, vocab)
    rows.append(
        {
            "method": "lora_emb",
            "family": "reparameterized",
            "defence": f"secure aggregation ({args.clients} clients: the sum)",
            "per_token_tensors": len(axes),
            "true_tokens": statistics.mean(len(t) for _, t in emb_updates),
            "read_back": len(recovered_tokens(summed, axes, vocab)),
            "precision": statistics.mean(r["precision"] for r in per_client),
            "recall": statistics.mean(r["recall"] for r in per_client),
            "union_tokens": len(union),
            "union_recall": precision_recall(recovered_tokens(summed, axes, vocab), union)[1],
            "note": "per-client precision = its share of the union; the sum says nothing of who used which token",
        }
    )
    out = {
        "machine": machine,
        "model": args.model,
        "seed": args.seed,
        "client_round": {"steps": args.steps, "batch_size": args.batch_size, "lr": 4e-3, "loss": "label_words"},
        "clients": args.clients,
        "vocab": vocab,
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    save_result(RESULTS / "leakage.json", out)
    print("\n| method | family | defence | tokens the client used | read back | precision | recall |")
    print("|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        if "skipped" in r:
            print(f"| {r['method']} | | | skipped: {r['skipped'][:60]} | | | |")
            continue
        print(
            f"| {r['method']} | {r['family']} | {r['defence']} | {r['true_tokens']:.0f} | {r['read_back']} | "
            f"{r['precision']:.3f} | {r['recall']:.3f} |"
        )


if __name__ == "__main__":
    main()
