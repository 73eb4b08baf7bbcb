"""The FedsLLM delay and energy model: pure free functions (numpy, no torch). Units are SI throughout.

The paper (Zhao et al., arXiv 2407.09250) does not publish its delay equations; these are ours, stated here and in
docs/planner.md. Notation: B batch size (sequences), T sequence length (tokens), H hidden size, I intermediate size,
V vocabulary, L decoder layers, c the cut (clients run layers [0, c), the main server layers [c, L) and the head),
r the LoRA rank, S local steps per round.

Rates are bit/s, bandwidths Hz, powers W, gains linear (dimensionless), noise power spectral density W/Hz, data bits,
compute FLOP and FLOP/s, times s, energies J.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

LN2 = math.log(2.0)

#: The seven linear maps of a Llama-style decoder layer (gated MLP), the names LoRA targets use.
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class ModelDims:
    """Dimensions of a Llama-style decoder (grouped-query attention, gated MLP, untied or tied head)."""

    layers: int
    hidden: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int


# ---------------------------------------------------------------------------------------------------------------------
# Radio


def db_to_linear(db: ArrayLike) -> NDArray[np.float64]:
    """10^(dB/10): a power ratio in dB to a linear ratio."""
    return np.power(10.0, np.asarray(db, dtype=float) / 10.0)


def dbm_per_hz_to_w_per_hz(dbm_per_hz: float) -> float:
    """Noise power spectral density: dBm/Hz to W/Hz (-174 dBm/Hz, thermal noise at 290 K, is 3.98e-21 W/Hz)."""
    return float(10.0 ** ((dbm_per_hz - 30.0) / 10.0))


def path_gain_db(distance_m: ArrayLike) -> NDArray[np.float64]:
    """Large-scale channel gain in dB at ``distance_m`` metres: -(128.1 + 37.6 log10(d / 1 km)), the urban-macro path
    loss of 3GPP TR 36.814 used by most wireless federated-learning papers (no shadowing, no fast fading)."""
    return -(128.1 + 37.6 * np.log10(np.asarray(distance_m, dtype=float) / 1000.0))


def rate(b: ArrayLike, p: ArrayLike, g: ArrayLike, n0: float) -> NDArray[np.float64]:
    """Shannon rate in bit/s: ``b * log2(1 + p * g / (b * n0))`` for bandwidth b (Hz), transmit power p (W), linear
    channel gain g and noise density n0 (W/Hz). b = 0 gives 0. Increasing and concave in b and in p; as b grows it
    tends to ``p * g / (n0 * ln 2)`` (:func:`rate_limit`)."""
    b = np.asarray(b, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.asarray(p, dtype=float) * np.asarray(g, dtype=float) / (b * n0)
        out = b * np.log1p(snr) / LN2
    return np.where(b > 0, out, 0.0)


def rate_limit(p: ArrayLike, g: ArrayLike, n0: float) -> NDArray[np.float64]:
    """The infinite-bandwidth limit of :func:`rate`, ``p * g / (n0 * ln 2)`` bit/s: no bandwidth beats it."""
    return np.asarray(p, dtype=float) * np.asarray(g, dtype=float) / (n0 * LN2)


def power_for_rate(r: ArrayLike, b: ArrayLike, g: ArrayLike, n0: float) -> NDArray[np.float64]:
    """The transmit power (W) that reaches rate r (bit/s) on bandwidth b: ``(2^(r/b) - 1) * b * n0 / g`` (the inverse
    of :func:`rate` in p). inf where b = 0 and r > 0, or where 2^(r/b) overflows."""
    r, b = np.asarray(r, dtype=float), np.asarray(b, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        out = np.expm1(np.minimum(r / b, 1e4) * LN2) * b * n0 / np.asarray(g, dtype=float)
    return np.where(r <= 0, 0.0, np.where(b > 0, out, np.inf))


def downlink_efficiency(power_w: float, g: ArrayLike, n0: float, band_hz: float) -> NDArray[np.float64]:
    """Downlink spectral efficiency (bit/s/Hz) when the server spreads ``power_w`` evenly over the whole band: the power
    spectral density ``power_w / band_hz`` is the same on every client's share, so the SNR ``power_w * g / (band_hz *
    n0)`` does not depend on the share and the downlink rate on b Hz is ``b * log2(1 + SNR)``, linear in b."""
    return np.log1p(power_w * np.asarray(g, dtype=float) / (band_hz * n0)) / LN2


# ---------------------------------------------------------------------------------------------------------------------
# Model: parameters, FLOPs, bits


def projection_shapes(dims: ModelDims) -> dict[str, tuple[int, int]]:
    """(d_in, d_out) of each linear map of one layer: q/o H x H, k/v H x (kv_heads * H / heads), gate/up H x I,
    down I x H."""
    h, kv = dims.hidden, dims.kv_heads * (dims.hidden // dims.heads)
    i = dims.intermediate
    return {
        "q_proj": (h, h),
        "k_proj": (h, kv),
        "v_proj": (h, kv),
        "o_proj": (h, h),
        "gate_proj": (h, i),
        "up_proj": (h, i),
        "down_proj": (i, h),
    }


def layer_params(dims: ModelDims) -> int:
    """Weights of one decoder layer's linear maps, ``2H^2 + 2H*kv + 3H*I`` (the two norms' 2H are left out)."""
    return sum(d_in * d_out for d_in, d_out in projection_shapes(dims).values())


def lora_params_per_layer(dims: ModelDims, rank: int, targets: tuple[str, ...] | list[str]) -> int:
    """LoRA parameters of one layer: ``r * (d_in + d_out)`` per targeted linear map (A is r x d_in, B is d_out x r)."""
    shapes = projection_shapes(dims)
    return sum(rank * (shapes[t][0] + shapes[t][1]) for t in targets)


def layer_forward_flops(dims: ModelDims, lora_params: int, seq_len: int) -> float:
    """Forward FLOPs of one layer on one sequence of T tokens: ``2T(P + P_lora) + 4T^2 H``.

    2 FLOPs per weight per token for the frozen maps (P = :func:`layer_params`) and the LoRA maps (P_lora), plus the
    attention scores QK^T and the weighted sum AV, ``2T^2 H`` each (no causal halving). Norms, activations, softmax and
    RoPE are left out (a few % of the total)."""
    t = float(seq_len)
    return 2.0 * t * (layer_params(dims) + lora_params) + 4.0 * t * t * dims.hidden


def layer_backward_flops(dims: ModelDims, lora_params: int, seq_len: int) -> float:
    """Backward FLOPs of one layer on one sequence with a frozen base and trainable LoRA: ``2TP + 4T P_lora + 8T^2 H``.

    The frozen maps need only the gradient with respect to their input (one matmul: ``2TP``, no weight gradient); each
    LoRA map needs its input gradient and its weight gradient (``2 * 2T P_lora``); the attention products QK^T and AV
    need the gradient of both their inputs (``2 * 4T^2 H``). The first client layer is counted in full although the
    gradient at its input (the frozen embedding) is not needed: a slight overestimate."""
    t = float(seq_len)
    return 2.0 * t * layer_params(dims) + 4.0 * t * lora_params + 8.0 * t * t * dims.hidden


def head_flops(dims: ModelDims, seq_len: int) -> float:
    """FLOPs of the (frozen) LM head on one sequence, forward + input gradient: ``2 * 2 T H V``."""
    return 4.0 * seq_len * dims.hidden * dims.vocab


def client_step_flops(
    dims: ModelDims, cut: int, lora_params: int, batch: int, seq_len: int, forwards: int = 1
) -> float:
    """Client FLOPs of one local step: ``forwards`` forwards and one backward of layers [0, c) on B sequences (the
    embedding lookup is free). ``forwards = 2`` is fedpeft's own client, which keeps no autograd graph between
    messages and recomputes the forward when the gradient arrives (benchmarks/fedsllm.py measures it at 0.963 of
    this count); 1 is a client that keeps the graph."""
    fwd = layer_forward_flops(dims, lora_params, seq_len)
    return float(batch * cut * (forwards * fwd + layer_backward_flops(dims, lora_params, seq_len)))


def server_step_flops(dims: ModelDims, cut: int, lora_params: int, batch: int, seq_len: int) -> float:
    """Main-server FLOPs of one client's local step: forward and backward of layers [c, L) and the head, B sequences."""
    per_layer = layer_forward_flops(dims, lora_params, seq_len) + layer_backward_flops(dims, lora_params, seq_len)
    return float(batch * ((dims.layers - cut) * per_layer + head_flops(dims, seq_len)))


