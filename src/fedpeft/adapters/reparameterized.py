"""Reparameterized methods (a compact re-parameterization of the weight update), all backed by Hugging Face peft.

LoRA (Hu et al., arXiv 2106.09685), rsLoRA (Kalajdzievski, arXiv 2312.03732), DoRA (Liu et al., arXiv 2402.09353),
VeRA (Kopiczko et al., arXiv 2310.11454), LoHa (Hyeon-Woo et al., FedPara, arXiv 2108.06098), LoKr (Edalati et al.,
arXiv 2212.10650), AdaLoRA (Zhang et al., arXiv 2303.10512), FFA-LoRA (Sun et al., arXiv 2403.12313).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, cast

from peft import AdaLoraConfig, LoHaConfig, LoKrConfig, LoraConfig, VeraConfig
from torch import nn

from fedpeft.adapters._peft import PeftBackedMethod
from fedpeft.adapters.base import AdapterConfig, Family
from fedpeft.errors import ConfigError
from fedpeft.registry import register_peft

_LORA_KWARGS = {"r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout"}


class LoRA(PeftBackedMethod):
    name: ClassVar[str] = "lora"
    family: ClassVar[Family] = "reparameterized"
    description: ClassVar[str] = "LoRA: low-rank update B·A (scale alpha/r) on the target linear layers"
    config_cls = LoraConfig
    typed_kwargs = _LORA_KWARGS


class RsLoRA(LoRA):
    name: ClassVar[str] = "rslora"
    description: ClassVar[str] = "rank-stabilised LoRA: scale alpha/sqrt(r), stable at high ranks"

    def fixed_kwargs(self, cfg: AdapterConfig) -> dict[str, Any]:
        return {"use_rslora": True}


class DoRA(LoRA):
    name: ClassVar[str] = "dora"
    description: ClassVar[str] = "DoRA: LoRA on the direction plus a trainable per-output magnitude vector"

    def fixed_kwargs(self, cfg: AdapterConfig) -> dict[str, Any]:
        return {"use_dora": True}


class FFALoRA(LoRA):
    """LoRA with A frozen at its seeded random init: only B trains and travels, so averaging B is exact."""

    name: ClassVar[str] = "ffa_lora"
    description: ClassVar[str] = "FFA-LoRA: LoRA with A frozen (regenerated from init_seed), only B trained"

    def after_attach(self, model: nn.Module, cfg: AdapterConfig) -> None:
        for name, param in model.named_parameters():
            if ".lora_A." in name:
                param.requires_grad_(False)


class VeRA(PeftBackedMethod):
    """VeRA: frozen random projections A, B shared by all layers, trainable scaling vectors per layer.

    The projections are generated from ``projection_prng_key`` = ``init_seed``, so every client regenerates the same
    ones and only the scaling vectors (``vera_lambda_b``, ``vera_lambda_d``) travel.
    """

    name: ClassVar[str] = "vera"
    family: ClassVar[Family] = "reparameterized"
    description: ClassVar[str] = "VeRA: shared frozen random projections (from init_seed), trainable scaling vectors"
    config_cls = VeraConfig
    typed_kwargs: ClassVar[dict[str, str]] = {"r": "r", "vera_dropout": "dropout", "projection_prng_key": "seed"}


class LoHa(PeftBackedMethod):
    name: ClassVar[str] = "loha"
    family: ClassVar[Family] = "reparameterized"
    description: ClassVar[str] = "LoHa: Hadamard product of two low-rank updates (FedPara)"
    config_cls = LoHaConfig
    typed_kwargs: ClassVar[dict[str, str]] = {"r": "r", "alpha": "alpha", "rank_dropout": "dropout"}


class LoKr(PeftBackedMethod):
    name: ClassVar[str] = "lokr"
    family: ClassVar[Family] = "reparameterized"
    description: ClassVar[str] = "LoKr: Kronecker product of a small and a low-rank factor"
    config_cls = LoKrConfig
    typed_kwargs: ClassVar[dict[str, str]] = {"r": "r", "alpha": "alpha", "rank_dropout": "dropout"}


class AdaLoRA(PeftBackedMethod):
    """AdaLoRA: SVD-form LoRA (P·Λ·Q) whose rank budget is reallocated during training.

    ``r`` is the *target* average rank; the initial rank is ``options["init_r"]`` (default ceil(1.5 r), peft's 12/8
    ratio). ``options["total_step"]`` (the number of training steps the budget schedule spans) is required. The budget
    is only reallocated when the training loop calls ``adapter_after_step(model, step)`` after each optimizer step;
    without it AdaLoRA trains as a fixed-rank SVD adapter with orthogonality regularisation.
    """

    name: ClassVar[str] = "adalora"
    family: ClassVar[Family] = "reparameterized"
    description: ClassVar[str] = "AdaLoRA: SVD-form LoRA with adaptive rank budget (needs options.total_step)"
    config_cls = AdaLoraConfig
    typed_kwargs: ClassVar[dict[str, str]] = {"target_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout"}

    def peft_kwargs(self, cfg: AdapterConfig) -> dict[str, Any]:
        kwargs = super().peft_kwargs(cfg)
        kwargs.setdefault("init_r", math.ceil(1.5 * cfg.r))
        return kwargs

    def validate(self, cfg: AdapterConfig) -> None:
        total = cfg.options.get("total_step")
        if not isinstance(total, int) or isinstance(total, bool) or total < 1:
            raise ConfigError(
                "options.total_step", total, "an int >= 1: the number of training steps AdaLoRA's budget schedule spans"
            )
        super().validate(cfg)

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        cast(Any, model).base_model.update_and_allocate(step)


for _method in (LoRA(), RsLoRA(), DoRA(), FFALoRA(), VeRA(), LoHa(), LoKr(), AdaLoRA()):
    register_peft(_method)
