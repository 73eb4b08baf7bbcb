"""Server-side aggregation maths over adapter states (``dict[str, Tensor]`` keyed by parameter name).

Everything here is a pure function (or, for the server optimizers, a small object whose only state is its moments)
with no knowledge of runtimes, messages or models, so it can be unit-tested on tiny tensors and reused by every
algorithm. Arithmetic runs in float32 (float64 when the input is float64) so that fp16/bf16 states do not lose
precision while summing many clients, and results are cast back to the input dtype.

Contents
--------
- state arithmetic: :func:`state_add`, :func:`state_sub`, :func:`state_scale`, :func:`state_norm`, :func:`clip_update`,
  :func:`check_update` (validation of an untrusted client update);
- aggregators: :func:`weighted_average` (FedAvg), :func:`coordinate_median`, :func:`trimmed_mean`;
- server optimizers (FedOpt family): :class:`FedAvgServer`, :class:`FedAvgM`, :class:`FedAdagrad`, :class:`FedAdam`,
  :class:`FedYogi`, listed by name in :data:`SERVER_OPTIMIZERS`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from fedpeft.errors import FedPeftError

State = dict[str, Tensor]
"""An adapter state: parameter name -> tensor."""


class AggregationError(FedPeftError, ValueError):
    """Client states, weights or hyperparameters that cannot be aggregated; the message says which and why."""


# ----------------------------------------------------------------------------------------------------------------
# validation helpers (shared with lora_aggregation)
# ----------------------------------------------------------------------------------------------------------------


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # float64 inputs keep their precision; everything narrower is accumulated in float32.
    return torch.float64 if dtype == torch.float64 else torch.float32


def _preview(names: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(repr(n) for n in list(names)[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _check_keys(states: Sequence[Mapping[str, Tensor]], what: str = "states") -> list[str]:
    """Non-empty list, every state has exactly the keys of the first; returns the keys in the first state's order."""
    if len(states) == 0:
        raise AggregationError(f"cannot aggregate an empty list of {what}")
    keys = list(states[0].keys())
    ref = set(keys)
    for i, state in enumerate(states[1:], start=1):
        other = set(state.keys())
        if other != ref:
            missing = sorted(ref - other)
            extra = sorted(other - ref)
            parts = []
            if missing:
                parts.append(f"missing {_preview(missing)}")
            if extra:
                parts.append(f"unexpected {_preview(extra)}")
            raise AggregationError(f"{what}[{i}] has different keys than {what}[0]: " + "; ".join(parts))
    return keys


def _check_tensor(name: str, t: Tensor, where: str) -> None:
    if not isinstance(t, Tensor):
        raise AggregationError(f"{where}[{name!r}] is a {type(t).__name__}, expected a torch.Tensor")
    if not t.is_floating_point():
        raise AggregationError(f"{where}[{name!r}] has dtype {t.dtype}; only floating-point tensors can be aggregated")


def _check_states(states: Sequence[Mapping[str, Tensor]], what: str = "states") -> list[str]:
    """Same keys, floating dtypes, and per key the same shape and dtype in every state."""
    keys = _check_keys(states, what)
    for key in keys:
        ref = states[0][key]
        _check_tensor(key, ref, f"{what}[0]")
        for i, state in enumerate(states[1:], start=1):
            t = state[key]
            _check_tensor(key, t, f"{what}[{i}]")
            if t.shape != ref.shape:
                raise AggregationError(
                    f"{what}[{i}][{key!r}] has shape {tuple(t.shape)} but {what}[0] has {tuple(ref.shape)}"
                )
            if t.dtype != ref.dtype:
                raise AggregationError(f"{what}[{i}][{key!r}] has dtype {t.dtype} but {what}[0] has {ref.dtype}")
    return keys


def _normalize_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    """Validate client weights (e.g. sample counts) and normalize them to sum 1, in float64 (Python floats)."""
    if weights is None:
        return [1.0 / n] * n
    ws = [float(w) for w in weights]
    if len(ws) != n:
        raise AggregationError(f"got {len(ws)} weights for {n} states; pass one weight per client")
    for i, w in enumerate(ws):
        if not math.isfinite(w) or w <= 0.0:
            raise AggregationError(f"weights[{i}]={w!r} is invalid; weights must be finite and > 0")
    total = math.fsum(ws)
    return [w / total for w in ws]


