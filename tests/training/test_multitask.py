"""Multi-task mixes (``data.dataset = "sst2+qnli+rte"``): config checks, per-example label words, per-task metrics."""

from __future__ import annotations

import functools

import pytest
import torch

from conftest import make_tiny_llama
from fedpeft.adapters import AdapterConfig, attach_adapter
from fedpeft.config import DataConfig, JobConfig, from_dict
from fedpeft.data import collate, label_word_ids, label_word_logits
from fedpeft.errors import ConfigError
from fedpeft.models import load_model, load_tokenizer
from fedpeft.training.centralized import evaluate_task, prepare_task
from fedpeft.training.evaluate import summarize_by_task
from fedpeft.training.loop import TrainConfig, forward_logits, label_scores, train

COLLATE = functools.partial(collate, pad_id=0)


def test_mix_config_is_validated_before_any_work():
    assert DataConfig(dataset="sst2+qnli+rte").tasks == ["sst2", "qnli", "rte"]
    assert DataConfig(dataset="sst2").tasks == ["sst2"]
    with pytest.raises(ConfigError, match="data.dataset") as err:
        DataConfig(dataset="sst2+nope")
    assert "qnli" in str(err.value)  # the allowed names are listed
    with pytest.raises(ConfigError, match="classification"):
        DataConfig(dataset="sst2+dolly")
    with pytest.raises(ConfigError, match="distinct"):
        DataConfig(dataset="sst2+sst2")
    with pytest.raises(ConfigError, match="data.template"):
        DataConfig(dataset="sst2+rte", template="alpaca")
    with pytest.raises(ConfigError, match="split"):
        DataConfig(dataset="sst2+qnli", eval_split="train_subset")  # a split neither has


def test_summarize_by_task_macro_mean():
    assert summarize_by_task([1, 0, 1, 1], ["a"] * 4, "accuracy") == {"accuracy": 0.75}
    out = summarize_by_task([1, 1, 1, 0, 0, 0, 1], ["b", "b", "b", "a", "a", "a", "a"], "accuracy")
    assert out == {"accuracy": pytest.approx((1.0 + 0.25) / 2), "accuracy_a": 0.25, "accuracy_b": 1.0}
    with pytest.raises(ValueError):
        summarize_by_task([1.0], [], "accuracy")


def test_per_row_label_words_match_per_task_scoring():
    model = attach_adapter(make_tiny_llama(), AdapterConfig(method="lora", r=4))
    gen = torch.Generator().manual_seed(0)
    rows = []
    for i in range(6):
        ids = torch.randint(20, 500, (5 + i % 3,), generator=gen).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * len(ids), "prompt_length": len(ids), "label": i % 2})
    choices = [[7, 11], [3, 4], [7, 11], [3, 4], [9, 2], [7, 11]]
    batch = COLLATE([{**r, "choices": c} for r, c in zip(rows, choices, strict=True)])
    assert batch["choices"].tolist() == choices
    with torch.no_grad():
        per_row = label_scores(model, batch)  # [6, 2] from each row's own words
        full = forward_logits(model, batch)
    for i, words in enumerate(choices):
        expected = label_word_logits(full[i : i + 1], batch["prompt_length"][i : i + 1], torch.tensor(words))
        torch.testing.assert_close(per_row[i : i + 1], expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="choices"):
        label_scores(model, COLLATE(rows))
    # the label-words loss trains from per-row words alone
    cfg = TrainConfig(steps=2, batch_size=3, lr=1e-3, loss="label_words")
    assert train(model, [{**r, "choices": c} for r, c in zip(rows, choices, strict=True)], cfg, COLLATE).steps == 2
    with pytest.raises(ConfigError, match="label_words"):
        train(model, rows, cfg, COLLATE)


def test_prepare_task_mix_keeps_each_task_template_words_and_limits():
    cfg = from_dict(
        JobConfig,
        {"model": {"name": "tiny-small"}, "data": {"dataset": "sst2+rte", "train_limit": 12, "eval_limit": 10}},
    )
    tok = load_tokenizer("tiny-small")
    task = prepare_task(cfg, tok)
    assert task.word_ids is None and task.eval_mode == "label_words"
    assert [e["task"] for e in task.train] == ["sst2"] * 12 + ["rte"] * 12
    assert [e["task"] for e in task.eval] == ["sst2"] * 10 + ["rte"] * 10
    sst2_words = label_word_ids(tok, ("negative", "positive"))
    rte_words = label_word_ids(tok, ("yes", "no"))
    assert all(e["choices"] == sst2_words for e in task.train[:12])
    assert all(e["choices"] == rte_words for e in task.train[12:])
    sst2_prompt = tok.decode(task.train[0]["input_ids"][: task.train[0]["prompt_length"]])
    rte_prompt = tok.decode(task.train[12]["input_ids"][: task.train[12]["prompt_length"]])
    assert sst2_prompt.startswith("Review:") and "Hypothesis:" in rte_prompt

    model = attach_adapter(load_model("tiny-small", "float32", "cpu"), AdapterConfig(method="lora", r=4))
    metrics = evaluate_task(model, task, batch_size=8)
    assert set(metrics) == {"accuracy", "accuracy_rte", "accuracy_sst2"}
    assert metrics["accuracy"] == pytest.approx((metrics["accuracy_rte"] + metrics["accuracy_sst2"]) / 2)
    assert all(v in {i / 10 for i in range(11)} for k, v in metrics.items() if k != "accuracy")


def test_task_subset_keeps_the_same_examples_of_the_named_tasks():
    def job(data):
        return from_dict(JobConfig, {"model": {"name": "tiny-small"}, "data": data})

    tok = load_tokenizer("tiny-small")
    dolly = {"dataset": "dolly", "eval_split": "test", "train_limit": 400, "eval_limit": 80}
    whole = prepare_task(job(dolly), tok)
    one = prepare_task(job({**dolly, "task_subset": ["open_qa", "summarization"]}), tok)
    for split in ("train", "eval"):
        want = [e["input_ids"] for e in getattr(whole, split) if e["task"] in ("open_qa", "summarization")]
        assert want and [e["input_ids"] for e in getattr(one, split)] == want  # filtered after the limits
    with pytest.raises(ConfigError, match="data.task_subset") as err:
        prepare_task(job({**dolly, "task_subset": ["poetry"]}), tok)
    assert "open_qa" in str(err.value)  # the task names present are listed
    mix = prepare_task(job({"dataset": "sst2+rte", "train_limit": 12, "eval_limit": 10, "task_subset": ["rte"]}), tok)
    assert [e["task"] for e in mix.train] == ["rte"] * 12
    with pytest.raises(ConfigError, match="data.task_subset"):
        DataConfig(dataset="sst2+rte", task_subset=["qnli"])
    with pytest.raises(ConfigError, match="distinct"):
        DataConfig(dataset="dolly", task_subset=[])
