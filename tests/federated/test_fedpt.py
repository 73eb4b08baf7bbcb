"""FedPT end to end on the bundled pair (tiny-small on the clients, tiny-large on the server): what each round
reports, the large model never touched, distillation moving the small model toward the proxy, config errors,
local == flower-sim, and resume."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from fedpeft.algorithms.fedpt.server import FedPT
from fedpeft.errors import ConfigError
from fedpeft.runtime import run_federated

from .conftest import crash_and_resume

FED = {"algorithm": "fedpt", "rounds": 2, "num_clients": 3, "alpha": 1.0, "min_partition_size": 4}
SERVER = {
    "same_vocab": ["client", "large"],
    "models": {"large": "tiny-large"},
    "data": {"dataset": "sst2", "split": "test", "limit": 64},
}
PT = {"distill_steps": 3, "distill_batch": 8, "distill_positions": "last"}


def lines(run, kind):
    return [e for e in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if e["event"] == kind]


def adapter(run):
    return load_file(run / "adapter" / "adapter_model.safetensors")


def test_each_round_reports_proxy_small_and_large_and_the_large_model_is_never_touched(job, monkeypatch):
    seen = {}
    original = FedPT.__init__

    def spy(self, cfg, server):
        original(self, cfg, server)
        seen["large"] = server.models["large"]
        seen["before"] = {k: v.clone() for k, v in server.models["large"].state_dict().items()}

    monkeypatch.setattr(FedPT, "__init__", spy)
    run = run_federated(job(federation=FED, server=SERVER, algorithm=PT), quiet=True).path
    evals = lines(run, "eval")
    assert [e["round"] for e in evals] == [0, 1, 2]
    # round 0: the expert is the untrained adapter (LoRA B = 0), so the proxy is exactly the large model
    assert evals[0]["accuracy"] == evals[0]["large_accuracy"]
    assert all(e["large_accuracy"] == evals[0]["large_accuracy"] for e in evals)  # a constant reference
    assert all("small_accuracy" in e for e in evals)
    rounds = lines(run, "round")
    assert all(r["distill_loss"] >= 0 and r["distill_s"] > 0 for r in rounds)
    summary = json.loads((run / "summary.json").read_text())
    fedpt = summary["fedpt"]
    assert fedpt["proxy"]["accuracy"] == evals[-1]["accuracy"]
    assert fedpt["small"]["accuracy"] == evals[-1]["small_accuracy"]
    assert fedpt["large"]["accuracy"] == evals[0]["large_accuracy"] and fedpt["distill"] is True
    # the large model: same weights bit for bit, no gradient ever, and it never left the server
    large = seen["large"]
    assert all(torch.equal(seen["before"][k], v) for k, v in large.state_dict().items())
    assert all(p.grad is None and not p.requires_grad for p in large.parameters())
    n_large = sum(p.numel() for p in large.parameters())
    assert summary["device_budget"]["max"]["params_held"] < n_large / 2
    # per-round traffic is the small model's adapter only
    n_adapter = sum(v.numel() * 4 for v in adapter(run).values())
    assert summary["bytes_by_kind"] == {"adapter": {"up": 2 * 3 * n_adapter, "down": 2 * 3 * n_adapter}}


def test_distillation_pulls_the_small_model_toward_the_proxy(job):
    """With distillation the global adapter is the distilled one: it differs from plain federated LoRA on the same
    clients, and the KL to the proxy on a fixed probe batch falls over a round's steps."""
    cfg = lambda distill, steps=3: job(  # noqa: E731
        federation={**FED, "rounds": 1}, server=SERVER, algorithm={**PT, "distill": distill, "distill_steps": steps}
    )
    plain = run_federated(cfg(False), quiet=True).path
    distilled = run_federated(cfg(True, 8), quiet=True).path
    a, b = adapter(plain), adapter(distilled)
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)
    r = lines(distilled, "round")[0]
    assert r["distill_kl_after"] < r["distill_kl_before"]
    assert "distill_loss" not in lines(plain, "round")[0]
    # without distillation the small model is exactly FedAvg's: same clients, same updates
    fedavg = run_federated(job(federation={**FED, "rounds": 1, "algorithm": "fedavg"}), quiet=True).path
    c = adapter(fedavg)
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_config_errors(job):
    with pytest.raises(ConfigError, match="algorithm.large"):
        job(
            federation=FED,
            server={**SERVER, "models": {"big": "tiny-large"}, "same_vocab": ["client", "big"]},
            algorithm=PT,
        )
    with pytest.raises(ConfigError, match="server.same_vocab"):
        job(federation=FED, server={**SERVER, "same_vocab": []}, algorithm=PT)
    with pytest.raises(ConfigError, match="server.data"):
        job(federation=FED, server={k: v for k, v in SERVER.items() if k != "data"}, algorithm=PT)
    job(federation=FED, server={k: v for k, v in SERVER.items() if k != "data"}, algorithm={"distill": False})
    for field, value in (("temperature", 0.0), ("distill_positions", "response"), ("distill_batch", 0)):
        with pytest.raises(ConfigError, match=f"algorithm.{field}"):
            job(federation=FED, server=SERVER, algorithm={field: value})


