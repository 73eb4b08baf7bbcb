"""FLOPs a device spends, counted exactly but cheaply.

``torch.utils.flop_counter.FlopCounterMode`` counts the matrix products of a computation exactly, but it slows
every operation down (about 2x on the bundled models), so it cannot run on every training step. Under it the
forward pass computes bit for bit what it computes without it, but some backward kernels differ in the last bit, so
a counted step (:class:`~fedpeft.training.trainer.Trainer`) runs its forward under the counter, counts the backward
on ``torch.autograd.grad`` of the retained graph (results thrown away, no gradient written), and then runs its real
backward outside the counter: results never depend on which steps were counted. Nor does it need to run often:
for a fixed model, adapter, loss and batch size B, the FLOPs of one step on a batch padded to length T are a
polynomial of degree <= 2 in T with no other input dependence (projections are linear in T, attention scores
quadratic; the label-word loss projects one position, a constant). :class:`FlopModel` therefore records the first
three distinct lengths of each (key, B) counted, solves for the three coefficients exactly, and from then on
predicts each step's FLOPs from its shape at no cost (tested against the counter on further lengths).

:func:`flop_meter` collects the FLOPs of everything counted inside it (the runtime wraps each client message with
it, so every reply reports its FLOPs); :func:`add_flops` is how counted code reports.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

__all__ = ["FlopMeter", "FlopModel", "add_flops", "flop_meter"]


@dataclass
class FlopMeter:
    """FLOPs counted while the meter is active."""

    flops: int = 0


_METER: contextvars.ContextVar[FlopMeter | None] = contextvars.ContextVar("fedpeft_flop_meter", default=None)


@contextlib.contextmanager
def flop_meter() -> Iterator[FlopMeter]:
    """Collect the FLOPs reported by :func:`add_flops` inside the block (nested meters each see them)."""
    meter = FlopMeter()
    outer = _METER.get()
    token = _METER.set(meter)
    try:
        yield meter
    finally:
        _METER.reset(token)
        if outer is not None:
            outer.flops += meter.flops


def add_flops(n: int) -> None:
    """Report ``n`` FLOPs to the active meter (nothing happens when none is active)."""
    meter = _METER.get()
    if meter is not None:
        meter.flops += int(n)


def _solve_quadratic(points: list[tuple[int, int]]) -> tuple[Fraction, Fraction, Fraction]:
    """Exact coefficients (a, b, c) of ``a + b*T + c*T^2`` through three (T, flops) points (Lagrange form)."""
    (x0, y0), (x1, y1), (x2, y2) = points
    coef = [Fraction(0), Fraction(0), Fraction(0)]
    for xi, yi, xj, xk in ((x0, y0, x1, x2), (x1, y1, x0, x2), (x2, y2, x0, x1)):
        denom = Fraction((xi - xj) * (xi - xk))
        # yi * (T - xj)(T - xk) / denom = yi/denom * (xj*xk - (xj+xk) T + T^2)
        coef[0] += yi * Fraction(xj * xk) / denom
        coef[1] -= yi * Fraction(xj + xk) / denom
        coef[2] += yi / denom
    return coef[0], coef[1], coef[2]


class FlopModel:
    """FLOPs per (key, batch size, length): measured for the first three lengths, predicted exactly afterwards.

    ``key`` names everything else the computation depends on (model object, adapter shapes, loss, train/eval).
    """

    def __init__(self) -> None:
        self._points: dict[tuple[Hashable, int], dict[int, int]] = {}
        self._fits: dict[tuple[Hashable, int], tuple[Fraction, Fraction, Fraction]] = {}

    def predict(self, key: Hashable, batch: int, length: int) -> int | None:
        """The FLOPs of (key, batch, length) when known (measured, or predicted from three measurements)."""
        points = self._points.get((key, batch), {})
        if length in points:
            return points[length]
        fit = self._fits.get((key, batch))
        if fit is None:
            return None
        a, b, c = fit
        return int(a + b * length + c * length * length)

    def record(self, key: Hashable, batch: int, length: int, flops: int) -> None:
        """Remember the counted FLOPs of (key, batch, length); the third distinct length fixes the polynomial."""
        points = self._points.setdefault((key, batch), {})
        points[length] = int(flops)
        if len(points) == 3:
            self._fits[(key, batch)] = _solve_quadratic(sorted(points.items()))

    def __repr__(self) -> str:
        return f"FlopModel({len(self._points)} shapes, {len(self._fits)} fitted)"


#: one per process: models and adapters are cached per process too
FLOPS = FlopModel()


def shape_key(model: Any, *extra: Hashable) -> tuple[Hashable, ...]:
    """A key for :class:`FlopModel`: the model object, the shapes of its trainable parameters, and ``extra``."""
    shapes = tuple(tuple(p.shape) for p in model.parameters() if p.requires_grad)
    return (id(model), shapes, *extra)
