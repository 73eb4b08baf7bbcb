"""End to end on the local runtime: run directory, per-round adapters in HF PEFT format, bytes, compression."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from fedpeft.runtime import run_federated


def events(run_path, kind):
    lines = (run_path / "metrics.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == kind]


def test_run_directory_is_complete_and_adapters_reload_with_plain_peft(job):
    from peft import PeftModel

    from fedpeft.data import collate
    from fedpeft.models import load_model, load_tokenizer
    from fedpeft.runtime.setup import build_federated_data
    from fedpeft.training.evaluate import evaluate_classification

    cfg = job(federation={"client_eval_every": 1})
    run = run_federated(cfg, quiet=True).path
    summary = json.loads((run / "summary.json").read_text())
    for key in ("algorithm", "rounds", "final", "bytes_up", "bytes_down", "wall_s", "initial", "best"):
        assert key in summary
    assert summary["algorithm"] == "fedavg" and summary["rounds"] == 2
    assert (run / "config.toml").is_file() and (run / "checkpoint" / "state.pt").is_file()
    assert [e["round"] for e in events(run, "round")] == [1, 2]
    assert [e["round"] for e in events(run, "eval")] == [0, 1, 2]
    assert len(events(run, "client_train")) == 2 * 3
    assert len(events(run, "client_eval")) == 2 * 3
    setup = events(run, "setup")[0]
    assert sum(p["num_examples"] for p in setup["partition"]) == 300

    # Bytes: every client uploads one fp32 LoRA update and downloads the global adapter (train + client eval).
    adapter_bytes = setup["trainable_bytes"]
    assert summary["bytes_up"] == 2 * 3 * adapter_bytes
    assert summary["bytes_down"] == 2 * 3 * adapter_bytes * 2

    # The round-1 adapter loads with plain peft and reproduces the logged round-1 eval accuracy.
    tok = load_tokenizer("tiny-small")
    model = PeftModel.from_pretrained(load_model("tiny-small"), str(run / "adapters" / "round_0001"))
    task = build_federated_data(cfg, tok).task
    acc = evaluate_classification(model, task.eval, lambda b: collate(b, tok.pad_token_id), task.word_ids)["accuracy"]
    assert acc == pytest.approx(events(run, "eval")[1]["accuracy"])


def test_compression_shrinks_uplink_bytes_and_keeps_error_feedback_state(job):
    plain = json.loads((run_federated(job(), quiet=True).path / "summary.json").read_text())
    int8 = json.loads((run_federated(job(comm={"up": "int8"}), quiet=True).path / "summary.json").read_text())
    topk_run = run_federated(job(comm={"up": "topk", "topk_ratio": 0.05}), quiet=True).path
    topk = json.loads((topk_run / "summary.json").read_text())
    n_tensors = 4 * 2 * 2  # 4 layers x (q, v) x (A, B)
    assert int8["bytes_up"] == plain["bytes_up"] // 4 + 2 * 3 * n_tensors * 4  # int8 values + one fp32 scale each
    assert topk["bytes_up"] < plain["bytes_up"] * 0.11  # 5% of entries as (fp32 value, int32 index)
    assert int8["bytes_down"] == plain["bytes_down"]  # downlink stays fp32
    state = torch.load(topk_run / "checkpoint" / "state.pt", weights_only=True)
    residuals = [k for s in state["grid"]["states"].values() for k in s if k.startswith("ef/")]
    assert len(residuals) == 3 * n_tensors  # every client keeps one residual per tensor


def test_same_seed_same_result_and_fedprox_differs(job):
    a = load_file(run_federated(job(), quiet=True).path / "adapter" / "adapter_model.safetensors")
    b = load_file(run_federated(job(), quiet=True).path / "adapter" / "adapter_model.safetensors")
    prox_cfg = job(federation={"algorithm": "fedprox"}, algorithm={"mu": 10.0})
    c = load_file(run_federated(prox_cfg, quiet=True).path / "adapter" / "adapter_model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert any(not torch.equal(a[k], c[k]) for k in a)
