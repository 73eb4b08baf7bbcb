"""Split forward (layers [0, k) and [k, L) run separately) equals the full forward: loss, logits and gradients.

Tolerances: the two halves run the very same operations as the full forward, so on CPU the results are in fact
bit-identical; the checks allow 1e-6 (relative for the loss, absolute for gradients) so that a backend choosing
different kernels for the two calls would not fail them.
"""

from __future__ import annotations

import functools

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, MistralConfig, Qwen2Config, Qwen3Config

from conftest import make_tiny_llama
from fedpeft.adapters import AdapterConfig, attach_adapter
from fedpeft.data import collate
from fedpeft.errors import ConfigError, UnsupportedModelError
from fedpeft.models import load_model
from fedpeft.models.split import (
    SUPPORTED_MODEL_TYPES,
    forward_bottom,
    forward_middle,
    forward_top,
    num_layers,
    split_loss,
)
from fedpeft.training.loop import TrainConfig
from fedpeft.training.losses import lm_loss
from fedpeft.training.trainer import Trainer

PAD = 1
COLLATE = functools.partial(collate, pad_id=PAD)


def lora_model(base: torch.nn.Module | None = None, seed: int = 0) -> torch.nn.Module:
    """tiny-small (or ``base``) with LoRA whose B is non-zero, so the adapter changes every layer's output."""
    model = attach_adapter(base if base is not None else load_model("tiny-small"), AdapterConfig(method="lora", r=4))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return model


def padded_batch(lengths: tuple[int, ...] = (5, 9, 7), vocab: int = 8000, seed: int = 0) -> dict[str, torch.Tensor]:
    """Rows of different lengths (so the collate right-pads), the last 3 tokens of each the response."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for n in lengths:
        ids = torch.randint(10, vocab, (n,), generator=gen).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * (n - 3) + ids[-3:], "prompt_length": n - 3})
    return COLLATE(rows)


def trainable(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def full_loss_and_grads(model, batch):
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    grads = torch.autograd.grad(out.loss, [p for _, p in trainable(model)])
    return out, dict(zip([n for n, _ in trainable(model)], grads, strict=True))


def assert_grads_close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-6, msg=name)


@pytest.fixture(scope="module")
def model():
    return lora_model()


@pytest.mark.parametrize("cut", [0, 1, 2, 4])
def test_bottom_then_top_equals_full_forward(model, cut):
    batch = padded_batch()
    assert batch["attention_mask"].min() == 0  # the batch really is padded
    full, want = full_loss_and_grads(model, batch)
    hidden = forward_bottom(model, batch["input_ids"], batch["attention_mask"], cut)  # [B, T, H]
    assert hidden.shape == (3, 9, 128)
    out = forward_top(model, hidden, batch["attention_mask"], cut, labels=batch["labels"])
    torch.testing.assert_close(out.loss, full.loss, rtol=1e-6, atol=0)
    torch.testing.assert_close(out.logits, full.logits, rtol=1e-6, atol=1e-6)
    got = torch.autograd.grad(out.loss, [p for _, p in trainable(model)])
    assert_grads_close(dict(zip(want, got, strict=True)), want)
    # the module lists are back: the full forward is unchanged afterwards
    assert num_layers(model) == 4
    torch.testing.assert_close(full_loss_and_grads(model, batch)[0].loss, full.loss, rtol=0, atol=0)


@pytest.mark.parametrize("cut", [0, 1, 3])
def test_u_shaped_bottom_middle_head_equals_full_forward(model, cut):
    """U-shaped split: bottom to ``cut``, middle [cut, L) without the norm, head (norm + LM head) from L."""
    batch = padded_batch()
    full, want = full_loss_and_grads(model, batch)
    hidden = forward_bottom(model, batch["input_ids"], batch["attention_mask"], cut)
    middle = forward_middle(model, hidden, batch["attention_mask"], cut, num_layers(model))  # [B, T, H]
    assert middle.shape == hidden.shape
    out = forward_top(model, middle, batch["attention_mask"], num_layers(model), labels=batch["labels"])
    torch.testing.assert_close(out.loss, full.loss, rtol=1e-6, atol=0)
    got = torch.autograd.grad(out.loss, [p for _, p in trainable(model)])
    assert_grads_close(dict(zip(want, got, strict=True)), want)


@pytest.mark.parametrize("cut", [0, 2, 4])
def test_split_learning_pattern_detach_send_and_backward_from(cut):
    """Client: bottom through Trainer.forward; server: top on a detached copy, d loss / d hidden sent back; client:
    Trainer.backward_from. Every trainable parameter ends with the full forward's gradient, and one update equals
    Trainer.step on the full model."""
    batch = padded_batch(seed=1)
    reference, split = lora_model(), lora_model()
    _, want = full_loss_and_grads(reference, batch)

    trainer = Trainer(split, TrainConfig(steps=3, lr=1e-2, max_grad_norm=0.0))
    hidden = trainer.forward(forward_bottom, split, batch["input_ids"], batch["attention_mask"], cut)
    received = hidden.detach().requires_grad_()  # what the server gets: no graph back to the client
    loss = forward_top(split, received, batch["attention_mask"], cut, labels=batch["labels"]).loss
    loss.backward()  # the server's layers get their gradients, and the cut its d loss / d hidden
    assert received.grad is not None and received.grad.shape == hidden.shape
    trainer.backward_from(received.grad)  # the client's layers get theirs
    assert_grads_close({n: p.grad for n, p in trainable(split)}, want)  # type: ignore[misc]

    trainer.apply()
    Trainer(reference, TrainConfig(steps=3, lr=1e-2, max_grad_norm=0.0)).step(batch)
    for (name, p), (_, q) in zip(trainable(split), trainable(reference), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=name)


def test_split_loss_trains_through_trainer(model):
    """split_loss as a pluggable loss: the same value as lm_loss."""
    batch = padded_batch(seed=2)
    with torch.no_grad():
        torch.testing.assert_close(split_loss(model, batch, 2), lm_loss(model, batch), rtol=1e-6, atol=0)


def test_padding_does_not_change_a_row(model):
    """The padding mask reaches the layers on both sides: a padded row's real positions match the row alone."""
    batch = padded_batch()
    alone = {k: v[:1, :5] for k, v in batch.items() if v.dim() == 2}  # row 0 has 5 real tokens
    with torch.no_grad():
        padded = forward_top(
            model, forward_bottom(model, batch["input_ids"], batch["attention_mask"], 2), batch["attention_mask"], 2
        ).logits[:1, :5]
        single = forward_top(
            model, forward_bottom(model, alone["input_ids"], alone["attention_mask"], 2), alone["attention_mask"], 2
        ).logits
    torch.testing.assert_close(padded, single, rtol=1e-5, atol=1e-5)


