"""The delay/energy model's formulas on hand-computed cases, their monotonicity, and the rounds(r) fit."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedpeft.errors import ConfigError
from fedpeft.planning import delay as dl
from fedpeft.planning.rounds import fit_rounds, rounds_at

TINY = dl.ModelDims(layers=2, hidden=4, intermediate=8, vocab=10, heads=2, kv_heads=1)
SMOLLM2 = dl.ModelDims(layers=30, hidden=576, intermediate=1536, vocab=49152, heads=9, kv_heads=3)


def test_rate_hand_computed() -> None:
    # SNR = 0.1 * 1e-10 / (1e6 * 1e-20) = 1000 -> 1e6 * log2(1001) bit/s
    assert dl.rate(1e6, 0.1, 1e-10, 1e-20) == pytest.approx(1e6 * math.log2(1001.0), rel=1e-12)
    assert dl.rate(1e6, 0.1, 1e-10, 1e-20) == pytest.approx(9.96722e6, rel=1e-6)
    assert dl.rate(0.0, 0.1, 1e-10, 1e-20) == 0.0  # no bandwidth, no rate (and no NaN)
    assert dl.rate(1e6, 0.0, 1e-10, 1e-20) == 0.0
    assert dl.rate_limit(0.1, 1e-10, 1e-20) == pytest.approx(1e9 / math.log(2))
    # the inverse in p
    assert dl.power_for_rate(1e6 * math.log2(1001.0), 1e6, 1e-10, 1e-20) == pytest.approx(0.1, rel=1e-10)
    assert dl.power_for_rate(0.0, 1e6, 1e-10, 1e-20) == 0.0
    assert dl.power_for_rate(1.0, 0.0, 1e-10, 1e-20) == math.inf


def test_rate_monotone_and_bounded() -> None:
    b = np.geomspace(1e2, 1e9, 200)
    r = dl.rate(b, 0.2, 1e-11, 4e-21)
    assert np.all(np.diff(r) > 0)  # more bandwidth never slower
    lin = np.linspace(1e3, 1e9, 500)
    assert np.all(np.diff(dl.rate(lin, 0.2, 1e-11, 4e-21), 2) <= 1e-9 * dl.rate(lin, 0.2, 1e-11, 4e-21)[2:])  # concave
    assert np.all(r < dl.rate_limit(0.2, 1e-11, 4e-21))
    p = np.geomspace(1e-4, 1.0, 100)
    assert np.all(np.diff(dl.rate(1e6, p, 1e-11, 4e-21)) > 0)  # more power never slower


def test_units() -> None:
    assert dl.dbm_per_hz_to_w_per_hz(-174.0) == pytest.approx(3.981e-21, rel=1e-3)
    assert dl.db_to_linear(-100.0) == pytest.approx(1e-10)
    assert dl.path_gain_db(1000.0) == pytest.approx(-128.1)
    assert dl.path_gain_db(100.0) == pytest.approx(-90.5)


def test_model_counts() -> None:
    # q, o: 576x576; k, v: 576x192; gate, up: 576x1536; down: 1536x576
    assert dl.layer_params(SMOLLM2) == 2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536 == 3_538_944
    # 30 layers + the tied embedding = SmolLM2-135M's 134.5M (norms excluded)
    assert 30 * dl.layer_params(SMOLLM2) + 49152 * 576 == 134_479_872
    assert dl.lora_params_per_layer(SMOLLM2, 8, ["q_proj", "v_proj"]) == 8 * (576 + 576) + 8 * (576 + 192) == 15_360
    assert dl.activation_bits(8, 256, 576, 2.0) == 8 * 8 * 256 * 576 * 2


def test_flops_hand_computed() -> None:
    # TINY: q 4x4, k/v 4x2, o 4x4, gate/up 4x8, down 8x4 -> 144 weights; T = 3 tokens
    assert dl.layer_params(TINY) == 144
    assert dl.layer_forward_flops(TINY, 0, 3) == 2 * 3 * 144 + 4 * 9 * 4 == 1008
    assert dl.layer_backward_flops(TINY, 0, 3) == 2 * 3 * 144 + 8 * 9 * 4 == 1152
    assert dl.layer_forward_flops(TINY, 10, 3) == 1008 + 2 * 3 * 10
    assert dl.layer_backward_flops(TINY, 10, 3) == 1152 + 4 * 3 * 10
    assert dl.head_flops(TINY, 3) == 4 * 3 * 4 * 10
    # one client layer, batch 2: 2 * (fwd + bwd); the server: the other layer + the head
    assert dl.client_step_flops(TINY, 1, 0, 2, 3) == 2 * (1008 + 1152)
    # fedpeft's own client recomputes the forward when the gradient arrives
    assert dl.client_step_flops(TINY, 1, 0, 2, 3, forwards=2) == 2 * (2 * 1008 + 1152)
    assert dl.server_step_flops(TINY, 1, 0, 2, 3) == 2 * (1008 + 1152 + 480)


def test_round_time_and_energy_hand_computed() -> None:
    # SNR = 1 on 1 MHz -> 1 Mbit/s up: 1 s; down at 2 bit/s/Hz: 0.5 s; plus 1 s of compute
    g, n0, b, p = 1e-10, 1e-20, 1e6, 1e-4
    assert dl.rate(b, p, g, n0) == pytest.approx(1e6)
    assert dl.client_round_time(1.0, 1e6, 1e6, b, p, g, n0, 2.0) == pytest.approx(2.5)
    assert dl.client_round_time(1.0, 1e6, 1e6, 0.0, p, g, n0, 2.0) == math.inf
    assert dl.transmit_energy(1e6, b, p, g, n0) == pytest.approx(p * 1.0)
    assert dl.min_transmit_energy(1e6, g, n0) == pytest.approx(1e6 * n0 * math.log(2) / g)
    # the downlink: power spread over the band, SNR independent of the share
    assert dl.downlink_efficiency(10.0, 1e-10, 1e-20, 1e7) == pytest.approx(math.log2(1 + 10 * 1e-10 / (1e7 * 1e-20)))


def test_round_time_monotone() -> None:
    b = np.geomspace(1e3, 1e8, 100)
    t = dl.client_round_time(0.5, 2e7, 2e7, b, 0.2, 1e-11, 4e-21, 6.0)
    assert np.all(np.diff(t) < 0)
    p = np.geomspace(1e-3, 1.0, 100)
    assert np.all(np.diff(dl.client_round_time(0.5, 2e7, 2e7, 1e6, p, 1e-11, 4e-21, 6.0)) < 0)
    e = dl.transmit_energy(2e7, 1e6, p, 1e-11, 4e-21)
    assert np.all(np.diff(e) > 0)  # energy grows with power
    assert np.all(e > dl.min_transmit_energy(2e7, 1e-11, 4e-21))


def test_energy_rate_per_hz_inverts_energy() -> None:
    up, g, n0 = 2e7, 1e-11, 4e-21
    for energy in (0.05, 0.5, 5.0, 500.0):
        x = float(dl.energy_rate_per_hz(energy, up, g, n0))
        b = 1e6  # any bandwidth: at the least power for rate x * b the energy is the budget
        p = dl.power_for_rate(x * b, b, g, n0)
        assert dl.transmit_energy(up, b, p, g, n0) == pytest.approx(energy, rel=1e-9)
    below = 0.5 * float(dl.min_transmit_energy(up, g, n0))
    assert dl.energy_rate_per_hz(below, up, g, n0) == 0.0
    assert dl.energy_rate_per_hz(math.inf, up, g, n0) == math.inf


def test_fit_rounds_recovers_and_is_monotone() -> None:
    ranks = [1, 2, 4, 8, 16, 32]
    model = fit_rounds(ranks, rounds_at(ranks, 100.0, 150.0, 0.8).tolist())
    assert (model.a, model.b, model.gamma) == pytest.approx((100.0, 150.0, 0.8), rel=1e-5)
    assert model.rmse < 1e-6
    r = np.arange(1, 200)
    assert np.all(np.diff(model(r)) <= 0)  # a higher rank never needs more rounds
    noisy = fit_rounds(ranks, [260, 190, 150, 128, 118, 113])
    assert noisy.rmse < 2.0 and noisy.a >= 0 and noisy.b >= 0


@pytest.mark.parametrize(
    ("ranks", "rounds", "field"),
    [
        ([1, 2], [100, 90], "rounds.ranks"),  # fewer than 3 points
        ([1, 2, 2], [100, 90, 80], "rounds.ranks"),  # a repeated rank
        ([0, 2, 4], [100, 90, 80], "rounds.ranks"),
        ([1, 2, 4], [100, -90, 80], "rounds.rounds"),
        ([1, 2, 4], [100, 90], "rounds.rounds"),
    ],
)
def test_fit_rounds_refuses_bad_points(ranks: list[float], rounds: list[float], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        fit_rounds(ranks, rounds)
    assert err.value.field == field
