"""Sample-level DP-SGD in the clients' local training (privacy.dp = "sample"): without noise and with a clip that
never binds it is plain AdamW training; a binding clip bounds each update's gradient; an adapter Opacus cannot
give per-example gradients (embedding LoRA) is refused; epsilon is each client's running total, the round reports
the worst; config errors."""

from __future__ import annotations

import functools
import json

import pytest
import torch

from fedpeft.adapters import AdapterConfig, adapter_state, attach_adapter
from fedpeft.config import TrainConfig
from fedpeft.data import collate, encode_dataset, label_word_ids
from fedpeft.errors import ConfigError
from fedpeft.models import load_model, load_tokenizer
from fedpeft.privacy.dp_sgd import DPSGDTrainer, client_epsilon
from fedpeft.registry import DATASETS
from fedpeft.runtime import run_federated
from fedpeft.training.trainer import Trainer


@pytest.fixture(scope="module")
def batches():
    tok = load_tokenizer("tiny-small")
    spec = DATASETS.get("sst2")
    rows = list(encode_dataset(spec.load_split("train", limit=16), tok, spec.template, 32))
    coll = functools.partial(collate, pad_id=tok.pad_token_id)
    return [coll(rows[:8]), coll(rows[8:])], torch.tensor(label_word_ids(tok, spec.label_words))


def _model(targets=("q_proj", "v_proj")):
    torch.manual_seed(0)
    return attach_adapter(load_model("tiny-small"), AdapterConfig(method="lora", r=4, target_modules=list(targets)))


CFG = TrainConfig(steps=2, batch_size=8, lr=1e-2, loss="label_words", max_grad_norm=0.0)


def test_without_noise_and_clipping_dp_sgd_is_adamw(batches):
    data, words = batches
    plain, private = _model(), _model()
    t1 = Trainer(plain, CFG, word_ids=words)
    t2 = DPSGDTrainer(private, CFG, word_ids=words, clip=1e9, noise_multiplier=0.0)
    for batch in data:
        t1.step(batch)
        t2.step(batch)
    t2.close()
    a, b = adapter_state(plain), adapter_state(private)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6
    assert t2.updates == 2 and not any(hasattr(p, "grad_sample") and p.grad_sample is not None for p in t2.params)


def test_a_binding_clip_bounds_the_gradient_and_noise_moves_it(batches):
    data, words = batches
    model = _model()
    t = DPSGDTrainer(model, CFG, word_ids=words, clip=1e-3, noise_multiplier=0.0)
    t.accumulate(data[0])
    grads: list[torch.Tensor] = []
    original = t.optimizer.step

    def spy(*a, **k):
        grads.extend(p.grad.detach().clone() for p in t.params)
        return original(*a, **k)

    t.optimizer.step = spy  # type: ignore[method-assign]
    t.apply()
    norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))
    assert 0 < norm <= 1e-3 * (1 + 1e-4)  # the mean of per-example gradients each clipped to 1e-3
    t.close()


def test_embedding_lora_is_refused(batches):
    data, words = batches
    t = DPSGDTrainer(_model(("embed_tokens", "q_proj")), CFG, word_ids=words, clip=1.0, noise_multiplier=1.0)
    t.accumulate(data[0])
    with pytest.raises(ConfigError, match="embed_tokens"):
        t.apply()
    t.close()


def test_federated_dp_sgd_reports_each_clients_epsilon(job):
    priv = {"dp": "sample", "dp_clip": 1.0, "dp_noise_multiplier": 1.0}
    cfg = job(federation={"num_clients": 3, "rounds": 2}, privacy=priv)
    assert cfg.privacy.dp_delta == 1e-5
    run = run_federated(cfg, quiet=True).path
    events = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    trained = [e for e in events if e["event"] == "client_train"]
    steps = cfg.train.steps
    for e in trained:  # each client's own running total: steps x the rounds it trained so far
        n = e["num_examples"]
        assert e["dp_epsilon"] == pytest.approx(client_epsilon(steps * e["round"], 8, n, 1.0, 1e-5))
    rounds = [e for e in events if e["event"] == "round"]
    for r in rounds:
        assert r["dp_epsilon"] == pytest.approx(max(e["dp_epsilon"] for e in trained if e["round"] <= r["round"]))
    summary = json.loads((run / "summary.json").read_text())["privacy"]
    assert summary["dp"] == "sample" and summary["epsilon"] == pytest.approx(rounds[-1]["dp_epsilon"])


def test_dp_sgd_config_errors(job):
    with pytest.raises(ConfigError, match="grad_accum"):
        job(federation={"num_clients": 3}, train={"grad_accum": 2}, privacy={"dp": "sample"})
    with pytest.raises(ConfigError, match="privacy.dp"):
        job(federation={"num_clients": 3, "algorithm": "fedprox"}, algorithm={"mu": 0.01}, privacy={"dp": "sample"})
