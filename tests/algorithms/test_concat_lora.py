"""concat_lora (FLoRA's pending stacks as one adapter) on tiny tensors."""

import pytest
import torch

from fedpeft.algorithms.aggregation import AggregationError
from fedpeft.algorithms.lora_aggregation import concat_lora, lora_deltas, stack_lora


def state(r: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {"m.lora_A.weight": torch.randn(r, 5, generator=gen), "m.lora_B.weight": torch.randn(3, r, generator=gen)}


def test_product_of_concatenation_is_the_sum_of_products():
    gen = torch.Generator().manual_seed(0)
    parts = [state(2, gen), state(3, gen), state(1, gen)]
    cat = concat_lora(parts)
    assert cat["m.lora_A.weight"].shape == (6, 5) and cat["m.lora_B.weight"].shape == (3, 6)
    expected = sum(lora_deltas(p)["m"] for p in parts)
    torch.testing.assert_close(lora_deltas(cat)["m"], expected)


def test_stacks_of_rounds_concatenate_to_the_sum_of_weighted_client_products():
    gen = torch.Generator().manual_seed(1)
    rounds = [[state(2, gen), state(4, gen)] for _ in range(3)]
    stacks = [stack_lora(clients, [1.0, 3.0]) for clients in rounds]
    total = lora_deltas(concat_lora(stacks), scaling=2.0)["m"]
    expected = sum(2.0 * (0.25 * lora_deltas(a)["m"] + 0.75 * lora_deltas(b)["m"]) for a, b in rounds)
    torch.testing.assert_close(total, expected)


def test_empty_and_non_lora_inputs():
    assert concat_lora([]) == {}
    with pytest.raises(AggregationError, match="LoRA factors only"):
        concat_lora([{**state(2, torch.Generator().manual_seed(0)), "bias": torch.zeros(3)}])
