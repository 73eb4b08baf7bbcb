"""The step-level Trainer: a persistent optimizer whose flat state survives Flower's client state, step() and
backward_from(), and train() built on it."""

from __future__ import annotations

import functools
from collections.abc import Mapping

import pytest
import torch
import torch.nn.functional as F

from conftest import make_tiny_llama
from fedpeft.adapters import AdapterConfig, adapter_state, attach_adapter, load_adapter_state
from fedpeft.data import collate
from fedpeft.errors import ConfigError
from fedpeft.runtime.flower.records import records_to_state, state_to_records
from fedpeft.training.loop import TrainConfig, lr_factor, train
from fedpeft.training.losses import forward_logits
from fedpeft.training.trainer import Trainer

COLLATE = functools.partial(collate, pad_id=0)
CFG = TrainConfig(steps=10, lr=1e-2, schedule="cosine", warmup_steps=2, weight_decay=0.01, max_grad_norm=0.5)


def lora_model() -> torch.nn.Module:
    return attach_adapter(make_tiny_llama(), AdapterConfig(method="lora", r=4))


def rows(n: int, seed: int = 0) -> list[dict[str, object]]:
    """``n`` encoded examples of 4 to 8 tokens whose last two tokens are the response."""
    gen = torch.Generator().manual_seed(seed)
    out: list[dict[str, object]] = []
    for _ in range(n):
        length = int(torch.randint(4, 9, (1,), generator=gen))
        ids = torch.randint(20, 500, (length,), generator=gen).tolist()
        out.append({"input_ids": ids, "labels": [-100] * (length - 2) + ids[-2:], "prompt_length": length - 2})
    return out


