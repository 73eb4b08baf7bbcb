"""Additive methods backed by Hugging Face peft: soft prompts and (IA)^3. Bottleneck adapters are in bottleneck.py.

Prompt tuning (Lester et al., arXiv 2104.08691), prefix tuning (Li & Liang, arXiv 2101.00190), P-tuning (Liu et al.,
arXiv 2103.10385), (IA)^3 (Liu et al., arXiv 2205.05638).

Prompt-learning models (``PeftModelForCausalLM``) prepend the virtual tokens themselves: they extend
``attention_mask`` with ones and prefix ``labels`` with -100. For prompt tuning and P-tuning the returned logits have
``num_virtual_tokens`` extra leading positions (slice ``logits[:, num_virtual_tokens:]`` to align them with the
input); prefix tuning injects key/value prefixes instead, so its logits keep the input length.
"""

from __future__ import annotations

from typing import Any, ClassVar

from peft import IA3Config, PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig

from fedpeft.adapters._peft import PeftBackedMethod
from fedpeft.adapters.base import AdapterConfig, Family
from fedpeft.registry import register_peft


class _PromptLearning(PeftBackedMethod):
    family: ClassVar[Family] = "additive"
    uses_target_modules = False
    typed_kwargs: ClassVar[dict[str, str]] = {"num_virtual_tokens": "num_virtual_tokens"}


class PromptTuning(_PromptLearning):
    name: ClassVar[str] = "prompt_tuning"
    description: ClassVar[str] = "prompt tuning: trainable soft-prompt embeddings prepended to the input"
    config_cls = PromptTuningConfig

    def peft_kwargs(self, cfg: AdapterConfig) -> dict[str, Any]:
        kwargs = super().peft_kwargs(cfg)
        # "TEXT" init would need a tokenizer from the hub; random init is seeded by init_seed.
        kwargs.setdefault("prompt_tuning_init", "RANDOM")
        return kwargs


class PrefixTuning(_PromptLearning):
    name: ClassVar[str] = "prefix_tuning"
    description: ClassVar[str] = "prefix tuning: trainable key/value prefixes in every attention layer"
    config_cls = PrefixTuningConfig


class PTuning(_PromptLearning):
    name: ClassVar[str] = "p_tuning"
    description: ClassVar[str] = "P-tuning: virtual-token embeddings produced by a small trainable MLP encoder"
    config_cls = PromptEncoderConfig
    typed_kwargs: ClassVar[dict[str, str]] = {"num_virtual_tokens": "num_virtual_tokens", "encoder_dropout": "dropout"}


class IA3(PeftBackedMethod):
    name: ClassVar[str] = "ia3"
    family: ClassVar[Family] = "additive"
    description: ClassVar[str] = "(IA)^3: trainable rescaling vectors on keys, values and feed-forward activations"
    config_cls = IA3Config
    typed_kwargs: ClassVar[dict[str, str]] = {}


for _method in (PromptTuning(), PrefixTuning(), PTuning(), IA3()):
    register_peft(_method)
