"""Client-level DP pieces on tiny tensors: clipping bounds the whole update's L2 norm, noise is never the run's
seed's, and the accountant's epsilon moves the right way."""

from __future__ import annotations

import math

import pytest
import torch

from fedpeft.privacy import dp


def test_clip_update_bounds_the_joint_norm_and_keeps_small_updates():
    u = {"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([[4.0]])}  # joint norm 5
    clipped, norm = dp.clip_update(u, 1.0)
    assert norm == pytest.approx(5.0)
    assert math.sqrt(sum(float((v**2).sum()) for v in clipped.values())) == pytest.approx(1.0)
    assert torch.allclose(clipped["a"], torch.tensor([0.6, 0.0])) and torch.allclose(
        clipped["b"], torch.tensor([[0.8]])
    )
    same, _ = dp.clip_update(u, 10.0)
    assert all(torch.equal(same[k], u[k]) for k in u)
    zero, n0 = dp.clip_update({"a": torch.zeros(3)}, 1.0)
    assert n0 == 0.0 and torch.equal(zero["a"], torch.zeros(3))


def test_noise_has_its_std_and_is_never_reproducible_from_a_seed():
    x = {"w": torch.zeros(200_000)}
    a, b = dp.add_noise(x, 0.5, dp.noise_generator()), dp.add_noise(x, 0.5, dp.noise_generator())
    assert float(a["w"].std()) == pytest.approx(0.5, rel=0.02) and abs(float(a["w"].mean())) < 0.01
    assert not torch.equal(a["w"], b["w"])  # two generators from the OS's randomness


def test_epsilon_grows_with_rounds_and_sampling_and_shrinks_with_noise():
    e = lambda z, q, t: dp.epsilon(z, q, t, 1e-5)  # noqa: E731
    assert e(1.0, 0.1, 0) == 0.0 and e(0.0, 0.1, 5) == math.inf
    assert e(1.0, 0.1, 10) < e(1.0, 0.1, 100)
    assert e(1.0, 0.1, 50) < e(1.0, 1.0, 50)
    assert e(2.0, 0.1, 50) < e(1.0, 0.1, 50)
    assert 0 < e(1.0, 1.0, 15) < math.inf