def _check_pair(a: Mapping[str, Tensor], b: Mapping[str, Tensor], a_name: str, b_name: str) -> list[str]:
    """Two states with the same keys and shapes (dtypes may differ); returns the keys of ``a``."""
    keys = list(a.keys())
    if set(keys) != set(b.keys()):
        missing = sorted(set(keys) - set(b.keys()))
        extra = sorted(set(b.keys()) - set(keys))
        raise AggregationError(
            f"{b_name} and {a_name} have different keys (missing in {b_name}: {_preview(missing) or 'none'}; "
            f"not in {a_name}: {_preview(extra) or 'none'})"
        )
    for k in keys:
        _check_tensor(k, a[k], a_name)
        _check_tensor(k, b[k], b_name)
        if a[k].shape != b[k].shape:
            raise AggregationError(
                f"{b_name}[{k!r}] has shape {tuple(b[k].shape)} but {a_name}[{k!r}] has {tuple(a[k].shape)}"
            )
    return keys


# ----------------------------------------------------------------------------------------------------------------
# state arithmetic
# ----------------------------------------------------------------------------------------------------------------


def _elementwise(a: Mapping[str, Tensor], b: Mapping[str, Tensor], op: Callable[[Tensor, Tensor], Tensor]) -> State:
    """``op(a, b)`` key by key in the compute dtype; the result has ``a``'s dtypes."""
    keys = _check_pair(a, b, "a", "b")
    out: State = {}
    for k in keys:
        cd = _compute_dtype(a[k].dtype)
        out[k] = op(a[k].to(cd), b[k].to(cd)).to(a[k].dtype)
    return out


