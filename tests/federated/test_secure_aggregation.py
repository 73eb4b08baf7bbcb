"""Secure aggregation of FedAvg updates end to end on the bundled tiny-small model: the same adapter as plain FedAvg
(up to the stated quantization error), no update in the clear on the wire, dropouts after key sharing tolerated up
to the threshold, a round below it skipped, the same result on local and flower-sim, resume, config errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("flwr", reason="SecAgg uses Flower's primitives (fedpeft[flower])")

from fedpeft.algorithms import secure_aggregation as sa
from fedpeft.algorithms.fedavg import client as fedavg_client
from fedpeft.algorithms.fedavg.server import FedAvg
from fedpeft.errors import ConfigError
from fedpeft.runtime import run_federated

from .conftest import crash_and_resume

FED = {"num_clients": 4, "rounds": 2}
ONE_ROUND = {**FED, "rounds": 1}
EMB = {"target_modules": ["embed_tokens", "q_proj", "v_proj"]}
SECURE = {"secure_aggregation": True}
# quantization: one level is 2 clip / (2^bits - 2) = 1.19e-7 (24 bits, clip 1); the mean of the clients' stochastic
# roundings is off by less than one level per coordinate after one round (measured 0.8-1.4e-7; float32 adds ~1e-8).
# A second round trains from that perturbed start, and Adam carries it further (measured up to 1.5e-5 on weights of
# magnitude 3): so exact comparisons are after one round.
TOL = 2.5e-7


def lines(run, kind):
    return [e for e in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if e["event"] == kind]


def adapter(run):
    return load_file(run / "adapter" / "adapter_model.safetensors")


def gap(a, b):
    assert a.keys() == b.keys() and a
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_the_server_gets_fedavgs_adapter_and_never_an_update(job, monkeypatch):
    """Same adapter as plain FedAvg within the quantization error; what the server received from the clients:
    public keys, ciphertexts, masked vectors and shares, never an adapter tensor; a masked vector of a client that
    trained LoRA on the embedding has no zero column to read tokens from."""
    plain = run_federated(job(federation=ONE_ROUND, adapter=EMB), quiet=True).path
    seen: list[dict[str, torch.Tensor]] = []
    original = FedAvg.fit_round

    def spy_grid(self, rnd, grid):
        real = grid.send_and_receive

        def spy(messages, **kw):
            replies = real(messages, **kw)
            seen.extend(r.msg.arrays for r in replies if r.ok)
            return replies

        grid.send_and_receive = spy
        try:
            return original(self, rnd, grid)
        finally:
            grid.send_and_receive = real

    monkeypatch.setattr(FedAvg, "fit_round", spy_grid)
    secure = run_federated(job(federation=ONE_ROUND, adapter=EMB, privacy=SECURE), quiet=True).path
    assert gap(adapter(plain), adapter(secure)) < TOL
    got = {k.split("/")[0] for arrays in seen for k in arrays}
    assert got == {"pk1", "pk2", "ct", "masked", "b"}  # no dropout: no sk share ever leaves a client
    masked = [a["masked"] for a in seen if "masked" in a]
    # 4 clients; 4 bytes a value (int32: the 32-bit modulus); no zero entry to read a token from
    assert len(masked) == 4 and all(m.dtype == torch.int32 and bool((m != 0).all()) for m in masked)
    summary = json.loads((secure / "summary.json").read_text())
    kinds = summary["bytes_by_kind"]
    assert "adapter" not in {k for k, v in kinds.items() if v.get("up")} and kinds["secagg"]["up"] > 0
    rounds = lines(secure, "round")
    assert [r["secagg"]["masked"] for r in rounds] == [4] and rounds[0]["secagg"]["dropped"] == []
    # the clients keep no secret past the round
    assert not any(k.startswith(sa.PREFIX) for k in _client_states(secure))


def _client_states(run):
    from fedpeft.runtime.checkpoint import load_checkpoint

    ckpt = load_checkpoint(run)
    return [k for st in ckpt["grid"]["states"].values() for k in st]


def test_a_client_dropping_after_key_sharing_is_unmasked_from_the_others_shares(job, monkeypatch):
    """Client 1 vanishes before sending its masked vector in round 1: its pairwise masks are removed with its
    sk1 rebuilt from the survivors' shares, and the round's mean is the three others' (as in plain FedAvg with
    client 1 failing that round). With two of four gone (threshold 3), the round is skipped."""
    original = fedavg_client.app._handlers["train"]
    masked = fedavg_client.app._handlers["train.secagg_masked"]

    def fail_train(ctx, msg):
        if ctx.client_id == 1 and msg.config["round"] == 1:
            raise RuntimeError("gone")
        return original(ctx, msg)

    def fail_masked(ctx, msg):
        if ctx.client_id in drop and msg.config["round"] == 1:
            raise RuntimeError("gone")
        return masked(ctx, msg)

    monkeypatch.setitem(fedavg_client.app._handlers, "train", fail_train)
    plain = run_federated(job(federation=ONE_ROUND), quiet=True).path
    monkeypatch.setitem(fedavg_client.app._handlers, "train", original)
    monkeypatch.setitem(fedavg_client.app._handlers, "train.secagg_masked", fail_masked)
    drop = {1}
    secure = run_federated(job(federation=ONE_ROUND, privacy={**SECURE, "secagg_threshold": 0.75}), quiet=True).path
    assert gap(adapter(plain), adapter(secure)) < TOL
    first = lines(secure, "round")[0]["secagg"]
    assert first["dropped"] == [1] and first["masked"] == 3 and first["threshold"] == 3 and "aborted" not in first
    drop = {1, 2}
    skipped = run_federated(job(federation=ONE_ROUND, privacy={**SECURE, "secagg_threshold": 0.75}), quiet=True).path
    first = lines(skipped, "round")[0]
    assert "aborted" in first["secagg"] and "clients" not in first


def test_local_and_flower_sim_agree_and_resume(job, monkeypatch):
    cfg = lambda: job(federation=FED, privacy=SECURE)  # noqa: E731
    local = run_federated(cfg(), quiet=True).path
    sim = run_federated(cfg(), runtime="flower-sim", quiet=True).path
    assert gap(adapter(local), adapter(sim)) == 0.0  # the same seeded quantization, the same integer sums
    whole, resumed = crash_and_resume(FedAvg, cfg, monkeypatch)
    assert gap(adapter(whole), adapter(resumed)) == 0.0


def test_config_errors(job):
    with pytest.raises(ConfigError, match="privacy.secure_aggregation"):
        job(federation={**FED, "algorithm": "fedmedian"}, privacy=SECURE)
    with pytest.raises(ConfigError, match="privacy.secure_aggregation"):
        job(federation={**FED, "fraction": 0.25}, privacy=SECURE)  # one client per round
    with pytest.raises(ConfigError, match="room for a sum of 300"):  # 300 * 2^24 > 2^32: raise the modulus
        job(federation={"num_clients": 300}, privacy=SECURE)
    assert job(federation={"num_clients": 300}, privacy={**SECURE, "secagg_modulus_bits": 33}).privacy
    with pytest.raises(ConfigError, match="max_update_norm"):
        job(federation={**FED, "max_update_norm": 1.0}, privacy=SECURE)
    with pytest.raises(ConfigError, match="lora_mode"):
        job(federation=FED, algorithm={"lora_mode": "svd", "client_ranks": [2, 4]}, privacy=SECURE)
    for field, value in (("secagg_threshold", 0.0), ("secagg_clip", 0.0), ("secagg_bits", 40), ("secagg_bits", 1)):
        with pytest.raises(ConfigError, match=f"privacy.{field}"):
            job(federation=FED, privacy={**SECURE, field: value})
