"""Hidden-state features (fedpeft.training.features): batching and padding do not change them."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest
import torch

from fedpeft.adapters import AdapterConfig, attach_adapter
from fedpeft.data import collate
from fedpeft.data.tokenize import tokenize_example
from fedpeft.models import load_model, load_tokenizer
from fedpeft.training.features import last_token_features, layer_features, prompt_features

PAIRS = [  # (prompt, response) of different lengths, so every batch below is padded
    ("Review: a gorgeous , witty , seductive movie .\nSentiment:", " positive"),
    ("Review: dull .\nSentiment:", " negative"),
    ("Question: what is the capital of France?\nAnswer:", " Paris is the capital and largest city of France."),
    ("Say hi.", " hi"),
    ("Review: the film is a charming and often affecting journey , but it drags in the middle .\nSentiment:", " mixed"),
    ("Translate to French: good morning\n", " bonjour"),
    ("Count:", " one two three four five six seven"),
]


@pytest.fixture(scope="module")
def lora_small() -> tuple[torch.nn.Module, Callable[..., dict[str, torch.Tensor]], list[dict[str, Any]]]:
    """tiny-small with a LoRA whose B is random (a fresh LoRA has B = 0 and would change nothing)."""
    tok = load_tokenizer("tiny-small")
    model = attach_adapter(load_model("tiny-small"), AdapterConfig(method="lora", r=4, alpha=8.0))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    examples = [tokenize_example(tok, p, r, max_length=64) for p, r in PAIRS]
    return model, functools.partial(collate, pad_id=tok.pad_token_id), examples


def test_last_token_features_picks_the_last_real_token_on_either_padding_side():
    hidden = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)  # [B=2, T=5, H=3]
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    out = last_token_features(hidden, right)
    assert out.shape == (2, 3)
    assert torch.equal(out, torch.stack([hidden[0, 2], hidden[1, 4]]))
    assert torch.equal(last_token_features(hidden, left), torch.stack([hidden[0, 4], hidden[1, 4]]))
    assert last_token_features(torch.zeros(0, 5, 3), torch.zeros(0, 5, dtype=torch.long)).shape == (0, 3)
    with pytest.raises(ValueError, match="attention_mask"):
        last_token_features(hidden, right[:, :4])
    with pytest.raises(ValueError, match="hidden"):
        last_token_features(hidden[0], right[0])


def test_layer_features_batched_equals_one_at_a_time(lora_small):
    model, coll, examples = lora_small
    cfg = model.config
    n_states, width = cfg.num_hidden_layers + 1, cfg.hidden_size
    batched = layer_features(model, examples, coll, batch_size=3)  # 3 padded batches: 3 + 3 + 1
    assert batched.shape == (len(examples), n_states * width) and batched.dtype == torch.float32
    assert len({len(ex["input_ids"]) for ex in examples}) > 1  # padding is exercised
    with torch.no_grad():
        for i, ex in enumerate(examples):
            # batch size 1 (FedHDS's reference): no padding, the last position is the example's last token
            ids = torch.tensor([ex["input_ids"]])  # [1, T]
            states = model(input_ids=ids, output_hidden_states=True).hidden_states  # L + 1 of [1, T, H]
            assert len(states) == n_states
            single = torch.cat([h[0, -1] for h in states])  # [(L + 1) * H]
            torch.testing.assert_close(batched[i], single, atol=1e-5, rtol=0)
    one_by_one = layer_features(model, examples, coll, batch_size=1)
    torch.testing.assert_close(batched, one_by_one, atol=1e-5, rtol=0)


def test_layer_features_selected_layers_are_column_blocks(lora_small):
    model, coll, examples = lora_small
    width = model.config.hidden_size
    full = layer_features(model, examples, coll, batch_size=4)  # [N, (L + 1) * H]
    picked = layer_features(model, examples, coll, batch_size=4, layers=[0, -1])  # [N, 2 * H]
    assert picked.shape == (len(examples), 2 * width)
    torch.testing.assert_close(picked[:, :width], full[:, :width], atol=1e-6, rtol=0)
    torch.testing.assert_close(picked[:, width:], full[:, -width:], atol=1e-6, rtol=0)
    assert layer_features(model, [], coll).shape == (0, 0)


def test_layer_features_with_virtual_tokens_batched_equals_one_at_a_time():
    """Prompt tuning prepends virtual tokens to the hidden states: the real positions are the last T."""
    tok = load_tokenizer("tiny-small")
    model = attach_adapter(load_model("tiny-small"), AdapterConfig(method="prompt_tuning", num_virtual_tokens=4))
    coll = functools.partial(collate, pad_id=tok.pad_token_id)
    examples = [tokenize_example(tok, p, r, max_length=64) for p, r in PAIRS[:4]]
    batched = layer_features(model, examples, coll, batch_size=4)
    one_by_one = layer_features(model, examples, coll, batch_size=1)
    assert batched.shape == (4, (model.config.num_hidden_layers + 1) * model.config.hidden_size)
    torch.testing.assert_close(batched, one_by_one, atol=1e-5, rtol=0)


@torch.no_grad()
def _old_router_prompt_features(
    model: torch.nn.Module,
    examples: Sequence[Mapping[str, Any]],
    collate: Callable[[Sequence[Mapping[str, Any]]], dict[str, torch.Tensor]],
    batch_size: int = 64,
) -> torch.Tensor:
    """fedpeft.algorithms.fltac.router.prompt_features as it was before the move (commit 5a7fef6), verbatim."""
    model.eval()
    device = next(model.parameters()).device
    rows: list[torch.Tensor] = []
    for i in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in collate(examples[i : i + batch_size]).items()}
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
        hidden = out.hidden_states[-1].float()  # [B, T, H]
        t = torch.arange(hidden.shape[1], device=device)[None, :]  # [1, T]
        mask = (t < batch["prompt_length"][:, None]).float()  # [B, T]: prompt positions only
        rows.append(((hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)).cpu())  # [B, H]
    return torch.cat(rows) if rows else torch.zeros(0, 0)


def test_prompt_features_unchanged_by_the_move(lora_small):
    model, coll, examples = lora_small
    for batch_size in (64, 3):
        new = prompt_features(model, examples, coll, batch_size=batch_size)
        old = _old_router_prompt_features(model, examples, coll, batch_size=batch_size)
        assert new.shape == (len(examples), model.config.hidden_size)
        assert torch.equal(new, old)
    assert prompt_features(model, [], coll).shape == (0, 0)


def test_prompt_features_is_still_exported_by_fltac():
    from fedpeft.algorithms.fltac import prompt_features as reexported

    assert reexported is prompt_features


def test_layer_features_mean_pool_is_the_mean_over_real_tokens_and_batch_independent(lora_small):
    """``pool="mean"`` (a FedHDS feature option): each layer's hidden states averaged over the example's own tokens,
    the same batched as one at a time (padding never enters the mean)."""
    model, coll, examples = lora_small
    batched = layer_features(model, examples, coll, batch_size=4, layers=[0, -1], pool="mean")  # [N, 2H]
    with torch.no_grad():
        for i, ex in enumerate(examples):
            ids = torch.tensor([ex["input_ids"]])
            hs = model(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True).hidden_states
            want = torch.cat([hs[0][0].mean(0), hs[-1][0].mean(0)])  # [2H]
            assert torch.allclose(batched[i], want, atol=1e-5)
    last = layer_features(model, examples, coll, batch_size=4, layers=[0, -1])
    assert not torch.allclose(batched, last)
    with pytest.raises(ValueError, match="pool"):
        layer_features(model, examples, coll, pool="max")  # type: ignore[arg-type]
