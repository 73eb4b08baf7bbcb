"""The FedAvg family's server program on tiny tensors, with a scripted grid (no model): aggregation, server
optimizers, update validation, sampling, heterogeneous ranks, checkpoint state."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
import torch

from fedpeft.algorithms import get_algorithm
from fedpeft.algorithms.aggregation import FedAdam as FedAdamOpt
from fedpeft.algorithms.base import ClientApp, Msg, Reply, ServerContext, derive_seed
from fedpeft.comm.ledger import ByteLedger
from fedpeft.config import RunConfig, from_dict
from fedpeft.errors import ConfigError


class ScriptedGrid:
    """Answers each train message with update = script(client, arrays sent)."""

    def __init__(self, n: int, script: Any) -> None:
        self.n, self.script, self.ledger, self.sent = n, script, ByteLedger(), []

    def client_ids(self) -> list[int]:
        return list(range(self.n))

    def send_and_receive(self, messages, *, round, timeout=None):
        out = []
        for cid, msg in sorted(messages, key=lambda m: m[0]):
            self.sent.append((round, cid, msg))
            result = self.script(cid, msg)
            if isinstance(result, str):
                out.append(Reply(cid, None, result))
                continue
            arrays, n = result
            out.append(Reply(cid, Msg("train", arrays, metrics={"num_examples": n, "loss": 1.0 + cid})))
        return out


def make(name: str, n_clients: int = 3, state=None, log=None, **tables: Any):
    raw = {"federation": {"algorithm": name, "num_clients": n_clients, "rounds": 2, **tables.pop("federation", {})}}
    raw.update(tables)
    cfg = from_dict(RunConfig, raw)
    init = state if state is not None else {"w": torch.zeros(2)}
    events: list[tuple[str, dict]] = [] if log is None else log
    ctx = ServerContext(
        cfg=cfg,
        initial_state=init,
        evaluate=lambda s: {"accuracy": float(s[next(iter(s))].flatten()[0])},
        log=lambda event, **f: events.append((event, f)),
        save_adapter=lambda s, rel: None,
        checkpoint=lambda rnd, st: None,
    )
    return get_algorithm(name)(cfg, ctx), events


def test_fedavg_is_the_sample_weighted_mean_of_updates():
    algo, _ = make("fedavg")
    updates = {0: torch.tensor([1.0, 0.0]), 1: torch.tensor([0.0, 1.0]), 2: torch.tensor([3.0, 3.0])}
    grid = ScriptedGrid(3, lambda c, m: ({"w": updates[c]}, [1, 1, 2][c]))
    info = algo.fit_round(1, grid)
    torch.testing.assert_close(algo.global_state()["w"], torch.tensor([7 / 4, 7 / 4]))
    assert info["clients"] == [0, 1, 2]
    assert info["train_loss"] == pytest.approx((1 * 1 + 1 * 2 + 2 * 3) / 4)


def test_unweighted_and_server_lr():
    algo, _ = make("fedavg", algorithm={"weighted": False, "server_lr": 0.5})
    updates = {0: torch.tensor([1.0, 0.0]), 1: torch.tensor([0.0, 1.0]), 2: torch.tensor([2.0, 2.0])}
    algo.fit_round(1, ScriptedGrid(3, lambda c, m: ({"w": updates[c]}, [1, 1, 100][c])))
    torch.testing.assert_close(algo.global_state()["w"], torch.tensor([0.5, 0.5]))


def test_fedadam_matches_the_server_optimizer_maths():
    algo, _ = make("fedadam", algorithm={"server_lr": 0.1, "tau": 1e-3})
    delta = {"w": torch.tensor([1.0, -2.0])}
    algo.fit_round(1, ScriptedGrid(3, lambda c, m: (delta, 5)))
    expected = FedAdamOpt(eta=0.1, beta1=0.9, beta2=0.99, tau=1e-3).step({"w": torch.zeros(2)}, delta)
    torch.testing.assert_close(algo.global_state()["w"], expected["w"])


def test_fedavgm_accumulates_momentum_across_rounds():
    algo, _ = make("fedavgm", algorithm={"momentum": 0.5})
    grid = ScriptedGrid(2, lambda c, m: ({"w": torch.tensor([1.0, 1.0])}, 1))
    algo.fit_round(1, grid)
    torch.testing.assert_close(algo.global_state()["w"], torch.tensor([1.0, 1.0]))
    algo.fit_round(2, grid)  # momentum buffer 0.5*1 + 1 = 1.5
    torch.testing.assert_close(algo.global_state()["w"], torch.tensor([2.5, 2.5]))


def test_fedprox_sends_mu_and_fedavg_does_not():
    prox, _ = make("fedprox", algorithm={"mu": 0.3})
    grid = ScriptedGrid(2, lambda c, m: ({"w": torch.zeros(2)}, 1))
    prox.fit_round(1, grid)
    assert all(m.config["proximal_mu"] == 0.3 for _, _, m in grid.sent)
    avg, _ = make("fedavg")
    grid = ScriptedGrid(2, lambda c, m: ({"w": torch.zeros(2)}, 1))
    avg.fit_round(1, grid)
    assert all("proximal_mu" not in m.config for _, _, m in grid.sent)


def test_median_and_trimmed_mean_ignore_an_outlier():
    ups = [torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([3.0]), torch.tensor([4.0]), torch.tensor([1000.0])]
    med, _ = make("fedmedian", n_clients=5, state={"w": torch.zeros(1)})
    med.fit_round(1, ScriptedGrid(5, lambda c, m: ({"w": ups[c]}, 1)))
    torch.testing.assert_close(med.global_state()["w"], torch.tensor([3.0]))
    trim, _ = make("fedtrimmedavg", n_clients=5, state={"w": torch.zeros(1)}, algorithm={"beta": 0.2})
    trim.fit_round(1, ScriptedGrid(5, lambda c, m: ({"w": ups[c]}, 1)))
    torch.testing.assert_close(trim.global_state()["w"], torch.tensor([3.0]))


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ({"w": torch.tensor([math.nan, 0.0])}, "NaN"),
        ({"w": torch.zeros(3)}, "shape"),
        ({"v": torch.zeros(2)}, "key"),
        ({"w": torch.zeros(2, dtype=torch.int64)}, "float"),
        ({"w": torch.tensor([30.0, 40.0])}, "norm"),
    ],
)
def test_invalid_updates_are_logged_and_never_aggregated(bad, reason):
    algo, events = make("fedavg", federation={"max_update_norm": 10.0})
    grid = ScriptedGrid(3, lambda c, m: (bad, 1) if c == 1 else ({"w": torch.tensor([1.0, 1.0])}, 1))
    info = algo.fit_round(1, grid)
    torch.testing.assert_close(algo.global_state()["w"], torch.tensor([1.0, 1.0]))
    assert info["clients"] == [0, 2]
    rejected = [f for e, f in events if e == "rejected"]
    assert len(rejected) == 1 and rejected[0]["client"] == 1
    assert reason.lower() in rejected[0]["reason"].lower()


def test_failed_clients_are_logged_and_the_round_goes_on():
    algo, events = make("fedavg")
    grid = ScriptedGrid(3, lambda c, m: "RuntimeError: boom" if c == 0 else ({"w": torch.ones(2)}, 1))
    assert algo.fit_round(1, grid)["clients"] == [1, 2]
    assert [f["client"] for e, f in events if e == "failure"] == [0]


def test_client_sampling_is_seeded_per_round_and_respects_fraction():
    algo, _ = make("fedavg", n_clients=10, federation={"fraction": 0.3})
    picks = [algo.sample_clients(r, list(range(10))) for r in range(1, 6)]
    assert all(len(p) == 3 and len(set(p)) == 3 for p in picks)
    assert len({tuple(p) for p in picks}) > 1  # rounds differ
    again, _ = make("fedavg", n_clients=10, federation={"fraction": 0.3})
    assert [again.sample_clients(r, list(range(10))) for r in range(1, 6)] == picks


def test_derive_seed_is_stable_and_distinct():
    assert derive_seed(0, 1, 2) == derive_seed(0, 1, 2)
    assert len({derive_seed(0, r, c) for r in range(20) for c in range(20)}) == 400
    assert 0 <= derive_seed("x") < 2**63


def lora_state(r: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        "m.lora_A.default.weight": torch.randn(r, 6, generator=gen),
        "m.lora_B.default.weight": torch.randn(5, r, generator=gen),
    }


@pytest.mark.parametrize("mode", ["zero_pad", "svd"])
def test_heterogeneous_ranks_send_truncated_payloads_and_aggregate_at_the_global_rank(mode):
    gen = torch.Generator().manual_seed(0)
    init = lora_state(4, gen)
    algo, _ = make(
        "fedavg",
        state=init,
        adapter={"method": "lora", "r": 4},
        algorithm={"lora_mode": mode, "client_ranks": [2, 4]},
    )
    ups = {c: lora_state(r, gen) for c, r in ((0, 2), (1, 4), (2, 2))}
    grid = ScriptedGrid(3, lambda c, m: (ups[c], 1))
    algo.fit_round(1, grid)
    sent_ranks = {cid: m.arrays["m.lora_A.default.weight"].shape[0] for _, cid, m in grid.sent}
    assert sent_ranks == {0: 2, 1: 4, 2: 2}
    assert all(m.config["rank"] == (2 if cid != 1 else 4) for _, cid, m in grid.sent)
    out = algo.global_state()
    assert out["m.lora_A.default.weight"].shape == (4, 6) and out["m.lora_B.default.weight"].shape == (5, 4)
    if mode == "svd":  # FlexLoRA: the global product is the best rank-4 fit of the mean client product
        locals_ = [
            {k: init[k][: v.shape[0]] + v if "lora_A" in k else init[k][:, : v.shape[1]] + v for k, v in ups[c].items()}
            for c in range(3)
        ]
        mean_dw = sum(s["m.lora_B.default.weight"] @ s["m.lora_A.default.weight"] for s in locals_) / 3
        u, sig, vh = torch.linalg.svd(mean_dw)
        best = (u[:, :4] * sig[:4]) @ vh[:4]
        torch.testing.assert_close(
            out["m.lora_B.default.weight"] @ out["m.lora_A.default.weight"], best, atol=1e-4, rtol=1e-4
        )


def test_config_errors_name_the_field_and_allowed_values():
    with pytest.raises(ConfigError, match="algorithm.mu"):
        from_dict(RunConfig, {"algorithm": {"mu": 0.1}})  # fedavg has no mu
    with pytest.raises(ConfigError, match="'fedprox'"):
        from_dict(RunConfig, {"federation": {"algorithm": "fedprocks"}})
    with pytest.raises(ConfigError, match="algorithm.client_ranks"):
        from_dict(RunConfig, {"algorithm": {"lora_mode": "zero_pad"}})
    with pytest.raises(ConfigError, match="adapter.r=8"):
        from_dict(RunConfig, {"algorithm": {"lora_mode": "svd", "client_ranks": [4, 16]}})
    with pytest.raises(ConfigError, match="ffa_lora"):
        from_dict(RunConfig, {"algorithm": {"lora_mode": "frozen_a"}})
    with pytest.raises(ConfigError, match="federation.partition="):
        from_dict(RunConfig, {"federation": {"partition": "random"}})
    with pytest.raises(ConfigError, match="comm.down"):
        from_dict(RunConfig, {"comm": {"down": "topk"}})
    with pytest.raises(ConfigError, match="federation.runtime"):
        from_dict(RunConfig, {"federation": {"runtime": "ray"}})


def test_state_dict_round_trip_restores_optimizer_moments():
    algo, _ = make("fedadam")
    grid = ScriptedGrid(2, lambda c, m: ({"w": torch.tensor([1.0, -1.0])}, 1))
    algo.fit_round(1, grid)
    snapshot = algo.state_dict()
    algo.fit_round(2, grid)
    twin, _ = make("fedadam")
    twin.load_state_dict(snapshot)
    twin.fit_round(2, grid)
    torch.testing.assert_close(twin.global_state()["w"], algo.global_state()["w"], rtol=0, atol=0)


def test_client_app_dispatch_and_errors():
    app = ClientApp("t")

    @app.on("train.custom")
    def h(ctx, msg):
        return Msg("train.custom", metrics={"x": 1.0})

    assert app.actions == ["train.custom"]
    assert app.handle(None, Msg("train.custom")).metrics == {"x": 1.0}  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no handler for 'train'"):
        app.handle(None, Msg("train"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="already handles"):
        app.on("train.custom")(h)
    with pytest.raises(ValueError, match="invalid"):
        Msg("fit")
    with pytest.raises(ValueError, match="invalid"):
        app.on("train.a.b")


def test_client_learning_rate_follows_lr_decay_across_rounds():
    algo, _ = make("fedavg", federation={"lr_decay": "cosine", "rounds": 4}, train={"lr": 0.01})
    lrs = [algo.train_config(r, 0)["lr"] for r in range(1, 5)]
    assert lrs[0] == pytest.approx(0.01)
    assert all(a > b for a, b in itertools.pairwise(lrs))
    assert lrs[-1] == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * 3 / 4)))
    flat, _ = make("fedavg", train={"lr": 0.01})
    assert {flat.train_config(r, 0)["lr"] for r in (1, 2)} == {0.01}
