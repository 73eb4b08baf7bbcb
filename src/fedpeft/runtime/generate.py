"""``fedpeft generate``: answer prompts with a finished run's model.

Any run answers with its small model (the base model plus the run's global adapter). A FedPT run also answers with
its proxy-tuned large model, ``z_L + alpha * (z_E - z_A)`` (the large model of ``[server.models]``, the run's
expert adapter, the original small model), which is its default, or with the untuned large model for comparison.
Decoding is greedy and batched, KV-cached for each of the three models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedpeft.errors import ConfigError

MODES = ("proxy", "small", "large")


@dataclass
class RunGenerator:
    """A run's model ready to answer: ``model`` (a causal LM or a :class:`~fedpeft.algorithms.fedpt.LogitSum`),
    the clients' tokenizer and the run's prompt template (None = prompts are used as given)."""

    model: torch.nn.Module
    tokenizer: Any
    template: Any
    mode: str

    def prompt(self, instruction: str, input: str = "") -> str:
        """``instruction`` (and ``input``) rendered with the run's template, as the run's examples were."""
        from fedpeft.data import build_prompt

        if self.template is None:
            return instruction
        return build_prompt({"instruction": instruction, "input": input, "output": ""}, self.template)[0]

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 64, batch_size: int = 8) -> list[str]:
        """Greedy answers to already-rendered prompts (see :meth:`prompt`)."""
        from fedpeft.training.evaluate import generate

        return generate(self.model, self.tokenizer, prompts, max_new_tokens, batch_size)


def _adapter_folder(run: Path, round: int | None) -> Path:
    folder = run / ("adapter" if round is None else f"adapters/round_{round:04d}")
    if not (folder / "adapter_config.json").is_file() and not (folder / "fedpeft_adapter.json").is_file():
        raise ConfigError("RUN_DIR", str(run), f"a finished run with an adapter in {folder}")
    return folder


def load_generator(
    run_dir: str | Path,
    mode: str | None = None,
    *,
    alpha: float | None = None,
    round: int | None = None,
    raw: bool = False,
    device: str = "cpu",
) -> RunGenerator:
    """The model of run ``run_dir`` that answers prompts.

    ``mode``: ``proxy`` (FedPT runs; their default), ``small`` (the base model with the run's global adapter;
    every other run's default) or ``large`` (FedPT: the untuned large model). ``alpha`` overrides the run's
    proxy strength; ``round`` uses ``adapters/round_NNNN`` instead of the final adapter; ``raw`` uses prompts as
    given instead of rendering them with the run's template.
    """
    from fedpeft.adapters import load_saved_adapter
    from fedpeft.algorithms.fedpt import LogitSource, LogitSum, proxy_model
    from fedpeft.algorithms.fedpt.server import EXPERT_FOLDER
    from fedpeft.config import RunConfig, load_config
    from fedpeft.data.templates import choose_template
    from fedpeft.models import load_model, load_tokenizer
    from fedpeft.registry import DATASETS

    run = Path(run_dir)
    if not (run / "config.toml").is_file():
        raise ConfigError("RUN_DIR", str(run), "a run directory containing config.toml")
    cfg = load_config(RunConfig, run / "config.toml")
    fedpt = cfg.federation.algorithm == "fedpt"
    mode = mode or ("proxy" if fedpt else "small")
    if mode not in MODES:
        raise ConfigError("--model", mode, MODES)
    if mode != "small" and not fedpt:
        raise ConfigError("--model", mode, f"'small' for a {cfg.federation.algorithm} run (proxy/large: FedPT runs)")
    folder = _adapter_folder(run, round)
    tokenizer = load_tokenizer(cfg.model.name)
    template = None
    if not raw and len(cfg.data.tasks) == 1:
        spec = DATASETS.get(cfg.data.tasks[0], "data.dataset")
        template = choose_template(cfg.data.template, spec.template, tokenizer)

    def small(adapter: Path | None) -> torch.nn.Module:
        base = load_model(cfg.model.name, cfg.model.dtype, device)
        return base if adapter is None else load_saved_adapter(base, adapter)

    if mode == "small":
        return RunGenerator(small(folder).eval(), tokenizer, template, mode)
    role = cfg.algorithm.large
    large = LogitSource.of_model(load_model(cfg.server.models[role], cfg.server.dtype, device), role)
    if mode == "large":
        return RunGenerator(LogitSum([(1.0, large)]), tokenizer, template, mode)
    expert = LogitSource.of_model(small(folder / EXPERT_FOLDER), "expert")
    anti = LogitSource.of_model(small(None), "anti-expert")
    strength = cfg.algorithm.alpha if alpha is None else alpha
    return RunGenerator(proxy_model(large, expert, anti, strength), tokenizer, template, mode)
