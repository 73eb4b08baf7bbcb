"""Shared fixtures. Nothing here touches the network: models come from configs or the bundled checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Keep tests on the CI machine's two cores and away from any hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(2)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FEDPEFT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real public datasets); tests that need it skip loudly if CI lacks it."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared data not found at {SHARED_DATA}; set FEDPEFT_SHARED_DATA")
    return SHARED_DATA


def make_tiny_llama(vocab_size: int = 512, bias: bool = True, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised Llama-architecture causal LM (~100k params), same layout as the bundled family."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        attention_bias=bias,
        mlp_bias=bias,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg).eval()


@pytest.fixture
def tiny_llama() -> torch.nn.Module:
    return make_tiny_llama()
