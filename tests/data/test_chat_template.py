"""Chat templates (issue 16 item 2): instruction data formatted with the model's own chat template.

The bundled tiny models have no chat template; a ChatML one is added here to a copy of tiny-small's tokenizer
(``<|im_start|>`` / ``<|im_end|>`` as special tokens).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import datasets
import pytest
import torch

import fedpeft.data as D
from conftest import make_tiny_llama
from fedpeft.config import JobConfig, from_dict
from fedpeft.data.templates import ChatTemplate, choose_template, end_of_turn_ids, stop_token_ids
from fedpeft.errors import ConfigError
from fedpeft.models import load_tokenizer
from fedpeft.training.centralized import prepare_task
from fedpeft.training.evaluate import generate

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>'"
    " + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

EXAMPLES = [
    {"instruction": "What is the capital of France?", "input": "", "output": "Paris.", "task": "open_qa"},
    {
        "instruction": "Summarize the text.",
        "input": "The cat sat on the mat. It was warm.",
        "output": "A cat sat on a warm mat.",
        "task": "summarization",
    },
    {"instruction": "List two colours.", "input": "  ", "output": "\nred\n blue ", "task": "brainstorming"},
]

# sha256 of [[input_ids, labels, prompt_length], ...] of the first 24 Dolly rows encoded with "alpaca" by the
# bundled tokenizer, computed with the code before chat templates existed (max_length 512 and 64).
BEFORE = {
    512: "39169e2be49d5095d509079a9127bb030ba1215e5ec2994c7e017b48d228f677",
    64: "a8e346c805949fa14ace369c5ade2752bb1b709d297ecf098c2ddf775216e7b6",
}


@pytest.fixture(scope="module")
def plain_tok() -> Any:
    return load_tokenizer("tiny-small")


@pytest.fixture(scope="module")
def chat_tok(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """tiny-small's tokenizer plus ChatML special tokens and chat template, saved and loaded back from a folder."""
    tok = load_tokenizer("tiny-small")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    folder = tmp_path_factory.mktemp("tiny-chat")
    tok.save_pretrained(folder)
    loaded = load_tokenizer(str(folder))
    assert loaded.chat_template == CHATML
    return loaded


def _messages(ex: dict[str, str], answer: bool = True) -> list[dict[str, str]]:
    user = ex["instruction"] + (f"\n\n{ex['input']}" if ex["input"].strip() else "")
    turns = [{"role": "user", "content": user}]
    return [*turns, {"role": "assistant", "content": ex["output"]}] if answer else turns


def _chat_ids(tok: Any, messages: list[dict[str, str]], generation_prompt: bool = False) -> list[int]:
    out = tok.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=True, return_dict=True)
    return list(out["input_ids"])


def _dolly_rows(shared_data: Path, n: int = 24) -> datasets.Dataset:
    rows = []
    with open(shared_data / "dolly15k" / "databricks-dolly-15k.jsonl", encoding="utf-8") as fh:
        for line, _ in zip(fh, range(n), strict=False):
            r = json.loads(line)
            row = {"instruction": r["instruction"], "input": r["context"], "output": r["response"]}
            rows.append({**row, "task": r["category"]})
    return datasets.Dataset.from_list(rows)


def _digest(enc: datasets.Dataset) -> str:
    blob = json.dumps([[e["input_ids"], e["labels"], e["prompt_length"]] for e in enc]).encode()
    return hashlib.sha256(blob).hexdigest()


def test_chat_encoding_is_apply_chat_template_token_for_token(chat_tok: Any) -> None:
    enc = D.encode_dataset(datasets.Dataset.from_list(EXAMPLES), chat_tok, "chat", max_length=512)
    im_end = chat_tok.convert_tokens_to_ids("<|im_end|>")
    for ex, row in zip(EXAMPLES, enc, strict=True):
        full = _chat_ids(chat_tok, _messages(ex))
        prompt = _chat_ids(chat_tok, _messages(ex, answer=False), generation_prompt=True)
        assert row["input_ids"] == full
        assert row["prompt_length"] == len(prompt) and full[: len(prompt)] == prompt
        # loss: -100 on the prompt (through the assistant header), the response ids (answer + <|im_end|>) after
        assert row["labels"] == [-100] * len(prompt) + full[len(prompt) :]
        response = full[len(prompt) :]
        assert im_end in response
        assert chat_tok.decode(response[: response.index(im_end)]) == ex["output"]
        assert chat_tok.decode(full[: len(prompt)]).endswith("<|im_start|>assistant\n")
    assert enc["label"] == [-1] * 3 and enc["task"] == [e["task"] for e in EXAMPLES]


