"""Selective methods: train a chosen subset of the existing parameters (fedpeft-native; the model is returned as is).

BitFit (Ben Zaken et al., arXiv 2106.10199), LayerNorm tuning (Zhao et al., arXiv 2312.11420), last-k layers and a
named subset (classic partial fine-tuning). None of them makes the (tied) embedding / LM head trainable unless
``module_names`` asks for it.
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from fedpeft.adapters._util import (
    all_parameter_names,
    check_options,
    decoder_layers,
    select_by_regex,
    train_extra_named,
)
from fedpeft.adapters.base import AdapterConfig, Family, PeftMethod
from fedpeft.errors import ConfigError, UnsupportedModelError
from fedpeft.registry import register_peft


class _Selective(PeftMethod):
    family: ClassVar[Family] = "selective"

    def validate(self, cfg: AdapterConfig) -> None:
        check_options(self.name, cfg.options, {})

    def _select(self, model: nn.Module, cfg: AdapterConfig) -> list[nn.Parameter]:
        raise NotImplementedError

    def _apply(self, model: nn.Module, cfg: AdapterConfig) -> nn.Module:
        for param in self._select(model, cfg):
            param.requires_grad_(True)
        train_extra_named(model, cfg)
        return model


class BitFit(_Selective):
    name: ClassVar[str] = "bitfit"
    description: ClassVar[str] = "BitFit: train every bias term"

    def _select(self, model: nn.Module, cfg: AdapterConfig) -> list[nn.Parameter]:
        biases = [p for n, p in model.named_parameters() if n.rsplit(".", 1)[-1] == "bias"]
        if not biases:
            raise UnsupportedModelError(
                f"bitfit: {type(model).__name__} has no bias parameters (e.g. a Llama built without attention_bias/"
                "mlp_bias), so there is nothing to train; choose another method such as lora or layernorm"
            )
        return biases


class LayerNormTuning(_Selective):
    name: ClassVar[str] = "layernorm"
    description: ClassVar[str] = "LayerNorm tuning: train only the normalisation weights (LayerNorm, RMSNorm)"

    def _select(self, model: nn.Module, cfg: AdapterConfig) -> list[nn.Parameter]:
        params = [p for m in model.modules() if "Norm" in type(m).__name__ for p in m.parameters(recurse=False)]
        if not params:
            raise UnsupportedModelError(
                f"layernorm: {type(model).__name__} has no normalisation modules with parameters"
            )
        return params


class LastK(_Selective):
    name: ClassVar[str] = "last_k"
    description: ClassVar[str] = "last-k layers: train every parameter of the last k transformer layers"

    def _select(self, model: nn.Module, cfg: AdapterConfig) -> list[nn.Parameter]:
        layers = decoder_layers(model)
        if not layers:
            raise UnsupportedModelError(f"last_k: found no stack of transformer layers in {type(model).__name__}")
        if cfg.last_k > len(layers):
            raise ConfigError(
                "last_k",
                cfg.last_k,
                f"an int between 1 and {len(layers)} ({type(model).__name__} has {len(layers)} layers)",
            )
        return [p for _, layer in layers[-cfg.last_k :] for p in layer.parameters()]


class Named(_Selective):
    name: ClassVar[str] = "named"
    description: ClassVar[str] = "named subset: train the parameters whose names match module_names regexes"

    def validate(self, cfg: AdapterConfig) -> None:
        super().validate(cfg)
        if not cfg.module_names:
            raise ConfigError("module_names", cfg.module_names, "at least one regex for the named method")

    def _select(self, model: nn.Module, cfg: AdapterConfig) -> list[nn.Parameter]:
        params = select_by_regex(model, cfg.module_names)
        if not params:
            examples = ", ".join(list(all_parameter_names(model))[:4])
            raise ConfigError(
                "module_names", cfg.module_names, f"regexes matching at least one parameter name, e.g. {examples}"
            )
        return params


for _method in (BitFit(), LayerNormTuning(), LastK(), Named()):
    register_peft(_method)
