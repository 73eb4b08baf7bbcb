"""Pluggable losses: the named table, and knowledge distillation checked against a hand computation."""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from conftest import make_tiny_llama
from fedpeft.adapters import AdapterConfig, attach_adapter
from fedpeft.data import collate
from fedpeft.errors import ConfigError
from fedpeft.training.loop import TrainConfig, train
from fedpeft.training.losses import (
    LOSSES,
    distillation_loss,
    forward_logits,
    label_scores,
    label_words_loss,
    lm_loss,
    make_loss,
)

COLLATE = functools.partial(collate, pad_id=0)
WORDS = torch.tensor([7, 11])


class FixedLogits(torch.nn.Module):
    """A 'model' whose logits are a trainable tensor [B, T, V], whatever the input."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(logits.clone())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.logits)


def tiny_batch() -> dict[str, torch.Tensor]:
    """1 x 3: two real tokens and one pad; only token 1 is a response token (so position 0 predicts it)."""
    return {
        "input_ids": torch.tensor([[4, 5, 0]]),
        "attention_mask": torch.tensor([[1, 1, 0]]),
        "labels": torch.tensor([[-100, 5, -100]]),
    }


STUDENT = torch.tensor([[[1.0, 2.0, 0.0, -1.0], [0.5, 0.5, 0.5, 0.5], [3.0, 0.0, 0.0, 0.0]]])  # [1, 3, 4]
TEACHER = torch.tensor([[[2.0, 0.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0], [0.0, 0.0, 0.0, 9.0]]])  # [1, 3, 4]


def hand_kl(teacher: list[float], student: list[float], tau: float) -> float:
    """KL(softmax(teacher / tau) || softmax(student / tau)) in plain Python."""

    def softmax(z: list[float]) -> list[float]:
        e = [math.exp(x / tau) for x in z]
        return [x / sum(e) for x in e]

    p, q = softmax(teacher), softmax(student)
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True))


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_distillation_matches_a_hand_computation(tau):
    batch = tiny_batch()
    student = FixedLogits(STUDENT)
    s, t = STUDENT[0].tolist(), TEACHER[0].tolist()
    all_positions = distillation_loss(lambda b: TEACHER, temperature=tau, positions="all")(student, batch)
    expected = tau**2 * (hand_kl(t[0], s[0], tau) + hand_kl(t[1], s[1], tau)) / 2  # position 2 is padding
    assert float(all_positions.detach()) == pytest.approx(expected, rel=1e-6)
    response = distillation_loss(lambda b: TEACHER, temperature=tau)(student, batch)
    assert float(response.detach()) == pytest.approx(tau**2 * hand_kl(t[0], s[0], tau), rel=1e-6)  # only position 0


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_distillation_at_the_last_prompt_position_only(tau):
    """positions='last': the position prompt_length - 1 of each row (its logits predict the answer's first token)."""
    batch = {**tiny_batch(), "prompt_length": torch.tensor([2])}
    student = FixedLogits(STUDENT)
    s, t = STUDENT[0].tolist(), TEACHER[0].tolist()
    last = distillation_loss(lambda b: TEACHER, temperature=tau, positions="last")(student, batch)
    assert float(last.detach()) == pytest.approx(tau**2 * hand_kl(t[1], s[1], tau), rel=1e-6)
    two_rows = {k: torch.cat([v, v]) for k, v in batch.items()}
    two_rows["prompt_length"] = torch.tensor([2, 1])
    both = distillation_loss(lambda b: TEACHER.expand(2, 3, 4), temperature=tau, positions="last")(
        FixedLogits(STUDENT.expand(2, 3, 4)), two_rows
    )
    expected = tau**2 * (hand_kl(t[1], s[1], tau) + hand_kl(t[0], s[0], tau)) / 2
    assert float(both.detach()) == pytest.approx(expected, rel=1e-6)


def test_distillation_is_zero_for_the_same_logits_and_positive_otherwise():
    batch = tiny_batch()
    student = FixedLogits(STUDENT)
    for positions in ("response", "all"):
        assert float(distillation_loss(lambda b: STUDENT, positions=positions)(student, batch).detach()) == 0.0
        assert float(distillation_loss(lambda b: TEACHER, positions=positions)(student, batch).detach()) > 0.0


def test_distillation_masks_unchosen_positions():
    batch = tiny_batch()
    student = FixedLogits(STUDENT)
    other = TEACHER.clone()
    other[0, 2] = torch.tensor([9.0, -9.0, 0.0, 1.0])  # padding: never counted
    for positions in ("response", "all"):
        a = distillation_loss(lambda b: TEACHER, positions=positions)(student, batch)
        b = distillation_loss(lambda b: other, positions=positions)(student, batch)
        assert torch.equal(a, b)
    other[0, 1] = torch.tensor([9.0, -9.0, 0.0, 1.0])  # a real token, but not one that predicts a response token
    a = distillation_loss(lambda b: TEACHER)(student, batch)
    assert torch.equal(a, distillation_loss(lambda b: other)(student, batch))
    assert not torch.equal(
        distillation_loss(lambda b: TEACHER, positions="all")(student, batch),
        distillation_loss(lambda b: other, positions="all")(student, batch),
    )
    nothing = {**batch, "labels": torch.full((1, 3), -100)}
    loss = distillation_loss(lambda b: TEACHER)(student, nothing)
    assert float(loss.detach()) == 0.0
    loss.backward()  # still a graph: an all-prompt batch does not break a training loop


def test_distillation_trains_only_the_student():
    teacher_logits = torch.nn.Parameter(TEACHER.clone())
    student = FixedLogits(STUDENT)
    distillation_loss(lambda b: teacher_logits)(student, tiny_batch()).backward()
    assert teacher_logits.grad is None
    assert student.logits.grad is not None and student.logits.grad[0, 0].abs().sum() > 0
    assert student.logits.grad[0, 1:].abs().sum() == 0  # positions not chosen get no gradient


def test_distillation_checks_its_arguments():
    with pytest.raises(ConfigError, match="temperature"):
        distillation_loss(lambda b: TEACHER, temperature=0.0)
    with pytest.raises(ConfigError, match="positions"):
        distillation_loss(lambda b: TEACHER, positions="prompt")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="teacher logits"):
        distillation_loss(lambda b: TEACHER[:, :2])(FixedLogits(STUDENT), tiny_batch())