def state_add(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> State:
    """``a + b`` key by key; the result has ``a``'s dtypes."""
    return _elementwise(a, b, torch.add)


def state_sub(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> State:
    """``a - b`` key by key; the result has ``a``'s dtypes. ``state_sub(aggregated, global)`` is the pseudo-gradient."""
    return _elementwise(a, b, torch.sub)


def state_scale(state: Mapping[str, Tensor], factor: float) -> State:
    """``factor * state`` key by key, in the input dtypes."""
    if not math.isfinite(float(factor)):
        raise AggregationError(f"factor={factor!r} is invalid; expected a finite number")
    out: State = {}
    for k, t in state.items():
        _check_tensor(k, t, "state")
        out[k] = (t.to(_compute_dtype(t.dtype)) * float(factor)).to(t.dtype)
    return out


def state_norm(state: Mapping[str, Tensor]) -> float:
    """Global L2 norm over all tensors of ``state``, as if they were flattened into one vector.

    Per-tensor norms are computed in float32 (float64 for float64 input) and combined in float64, so the result does
    not overflow for fp16 states with many entries.
    """
    if not state:
        return 0.0
    norms = []
    for k, t in state.items():
        _check_tensor(k, t, "state")
        norms.append(torch.linalg.vector_norm(t.to(_compute_dtype(t.dtype))).double().cpu())
    return float(torch.linalg.vector_norm(torch.stack(norms)))  # one host sync for the whole state


def clip_update(update: Mapping[str, Tensor], max_norm: float) -> State:
    """Scale ``update`` so that its global L2 norm is at most ``max_norm`` (unchanged when already within it).

    This is the per-client clipping step of client-level DP (McMahan et al. 2018, "Learning Differentially Private
    Recurrent Language Models") and of norm-bounded robust aggregation: ``u * min(1, max_norm / ||u||)``.
    """
    if not math.isfinite(float(max_norm)) or max_norm <= 0:
        raise AggregationError(f"max_norm={max_norm!r} is invalid; expected a finite number > 0")
    norm = state_norm(update)
    if norm <= max_norm:
        return {k: t.clone() for k, t in update.items()}
    return state_scale(update, max_norm / norm)


def check_update(
    update: Mapping[str, Tensor],
    reference: Mapping[str, Tensor] | None = None,
    *,
    max_norm: float | None = None,
    name: str = "update",
) -> None:
    """Validate an untrusted client update before aggregation; raise :class:`AggregationError` if it is unusable.

    Checks: floating-point tensors, finite values, the same keys and shapes as ``reference`` (when given) and a global
    L2 norm of at most ``max_norm`` (when given). ``name`` (e.g. ``"client 7"``) prefixes the message.
    """
    if reference is not None:
        _check_pair(reference, update, "reference", name)
    for k, t in update.items():
        _check_tensor(k, t, name)
    # One fused pass instead of one sync per tensor: the squared norm is finite iff every value is (an overflow
    # of the squares is also caught, and only then are tensors inspected one by one to name the bad key).
    norm = state_norm(update)
    if not math.isfinite(norm):
        for k, t in update.items():
            if not bool(torch.isfinite(t).all()):
                raise AggregationError(f"{name}[{k!r}] contains NaN or infinite values")
        raise AggregationError(f"{name} has an L2 norm that overflows")
    if max_norm is not None and norm > max_norm:
        raise AggregationError(f"{name} has L2 norm {norm:.4g} above the bound max_norm={max_norm:.4g}")


# ----------------------------------------------------------------------------------------------------------------
# aggregators
# ----------------------------------------------------------------------------------------------------------------


def weighted_average(states: Sequence[Mapping[str, Tensor]], weights: Sequence[float] | None = None) -> State:
    """Weighted average of client states (FedAvg).

    McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized Data", AISTATS 2017:
    ``x = sum_k (n_k / n) x_k``.

    Parameters
    ----------
    states : sequence of dict[str, Tensor]
        One state per client; same keys, shapes and dtypes.
    weights : sequence of float, optional
        One positive weight per client, typically its number of training samples; normalized here to sum to 1.
        ``None`` means uniform.

    Returns
    -------
    dict[str, Tensor]
        The average, in the clients' dtype, keys in the order of ``states[0]``.
    """
    keys = _check_states(states)
    ws = _normalize_weights(weights, len(states))
    out: State = {}
    for k in keys:
        dtype = states[0][k].dtype
        cd = _compute_dtype(dtype)
        acc = states[0][k].to(cd) * ws[0]
        for state, w in zip(states[1:], ws[1:], strict=True):
            acc.add_(state[k].to(cd), alpha=w)
        out[k] = acc.to(dtype)
    return out


def _stacked(states: Sequence[Mapping[str, Tensor]], key: str) -> Tensor:
    # [n_clients, *shape] in the compute dtype: the robust statistics below work per coordinate along dim 0.
    cd = _compute_dtype(states[0][key].dtype)
    return torch.stack([s[key].to(cd) for s in states], dim=0)


def coordinate_median(states: Sequence[Mapping[str, Tensor]]) -> State:
    """Coordinate-wise median of client states (unweighted).

    Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates", ICML 2018. For an even
    number of clients the mean of the two middle values is taken (as ``numpy.median`` and Flower's FedMedian do;
    ``torch.median`` would return the lower one).
    """
    keys = _check_states(states)
    n = len(states)
    out: State = {}
    for k in keys:
        srt = torch.sort(_stacked(states, k), dim=0).values  # [n, *shape]
        med = 0.5 * (srt[(n - 1) // 2] + srt[n // 2])
        out[k] = med.to(states[0][k].dtype)
    return out


def multi_krum(states: Sequence[Mapping[str, Tensor]], byzantine: int, select: int = 1) -> State:
    """(Multi-)Krum (Blanchard et al., NeurIPS 2017): the unweighted mean of the ``select`` states with the lowest
    score, a state's score being the sum of its squared L2 distances to its ``n - byzantine - 2`` nearest others.

    ``select = 1`` is Krum; ``select = n - byzantine`` is the usual multi-Krum. Needs ``n > byzantine + 2``.
    """
    keys = _check_states(states)
    n = len(states)
    if not (isinstance(byzantine, int) and byzantine >= 0 and n - byzantine - 2 >= 1):
        raise ValueError(f"Krum needs n > byzantine + 2; got n={n}, byzantine={byzantine}")
    if not 1 <= select <= n:
        raise ValueError(f"select must lie in [1, {n}], got {select}")
    flat = torch.stack([torch.cat([s[k].reshape(-1).to(torch.float64) for k in keys]) for s in states])  # [n, D]
    dist = torch.cdist(flat, flat) ** 2  # [n, n]
    near = n - byzantine - 2
    scores = torch.sort(dist, dim=1).values[:, 1 : near + 1].sum(1)  # [n]; column 0 is the distance to itself
    chosen = torch.argsort(scores, stable=True)[:select].tolist()
    return weighted_average([states[i] for i in sorted(chosen)])


def clip_norms(states: Sequence[Mapping[str, Tensor]], max_norm: float) -> list[State]:
    """Each state scaled to joint L2 norm at most ``max_norm`` (norm-clipping defence; DP's clipping rule)."""
    from fedpeft.privacy.dp import clip_update

    return [clip_update(s, max_norm)[0] for s in states]


def trimmed_mean(states: Sequence[Mapping[str, Tensor]], beta: float) -> State:
    """Coordinate-wise trimmed mean of client states (unweighted).

    Yin et al., ICML 2018. Per coordinate, the ``floor(beta * n)`` smallest and largest client values are dropped and
    the rest averaged (``scipy.stats.trim_mean`` semantics, as Flower's FedTrimmedAvg).

    Parameters
    ----------
    states : sequence of dict[str, Tensor]
        One state per client.
    beta : float
        Fraction trimmed from each end, ``0 <= beta < 0.5``; ``0`` is the plain (unweighted) mean.
    """
    if not 0.0 <= float(beta) < 0.5:
        raise AggregationError(f"beta={beta!r} is invalid; expected 0 <= beta < 0.5")
    keys = _check_states(states)
    n = len(states)
    cut = int(beta * n)
    if n - 2 * cut < 1:  # cannot happen for beta < 0.5; kept as a guard against future changes of `cut`
        raise AggregationError(f"beta={beta} trims all {n} clients; nothing remains to average")
    out: State = {}
    for k in keys:
        srt = torch.sort(_stacked(states, k), dim=0).values  # [n, *shape]
        out[k] = srt[cut : n - cut].mean(dim=0).to(states[0][k].dtype)
    return out


# ----------------------------------------------------------------------------------------------------------------
# server optimizers (FedOpt)
# ----------------------------------------------------------------------------------------------------------------


def _check_hparam(name: str, value: float, low: float, high: float, low_open: bool, high_open: bool) -> None:
    lo_ok = value > low if low_open else value >= low
    hi_ok = value < high if high_open else value <= high
    if not (math.isfinite(value) and lo_ok and hi_ok):
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise AggregationError(f"{name}={value!r} is invalid; expected a value in {lo}{low}, {high}{hi}")


@dataclass
class ServerOptimizer:
    """Base of the server optimizers: turn the pseudo-gradient into the next global state.

    The pseudo-gradient is ``delta = aggregated_state - global_state`` (a descent direction, as in Reddi et al. 2021;
    Flower's FedAvgM uses the opposite sign and subtracts). Subclasses keep their moments in ``self._buffers``
    (name -> state) in float32 (float64 for float64 states); :meth:`state_dict` / :meth:`load_state_dict` move them in
    and out for checkpoints. The hyperparameters are not part of the state dict: they come from the run's config.
    """

    name: ClassVar[str] = "base"
    _buffers: dict[str, State] = field(default_factory=dict, init=False, repr=False)
    _steps: int = field(default=0, init=False, repr=False)

    @property
    def steps(self) -> int:
        """How many times :meth:`step` has run (the round counter ``t``, 1-based after the first step)."""
        return self._steps

    def step(self, global_state: Mapping[str, Tensor], delta: Mapping[str, Tensor]) -> State:
        """Apply one server update and return the new global state (dtypes of ``global_state``).

        Parameters
        ----------
        global_state : dict[str, Tensor]
            The state that was broadcast this round (``x_t``).
        delta : dict[str, Tensor]
            The pseudo-gradient ``aggregated - x_t`` (see :func:`state_sub`); same keys and shapes.
        """
        keys = _check_pair(global_state, delta, "global_state", "delta")
        for buf_name, buf in self._buffers.items():
            if set(buf) != set(keys) or any(buf[k].shape != delta[k].shape for k in keys):
                raise AggregationError(
                    f"{type(self).__name__} holds moment {buf_name!r} for other keys or shapes than this delta; "
                    "call reset() when the adapter structure changes"
                )
        self._steps += 1
        out: State = {}
        for k in keys:
            cd = _compute_dtype(global_state[k].dtype)
            d = delta[k].to(cd)
            out[k] = (global_state[k].to(cd) + self._direction(k, d)).to(global_state[k].dtype)
        return out

    def apply(self, global_state: Mapping[str, Tensor], aggregated_state: Mapping[str, Tensor]) -> State:
        """Shorthand for ``step(global_state, state_sub(aggregated_state, global_state))``."""
        return self.step(global_state, state_sub(aggregated_state, global_state))

    def _direction(self, key: str, delta: Tensor) -> Tensor:
        """The additive update for one tensor, updating the moments of ``key``; ``delta`` is in the compute dtype."""
        raise NotImplementedError

    def _buffer(self, buf_name: str, key: str, like: Tensor, init: float = 0.0) -> Tensor:
        buf = self._buffers.setdefault(buf_name, {})
        if key not in buf:
            buf[key] = torch.full_like(like, init)
        return buf[key]

    def reset(self) -> None:
        """Forget all moments and the step counter."""
        self._buffers = {}
        self._steps = 0

    def state_dict(self) -> dict[str, Any]:
        """``{"name", "steps", "buffers": {moment: {key: tensor}}}`` with cloned tensors, for checkpoints."""
        return {
            "name": self.name,
            "steps": self._steps,
            "buffers": {b: {k: t.detach().clone() for k, t in buf.items()} for b, buf in self._buffers.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (by this optimizer class)."""
        if state.get("name") != self.name:
            raise AggregationError(f"state dict is for server optimizer {state.get('name')!r}, not {self.name!r}")
        steps = state.get("steps")
        if not isinstance(steps, int) or steps < 0:
            raise AggregationError(f"state dict has steps={steps!r}; expected an int >= 0")
        buffers = state.get("buffers", {})
        for b, buf in buffers.items():
            for k, t in buf.items():
                _check_tensor(k, t, f"buffers[{b!r}]")
        self._buffers = {b: {k: t.detach().clone() for k, t in buf.items()} for b, buf in buffers.items()}
        self._steps = steps


@dataclass
class FedAvgServer(ServerOptimizer):
    """Plain FedAvg server step ``x <- x + lr * delta``; ``lr = 1`` adopts the aggregate (McMahan et al. 2017)."""

    name: ClassVar[str] = "fedavg"
    lr: float = 1.0

    def __post_init__(self) -> None:
        _check_hparam("lr", self.lr, 0.0, math.inf, True, True)

    def _direction(self, key: str, delta: Tensor) -> Tensor:
        return self.lr * delta


@dataclass
class FedAvgM(ServerOptimizer):
    """FedAvg with server momentum: ``v <- momentum * v + delta``, ``x <- x + lr * v`` (``v_0 = 0``).

    Hsu, Qi, Brown, "Measuring the Effects of Non-Identical Data Distribution for Federated Visual Classification",
    arXiv 1909.06335 (2019). Equals Flower's FedAvgM (which stores ``-v`` and subtracts).
    """

    name: ClassVar[str] = "fedavgm"
    lr: float = 1.0
    momentum: float = 0.9

    def __post_init__(self) -> None:
        _check_hparam("lr", self.lr, 0.0, math.inf, True, True)
        _check_hparam("momentum", self.momentum, 0.0, 1.0, False, True)

    def _direction(self, key: str, delta: Tensor) -> Tensor:
        v = self._buffer("v", key, delta)
        v.mul_(self.momentum).add_(delta)
        return self.lr * v


@dataclass
class _AdaptiveServer(ServerOptimizer):
    """Shared part of FedAdagrad / FedAdam / FedYogi (Reddi et al. 2021, Algorithm 2).

    ``m <- beta1 * m + (1 - beta1) * delta``; ``v`` updated by the subclass rule;
    ``x <- x + eta * m / (sqrt(v) + tau)``.

    Initialisation: ``m_0 = 0`` and ``v_0 = v_init`` (default 0, as Flower does). The paper's Algorithm 2 asks for
    ``v_{-1} >= tau**2``; set ``v_init = tau**2`` to follow it. With ``v_0 = 0`` the first step of FedAdam/FedYogi is
    close to ``eta * sign(delta)`` (``tau`` keeps the division finite); with ``v_0 = tau**2`` it is slightly smaller.
    """

    eta: float = 1e-1
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    v_init: float = 0.0

    def __post_init__(self) -> None:
        _check_hparam("eta", self.eta, 0.0, math.inf, True, True)
        _check_hparam("beta1", self.beta1, 0.0, 1.0, False, True)
        _check_hparam("beta2", self.beta2, 0.0, 1.0, False, True)
        _check_hparam("tau", self.tau, 0.0, math.inf, True, True)
        _check_hparam("v_init", self.v_init, 0.0, math.inf, False, True)

    def _update_v(self, v: Tensor, delta: Tensor) -> None:
        raise NotImplementedError

    def _lr(self) -> float:
        return self.eta

    def _direction(self, key: str, delta: Tensor) -> Tensor:
        m = self._buffer("m", key, delta)
        v = self._buffer("v", key, delta, init=self.v_init)
        m.mul_(self.beta1).add_(delta, alpha=1.0 - self.beta1)
        self._update_v(v, delta)
        return self._lr() * m / (v.sqrt() + self.tau)


@dataclass
class FedAdagrad(_AdaptiveServer):
    """FedAdagrad (Reddi et al., "Adaptive Federated Optimization", ICLR 2021): ``v <- v + delta**2``.

    ``beta1`` defaults to 0 (no server momentum) as in Flower's FedAdagrad, which fixes it at 0; the paper's
    Algorithm 2 keeps the ``beta1`` momentum term for all three methods, so it is configurable here.
    ``beta2`` is unused.
    """

    name: ClassVar[str] = "fedadagrad"
    beta1: float = 0.0

    def _update_v(self, v: Tensor, delta: Tensor) -> None:
        v.add_(delta * delta)


@dataclass
class FedAdam(_AdaptiveServer):
    """FedAdam (Reddi et al., ICLR 2021): ``v <- beta2 * v + (1 - beta2) * delta**2``.

    ``bias_correction=False`` (default) is the paper's Algorithm 2. ``True`` scales ``eta`` by
    ``sqrt(1 - beta2**t) / (1 - beta1**t)`` at step ``t`` (1-based), as Adam does. Flower's FedAdam always corrects
    but with exponent ``server_round + 1`` (one step later than Adam: its round 1 uses ``t = 2``).
    """

    name: ClassVar[str] = "fedadam"
    bias_correction: bool = False

    def _update_v(self, v: Tensor, delta: Tensor) -> None:
        v.mul_(self.beta2).add_(delta * delta, alpha=1.0 - self.beta2)

    def _lr(self) -> float:
        if not self.bias_correction:
            return self.eta
        t = self._steps
        return self.eta * math.sqrt(1.0 - self.beta2**t) / (1.0 - self.beta1**t)


@dataclass
class FedYogi(_AdaptiveServer):
    """FedYogi (Reddi et al., ICLR 2021): ``v <- v - (1 - beta2) * delta**2 * sign(v - delta**2)``.

    Default ``eta = 1e-2`` as Flower's FedYogi. Unlike Adam, ``v`` changes additively, so it cannot shrink fast after
    one large pseudo-gradient (Zaheer et al., "Adaptive Methods for Nonconvex Optimization", NeurIPS 2018).
    """

    name: ClassVar[str] = "fedyogi"
    eta: float = 1e-2

    def _update_v(self, v: Tensor, delta: Tensor) -> None:
        d2 = delta * delta
        v.sub_((1.0 - self.beta2) * d2 * torch.sign(v - d2))


SERVER_OPTIMIZERS: dict[str, type[ServerOptimizer]] = {
    cls.name: cls for cls in (FedAvgServer, FedAvgM, FedAdagrad, FedAdam, FedYogi)
}
"""Server optimizer classes by name (``"fedavg"``, ``"fedavgm"``, ``"fedadagrad"``, ``"fedadam"``, ``"fedyogi"``)."""