def batches(n: int, size: int = 4, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """``n`` padded batches of ``size`` rows."""
    data = rows(n * size, seed)
    return [COLLATE(data[i * size : (i + 1) * size]) for i in range(n)]


def assert_same_adapter(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = adapter_state(a), adapter_state(b)
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def flower_round_trip(state: Mapping[str, object]) -> dict[str, object]:
    """Through the records Flower keeps in ``context.state`` (what crosses process boundaries)."""
    return records_to_state(*state_to_records(state))


@pytest.mark.parametrize("through_flower", [False, True])
def test_ten_steps_equal_five_then_five_from_the_saved_state(through_flower):
    data = batches(10)
    straight = lora_model()
    trainer = Trainer(straight, CFG)
    for batch in data:
        trainer.step(batch)

    first = lora_model()
    client = Trainer(first, CFG)
    for batch in data[:5]:
        client.step(batch)
    # what a client keeps between rounds: its adapter and its optimizer, nothing else
    saved = {**adapter_state(first), **client.state_dict()}
    if through_flower:
        saved = flower_round_trip(saved)
    second = lora_model()
    load_adapter_state(second, {k: v for k, v in saved.items() if not k.startswith("opt/")})  # type: ignore[misc]
    resumed = Trainer(second, CFG)
    resumed.load_state_dict(saved)
    assert resumed.step_count == 5
    for batch in data[5:]:
        resumed.step(batch)

    assert_same_adapter(second, straight)
    assert resumed.step_count == trainer.step_count == 10


def test_state_dict_is_flat_tensors_and_scalars():
    model = lora_model()
    trainer = Trainer(model, CFG)
    assert trainer.state_dict() == {"opt/step_count": 0}  # nothing before the first update
    trainer.step(batches(1)[0])
    state = trainer.state_dict()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    expected = {f"opt/{n}/{f}" for n in names for f in ("step", "exp_avg", "exp_avg_sq")} | {"opt/step_count"}
    assert set(state) == expected
    assert all(isinstance(v, torch.Tensor | int | float) for v in state.values())
    assert state["opt/step_count"] == 1
    other = trainer.state_dict(prefix="client/opt/")
    assert set(other) == {"client/opt/" + k.removeprefix("opt/") for k in state}


def test_load_state_dict_copies_ignores_other_keys_and_starts_fresh_without_state():
    data = batches(3)
    model = lora_model()
    trainer = Trainer(model, CFG)
    trainer.step(data[0])
    state = {**trainer.state_dict(), "round": 3, "other/thing": torch.ones(2)}
    kept = {k: v.clone() for k, v in state.items() if isinstance(v, torch.Tensor)}

    resumed = Trainer(model, CFG)
    resumed.load_state_dict(state)
    resumed.step(data[1])
    assert all(torch.equal(state[k], v) for k, v in kept.items())  # the saved tensors were not updated in place

    resumed.load_state_dict({"round": 3})  # no optimizer state: a fresh optimizer
    assert resumed.step_count == 0 and not resumed.optimizer.state


def test_load_state_dict_rejects_state_of_other_parameters():
    trainer = Trainer(lora_model(), CFG)
    with pytest.raises(ValueError, match="does not train"):
        trainer.load_state_dict({"opt/model.nope.weight/exp_avg": torch.zeros(2)})
    name = trainer.param_names[0]
    with pytest.raises(ValueError, match="shape"):
        trainer.load_state_dict({f"opt/{name}/exp_avg": torch.zeros(3, 3, 3)})


def test_backward_from_the_true_gradient_equals_step():
    """Gradient handed in from elsewhere (d loss / d logits) gives the same update as the loss computed here."""

    def next_token_loss_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())  # logits at t predict t + 1

    def next_token_loss(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return next_token_loss_from_logits(forward_logits(model, batch), batch["labels"])

    batch = batches(1)[0]
    direct, split = lora_model(), lora_model()
    loss = Trainer(direct, CFG, next_token_loss).step(batch)

    trainer = Trainer(split, CFG)
    logits = trainer.forward(forward_logits, split, batch)  # [B, T, V]
    received = logits.detach().requires_grad_()  # elsewhere: the loss and its gradient wrt the logits
    remote = next_token_loss_from_logits(received, batch["labels"])
    (grad,) = torch.autograd.grad(remote, received)
    trainer.backward_from(grad)
    trainer.apply()

    assert float(remote.detach()) == loss
    for (name, p), (_, q) in zip(adapter_state(split).items(), adapter_state(direct).items(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-7, msg=name)
    with pytest.raises(RuntimeError, match="forward"):
        trainer.backward_from(grad)  # the remembered output was used up
    with pytest.raises(ValueError, match="shape"):
        trainer.backward_from(grad[:1], output=logits)


def test_grad_accum_splits_one_update_over_micro_batches():
    """Two micro-batches accumulated == one step on both together (every row has 2 response tokens, so the mean
    over all tokens is the mean of the two micro-batch means)."""
    data = rows(4, seed=3)
    cfg = TrainConfig(steps=2, lr=1e-2, grad_accum=2)
    accumulated, together = lora_model(), lora_model()
    trainer = Trainer(accumulated, cfg)
    losses = [trainer.accumulate(COLLATE(data[:2])), trainer.accumulate(COLLATE(data[2:]))]
    trainer.apply()
    assert trainer.step_count == 1 and all(p.grad is None for p in trainer.params)
    loss = Trainer(together, TrainConfig(steps=2, lr=1e-2)).step(COLLATE(data))
    assert sum(losses) / 2 == pytest.approx(loss, rel=1e-6)
    for (name, p), (_, q) in zip(adapter_state(accumulated).items(), adapter_state(together).items(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=name)


def test_pluggable_loss_is_called_with_the_model_and_batch():
    calls: list[tuple[torch.nn.Module, dict[str, torch.Tensor]]] = []

    def recording(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        calls.append((model, dict(batch)))
        return forward_logits(model, batch).float().pow(2).mean()

    model = lora_model()
    batch = batches(1)[0]
    value = Trainer(model, CFG, recording).step(batch)
    assert len(calls) == 1 and calls[0][0] is model
    assert calls[0][1].keys() == batch.keys() and all(torch.equal(calls[0][1][k], batch[k]) for k in batch)
    assert value > 0

    # through train(): once per micro-batch, with extra_loss added to it
    calls.clear()
    examples = [{"input_ids": [5, 6, 7, 8], "labels": [-100, -100, 7, 8], "prompt_length": 2}] * 4
    cfg = TrainConfig(steps=3, batch_size=2, grad_accum=2)
    plain = train(lora_model(), examples, cfg, COLLATE, loss_fn=recording)
    with_extra = train(lora_model(), examples, cfg, COLLATE, loss_fn=recording, extra_loss=lambda m: torch.tensor(1.0))
    assert len(calls) == 2 * 3 * 2
    assert with_extra.losses == pytest.approx([x + 1.0 for x in plain.losses])


def test_train_continues_a_persistent_trainer():
    examples = [{"input_ids": [5, 6, 7, 8], "labels": [-100, -100, 7, 8], "prompt_length": 2}] * 4
    model = lora_model()
    cfg = TrainConfig(steps=2, batch_size=2, schedule="linear")
    trainer = Trainer(model, TrainConfig(steps=6, schedule="linear"))  # one schedule over three calls
    for _ in range(3):
        train(model, examples, cfg, COLLATE, trainer=trainer)
    assert trainer.step_count == 6
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(trainer.cfg.lr * lr_factor(5, 6, 0, "linear"))
    with pytest.raises(ConfigError, match="grad_accum"):
        train(model, examples, TrainConfig(steps=1, grad_accum=2), COLLATE, trainer=trainer)
    with pytest.raises(ValueError, match="another model"):
        train(lora_model(), examples, cfg, COLLATE, trainer=trainer)


def test_schedule_stays_at_its_end_past_the_last_step():
    assert lr_factor(15, 10, 0, "cosine") == 0.0
    assert lr_factor(15, 10, 2, "linear") == 0.0
    assert lr_factor(15, 10, 0, "constant") == 1.0


def test_trainer_needs_trainable_parameters():
    with pytest.raises(ConfigError, match="adapter"):
        Trainer(make_tiny_llama().requires_grad_(False), CFG)
