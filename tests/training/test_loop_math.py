import pytest
import torch

from fedpeft.errors import ConfigError
from fedpeft.training.loop import TrainConfig, lr_factor, sample_indices


def test_lr_factor_schedules():
    assert lr_factor(0, 10, 0, "constant") == 1.0
    assert lr_factor(0, 10, 2, "constant") == 0.5  # warmup (step+1)/warmup
    assert lr_factor(2, 10, 2, "linear") == 1.0
    assert lr_factor(10, 10, 0, "linear") == 0.0
    assert lr_factor(5, 10, 0, "cosine") == pytest.approx(0.5)


def test_sample_indices_epochs_cover_every_example():
    gen = torch.Generator().manual_seed(0)
    idx = sample_indices([0] * 7, 14, gen, balanced=False)
    assert sorted(idx) == sorted(list(range(7)) * 2)


def test_sample_indices_balanced_equalises_labels():
    labels = [0] * 95 + [1] * 5
    gen = torch.Generator().manual_seed(0)
    idx = sample_indices(labels, 4000, gen, balanced=True)
    frac_minority = sum(labels[i] == 1 for i in idx) / len(idx)
    assert 0.45 < frac_minority < 0.55


def test_sample_indices_deterministic_per_generator():
    a = sample_indices(list(range(10)), 20, torch.Generator().manual_seed(3), balanced=False)
    b = sample_indices(list(range(10)), 20, torch.Generator().manual_seed(3), balanced=False)
    c = sample_indices(list(range(10)), 20, torch.Generator().manual_seed(4), balanced=False)
    assert a == b and a != c


@pytest.mark.parametrize(
    ("field", "value"),
    [("steps", 0), ("lr", 0.0), ("loss", "mse"), ("schedule", "step"), ("precision", "fp8"), ("batch_size", 0)],
)
def test_train_config_rejects_bad_values(field, value):
    with pytest.raises(ConfigError, match=f"train.{field}"):
        TrainConfig(**{field: value})
