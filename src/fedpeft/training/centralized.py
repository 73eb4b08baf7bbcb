"""Centralized (single-party) PEFT fine-tuning job: the baseline every federated run is compared with.

Reads top to bottom: validate -> load model/tokenizer -> attach adapter -> load + encode data -> evaluate ->
train -> evaluate -> write the run directory (config, metrics, adapter in Hugging Face PEFT format, summary).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

import torch

from fedpeft.adapters import attach_adapter, count_trainable, save_adapter
from fedpeft.config import JobConfig
from fedpeft.data import DatasetSpec, collate, encode_dataset, label_word_ids
from fedpeft.models import load_model, load_tokenizer
from fedpeft.registry import DATASETS
from fedpeft.runs import RunDir
from fedpeft.training.evaluate import evaluate_classification, evaluate_generation, evaluate_lm
from fedpeft.training.loop import train


@dataclass
class Task:
    """Everything needed to train and score one dataset with one tokenizer."""

    spec: DatasetSpec
    tokenizer: Any
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    eval_raw: Any  # the un-encoded eval split (prompts and references for generation)
    word_ids: torch.Tensor | None
    collate: Any
    eval_mode: str
    template: str


def prepare_task(cfg: JobConfig, tokenizer: Any) -> Task:
    """Load the configured dataset splits and encode them with the dataset's template."""
    spec = DATASETS.get(cfg.data.dataset, "data.dataset")
    template = cfg.data.template or spec.template
    train_ds = spec.load_split(cfg.data.train_split, cfg.data.data_dir, cfg.data.train_limit)
    eval_ds = spec.load_split(cfg.data.eval_split, cfg.data.data_dir, cfg.data.eval_limit)
    word_ids = None
    if spec.task_type == "classification":
        word_ids = torch.tensor(label_word_ids(tokenizer, spec.label_words))
    mode = cfg.eval.mode
    if mode == "auto":
        mode = "label_words" if word_ids is not None else "generation"
    return Task(
        spec=spec,
        tokenizer=tokenizer,
        train=list(encode_dataset(train_ds, tokenizer, template, cfg.data.max_length)),
        eval=list(encode_dataset(eval_ds, tokenizer, template, cfg.data.max_length)),
        eval_raw=eval_ds,
        word_ids=word_ids,
        collate=functools.partial(collate, pad_id=tokenizer.pad_token_id),
        eval_mode=mode,
        template=template,
    )


def evaluate_task(
    model: torch.nn.Module, task: Task, batch_size: int = 64, max_new_tokens: int = 32
) -> dict[str, float]:
    """Score ``model`` on the task's eval split with the configured mode."""
    if task.eval_mode == "label_words":
        assert task.word_ids is not None
        return evaluate_classification(model, task.eval, task.collate, task.word_ids, batch_size)
    if task.eval_mode == "perplexity":
        return evaluate_lm(model, task.eval, task.collate, batch_size)
    from fedpeft.data import build_prompt

    pairs = [build_prompt(row, task.template) for row in task.eval_raw]
    return evaluate_generation(
        model, task.tokenizer, [p for p, _ in pairs], [r.strip() for _, r in pairs], max_new_tokens, batch_size
    )


def run_centralized(cfg: JobConfig, quiet: bool = False) -> RunDir:
    """Fine-tune ``cfg.adapter`` on ``cfg.data`` and write a run directory; returns it."""
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    run = RunDir.create(cfg.output_dir, cfg.name)
    run.save_config(cfg)

    tokenizer = load_tokenizer(cfg.model.name)
    model = load_model(cfg.model.name, cfg.model.dtype, cfg.model.device)
    model = attach_adapter(model, cfg.adapter)
    size = count_trainable(model)
    task = prepare_task(cfg, tokenizer)
    run.log(
        "setup",
        trainable_params=size.params,
        trainable_bytes=size.bytes,
        total_params=size.total_params,
        train_examples=len(task.train),
        eval_examples=len(task.eval),
    )

    before = evaluate_task(model, task, cfg.eval.batch_size, cfg.eval.max_new_tokens)
    run.log("eval", stage="before", **before)
    bar = tqdm(total=cfg.train.steps, desc="train", disable=quiet, unit="step")

    def on_step(step: int, loss: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}")
        if step % 10 == 0:
            run.log("train_step", step=step, loss=loss)

    result = train(model, task.train, cfg.train, task.collate, word_ids=task.word_ids, on_step=on_step)
    bar.close()
    after = evaluate_task(model, task, cfg.eval.batch_size, cfg.eval.max_new_tokens)
    run.log("eval", stage="after", **after)
    save_adapter(model, run.path / "adapter")
    summary = {
        "algorithm": "centralized",
        "model": cfg.model.name,
        "dataset": cfg.data.dataset,
        "adapter": cfg.adapter.method,
        "trainable_params": size.params,
        "steps": result.steps,
        "train_seconds": round(result.seconds, 2),
        "before": before,
        "final": after,
        "wall_s": round(time.perf_counter() - t_start, 2),
    }
    run.save_summary(summary)
    return run
