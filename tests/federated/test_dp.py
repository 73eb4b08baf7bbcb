"""Client-level DP (DP-FedAvg) end to end on tiny-small: without noise and with a clip that never binds it is the
unweighted FedAvg mean; a clip that binds bounds every round's step; epsilon is reported every round and in the
summary as the accountant computes it; with secure aggregation; config errors."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from fedpeft.errors import ConfigError
from fedpeft.privacy import dp
from fedpeft.runtime import run_federated

FED = {"num_clients": 4, "rounds": 2}


def lines(run, kind):
    return [e for e in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if e["event"] == kind]


def adapter(run):
    return load_file(run / "adapter" / "adapter_model.safetensors")


def test_central_dp_without_noise_is_the_unweighted_mean_and_its_clip_binds(job):
    plain = run_federated(job(federation=FED, algorithm={"weighted": False}), quiet=True).path
    loose = {"dp": "central", "dp_noise_multiplier": 0.0, "dp_clip": 1e6}
    same = run_federated(job(federation=FED, privacy=loose), quiet=True).path
    want, got = adapter(plain), adapter(same)
    assert max(float((want[k] - got[k]).abs().max()) for k in want) < 1e-6
    tight = run_federated(job(federation=FED, privacy={**loose, "dp_clip": 1e-3}), quiet=True).path
    assert all(r["update_norm"] <= 1e-3 * (1 + 1e-5) for r in lines(tight, "round"))  # mean of clipped: <= C
    assert all(r["dp_epsilon"] == float("inf") for r in lines(tight, "round"))  # no noise: no guarantee


@pytest.mark.parametrize("mode", ["central", "local"])
def test_epsilon_per_round_and_in_the_summary(job, mode):
    priv = {"dp": mode, "dp_noise_multiplier": 1.5, "dp_clip": 0.05}
    cfg = job(federation={**FED, "fraction": 0.5}, privacy=priv)
    assert cfg.privacy.dp_delta == pytest.approx(0.025)  # resolved: 0.1 / num_clients, saved with the run
    run = run_federated(cfg, quiet=True).path
    rounds = lines(run, "round")
    if mode == "central":  # 2 of 4 clients a round: q = 0.5, one mechanism per round
        want = [dp.epsilon(1.5, 0.5, t, 0.025) for t in (1, 2)]
    else:  # the client that took part most often, unsampled
        counts: dict[int, int] = {}
        want = []
        for r in rounds:
            for c in r["clients"]:
                counts[c] = counts.get(c, 0) + 1
            want.append(dp.epsilon(1.5, 1.0, max(counts.values()), 0.025))
    assert [r["dp_epsilon"] for r in rounds] == pytest.approx(want)
    summary = json.loads((run / "summary.json").read_text())["privacy"]
    assert summary["dp"] == mode and summary["epsilon"] == pytest.approx(want[-1]) and summary["delta"] == 0.025
    assert 0 < want[0] < want[-1] < float("inf")


def test_central_dp_under_secure_aggregation(job):
    pytest.importorskip("flwr")
    loose = {"dp": "central", "dp_noise_multiplier": 0.0, "dp_clip": 1e6}
    plain = run_federated(job(federation={**FED, "rounds": 1}, privacy=loose), quiet=True).path
    both = run_federated(
        job(federation={**FED, "rounds": 1}, privacy={**loose, "secure_aggregation": True}), quiet=True
    ).path
    want, got = adapter(plain), adapter(both)
    assert max(float((want[k] - got[k]).abs().max()) for k in want) < 2.5e-7  # one quantization level
    assert lines(both, "round")[0]["dp_epsilon"] == float("inf")


def test_dp_config_errors(job):
    with pytest.raises(ConfigError, match="privacy.dp"):
        job(federation=FED, privacy={"dp": "gaussian"})
    with pytest.raises(ConfigError, match="privacy.dp"):
        job(federation={**FED, "algorithm": "fedmedian"}, privacy={"dp": "central"})
    for field, value in (("dp_clip", 0.0), ("dp_noise_multiplier", -1.0), ("dp_delta", 1.0)):
        with pytest.raises(ConfigError, match=f"privacy.{field}"):
            job(federation=FED, privacy={"dp": "central", field: value})
    assert job(federation=FED, privacy={"dp": "local", "dp_delta": 1e-3}).privacy.dp_delta == 1e-3
