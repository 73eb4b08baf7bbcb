"""Krum / multi-Krum and norm clipping on tiny states: the outlier is never chosen, the choice follows the
neighbour scores, clipping bounds the joint norm and leaves small updates alone."""

from __future__ import annotations

import pytest
import torch

from fedpeft.algorithms.aggregation import clip_norms, multi_krum


def _s(*vals: float) -> dict[str, torch.Tensor]:
    return {"a": torch.tensor([vals[0]]), "b": torch.tensor([vals[1]])}


def test_krum_picks_the_most_central_update_and_never_the_outlier():
    honest = [_s(1.0, 1.0), _s(1.1, 0.9), _s(0.9, 1.1), _s(1.0, 1.2)]
    states = [*honest, _s(100.0, -100.0)]
    one = multi_krum(states, byzantine=1, select=1)
    # scores (sum of squared distances to the n - f - 2 = 2 nearest others): (1, 1) is the most central
    assert torch.equal(one["a"], torch.tensor([1.0])) and torch.equal(one["b"], torch.tensor([1.0]))
    multi = multi_krum(states, byzantine=1, select=4)  # n - f: every honest update, the outlier out
    assert torch.allclose(multi["a"], torch.tensor([1.0])) and torch.allclose(multi["b"], torch.tensor([1.05]))


def test_krum_needs_more_than_f_plus_two_updates():
    with pytest.raises(ValueError, match="n > byzantine"):
        multi_krum([_s(0.0, 0.0), _s(1.0, 1.0), _s(2.0, 2.0)], byzantine=1)
    with pytest.raises(ValueError, match="select"):
        multi_krum([_s(0.0, 0.0), _s(1.0, 1.0), _s(2.0, 2.0), _s(3.0, 3.0)], byzantine=1, select=5)


def test_clip_norms_bounds_the_joint_norm():
    big, small = _s(3.0, 4.0), _s(0.3, 0.4)
    out = clip_norms([big, small], 1.0)
    assert torch.allclose(out[0]["a"], torch.tensor([0.6])) and torch.allclose(out[0]["b"], torch.tensor([0.8]))
    assert torch.equal(out[1]["a"], small["a"]) and torch.equal(out[1]["b"], small["b"])
