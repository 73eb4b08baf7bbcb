"""Unit tests of individual methods, sizes, seeds and state-loading errors."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import make_tiny_llama
from fedpeft.adapters import (
    AdapterConfig,
    AdapterStateError,
    adapter_after_step,
    adapter_state,
    attach_adapter,
    count_trainable,
    get_adapter_config,
    load_adapter_state,
    save_adapter,
)
from fedpeft.errors import ConfigError, FedPeftError, UnsupportedModelError

HIDDEN, LAYERS = 32, 2


def ids() -> torch.Tensor:
    return torch.randint(0, 512, (2, 9), generator=torch.Generator().manual_seed(7))


def logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=ids()).logits


def total_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_count_trainable_lora_exact() -> None:
    base = make_tiny_llama()
    n_base = total_params(base)
    size = count_trainable(attach_adapter(base, AdapterConfig(method="lora", r=8, target_modules=["q_proj", "v_proj"])))
    expected = LAYERS * 2 * (8 * HIDDEN + HIDDEN * 8)  # 2 layers x {q,v} x (A: r x in + B: out x r)
    assert expected == 2048
    assert size.params == expected
    assert size.bytes == expected * 4  # float32
    assert size.total_params == n_base + expected
    assert size.fraction == pytest.approx(expected / (n_base + expected))


def test_count_trainable_bitfit_counts_every_bias() -> None:
    model = attach_adapter(make_tiny_llama(), AdapterConfig(method="bitfit"))
    # per layer: q,k,v,o biases (4 x 32) + gate,up (2 x 64) + down (32)
    assert count_trainable(model).params == LAYERS * (4 * HIDDEN + 2 * 64 + HIDDEN) == 576
    assert all(k.endswith(".bias") for k in adapter_state(model))


def test_bitfit_without_biases_is_unsupported() -> None:
    with pytest.raises(UnsupportedModelError, match=r"bitfit: .*no bias parameters"):
        attach_adapter(make_tiny_llama(bias=False), AdapterConfig(method="bitfit"))


def test_layernorm_trains_only_norm_weights() -> None:
    state = adapter_state(attach_adapter(make_tiny_llama(), AdapterConfig(method="layernorm")))
    assert sorted(state) == sorted(
        [f"model.layers.{i}.{n}.weight" for i in range(LAYERS) for n in ("input_layernorm", "post_attention_layernorm")]
        + ["model.norm.weight"]
    )


def test_last_k() -> None:
    with pytest.raises(ConfigError) as info:
        attach_adapter(make_tiny_llama(), AdapterConfig(method="last_k", last_k=LAYERS + 1))
    assert info.value.field == "last_k" and "between 1 and 2" in str(info.value)
    state = adapter_state(attach_adapter(make_tiny_llama(), AdapterConfig(method="last_k", last_k=1)))
    assert state and all(k.startswith("model.layers.1.") for k in state)


def test_named_subset_and_tied_head() -> None:
    with pytest.raises(ConfigError) as info:
        attach_adapter(make_tiny_llama(), AdapterConfig(method="named", module_names=["no_such_module"]))
    assert info.value.field == "module_names"
    # lm_head is tied to the embedding: naming either alias trains the one shared tensor, keyed by its first name
    state = adapter_state(attach_adapter(make_tiny_llama(), AdapterConfig(method="named", module_names=["^lm_head"])))
    assert list(state) == ["model.embed_tokens.weight"]


def test_extra_module_names_on_native_methods() -> None:
    cfg = AdapterConfig(method="layernorm", module_names=[r"layers\.0\.self_attn\.o_proj\.bias"])
    state = adapter_state(attach_adapter(make_tiny_llama(), cfg))
    assert "model.layers.0.self_attn.o_proj.bias" in state and "model.norm.weight" in state


def test_bottleneck_is_identity_at_init_and_keeps_base_names() -> None:
    base_logits = logits(make_tiny_llama())
    base_names = set(make_tiny_llama().state_dict())
    model = attach_adapter(make_tiny_llama(), AdapterConfig(method="bottleneck", bottleneck_size=4))
    assert torch.equal(logits(model), base_logits)
    assert base_names <= set(model.state_dict())
    assert "model.layers.0.mlp.adapter.down.weight" in adapter_state(model)
    assert count_trainable(model).params == LAYERS * (HIDDEN * 4 + 4 + 4 * HIDDEN + HIDDEN)
    # the hook survives deepcopy and acts on the copy's own adapter
    with torch.no_grad():
        model.model.layers[0].mlp.adapter.up.bias.fill_(0.5)
    clone = copy.deepcopy(model)
    assert torch.equal(logits(clone), logits(model)) and not torch.equal(logits(model), base_logits)


def lora_a(seed: int) -> torch.Tensor:
    model = attach_adapter(make_tiny_llama(), AdapterConfig(method="lora", init_seed=seed))
    state = adapter_state(model)
    assert all(not v.any() for k, v in state.items() if ".lora_B." in k)  # B starts at zero
    return torch.cat([v.flatten() for k, v in state.items() if ".lora_A." in k])


def test_init_seed_reproducible() -> None:
    assert torch.equal(lora_a(0), lora_a(0))
    assert not torch.equal(lora_a(0), lora_a(1))


def test_vera_projections_regenerate_from_seed_and_do_not_travel() -> None:
    def projections(seed: int) -> tuple[dict[str, torch.Tensor], set[str]]:
        model = attach_adapter(make_tiny_llama(), AdapterConfig(method="vera", init_seed=seed))
        bufs = {n: b.clone() for n, b in model.named_buffers() if "vera_A" in n or "vera_B" in n}
        return bufs, set(adapter_state(model))

    a, keys = projections(0)
    b, _ = projections(0)
    c, _ = projections(1)
    assert a and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert keys and all("vera_lambda" in k for k in keys)


def test_ffa_lora_trains_only_b() -> None:
    state = adapter_state(attach_adapter(make_tiny_llama(), AdapterConfig(method="ffa_lora")))
    assert state and all(".lora_B." in k for k in state)


def test_load_adapter_state_errors_leave_model_unchanged() -> None:
    model = attach_adapter(make_tiny_llama(), AdapterConfig(method="lora"))
    good = adapter_state(model)
    key = next(iter(good))
    missing = {k: v for k, v in good.items() if k != key}
    with pytest.raises(AdapterStateError, match=r"missing 1 key"):
        load_adapter_state(model, missing)
    with pytest.raises(AdapterStateError, match=r"unexpected 1 key.*extra"):
        load_adapter_state(model, {**good, "extra.weight": torch.zeros(1)})
    bad_shape = {k: (v[:-1] if k == key else v + 1) for k, v in good.items()}
    with pytest.raises(AdapterStateError, match="shape"):
        load_adapter_state(model, bad_shape)
    after = adapter_state(model)
    assert all(torch.equal(after[k], v) for k, v in good.items())
    # another floating dtype (e.g. fp16 off the wire) is cast on load
    load_adapter_state(model, {k: (v + 1).half() for k, v in good.items()})
    assert adapter_state(model)[key].dtype == torch.float32


def test_attach_twice_is_refused() -> None:
    model = attach_adapter(make_tiny_llama(), AdapterConfig(method="lora"))
    assert get_adapter_config(model) == AdapterConfig(method="lora")
    with pytest.raises(UnsupportedModelError, match="already"):
        attach_adapter(model, AdapterConfig(method="ia3"))
    native = attach_adapter(make_tiny_llama(), AdapterConfig(method="bitfit"))
    with pytest.raises(UnsupportedModelError, match="already"):
        attach_adapter(native, AdapterConfig(method="bottleneck"))


def test_missing_target_modules() -> None:
    with pytest.raises(ConfigError) as info:
        attach_adapter(make_tiny_llama(), AdapterConfig(method="lora", target_modules=["query"]))
    assert info.value.field == "target_modules" and "q_proj" in str(info.value)

    class Custom(nn.Module):  # not a transformers model: peft has no default targets for it
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(4, 4)

    with pytest.raises(UnsupportedModelError, match=r"lora cannot be applied to Custom.*target_modules.*proj"):
        attach_adapter(Custom(), AdapterConfig(method="lora"))
    with pytest.raises(UnsupportedModelError, match="bottleneck: found no stack"):
        attach_adapter(Custom(), AdapterConfig(method="bottleneck"))


def test_adalora_after_step_reallocates() -> None:
    cfg = AdapterConfig(method="adalora", r=2, options={"total_step": 4, "tinit": 0, "tfinal": 1, "deltaT": 1})
    model = attach_adapter(make_tiny_llama(), cfg)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for step in range(4):
        model(input_ids=ids(), labels=ids()).loss.backward()
        opt.step()
        adapter_after_step(model, step)
        opt.zero_grad()
    masked = [k for k, v in adapter_state(model).items() if ".lora_E." in k and (v == 0).any()]
    assert masked, "AdaLoRA should have pruned some singular values"
    adapter_after_step(attach_adapter(make_tiny_llama(), AdapterConfig()), 0)  # a no-op for other methods


def test_save_adapter_needs_an_adapter(tmp_path: Path) -> None:
    with pytest.raises(FedPeftError, match="no adapter"):
        save_adapter(make_tiny_llama(), tmp_path)
