"""Cross-checks of fedpeft.algorithms.aggregation against Flower's own strategies (skipped when flwr is absent).

The pure-maths tests live in test_aggregation.py, which does not import flwr, so they run without it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedpeft.algorithms.aggregation import (
    FedAdagrad,
    FedAdam,
    FedAvgM,
    FedYogi,
    ServerOptimizer,
    coordinate_median,
    trimmed_mean,
    weighted_average,
)

# ---------------------------------------------------------------------------------------------------------------
# cross-checks against Flower (flwr 1.41 message-API strategies)
# ---------------------------------------------------------------------------------------------------------------

flwr_app = pytest.importorskip("flwr.app")
flwr_strategy = pytest.importorskip("flwr.serverapp.strategy")
flwr_utils = pytest.importorskip("flwr.serverapp.strategy.strategy_utils")
flwr_metadata = pytest.importorskip("flwr.app.metadata")

KEYS = ("a", "b")


def _np_states(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        {"a": rng.normal(size=(3, 2)).astype(np.float32), "b": rng.normal(size=4).astype(np.float32)} for _ in range(n)
    ]


def _record(arrays: dict[str, np.ndarray], n: int):  # type: ignore[no-untyped-def]
    return flwr_app.RecordDict(
        {
            "arrays": flwr_app.ArrayRecord({k: flwr_app.Array(v) for k, v in arrays.items()}),
            "metrics": flwr_app.MetricRecord({"num-examples": n}),
        }
    )


def _reply(arrays: dict[str, np.ndarray], n: int, node: int):  # type: ignore[no-untyped-def]
    # A reply as the grid would hand it to the strategy; explicit metadata avoids needing a running Flower task.
    md = flwr_metadata.Metadata(
        run_id=1,
        message_id=f"m{node}",
        src_node_id=node,
        dst_node_id=0,
        reply_to_message_id=f"i{node}",
        group_id="1",
        created_at=0.0,
        ttl=60.0,
        message_type="train",
    )
    return flwr_app.Message(_record(arrays, n), metadata=md)


def _torch(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v.copy()) for k, v in arrays.items()}


def test_weighted_average_matches_flower_aggregate_arrayrecords() -> None:
    states, counts = _np_states(4, seed=1), [5, 1, 7, 3]
    flwr_out = flwr_utils.aggregate_arrayrecords(
        [_record(s, n) for s, n in zip(states, counts, strict=True)], "num-examples"
    )
    ours = weighted_average([_torch(s) for s in states], counts)
    for k in KEYS:
        np.testing.assert_allclose(ours[k].numpy(), flwr_out[k].numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n", [4, 5])
def test_median_and_trimmed_mean_match_flower_strategies(n: int) -> None:
    states = _np_states(n, seed=n)
    replies = lambda: [_reply(s, 1 + i, i + 1) for i, s in enumerate(states)]  # noqa: E731  (Flower pops arrays)
    flwr_med, _ = flwr_strategy.FedMedian().aggregate_train(1, replies())
    flwr_trim, _ = flwr_strategy.FedTrimmedAvg(beta=0.25).aggregate_train(1, replies())
    med = coordinate_median([_torch(s) for s in states])
    trim = trimmed_mean([_torch(s) for s in states], 0.25)
    for k in KEYS:
        np.testing.assert_allclose(med[k].numpy(), flwr_med[k].numpy(), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(trim[k].numpy(), flwr_trim[k].numpy(), rtol=1e-6, atol=1e-7)
        direct = flwr_strategy.fedtrimmedavg.trim_mean(np.stack([s[k] for s in states]), 0.25)
        np.testing.assert_allclose(trim[k].numpy(), direct, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["fedavgm", "fedadagrad", "fedadam", "fedyogi"])
def test_server_optimizers_match_flower_over_three_rounds(name: str) -> None:
    """Same client replies, three rounds; our step on the FedAvg aggregate must equal Flower's strategy.

    Flower's FedAdam corrects the bias with exponent ``server_round + 1``; Adam's (ours, bias_correction=True) uses the
    step count ``t``, so our step t is Flower's round ``t - 1``.
    """
    hp = {"eta": 0.05, "beta1": 0.8, "beta2": 0.95, "tau": 1e-2}
    flwr_hp = {k.replace("beta", "beta_"): v for k, v in hp.items()}
    ours: ServerOptimizer
    if name == "fedavgm":
        ours, flwr = FedAvgM(lr=0.7, momentum=0.6), flwr_strategy.FedAvgM(server_learning_rate=0.7, server_momentum=0.6)
    elif name == "fedadagrad":
        ours, flwr = FedAdagrad(eta=0.05, tau=1e-2), flwr_strategy.FedAdagrad(eta=0.05, tau=1e-2)
    elif name == "fedadam":
        ours, flwr = FedAdam(**hp, bias_correction=True), flwr_strategy.FedAdam(**flwr_hp)
    else:
        ours, flwr = FedYogi(**hp), flwr_strategy.FedYogi(**flwr_hp)
    glob = _np_states(1, seed=10)[0]
    x = _torch(glob)
    if name == "fedavgm":
        flwr.current_arrays = flwr_app.ArrayRecord({k: flwr_app.Array(v) for k, v in glob.items()})
    for t in range(1, 4):
        clients = [{k: v + 0.3 * d[k] for k, v in glob.items()} for d in _np_states(3, seed=20 + t)]
        counts = [2, 3, 5]
        if name != "fedavgm":
            flwr.current_arrays = {k: v.copy() for k, v in glob.items()}  # what configure_train would store
        flwr_round = t - 1 if name == "fedadam" else t
        out, _ = flwr.aggregate_train(
            flwr_round, [_reply(c, n, i + 1) for i, (c, n) in enumerate(zip(clients, counts, strict=True))]
        )
        glob = {k: out[k].numpy() for k in KEYS}
        x = ours.apply(x, weighted_average([_torch(c) for c in clients], counts))
        for k in KEYS:
            np.testing.assert_allclose(x[k].numpy(), glob[k], rtol=1e-5, atol=1e-6)
        glob = {k: x[k].numpy().copy() for k in KEYS}  # both continue from the same global