def test_distillation_through_train_moves_the_student_to_the_teacher():
    teacher, student = make_tiny_llama(seed=1), attach_adapter(make_tiny_llama(seed=0), AdapterConfig(method="lora"))

    def teacher_logits(batch):
        with torch.no_grad():
            return forward_logits(teacher, batch)

    examples = [
        {"input_ids": [5 + i, 6, 7 + i, 8, 9], "labels": [-100, -100, 7 + i, 8, 9], "prompt_length": 2}
        for i in range(8)
    ]
    kd = distillation_loss(teacher_logits, temperature=2.0)
    batch = COLLATE(examples)
    with torch.no_grad():
        before = float(kd(student, batch))
    train(student, examples, TrainConfig(steps=15, batch_size=8, lr=2e-2), COLLATE, loss_fn=kd)
    with torch.no_grad():
        assert float(kd(student, batch)) < 0.8 * before


def test_named_losses_table():
    assert set(LOSSES) == {"lm", "label_words"}
    with pytest.raises(ConfigError, match="'label_words'"):
        make_loss("kd")
    with pytest.raises(ConfigError, match="'lm'"):
        TrainConfig(loss="kd")  # type: ignore[arg-type]
    model = attach_adapter(make_tiny_llama(), AdapterConfig(method="lora"))
    batch = COLLATE(
        [
            {"input_ids": [5, 6, 7, 8], "labels": [-100, -100, 7, 8], "prompt_length": 2, "label": 0},
            {"input_ids": [9, 10, 11], "labels": [-100, 10, 11], "prompt_length": 1, "label": 1},
        ]
    )
    with torch.no_grad():
        assert torch.equal(make_loss("lm")(model, batch), lm_loss(model, batch))
        direct = F.cross_entropy(label_scores(model, batch, WORDS).float(), batch["label"])
        assert torch.equal(make_loss("label_words", WORDS)(model, batch), direct)
        assert torch.equal(label_words_loss(WORDS)(model, batch), direct)
