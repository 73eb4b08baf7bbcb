"""Derive a small model from a large one: keep a few of its decoder layers, then distill it briefly into the large one.

FedPT needs a small and a large model with ONE vocabulary. The bundled pair (``tiny-small`` / ``tiny-large``) has
one; for a real pair, :class:`DerivedModel` cuts a small model out of a fetched one (``smollm2-135m``): the embedding,
the final norm and the LM head are the parent's, and decoder layer ``j`` of the child is the parent's layer
``layers[j]``. The cut model is then distilled (forward KL to the parent's next-token distribution at every position,
temperature 1) for ``steps`` AdamW steps on the public-domain corpus of the data directory (``corpus/*.txt``, never a
dataset split), every 20th block held out to report KL and perplexity before and after.

Deterministic: the blocks' order comes from a generator seeded by ``seed``, every weight from the parent, no dropout;
the source record keeps the thread count (float sums may differ across thread counts). Built on first use into the
user cache like a fetched model (``fedpeft models fetch NAME``), atomically.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from fedpeft.errors import ConfigError
from fedpeft.models.fetch import SOURCE_FILE, Log, _make_shareable, _versions, build_in_cache, cache_dir, fetch_command

__all__ = ["DerivedModel", "corpus_blocks", "cut_layers", "distill_kl"]


def cut_layers(parent: Any, layers: tuple[int, ...]) -> Any:
    """A copy of causal LM ``parent`` (a transformers ``*ForCausalLM``) with only its decoder ``layers`` (in that
    order); everything else shared."""
    import copy

    from transformers import AutoModelForCausalLM

    n = int(parent.config.num_hidden_layers)
    if not layers or any(not 0 <= i < n for i in layers) or len(set(layers)) != len(layers):
        raise ConfigError("layers", list(layers), f"distinct indices in [0, {n})")
    config = copy.deepcopy(parent.config)
    config.num_hidden_layers = len(layers)
    if getattr(config, "layer_types", None):  # per-layer attention kinds (sliding / full) follow their layers
        config.layer_types = [config.layer_types[i] for i in layers]
    child = AutoModelForCausalLM.from_config(config, dtype=next(parent.parameters()).dtype)
    prefix = "model.layers."
    state = {}
    for key, value in parent.state_dict().items():
        if key.startswith(prefix):
            index, rest = key[len(prefix) :].split(".", 1)
            if int(index) in layers:
                state[f"{prefix}{layers.index(int(index))}.{rest}"] = value
        else:
            state[key] = value
    missing, unexpected = child.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"cutting layers left missing={missing} unexpected={unexpected}")
    return child.eval()


def corpus_blocks(data_dir: Path, tokenizer: Any, block: int, max_blocks: int) -> torch.Tensor:
    """The public corpus (``corpus/**/*.txt`` in sorted order, paragraphs joined by EOS) as [n, block] token ids."""
    files = sorted((data_dir / "corpus").rglob("*.txt"))
    if not files:
        raise ConfigError("data_dir", str(data_dir), "a data directory with corpus/*.txt (set FEDPEFT_DATA_DIR)")
    ids: list[int] = []
    eos = tokenizer.eos_token_id
    for path in files:
        paragraphs = [p.strip() for p in path.read_text(encoding="utf-8", errors="replace").split("\n\n") if p.strip()]
        for enc in tokenizer(paragraphs, add_special_tokens=False)["input_ids"]:
            ids.extend(enc)
            ids.append(eos)
        if len(ids) >= block * max_blocks * 4:  # enough text to draw from; spread over several sources
            break
    n = min(len(ids) // block, max_blocks * 4)
    return torch.tensor(ids[: n * block], dtype=torch.long).view(n, block)


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(teacher || student) at temperature 1; inputs [B, T, V]."""
    log_q = F.log_softmax(student_logits.float(), -1).flatten(0, 1)
    log_p = F.log_softmax(teacher_logits.float(), -1).flatten(0, 1)
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)


@torch.no_grad()
def _heldout(student: torch.nn.Module, parent: torch.nn.Module, blocks: torch.Tensor, bs: int) -> dict[str, float]:
    kl, nll, count = 0.0, 0.0, 0
    for i in range(0, len(blocks), bs):
        x = blocks[i : i + bs]
        zs, zp = student(input_ids=x).logits, parent(input_ids=x).logits
        kl += float(distill_kl(zs, zp)) * x.shape[0] * x.shape[1]
        nll += float(F.cross_entropy(zs[:, :-1].flatten(0, 1).float(), x[:, 1:].flatten(), reduction="sum"))
        count += x.shape[0]
    tokens = count * blocks.shape[1]
    return {"kl": kl / tokens, "perplexity": math.exp(nll / (count * (blocks.shape[1] - 1)))}


