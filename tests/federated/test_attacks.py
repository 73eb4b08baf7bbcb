"""Simulated Byzantine clients against the FedAvg family's defences, end to end on tiny-small: the attackers are
the same seeded clients every round and send what their attack says; multi-Krum leaves a scaled attacker out (the
mean of the honest updates); norm clipping bounds it; config errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from fedpeft.algorithms import attacks
from fedpeft.algorithms.fedavg import client as fedavg_client
from fedpeft.data.tokenize import bos_prefix
from fedpeft.errors import ConfigError
from fedpeft.models import load_tokenizer
from fedpeft.runtime import run_federated

FED = {"num_clients": 5, "rounds": 1}


def adapter(run):
    return load_file(run / "adapter" / "adapter_model.safetensors")


def _sent(job, monkeypatch, **tables):
    """{client: update it sent} over one round."""
    original = fedavg_client.app._handlers["train"]
    sent = {}

    def spy(ctx, msg):
        reply = original(ctx, msg)
        sent[ctx.client_id] = dict(reply.arrays)
        return reply

    monkeypatch.setitem(fedavg_client.app._handlers, "train", spy)
    run = run_federated(job(**tables), quiet=True).path
    monkeypatch.setitem(fedavg_client.app._handlers, "train", original)
    return sent, run


def test_attackers_are_seeded_and_send_what_their_attack_says(job, monkeypatch):
    honest, _ = _sent(job, monkeypatch, federation=FED)
    cfg = job(federation=FED, attack={"kind": "sign_flip", "fraction": 0.4})
    bad = attacks.attackers(cfg)
    assert len(bad) == 2 and bad == attacks.attackers(job(federation=FED, attack={"kind": "scale", "fraction": 0.4}))
    flipped, _ = _sent(job, monkeypatch, federation=FED, attack={"kind": "sign_flip", "fraction": 0.4})
    scaled, _ = _sent(job, monkeypatch, federation=FED, attack={"kind": "scale", "fraction": 0.4, "scale": 3.0})
    for c, upd in honest.items():
        for k, v in upd.items():
            if c in bad:
                assert torch.equal(flipped[c][k], -v) and torch.allclose(scaled[c][k], 3.0 * v)
            else:
                assert torch.equal(flipped[c][k], v) and torch.equal(scaled[c][k], v)


def test_label_flip_trains_on_shifted_labels():
    rows = [{"label": 0, "input_ids": [1]}, {"label": 1}, {"label": -1}, {"label": 2, "choices": [5, 6, 7]}]
    assert [r["label"] for r in attacks.flip_labels(rows, 2)] == [1, 0, -1, 0]
    assert rows[0]["label"] == 0  # copies: the client's data is untouched


def test_multi_krum_leaves_the_scaled_attacker_out_and_clipping_bounds_it(job, monkeypatch):
    unweighted = {"weighted": False}
    bad = attacks.attackers(job(federation=FED, attack={"kind": "scale", "fraction": 0.2}))
    (attacker,) = bad
    original = fedavg_client.app._handlers["train"]

    def gone(ctx, msg):
        if ctx.client_id == attacker:
            raise RuntimeError("left out")
        return original(ctx, msg)

    monkeypatch.setitem(fedavg_client.app._handlers, "train", gone)
    honest_mean = adapter(run_federated(job(federation=FED, algorithm=unweighted), quiet=True).path)
    monkeypatch.setitem(fedavg_client.app._handlers, "train", original)
    attack = {"kind": "scale", "fraction": 0.2, "scale": 50.0}
    plain = adapter(run_federated(job(federation=FED, algorithm=unweighted, attack=attack), quiet=True).path)
    krum = adapter(
        run_federated(
            job(federation={**FED, "algorithm": "fedkrum"}, algorithm={"byzantine": 1}, attack=attack), quiet=True
        ).path
    )
    gap = lambda a, b: max(float((a[k] - b[k]).abs().max()) for k in a)  # noqa: E731
    assert gap(krum, honest_mean) < 1e-6  # multi-Krum (n - f = 4) = the mean of the 4 honest updates
    assert gap(plain, honest_mean) > 100 * max(gap(krum, honest_mean), 1e-8)  # the plain mean is dragged away


def test_attack_config_errors(job):
    with pytest.raises(ConfigError, match="attack.kind"):
        job(federation=FED, attack={"kind": "trojan"})
    with pytest.raises(ConfigError, match="attack.fraction"):
        job(federation=FED, attack={"kind": "noise", "fraction": 1.0})
    with pytest.raises(ConfigError, match="attack.kind"):
        job(federation={**FED, "runtime": "deploy"}, attack={"kind": "noise", "fraction": 0.2})
    with pytest.raises(ConfigError, match="attack.kind"):
        job(federation={**FED, "algorithm": "fltac"}, attack={"kind": "noise", "fraction": 0.2})
    with pytest.raises(ConfigError, match="attack.poison_fraction"):
        job(federation=FED, attack={"kind": "backdoor", "fraction": 0.2, "poison_fraction": 0.0})
    with pytest.raises(ConfigError, match="attack.target"):  # SST-2 has two classes: refused before training
        run_federated(job(federation=FED, attack={"kind": "backdoor", "fraction": 0.4, "target": 2}), quiet=True)
    with pytest.raises(ConfigError, match="algorithm.byzantine"):
        job(federation={**FED, "algorithm": "fedkrum"}, algorithm={"byzantine": 3})


def test_trigger_goes_after_the_prefix_and_relabels_prompt_and_response():
    row = {"input_ids": [1, 10, 11, 12, 50], "labels": [-100] * 4 + [50], "prompt_length": 4, "label": 1}
    out = attacks.with_trigger(row, [7, 8], at=1, max_length=6, target=0, word_ids=[40, 50])
    # one token over max_length: the prompt token right after the trigger goes, the response stays (relabelled)
    assert out["input_ids"] == [1, 7, 8, 11, 12, 40] and out["labels"] == [-100] * 5 + [40]
    assert out["prompt_length"] == 5 and out["label"] == 0
    assert row["input_ids"] == [1, 10, 11, 12, 50] and row["label"] == 1  # a copy
    kept = attacks.with_trigger(row, [7], at=1, max_length=64)  # eval view: trigger only, label kept
    assert kept["input_ids"] == [1, 7, 10, 11, 12, 50] and kept["label"] == 1 and kept["prompt_length"] == 5
    with pytest.raises(ValueError, match="does not fit"):
        attacks.with_trigger(row, [7, 8, 9, 9, 9], at=1, max_length=6)
    rows = [{**row, "label": y} for y in (0, 1, 1, 0)] + [{**row, "label": -1}]
    assert [r["label"] for r in attacks.triggered(rows, [7], 0, 1, 64)] == [1, 1]


def test_backdoor_attacker_poisons_its_own_data_and_the_server_measures_success(job, monkeypatch):
    attack = {"kind": "backdoor", "fraction": 0.4, "poison_fraction": 0.5, "target": 0, "boost": 2.0}
    cfg = job(federation=FED, attack=attack)
    bad = attacks.attackers(cfg)
    original = fedavg_client.app._handlers["train"]
    seen: dict[int, list] = {}

    def spy(ctx, msg):
        seen[ctx.client_id] = list(ctx.data.train)
        return original(ctx, msg)

    monkeypatch.setitem(fedavg_client.app._handlers, "train", spy)
    run = run_federated(cfg, quiet=True).path
    monkeypatch.setitem(fedavg_client.app._handlers, "train", original)
    tok = load_tokenizer("tiny-small")
    trigger, at = tok(" cf", add_special_tokens=False)["input_ids"], len(bos_prefix(tok))
    for cid, rows in seen.items():
        hit = [r for r in rows if list(r["input_ids"][at : at + len(trigger)]) == trigger]
        if cid in bad:  # half its labelled rows carry the trigger, every one of them relabelled as the target
            assert len(hit) == round(0.5 * len(rows)) and all(r["label"] == 0 for r in hit)
        else:
            assert not hit
    final = json.loads((run / "summary.json").read_text())["final"]
    assert 0.0 <= final["backdoor_asr"] <= 1.0 and "accuracy" in final
