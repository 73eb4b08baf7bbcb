"""Tokenization for causal-LM fine-tuning, padding, and label-word classification.

Loss is computed on response tokens only (prompt positions carry label -100). Prompt and response are tokenized
separately, so the boundary is exact and the first response token of a classification example is the same token
:func:`label_word_ids` scores.

Truncation keeps the response: when prompt + response exceed ``max_length``, tokens are removed from the LEFT of
the prompt (after BOS, when the tokenizer uses one), so the text nearest the response survives. Only when the
response alone does not fit in ``max_length - 1`` tokens is it cut on the right (dropping EOS), keeping one prompt
token so that position ``prompt_length - 1`` exists.

With the ``chat`` template the encoded text is the model's chat template rendering of the conversation, token for
token what ``apply_chat_template`` gives: the prompt is everything up to and including the assistant header (the
``add_generation_prompt=True`` rendering), the response everything after it (the answer, the end-of-turn token
and whatever the template writes after it, e.g. ChatML's newline). No BOS/EOS is added (the template writes its
own); a BOS the template renders first is the never-truncated prefix. Truncation follows the same rules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import datasets
import torch

from fedpeft.data.base import column_values
from fedpeft.data.templates import ChatTemplate, Template, get_template, model_name
from fedpeft.errors import ConfigError

#: Label value ignored by ``torch.nn.functional.cross_entropy``.
IGNORE_INDEX = -100


def _ids(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of each text without special tokens (we add BOS/EOS ourselves, once)."""
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def bos_prefix(tokenizer: Any) -> list[int]:
    """``[bos_token_id]`` when the tokenizer itself starts encoded text with BOS (Llama-style), else ``[]``."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return []
    ids = tokenizer("a")["input_ids"]
    return [bos] if ids and ids[0] == bos else []


def _eos_id(tokenizer: Any) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ConfigError("add_eos", True, "a tokenizer with an eos_token (or add_eos=False)")
    return int(eos)


def _assemble(prefix: list[int], prompt: list[int], response: list[int], max_length: int) -> dict[str, Any]:
    """Join and truncate (see the module docstring); ``prefix`` is BOS or empty and is never removed."""
    if max_length < len(prefix) + 2:
        raise ConfigError("max_length", max_length, f"at least {len(prefix) + 2}")
    response = response[: max_length - len(prefix) - 1]
    room = max_length - len(prefix) - len(response)
    if len(prompt) > room:
        prompt = prompt[len(prompt) - room :]
    prompt_ids = prefix + prompt
    return {
        "input_ids": prompt_ids + response,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + response,
        "prompt_length": len(prompt_ids),
    }


def tokenize_example(
    tokenizer: Any, prompt: str, response: str, max_length: int, add_eos: bool = True
) -> dict[str, Any]:
    """Tokenize one (prompt, response) pair for training.

    Parameters
    ----------
    tokenizer:
        A Hugging Face tokenizer.
    prompt, response:
        From :func:`fedpeft.data.templates.build_prompt`.
    max_length:
        Maximum number of tokens; longer pairs are truncated from the left of the prompt.
    add_eos:
        Append EOS to the response (generation tasks: the model learns to stop).

    Returns
    -------
    dict
        ``input_ids`` (list[int]), ``labels`` (list[int], -100 on every prompt token) and ``prompt_length`` (int,
        number of prompt tokens including BOS).
    """
    prompt_ids, response_ids = _ids(tokenizer, [prompt, response])
    if add_eos:
        response_ids = [*response_ids, _eos_id(tokenizer)]
    return _assemble(bos_prefix(tokenizer), prompt_ids, response_ids, max_length)


def _chat_parts(
    tokenizer: Any, tpl: ChatTemplate, rows: list[dict[str, Any]]
) -> list[tuple[list[int], list[int], list[int]]]:
    """``(prefix, prompt, response)`` ids of each row's chat rendering; their concatenation is the tokenized
    conversation (the prompt/response split falls on the end of the generation prompt)."""
    prompt_texts = [tpl.render(row)[0] for row in rows]
    full_texts = [tpl.conversation(row) for row in rows]
    for prompt, text in zip(prompt_texts, full_texts, strict=True):
        if not text.startswith(prompt):
            raise ConfigError(
                "template",
                tpl.name,
                f"a chat template whose generation prompt starts the rendered conversation (model "
                f"{model_name(tokenizer)!r} renders the prompt {prompt[-60:]!r} but the conversation "
                f"{text[max(0, len(prompt) - 60) : len(prompt) + 20]!r}); use 'alpaca'",
            )
    prompts = _ids(tokenizer, prompt_texts)
    fulls = _ids(tokenizer, full_texts)
    # A token merging across the boundary would make the prompt's ids no prefix of the conversation's: then the
    # answer text is tokenized on its own (the boundary stays exact in text).
    split = [full[: len(p)] == p for p, full in zip(prompts, fulls, strict=True)]
    tails = [f[len(p) :] for p, f, ok in zip(prompt_texts, full_texts, split, strict=True) if not ok]
    rest = iter(_ids(tokenizer, tails))
    bos = getattr(tokenizer, "bos_token_id", None)
    parts = []
    for p, full, ok in zip(prompts, fulls, split, strict=True):
        response = full[len(p) :] if ok else next(rest)
        n = 1 if bos is not None and p[:1] == [bos] else 0  # a BOS the template writes is never truncated
        parts.append((p[:n], p[n:], response))
    return parts


def encode_dataset(
    dataset: datasets.Dataset,
    tokenizer: Any,
    template: str | Template,
    max_length: int,
    add_eos: bool | None = None,
) -> datasets.Dataset:
    """Render and tokenize every example of a canonical dataset.

    Tokenizes in one batch per column rather than with ``Dataset.map``: no cache files, no fingerprint hashing of
    the tokenizer, no progress bars.

    Parameters
    ----------
    dataset:
        Canonical-schema dataset.
    tokenizer:
        A Hugging Face tokenizer.
    template:
        Template name or object (``chat`` is bound to ``tokenizer``; see the module docstring).
    max_length:
        Token budget per example.
    add_eos:
        Override the template's ``add_eos``.

    Returns
    -------
    datasets.Dataset
        Columns ``input_ids``, ``labels``, ``prompt_length``, ``label`` (class index or -1), ``task``.
    """
    tpl = get_template(template, tokenizer)
    eos = tpl.add_eos if add_eos is None else add_eos
    names = [c for c in ("instruction", "input", "output", "task") if c in dataset.column_names]
    columns = {c: column_values(dataset, c) for c in names}
    rows = [dict(zip(names, values, strict=True)) for values in zip(*(columns[c] for c in names), strict=True)]
    if isinstance(tpl, ChatTemplate):
        parts = _chat_parts(tokenizer, tpl, rows)
    else:
        pairs = [tpl.render(row) for row in rows]
        prompts = _ids(tokenizer, [p for p, _ in pairs])
        responses = _ids(tokenizer, [r for _, r in pairs])
        prefix = bos_prefix(tokenizer)
        parts = [(prefix, p, r) for p, r in zip(prompts, responses, strict=True)]
    suffix = [_eos_id(tokenizer)] if eos else []
    out: dict[str, list[Any]] = {"input_ids": [], "labels": [], "prompt_length": []}
    for prefix, p, r in parts:
        enc = _assemble(prefix, p, r + suffix, max_length)
        for key in out:
            out[key].append(enc[key])
    out["label"] = column_values(dataset, "label") if "label" in dataset.column_names else [-1] * len(rows)
    out["task"] = column_values(dataset, "task") if "task" in dataset.column_names else [""] * len(rows)
    features = datasets.Features(
        {
            "input_ids": datasets.Sequence(datasets.Value("int32")),
            "labels": datasets.Sequence(datasets.Value("int32")),
            "prompt_length": datasets.Value("int32"),
            "label": datasets.Value("int64"),
            "task": datasets.Value("string"),
        }
    )
    return datasets.Dataset.from_dict(out, features=features)


def collate(batch: Sequence[Mapping[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of encoded examples into tensors.

    Parameters
    ----------
    batch:
        Examples with ``input_ids``, ``labels``, ``prompt_length`` (and optionally ``label``).
    pad_id:
        Token id for padding positions (masked out; its value never reaches the loss).

    Returns
    -------
    dict[str, torch.Tensor]
        ``input_ids`` [B, T], ``attention_mask`` [B, T], ``labels`` [B, T] (-100 on padding), ``prompt_length`` [B],
        ``label`` [B] when every example has one, and ``choices`` [B, C] (each row's label-word ids) when every
        example of a multi-task mix carries them. Right padding keeps position ``prompt_length - 1`` the last
        prompt token of each row, which :func:`label_word_logits` relies on.
    """
    if not batch:
        raise ValueError("collate needs at least one example")
    width = max(len(ex["input_ids"]) for ex in batch)
    size = (len(batch), width)
    input_ids = torch.full(size, pad_id, dtype=torch.long)
    attention_mask = torch.zeros(size, dtype=torch.long)
    labels = torch.full(size, IGNORE_INDEX, dtype=torch.long)
    for i, ex in enumerate(batch):
        n = len(ex["input_ids"])
        input_ids[i, :n] = torch.as_tensor(ex["input_ids"], dtype=torch.long)
        attention_mask[i, :n] = 1
        labels[i, :n] = torch.as_tensor(ex["labels"], dtype=torch.long)
    out = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "prompt_length": torch.tensor([int(ex["prompt_length"]) for ex in batch], dtype=torch.long),
    }
    if all("label" in ex for ex in batch):
        out["label"] = torch.tensor([int(ex["label"]) for ex in batch], dtype=torch.long)
    if all("choices" in ex for ex in batch):
        out["choices"] = torch.tensor([list(ex["choices"]) for ex in batch], dtype=torch.long)
    return out