def activation_bits(batch: int, seq_len: int, hidden: int, bytes_per_element: float) -> float:
    """Bits of the activations at the cut for one step, ``8 * B * T * H * bytes``; the gradient sent back is as big."""
    return 8.0 * batch * seq_len * hidden * bytes_per_element


# ---------------------------------------------------------------------------------------------------------------------
# Per-client round time and energy


def client_round_time(
    compute_s: ArrayLike,
    up_bits: ArrayLike,
    down_bits: ArrayLike,
    b: ArrayLike,
    p: ArrayLike,
    g: ArrayLike,
    n0: float,
    down_eff: ArrayLike,
) -> NDArray[np.float64]:
    """One client's round time (s): ``compute_s + up_bits / rate(b, p, g, n0) + down_bits / (b * down_eff)``.

    ``compute_s`` = S * (client FLOPs / client FLOP/s + server FLOPs / server share) does not depend on the radio;
    ``up_bits`` = S * activation bits + client LoRA bits (to the main server, then to the federated server);
    ``down_bits`` = S * gradient bits + client LoRA bits (the gradients at the cut, then the averaged LoRA). Both links
    use the client's bandwidth share b (time division). Decreasing in b and in p; inf where b = 0."""
    b = np.asarray(b, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        up = np.asarray(up_bits, dtype=float) / rate(b, p, g, n0)
        down = np.asarray(down_bits, dtype=float) / (b * np.asarray(down_eff, dtype=float))
    return np.where(b > 0, np.asarray(compute_s, dtype=float) + up + down, np.inf)


def transmit_energy(up_bits: ArrayLike, b: ArrayLike, p: ArrayLike, g: ArrayLike, n0: float) -> NDArray[np.float64]:
    """Radio energy of a round (J): transmit power x upload time, ``p * up_bits / rate(b, p, g, n0)``. Increasing in p
    for fixed b; it tends to ``up_bits * n0 * ln 2 / g`` (:func:`min_transmit_energy`) as the rate per Hz goes to 0."""
    p = np.asarray(p, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = p * np.asarray(up_bits, dtype=float) / rate(b, p, g, n0)
    return np.where(p > 0, out, np.asarray(up_bits, dtype=float) * n0 * LN2 / np.asarray(g, dtype=float))


def min_transmit_energy(up_bits: ArrayLike, g: ArrayLike, n0: float) -> NDArray[np.float64]:
    """The infimum of :func:`transmit_energy` over all b, p: ``up_bits * n0 * ln 2 / g`` J (reached only as the round
    time goes to infinity). An energy budget at or below compute energy + this is infeasible."""
    return np.asarray(up_bits, dtype=float) * n0 * LN2 / np.asarray(g, dtype=float)


def energy_rate_per_hz(energy_j: ArrayLike, up_bits: ArrayLike, g: ArrayLike, n0: float) -> NDArray[np.float64]:
    """The largest rate per Hz x (bit/s/Hz) at which uploading ``up_bits`` costs at most ``energy_j`` of radio energy.

    At the minimal power for rate x*b on b Hz, the energy is ``up_bits * n0 / g * (2^x - 1) / x``, increasing in x
    and independent of b; this solves ``(2^x - 1) / x = q`` with ``q = energy_j * g / (up_bits * n0)`` in closed form
    via the lower branch of Lambert's W: with u = x ln 2 and k = q / ln 2, ``e^u = 1 + k u`` gives
    ``u = -W_{-1}(-e^{-1/k} / k) - 1/k``. 0 where q <= ln 2 (no rate meets the budget), inf where energy_j is inf."""
    from scipy.special import lambertw

    energy = np.asarray(energy_j, dtype=float)
    q = energy * np.asarray(g, dtype=float) / (np.asarray(up_bits, dtype=float) * n0)
    k = np.where(np.isfinite(q) & (q > LN2), q / LN2, 2.0)
    with np.errstate(over="ignore", under="ignore"):
        u = -np.real(lambertw(-np.exp(-1.0 / k) / k, -1)) - 1.0 / k
    x = u / LN2
    return np.where(np.isinf(energy), np.inf, np.where(q > LN2, x, 0.0))
