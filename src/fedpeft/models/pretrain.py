"""Pretrain the bundled tiny model family (tokenizer + Llama-style causal LMs).

This is the committed, reproducible recipe behind ``fedpeft/models/bundled/``. Nothing can be downloaded on the
machines fedpeft is developed and tested on, so we train our own small but real pretrained models:

1. collect unlabeled text: the public-domain corpus plus the TRAINING splits of the bundled datasets
   (SST-2 train sentences, QNLI train subset, RTE train, Dolly rows outside the held-out bucket); evaluation splits are
   never read;
2. train one byte-level BPE tokenizer on that text (shared by every size, as FedPT needs one vocabulary);
3. pack the token stream into fixed-length blocks, hold out every ``heldout_every``-th block for perplexity;
4. train each size with AdamW + warmup + cosine decay, bf16 autocast on CPU or CUDA;
5. save config + safetensors (bf16) + tokenizer files, loadable with ``AutoModelForCausalLM.from_pretrained(path)``,
   and a ``pretrain_stats.json`` per model that the model card quotes.

Run: ``python -m fedpeft.models.pretrain --data-dir ../shared/data --out src/fedpeft/models/bundled``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from fedpeft.data.splits import dolly_is_heldout

EOS = "<|endoftext|>"
PAD = "<|pad|>"


@dataclass(frozen=True)
class SizeSpec:
    """Architecture and optimisation budget of one bundled model size."""

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    steps: int
    lr: float
    batch_size: int = 32


SIZES: dict[str, SizeSpec] = {
    "tiny-small": SizeSpec("tiny-small", 128, 4, 4, 384, steps=500, lr=3e-3),
    "tiny-large": SizeSpec("tiny-large", 256, 8, 4, 704, steps=800, lr=2e-3),
}


def _read_tsv_columns(path: Path, columns: list[str]) -> list[str]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [" ".join(row[c].strip() for c in columns) for row in reader]


def collect_texts(data_dir: Path) -> list[str]:
    """Unlabeled training text, one document per entry, in a fixed order."""
    docs: list[str] = []
    corpus = data_dir / "corpus"
    for path in sorted(corpus.rglob("*.txt")):
        text = path.read_text(encoding="utf-8", errors="replace")
        # Books are long: split into paragraphs-ish chunks so every block mixes sources after shuffling.
        docs.extend(p.strip() for p in text.split("\n\n") if p.strip())
    glue = data_dir / "glue"
    docs.extend(_read_tsv_columns(glue / "sst2" / "train.tsv", ["sentence"]))
    docs.extend(_read_tsv_columns(glue / "qnli" / "train_subset.tsv", ["question", "sentence"]))
    docs.extend(_read_tsv_columns(glue / "rte" / "train.tsv", ["premise", "hypothesis"]))
    with (data_dir / "dolly15k" / "databricks-dolly-15k.jsonl").open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if dolly_is_heldout(row["instruction"]):
                continue
            docs.append("\n".join(x for x in (row["instruction"], row["context"], row["response"]) if x))
    return docs


def train_tokenizer(docs: list[str], vocab_size: int, out_dir: Path) -> None:
    """Train a byte-level BPE and save it as a Hugging Face fast tokenizer."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(docs, vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS, PAD])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token=EOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=PAD,
        model_max_length=512,
    )
    tok.save_pretrained(out_dir)


