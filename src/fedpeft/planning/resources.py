"""Bandwidth and power allocation for one (cut, rank): the min-max round-time problem, solved exactly.

Problem (per round, clients i = 1..K)::

    minimize T  s.t.  t_i(b_i, p_i) <= T,  sum b_i <= B,  0 <= p_i <= pmax_i,  sum p_i <= P (optional),
                      p_i * up_i / rate(b_i, p_i) + compute_j_i <= E_i (optional)

with t_i = compute_s_i + up_i / rate(b_i, p_i) + down_i / (b_i * s_i)
(:func:`~fedpeft.planning.delay.client_round_time`).

* Continuous bandwidth, no binding total power (:func:`solve_relaxed`): for a target T every client needs a least
  bandwidth b_i(T) (its time is convex and decreasing in b, at the largest power its cap and energy budget allow),
  found by safeguarded Newton; T* is the least T with sum b_i(T) <= B, found by Brent's method. At the optimum every
  client finishes at T* and the band is used fully (the KKT conditions of the min-max problem).
* With a binding total power (:func:`solve_bandwidth`): for fixed T the least total power is a separable convex
  problem (the least power ``p_i(b) = n0/g_i * b * (2^(up_i / (b tau_i - d_i)) - 1)``, tau_i = T - compute_s_i,
  d_i = down_i / s_i, is convex and decreasing in b); water-filling on the bandwidth price lambda solves it, each
  client's stationary point in closed form up to a 1-D monotone equation (Newton). T* is the least T whose least total
  power is <= P (Brent's method).
* Subchannels (:func:`solve_subchannels`): the paper's greedy assignment (each client one subchannel, then each next
  subchannel to the slowest client: optimal for a min-max of decreasing functions at fixed powers), then power. With
  a binding total power, bisection on T where, for each T, the assignment of least total power is exact: each
  client's least feasible count, then the remaining subchannels to the largest marginal power savings (the least
  power is convex in the bandwidth, so this marginal allocation is optimal).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field, fields, replace

import numpy as np
from numpy.typing import NDArray

from fedpeft.planning.delay import LN2, energy_rate_per_hz, power_for_rate, rate

Array = NDArray[np.float64]
_REL = 1e-12  # relative precision of every bisection


@dataclass(frozen=True)
class Problem:
    """One (cut, rank) choice for every client (arrays over clients, or any shape broadcasting with the bandwidths):
    compute time per round on the client and on its server share (s), bits up and down per round, compute energy per
    round (J); the links: linear gains, power caps (W), energy budgets per round (J, inf = none), downlink spectral
    efficiency (bit/s/Hz); noise density (W/Hz), the band (Hz), the total power cap (W, inf = none)."""

    client_s: Array
    server_s: Array
    up_bits: Array
    down_bits: Array
    compute_j: Array
    gain: Array
    max_power_w: Array
    energy_budget_j: Array
    down_eff: Array
    n0: float
    band_hz: float
    total_power_w: float
    #: the largest uplink rate per Hz (bit/s/Hz) within the energy budget (inf = no budget, 0 = none meets it)
    x_energy: Array = field(init=False, repr=False)

    def __post_init__(self) -> None:
        spare = self.energy_budget_j - self.compute_j
        x = energy_rate_per_hz(np.where(spare > 0, spare, 1.0), self.up_bits, self.gain, self.n0)
        object.__setattr__(self, "x_energy", np.where(spare > 0, x, 0.0))

    @property
    def compute_s(self) -> Array:
        return self.client_s + self.server_s

    def column(self) -> Problem:
        """The same problem with every per-client array as a column (rows = clients), for tables over bandwidths."""
        names = [f.name for f in fields(self) if f.init and isinstance(getattr(self, f.name), np.ndarray)]
        return replace(self, **{n: getattr(self, n)[:, None] for n in names})


class NoRoundWithin(Exception):
    """No allocation finishes a round within the given time (the caller turns it into an InfeasibleScenarioError)."""


def client_rate(pr: Problem, b: Array, p_cap: Array) -> tuple[Array, Array]:
    """Uplink rate (bit/s) and power (W) of each client on bandwidth b with power at most ``p_cap``: the largest power
    whose round's radio energy fits the energy budget (energy grows with power, time falls with it). Rate 0 where the
    budget is below the compute energy plus the least radio energy."""
    full = rate(b, p_cap, pr.gain, pr.n0)
    with np.errstate(invalid="ignore"):
        capped = np.where(np.isinf(pr.x_energy), np.inf, pr.x_energy * b)
    r = np.minimum(full, capped)
    p = np.where(r < full, power_for_rate(r, b, pr.gain, pr.n0), p_cap)
    return r, p


def client_min_time(pr: Problem, b: Array, p_cap: Array) -> Array:
    """Each client's least round time (s) on bandwidth b with power at most ``p_cap`` within its energy budget."""
    r, _ = client_rate(pr, b, p_cap)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = pr.compute_s + pr.up_bits / r + pr.down_bits / (b * pr.down_eff)
    return np.where((b > 0) & (r > 0), t, np.inf)


