"""The contract every registered PEFT method honours, parametrised over the registry (a new method is tested as is).

attach -> 2 AdamW steps -> only adapter parameters moved -> state extracted -> a fresh base model with the same config
and the loaded state gives identical logits; save_adapter/load_saved_adapter round trip gives identical logits too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from conftest import make_tiny_llama
from fedpeft.adapters import (
    AdapterConfig,
    adapter_state,
    attach_adapter,
    load_adapter_state,
    load_saved_adapter,
    save_adapter,
)
from fedpeft.errors import UnsupportedModelError
from fedpeft.registry import PEFT_METHODS

# Only what a method cannot attach without; everything else stays at the AdapterConfig defaults.
REQUIRED: dict[str, dict[str, Any]] = {
    "adalora": {"options": {"total_step": 10}},
    "named": {"module_names": [r"layers\.1\.mlp\.down_proj\."]},
}
METHODS = PEFT_METHODS.names()


def make_config(method: str) -> AdapterConfig:
    return AdapterConfig(method=method, **REQUIRED.get(method, {}))


def make_batch() -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(1234)
    input_ids = torch.randint(0, 512, (2, 12), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :3] = 0  # one left-padded row
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def logits_of(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def frozen_snapshot(model: nn.Module) -> dict[str, Tensor]:
    snap = {f"param:{n}": p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    snap.update({f"buffer:{n}": b.detach().clone() for n, b in model.named_buffers()})
    return snap


def is_prompt_learning(model: nn.Module) -> bool:
    peft_config = getattr(model, "peft_config", None)
    return bool(peft_config) and peft_config["default"].is_prompt_learning


@dataclass
class Trained:
    cfg: AdapterConfig
    model: nn.Module
    state0: dict[str, Tensor]
    state: dict[str, Tensor]
    losses: list[float]
    frozen_before: dict[str, Tensor]
    rng_unchanged: bool
    logits: Tensor


@pytest.fixture(scope="module", params=METHODS)
def trained(request: pytest.FixtureRequest) -> Trained:
    cfg = make_config(request.param)
    base = make_tiny_llama()
    rng = torch.get_rng_state()
    model = attach_adapter(base, cfg)
    rng_unchanged = torch.equal(rng, torch.get_rng_state())
    state0 = adapter_state(model)
    frozen_before = frozen_snapshot(model)
    batch = make_batch()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(2):
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return Trained(
        cfg, model, state0, adapter_state(model), losses, frozen_before, rng_unchanged, logits_of(model, batch)
    )


def test_attach_trains_only_adapter(trained: Trained) -> None:
    assert trained.rng_unchanged, "attach must not change the global torch RNG"
    assert trained.state0, "attach selected no trainable parameters"
    assert trained.losses[0] != trained.losses[1], "loss did not change between step 1 and step 2"
    assert any(not torch.equal(trained.state0[k], trained.state[k]) for k in trained.state), "state did not change"
    after = frozen_snapshot(trained.model)
    assert after.keys() == trained.frozen_before.keys()
    changed = [k for k, v in trained.frozen_before.items() if not torch.equal(v, after[k])]
    assert not changed, f"frozen tensors changed: {changed[:5]}"
    tied = dict(trained.model.named_parameters(remove_duplicate=False))
    embed = [p for n, p in tied.items() if "embed_tokens" in n or "lm_head" in n]
    assert embed and not any(p.requires_grad for p in embed), "the (tied) embedding must stay frozen"


def test_state_moves_to_fresh_model(trained: Trained) -> None:
    assert all(not v.requires_grad for v in trained.state.values())
    fresh = attach_adapter(make_tiny_llama(), trained.cfg)
    before = logits_of(fresh, make_batch())
    assert before.shape == trained.logits.shape
    load_adapter_state(fresh, trained.state)
    torch.testing.assert_close(logits_of(fresh, make_batch()), trained.logits, rtol=0, atol=1e-6)
    fresh_state = adapter_state(fresh)
    assert all(torch.equal(fresh_state[k], v) for k, v in trained.state.items())


def test_save_and_load_saved_adapter(trained: Trained, tmp_path: Path) -> None:
    out = save_adapter(trained.model, tmp_path / "adapter")
    assert (out / "adapter_model.safetensors").is_file()
    assert (out / "fedpeft_adapter.json").is_file()
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"

    loaded = load_saved_adapter(make_tiny_llama(), out)
    torch.testing.assert_close(logits_of(loaded, make_batch()), trained.logits, rtol=0, atol=1e-6)
    assert not adapter_state(loaded), "an inference load must leave nothing trainable"

    if is_prompt_learning(trained.model):
        with pytest.raises(UnsupportedModelError, match="prompt-learning"):
            load_saved_adapter(make_tiny_llama(), out, trainable=True)
        return
    resumed = load_saved_adapter(make_tiny_llama(), out, trainable=True)
    state = adapter_state(resumed)
    assert state.keys() == trained.state.keys()
    assert all(torch.equal(state[k], v) for k, v in trained.state.items())
    torch.testing.assert_close(logits_of(resumed, make_batch()), trained.logits, rtol=0, atol=1e-6)
