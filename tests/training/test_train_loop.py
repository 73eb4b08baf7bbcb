import functools

import pytest
import torch

from conftest import make_tiny_llama
from fedpeft.adapters import AdapterConfig, adapter_state, attach_adapter
from fedpeft.data import collate, label_word_logits
from fedpeft.errors import ConfigError
from fedpeft.training.loop import TrainConfig, forward_logits, label_scores, train

WORDS = torch.tensor([7, 11])


def make_examples(n: int = 24, seed: int = 0) -> list[dict]:
    """Sequences whose label is readable from their last prompt token (so a tiny model can learn it fast)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        label = i % 2
        length = int(torch.randint(4, 9, (1,), generator=g))
        ids = torch.randint(20, 500, (length,), generator=g).tolist()
        ids[-1] = 3 if label else 4  # the cue sits where the label is read
        out.append({"input_ids": ids, "labels": [-100] * length, "prompt_length": length, "label": label})
    return out


COLLATE = functools.partial(collate, pad_id=0)


@pytest.mark.parametrize("method", ["lora", "prompt_tuning", "bitfit"])
def test_label_scores_fast_path_matches_full_logits(method):
    model = attach_adapter(make_tiny_llama(), AdapterConfig(method=method))
    batch = COLLATE(make_examples(6))
    with torch.no_grad():
        fast = label_scores(model, batch, WORDS)
        full = label_word_logits(forward_logits(model, batch), batch["prompt_length"], WORDS)
    assert fast.shape == (6, 2)
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)


def test_training_learns_a_label_and_leaves_base_frozen():
    model = attach_adapter(make_tiny_llama(), AdapterConfig(method="lora", r=4, target_modules=["q_proj", "v_proj"]))
    base = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    data = make_examples(32)
    cfg = TrainConfig(steps=60, batch_size=8, lr=2e-2, loss="label_words", seed=0)
    result = train(model, data, cfg, COLLATE, word_ids=WORDS)
    assert result.steps == 60 and result.examples == 480 and len(result.losses) == 60
    assert sum(result.losses[-10:]) / 10 < 0.6 * sum(result.losses[:5]) / 5
    batch = COLLATE(data)
    with torch.no_grad():
        predictions = label_scores(model, batch, WORDS).argmax(-1)
    assert torch.equal(predictions, batch["label"])
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, base[n]), n


def test_training_is_reproducible_from_the_seed():
    def run(seed):
        model = attach_adapter(make_tiny_llama(), AdapterConfig(method="lora", r=4))
        train(
            model,
            make_examples(16),
            TrainConfig(steps=5, batch_size=4, lr=1e-2, loss="label_words", seed=seed),
            COLLATE,
            word_ids=WORDS,
        )
        return adapter_state(model)

    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_lm_loss_and_grad_accumulation_and_extra_loss():
    model = attach_adapter(make_tiny_llama(), AdapterConfig(method="lora", r=4))
    data = make_examples(8)
    for e in data:  # the last two tokens are the response
        e["labels"] = [-100] * (len(e["input_ids"]) - 2) + e["input_ids"][-2:]
    calls = []

    def prox(m):
        calls.append(1)
        return sum((p**2).sum() for p in m.parameters() if p.requires_grad) * 0.0

    result = train(model, data, TrainConfig(steps=3, batch_size=2, grad_accum=2, loss="lm"), COLLATE, extra_loss=prox)
    assert result.examples == 12 and len(calls) == 6
    assert all(torch.isfinite(torch.tensor(result.losses)))


def test_train_rejects_bad_input():
    model = make_tiny_llama()
    with pytest.raises(ConfigError, match="adapter"):
        train(model.requires_grad_(False), make_examples(4), TrainConfig(steps=1), COLLATE)
    lora = attach_adapter(make_tiny_llama(), AdapterConfig(method="lora"))
    with pytest.raises(ConfigError, match="examples"):
        train(lora, [], TrainConfig(steps=1), COLLATE)
    with pytest.raises(ConfigError, match="train.loss"):
        train(lora, make_examples(4), TrainConfig(steps=1, loss="label_words"), COLLATE)
