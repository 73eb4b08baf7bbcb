"""Centralized (single-party) PEFT fine-tuning job: the baseline every federated run is compared with.

Reads top to bottom: validate -> load model/tokenizer -> attach adapter -> load + encode data -> evaluate ->
train -> evaluate -> write the run directory (config, metrics, adapter in Hugging Face PEFT format, summary).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import datasets
import torch

from fedpeft.adapters import attach_adapter, count_trainable, save_adapter
from fedpeft.config import JobConfig
from fedpeft.data import DatasetSpec, collate, encode_dataset, label_word_ids, subsample
from fedpeft.data.base import column_values
from fedpeft.data.splits import heldout_rows
from fedpeft.data.templates import choose_template
from fedpeft.errors import ConfigError
from fedpeft.models import load_model, load_tokenizer
from fedpeft.registry import DATASETS
from fedpeft.runs import RunDir
from fedpeft.training.evaluate import evaluate_lm, generate, predict_labels, summarize_by_task
from fedpeft.training.loop import train
from fedpeft.training.metrics import exact_match_scores, rouge_l_scores


@dataclass
class Task:
    """Everything needed to train and score one dataset (or a ``+`` mix of them) with one tokenizer."""

    specs: list[DatasetSpec]  # one per task of a mix, else one
    tokenizer: Any
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    eval_raw: Any  # the un-encoded eval split (prompts and references for generation)
    word_ids: torch.Tensor | None  # the dataset's label words; None for a mix (each example carries "choices")
    collate: Any
    eval_mode: str
    template: str


#: Loader errors of a recipe's data, reported under the recipe's field: loader argument -> config field (per role).
_FIELD_NAMES: dict[str, dict[str, str]] = {
    "train": {"split": "data.train_split", "fields": "data.fields", "columns": "data.fields"},
    "eval": {"split": "data.eval_split", "fields": "data.fields", "columns": "data.fields"},
}


@dataclass
class RawSplits:
    """The un-encoded train and eval examples of a single dataset, and where the eval examples came from."""

    train: datasets.Dataset
    eval: datasets.Dataset
    note: dict[str, Any]  # files, formats, counts, the held-out share: for the run's ``data`` event and a log line


def _load_role(cfg: JobConfig, spec: DatasetSpec, role: Literal["train", "eval"], limit: int | None) -> Any:
    """One split through the loader with the recipe's options; loader errors renamed to the recipe's fields."""
    data = cfg.data
    split = data.train_split if role == "train" or data.uses_heldout else data.eval_split
    names = {**_FIELD_NAMES[role], **{o: f"data.options.{o}" for o in data.options}}
    if spec.file_option is not None:
        names[spec.file_option] = "data.train_file" if role == "train" or data.eval_file is None else "data.eval_file"
    try:
        return spec.load_split(split, data.data_dir, limit, **data.loader_options(role))
    except ConfigError as exc:
        raise (exc.renamed(names[exc.field]) if exc.field in names else exc) from None


def _subset(cfg: JobConfig, spec: DatasetSpec, raw: Any, split: str) -> Any:
    keep = cfg.data.task_subset
    if keep is None:
        return raw
    # A mix's task names are its datasets (checked with the config); a dataset's are the ones its rows carry.
    present = sorted(set(raw["task"]))
    unknown = sorted(set(keep) - set(present)) if len(cfg.data.tasks) == 1 else []
    if unknown:
        raise ConfigError("data.task_subset", keep, f"task names of {spec.name}'s {split} split: {present}")
    return raw.filter(lambda ex: ex["task"] in keep)


def raw_splits(cfg: JobConfig, spec: DatasetSpec) -> RawSplits:
    """Load the train and eval examples of a single dataset, without a tokenizer (so bad data fails before any
    model is loaded): the configured splits, or, for a train file without an eval file, a seeded held-out share of
    each task of it for evaluation and the rest for training (disjoint rows; the limits apply afterwards)."""
    data = cfg.data
    note: dict[str, Any] = {"dataset": spec.name}
    if data.uses_heldout:
        full = _load_role(cfg, spec, "train", None)
        train_rows, eval_rows = heldout_rows(column_values(full, "task"), data.heldout_fraction, data.heldout_seed)
        if not eval_rows:
            raise ConfigError("data.eval_file", None, f"an eval file: {len(full)} rows leave nothing to hold out")
        train = subsample(full.select(train_rows), data.train_limit)
        held = subsample(full.select(eval_rows), data.eval_limit)
        note["heldout"] = {"fraction": data.heldout_fraction, "seed": data.heldout_seed, "of_rows": len(full)}
    else:
        train = _load_role(cfg, spec, "train", data.train_limit)
        held = _load_role(cfg, spec, "eval", data.eval_limit)
    train, held = _subset(cfg, spec, train, data.train_split), _subset(cfg, spec, held, data.eval_split)
    for name in ("train_file", "eval_file"):
        if getattr(data, name) is not None:
            note[name] = str(Path(getattr(data, name)).absolute())
    note.update(train_examples=len(train), eval_examples=len(held), tasks=sorted(set(column_values(train, "task"))))
    return RawSplits(train, held, note)


def check_data(cfg: JobConfig) -> RawSplits | None:
    """Pre-flight of a job's data, before a run directory or model exists: a single dataset's splits are loaded
    (a bad file raises DataFormatError naming file, line and field); a mix of built-in corpora is not (None)."""
    if len(cfg.data.tasks) > 1:
        return None
    return raw_splits(cfg, DATASETS.get(cfg.data.tasks[0], "data.dataset"))


def describe_data(note: dict[str, Any]) -> str:
    """One line saying what a job trains and evaluates on (printed and logged before the run starts)."""
    tasks = note["tasks"]
    text = f"data: {note['train_examples']} train / {note['eval_examples']} eval examples, {len(tasks)} task(s)"
    held = note.get("heldout")
    if held is not None:
        text += (
            f"; no data.eval_file, so evaluation uses a held-out {held['fraction']:.0%} of each task of "
            f"{note['train_file']} (data.heldout_fraction, seed data.heldout_seed={held['seed']}) and training the rest"
        )
    return text


def _encode_split(cfg: JobConfig, tokenizer: Any, spec: DatasetSpec, template: str, split: str, limit: int | None):
    raw = spec.load_split(split, cfg.data.data_dir, limit, **cfg.data.options)
    raw = _subset(cfg, spec, raw, split)
    return raw, list(encode_dataset(raw, tokenizer, template, cfg.data.max_length))


def prepare_task(cfg: JobConfig, tokenizer: Any) -> Task:
    """Load the configured dataset splits and encode them with the dataset's template.

    A mix (``sst2+qnli+rte``) encodes each task with its own template and stores each example's label-word ids
    as ``choices`` (tasks differ in their label words); the train and eval lists are the tasks one after another.
    """
    specs = [DATASETS.get(name, "data.dataset") for name in cfg.data.tasks]
    collate_fn = functools.partial(collate, pad_id=tokenizer.pad_token_id)
    if len(specs) > 1:
        train_rows: list[dict[str, Any]] = []
        eval_rows: list[dict[str, Any]] = []
        for spec in specs:
            choices = label_word_ids(tokenizer, spec.label_words)
            for split, limit, out in (
                (cfg.data.train_split, cfg.data.train_limit, train_rows),
                (cfg.data.eval_split, cfg.data.eval_limit, eval_rows),
            ):
                _, encoded = _encode_split(cfg, tokenizer, spec, spec.template, split, limit)
                out.extend({**ex, "choices": choices} for ex in encoded)
        mode = "label_words" if cfg.eval.mode == "auto" else cfg.eval.mode
        if mode != "label_words":
            raise ConfigError("eval.mode", cfg.eval.mode, "'auto' or 'label_words' for a mix of datasets")
        return Task(specs, tokenizer, train_rows, eval_rows, None, None, collate_fn, mode, "")
    spec = specs[0]
    template = choose_template(cfg.data.template, spec.template, tokenizer).name  # chat for instructions when it can
    raw = raw_splits(cfg, spec)
    eval_ds = raw.eval
    train_rows = list(encode_dataset(raw.train, tokenizer, template, cfg.data.max_length))
    eval_rows = list(encode_dataset(raw.eval, tokenizer, template, cfg.data.max_length))
    word_ids = None
    if spec.task_type == "classification":
        word_ids = torch.tensor(label_word_ids(tokenizer, spec.label_words))
    mode = cfg.eval.mode
    if mode == "auto":
        mode = "label_words" if word_ids is not None else "generation"
    return Task(specs, tokenizer, train_rows, eval_rows, eval_ds, word_ids, collate_fn, mode, template)


def evaluate_task(
    model: torch.nn.Module, task: Task, batch_size: int = 64, max_new_tokens: int = 32
) -> dict[str, float]:
    """Score ``model`` on the task's eval split with the configured mode.

    When the eval examples span several tasks (a mix, or Dolly's categories) each task's score is reported as
    ``<metric>_<task>`` and the headline metric is their unweighted mean, so a large task does not hide a small one.
    """
    if task.eval_mode == "perplexity":
        return evaluate_lm(model, task.eval, task.collate, batch_size)
    tasks = [str(e.get("task", "")) for e in task.eval]
    metrics: dict[str, float] = {}
    scores, labels = _scores_and_labels(model, task, batch_size, max_new_tokens)
    for name, values in scores.items():
        metrics.update(summarize_by_task(values, tasks, name))
    if labels is not None and task.word_ids is not None:  # the label bias of a single classification dataset
        for c in range(len(task.word_ids)):
            metrics[f"pred_frac_{c}"] = sum(p == c for p in labels) / len(labels)
    return metrics


def metric_name(task: Task) -> str:
    """The headline per-example score of :func:`example_scores`: ``accuracy`` or ``rouge_l``."""
    return "accuracy" if task.eval_mode == "label_words" else "rouge_l"


def example_scores(
    model: torch.nn.Module, task: Task, batch_size: int = 64, max_new_tokens: int = 32
) -> dict[str, list[float]]:
    """Per-example scores of the eval split: ``accuracy`` (1.0 / 0.0 per label word) for classification,
    ``rouge_l`` and ``exact_match`` of the greedy generation otherwise. The first key is the headline metric."""
    return _scores_and_labels(model, task, batch_size, max_new_tokens)[0]


def _scores_and_labels(
    model: torch.nn.Module, task: Task, batch_size: int, max_new_tokens: int
) -> tuple[dict[str, list[float]], list[int] | None]:
    """:func:`example_scores` plus the predicted class indices (classification only), from one pass."""
    if task.eval_mode == "label_words":
        labels = predict_labels(model, task.eval, task.collate, task.word_ids, batch_size)
        return {"accuracy": [float(p == int(e["label"])) for p, e in zip(labels, task.eval, strict=True)]}, labels
    if task.eval_mode != "generation":
        raise ConfigError("eval.mode", task.eval_mode, "'label_words' or 'generation' for per-example scores")
    from fedpeft.data import build_prompt

    pairs = [build_prompt(row, task.template, task.tokenizer) for row in task.eval_raw]
    refs = [r.strip() for _, r in pairs]
    preds = generate(model, task.tokenizer, [p for p, _ in pairs], max_new_tokens, batch_size)
    return {"rouge_l": rouge_l_scores(preds, refs), "exact_match": exact_match_scores(preds, refs)}, None


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