def test_a_large_model_with_another_vocabulary_is_refused_before_any_work(job, tmp_path):
    """smollm2's tokenizer is not in the offline test environment; a copy of tiny-large with a different
    tokenizer file is: the vocabulary check names both models."""
    import shutil

    from fedpeft.models.hub import resolve_model_path

    other = tmp_path / "other-vocab"
    shutil.copytree(resolve_model_path("tiny-large"), other)
    tok = json.loads((other / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    first, second = sorted(vocab, key=vocab.get)[5:7]
    vocab[first], vocab[second] = vocab[second], vocab[first]  # two ids swapped: same size, different mapping
    (other / "tokenizer.json").write_text(json.dumps(tok))
    server = {**SERVER, "models": {"large": str(other)}}
    with pytest.raises(ConfigError, match="server.same_vocab.*tiny-small.*other-vocab"):
        run_federated(job(federation=FED, server=server, algorithm=PT), quiet=True)


@pytest.mark.slow
def test_local_and_flower_sim_agree(job):
    cfg = lambda: job(federation=FED, server=SERVER, algorithm=PT)  # noqa: E731
    local = run_federated(cfg(), quiet=True).path
    sim = run_federated(cfg(), runtime="flower-sim", quiet=True).path
    a, b = adapter(local), adapter(sim)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    ea, eb = lines(local, "eval")[-1], lines(sim, "eval")[-1]
    assert ea["accuracy"] == pytest.approx(eb["accuracy"], abs=1 / 48)


def test_fedpt_resumes_after_a_crash_to_the_same_result(job, monkeypatch):
    """Stopped inside round 2, resumed from the round-1 checkpoint: the distillation optimizer, the expert adapter
    and the cached large-model metrics come back, and the run ends bit-identical to the uninterrupted one."""
    cfg = lambda: job(federation=FED, server=SERVER, algorithm=PT)  # noqa: E731
    whole, resumed = crash_and_resume(FedPT, cfg, monkeypatch)
    a, b = adapter(whole), adapter(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert lines(resumed, "eval")[-1] == {**lines(whole, "eval")[-1], "time": lines(resumed, "eval")[-1]["time"]}


def test_generate_answers_with_the_proxy_tuned_model_of_a_run(job, capsys):
    from fedpeft.cli import main
    from fedpeft.runtime.generate import load_generator
    from fedpeft.training.evaluate import generate

    run = run_federated(job(federation={**FED, "rounds": 1}, server=SERVER, algorithm=PT), quiet=True).path
    assert (run / "adapter" / "expert" / "adapter_model.safetensors").is_file()  # the proxy's expert is saved
    proxy, large = load_generator(run), load_generator(run, "large")
    assert proxy.mode == "proxy"
    prompts = [proxy.prompt("a gorgeous , witty film"), proxy.prompt("", "dull and lifeless")]
    assert prompts[1] == "Review: dull and lifeless\nSentiment:"  # rendered with the run's template (sst2's)
    assert prompts[0] == "Review: a gorgeous , witty film\nSentiment:"  # classification: the text is the input
    # a classification run answers with the label word scored highest after the prompt, as it was evaluated
    assert set(proxy.generate(prompts)) <= {"negative", "positive"}
    scores = proxy.scores(prompts)  # [2, 2]
    words = proxy.word_ids
    ids = proxy.tokenizer(prompts[1:], return_tensors="pt", add_special_tokens=False)["input_ids"]
    z = proxy.model(ids, torch.ones_like(ids)).logits[0, -1]
    assert torch.allclose(scores[1], z[words], atol=1e-5)
    # alpha = 0 leaves the large model alone: its scores are the untuned large model's
    plain = load_generator(run, alpha=0.0)
    assert torch.allclose(plain.scores(prompts), large.scores(prompts))
    from fedpeft.models import load_model

    # free generation goes through the proxy's KV-cached decoding: alpha 0 equals Hugging Face generate
    reference = generate(load_model("tiny-large"), large.tokenizer, prompts, 6)
    assert generate(plain.model, plain.tokenizer, prompts, 6) == reference
    # the run's expert moved the proxy away from the large model
    small = load_generator(run, "small")
    ids = proxy.tokenizer(prompts[:1], return_tensors="pt")["input_ids"]
    mask = torch.ones_like(ids)
    assert not torch.allclose(proxy.model(ids, mask).logits, large.model(ids, mask).logits)
    # the small model answers too, and the CLI prints one JSON object per prompt
    assert len(small.generate(prompts)) == 2
    assert main(["generate", str(run), "--prompt", "dull", "--prompt", "fine", "--json"]) == 0
    printed = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()[-2:]]
    assert [p["prompt"] for p in printed] == ["dull", "fine"]
    assert all(p["model"] == "proxy" and p["answer"] in ("negative", "positive") for p in printed)
    # a run of another algorithm has no proxy
    other = run_federated(job(federation={**FED, "rounds": 1, "algorithm": "fedavg"}), quiet=True).path
    with pytest.raises(ConfigError, match="--model"):
        load_generator(other, "proxy")
    assert load_generator(other).mode == "small"
