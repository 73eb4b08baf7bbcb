"""Architecture discovery shared by the fedpeft-native methods (no method names here)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from torch import nn

from fedpeft.adapters.base import AdapterConfig
from fedpeft.errors import ConfigError


def decoder_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's stack of transformer layers, in order, as (qualified name, module).

    Modules whose class name ends with ``DecoderLayer`` (Llama, Mistral, Qwen, ...); otherwise the longest
    ``nn.ModuleList`` of same-class modules holding parameters (GPT-2 ``h``, BERT ``encoder.layer``). Empty if neither.
    """
    found = [(n, m) for n, m in model.named_modules() if type(m).__name__.endswith("DecoderLayer")]
    if found:
        return found
    best: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) <= len(best):
            continue
        if len({type(child) for child in module}) == 1 and any(True for _ in module.parameters()):
            best = [(f"{name}.{i}" if name else str(i), child) for i, child in enumerate(module)]
    return best


def linear_module_names(model: nn.Module) -> list[str]:
    """Sorted leaf names of the model's linear layers (what ``target_modules`` may name), for error hints."""
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear) and name})


def all_parameter_names(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every parameter under every name it has, tied duplicates included (``lm_head.weight`` next to the embedding),
    so a regex naming either alias selects the shared tensor."""
    return dict(model.named_parameters(remove_duplicate=False))


def select_by_regex(model: nn.Module, patterns: Iterable[str]) -> list[nn.Parameter]:
    """Parameters whose (possibly tied-alias) name matches any of ``patterns`` with ``re.search``."""
    compiled = [re.compile(p) for p in patterns]
    return [p for n, p in all_parameter_names(model).items() if any(c.search(n) for c in compiled)]


def train_extra_named(model: nn.Module, cfg: AdapterConfig) -> None:
    """Mark the parameters named by ``cfg.module_names`` trainable (extras for the fedpeft-native methods)."""
    if not cfg.module_names:
        return
    params = select_by_regex(model, cfg.module_names)
    if not params:
        raise ConfigError(
            "module_names",
            cfg.module_names,
            "regexes matching at least one parameter name, e.g. " + ", ".join(list(all_parameter_names(model))[:4]),
        )
    for p in params:
        p.requires_grad_(True)


def check_options(method: str, options: Mapping[str, object], allowed: Mapping[str, tuple[object, ...] | None]) -> None:
    """Reject option keys a fedpeft-native method does not know, and values outside a finite allowed set."""
    for key, value in options.items():
        if key not in allowed:
            raise ConfigError(f"options.{key}", value, sorted(allowed) or f"no options for {method}")
        choices = allowed[key]
        if choices is not None and value not in choices:
            raise ConfigError(f"options.{key}", value, choices)
