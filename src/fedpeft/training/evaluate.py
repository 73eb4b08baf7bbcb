"""Evaluation over encoded examples: label-word accuracy, response perplexity, batched generation, text metrics."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from fedpeft.data.templates import stop_token_ids
from fedpeft.training.loop import autocast_context, forward_logits, label_scores
from fedpeft.training.metrics import accuracy, exact_match, perplexity, rouge_l

Collate = Callable[[Sequence[Mapping[str, Any]]], dict[str, torch.Tensor]]


def _batches(examples: Sequence[Mapping[str, Any]], batch_size: int, collate: Collate, device: torch.device):
    for i in range(0, len(examples), batch_size):
        batch = collate(examples[i : i + batch_size])
        yield {k: v.to(device) for k, v in batch.items()}


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def predict_labels(
    model: torch.nn.Module,
    examples: Sequence[Mapping[str, Any]],
    collate: Collate,
    word_ids: torch.Tensor | None,
    batch_size: int = 64,
    precision: str = "auto",
) -> list[int]:
    """Class index per example by label-word scoring (argmax over the label words' next-token logits); without
    ``word_ids`` each example's own ``choices`` are scored."""
    model.eval()
    device = _device(model)
    preds: list[int] = []
    for batch in _batches(examples, batch_size, collate, device):
        with autocast_context(device, precision):
            scores = label_scores(model, batch, word_ids)  # [B, n_labels]
        preds.extend(scores.argmax(-1).tolist())
    return preds


def summarize_by_task(scores: Sequence[float], tasks: Sequence[str], name: str) -> dict[str, float]:
    """Mean per-example score as ``{name: ...}``; with several distinct tasks also ``{name}_{task}`` for each and
    ``name`` = their unweighted mean (macro average)."""
    if len(scores) != len(tasks) or not scores:
        raise ValueError("summarize_by_task needs equally many (>0) scores and task names")
    groups: dict[str, list[float]] = {}
    for score, task in zip(scores, tasks, strict=True):
        groups.setdefault(task, []).append(float(score))
    if len(groups) == 1:
        return {name: sum(scores) / len(scores)}
    per_task = {f"{name}_{t}": sum(v) / len(v) for t, v in sorted(groups.items())}
    return {name: sum(per_task.values()) / len(per_task), **per_task}


def evaluate_classification(
    model: torch.nn.Module,
    examples: Sequence[Mapping[str, Any]],
    collate: Collate,
    word_ids: torch.Tensor | None,
    batch_size: int = 64,
) -> dict[str, float]:
    """``{"accuracy": ...}`` by label-word scoring, plus the fraction predicted as each class (shows label bias).
    Without ``word_ids`` (a multi-task mix) each example's ``choices`` are scored and only accuracy is returned."""
    preds = predict_labels(model, examples, collate, word_ids, batch_size)
    labels = [int(e["label"]) for e in examples]
    out = {"accuracy": accuracy(preds, labels)}
    for c in range(len(word_ids) if word_ids is not None else 0):
        out[f"pred_frac_{c}"] = sum(p == c for p in preds) / len(preds)
    return out


@torch.no_grad()
def evaluate_lm(
    model: torch.nn.Module, examples: Sequence[Mapping[str, Any]], collate: Collate, batch_size: int = 32
) -> dict[str, float]:
    """Token-level loss and perplexity on response tokens (labels != -100)."""
    model.eval()
    device = _device(model)
    nll, count = 0.0, 0
    for batch in _batches(examples, batch_size, collate, device):
        logits = forward_logits(model, batch)  # [B, T, V]
        shift_logits = logits[:, :-1].float()
        shift_labels = batch["labels"][:, 1:]
        nll += float(F.cross_entropy(shift_logits.transpose(1, 2), shift_labels, ignore_index=-100, reduction="sum"))
        count += int((shift_labels != -100).sum())
    return {"loss": nll / max(count, 1), "perplexity": perplexity(nll, count)}


def _until_stop(ids: list[int], stops: Sequence[int]) -> list[int]:
    """``ids`` up to (not including) the first stop token."""
    cut = next((i for i, t in enumerate(ids) if t in stops), len(ids))
    return ids[:cut]


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int = 32,
    batch_size: int = 16,
    max_prompt_tokens: int = 384,
) -> list[str]:
    """Greedy batched generation; returns only the new text for each prompt.

    Prompts are left-padded (and left-truncated to ``max_prompt_tokens``) so every sequence ends where generation
    starts. Generation stops at EOS and at the chat template's end-of-turn token (e.g. ``<|im_end|>``, see
    :func:`fedpeft.data.templates.stop_token_ids`); the text is cut before the first of them.
    """
    model.eval()
    device = _device(model)
    stops = stop_token_ids(tokenizer)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    outputs: list[str] = []
    try:
        for i in range(0, len(prompts), batch_size):
            enc = tokenizer(
                list(prompts[i : i + batch_size]), return_tensors="pt", padding=True, add_special_tokens=False
            )
            ids = enc["input_ids"][:, -max_prompt_tokens:].to(device)  # [B, T]
            mask = enc["attention_mask"][:, -max_prompt_tokens:].to(device)
            gen = model.generate(  # type: ignore[operator]
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=stops or None,
            )
            new = [_until_stop(row, stops) for row in gen[:, ids.shape[1] :].tolist()]
            outputs.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
    return [o.strip() for o in outputs]


def evaluate_generation(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    references: Sequence[str],
    max_new_tokens: int = 32,
    batch_size: int = 16,
) -> dict[str, float]:
    """Rouge-L and exact match of greedy generations against references (also classification-as-generation)."""
    preds = generate(model, tokenizer, prompts, max_new_tokens, batch_size)
    return {"rouge_l": rouge_l(preds, references), "exact_match": exact_match(preds, references)}
