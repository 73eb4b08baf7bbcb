"""Seed statistics on tiny inputs with values checked against scipy and textbook figures."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from fedpeft.errors import ConfigError
from fedpeft.reports.stats import accuracy_interval, paired, spread


def test_spread_of_three_seeds_uses_the_sample_deviation_and_student_t() -> None:
    s = spread([1.0, 2.0, 3.0])
    assert (s.n, s.mean, s.std, s.min, s.max) == (3, 2.0, 1.0, 1.0, 3.0)
    assert s.sem == pytest.approx(1 / math.sqrt(3))
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, 2 dof)
    assert (s.ci_low, s.ci_high) == pytest.approx((2 - half, 2 + half))
    assert s.format(digits=2) == "2.00 ± 1.00 (n=3)"
    assert spread([0.774, 0.744], 0.9).format(scale=100) == "75.9 ± 2.1 (n=2)"


def test_one_seed_has_no_spread_rather_than_zero() -> None:
    s = spread([0.5])
    assert s.mean == 0.5 and math.isnan(s.std) and math.isnan(s.ci_low)
    assert s.format() == "0.5 (n=1)"


def test_paired_comparison_matches_scipy_ttest_rel() -> None:
    a, b = [0.61, 0.58, 0.66, 0.60], [0.55, 0.57, 0.60, 0.52]
    p = paired(a, b)
    ref = stats.ttest_rel(a, b)
    assert p.t == pytest.approx(ref.statistic) and p.p_value == pytest.approx(ref.pvalue)
    assert p.diff.mean == pytest.approx(0.0525) and (p.wins, p.losses) == (4, 0)
    mixed = paired([1.0, 2.0, 3.0], [2.0, 2.0, 1.0])
    assert (mixed.wins, mixed.losses) == (1, 1)


def test_paired_edge_cases() -> None:
    same = paired([0.5, 0.6], [0.5, 0.6])
    assert (same.t, same.p_value) == (0.0, 1.0)
    shifted = paired([0.6, 0.7], [0.5, 0.6])
    assert shifted.t == math.inf and shifted.p_value == 0.0
    assert math.isnan(paired([1.0], [0.0]).p_value)
    with pytest.raises(ConfigError, match="equal length"):
        paired([1.0, 2.0], [1.0])


def test_wilson_interval_of_an_accuracy() -> None:
    assert accuracy_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)  # the textbook 8/10 example
    lo, hi = accuracy_interval(610, 872)  # 70.0% on SST-2 dev
    assert lo == pytest.approx(0.6686, abs=1e-3) and hi == pytest.approx(0.7295, abs=1e-3)
    assert accuracy_interval(0, 5)[0] == 0.0 and accuracy_interval(5, 5)[1] == 1.0


@pytest.mark.parametrize("bad", [[], [float("nan"), 1.0]])
def test_bad_values_are_refused(bad: list[float]) -> None:
    with pytest.raises(ConfigError):
        spread(bad)
    with pytest.raises(ConfigError):
        spread([1.0, 2.0], confidence=1.0)
    with pytest.raises(ConfigError):
        accuracy_interval(3, 2)