def min_power(pr: Problem, b: Array, t: Array | float) -> Array:
    """Each client's least power (W) to finish a round by ``t`` on bandwidth b; inf where no power within its cap and
    energy budget does."""
    with np.errstate(divide="ignore", invalid="ignore"):
        left = np.asarray(t) - pr.compute_s - pr.down_bits / (b * pr.down_eff)
        need = pr.up_bits / left
        p = power_for_rate(need, b, pr.gain, pr.n0)
        energy = p * left + pr.compute_j
    # 1e-9: the least power at the least time of a client equals its cap up to rounding
    ok = (b > 0) & (left > 0) & (p <= pr.max_power_w * (1 + 1e-9)) & (energy <= pr.energy_budget_j * (1 + 1e-9))
    return np.where(ok, np.minimum(p, pr.max_power_w), np.inf)


def _bisect(feasible, lo: Array, hi: Array, log: bool = True) -> Array:  # type: ignore[no-untyped-def]
    """Vectorized bisection for the boundary of a monotone predicate: ``feasible(hi)`` holds, ``feasible(lo)`` not;
    returns the feasible end of the final bracket (relative width ``_REL``)."""
    lo, hi = np.array(lo, dtype=float), np.array(hi, dtype=float)
    for _ in range(200):
        if np.all(hi - lo <= _REL * hi):
            break
        mid = np.sqrt(lo * hi) if log else 0.5 * (lo + hi)
        mid = np.where(lo > 0, mid, 0.5 * (lo + hi))
        ok = feasible(mid)
        hi, lo = np.where(ok, mid, hi), np.where(ok, lo, mid)
    return hi


def _comm_time(pr: Problem, b: Array, p_cap: Array) -> tuple[Array, Array]:
    """Each client's radio time per round ``up / rate + down / (b s)`` on bandwidth b (power <= ``p_cap`` within the
    energy budget) and its derivative in b (convex and decreasing in b)."""
    snr = p_cap * pr.gain / (pr.n0 * b)
    spectral = np.log1p(snr) / LN2
    r, dr = b * spectral, spectral - snr / ((1.0 + snr) * LN2)
    capped = pr.x_energy * b < r
    r, dr = np.where(capped, pr.x_energy * b, r), np.where(capped, pr.x_energy, dr)
    down = pr.down_bits / (b * pr.down_eff)
    return pr.up_bits / r + down, -pr.up_bits * dr / (r * r) - down / b


def min_bandwidth(pr: Problem, t: float, p_cap: Array, guess: Array | None = None) -> Array:
    """Each client's least bandwidth (Hz) to finish by ``t`` at power <= ``p_cap``; inf where even the whole band
    cannot. Newton's method on x = band / b (the radio time is close to linear in 1/b: a few steps from anywhere, one
    or two from a ``guess``), safeguarded by a bracket and a geometric bisection step when Newton leaves it."""
    tau = t - pr.compute_s
    band = np.full(np.shape(tau), pr.band_hz)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        can = (tau > 0) & (_comm_time(pr, band, p_cap)[0] <= tau)
        tau = np.where(can, tau, 1.0)
        lo, hi = np.ones(band.shape), np.full(band.shape, 1e15)  # f(lo) <= 0 < f(hi) where can
        x = np.ones(band.shape) if guess is None else np.clip(pr.band_hz / guess, 1.0, 1e15)
        x = np.where(np.isfinite(x), x, 1.0)
        for _ in range(100):
            b = pr.band_hz / x
            f, df = _comm_time(pr, b, p_cap)
            f, df = f - tau, -df * b * b / pr.band_hz
            lo, hi = np.where(f <= 0, x, lo), np.where(f <= 0, hi, x)
            step = f / df
            nxt = x - step
            inside = np.isfinite(nxt) & (nxt >= lo) & (nxt <= hi)
            nxt = np.where(inside, nxt, np.sqrt(lo * hi))
            done = (inside & (np.abs(step) <= 1e-13 * x)) | (hi - lo <= 1e-13 * lo) | ~can
            x = nxt
            if np.all(done):
                break
    return np.where(can, pr.band_hz / x, np.inf)


