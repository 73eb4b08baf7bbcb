import functools
import math

import pytest
import torch

from fedpeft.data import collate
from fedpeft.models import load_model, load_tokenizer
from fedpeft.training.evaluate import evaluate_classification, evaluate_generation, evaluate_lm, generate


@pytest.fixture(scope="module")
def small():
    return load_model("tiny-small"), load_tokenizer("tiny-small")


def test_evaluate_lm_matches_the_models_own_loss(small):
    model, tok = small
    ids = tok("the film is a charming and often affecting journey .")["input_ids"]
    example = {"input_ids": ids, "labels": [-100] * 3 + ids[3:], "prompt_length": 3, "label": -1}
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([ids]), labels=torch.tensor([example["labels"]])).loss
    out = evaluate_lm(model, [example], functools.partial(collate, pad_id=tok.pad_token_id))
    assert out["loss"] == pytest.approx(float(ref), rel=1e-5)
    assert out["perplexity"] == pytest.approx(math.exp(float(ref)), rel=1e-5)


def test_batched_generation_equals_one_by_one(small):
    """Left padding must not change greedy outputs: a batch of prompts of different lengths gives the same text."""
    model, tok = small
    prompts = ["The king said", "It was the best of times, it was the", "Sentiment:"]
    batched = generate(model, tok, prompts, max_new_tokens=6, batch_size=3)
    single = [generate(model, tok, [p], max_new_tokens=6, batch_size=1)[0] for p in prompts]
    assert batched == single and len(batched) == 3
    assert tok.padding_side == "right"  # restored


def test_evaluate_generation_and_classification_keys(small):
    model, tok = small
    out = evaluate_generation(model, tok, ["Review: great fun .\nSentiment:"], ["positive"], max_new_tokens=3)
    assert set(out) == {"rouge_l", "exact_match"} and 0.0 <= out["rouge_l"] <= 100.0
    ex = [
        {"input_ids": tok("good")["input_ids"], "labels": [-100], "prompt_length": 1, "label": i % 2} for i in range(4)
    ]
    res = evaluate_classification(model, ex, functools.partial(collate, pad_id=tok.pad_token_id), torch.tensor([5, 9]))
    assert res["accuracy"] == 0.5 and res["pred_frac_0"] + res["pred_frac_1"] == pytest.approx(1.0)
