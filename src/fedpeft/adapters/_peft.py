"""The shared machinery of the methods backed by Hugging Face peft."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, ClassVar

from torch import nn

from fedpeft.adapters._util import linear_module_names
from fedpeft.adapters.base import AdapterConfig, PeftMethod
from fedpeft.errors import ConfigError, UnsupportedModelError

# Head class-name suffix -> peft task type. The task type picks the PeftModel subclass (PeftModelForCausalLM handles
# prompt-learning inputs and ``generate``); SEQ_CLS and friends also make the new head trainable (modules_to_save).
_TASK_TYPES: tuple[tuple[str, str], ...] = (
    ("ForCausalLM", "CAUSAL_LM"),
    ("ForSequenceClassification", "SEQ_CLS"),
    ("ForTokenClassification", "TOKEN_CLS"),
    ("ForQuestionAnswering", "QUESTION_ANS"),
    ("ForConditionalGeneration", "SEQ_2_SEQ_LM"),
    ("ForSeq2SeqLM", "SEQ_2_SEQ_LM"),
)


def infer_task_type(model: nn.Module) -> str:
    """The peft task type that fits ``model``'s head (``FEATURE_EXTRACTION`` for a bare encoder/decoder)."""
    cls = type(model).__name__
    for suffix, task in _TASK_TYPES:
        if cls.endswith(suffix):
            return task
    return "FEATURE_EXTRACTION"


class PeftBackedMethod(PeftMethod):
    """A method implemented by a peft config class; subclasses map AdapterConfig fields to its keyword arguments.

    ``cfg.options`` are forwarded to the peft config; options that would override a typed AdapterConfig field
    (``typed_kwargs``) or that the peft config does not have are rejected with a ConfigError.
    """

    config_cls: ClassVar[type]
    # peft kwarg -> AdapterConfig field it comes from (options may not set these)
    typed_kwargs: ClassVar[dict[str, str]] = {}
    uses_target_modules: ClassVar[bool] = True

    def fixed_kwargs(self, cfg: AdapterConfig) -> dict[str, Any]:
        """Keyword arguments that define the method (``use_dora=True``); options may not override them either."""
        return {}

    def peft_kwargs(self, cfg: AdapterConfig) -> dict[str, Any]:
        """The keyword arguments for ``config_cls``, without ``task_type`` (decided per model)."""
        kwargs: dict[str, Any] = {peft_key: getattr(cfg, field) for peft_key, field in self.typed_kwargs.items()}
        if self.uses_target_modules and cfg.target_modules is not None:
            # peft spells "every linear layer but the head" as the plain string "all-linear"
            kwargs["target_modules"] = "all-linear" if cfg.target_modules == ["all-linear"] else cfg.target_modules
        kwargs.update(self.fixed_kwargs(cfg))
        kwargs.update(cfg.options)
        return kwargs

    def validate(self, cfg: AdapterConfig) -> None:
        known = {f.name for f in dataclasses.fields(self.config_cls)}
        reserved = set(self.typed_kwargs) | set(self.fixed_kwargs(cfg)) | {"target_modules", "peft_type"}
        for key, value in cfg.options.items():
            if key in reserved:
                owner = self.typed_kwargs.get(key, "target_modules" if key == "target_modules" else None)
                hint = f"set AdapterConfig.{owner} instead" if owner else f"fixed by the {self.name} method"
                raise ConfigError(f"options.{key}", value, f"not an option here ({hint})")
            if key not in known:
                raise ConfigError(f"options.{key}", value, sorted(known - reserved))
        self.build_config(cfg, task_type=None)

    def build_config(self, cfg: AdapterConfig, task_type: str | None) -> Any:
        """Instantiate the peft config; peft's own validation errors become ConfigError."""
        kwargs = self.peft_kwargs(cfg)
        if task_type is not None:
            kwargs.setdefault("task_type", task_type)
        try:
            return self.config_cls(**kwargs)
        except (ValueError, TypeError) as exc:
            raise ConfigError(
                "options", cfg.options, f"a valid {self.config_cls.__name__} for {self.name}: {exc}"
            ) from None

    def _apply(self, model: nn.Module, cfg: AdapterConfig) -> nn.Module:
        from peft import get_peft_model

        peft_config = self.build_config(cfg, task_type=infer_task_type(model))
        try:
            with warnings.catch_warnings():
                # A LoRA on a tied input embedding changes the input lookup only, by design (the LM head stays the
                # base's); fedpeft's merged export unties the two first, which is the complication peft warns of.
                warnings.filterwarnings("ignore", message=r".*tie_word_embeddings=True.*ensure_weight_tying")
                peft_model = get_peft_model(model, peft_config)
        except ValueError as exc:
            msg = str(exc)
            hint = f" Linear layers in this model: {', '.join(linear_module_names(model)) or 'none'}."
            if cfg.target_modules is not None and "not found" in msg:
                raise ConfigError(
                    "target_modules", cfg.target_modules, "module names present in the model." + hint
                ) from None
            raise UnsupportedModelError(
                f"{self.name} cannot be applied to {type(model).__name__}: {msg}"
                + (" Set AdapterConfig.target_modules." + hint if cfg.target_modules is None else "")
            ) from None
        self.after_attach(peft_model, cfg)
        return peft_model

    def after_attach(self, model: nn.Module, cfg: AdapterConfig) -> None:
        """Adjust the freshly built PeftModel (e.g. freeze a part that must not train)."""