def _least_time(excess, t_lo: float, max_round_s: float) -> float:  # type: ignore[no-untyped-def]
    """The least round time at or above ``t_lo`` where ``excess`` (decreasing in t) is <= 0: doubling for a bracket,
    then Brent's method."""
    from scipy.optimize import brentq

    f_lo = excess(t_lo)
    if f_lo <= 0:
        return t_lo
    t_hi = 2.0 * t_lo
    while excess(t_hi) > 0:
        if t_hi > max_round_s:
            raise NoRoundWithin(t_hi)
        t_lo, t_hi = t_hi, 2.0 * t_hi
    # inf (no allocation at all) clipped to a huge finite excess: Brent's method then bisects past it
    return float(brentq(lambda t: min(excess(t), 1e300), t_lo, t_hi, xtol=1e-300, rtol=1e-14, maxiter=200))


def solve_relaxed(pr: Problem, max_round_s: float = np.inf) -> tuple[Array, Array, float]:
    """The optimal continuous allocation without the total power cap: (bandwidth Hz, power W, round time s). Raises
    :class:`NoRoundWithin` if no allocation finishes a round within ``max_round_s``."""
    cap, k = pr.max_power_w, pr.up_bits.shape[0]
    # every client alone on the whole band: the least sum of bandwidths is >= the band here (a lower bound on T)
    t_lo = float(np.max(client_min_time(pr, np.full(k, pr.band_hz), cap)))
    if not np.isfinite(t_lo) or t_lo > max_round_s:
        raise NoRoundWithin(t_lo)
    last: list[Array] = []  # the previous solution: Newton's start for the next t

    def excess(t: float) -> float:
        b = min_bandwidth(pr, t, cap, last[-1] if last else None)
        if np.all(np.isfinite(b)):
            last[:] = [b]
        return float(np.sum(b)) - pr.band_hz

    t_rel = _least_time(excess, t_lo, max_round_s)
    b = min_bandwidth(pr, t_rel, cap, last[-1] if last else None)
    b = b * (pr.band_hz / np.sum(b))  # the band used exactly (a ~1e-14 correction)
    _, p = client_rate(pr, b, cap)
    return b, p, float(np.max(client_min_time(pr, b, cap)))


def solve_bandwidth(
    pr: Problem, max_round_s: float = np.inf, relaxed: tuple[Array, Array, float] | None = None
) -> tuple[Array, Array, float]:
    """The optimal continuous allocation: (bandwidth Hz, power W per client, round time s). ``relaxed`` is
    :func:`solve_relaxed`'s answer when the caller has it. Raises :class:`NoRoundWithin` if no allocation finishes a
    round within ``max_round_s``."""
    b, p, t = relaxed if relaxed is not None else solve_relaxed(pr, max_round_s)
    if np.sum(p) > pr.total_power_w * (1 + 1e-12):
        t_star = _least_time(lambda t: _least_power(pr, t)[1] - pr.total_power_w, t, max_round_s)
        b, _ = _least_power(pr, t_star)
        p = min_power(pr, b, t_star)
        t = float(np.max(client_min_time(pr, b, p)))
    if t > max_round_s:
        raise NoRoundWithin(t)
    return b, p, t


# 1 - e^w (1 - w) = sum_{n >= 2} (n - 1) w^n / n!: the coefficients of w^2 * poly(w), highest power first
_SERIES = np.array([(m + 1) / math.factorial(m + 2) for m in range(10)][::-1])


def _h(w: Array, k: Array) -> tuple[Array, Array]:
    """``1 - e^w (1 - w - k w^2)`` (>= 0, convex increasing on w >= 0; its series below w = 0.1, free of cancellation)
    and its derivative ``e^w w (1 + 2k + k w)``."""
    ew = np.exp(w)
    small = np.minimum(w, 0.1)
    series = small * small * (np.polyval(_SERIES, small) + k * ew)
    return np.where(w < 0.1, series, 1.0 - ew * (1.0 - w - k * w * w)), ew * w * (1.0 + 2.0 * k + k * w)


