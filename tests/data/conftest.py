"""Fixtures for the data tests: a real (tiny) byte-level BPE tokenizer trained on the fly, and small datasets."""

from __future__ import annotations

from typing import Any

import pytest

SENTENCES = [
    "Review: a charming and often affecting journey.\nSentiment: positive",
    "Review: unflinchingly bleak and desperate.\nSentiment: negative",
    "Question: who wrote the book?\nSentence: The book was written by a poet.\nAnswer: yes",
    "Premise: the cat sat on the mat.\nHypothesis: a cat sat.\nAnswer: no",
    "### Instruction:\nSay hello.\n\n### Input:\nto the world\n\n### Response:\nhello world",
    "positive negative positive negative yes no yes no the a of and to in is",
] * 20


@pytest.fixture(scope="session")
def bpe_tokenizer() -> Any:
    """A GPT-2-style byte-level BPE tokenizer (~300 tokens) with eos ``<|endoftext|>`` and pad ``<|pad|>``."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(SENTENCES, vocab_size=400, min_frequency=2, special_tokens=["<|endoftext|>", "<|pad|>"])
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>", pad_token="<|pad|>")


class CharTokenizer:
    """One token per character (id = code point), BOS = 1 and EOS = 2: makes truncation arithmetic exact.

    Mimics the Hugging Face call convention the data code uses: ``tok(text or list, add_special_tokens=...)``.
    """

    bos_token_id = 1
    eos_token_id = 2
    pad_token_id = 0

    def __call__(self, texts: str | list[str], add_special_tokens: bool = True) -> dict[str, Any]:
        def enc(t: str) -> list[int]:
            return ([self.bos_token_id] if add_special_tokens else []) + [ord(c) for c in t]

        return {"input_ids": enc(texts) if isinstance(texts, str) else [enc(t) for t in texts]}


@pytest.fixture
def char_tokenizer() -> CharTokenizer:
    return CharTokenizer()
