"""Rounds to reach a target accuracy as a function of the LoRA rank, fitted from measured points.

Form: ``rounds(r) = a + b / r^gamma`` with a >= 0, b >= 0, gamma in [0.05, 4]: non-increasing in r (a higher rank
never needs more rounds), tending to a floor ``a`` (the rounds a full-rank update would need) with diminishing returns,
the shape reported for LoRA rank sweeps (rank helps at small r and saturates). The paper's own rounds-vs-rank model is
not published; this one is ours. Fitted by bounded least squares (scipy.optimize.curve_fit, trust-region reflective).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fedpeft.errors import ConfigError

_GAMMA_BOUNDS = (0.05, 4.0)


@dataclass(frozen=True)
class RoundsModel:
    """``rounds(r) = a + b / r**gamma`` (rounds, a real number: the expected rounds to the target)."""

    a: float
    b: float
    gamma: float
    rmse: float = 0.0  # root-mean-square residual of the fit, in rounds

    def __call__(self, rank: ArrayLike) -> NDArray[np.float64]:
        return rounds_at(rank, self.a, self.b, self.gamma)


def rounds_at(rank: ArrayLike, a: float, b: float, gamma: float) -> NDArray[np.float64]:
    """``a + b / rank**gamma``."""
    return a + b / np.power(np.asarray(rank, dtype=float), gamma)


def fit_rounds(ranks: Sequence[float], rounds: Sequence[float], field: str = "rounds") -> RoundsModel:
    """Least-squares fit of :class:`RoundsModel` to measured (rank, rounds-to-target) points.

    Needs at least 3 points with distinct ranks >= 1 and rounds > 0 (3 parameters); ``field`` names the scenario field
    in the :class:`~fedpeft.errors.ConfigError` a bad input raises."""
    import warnings

    from scipy.optimize import OptimizeWarning, curve_fit

    r = np.asarray(ranks, dtype=float)
    y = np.asarray(rounds, dtype=float)
    if r.shape != y.shape or r.ndim != 1:
        raise ConfigError(f"{field}.rounds", list(rounds), f"one value per rank ({len(ranks)} ranks)")
    if r.size < 3 or len(set(r.tolist())) != r.size:
        raise ConfigError(f"{field}.ranks", list(ranks), "at least 3 distinct ranks (the fit has 3 parameters)")
    if not (np.all(np.isfinite(r)) and np.all(r >= 1)):
        raise ConfigError(f"{field}.ranks", list(ranks), "ranks >= 1")
    if not (np.all(np.isfinite(y)) and np.all(y > 0)):
        raise ConfigError(f"{field}.rounds", list(rounds), "positive round counts")
    order = np.argsort(r)
    r, y = r[order], y[order]
    b0 = max(float(y[0] - y[-1]), 0.0) * float(r[0])
    p0 = (float(y[-1]) * 0.5, b0 + 1e-9, 1.0)
    upper = (np.inf, np.inf, _GAMMA_BOUNDS[1])
    with warnings.catch_warnings():  # 3 points, 3 parameters: no covariance estimate, which is not used
        warnings.simplefilter("ignore", OptimizeWarning)
        params, _ = curve_fit(
            rounds_at, r, y, p0=p0, bounds=((0.0, 0.0, _GAMMA_BOUNDS[0]), upper), method="trf", maxfev=20000
        )
    a, b, gamma = (float(v) for v in params)
    rmse = float(np.sqrt(np.mean((rounds_at(r, a, b, gamma) - y) ** 2)))
    if a + b <= 0:
        raise ConfigError(f"{field}.rounds", list(rounds), "measurements a positive rounds model fits")
    return RoundsModel(a=a, b=b, gamma=gamma, rmse=rmse)
