"""Simulated Byzantine clients against the FedAvg family's defences, end to end on tiny-small: the attackers are
the same seeded clients every round and send what their attack says; multi-Krum leaves a scaled attacker out (the
mean of the honest updates); norm clipping bounds it; config errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from fedpeft.algorithms import attacks
from fedpeft.algorithms.fedavg import client as fedavg_client
from fedpeft.errors import ConfigError
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
        job(federation=FED, attack={"kind": "backdoor"})
    with pytest.raises(ConfigError, match="attack.fraction"):
        job(federation=FED, attack={"kind": "noise", "fraction": 1.0})
    with pytest.raises(ConfigError, match="attack.kind"):
        job(federation={**FED, "runtime": "deploy"}, attack={"kind": "noise", "fraction": 0.2})
    with pytest.raises(ConfigError, match="attack.kind"):
        job(federation={**FED, "algorithm": "fltac"}, attack={"kind": "noise", "fraction": 0.2})
    with pytest.raises(ConfigError, match="algorithm.byzantine"):
        job(federation={**FED, "algorithm": "fedkrum"}, algorithm={"byzantine": 3})