@dataclass(frozen=True)
class DerivedModel:
    """A small model cut from ``parent`` (``layers`` kept) and distilled into it; a model short name's fetcher.

    Attributes
    ----------
    name, parent:
        Short names (the cache folder is ``<cache>/models/<name>``; the parent is fetched first if need be).
    layers:
        Parent decoder layers kept, in order.
    steps, batch_size, block, lr, seed, max_blocks:
        The distillation: AdamW steps (cosine decay, no warmup) of ``batch_size`` blocks of ``block`` tokens drawn
        without replacement from at most ``max_blocks`` training blocks of the corpus.
    """

    name: str
    parent: str
    layers: tuple[int, ...]
    steps: int = 200
    batch_size: int = 4
    block: int = 128
    lr: float = 3e-4
    seed: int = 0
    max_blocks: int = 2000
    description: str = field(default="", compare=False)

    def folder(self) -> Path:
        return cache_dir() / "models" / self.name

    def is_fetched(self) -> bool:
        return (self.folder() / "config.json").is_file() and (self.folder() / SOURCE_FILE).is_file()

    def state(self) -> str:
        if self.is_fetched():
            return f"built at {self.folder()}"
        return f"not built: run `{fetch_command(self.name)}` (derived from {self.parent}, minutes on a CPU)"

    def fetch(self, force: bool = False, log: Log = print, data_dir: Path | None = None) -> Path:
        """Build the model into the cache (once; ``force`` rebuilds); returns its folder."""

        def build(out: Path) -> None:
            self.build(out, log, data_dir)

        return build_in_cache(self.name, self.is_fetched, build, force, log)

    def build(self, out: Path, log: Log = print, data_dir: Path | None = None) -> dict[str, Any]:
        """Cut, distill and save into ``out``; returns the source record (also written as ``SOURCE_FILE``)."""
        from fedpeft.data.base import default_data_dir
        from fedpeft.models.hub import load_model, load_tokenizer

        t0 = time.time()
        data = data_dir or default_data_dir()
        if data is None:
            raise ConfigError("data_dir", None, "the data directory with corpus/ (set FEDPEFT_DATA_DIR)")
        parent: Any = load_model(self.parent).eval()
        parent.requires_grad_(False)
        tokenizer = load_tokenizer(self.parent)
        student = cut_layers(parent, self.layers)
        blocks = corpus_blocks(Path(data), tokenizer, self.block, self.max_blocks)
        gen = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(len(blocks), generator=gen)
        heldout = blocks[order[::20][:64]]  # every 20th block, at most 64, never trained on
        train = blocks[torch.cat([order[i::20] for i in range(1, 20)])][: self.max_blocks]
        cut = f"{self.parent} layers {list(self.layers)}"
        log(f"[{self.name}] {cut} -> distilling {self.steps} steps on {len(train)} blocks")
        before = _heldout(student, parent, heldout, self.batch_size)
        student.train()
        student.requires_grad_(True)
        opt = torch.optim.AdamW(student.parameters(), lr=self.lr, weight_decay=0.0)
        picks = torch.randperm(len(train), generator=gen).tolist()
        losses = []
        for step in range(self.steps):
            for group in opt.param_groups:
                group["lr"] = self.lr * 0.5 * (1 + math.cos(math.pi * step / self.steps))
            idx = [picks[(step * self.batch_size + j) % len(picks)] for j in range(self.batch_size)]
            x = train[idx]  # [B, block]
            with torch.no_grad():
                target = parent(input_ids=x).logits
            loss = distill_kl(student(input_ids=x).logits, target)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            if (step + 1) % 25 == 0:
                log(f"[{self.name}] step {step + 1}/{self.steps} KL {sum(losses[-25:]) / 25:.3f}")
        student.eval()
        after = _heldout(student, parent, heldout, self.batch_size)
        parent_ppl = _heldout(parent, parent, heldout, self.batch_size)["perplexity"]
        student.save_pretrained(out)
        tokenizer.save_pretrained(out)
        record = {
            "name": self.name,
            "derived_from": self.parent,
            "layers_kept": list(self.layers),
            "parent_layers": int(parent.config.num_hidden_layers),
            "parameters": sum(p.numel() for p in student.parameters()),
            "parent_parameters": sum(p.numel() for p in parent.parameters()),
            "distillation": {
                "steps": self.steps,
                "batch_size": self.batch_size,
                "block": self.block,
                "lr": self.lr,
                "seed": self.seed,
                "train_blocks": len(train),
                "heldout_blocks": len(heldout),
                "corpus": str(Path(data) / "corpus"),
                "loss_first_25": sum(losses[:25]) / max(1, len(losses[:25])),
                "loss_last_25": sum(losses[-25:]) / max(1, len(losses[-25:])),
            },
            "heldout_before": before,
            "heldout_after": after,
            "parent_heldout_perplexity": parent_ppl,
            "torch_threads": torch.get_num_threads(),
            "versions": _versions(),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "total_seconds": round(time.time() - t0, 1),
        }
        (out / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n")  # last: marks the folder complete
        _make_shareable(out)
        return record