def label_word_ids(tokenizer: Any, label_words: Sequence[str]) -> list[int]:
    """The token id each class is scored by: the first token of ``" " + word``.

    The leading space matches the classification templates' responses, so this is the token the model is trained
    to emit right after the prompt.

    Raises
    ------
    ConfigError
        Field ``label_words`` when a word tokenizes to nothing or two words share a first token (their scores
        would be identical and the classifier could not tell them apart).
    """
    ids: list[int] = []
    for word in label_words:
        toks = _ids(tokenizer, [" " + word])[0]
        if not toks:
            raise ConfigError("label_words", list(label_words), f"words that produce tokens ({word!r} produced none)")
        if toks[0] in ids:
            other = label_words[ids.index(toks[0])]
            raise ConfigError(
                "label_words",
                list(label_words),
                f"words with distinct first tokens ({other!r} and {word!r} both start with token {toks[0]})",
            )
        ids.append(toks[0])
    return ids


def label_word_logits(
    logits: torch.Tensor, prompt_length: torch.Tensor, word_ids: Sequence[int] | torch.Tensor
) -> torch.Tensor:
    """Class scores: the next-token logits after the prompt, restricted to the label words.

    A classification loss is ``cross_entropy(label_word_logits(...), label)``; a prediction is its argmax.

    Parameters
    ----------
    logits:
        Causal-LM logits [B, T, V] of right-padded inputs.
    prompt_length:
        [B] number of prompt tokens per row (>= 1).
    word_ids:
        From :func:`label_word_ids`, one id per class (a list or a 1-D tensor), or a [B, n_labels] tensor of each
        row's own label-word ids (a multi-task mix, see :func:`collate`'s ``choices``).

    Returns
    -------
    torch.Tensor
        [B, n_labels], ``logits[b, prompt_length[b] - 1, word_ids]`` (``word_ids[b]`` when per row).
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, T, V], got shape {tuple(logits.shape)}")
    pos = prompt_length.to(device=logits.device, dtype=torch.long) - 1
    if pos.numel() != logits.shape[0] or bool((pos < 0).any()) or bool((pos >= logits.shape[1]).any()):
        raise ValueError(f"prompt_length {prompt_length.tolist()} does not fit logits of shape {tuple(logits.shape)}")
    rows = logits[torch.arange(logits.shape[0], device=logits.device), pos]  # [B, V]
    return pick_label_words(rows, word_ids)


def pick_label_words(rows: torch.Tensor, word_ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Next-token logits [B, V] restricted to the label words: shared ids [C] or per-row ids [B, C] -> [B, C]."""
    ids = torch.as_tensor(word_ids, dtype=torch.long, device=rows.device)
    if ids.dim() == 1:
        return rows[:, ids]
    if ids.dim() != 2 or ids.shape[0] != rows.shape[0]:
        raise ValueError(f"per-row label word ids must be [B={rows.shape[0]}, C], got shape {tuple(ids.shape)}")
    return rows.gather(1, ids)
