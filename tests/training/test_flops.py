"""FLOP counting: exact counts on the first lengths, exact predictions afterwards, at no cost to the numbers."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from conftest import make_tiny_llama  # type: ignore[import-not-found]
from fedpeft.adapters import AdapterConfig, adapter_state, attach_adapter
from fedpeft.config import TrainConfig
from fedpeft.training.flops import FlopModel, _solve_quadratic, add_flops, flop_meter
from fedpeft.training.trainer import Trainer


def test_quadratic_through_three_points_is_exact() -> None:
    a, b, c = _solve_quadratic([(3, 7 + 5 * 3 + 2 * 9), (5, 7 + 5 * 5 + 2 * 25), (11, 7 + 5 * 11 + 2 * 121)])
    assert (a, b, c) == (7, 5, 2)


def test_meters_nest_and_add_up() -> None:
    add_flops(5)  # no meter: nothing happens
    with flop_meter() as outer:
        add_flops(2)
        with flop_meter() as inner:
            add_flops(3)
    assert inner.flops == 3 and outer.flops == 5


def _batch(b: int, t: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    ids = torch.randint(3, 500, (b, t), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def test_train_step_flops_predicted_exactly_after_three_lengths() -> None:
    """A Trainer's steps report the counter's exact FLOPs: measured for three lengths, then predicted for others
    (checked against a fresh count), and the parameters come out bit-identical to steps never counted."""
    gen = torch.Generator().manual_seed(0)
    cfg = TrainConfig(steps=10, batch_size=2, loss="lm")
    lengths = [5, 9, 17, 12, 30, 9]
    models = [attach_adapter(make_tiny_llama(), AdapterConfig(method="lora", r=2)) for _ in range(3)]
    batches = [_batch(2, t, gen) for t in lengths]
    import fedpeft.training.trainer as trainer_mod

    model = FlopModel()
    trainer_mod.FLOPS, saved = model, trainer_mod.FLOPS
    try:
        counted = Trainer(models[0], cfg)
        reported = []
        for batch in batches:
            with flop_meter() as meter:
                counted.step(batch)
            reported.append(meter.flops)
    finally:
        trainer_mod.FLOPS = saved
    # the truth, step by step, on a third model: FlopCounterMode around a plain forward + backward
    truth = []
    for batch in batches:
        with FlopCounterMode(display=False) as fc:
            models[2](**batch).loss.backward()
        truth.append(int(fc.get_total_flops()))
    assert reported == truth and len(set(truth)) == 5  # lengths 12 and 30 were predicted, 9 was remembered
    # counting never touches the numbers: the same steps, none of them counted, end bit-identical

    class NeverProbe(FlopModel):
        def predict(self, key: object, batch: int, length: int) -> int:
            return 0

    trainer_mod.FLOPS, saved = NeverProbe(), trainer_mod.FLOPS
    try:
        unprobed = Trainer(models[1], cfg)
        for batch in batches:
            unprobed.step(batch)
    finally:
        trainer_mod.FLOPS = saved
    a, b = adapter_state(models[0]), adapter_state(models[1])
    assert all(torch.equal(a[k], b[k]) for k in a)
