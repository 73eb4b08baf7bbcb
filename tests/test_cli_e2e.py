"""End to end: the CLI and a short centralized run on the bundled model, offline."""

import json

import pytest
import torch
from peft import PeftModel

from fedpeft.cli import main
from fedpeft.config import JobConfig, load_config
from fedpeft.registry import DATASETS, MODELS, PEFT_METHODS
from fedpeft.training.centralized import run_centralized


def test_list_prints_every_registered_component(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in [*PEFT_METHODS.names(), *MODELS.names(), *DATASETS.names()]:
        assert f"  {name} " in out, name
    assert "checkpoint missing" not in out


def test_config_error_is_reported_before_any_work(capsys):
    assert main(["finetune", "--set", "adapter.method=lorra", "--set", "output_dir='/nonexistent/never'"]) == 2
    err = capsys.readouterr().err
    assert "adapter.method='lorra' is invalid" in err and "'lora'" in err


def test_label_words_loss_on_generation_dataset_is_rejected():
    from fedpeft.errors import ConfigError

    with pytest.raises(ConfigError, match="train.loss"):
        load_config(JobConfig, None, ["data.dataset=dolly", "train.loss='label_words'"])


@pytest.mark.slow
def test_centralized_run_writes_a_complete_run_directory(tmp_path, capsys):
    args = [
        "finetune",
        "--quiet",
        "--set",
        f"output_dir='{tmp_path}'",
        "--set",
        "train.steps=4",
        "--set",
        "data.train_limit=64",
        "--set",
        "data.eval_limit=48",
        "--set",
        "train.loss='label_words'",
    ]
    assert main(args) == 0
    run_dir = capsys.readouterr().out.strip().splitlines()[-1]
    summary = json.loads((tmp_path / run_dir.split("/")[-1] / "summary.json").read_text())
    assert summary["algorithm"] == "centralized" and summary["steps"] == 4
    assert 0.0 <= summary["final"]["accuracy"] <= 1.0
    cfg = load_config(JobConfig, tmp_path / run_dir.split("/")[-1] / "config.toml")
    assert cfg.train.steps == 4 and cfg.data.train_limit == 64  # the resolved config reproduces the run
    events = [json.loads(line)["event"] for line in (tmp_path / run_dir.split("/")[-1] / "metrics.jsonl").open()]
    assert events[0] == "setup" and events.count("eval") == 2


@pytest.mark.slow
def test_saved_adapter_loads_with_plain_peft_and_reproduces_the_score(tmp_path):
    from fedpeft.models import load_model, load_tokenizer
    from fedpeft.training.centralized import evaluate_task, prepare_task

    cfg = load_config(
        JobConfig,
        None,
        [
            f"output_dir='{tmp_path}'",
            "train.steps=6",
            "data.train_limit=64",
            "data.eval_limit=64",
            "train.loss='label_words'",
            "train.lr=0.01",
        ],
    )
    run = run_centralized(cfg, quiet=True)
    summary = json.loads((run.path / "summary.json").read_text())
    model = PeftModel.from_pretrained(load_model("tiny-small"), run.path / "adapter")
    task = prepare_task(cfg, load_tokenizer("tiny-small"))
    with torch.no_grad():
        again = evaluate_task(model, task)
    assert again["accuracy"] == pytest.approx(summary["final"]["accuracy"])
