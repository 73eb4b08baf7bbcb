"""FedsLLM end to end on the bundled tiny-small model: split training equals unsplit LoRA training (one client,
full participation, same seed) at several cuts, on local and flower-sim; what travels; config errors; resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedpeft.algorithms.fedsllm.server import FedsLLM
from fedpeft.errors import ConfigError
from fedpeft.runtime import run_federated

from .conftest import crash_and_resume

ONE = {"num_clients": 1, "rounds": 2, "min_partition_size": 4}
ADAPTER = {"target_modules": ["embed_tokens", "q_proj", "v_proj", "down_proj", "lm_head"]}
REPO = Path(__file__).resolve().parents[2]
TOL = 2e-5  # float32: the split sums the same products in another order (e.g. the joint clipping norm)


def lines(run, kind):
    return [e for e in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if e["event"] == kind]


def adapter(run):
    return load_file(run / "adapter" / "adapter_model.safetensors")


def assert_close(a, b, tol=TOL):
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < tol, worst


@pytest.mark.parametrize("cut", [0, 1, 4])
def test_one_client_split_training_equals_unsplit_lora(job, cut):
    """Same seed, one client: per-round train loss and the final adapter match FedAvg's unsplit LoRA training,
    with gradient clipping active (the joint norm) and two micro-batches per step."""
    train = {"steps": 3, "grad_accum": 2, "max_grad_norm": 0.05}
    unsplit = run_federated(job(federation=ONE, adapter=ADAPTER, train=train), quiet=True).path
    split = run_federated(
        job(federation={**ONE, "algorithm": "fedsllm"}, adapter=ADAPTER, train=train, algorithm={"cut": cut}),
        quiet=True,
    ).path
    assert_close(adapter(unsplit), adapter(split))
    a, b = lines(unsplit, "round"), lines(split, "round")
    assert [r["train_loss"] for r in b] == pytest.approx([r["train_loss"] for r in a], abs=1e-5)
    assert all(r["cut"] == cut for r in b)
    # at cut 0 the activations are the token embeddings (the text itself): every such run says so
    said = [e["message"][:27] for e in lines(split, "privacy") if e["message"].startswith("fedsllm")]
    assert said == (["fedsllm at cut 0 sends the "] if cut == 0 else [])
    # the adapter includes the embedding LoRA: every run also says that its updates name the clients' tokens
    assert any("per-token slices (embed_tokens, lm_head)" in e["message"] for e in lines(split, "privacy"))


def test_u_shaped_split_equals_unsplit_and_the_server_never_sees_labels(job, monkeypatch):
    """The head and the labels stay on the client: the server runs only the middle layers and receives
    activations, masks and gradients, never labels, label words or outputs; still FedAvg's adapter."""
    seen: set[str] = set()
    original = FedsLLM.exchange

    def spy(self, rnd, grid, msgs, key):
        replies = original(self, rnd, grid, msgs, key)
        seen.update(k for r in replies for k in r.msg.arrays)
        return replies

    monkeypatch.setattr(FedsLLM, "exchange", spy)
    train = {"steps": 3, "grad_accum": 2, "max_grad_norm": 0.05}
    unsplit = run_federated(job(federation=ONE, adapter=ADAPTER, train=train), quiet=True).path
    split = run_federated(
        job(
            federation={**ONE, "algorithm": "fedsllm"},
            adapter=ADAPTER,
            train=train,
            algorithm={"cut": 1, "u_shaped": True},
        ),
        quiet=True,
    ).path
    assert_close(adapter(unsplit), adapter(split))
    a, b = lines(unsplit, "round"), lines(split, "round")
    assert [r["train_loss"] for r in b] == pytest.approx([r["train_loss"] for r in a], abs=1e-5)
    assert seen == {"hidden", "attention_mask", "grad"}
    kinds = json.loads((split / "summary.json").read_text())["bytes_by_kind"]
    assert kinds["activations"]["down"] == kinds["gradients"]["up"] > 0  # the middle's output and its gradient


