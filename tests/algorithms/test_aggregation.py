"""Tests of fedpeft.algorithms.aggregation on tiny tensors (pure maths, no flwr import).

The cross-checks against Flower's own strategies are in test_aggregation_flower.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedpeft.algorithms.aggregation import (
    SERVER_OPTIMIZERS,
    AggregationError,
    FedAdagrad,
    FedAdam,
    FedAvgM,
    FedAvgServer,
    FedYogi,
    check_update,
    clip_update,
    coordinate_median,
    state_add,
    state_norm,
    state_scale,
    state_sub,
    trimmed_mean,
    weighted_average,
)

SHAPES = {"layer.lora_A.weight": (2, 3), "layer.bias": (3,)}


def _states(n: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{k: torch.randn(s, generator=g).to(dtype) for k, s in SHAPES.items()} for _ in range(n)]


# ---------------------------------------------------------------------------------------------------------------
# weighted average and validation
# ---------------------------------------------------------------------------------------------------------------


def test_weighted_average_matches_formula_and_normalizes_weights() -> None:
    states = _states(3)
    out = weighted_average(states, [1, 2, 5])
    for k in SHAPES:
        expected = (1 * states[0][k] + 2 * states[1][k] + 5 * states[2][k]) / 8
        torch.testing.assert_close(out[k], expected)
    scaled = weighted_average(states, [10, 20, 50])  # only ratios matter
    for k in SHAPES:
        torch.testing.assert_close(scaled[k], out[k])
    assert list(out) == list(states[0])


def test_weighted_average_uniform_when_no_weights() -> None:
    states = _states(2)
    out = weighted_average(states)
    torch.testing.assert_close(out["layer.bias"], (states[0]["layer.bias"] + states[1]["layer.bias"]) / 2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_weighted_average_returns_input_dtype(dtype: torch.dtype) -> None:
    states = _states(3, dtype=dtype)
    out = weighted_average(states, [1, 1, 2])
    assert all(t.dtype == dtype for t in out.values())
    ref = weighted_average([{k: t.double() for k, t in s.items()} for s in states], [1, 1, 2])
    tol = 1e-12 if dtype == torch.float64 else 1e-2
    for k in SHAPES:
        torch.testing.assert_close(out[k].double(), ref[k], rtol=tol, atol=tol)


def test_weighted_average_does_not_alias_inputs() -> None:
    states = _states(1)
    out = weighted_average(states)
    out["layer.bias"].add_(1.0)
    assert not torch.equal(out["layer.bias"], states[0]["layer.bias"])


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda s: s.pop("layer.bias"), r"states\[1\] has different keys.*missing 'layer.bias'"),
        (lambda s: s.update({"extra": torch.zeros(1)}), r"unexpected 'extra'"),
        (lambda s: s.update({"layer.bias": torch.zeros(4)}), r"states\[1\]\['layer.bias'\] has shape \(4,\)"),
        (lambda s: s.update({"layer.bias": torch.zeros(3, dtype=torch.float64)}), r"dtype torch.float64"),
        (lambda s: s.update({"layer.bias": torch.zeros(3, dtype=torch.int64)}), r"only floating-point"),
    ],
)
def test_weighted_average_rejects_inconsistent_states(mutate, match: str) -> None:  # type: ignore[no-untyped-def]
    states = _states(2)
    mutate(states[1])
    with pytest.raises(AggregationError, match=match):
        weighted_average(states, [1, 1])


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        ([1.0], "got 1 weights for 2 states"),
        ([1.0, 0.0], r"weights\[1\]=0.0"),
        ([1.0, -2], r"weights\[1\]=-2.0"),
        ([1.0, math.nan], r"weights\[1\]=nan"),
    ],
)
def test_weighted_average_rejects_bad_weights(weights: list[float], match: str) -> None:
    with pytest.raises(AggregationError, match=match):
        weighted_average(_states(2), weights)


def test_empty_list_is_rejected_everywhere() -> None:
    for fn in (weighted_average, coordinate_median, lambda s: trimmed_mean(s, 0.1)):
        with pytest.raises(AggregationError, match="empty list"):
            fn([])
    assert issubclass(AggregationError, ValueError)


# ---------------------------------------------------------------------------------------------------------------
# robust aggregators
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 4, 5])
def test_coordinate_median_matches_numpy(n: int) -> None:
    states = _states(n, seed=n)
    out = coordinate_median(states)
    for k in SHAPES:
        expected = np.median(np.stack([s[k].numpy() for s in states]), axis=0)
        np.testing.assert_allclose(out[k].numpy(), expected, rtol=1e-6)


def test_trimmed_mean_drops_outliers_and_beta_zero_is_mean() -> None:
    states = [{"w": torch.tensor([v])} for v in (1.0, 2.0, 3.0, 4.0, 1000.0)]
    assert trimmed_mean(states, 0.2)["w"].item() == pytest.approx(3.0)  # drops 1 and 1000
    assert trimmed_mean(states, 0.0)["w"].item() == pytest.approx(202.0)
    assert trimmed_mean(states, 0.1)["w"].item() == pytest.approx(202.0)  # floor(0.5) = 0 trimmed


@pytest.mark.parametrize("beta", [-0.1, 0.5, 0.7, math.nan])
def test_trimmed_mean_rejects_bad_beta(beta: float) -> None:
    with pytest.raises(AggregationError, match="beta="):
        trimmed_mean(_states(3), beta)


# ---------------------------------------------------------------------------------------------------------------
# state arithmetic, clipping, validation of client updates
# ---------------------------------------------------------------------------------------------------------------


def test_state_arithmetic_and_norm() -> None:
    a, b = _states(2)
    torch.testing.assert_close(state_add(a, b)["layer.bias"], a["layer.bias"] + b["layer.bias"])
    torch.testing.assert_close(state_sub(a, b)["layer.bias"], a["layer.bias"] - b["layer.bias"])
    torch.testing.assert_close(state_scale(a, -2.5)["layer.bias"], -2.5 * a["layer.bias"])
    flat = torch.cat([t.flatten() for t in a.values()])
    assert state_norm(a) == pytest.approx(float(flat.norm()), rel=1e-6)
    assert state_norm({"x": torch.tensor([3.0, 4.0], dtype=torch.float16)}) == pytest.approx(5.0)
    with pytest.raises(AggregationError, match="have different keys"):
        state_add(a, {"layer.bias": b["layer.bias"]})


def test_clip_update_scales_only_when_above_bound() -> None:
    u = {"x": torch.tensor([3.0, 0.0]), "y": torch.tensor([[4.0]])}  # norm 5
    clipped = clip_update(u, 1.0)
    assert state_norm(clipped) == pytest.approx(1.0)
    torch.testing.assert_close(clipped["x"], torch.tensor([0.6, 0.0]))
    same = clip_update(u, 10.0)
    torch.testing.assert_close(same["y"], u["y"])
    assert same["y"] is not u["y"]
    with pytest.raises(AggregationError, match="max_norm"):
        clip_update(u, 0.0)


def test_check_update_rejects_nonfinite_wrong_shape_and_large_norm() -> None:
    ref = {"x": torch.zeros(2)}
    check_update({"x": torch.ones(2)}, ref, max_norm=2.0)
    with pytest.raises(AggregationError, match="NaN or infinite"):
        check_update({"x": torch.tensor([1.0, math.inf])}, ref, name="client 3")
    with pytest.raises(AggregationError, match=r"client 3\['x'\] has shape \(3,\)"):
        check_update({"x": torch.ones(3)}, ref, name="client 3")
    with pytest.raises(AggregationError, match="above the bound"):
        check_update({"x": torch.full((2,), 5.0)}, ref, max_norm=1.0)


# ---------------------------------------------------------------------------------------------------------------
# server optimizers
# ---------------------------------------------------------------------------------------------------------------


def test_fedavg_server_with_lr_one_adopts_the_aggregate() -> None:
    glob, agg = _states(2)
    new = FedAvgServer().apply(glob, agg)
    for k in SHAPES:
        torch.testing.assert_close(new[k], agg[k])


def test_fedavgm_two_steps_by_hand() -> None:
    x = {"w": torch.tensor([1.0, -1.0])}
    d1, d2 = {"w": torch.tensor([0.5, 0.0])}, {"w": torch.tensor([-1.0, 2.0])}
    opt = FedAvgM(lr=0.5, momentum=0.9)
    x1 = opt.step(x, d1)
    torch.testing.assert_close(x1["w"], x["w"] + 0.5 * d1["w"])
    x2 = opt.step(x1, d2)
    torch.testing.assert_close(x2["w"], x1["w"] + 0.5 * (0.9 * d1["w"] + d2["w"]))


def test_fedadam_one_step_by_hand() -> None:
    eta, b1, b2, tau = 0.1, 0.9, 0.99, 1e-3
    x = {"w": torch.tensor([1.0, 2.0, -3.0])}
    d = {"w": torch.tensor([0.2, -0.4, 0.0])}
    new = FedAdam(eta=eta, beta1=b1, beta2=b2, tau=tau).step(x, d)
    m = (1 - b1) * d["w"]
    v = (1 - b2) * d["w"] ** 2
    torch.testing.assert_close(new["w"], x["w"] + eta * m / (v.sqrt() + tau))
    # Paper initialisation v_0 = tau^2 and Adam bias correction, still one step by hand.
    new2 = FedAdam(eta=eta, beta1=b1, beta2=b2, tau=tau, v_init=tau**2, bias_correction=True).step(x, d)
    v2 = b2 * tau**2 + (1 - b2) * d["w"] ** 2
    lr = eta * math.sqrt(1 - b2) / (1 - b1)
    torch.testing.assert_close(new2["w"], x["w"] + lr * m / (v2.sqrt() + tau))


def test_fedyogi_and_fedadagrad_second_moment_rules() -> None:
    d = {"w": torch.tensor([0.5])}
    yogi = FedYogi(beta2=0.9)
    yogi.step({"w": torch.zeros(1)}, d)
    v1 = 0.1 * 0.25  # sign(0 - d^2) = -1, so v grows like Adam's on the first step
    assert yogi.state_dict()["buffers"]["v"]["w"].item() == pytest.approx(v1)
    yogi.step({"w": torch.zeros(1)}, {"w": torch.tensor([0.1])})
    assert yogi.state_dict()["buffers"]["v"]["w"].item() == pytest.approx(v1 - 0.1 * 0.01)  # v > d^2: shrinks
    ada = FedAdagrad()
    ada.step({"w": torch.zeros(1)}, d)
    ada.step({"w": torch.zeros(1)}, d)
    assert ada.state_dict()["buffers"]["v"]["w"].item() == pytest.approx(0.5)


@pytest.mark.parametrize("name", sorted(SERVER_OPTIMIZERS))
def test_server_optimizer_state_dict_round_trip(name: str) -> None:
    cls = SERVER_OPTIMIZERS[name]
    glob, d1, d2 = _states(3, dtype=torch.bfloat16)
    a = cls()
    x1 = a.step(glob, d1)
    assert all(t.dtype == torch.bfloat16 for t in x1.values())
    b = cls()
    b.load_state_dict(a.state_dict())
    assert b.steps == 1
    xa, xb = a.step(x1, d2), b.step(x1, d2)
    for k in SHAPES:
        assert torch.equal(xa[k], xb[k])


def test_server_optimizer_validation() -> None:
    with pytest.raises(AggregationError, match=r"beta1=1.0 is invalid; expected a value in \[0.0, 1.0\)"):
        FedAdam(beta1=1.0)
    with pytest.raises(AggregationError, match="tau=0"):
        FedYogi(tau=0)
    with pytest.raises(AggregationError, match="momentum"):
        FedAvgM(momentum=-0.1)
    with pytest.raises(AggregationError, match="server optimizer 'fedadam', not 'fedyogi'"):
        FedYogi().load_state_dict(FedAdam().state_dict())
    opt = FedAdam()
    opt.step({"w": torch.zeros(2)}, {"w": torch.ones(2)})
    with pytest.raises(AggregationError, match="call reset"):
        opt.step({"w": torch.zeros(3)}, {"w": torch.ones(3)})
    opt.reset()
    opt.step({"w": torch.zeros(3)}, {"w": torch.ones(3)})
    with pytest.raises(AggregationError, match="different keys"):
        opt.step({"w": torch.zeros(3)}, {"v": torch.ones(3)})