def test_chat_render_prompt_and_answer(chat_tok: Any) -> None:
    prompt, answer = D.build_prompt(EXAMPLES[1], "chat", chat_tok)
    messages = _messages(EXAMPLES[1], answer=False)
    assert prompt == chat_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == (
        "<|im_start|>user\nSummarize the text.\n\nThe cat sat on the mat. It was warm.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert answer == "A cat sat on a warm mat."  # the reference generation metrics compare against
    bound = D.get_template("chat", chat_tok)
    assert isinstance(bound, ChatTemplate) and D.build_prompt(EXAMPLES[1], bound) == (prompt, answer)
    with pytest.raises(ConfigError, match="bound to a tokenizer"):
        D.build_prompt(EXAMPLES[1], "chat")  # no tokenizer to render with


def test_chat_truncation_follows_the_same_rules(chat_tok: Any) -> None:
    ds = datasets.Dataset.from_list(EXAMPLES[1:2])
    full = D.encode_dataset(ds, chat_tok, "chat", max_length=512)[0]
    n, p = len(full["input_ids"]), full["prompt_length"]
    # prompt cut on the left, the whole response (with <|im_end|>) kept
    cut = D.encode_dataset(ds, chat_tok, "chat", max_length=n - 3)[0]
    assert cut["input_ids"] == full["input_ids"][3:] and cut["prompt_length"] == p - 3
    assert cut["labels"][cut["prompt_length"] :] == full["input_ids"][p:]
    # a response longer than the budget: cut on the right, one prompt token kept
    tiny = D.encode_dataset(ds, chat_tok, "chat", max_length=5)[0]
    assert tiny["prompt_length"] == 1 and tiny["input_ids"] == full["input_ids"][p - 1 : p + 4]
    assert tiny["labels"] == [-100, *full["input_ids"][p : p + 4]]


def test_default_template_choice(chat_tok: Any, plain_tok: Any) -> None:
    assert choose_template(None, "alpaca", chat_tok).name == "chat"  # instruction data + chat template
    assert choose_template(None, "alpaca", plain_tok).name == "alpaca"  # no chat template: the dataset's own
    assert choose_template(None, "sst2", chat_tok).name == "sst2"  # classification keeps its label-word format
    assert choose_template("alpaca", "alpaca", chat_tok).name == "alpaca"  # configured wins
    assert choose_template("chat", "rte", chat_tok).name == "chat"


def test_template_errors(plain_tok: Any, chat_tok: Any) -> None:
    with pytest.raises(ConfigError, match="template") as err:
        D.get_template("chatml")
    assert "'alpaca', 'chat'" in str(err.value)  # the known names are listed
    with pytest.raises(ConfigError, match="chat template") as err:
        choose_template("chat", "alpaca", plain_tok)
    assert "tiny-small" in str(err.value)  # names the model
    with pytest.raises(ConfigError, match="chat template"):
        D.encode_dataset(datasets.Dataset.from_list(EXAMPLES), plain_tok, "chat", max_length=64)
    assert "chat" in D.template_names() and "alpaca" in D.template_names()


def test_prepare_task_picks_chat_for_dolly(chat_tok: Any, plain_tok: Any, shared_data: Path) -> None:
    def job(**data: Any) -> JobConfig:
        base = {"dataset": "dolly", "data_dir": str(shared_data), "eval_split": "test", "train_limit": 6}
        return from_dict(JobConfig, {"model": {"name": "tiny-small"}, "data": {**base, "eval_limit": 4, **data}})

    task = prepare_task(job(), chat_tok)
    assert task.template == "chat"
    # long prompts are cut on the left (a long response leaves one prompt token): look at the end of the prompt
    rows = [row for row in task.train + task.eval if row["prompt_length"] >= 12]
    assert len(rows) >= 6
    for row in rows:
        assert chat_tok.decode(row["input_ids"][: row["prompt_length"]]).endswith("<|im_end|>\n<|im_start|>assistant\n")
    # the generation prompts of evaluation use the chat template too
    prompt, reference = D.build_prompt(task.eval_raw[0], task.template, task.tokenizer)
    assert prompt.startswith("<|im_start|>user\n") and reference == task.eval_raw[0]["output"]
    assert prepare_task(job(template="alpaca"), chat_tok).template == "alpaca"
    assert prepare_task(job(), plain_tok).template == "alpaca"
    with pytest.raises(ConfigError, match="chat template"):
        prepare_task(job(template="chat"), plain_tok)


def test_bundled_models_and_alpaca_encode_as_before(shared_data: Path, plain_tok: Any, chat_tok: Any) -> None:
    ds = _dolly_rows(shared_data)
    for max_length, digest in BEFORE.items():
        default = choose_template(None, "alpaca", plain_tok)  # what a Dolly job on a bundled model uses
        assert _digest(D.encode_dataset(ds, plain_tok, default, max_length)) == digest
        assert _digest(D.encode_dataset(ds, load_tokenizer("tiny-large"), "alpaca", max_length)) == digest
        assert _digest(D.encode_dataset(ds, chat_tok, "alpaca", max_length)) == digest  # alpaca on a chat model


def test_stop_ids_come_from_the_template(chat_tok: Any, plain_tok: Any) -> None:
    im_end = chat_tok.convert_tokens_to_ids("<|im_end|>")
    assert end_of_turn_ids(chat_tok) == [im_end]
    assert stop_token_ids(chat_tok) == [chat_tok.eos_token_id, im_end]
    assert end_of_turn_ids(plain_tok) == [] and stop_token_ids(plain_tok) == [plain_tok.eos_token_id]


def _forced(model: torch.nn.Module, script: list[int]) -> list[int]:
    """Make the model's greedy choice at step k be ``script[k]`` (then ``script[-1]`` forever); returns the step
    counter (one lm_head call per generated token)."""
    calls = [0]

    def hook(_module: Any, _inputs: Any, logits: torch.Tensor) -> torch.Tensor:
        forced = torch.full_like(logits, -1e4)
        forced[..., script[min(calls[0], len(script) - 1)]] = 1e4
        calls[0] += 1
        return forced

    model.get_output_embeddings().register_forward_hook(hook)
    return calls


def test_generation_stops_at_end_of_turn(chat_tok: Any) -> None:
    im_end = chat_tok.convert_tokens_to_ids("<|im_end|>")
    answer = chat_tok("Paris", add_special_tokens=False)["input_ids"]
    junk = chat_tok(" and more", add_special_tokens=False)["input_ids"]
    model = make_tiny_llama(vocab_size=len(chat_tok))
    calls = _forced(model, [*answer, im_end, *junk])
    prompts = [D.build_prompt(ex, "chat", chat_tok)[0] for ex in EXAMPLES[:2]]
    out = generate(model, chat_tok, prompts, max_new_tokens=20, batch_size=2)
    assert out == ["Paris", "Paris"]  # <|im_end|> and everything after it stripped
    assert calls[0] == len(answer) + 1  # stopped at <|im_end|>, not after 20 tokens

    # without the end-of-turn stop the same forced model runs on past <|im_end|>: the stop is what ends it
    plain = make_tiny_llama(vocab_size=len(chat_tok))
    calls = _forced(plain, [*answer, im_end, *junk])
    with torch.no_grad():
        ids = chat_tok(prompts[:1], return_tensors="pt", add_special_tokens=False)["input_ids"]
        gen = plain.generate(input_ids=ids, max_new_tokens=8, do_sample=False, eos_token_id=chat_tok.eos_token_id)
    assert gen.shape[1] - ids.shape[1] == 8 and calls[0] == 8
