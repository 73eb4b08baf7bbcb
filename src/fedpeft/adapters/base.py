"""The adapter contract: a typed config, the abstract PEFT method and the trainable-state convention.

Convention (what travels in federated learning): the *trainable state* of an adapted model is exactly the set of
parameters with ``requires_grad=True``, keyed by their ``named_parameters()`` names, as detached clones. Anything an
adapter needs that is not trainable (VeRA's shared random projections, FFA-LoRA's frozen A) must be regenerated
deterministically from the config (``init_seed``) by ``attach``, so it never has to travel.

Reference for the three families: Bian et al., "A Survey on Parameter-Efficient Fine-Tuning for Foundation Models in
Federated Learning", arXiv 2504.21099 (2025).
"""

from __future__ import annotations

import abc
import dataclasses
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, get_args

import torch
from torch import Tensor, nn

from fedpeft.errors import ConfigError, FedPeftError, UnsupportedModelError

Family = Literal["additive", "selective", "reparameterized"]
FAMILIES: tuple[str, ...] = get_args(Family)

# Attribute set on every model returned by ``PeftMethod.attach``: the AdapterConfig it was attached with.
CONFIG_ATTR = "fedpeft_adapter_config"


class AdapterStateError(FedPeftError, ValueError):
    """An adapter state does not fit the model: missing or unexpected keys, or a shape/dtype mismatch."""


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass
class AdapterConfig:
    """Which PEFT method to attach and its hyper-parameters.

    Each method reads only the fields it needs; the rest are ignored.

    Attributes
    ----------
    method
        A registered PEFT method name (see ``fedpeft.adapters.list_methods()``). Checked against the registry by
        :meth:`validate` (called by ``attach``), so that registration order does not matter.
    r
        Rank for the reparameterized methods (LoRA family, VeRA, LoHa, LoKr; AdaLoRA's *target* average rank).
    alpha
        Scaling numerator (LoRA ``lora_alpha``, LoHa/LoKr ``alpha``).
    dropout
        Dropout on the adapter path (LoRA input dropout, LoHa/LoKr rank dropout, P-tuning encoder, bottleneck input).
    target_modules
        Module names to adapt; ``None`` means the method's default for the architecture (peft's table, e.g.
        ``["q_proj", "v_proj"]`` for LoRA on Llama). ``["all-linear"]`` means every linear layer but the output head.
    num_virtual_tokens
        Virtual tokens for prompt tuning, prefix tuning and P-tuning.
    bottleneck_size
        Hidden width of the bottleneck adapters.
    last_k
        Number of final decoder layers trained by ``last_k``.
    module_names
        Regexes (``re.search`` on parameter names) selecting the parameters ``named`` trains. For the other
        fedpeft-native methods (selective, bottleneck) they name *extra* parameters to train as well, e.g. a new
        classification head.
    init_seed
        Seed of every random adapter initialisation (and of VeRA's shared projections). The global RNG is left as it
        was. Clients that share a config therefore start from identical adapters. None (the default) = the job's
        ``seed`` in a job config, 0 on its own (:attr:`seed`).
    options
        Extra keyword arguments forwarded to the peft config (e.g. ``{"init_lora_weights": "gaussian"}``), or
        method-specific options of the fedpeft-native methods (``{"activation": "gelu"}`` for bottleneck).
    """

    method: str = "lora"
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] | None = None
    num_virtual_tokens: int = 8
    bottleneck_size: int = 16
    last_k: int = 1
    module_names: list[str] = field(default_factory=list)
    init_seed: int | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def seed(self) -> int:
        """The initialisation seed in use: ``init_seed``, or 0 when it was left unset outside a job."""
        return 0 if self.init_seed is None else self.init_seed

    def __post_init__(self) -> None:
        if not isinstance(self.method, str) or not self.method:
            raise ConfigError("method", self.method, "a registered PEFT method name")
        for name in ("r", "num_virtual_tokens", "bottleneck_size", "last_k"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ConfigError(name, value, "an int >= 1")
        if not isinstance(self.alpha, int | float) or isinstance(self.alpha, bool) or not self.alpha > 0:
            raise ConfigError("alpha", self.alpha, "a number > 0")
        self.alpha = float(self.alpha)
        if not isinstance(self.dropout, int | float) or isinstance(self.dropout, bool) or not 0 <= self.dropout < 1:
            raise ConfigError("dropout", self.dropout, "a number in [0, 1)")
        self.dropout = float(self.dropout)
        if self.target_modules is not None:
            if isinstance(self.target_modules, str) or not all(isinstance(m, str) and m for m in self.target_modules):
                raise ConfigError("target_modules", self.target_modules, "null or a non-empty list of module names")
            self.target_modules = list(self.target_modules)
            if not self.target_modules:
                raise ConfigError("target_modules", self.target_modules, "null or a non-empty list of module names")
        if isinstance(self.module_names, str) or not all(isinstance(m, str) for m in self.module_names):
            raise ConfigError("module_names", self.module_names, "a list of regular expressions")
        self.module_names = list(self.module_names)
        for pattern in self.module_names:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError("module_names", pattern, f"a valid regular expression ({exc})") from None
        if self.init_seed is not None and (not _is_int(self.init_seed) or not 0 <= self.init_seed < 2**63):
            raise ConfigError("init_seed", self.init_seed, "an int in [0, 2**63), or omitted (the job's seed)")
        if not isinstance(self.options, Mapping) or not all(isinstance(k, str) for k in self.options):
            raise ConfigError("options", self.options, "a table (dict) with string keys")
        self.options = dict(self.options)

    def validate(self) -> PeftMethod:
        """Check the method name against the registry and the method's own constraints; return the method.

        Raises
        ------
        ConfigError
            Unknown method (the message lists the registered names) or a field the method rejects.
        """
        from fedpeft.registry import PEFT_METHODS  # its first lookup imports the package's built-in methods

        method = PEFT_METHODS.get(self.method, field="method")
        method.validate(self)
        return method

    def to_dict(self) -> dict[str, Any]:
        """A JSON/TOML-ready dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AdapterConfig:
        """Build from a dict (e.g. a TOML table); unknown keys raise ConfigError listing the known ones."""
        known = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in known:
                raise ConfigError(f"adapter.{key}", data[key], known)
        return cls(**dict(data))


@contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Run the body with the torch RNG seeded by ``seed``; the global RNG state is restored afterwards.

    peft initialises adapters with the global RNG (``nn.init.kaiming_uniform_``), so we fork it rather than seed it.
    CUDA generators are forked and seeded only when CUDA is already initialised, so a CPU run never queues a seed.
    """
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    devices = list(range(torch.cuda.device_count())) if cuda else []
    with torch.random.fork_rng(devices=devices):
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            torch.cuda.manual_seed_all(seed)
        yield


def trainable_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """(name, parameter) for every parameter with ``requires_grad``, names as ``named_parameters()`` gives them."""
    for name, param in model.named_parameters():
        if param.requires_grad:
            yield name, param


def extract_trainable_state(model: nn.Module) -> dict[str, Tensor]:
    """Detached clones of exactly the trainable parameters, keyed by ``named_parameters()`` names."""
    return {name: param.detach().clone() for name, param in trainable_parameters(model)}


def _preview(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def load_trainable_state_into(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Copy ``state`` into the trainable parameters of ``model``; keys and shapes must match exactly.

    Floating-point tensors of another floating dtype (e.g. fp16 off the wire) are cast to the parameter's dtype;
    copying happens only after every key and shape was checked, so a failed load leaves the model unchanged.

    Raises
    ------
    AdapterStateError
        Missing or unexpected keys, a shape mismatch, or a non-floating tensor for a floating parameter.
    """
    params = dict(trainable_parameters(model))
    missing = sorted(set(params) - set(state))
    unexpected = sorted(set(state) - set(params))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {_preview(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s): {_preview(unexpected)}")
        raise AdapterStateError(
            "adapter state does not match the model's trainable parameters (was it attached with the same "
            "AdapterConfig?): " + "; ".join(parts)
        )
    for name, param in params.items():
        value = state[name]
        if not isinstance(value, Tensor):
            raise AdapterStateError(f"adapter state {name!r} is a {type(value).__name__}, expected a torch.Tensor")
        if tuple(value.shape) != tuple(param.shape):
            raise AdapterStateError(
                f"adapter state {name!r} has shape {tuple(value.shape)}, the model expects {tuple(param.shape)}"
            )
        if value.is_floating_point() != param.is_floating_point() or value.is_complex() != param.is_complex():
            raise AdapterStateError(f"adapter state {name!r} has dtype {value.dtype}, the model expects {param.dtype}")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(state[name])


class PeftMethod(abc.ABC):
    """One parameter-efficient fine-tuning method.

    Subclasses set ``name``, ``family`` and ``description`` and implement :meth:`_apply`; they are registered with
    ``fedpeft.registry.register_peft(Subclass())``. :meth:`attach` is the template every method goes through: it
    validates the config, freezes the whole model, applies the method under a seeded RNG, and checks that something
    (and only what the method chose) is trainable.
    """

    name: ClassVar[str]
    family: ClassVar[Family]
    description: ClassVar[str]

    def validate(self, cfg: AdapterConfig) -> None:  # noqa: B027  (optional hook, empty by default)
        """Model-independent checks of ``cfg`` for this method; raise ConfigError on a bad field."""

    @abc.abstractmethod
    def _apply(self, model: nn.Module, cfg: AdapterConfig) -> nn.Module:
        """Add/select the method's parameters on a fully frozen ``model``; return the model to train.

        Called under :func:`seeded_init`. Must set ``requires_grad=True`` on exactly the method's parameters, and raise
        UnsupportedModelError (naming the method and the reason) when the architecture does not fit.
        """

    def attach(self, model: nn.Module, cfg: AdapterConfig) -> nn.Module:
        """Attach this method to ``model`` and return the model to train.

        The result is a ``peft.PeftModel`` wrapping ``model`` for peft-backed methods, ``model`` itself (modified in
        place) for fedpeft-native ones. Afterwards only the method's parameters have ``requires_grad=True``.

        Raises
        ------
        ConfigError
            A bad config field (checked before the model is touched).
        UnsupportedModelError
            The method cannot apply to this architecture, or the model already carries an adapter.
        """
        if cfg.method != self.name:
            raise ConfigError("method", cfg.method, f"{self.name!r} (attach was called on the {self.name} method)")
        self.validate(cfg)
        _reject_adapted(model, self.name)
        model.requires_grad_(False)
        with seeded_init(cfg.seed):
            out = self._apply(model, cfg)
        if not any(True for _ in trainable_parameters(out)):
            raise UnsupportedModelError(f"{self.name}: no trainable parameters were selected on {type(model).__name__}")
        setattr(out, CONFIG_ATTR, cfg)
        return out

    def trainable_state(self, model: nn.Module) -> dict[str, Tensor]:
        """The adapter state that travels: detached clones of the trainable parameters, by ``named_parameters()``."""
        return extract_trainable_state(model)

    def load_trainable_state(self, model: nn.Module, state: Mapping[str, Tensor]) -> None:
        """Load a state produced by :meth:`trainable_state` on a model attached with the same config; exact."""
        load_trainable_state_into(model, state)

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:  # noqa: B027  (optional hook)
        """Hook for methods with a training schedule (AdaLoRA's rank budget). Call after ``optimizer.step()`` and
        before ``optimizer.zero_grad()`` with the global step; a no-op for most methods."""

    def __repr__(self) -> str:
        return f"<PeftMethod {self.name} ({self.family})>"


def get_adapter_config(model: nn.Module) -> AdapterConfig | None:
    """The AdapterConfig ``model`` was attached with by fedpeft, or None."""
    cfg = model.__dict__.get(CONFIG_ATTR)
    return cfg if isinstance(cfg, AdapterConfig) else None


def _reject_adapted(model: nn.Module, method: str) -> None:
    """Refuse to stack a second adapter: federated state exchange assumes one adapter per model."""
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTunerLayer

    existing = get_adapter_config(model)
    if existing is not None or isinstance(model, PeftModel):
        what = existing.method if existing is not None else "a peft"
        raise UnsupportedModelError(
            f"{method}: the model already carries {what} adapter; attach to a fresh base model instead"
        )
    for module in model.modules():
        # fedpeft's own adapter layers say so with a class attribute (base.py sits below their modules)
        if isinstance(module, BaseTunerLayer) or getattr(module, "FEDPEFT_ADAPTER_LAYER", False):
            raise UnsupportedModelError(
                f"{method}: the model already contains adapter layers ({type(module).__name__}); "
                "attach to a fresh base model instead"
            )
