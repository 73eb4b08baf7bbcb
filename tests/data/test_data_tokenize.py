"""Templates, tokenization with response-only loss, truncation, collation and label-word scoring."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import fedpeft.data as D
from fedpeft.data.tokenize import IGNORE_INDEX, bos_prefix
from fedpeft.errors import ConfigError


def test_alpaca_template_with_and_without_input() -> None:
    ex = {"instruction": "Translate.", "input": "bonjour", "output": "hello", "label": -1, "task": "t"}
    prompt, response = D.build_prompt(ex, "alpaca")
    assert prompt == "### Instruction:\nTranslate.\n\n### Input:\nbonjour\n\n### Response:\n"
    assert response == "hello"
    prompt, _ = D.build_prompt({**ex, "input": ""}, "alpaca")
    assert prompt == "### Instruction:\nTranslate.\n\n### Response:\n"


def test_classification_templates_and_braces() -> None:
    ex = {"instruction": "i", "input": "a {weird} film", "output": "positive", "label": 1, "task": "sst2"}
    assert D.build_prompt(ex, "sst2") == ("Review: a {weird} film\nSentiment:", " positive")
    qa = {"instruction": "i", "input": "Question: q?\nSentence: s.", "output": "yes", "label": 0, "task": "qnli"}
    assert D.build_prompt(qa, "qnli") == ("Question: q?\nSentence: s.\nAnswer:", " yes")
    custom = D.PromptTemplate(name="mine", prompt="Q: {input}\nA:", response=" {output}", add_eos=False)
    assert D.build_prompt(ex, custom)[0] == "Q: a {weird} film\nA:"
    with pytest.raises(ConfigError, match="template='nope' is invalid; allowed: 'alpaca'"):
        D.build_prompt(ex, "nope")
    with pytest.raises(ConfigError, match="template"):
        D.build_prompt(ex, D.PromptTemplate(name="bad", prompt="{context}"))


def test_labels_mask_exactly_the_prompt(bpe_tokenizer: Any) -> None:
    prompt, response = "Review: a charming journey\nSentiment:", " positive and charming"
    enc = D.tokenize_example(bpe_tokenizer, prompt, response, max_length=64)
    p_ids = bpe_tokenizer(prompt, add_special_tokens=False)["input_ids"]
    r_ids = bpe_tokenizer(response, add_special_tokens=False)["input_ids"]
    n = enc["prompt_length"]
    assert n == len(p_ids)
    assert enc["input_ids"] == p_ids + r_ids + [bpe_tokenizer.eos_token_id]
    assert enc["labels"][:n] == [IGNORE_INDEX] * n
    assert enc["labels"][n:] == enc["input_ids"][n:]
    no_eos = D.tokenize_example(bpe_tokenizer, prompt, response, max_length=64, add_eos=False)
    assert no_eos["input_ids"] == p_ids + r_ids


def test_truncation_removes_prompt_tokens_from_the_left(bpe_tokenizer: Any) -> None:
    prompt = "### Instruction:\nSay hello.\n\n### Input:\nto the world to the world\n\n### Response:\n"
    response = "hello world"
    p_ids = bpe_tokenizer(prompt, add_special_tokens=False)["input_ids"]
    r_ids = bpe_tokenizer(response, add_special_tokens=False)["input_ids"] + [bpe_tokenizer.eos_token_id]
    max_length = len(r_ids) + 5
    enc = D.tokenize_example(bpe_tokenizer, prompt, response, max_length)
    assert len(enc["input_ids"]) == max_length
    assert enc["input_ids"][: enc["prompt_length"]] == p_ids[-5:]  # the end of the prompt survives
    assert enc["input_ids"][enc["prompt_length"] :] == r_ids  # the whole response survives
    assert enc["labels"].count(IGNORE_INDEX) == 5


def test_truncation_with_bos_and_overlong_response(char_tokenizer: Any) -> None:
    assert bos_prefix(char_tokenizer) == [1]
    enc = D.tokenize_example(char_tokenizer, "abcdef", "XYZ", max_length=6)
    # BOS kept, prompt cut from the left, response + EOS whole.
    assert enc["input_ids"] == [1, ord("f"), ord("X"), ord("Y"), ord("Z"), 2]
    assert enc["prompt_length"] == 2
    enc = D.tokenize_example(char_tokenizer, "abc", "UVWXYZ", max_length=4)
    # The response alone does not fit: keep BOS + one prompt token, cut the response on the right.
    assert enc["input_ids"] == [1, ord("c"), ord("U"), ord("V")]
    assert enc["labels"] == [IGNORE_INDEX, IGNORE_INDEX, ord("U"), ord("V")]
    with pytest.raises(ConfigError, match="max_length"):
        D.tokenize_example(char_tokenizer, "abc", "x", max_length=2)


def test_bpe_tokenizer_has_no_bos(bpe_tokenizer: Any) -> None:
    assert bos_prefix(bpe_tokenizer) == []


def test_encode_dataset_matches_tokenize_example(bpe_tokenizer: Any) -> None:
    ds = D.make_dataset(
        {
            "instruction": ["c", "c"],
            "input": ["a charming journey", "bleak and desperate"],
            "output": ["positive", "negative"],
            "label": [1, 0],
            "task": ["sst2", "sst2"],
        }
    )
    enc = D.encode_dataset(ds, bpe_tokenizer, "sst2", max_length=32)
    assert enc.column_names == ["input_ids", "labels", "prompt_length", "label", "task"]
    assert enc["label"] == [1, 0]
    for i in range(2):
        prompt, response = D.build_prompt(ds[i], "sst2")
        expected = D.tokenize_example(bpe_tokenizer, prompt, response, 32, add_eos=False)  # sst2: no EOS
        assert {k: enc[i][k] for k in expected} == expected
    word_ids = D.label_word_ids(bpe_tokenizer, ["negative", "positive"])
    # The first response token is the label word's scored token.
    assert [enc[i]["input_ids"][enc[i]["prompt_length"]] for i in range(2)] == [word_ids[1], word_ids[0]]
    with_eos = D.encode_dataset(ds, bpe_tokenizer, "sst2", max_length=32, add_eos=True)
    assert with_eos[0]["input_ids"][-1] == bpe_tokenizer.eos_token_id


def test_collate_right_pads(bpe_tokenizer: Any) -> None:
    batch = [
        {"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "prompt_length": 1, "label": 1},
        {"input_ids": [8], "labels": [8], "prompt_length": 0, "label": 0},
    ]
    out = D.collate(batch, pad_id=bpe_tokenizer.pad_token_id)
    pad = bpe_tokenizer.pad_token_id
    assert out["input_ids"].tolist() == [[5, 6, 7], [8, pad, pad]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert out["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert out["prompt_length"].tolist() == [1, 0]
    assert out["label"].tolist() == [1, 0]
    assert all(t.dtype == torch.long for t in out.values())
    assert "label" not in D.collate([{k: v for k, v in batch[0].items() if k != "label"}], pad_id=0)


def test_label_word_ids(bpe_tokenizer: Any) -> None:
    ids = D.label_word_ids(bpe_tokenizer, ["negative", "positive"])
    assert ids == [bpe_tokenizer.convert_tokens_to_ids(t) for t in ("Ġnegative", "Ġpositive")]
    assert len(set(D.label_word_ids(bpe_tokenizer, ["yes", "no"]))) == 2
    with pytest.raises(ConfigError, match="label_words") as err:
        D.label_word_ids(bpe_tokenizer, ["positive", "positive"])
    assert "first token" in str(err.value)


def test_label_word_logits_picks_last_prompt_position() -> None:
    batch, length, vocab = 2, 4, 6
    logits = torch.zeros(batch, length, vocab)
    logits[0, 1, 3], logits[0, 1, 5] = 2.0, -1.0  # row 0: prompt_length 2 -> position 1
    logits[1, 3, 3], logits[1, 3, 5] = -3.0, 4.0  # row 1: prompt_length 4 -> position 3
    logits[0, 3, 3] = 99.0  # a response position: must be ignored
    scores = D.label_word_logits(logits, torch.tensor([2, 4]), [3, 5])
    assert scores.tolist() == [[2.0, -1.0], [-3.0, 4.0]]
    assert scores.argmax(-1).tolist() == [0, 1]
    assert torch.equal(D.label_word_logits(logits, torch.tensor([2, 4]), torch.tensor([3, 5])), scores)
    loss = torch.nn.functional.cross_entropy(scores, torch.tensor([0, 1]))
    assert loss.item() < 0.05
    with pytest.raises(ValueError, match="prompt_length"):
        D.label_word_logits(logits, torch.tensor([0, 2]), [3, 5])


def test_end_to_end_with_tiny_llama(bpe_tokenizer: Any, shared_data: Any) -> None:
    from conftest import make_tiny_llama

    ds = D.load_dataset("sst2", "dev", shared_data, limit=4)
    enc = D.encode_dataset(ds, bpe_tokenizer, "sst2", max_length=48)
    batch = D.collate(list(enc), pad_id=bpe_tokenizer.pad_token_id)
    model = make_tiny_llama(vocab_size=len(bpe_tokenizer))
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    word_ids = D.label_word_ids(bpe_tokenizer, D.get_dataset("sst2").label_words)
    scores = D.label_word_logits(logits, batch["prompt_length"], word_ids)
    assert scores.shape == (4, 2) and torch.isfinite(scores).all()