def _stationary_w(mu: Array, k: Array) -> Array:
    """The w >= 0 solving ``_h(w, k) = mu``: Newton from above (h >= (1/2 + k) w^2 and h >= e^w (w - 1) give the
    start; on a convex increasing function Newton from above decreases monotonically to the root)."""
    w = np.minimum(np.sqrt(mu / (0.5 + k)), 2.0 + np.log1p(mu))
    for _ in range(100):
        h, dh = _h(w, k)
        step = np.where(dh > 0, (h - mu) / np.where(dh > 0, dh, 1.0), 0.0)
        w = np.maximum(w - step, 0.5 * w)
        if np.all((np.abs(step) <= 1e-13 * w) | (np.abs(h - mu) <= 1e-14 * mu)):
            break
    return w


def _least_power(pr: Problem, t: float) -> tuple[Array, float]:
    """The bandwidths minimizing the total power that finishes every client by ``t``, and that total (inf if none).

    Water-filling: at bandwidth price lambda a client's stationary bandwidth is ``(up ln2 / w + d) / tau`` with w from
    :func:`_stationary_w` at mu = lambda g / n0 (never below its least bandwidth); lambda by Brent's method so that
    the band is used exactly."""
    from scipy.optimize import brentq

    b_min = min_bandwidth(pr, t, pr.max_power_w)
    if not np.all(np.isfinite(b_min)) or np.sum(b_min) > pr.band_hz * (1 + 1e-12):
        return b_min, np.inf
    tau = t - pr.compute_s
    d = pr.down_bits / pr.down_eff
    k = d / (pr.up_bits * LN2)
    scale = pr.gain / pr.n0

    def bands(log_lam: float) -> Array:
        w = _stationary_w(np.exp(log_lam) * scale, k)
        with np.errstate(divide="ignore"):
            return np.maximum(b_min, (pr.up_bits * LN2 / w + d) / tau)

    def excess(log_lam: float) -> float:
        return float(np.sum(bands(log_lam))) - pr.band_hz

    b = b_min
    if np.sum(b_min) < pr.band_hz * (1 - 1e-14):
        lo, hi = -10.0, 10.0  # log of the bandwidth price lambda (W/Hz)
        while excess(lo) < 0:
            lo -= 20.0
        while excess(hi) > 0:
            hi += 20.0
        b = bands(brentq(excess, lo, hi, xtol=1e-14, rtol=1e-14, maxiter=200))
        free = float(np.sum(b - b_min))
        if free > 0:  # hand the last ~1e-14 of the band to the clients above their least bandwidth
            b = b + (pr.band_hz - np.sum(b)) * (b - b_min) / free
    return b, float(np.sum(min_power(pr, b, t)))


def power_step(pr: Problem, b: Array, max_round_s: float = np.inf) -> tuple[Array, Array]:
    """For fixed bandwidths b (shape (..., K): a batch of allocations), the least round time and the powers reaching it
    within every cap and budget: returns (powers W, round time s per allocation). Exact (bisection on T; each client's
    least power is closed-form). Round times beyond ``max_round_s`` come back as inf."""
    b = np.asarray(b, dtype=float)
    flat = b.reshape(-1, b.shape[-1])
    t = np.max(client_min_time(pr, flat, pr.max_power_w), axis=-1)  # each client at its cap: the least time

    def ok(t: Array, bb: Array) -> NDArray[np.bool_]:
        total = np.sum(min_power(pr, bb, t[:, None]), axis=-1)
        return np.isfinite(total) & (total <= pr.total_power_w * (1 + 1e-12))

    rows = np.flatnonzero(np.isfinite(t) & ~ok(t, flat))  # the allocations whose powers exceed the total cap
    if rows.size:
        bb, lo = flat[rows], t[rows]
        hi = 2.0 * lo
        for _ in range(200):
            bad = ~ok(hi, bb) & (hi <= max_round_s)
            if not np.any(bad):
                break
            lo, hi = np.where(bad, hi, lo), np.where(bad, 2.0 * hi, hi)
        good = ok(hi, bb)
        t[rows] = np.inf
        if np.any(good):
            sub = bb[good]
            t[rows[good]] = _bisect(lambda x: ok(x, sub), lo[good], hi[good], log=False)
    with np.errstate(invalid="ignore"):
        p = np.where(np.isfinite(t)[:, None], min_power(pr, flat, t[:, None]), np.nan)
    t = np.where(t <= max_round_s, t, np.inf)
    return p.reshape(b.shape), t.reshape(b.shape[:-1])


