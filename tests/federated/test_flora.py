"""FLoRA end to end on the local runtime: exact stacked global adapter, bytes of the stacks, export as a LoRA."""

from __future__ import annotations

import json

import pytest
import torch

from fedpeft.runtime import run_federated


def lines(run, kind):
    return [e for e in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if e["event"] == kind]


@pytest.mark.slow
def test_flora_stacks_heterogeneous_ranks_exactly_and_exports_a_peft_lora(job):
    from peft import PeftModel

    from fedpeft.data import collate
    from fedpeft.models import load_model, load_tokenizer
    from fedpeft.runtime.setup import build_federated_data
    from fedpeft.training.evaluate import evaluate_classification

    cfg = job(federation={"algorithm": "flora"}, algorithm={"client_ranks": [2, 4]})
    run = run_federated(cfg, quiet=True).path
    rounds = lines(run, "round")
    assert [r["global_rank"] for r in rounds] == [8, 16]  # ranks 2 + 4 + 2 stacked per round

    # Bytes: round 1 sends nothing down (no stacks yet); round 2 sends each client round 1's stack (rank 8).
    # Up: each client's fresh LoRA at its own rank. 4 layers x (q, v) x (A [r, 128] + B [128, r]) fp32.
    per_rank = 4 * 2 * 2 * 128 * 4
    train = lines(run, "client_train")
    assert [e["bytes_down"] for e in train if e["round"] == 1] == [0, 0, 0]
    assert [e["bytes_down"] for e in train if e["round"] == 2] == [8 * per_rank] * 3
    assert [e["bytes_up"] for e in train if e["round"] == 1] == [2 * per_rank, 4 * per_rank, 2 * per_rank]

    # The round-2 global adapter is a rank-16 LoRA in PEFT format; plain peft reproduces the logged accuracy,
    # which the server computed by merging the stacks into the base weights.
    saved = json.loads((run / "adapters" / "round_0002" / "adapter_config.json").read_text())
    assert saved["r"] == 16
    tok = load_tokenizer("tiny-small")
    model = PeftModel.from_pretrained(load_model("tiny-small"), str(run / "adapters" / "round_0002"))
    task = build_federated_data(cfg, tok).task
    acc = evaluate_classification(model, task.eval, lambda b: collate(b, tok.pad_token_id), task.word_ids)["accuracy"]
    assert acc == pytest.approx(lines(run, "eval")[-1]["accuracy"])

    # Each client keeps its merged update (dense per module) as persistent state, like FLoRA's merged weights.
    state = torch.load(run / "checkpoint" / "state.pt", weights_only=True)
    merged = [k for k in state["grid"]["states"][0] if k.startswith("flora_merged/")]
    assert len(merged) == 8


def test_flora_needs_plain_lora(job):
    from fedpeft.errors import ConfigError

    with pytest.raises(ConfigError, match="'lora' for federation.algorithm='flora'"):
        job(federation={"algorithm": "flora"}, adapter={"method": "dora"})
