"""``fedpeft generate``: answer prompts with a finished run's model.

A classification run answers with the label word its model scores highest after the prompt (as it was
evaluated), an instruction run with greedy generation. Any run answers with its small model (the base model plus
the run's global adapter). A FedPT run also answers with its proxy-tuned large model, ``z_L + alpha * (z_E -
z_A)`` (the large model of ``[server.models]``, the run's expert adapter, the original small model), which is its
default, or with the untuned large model for comparison. Decoding is greedy and batched, KV-cached for each of
the three models.
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
    #: a classification run's label words and their token ids: answers are then label-word scoring's choice
    label_words: tuple[str, ...] = ()
    word_ids: torch.Tensor | None = None

    def prompt(self, instruction: str, input: str = "") -> str:
        """``instruction`` (and ``input``) rendered with the run's template, as the run's examples were; for a
        classification run a lone ``instruction`` is the text to classify (the template's input field)."""
        from fedpeft.data import build_prompt

        if self.template is None:
            return instruction
        if self.word_ids is not None and not input:  # a classification run: the text is the example to classify
            instruction, input = "", instruction
        return build_prompt({"instruction": instruction, "input": input, "output": ""}, self.template)[0]

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 64, batch_size: int = 8) -> list[str]:
        """Answers to already-rendered prompts (see :meth:`prompt`): for a classification run the label word with
        the highest score at the position after the prompt (as the run was evaluated), else greedy generation."""
        from fedpeft.training.evaluate import generate

        if self.word_ids is None:
            return generate(self.model, self.tokenizer, prompts, max_new_tokens, batch_size)
        return [self.label_words[int(i)] for i in self.scores(prompts).argmax(-1)]

    @torch.no_grad()
    def scores(self, prompts: Sequence[str]) -> torch.Tensor:
        """Label-word logits [N, n_labels] of a classification run's model at the position after each prompt."""
        from fedpeft.training.losses import label_scores

        if self.word_ids is None:
            raise ConfigError("--model", self.mode, "a run on a classification dataset for label-word scores")
        side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "right"
        try:
            enc = self.tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
        finally:
            self.tokenizer.padding_side = side
        batch = {**enc, "prompt_length": enc["attention_mask"].sum(1)}
        return label_scores(self.model, batch, self.word_ids).float()


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
    from fedpeft.data import label_word_ids
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
    template, words, word_ids = None, (), None
    if len(cfg.data.tasks) == 1:
        spec = DATASETS.get(cfg.data.tasks[0], "data.dataset")
        if not raw:
            template = choose_template(cfg.data.template, spec.template, tokenizer)
        if spec.task_type == "classification" and cfg.eval.mode in ("auto", "label_words"):
            words, word_ids = tuple(spec.label_words), torch.tensor(label_word_ids(tokenizer, spec.label_words))

    def small(adapter: Path | None) -> torch.nn.Module:
        base = load_model(cfg.model.name, cfg.model.dtype, device)
        return base if adapter is None else load_saved_adapter(base, adapter)

    if mode == "small":
        return RunGenerator(small(folder).eval(), tokenizer, template, mode, words, word_ids)
    role = cfg.algorithm.large
    large = LogitSource.of_model(load_model(cfg.server.models[role], cfg.server.dtype, device), role)
    if mode == "large":
        return RunGenerator(LogitSum([(1.0, large)]), tokenizer, template, mode, words, word_ids)
    expert = LogitSource.of_model(small(folder / EXPERT_FOLDER), "expert")
    anti = LogitSource.of_model(small(None), "anti-expert")
    strength = cfg.algorithm.alpha if alpha is None else alpha
    return RunGenerator(proxy_model(large, expert, anti, strength), tokenizer, template, mode, words, word_ids)
