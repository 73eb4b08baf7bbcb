"""Bottleneck adapters after each decoder layer's MLP (fedpeft-native; peft has none).

Houlsby et al., "Parameter-Efficient Transfer Learning for NLP", ICML 2019 (arXiv 1902.00751); placement after the
feed-forward block only, as in Pfeiffer et al., "AdapterFusion", EACL 2021 (arXiv 2005.00247):

    h = mlp(x);   h' = h + up(act(down(dropout(h))))

``up`` starts at zero, so the adapted model computes exactly the base model at initialisation.

The adapter is registered as the child ``adapter`` of each ``mlp`` module and applied by a forward hook, so its
parameters are named ``...layers.0.mlp.adapter.down.weight`` while every base parameter keeps its original name (a
wrapper module would rename them to ``mlp.base.*`` and break loading base checkpoints).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from fedpeft.adapters._util import check_options, decoder_layers, train_extra_named
from fedpeft.adapters.base import AdapterConfig, Family, PeftMethod
from fedpeft.errors import UnsupportedModelError
from fedpeft.registry import register_peft

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


class BottleneckAdapter(nn.Module):
    """Residual bottleneck: ``h + up(act(down(dropout(h))))`` with ``up`` zero-initialised."""

    FEDPEFT_ADAPTER_LAYER = True  # how base._reject_adapted recognises an adapter layer already in a model

    def __init__(
        self,
        hidden_size: int,
        bottleneck_size: int,
        *,
        activation: str = "relu",
        dropout: float = 0.0,
        generator: torch.Generator | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.down = nn.Linear(hidden_size, bottleneck_size, device=device, dtype=dtype)
        self.act = _ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck_size, hidden_size, device=device, dtype=dtype)
        with torch.no_grad():
            # nn.Linear's default init (uniform in +-1/sqrt(fan_in)), drawn from an explicit generator
            bound = 1.0 / math.sqrt(hidden_size)
            for tensor in (self.down.weight, self.down.bias):
                noise = torch.rand(tensor.shape, generator=generator, dtype=torch.float32)
                tensor.copy_((noise * 2 - 1) * bound)
            self.up.weight.zero_()
            self.up.bias.zero_()

    def forward(self, hidden: Tensor) -> Tensor:
        return hidden + self.up(self.act(self.down(self.dropout(hidden))))


def _apply_adapter_hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
    """Forward hook on an ``mlp``: pass its output through ``module.adapter`` (module-level, so deepcopy works)."""
    adapter = module.get_submodule("adapter")
    if isinstance(output, tuple):  # MoE-style MLPs return (hidden, router_logits)
        return (adapter(output[0]), *output[1:])
    return adapter(output)


class Bottleneck(PeftMethod):
    name: ClassVar[str] = "bottleneck"
    family: ClassVar[Family] = "additive"
    description: ClassVar[str] = "bottleneck adapters (Houlsby/Pfeiffer) after every decoder layer's MLP"
    _options: ClassVar[dict[str, tuple[object, ...] | None]] = {"activation": tuple(_ACTIVATIONS)}

    def validate(self, cfg: AdapterConfig) -> None:
        check_options(self.name, cfg.options, self._options)

    def _apply(self, model: nn.Module, cfg: AdapterConfig) -> nn.Module:
        layers = decoder_layers(model)
        if not layers:
            raise UnsupportedModelError(f"{self.name}: found no stack of transformer layers in {type(model).__name__}")
        mlps: list[nn.Module] = []
        for name, layer in layers:
            mlp = getattr(layer, "mlp", None)
            if not isinstance(mlp, nn.Module):
                raise UnsupportedModelError(
                    f"{self.name}: layer {name} ({type(layer).__name__}) has no `mlp` submodule to add the adapter to"
                )
            mlps.append(mlp)
        hidden = getattr(getattr(model, "config", None), "hidden_size", None)
        if not isinstance(hidden, int):
            raise UnsupportedModelError(f"{self.name}: {type(model).__name__} has no config.hidden_size")
        generator = torch.Generator().manual_seed(cfg.seed)
        for mlp in mlps:
            ref = next(mlp.parameters(), None)
            adapter = BottleneckAdapter(
                hidden,
                cfg.bottleneck_size,
                activation=str(cfg.options.get("activation", "relu")),
                dropout=cfg.dropout,
                generator=generator,
                device=ref.device if ref is not None else None,
                dtype=ref.dtype if ref is not None and ref.is_floating_point() else None,
            )
            adapter.train(mlp.training)  # follow the model's train/eval mode (dropout)
            mlp.add_module("adapter", adapter)
            mlp.register_forward_hook(_apply_adapter_hook)
        train_extra_named(model, cfg)
        return model


register_peft(Bottleneck())
