# ruff: noqa: E501  (the Markdown table rows below are long on purpose)
"""Render docs/model_card.md from the bundled models' pretrain_stats.json (so the card always matches the files).

python benchmarks/model_card.py
"""

from __future__ import annotations

import json
from pathlib import Path

from fedpeft.models import BUNDLED_DIR
from fedpeft.models.pretrain import SIZES

ROOT = Path(__file__).resolve().parents[1]

HEADER = """# Model card: the bundled tiny model family

fedpeft ships two small **real pretrained** causal language models so that tests, benchmarks and the default job run
offline. They are research fixtures for federated fine-tuning experiments on CPUs, not general-purpose assistants.

| | |
|---|---|
| architecture | Llama (RMSNorm, SwiGLU MLP, rotary positions, tied input/output embeddings), biases on attention and MLP projections (so BitFit applies) |
| tokenizer | one byte-level BPE, 8,192 entries (incl. `<\\|endoftext\\|>` = BOS/EOS and `<\\|pad\\|>`), trained on the same text; identical in both folders |
| format | Hugging Face: `config.json`, `model.safetensors` (bf16), `tokenizer.json`; load with `AutoModelForCausalLM.from_pretrained(path)` |
| context | trained on 128-token blocks; `max_position_embeddings` 512 |
| license | Apache-2.0 (weights); the training text is public domain or under the licenses in ../shared/data/MANIFEST.md |
| made by | `python -m fedpeft.models.pretrain --data-dir ../shared/data --out src/fedpeft/models/bundled` (seed 0) |

## Training data (unlabeled text only, never evaluation splits)

- public-domain corpus: 13 Gutenberg books, 55 inaugural and 66 State of the Union addresses, tiny Shakespeare
  (split into paragraphs);
- SST-2 train sentences; QNLI train-subset questions and sentences; RTE train premises and hypotheses (labels dropped);
- Dolly-15K instruction + context + response for rows outside the held-out bucket (`fedpeft.data.splits.dolly_is_heldout`).

All documents are tokenized, joined with EOS and cut into 128-token blocks; every 50th block is held out for perplexity
(never trained on). Optimiser: AdamW (betas 0.9/0.95, weight decay 0.1 on matrices), 5% warmup then cosine decay to
10% of the peak learning rate, gradient clipping at 1.0, batch 32 blocks, bf16 autocast.

## Sizes and figures
"""


def main() -> None:
    rows = []
    for name in SIZES:
        stats = json.loads((BUNDLED_DIR / name / "pretrain_stats.json").read_text())
        rows.append(
            f"| `{name}` | {stats['parameters']:,} | {stats['spec_hidden_size']} | {stats['spec_num_layers']} "
            f"| {stats['spec_num_heads']} | {stats['spec_intermediate_size']} | {stats['spec_steps']} "
            f"| {stats['spec_lr']:g} | {stats['tokens_seen']:,} | {stats['train_seconds'] / 60:.1f} min "
            f"| {stats['heldout_perplexity']:.1f} |"
        )
    table = (
        "| model | parameters | hidden | layers | heads | MLP | steps | peak lr | tokens seen | training time"
        " | held-out perplexity |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n" + "\n".join(rows)
    )
    footer = (
        "\n\nTraining time is wall-clock on a 2-core CPU machine (torch 2.13, 2 threads) that was also running other"
        " work, so it is an upper bound. Held-out perplexity is measured on the same "
        f"{stats['heldout_tokens']:,} held-out tokens for both sizes.\n\n"
        "Fine-tuning figures (SST-2 with LoRA, every PEFT method) are in [results.md](results.md).\n"
    )
    out = ROOT / "docs" / "model_card.md"
    out.write_text(HEADER + "\n" + table + footer)
    print(out.read_text())


if __name__ == "__main__":
    main()
