import math

import pytest

from fedpeft.training.metrics import accuracy, exact_match, normalize_text, perplexity, rouge_l


def test_accuracy_counts_equal_entries():
    assert accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5


def test_accuracy_rejects_length_mismatch_and_empty():
    with pytest.raises(ValueError, match="3 predictions vs 2 labels"):
        accuracy([1, 0, 1], [1, 0])
    with pytest.raises(ValueError):
        accuracy([], [])


def test_normalize_and_exact_match():
    assert normalize_text("The  Answer, is: PARIS!") == "answer is paris"
    assert exact_match(["Paris.", "a dog"], ["paris", "cat"]) == 0.5


def test_rouge_l_known_values():
    assert rouge_l(["the cat sat"], ["the cat sat"]) == pytest.approx(100.0)
    assert rouge_l(["dog"], ["the cat sat"]) == pytest.approx(0.0)
    # LCS "the cat" of lengths 3/2 -> P=2/2, R=2/3, F=0.8
    assert rouge_l(["the cat"], ["the cat sat"]) == pytest.approx(80.0)


def test_perplexity():
    assert perplexity(math.log(10) * 4, 4) == pytest.approx(10.0)
    with pytest.raises(ValueError):
        perplexity(1.0, 0)