def test_sliding_window_layer_types_are_cut_along():
    """Qwen2 with alternating full / sliding-window layers: the per-layer attention kind follows the layer."""
    cfg = Qwen2Config(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        use_sliding_window=True,
        sliding_window=3,
        layer_types=["full_attention", "sliding_attention", "full_attention", "sliding_attention"],
    )
    torch.manual_seed(0)
    model = lora_model(AutoModelForCausalLM.from_config(cfg).eval())
    batch = padded_batch(lengths=(9, 6), vocab=300)
    full, want = full_loss_and_grads(model, batch)
    for cut in (1, 3):
        out = forward_top(
            model,
            forward_bottom(model, batch["input_ids"], batch["attention_mask"], cut),
            batch["attention_mask"],
            cut,
            labels=batch["labels"],
        )
        torch.testing.assert_close(out.loss, full.loss, rtol=1e-6, atol=0)
        got = torch.autograd.grad(out.loss, [p for _, p in trainable(model)])
        assert_grads_close(dict(zip(want, got, strict=True)), want)
    assert model.get_base_model().config.layer_types[1] == "sliding_attention"  # restored


@pytest.mark.parametrize("config_class", [MistralConfig, Qwen3Config])
def test_other_supported_families_split_exactly(config_class):
    """Every model type on the supported list is checked, not just Llama."""
    cfg = config_class(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    model = lora_model(AutoModelForCausalLM.from_config(cfg).eval())
    assert model.get_base_model().config.model_type in SUPPORTED_MODEL_TYPES
    batch = padded_batch(lengths=(7, 4), vocab=300)
    full, want = full_loss_and_grads(model, batch)
    out = forward_top(
        model,
        forward_bottom(model, batch["input_ids"], batch["attention_mask"], 2),
        batch["attention_mask"],
        2,
        labels=batch["labels"],
    )
    torch.testing.assert_close(out.loss, full.loss, rtol=1e-6, atol=0)
    got = torch.autograd.grad(out.loss, [p for _, p in trainable(model)])
    assert_grads_close(dict(zip(want, got, strict=True)), want)


@pytest.mark.parametrize("cut", [-1, 5, True, 1.5])
def test_bad_cut_is_a_config_error(model, cut):
    batch = padded_batch()
    with pytest.raises(ConfigError, match=r"cut=.*\[0, 4\]"):
        forward_bottom(model, batch["input_ids"], batch["attention_mask"], cut)
    with pytest.raises(ConfigError, match="cut"):
        forward_top(model, torch.zeros(1, 2, 128), None, cut)


def test_wrong_hidden_width_is_an_error(model):
    with pytest.raises(ValueError, match=r"\[B, T, 128\]"):
        forward_top(model, torch.zeros(1, 2, 64), None, 1)


def test_module_lists_are_restored_after_an_exception(model):
    inner = model.get_base_model().model
    layers, norm = inner.layers, inner.norm

    def fail(*_):
        raise RuntimeError("boom")

    handle = inner.layers[0].register_forward_hook(fail)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            forward_bottom(model, torch.tensor([[5, 6, 7]]), None, 2)
    finally:
        handle.remove()
    assert inner.layers is layers and inner.norm is norm and len(inner.layers) == 4


def test_gpt2_is_refused_by_name():
    """GPT-2 adds learned position embeddings to inputs_embeds: a top fed hidden states would add them twice."""
    gpt2 = AutoModelForCausalLM.from_config(GPT2Config(vocab_size=100, n_embd=16, n_layer=2, n_head=2, n_positions=32))
    with pytest.raises(UnsupportedModelError, match="'gpt2'"):
        num_layers(gpt2)
    with pytest.raises(UnsupportedModelError, match="'gpt2'"):
        forward_bottom(gpt2, torch.tensor([[1, 2, 3]]), None, 1)


def test_prompt_learning_adapters_are_refused():
    model = attach_adapter(make_tiny_llama(), AdapterConfig(method="prompt_tuning"))
    with pytest.raises(UnsupportedModelError, match="prompt"):
        forward_bottom(model, torch.tensor([[1, 2, 3]]), None, 1)


def test_bare_model_without_adapter_works():
    model = make_tiny_llama()
    batch = padded_batch(lengths=(4, 6), vocab=500)
    with torch.no_grad():
        full = lm_loss(model, batch)
        torch.testing.assert_close(split_loss(model, batch, 1), full, rtol=1e-6, atol=0)
    assert num_layers(model) == 2
