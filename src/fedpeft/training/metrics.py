"""Evaluation metrics as pure functions over predictions and references (tested on tiny inputs)."""

from __future__ import annotations

import math
import re
import string
from collections.abc import Sequence

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize_text(text: str) -> str:
    """Lower-case, drop punctuation and articles, collapse whitespace (the SQuAD normalisation)."""
    text = _PUNCT.sub(" ", text.lower())
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Fraction of equal entries."""
    if len(predictions) != len(labels):
        raise ValueError(f"accuracy: {len(predictions)} predictions vs {len(labels)} labels")
    if not labels:
        raise ValueError("accuracy of zero examples is undefined")
    return sum(int(p == y) for p, y in zip(predictions, labels, strict=True)) / len(labels)


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of predictions equal to their reference after :func:`normalize_text`."""
    if len(predictions) != len(references) or not references:
        raise ValueError("exact_match needs equally many (>0) predictions and references")
    hits = sum(normalize_text(p) == normalize_text(r) for p, r in zip(predictions, references, strict=True))
    return hits / len(references)


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean Rouge-L F-measure (rouge-score, stemming on), x100 as papers report it."""

    if len(predictions) != len(references) or not references:
        raise ValueError("rouge_l needs equally many (>0) predictions and references")
    return sum(rouge_l_scores(predictions, references)) / len(references)


def rouge_l_scores(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """Rouge-L F-measure x100 of each prediction against its reference."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [100.0 * scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references, strict=True)]


def exact_match_scores(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """1.0 where a prediction equals its reference after :func:`normalize_text`, else 0.0."""
    return [float(normalize_text(p) == normalize_text(r)) for p, r in zip(predictions, references, strict=True)]


def perplexity(total_nll: float, n_tokens: int) -> float:
    """exp(mean negative log-likelihood per token)."""
    if n_tokens <= 0:
        raise ValueError("perplexity needs at least one token")
    return math.exp(total_nll / n_tokens)