THREE = {"num_clients": 4, "fraction": 0.75, "rounds": 2, "min_partition_size": 4}
SPLIT = {**THREE, "algorithm": "fedsllm"}


def test_three_parallel_clients_equal_fedavg_and_only_the_bottom_travels(job):
    """SplitFed with per-client server copies averaged like the clients' halves is FedAvg on the whole adapter:
    three of four clients per round give FedAvg's adapter. Traffic: the client-side adapter down and up, the
    activations [B, T, H] and loss fields up and the gradients down once per micro-batch; no token ids."""
    unsplit = run_federated(job(federation=THREE, adapter=ADAPTER), quiet=True).path
    split = run_federated(job(federation=SPLIT, adapter=ADAPTER, algorithm={"cut": 2}), quiet=True).path
    assert_close(adapter(unsplit), adapter(split))
    summary = json.loads((split / "summary.json").read_text())
    kinds = summary["bytes_by_kind"]
    assert set(kinds) == {"adapter", "activations", "gradients", "batch"}
    full = adapter(split)
    bottom = {k: v for k, v in full.items() if "embed_tokens" in k or ".layers.0." in k or ".layers.1." in k}
    assert 0 < len(bottom) < len(full)
    n_bottom = sum(v.numel() * 4 for v in bottom.values())
    assert kinds["adapter"] == {"up": 2 * 3 * n_bottom, "down": 2 * 3 * n_bottom}  # rounds x clients x bytes
    micro = 2 * 3 * 2  # rounds x clients x steps
    hidden = 128 * 4  # H x fp32
    assert kinds["activations"]["up"] % hidden == 0 and kinds["activations"]["up"] > micro * 8 * hidden
    assert kinds["gradients"]["down"] == kinds["activations"]["up"]  # the same [B, T, H] back
    assert "up" in kinds["batch"] and not kinds["activations"].get("down") and not kinds["gradients"].get("up")
    # the device budget counts what a client of this split holds: embeddings + 2 of 4 layers
    held = summary["device_budget"]["max"]["params_held"]
    from fedpeft.models import load_model

    total = sum(p.numel() for p in load_model("tiny-small").parameters())
    assert 0.2 * total < held < 0.8 * total
    # and its FLOPs (counted: the sent forward, the recomputed forward and the backward of its layers) are below
    # those of a client training the whole model
    whole = json.loads((unsplit / "summary.json").read_text())["device_budget"]["max"]
    assert 0 < summary["device_budget"]["max"]["flops_per_round"] < whole["flops_per_round"]


def test_compressed_activations_trade_bytes_for_a_small_deviation(job):
    exact = run_federated(job(federation=SPLIT, algorithm={"cut": 2}), quiet=True).path
    half = run_federated(
        job(federation=SPLIT, algorithm={"cut": 2}, comm={"payloads": {"activations": "fp16", "gradients": "bf16"}}),
        quiet=True,
    ).path
    ka = json.loads((exact / "summary.json").read_text())["bytes_by_kind"]
    kb = json.loads((half / "summary.json").read_text())["bytes_by_kind"]
    assert kb["activations"]["up"] < 0.55 * ka["activations"]["up"]
    assert kb["gradients"]["down"] < 0.55 * ka["gradients"]["down"]
    a, b = adapter(exact), adapter(half)
    assert_close(a, b, tol=5e-3)  # close, not equal
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_config_errors(job):
    with pytest.raises(ConfigError, match="federation.client_eval_every"):
        job(federation={**SPLIT, "client_eval_every": 1})
    with pytest.raises(ConfigError, match="adapter.method"):
        job(federation=SPLIT, adapter={"method": "adalora", "target_modules": ["q_proj"], "options": {"total_step": 4}})
    with pytest.raises(ConfigError, match="algorithm.cut"):
        job(federation=SPLIT, algorithm={"cut": -1})
    with pytest.raises(ConfigError, match="algorithm.cut"):  # tiny-small has 4 layers: checked before any round
        run_federated(job(federation=SPLIT, algorithm={"cut": 5}), quiet=True)


