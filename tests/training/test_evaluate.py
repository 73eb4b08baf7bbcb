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


PROMPTS = [
    "Review: a dull , lifeless film .\nSentiment:",
    "The king said",
    "It was the best of times, it was the",
    "Question: what colour is the sky?\nAnswer:",
]


def _classification_examples(tok) -> list[dict]:
    """Prompts of different lengths, each followed by a two-token response, so the scored position (the last prompt
    token) is neither the last token of the row nor at the same index in every row of the padded batch."""
    out = []
    for p in PROMPTS:
        prompt = tok(p)["input_ids"]
        ids = prompt + tok(" and so")["input_ids"]
        out.append(
            {"input_ids": ids, "labels": [-100] * len(prompt) + ids[len(prompt) :], "prompt_length": len(prompt)}
        )
    return out


def _reference_predictions(model, examples, word_ids: list[int]) -> list[int]:
    """Argmax over the label words' logits at position prompt_length - 1, one unpadded example at a time (full
    logits, no label_scores / collate / batching): what evaluate_classification must reproduce."""
    preds = []
    with torch.no_grad():
        for ex in examples:
            logits = model(input_ids=torch.tensor([ex["input_ids"]])).logits[0, ex["prompt_length"] - 1]
            preds.append(int(logits[word_ids].argmax()))
    return preds


def test_evaluate_classification_accuracy_follows_the_models_predictions(small):
    model, tok = small
    col = functools.partial(collate, pad_id=tok.pad_token_id)
    examples = _classification_examples(tok)
    # Label words: the model's own top next token for example 0 and for example 1, so example 0 is predicted as
    # class 0 and example 1 as class 1 whatever the weights are (both classes occur among the predictions).
    with torch.no_grad():
        tops = [
            int(model(input_ids=torch.tensor([ex["input_ids"]])).logits[0, ex["prompt_length"] - 1].argmax())
            for ex in examples[:2]
        ]
    assert tops[0] != tops[1], tops
    ref = _reference_predictions(model, examples, tops)
    assert ref[:2] == [0, 1]
    # Labels agree with the model on the first three examples and disagree on the last: accuracy is exactly 0.75.
    labels = [*ref[:3], 1 - ref[3]]
    examples = [{**ex, "label": y} for ex, y in zip(examples, labels, strict=True)]
    frac = {c: ref.count(c) / 4 for c in (0, 1)}

    for batch_size in (64, 3, 1):  # one padded batch, a ragged split, one at a time: same answer
        res = evaluate_classification(model, examples, col, torch.tensor(tops), batch_size=batch_size)
        assert res == {"accuracy": 0.75, "pred_frac_0": frac[0], "pred_frac_1": frac[1]}, (batch_size, res, ref)

    # Swapping the label words swaps every prediction: the three hits become misses and the miss a hit.
    swapped = evaluate_classification(model, examples, col, torch.tensor(tops[::-1]))
    assert swapped == {"accuracy": 0.25, "pred_frac_0": frac[1], "pred_frac_1": frac[0]}

    # A multi-task mix has no dataset label words: each example's own "choices" are scored, and only accuracy is
    # reported. Reversed choices on examples 2 and 3 flip their predicted indices; with these labels examples 0-2
    # hit and example 3 misses: 3/4.
    mixed = [{**ex, "choices": tops if i < 2 else tops[::-1]} for i, ex in enumerate(examples)]
    mixed_labels = [*ref[:2], 1 - ref[2], ref[3]]
    mixed = [{**ex, "label": y} for ex, y in zip(mixed, mixed_labels, strict=True)]
    assert evaluate_classification(model, mixed, col, None) == {"accuracy": 0.75}


def test_evaluate_generation_scores_generations_against_references(small):
    model, tok = small
    prompts = PROMPTS[1:3]
    gens = [generate(model, tok, [p], max_new_tokens=6, batch_size=1)[0] for p in prompts]
    assert all(gens), gens
    # One reference is the model's own greedy output (Rouge-L 100, exact match), the other shares no word with it.
    unrelated = "zebra quokka"
    assert not set(unrelated.split()) & set(gens[1].lower().split())
    out = evaluate_generation(model, tok, prompts, [gens[0], unrelated], max_new_tokens=6)
    assert out == {"rouge_l": pytest.approx(50.0), "exact_match": 0.5}
    both = evaluate_generation(model, tok, prompts, gens, max_new_tokens=6)
    assert both == {"rouge_l": pytest.approx(100.0), "exact_match": 1.0}