def pack_blocks(docs: list[str], tokenizer_dir: Path, block: int) -> torch.Tensor:
    """Tokenize every document, join with EOS, cut into [n_blocks, block] int64 tensor."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids: list[int] = []
    for enc in tok(docs, add_special_tokens=False)["input_ids"]:
        ids.extend(enc)
        ids.append(tok.eos_token_id)
    n = len(ids) // block
    return torch.tensor(ids[: n * block], dtype=torch.long).view(n, block)


def make_config(spec: SizeSpec, vocab_size: int, eos_id: int, pad_id: int):  # -> LlamaConfig
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        # Biases on attention and MLP projections make the selective family's BitFit meaningful on bundled models.
        attention_bias=True,
        mlp_bias=True,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )


@torch.no_grad()
def heldout_perplexity(model: torch.nn.Module, blocks: torch.Tensor, device: torch.device, bs: int = 32) -> float:
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(blocks), bs):
        x = blocks[i : i + bs].to(device)  # [b, T]
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(input_ids=x, labels=x).loss
        total += float(loss) * x.shape[0]
        count += x.shape[0]
    model.train()
    return math.exp(total / count)


def pretrain_one(
    spec: SizeSpec,
    train: torch.Tensor,
    heldout: torch.Tensor,
    tokenizer_dir: Path,
    out_dir: Path,
    seed: int,
    device: torch.device,
    log_every: int = 100,
    init_from: Path | None = None,
) -> dict[str, float | int | str]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    model: Any
    if init_from is not None:
        # Continued pretraining: start from an earlier checkpoint of this size (same tokenizer), in fp32.
        model = AutoModelForCausalLM.from_pretrained(init_from, dtype=torch.float32)
        model = model.to(device)
    else:
        config = make_config(spec, len(tok), tok.eos_token_id, tok.pad_token_id)
        torch.manual_seed(seed)  # weight init only; data order uses its own generator below
        model = AutoModelForCausalLM.from_config(config).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=spec.lr,
        betas=(0.9, 0.95),
    )
    warmup = max(1, spec.steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return spec.lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, spec.steps - warmup)
        return spec.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train), generator=gen)
    cursor = 0
    t0 = time.time()
    model.train()
    for step in range(spec.steps):
        if cursor + spec.batch_size > len(order):
            order = torch.randperm(len(train), generator=gen)
            cursor = 0
        x = train[order[cursor : cursor + spec.batch_size]].to(device)  # [B, T]
        cursor += spec.batch_size
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % log_every == 0 or step == spec.steps - 1:
            print(f"[{spec.name}] step {step}/{spec.steps} loss {loss.item():.3f} {time.time() - t0:.0f}s", flush=True)
    train_s = time.time() - t0
    ppl = heldout_perplexity(model, heldout, device)
    model = model.to(torch.bfloat16)  # bf16 storage halves the bytes committed to git
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    stats: dict[str, float | int | str] = {
        "name": spec.name,
        "parameters": n_params,
        "tokens_seen": spec.steps * spec.batch_size * train.shape[1],
        "train_seconds": round(train_s, 1),
        "heldout_perplexity": round(ppl, 2),
        "heldout_tokens": int(heldout.numel()),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "seed": seed,
        **({"continued_from": str(init_from)} if init_from is not None else {}),
        **{f"spec_{k}": v for k, v in asdict(spec).items() if k != "name"},
    }
    (out_dir / "pretrain_stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    print(json.dumps(stats), flush=True)
    return stats


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "bundled")
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--heldout-every", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None, help="override every size's step count (smoke runs)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None, help="override every size's peak learning rate")
    ap.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="continue pretraining this checkpoint folder (one size; its tokenizer is kept, not retrained)",
    )
    args = ap.parse_args(argv)
    if args.init_from is not None and len(args.sizes) != 1:
        ap.error("--init-from continues one model: pass exactly one --sizes")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    docs = collect_texts(args.data_dir)
    # The tokenizer is trained once into a scratch folder and saved again beside every model (self-contained dirs).
    tok_dir = Path(tempfile.mkdtemp(prefix="fedpeft-tok-"))
    t0 = time.time()
    if args.init_from is not None:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(args.init_from).save_pretrained(tok_dir)
    else:
        train_tokenizer(docs, args.vocab_size, tok_dir)
    blocks = pack_blocks(docs, tok_dir, args.block)  # [N, block]
    is_heldout = torch.arange(len(blocks)) % args.heldout_every == 0
    train, heldout = blocks[~is_heldout], blocks[is_heldout]
    print(
        f"{len(docs)} docs -> {blocks.numel()} tokens, {len(train)} train / {len(heldout)} held-out blocks "
        f"({time.time() - t0:.0f}s)",
        flush=True,
    )
    for name in args.sizes:
        spec = SIZES[name]
        if args.steps is not None:
            spec = SizeSpec(**{**asdict(spec), "steps": args.steps})
        if args.lr is not None:
            spec = SizeSpec(**{**asdict(spec), "lr": args.lr})
        out = args.out / name
        out.mkdir(parents=True, exist_ok=True)
        pretrain_one(spec, train, heldout, tok_dir, out, args.seed, device, init_from=args.init_from)


if __name__ == "__main__":
    main()
