"""Tests of fedpeft.algorithms.lora_aggregation: exactness claims of FFA-LoRA, FLoRA, FlexLoRA on tiny tensors."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch

from fedpeft.algorithms.aggregation import AggregationError, weighted_average
from fedpeft.algorithms.lora_aggregation import (
    average_ab,
    average_frozen_a,
    lora_deltas,
    lora_pairs,
    stack_lora,
    svd_reproject,
    truncate_to_rank,
    zero_pad_aggregate,
)

PFX = "base_model.model.layers.0.self_attn"
Q_A, Q_B = f"{PFX}.q_proj.lora_A.default.weight", f"{PFX}.q_proj.lora_B.default.weight"
V_A, V_B = f"{PFX}.v_proj.lora_A.default.weight", f"{PFX}.v_proj.lora_B.default.weight"
MAG = f"{PFX}.q_proj.lora_magnitude_vector.default.weight"
OUT, IN = 5, 4


def _client(rank: int, g: torch.Generator, dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    # float64 keeps exactness tests tight; dtype handling is tested separately.
    return {
        Q_A: torch.randn(rank, IN, generator=g, dtype=dtype),
        Q_B: torch.randn(OUT, rank, generator=g, dtype=dtype),
        MAG: torch.randn(OUT, generator=g, dtype=dtype),
        V_A: torch.randn(rank, IN, generator=g, dtype=dtype),
        V_B: torch.randn(3, rank, generator=g, dtype=dtype),
    }


def _clients(ranks: Sequence[int], seed: int = 0, dtype: torch.dtype = torch.float64) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [_client(r, g, dtype) for r in ranks]


def _avg_delta(states: Sequence[dict[str, torch.Tensor]], weights: Sequence[float], key: str = "q") -> torch.Tensor:
    a, b = (Q_A, Q_B) if key == "q" else (V_A, V_B)
    total = sum(weights)
    return sum((w / total) * (s[b].double() @ s[a].double()) for s, w in zip(states, weights, strict=True))  # type: ignore[return-value]


def _best_rank(m: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    return (u[:, :r] * s[:r]) @ vh[:r], s


# ---------------------------------------------------------------------------------------------------------------
# pair detection
# ---------------------------------------------------------------------------------------------------------------


def test_lora_pairs_finds_runtime_saved_and_embedding_keys() -> None:
    state = {
        Q_A: torch.zeros(2, 4),
        Q_B: torch.zeros(5, 2),
        MAG: torch.zeros(5),
        "m.k_proj.lora_A.weight": torch.zeros(2, 4),  # saved-adapter format, no adapter name
        "m.k_proj.lora_B.weight": torch.zeros(5, 2),
        "m.embed_tokens.lora_embedding_A.default": torch.zeros(2, 9),
        "m.embed_tokens.lora_embedding_B.default": torch.zeros(4, 2),
        "m.o_proj.lora_A.default.weight": torch.zeros(2, 4),  # no B: not a pair
        "m.o_proj.bias": torch.zeros(4),
    }
    assert lora_pairs(state) == {
        f"{PFX}.q_proj": (Q_A, Q_B),
        "m.k_proj": ("m.k_proj.lora_A.weight", "m.k_proj.lora_B.weight"),
        "m.embed_tokens": ("m.embed_tokens.lora_embedding_A.default", "m.embed_tokens.lora_embedding_B.default"),
    }


def test_lora_pairs_rejects_two_adapters_on_one_module() -> None:
    state = {Q_A: torch.zeros(1, 1), Q_B: torch.zeros(1, 1)}
    state.update(
        {Q_A.replace("default", "other"): torch.zeros(1, 1), Q_B.replace("default", "other"): torch.zeros(1, 1)}
    )
    with pytest.raises(AggregationError, match="two LoRA adapters"):
        lora_pairs(state)


# ---------------------------------------------------------------------------------------------------------------
# FedIT and FFA-LoRA
# ---------------------------------------------------------------------------------------------------------------


def test_average_ab_is_fedavg_and_inexact() -> None:
    states, w = _clients([2, 2, 2]), [1.0, 2.0, 3.0]
    out = average_ab(states, w)
    ref = weighted_average(states, w)
    assert all(torch.equal(out[k], ref[k]) for k in ref)
    gap = (out[Q_B] @ out[Q_A] - _avg_delta(states, w)).norm()
    assert gap > 0.1 * _avg_delta(states, w).norm()  # mean(B)·mean(A) != mean(B·A)


def test_frozen_a_is_exact_and_checks_a() -> None:
    states, w = _clients([2, 2, 2]), [3.0, 1.0, 1.0]
    for s in states[1:]:
        s[Q_A], s[V_A] = states[0][Q_A].clone(), states[0][V_A].clone()
    out = average_frozen_a(states, w)
    assert torch.equal(out[Q_A], states[0][Q_A])
    torch.testing.assert_close(out[Q_B] @ out[Q_A], _avg_delta(states, w))  # mean(B)·A == mean(B·A)
    torch.testing.assert_close(out[MAG], weighted_average([{MAG: s[MAG]} for s in states], w)[MAG])
    states[2][V_A] = states[2][V_A] + 1e-9
    with pytest.raises(AggregationError, match=r"states\[2\].*v_proj.lora_A.*differs"):
        average_frozen_a(states, w)
    assert average_frozen_a(states, w, atol=1e-6)[V_A] is not states[0][V_A]


def test_frozen_a_accepts_b_only_states() -> None:
    states = [{k: v for k, v in s.items() if "lora_A" not in k} for s in _clients([2, 2])]
    out = average_frozen_a(states, [1, 1])
    torch.testing.assert_close(out[Q_B], (states[0][Q_B] + states[1][Q_B]) / 2)


# ---------------------------------------------------------------------------------------------------------------
# FLoRA stacking
# ---------------------------------------------------------------------------------------------------------------


def test_stack_lora_product_is_exact_with_heterogeneous_ranks() -> None:
    states, w = _clients([1, 2, 3]), [2.0, 1.0, 1.0]
    out = stack_lora(states, w)
    assert out[Q_A].shape == (6, IN) and out[Q_B].shape == (OUT, 6) and out[V_B].shape == (3, 6)
    torch.testing.assert_close(out[Q_B] @ out[Q_A], _avg_delta(states, w))
    torch.testing.assert_close(out[V_B] @ out[V_A], _avg_delta(states, w, "v"))
    assert list(out) == list(states[0])


def test_stack_lora_folds_client_and_target_scalings() -> None:
    states, w = _clients([2, 4]), [1.0, 1.0]
    scalings, target = [8 / 2, 8 / 4], 8 / 6  # alpha / r_k and alpha / sum r_k
    out = stack_lora(states, w, scalings=scalings, target_scaling=target)
    expected = 0.5 * (scalings[0] * states[0][Q_B] @ states[0][Q_A] + scalings[1] * states[1][Q_B] @ states[1][Q_A])
    torch.testing.assert_close(target * out[Q_B] @ out[Q_A], expected)
    torch.testing.assert_close(lora_deltas(out, target)[f"{PFX}.q_proj"], expected)


def test_product_methods_reject_lonely_factors_and_adalora() -> None:
    states = _clients([2, 2])
    lonely = [{k: v for k, v in s.items() if k != Q_B} for s in states]
    with pytest.raises(AggregationError, match="no matching A/B partner"):
        stack_lora(lonely)
    ada = [dict(s, **{f"{PFX}.q_proj.lora_E.default": torch.zeros(2, 1, dtype=torch.float64)}) for s in states]
    with pytest.raises(AggregationError, match="AdaLoRA"):
        svd_reproject(ada, None, 2)
    bad = _clients([2, 2])
    bad[1][Q_A] = torch.zeros(2, IN + 1, dtype=torch.float64)
    with pytest.raises(AggregationError, match="other than the rank"):
        zero_pad_aggregate(bad)


# ---------------------------------------------------------------------------------------------------------------
# HetLoRA zero padding and truncation
# ---------------------------------------------------------------------------------------------------------------


def test_zero_pad_aggregate_matches_manual_padding() -> None:
    states, w = _clients([1, 3]), [1.0, 3.0]
    out = zero_pad_aggregate(states, w, ranks=[1, 3], max_rank=4)
    assert out[Q_A].shape == (4, IN) and out[Q_B].shape == (OUT, 4)
    pad_a = [torch.cat([s[Q_A], torch.zeros(4 - s[Q_A].shape[0], IN, dtype=torch.float64)]) for s in states]
    pad_b = [torch.cat([s[Q_B], torch.zeros(OUT, 4 - s[Q_B].shape[1], dtype=torch.float64)], 1) for s in states]
    torch.testing.assert_close(out[Q_A], 0.25 * pad_a[0] + 0.75 * pad_a[1])
    torch.testing.assert_close(out[Q_B], 0.25 * pad_b[0] + 0.75 * pad_b[1])
    assert torch.equal(out[Q_A][3], torch.zeros(IN, dtype=torch.float64))
    assert zero_pad_aggregate(states, w)[Q_A].shape == (3, IN)  # max_rank defaults to the largest client rank


def test_zero_pad_aggregate_validates_ranks() -> None:
    states = _clients([1, 3])
    with pytest.raises(AggregationError, match=r"ranks\[1\]=2 but states\[1\] has LoRA ranks \[3\]"):
        zero_pad_aggregate(states, None, ranks=[1, 2])
    with pytest.raises(AggregationError, match="max_rank=2 is invalid"):
        zero_pad_aggregate(states, None, max_rank=2)


def test_truncate_to_rank() -> None:
    state = _clients([4])[0]
    out = truncate_to_rank(state, 2)
    assert torch.equal(out[Q_A], state[Q_A][:2]) and torch.equal(out[Q_B], state[Q_B][:, :2])
    assert torch.equal(out[MAG], state[MAG]) and out[MAG] is not state[MAG]
    with pytest.raises(AggregationError, match="larger rank 5"):
        truncate_to_rank(state, 5)
    with pytest.raises(AggregationError, match="rank=0"):
        truncate_to_rank(state, 0)


# ---------------------------------------------------------------------------------------------------------------
# FlexLoRA SVD re-projection
# ---------------------------------------------------------------------------------------------------------------


def test_svd_reproject_is_exact_when_rank_suffices() -> None:
    states, w = _clients([1, 2]), [1.0, 2.0]  # averaged ΔW has rank <= 3
    out = svd_reproject(states, w, 3)
    assert out[Q_A].shape == (3, IN) and out[Q_B].shape == (OUT, 3)
    torch.testing.assert_close(out[Q_B] @ out[Q_A], _avg_delta(states, w))
    torch.testing.assert_close(out[V_B] @ out[V_A], _avg_delta(states, w, "v"))
    padded = svd_reproject(states, w, 6)  # more than min(out, in, sum r_k) components: the rest are zero
    assert padded[Q_A].shape == (6, IN)
    torch.testing.assert_close(padded[Q_B] @ padded[Q_A], _avg_delta(states, w))


@pytest.mark.parametrize("rank", [1, 2])
def test_svd_reproject_is_the_best_rank_r_approximation(rank: int) -> None:
    states, w = _clients([2, 3, 2], seed=3), [1.0, 1.0, 2.0]
    dense = _avg_delta(states, w)
    out = svd_reproject(states, w, rank)
    best, sig = _best_rank(dense, rank)
    approx = out[Q_B] @ out[Q_A]
    torch.testing.assert_close(approx, best)
    # Eckart–Young: the squared error is the tail of the spectrum.
    assert (dense - approx).norm() ** 2 == pytest.approx(float((sig[rank:] ** 2).sum()), rel=1e-9)
    # Components are sorted, so truncating the rank-3 global gives each client its best lower-rank approximation.
    cut = truncate_to_rank(svd_reproject(states, w, 3), rank)
    torch.testing.assert_close(cut[Q_B] @ cut[Q_A], best)


def test_svd_reproject_scalings_dtype_and_conv_shapes() -> None:
    g = torch.Generator().manual_seed(7)
    conv = [
        {
            "c.lora_A.weight": torch.randn(r, 2, 3, 3, generator=g),
            "c.lora_B.weight": torch.randn(4, r, 1, 1, generator=g),
        }
        for r in (1, 2)
    ]
    out = svd_reproject(
        [{k: v.bfloat16() for k, v in s.items()} for s in conv], [1, 1], 3, scalings=[2.0, 1.0], target_scaling=0.5
    )
    assert out["c.lora_A.weight"].shape == (3, 2, 3, 3) and out["c.lora_B.weight"].shape == (4, 3, 1, 1)
    assert out["c.lora_A.weight"].dtype == torch.bfloat16
    expected = 0.5 * (2.0 * lora_deltas(conv[0])["c"] + 1.0 * lora_deltas(conv[1])["c"])
    got = 0.5 * lora_deltas({k: v.float() for k, v in out.items()})["c"]
    torch.testing.assert_close(got, expected, rtol=0.05, atol=0.1)  # bf16 inputs/outputs: loose


# ---------------------------------------------------------------------------------------------------------------
# common behaviour
# ---------------------------------------------------------------------------------------------------------------

ALL: dict[str, Callable[..., dict[str, torch.Tensor]]] = {
    "average_ab": average_ab,
    "frozen_a": average_frozen_a,
    "stack": stack_lora,
    "zero_pad": zero_pad_aggregate,
    "svd": lambda s, w: svd_reproject(s, w, 2),
}


@pytest.mark.parametrize("name", sorted(ALL))
def test_non_lora_keys_are_weighted_averaged(name: str) -> None:
    states, w = _clients([2, 2], seed=5), [1.0, 4.0]
    if name == "frozen_a":
        for k in (Q_A, V_A):
            states[1][k] = states[0][k].clone()
    out = ALL[name](states, w)
    torch.testing.assert_close(out[MAG], 0.2 * states[0][MAG] + 0.8 * states[1][MAG])
    assert list(out) == list(states[0])


@pytest.mark.parametrize("name", sorted(ALL))
def test_lora_functions_validate_inputs(name: str) -> None:
    with pytest.raises(AggregationError, match="empty list"):
        ALL[name]([], None)
    states = _clients([2, 2])
    with pytest.raises(AggregationError, match=r"weights\[1\]=0.0"):
        ALL[name]([states[0], {k: v.clone() for k, v in states[0].items()}], [1.0, 0.0])
    del states[1][MAG]
    with pytest.raises(AggregationError, match="different keys"):
        ALL[name](states, None)
