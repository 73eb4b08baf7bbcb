"""FedsLLM's pure parts: which adapter keys live on the clients, the server's view of the top half, and the joint
gradient clipping that makes the two halves step as one model."""

from __future__ import annotations

import math

import pytest
import torch

from fedpeft.adapters import AdapterConfig, attach_adapter
from fedpeft.algorithms.fedsllm.split import TopView, bottom_params, on_client, partition, top_loss
from fedpeft.config import TrainConfig
from fedpeft.data import collate
from fedpeft.models import load_model
from fedpeft.models.split import forward_bottom
from fedpeft.training.losses import label_words_loss, lm_loss
from fedpeft.training.trainer import Trainer

KEYS = [
    "base_model.model.model.embed_tokens.lora_embedding_A.default",
    "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight",
    "base_model.model.model.layers.1.mlp.down_proj.lora_B.default.weight",
    "base_model.model.model.layers.10.self_attn.v_proj.lora_A.default.weight",
    "base_model.model.model.norm.weight",
    "base_model.model.lm_head.lora_B.default.weight",
]


@pytest.fixture(scope="module")
def tiny_lora_model():
    """tiny-small with LoRA on the embedding, attention and head (B non-zero), a padded batch with labels, and two
    label words."""
    cfg = AdapterConfig(method="lora", r=4, target_modules=["embed_tokens", "q_proj", "v_proj", "lm_head"])
    model = attach_adapter(load_model("tiny-small"), cfg)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "lora_embedding_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    rows = []
    for i, n in enumerate((5, 9, 7)):
        ids = torch.randint(10, 8000, (n,), generator=gen).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * (n - 3) + ids[-3:], "prompt_length": n - 3, "label": i % 2})
    return model, collate(rows, pad_id=1), torch.tensor([11, 12])


@pytest.mark.parametrize(
    ("cut", "client"),
    [(0, [0]), (1, [0, 1]), (2, [0, 1, 2]), (10, [0, 1, 2]), (11, [0, 1, 2, 3])],
)
def test_keys_below_the_cut_and_the_embedding_are_the_clients(cut, client):
    assert [i for i, k in enumerate(KEYS) if on_client(k, cut)] == client
    state = {k: torch.zeros(1) for k in KEYS}
    low, high = partition(state, cut)
    assert sorted(low) == sorted(KEYS[i] for i in client) and low.keys() | high.keys() == state.keys()
    assert not low.keys() & high.keys()


def test_layer_numbers_are_matched_whole():
    assert not on_client("model.layers.10.q.weight", 1)  # layer 10 is not layer 1
    assert on_client("model.layers.1.q.weight", 2)


def test_the_losses_on_the_top_view_equal_the_full_model(tiny_lora_model):
    """lm and label-word losses computed by the main server from the activations equal the full forward's, and
    the gradient at the cut backpropagated through the bottom gives the full model's gradients."""
    model, batch, word_ids = tiny_lora_model
    for make in (lambda: lm_loss, lambda: label_words_loss(word_ids)):
        loss = make()
        full = loss(model, batch)
        hidden = forward_bottom(model, batch["input_ids"], batch["attention_mask"], 2)  # [B, T, H]
        sent = hidden.detach().requires_grad_()
        top = top_loss(loss, sent, 2)(model, {**batch, "input_ids": torch.zeros_like(batch["input_ids"])})
        assert torch.allclose(top, full, atol=1e-5)
        grads_full = torch.autograd.grad(full, [p for p in model.parameters() if p.requires_grad], allow_unused=True)
        top.backward()
        hidden.backward(sent.grad)
        params = [p for p in model.parameters() if p.requires_grad]
        for p, g in zip(params, grads_full, strict=True):
            if g is not None:
                assert p.grad is not None and torch.allclose(p.grad, g, atol=1e-6)
        model.zero_grad(set_to_none=True)
    assert TopView(model, sent, 2)._is_prompt_learning is False


def test_bottom_params_count_what_a_client_holds(tiny_lora_model):
    model, _, _ = tiny_lora_model
    total = sum(p.numel() for p in model.parameters())
    held = [bottom_params(model, c)[1] for c in range(5)]
    assert held == sorted(held) and held[0] > 0 and held[-1] < total  # the head and final norm stay on the server
    trainable = [bottom_params(model, c)[0] for c in range(5)]
    embedding_lora = sum(p.numel() for n, p in model.named_parameters() if "lora_embedding" in n)
    assert trainable[0] == embedding_lora == 4 * 8192 + 128 * 4  # cut 0: the client trains the embedding's LoRA only
    head_lora = sum(p.numel() for n, p in model.named_parameters() if "lm_head.lora" in n)
    assert trainable[-1] == sum(p.numel() for p in model.parameters() if p.requires_grad) - head_lora


def test_joint_clipping_equals_one_models_clipping():
    """Two trainers over two halves of a parameter vector, each told the other's squared norm, clip and step
    exactly like one trainer over the whole vector."""
    torch.manual_seed(0)
    cfg = TrainConfig(steps=3, lr=0.1, max_grad_norm=0.5, warmup_steps=0)
    whole = torch.nn.Linear(4, 2)
    halves = [torch.nn.Linear(4, 1), torch.nn.Linear(4, 1)]
    with torch.no_grad():
        for i, h in enumerate(halves):
            h.weight.copy_(whole.weight[i : i + 1])
            h.bias.copy_(whole.bias[i : i + 1])
    t_whole, t_halves = Trainer(whole, cfg), [Trainer(h, cfg) for h in halves]
    for _ in range(3):
        x = torch.randn(5, 4)
        (whole(x) ** 2).sum().backward()
        for h in halves:
            (h(x) ** 2).sum().backward()
        norms = [t.grad_sq_norm() for t in t_halves]
        assert math.sqrt(sum(norms)) > cfg.max_grad_norm  # clipping is active
        t_whole.apply()
        for t, other in zip(t_halves, reversed(norms), strict=True):
            t.apply(other_sq_norm=other)
        joined = torch.cat([halves[0].weight, halves[1].weight])
        assert torch.allclose(joined, whole.weight, atol=1e-6)