def greedy_subchannels(pr: Problem, n_sub: int, width_hz: float, p_cap: Array) -> NDArray[np.int64]:
    """Subchannels per client: one each, then every next one to the client that is slowest at power ``p_cap``."""
    k = pr.up_bits.shape[0]
    counts = np.arange(1, n_sub - k + 2, dtype=float)
    times = client_min_time_table(pr, counts * width_hz, p_cap)
    n = np.ones(k, dtype=np.int64)
    heap = [(-times[i, 0], i) for i in range(k)]
    heapq.heapify(heap)
    for _ in range(n_sub - k):
        _, i = heapq.heappop(heap)
        n[i] += 1
        heapq.heappush(heap, (-times[i, n[i] - 1], i))
    return n


def client_min_time_table(pr: Problem, widths: Array, p_cap: Array) -> Array:
    """``client_min_time`` of every client (rows) at every bandwidth of ``widths`` (columns)."""
    return client_min_time(pr.column(), widths[None, :], p_cap[:, None])


def subchannel_power(pr: Problem, n_sub: int, width_hz: float, t: float) -> tuple[NDArray[np.int64], float]:
    """The subchannel counts minimizing the total power that finishes every client by ``t``, and that total (inf if
    none). Exact: a client's least power is convex in its bandwidth, so after each client's least feasible count the
    remaining subchannels go to the largest marginal power savings (a top-R selection over the table of savings)."""
    k = pr.up_bits.shape[0]
    m = n_sub - k + 1  # the most subchannels one client can get
    p = min_power(pr.column(), (np.arange(1, m + 1) * width_hz)[None, :], t)  # (clients, counts 1..m)
    ok = np.isfinite(p)
    if not np.all(ok[:, -1]):
        return np.ones(k, dtype=np.int64), np.inf
    n_min = np.argmax(ok, axis=1) + 1  # feasibility is monotone in the count
    rest = n_sub - int(np.sum(n_min))
    if rest < 0:
        return n_min, np.inf
    counts = n_min.copy()
    if rest > 0:
        with np.errstate(invalid="ignore"):
            saving = p[:, :-1] - p[:, 1:]  # from n to n + 1 subchannels, n = 1..m-1
        allowed = np.arange(1, m)[None, :] >= n_min[:, None]
        saving = np.where(allowed & np.isfinite(saving), saving, -np.inf).ravel()
        top = np.argpartition(-saving, rest - 1)[:rest]
        counts += np.bincount(top // (m - 1), minlength=k)
    return counts, float(np.sum(p[np.arange(k), counts - 1]))


def solve_subchannels(
    pr: Problem, n_sub: int, width_hz: float, max_round_s: float = np.inf
) -> tuple[NDArray[np.int64], Array, float]:
    """The optimal subchannel assignment and powers: (subchannels per client, powers W, round time s).

    Without a binding total power cap: the greedy assignment at each client's largest power (optimal for the min-max
    of decreasing functions), then each client's least power for the resulting round time. With one: bisection on the
    round time T, feasible when :func:`subchannel_power` fits the cap (its least total power falls as T grows)."""
    n = greedy_subchannels(pr, n_sub, width_hz, pr.max_power_w)
    b = (n * width_hz).astype(np.float64)
    relaxed = float(np.max(client_min_time(pr, b, pr.max_power_w)))  # optimal without the total cap
    if not relaxed <= max_round_s:
        raise NoRoundWithin(relaxed)
    p = min_power(pr, b, relaxed)
    if np.all(np.isfinite(p)) and np.sum(p) <= pr.total_power_w * (1 + 1e-12):
        return n, p, relaxed

    def fits(t: float) -> bool:
        return subchannel_power(pr, n_sub, width_hz, t)[1] <= pr.total_power_w * (1 + 1e-12)

    lo, hi = relaxed, 2.0 * relaxed
    while not fits(hi):
        if hi > max_round_s:
            raise NoRoundWithin(hi)
        lo, hi = hi, 2.0 * hi
    while hi - lo > 1e-13 * hi:
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    n, _ = subchannel_power(pr, n_sub, width_hz, hi)
    b = (n * width_hz).astype(np.float64)
    p = min_power(pr, b, hi)
    return n, p, float(np.max(client_min_time(pr, b, p)))
