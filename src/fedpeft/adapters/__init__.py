"""Parameter-efficient adapters: attach a registered PEFT method, move its trainable state, save and load it.

The three families of Bian et al. (arXiv 2504.21099): *additive* (new parameters: soft prompts, (IA)^3, bottleneck
adapters), *selective* (a subset of existing parameters: BitFit, LayerNorm, last-k layers, a named subset) and
*reparameterized* (a compact form of the weight update: LoRA and its variants, VeRA, LoHa, LoKr, AdaLoRA).

Every method is reached through ``fedpeft.registry.PEFT_METHODS``; importing this package registers the built-ins.

Examples
--------
>>> model = attach_adapter(base_model, AdapterConfig(method="lora", r=8))
>>> state = adapter_state(model)            # what a client uploads
>>> load_adapter_state(model, new_state)    # what a client installs
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor, nn

from fedpeft.adapters import additive, bottleneck, reparameterized, selective  # noqa: F401  (register methods)
from fedpeft.adapters.base import (
    AdapterConfig,
    AdapterStateError,
    Family,
    PeftMethod,
    extract_trainable_state,
    get_adapter_config,
    load_trainable_state_into,
    trainable_parameters,
)
from fedpeft.adapters.export import load_saved_adapter, read_saved_config, save_adapter
from fedpeft.registry import PEFT_METHODS

__all__ = [
    "AdapterConfig",
    "AdapterSize",
    "AdapterStateError",
    "Family",
    "PeftMethod",
    "adapter_after_step",
    "adapter_state",
    "attach_adapter",
    "count_trainable",
    "get_adapter_config",
    "get_method",
    "list_methods",
    "load_adapter_state",
    "load_saved_adapter",
    "read_saved_config",
    "save_adapter",
]


@dataclass(frozen=True)
class AdapterSize:
    """How big the trainable part of a model is.

    Attributes
    ----------
    params
        Number of trainable parameters (the adapter state's elements).
    bytes
        Bytes of the adapter state in its own dtypes (sum of numel * element_size); the wire size before compression.
    total_params
        Number of parameters of the whole model (base + adapter, tied weights counted once; buffers excluded).
    fraction
        ``params / total_params``.
    """

    params: int
    bytes: int
    total_params: int
    fraction: float


def get_method(name: str) -> PeftMethod:
    """The registered PEFT method called ``name``; ConfigError listing the registered names if there is none."""
    return PEFT_METHODS.get(name, field="method")


def attach_adapter(model: nn.Module, cfg: AdapterConfig) -> nn.Module:
    """Attach the PEFT method ``cfg.method`` to ``model`` and return the model to train.

    Parameters
    ----------
    model
        A base model (Hugging Face ``PreTrainedModel``) without an adapter; it is modified in place.
    cfg
        The adapter config; validated (method name against the registry, method-specific fields) before the model is
        touched.

    Returns
    -------
    nn.Module
        A ``peft.PeftModel`` for peft-backed methods, ``model`` itself for fedpeft-native ones. Only the adapter's
        parameters have ``requires_grad=True``. Random initialisation is drawn from ``cfg.init_seed``.

    Raises
    ------
    ConfigError
        Bad config field (unknown method, option, ``last_k`` too large, ``module_names`` matching nothing, ...).
    UnsupportedModelError
        The method cannot apply to the architecture (e.g. bitfit on a model without biases).
    """
    return cfg.validate().attach(model, cfg)


def adapter_state(model: nn.Module) -> dict[str, Tensor]:
    """The trainable state: detached clones of exactly the parameters with ``requires_grad``, by their
    ``named_parameters()`` names. This is what travels between clients and server."""
    return extract_trainable_state(model)


def load_adapter_state(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Load a state from :func:`adapter_state` into a model attached with the same config; exact.

    Raises
    ------
    AdapterStateError
        Missing or unexpected keys, or a shape/dtype mismatch (the model is left unchanged).
    """
    load_trainable_state_into(model, state)


def count_trainable(model: nn.Module) -> AdapterSize:
    """Count the trainable parameters and their bytes against the whole model."""
    params = n_bytes = 0
    for _, p in trainable_parameters(model):
        params += p.numel()
        n_bytes += p.numel() * p.element_size()
    total = sum(p.numel() for p in model.parameters())
    return AdapterSize(params=params, bytes=n_bytes, total_params=total, fraction=params / total if total else 0.0)


def list_methods() -> list[tuple[str, Family, str]]:
    """(name, family, description) of every registered method, sorted by family then name."""
    rows = [(name, m.family, m.description) for name, m in PEFT_METHODS.items()]
    return sorted(rows, key=lambda row: (row[1], row[0]))


def adapter_after_step(model: nn.Module, step: int) -> None:
    """Per-step hook of the method attached to ``model`` (AdaLoRA's rank reallocation; a no-op for the others).

    Call it in the training loop after ``optimizer.step()`` and before ``optimizer.zero_grad()`` with the global step.
    """
    cfg = get_adapter_config(model)
    if cfg is not None:
        get_method(cfg.method).after_optimizer_step(model, step)
