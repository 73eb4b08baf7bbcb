"""AdapterConfig validation, method options and the registry listing."""

from __future__ import annotations

from typing import Any

import pytest

from fedpeft.adapters import AdapterConfig, PeftMethod, get_method, list_methods
from fedpeft.adapters.base import FAMILIES
from fedpeft.errors import ConfigError
from fedpeft.registry import PEFT_METHODS

BUILT_INS = {
    "lora": "reparameterized",
    "rslora": "reparameterized",
    "dora": "reparameterized",
    "ffa_lora": "reparameterized",
    "vera": "reparameterized",
    "loha": "reparameterized",
    "lokr": "reparameterized",
    "adalora": "reparameterized",
    "prompt_tuning": "additive",
    "prefix_tuning": "additive",
    "p_tuning": "additive",
    "ia3": "additive",
    "bottleneck": "additive",
    "bitfit": "selective",
    "layernorm": "selective",
    "last_k": "selective",
    "named": "selective",
}


def test_defaults_validate_to_lora() -> None:
    method = AdapterConfig().validate()
    assert isinstance(method, PeftMethod) and method.name == "lora"


def test_unknown_method_lists_registered_names() -> None:
    cfg = AdapterConfig(method="lorra")  # constructing is fine: the registry is consulted lazily
    with pytest.raises(ConfigError) as info:
        cfg.validate()
    assert info.value.field == "method"
    assert "'lora'" in str(info.value) and "'bitfit'" in str(info.value)
    with pytest.raises(ConfigError):
        get_method("lorra")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("r", 0),
        ("r", 1.5),
        ("r", True),
        ("alpha", 0),
        ("dropout", 1.0),
        ("dropout", -0.1),
        ("target_modules", "q_proj"),
        ("target_modules", []),
        ("num_virtual_tokens", 0),
        ("bottleneck_size", 0),
        ("last_k", 0),
        ("module_names", ["("]),
        ("module_names", "q_proj"),
        ("init_seed", -1),
        ("options", [("a", 1)]),
        ("method", ""),
    ],
)
def test_bad_field_names_the_field(field: str, value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        AdapterConfig(**{field: value})
    assert info.value.field == field


def test_dict_round_trip_and_unknown_key() -> None:
    cfg = AdapterConfig(method="vera", r=4, target_modules=["q_proj"], options={"d_initial": 0.2})
    assert AdapterConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="rank"):
        AdapterConfig.from_dict({"method": "lora", "rank": 4})


@pytest.mark.parametrize(
    ("cfg", "field", "text"),
    [
        (AdapterConfig(options={"no_such_option": 1}), "options.no_such_option", "init_lora_weights"),
        (AdapterConfig(options={"lora_alpha": 4}), "options.lora_alpha", "AdapterConfig.alpha"),
        (AdapterConfig(method="dora", options={"use_dora": False}), "options.use_dora", "fixed by the dora"),
        (AdapterConfig(method="adalora"), "options.total_step", "total_step"),
        (AdapterConfig(method="bitfit", options={"x": 1}), "options.x", "no options for bitfit"),
        (AdapterConfig(method="bottleneck", options={"activation": "swish"}), "options.activation", "'gelu'"),
        (AdapterConfig(method="named"), "module_names", "at least one regex"),
        (AdapterConfig(options={"layers_pattern": "layers"}), "options", "layers_to_transform"),
    ],
)
def test_method_specific_validation(cfg: AdapterConfig, field: str, text: str) -> None:
    with pytest.raises(ConfigError) as info:
        cfg.validate()
    assert info.value.field == field
    assert text in str(info.value)


def test_list_methods_comes_from_the_registry() -> None:
    rows = list_methods()
    assert sorted(name for name, _, _ in rows) == PEFT_METHODS.names()
    assert all(family in FAMILIES and description for _, family, description in rows)
    assert {name: family for name, family, _ in rows if name in BUILT_INS} == BUILT_INS
