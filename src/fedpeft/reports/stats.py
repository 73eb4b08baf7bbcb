"""Statistics for figures over seeds: mean and spread, Student-t intervals, paired comparisons, accuracy intervals.

Pure functions on plain floats (no torch), used by the benchmarks and by reports that compare runs. The rule the
benchmarks follow (docs/results.md): a headline figure is the mean over >= 3 seeds with its sample standard
deviation and a 95% interval; two methods run on the same seeds are compared by the paired differences (same
partition and initialisation per seed), not by overlapping intervals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from fedpeft.errors import ConfigError


def _t_quantile(confidence: float, dof: int) -> float:
    """Two-sided Student-t critical value (scipy ships with scikit-learn, a dependency)."""
    from scipy import stats

    return float(stats.t.ppf(0.5 + confidence / 2, dof))


def _check(values: Sequence[float], confidence: float) -> list[float]:
    xs = [float(v) for v in values]
    if not xs:
        raise ConfigError("values", values, "at least one number")
    if any(math.isnan(v) for v in xs):
        raise ConfigError("values", values, "numbers without NaN")
    if not 0.0 < confidence < 1.0:
        raise ConfigError("confidence", confidence, "a number strictly between 0 and 1")
    return xs


@dataclass(frozen=True)
class Spread:
    """Mean of ``n`` values with their sample standard deviation (n - 1), standard error and a Student-t interval.

    With one value the standard deviation and interval are undefined and reported as NaN rather than as 0 (a single
    seed has no measured spread).
    """

    n: int
    mean: float
    std: float
    sem: float
    ci_low: float
    ci_high: float
    confidence: float
    min: float
    max: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self, digits: int = 1, scale: float = 1.0) -> str:
        """``"77.4 ± 1.5 (n=3)"``: mean ± sample standard deviation, values multiplied by ``scale`` first."""
        if self.n < 2:
            return f"{self.mean * scale:.{digits}f} (n=1)"
        return f"{self.mean * scale:.{digits}f} ± {self.std * scale:.{digits}f} (n={self.n})"


def spread(values: Sequence[float], confidence: float = 0.95) -> Spread:
    """Mean, sample standard deviation and the two-sided Student-t ``confidence`` interval of the mean."""
    xs = _check(values, confidence)
    n = len(xs)
    mean = math.fsum(xs) / n
    if n < 2:
        nan = float("nan")
        return Spread(n, mean, nan, nan, nan, nan, confidence, xs[0], xs[0])
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    sem = std / math.sqrt(n)
    half = _t_quantile(confidence, n - 1) * sem
    return Spread(n, mean, std, sem, mean - half, mean + half, confidence, min(xs), max(xs))


@dataclass(frozen=True)
class Paired:
    """``a - b`` over seeds shared by two methods: the differences' spread, a paired t-test and the win count.

    ``p_value`` is two-sided; NaN with fewer than two pairs, 1.0 when every difference is zero, 0.0 when the
    differences are identical and non-zero (no spread: the t statistic is infinite).
    """

    n: int
    diff: Spread
    t: float
    p_value: float
    wins: int  # pairs where a > b
    losses: int  # pairs where a < b

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["diff"] = self.diff.as_dict()
        return out


def paired(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Paired:
    """Compare two methods run on the same seeds (``a[i]`` and ``b[i]`` share seed ``i``)."""
    if len(a) != len(b):
        raise ConfigError("paired values", (len(a), len(b)), "two sequences of equal length (one value per seed)")
    diffs = [float(x) - float(y) for x, y in zip(a, b, strict=True)]
    d = spread(diffs, confidence)
    wins = sum(x > 0 for x in diffs)
    losses = sum(x < 0 for x in diffs)
    if d.n < 2:
        return Paired(d.n, d, float("nan"), float("nan"), wins, losses)
    if d.std == 0.0:
        t = 0.0 if d.mean == 0.0 else math.copysign(math.inf, d.mean)
        return Paired(d.n, d, t, 1.0 if d.mean == 0.0 else 0.0, wins, losses)
    from scipy import stats

    t = d.mean / d.sem
    p = float(2 * stats.t.sf(abs(t), d.n - 1))
    return Paired(d.n, d, t, p, wins, losses)


def accuracy_interval(correct: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of an accuracy measured on ``total`` examples: what one evaluation set alone allows.

    E.g. 70% on SST-2 dev (872 examples) is 66.9%-73.0%: a 2-point margin on a few hundred examples is within it.
    """
    if total < 1 or not 0 <= correct <= total:
        raise ConfigError("accuracy counts", (correct, total), "0 <= correct <= total and total >= 1")
    if not 0.0 < confidence < 1.0:
        raise ConfigError("confidence", confidence, "a number strictly between 0 and 1")
    from scipy import stats

    z = float(stats.norm.ppf(0.5 + confidence / 2))
    p = correct / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