def test_a_plan_sets_the_cut_and_must_match_the_rank(job, tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"cut": 3, "rank": 4}))
    run = run_federated(job(federation={**SPLIT, "rounds": 1}, algorithm={"plan": str(plan)}), quiet=True).path
    assert lines(run, "round")[0]["cut"] == 3
    plan.write_text(json.dumps({"cut": 3, "rank": 16}))
    with pytest.raises(ConfigError, match="adapter.r"):
        run_federated(job(federation=SPLIT, algorithm={"plan": str(plan)}), quiet=True)
    with pytest.raises(ConfigError, match="algorithm.plan"):
        job(federation=SPLIT, algorithm={"plan": str(plan), "cut": 1})
    # a plan as `fedpeft plan --json` writes it (the shipped scenario, ranks limited to the run's)
    from fedpeft.planning import load_scenario, save_plan
    from fedpeft.planning import plan as make_plan

    scenario = load_scenario(REPO / "recipes" / "plan_paper.toml", ["training.ranks=[4]", "training.cuts=[2, 4]"])
    real = make_plan(scenario)
    save_plan(real, tmp_path / "real.json")
    run = run_federated(
        job(federation={**SPLIT, "rounds": 1}, algorithm={"plan": str(tmp_path / "real.json")}), quiet=True
    ).path
    assert lines(run, "round")[0]["cut"] == real.cut and real.rank == 4


def test_fedsllm_resumes_after_a_crash_to_the_same_result(job, monkeypatch):
    cfg = lambda: job(federation=SPLIT, algorithm={"cut": 2})  # noqa: E731
    whole, resumed = crash_and_resume(FedsLLM, cfg, monkeypatch)
    a, b = adapter(whole), adapter(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("u_shaped", [False, True])
def test_local_and_flower_sim_agree(job, u_shaped):
    """On Flower every micro-batch is a message through the SuperLink and a client keeps nothing but its
    ``context.state`` between them: the same adapter as the local runtime."""
    cfg = lambda: job(federation=SPLIT, adapter=ADAPTER, algorithm={"cut": 2, "u_shaped": u_shaped})  # noqa: E731
    local = run_federated(cfg(), quiet=True).path
    sim = run_federated(cfg(), runtime="flower-sim", quiet=True).path
    assert_close(adapter(local), adapter(sim), tol=1e-5)
    assert [r["train_loss"] for r in lines(local, "round")] == pytest.approx(
        [r["train_loss"] for r in lines(sim, "round")], abs=1e-5
    )


def test_a_client_failing_or_sending_bad_activations_mid_round_is_dropped(job, monkeypatch):
    """Client 1 raises at its second gradient message, client 2 sends activations of the wrong width: both are
    logged and dropped from the round (their server copies discarded); the others' halves are averaged."""
    from fedpeft.algorithms.fedsllm import client

    step, start = client.app._handlers[client.STEP], client.app._handlers[client.START]

    def failing_step(ctx, msg):
        if ctx.client_id == 1 and int(msg.config["micro"]) == 1:
            raise RuntimeError("device went away")
        return step(ctx, msg)

    def bad_start(ctx, msg):
        reply = start(ctx, msg)
        if ctx.client_id == 2:
            reply.arrays["hidden"] = reply.arrays["hidden"][..., :7]
        return reply

    monkeypatch.setitem(client.app._handlers, client.STEP, failing_step)
    monkeypatch.setitem(client.app._handlers, client.START, bad_start)
    run = run_federated(
        job(federation={"num_clients": 4, "rounds": 1, "min_partition_size": 4, "algorithm": "fedsllm"}), quiet=True
    ).path
    assert [e["client"] for e in lines(run, "failure")] == [1]
    rejected = lines(run, "rejected")
    assert [e["client"] for e in rejected] == [2] and "hidden must be floating [B, T, 128]" in rejected[0]["reason"]
    assert lines(run, "round")[0]["clients"] == [0, 3]
    assert all(torch.isfinite(v).all() for v in adapter(run).values())
