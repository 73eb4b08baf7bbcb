import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from fedpeft.errors import ConfigError
from fedpeft.models import BUNDLED_DIR, load_model, load_tokenizer, resolve_model_path, select_device
from fedpeft.registry import MODELS

BUNDLED = ["tiny-small", "tiny-large"]


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_model_loads_with_plain_transformers(name):
    path = BUNDLED_DIR / name
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    ids = tok("it 's a charming and often affecting journey .", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], model.config.vocab_size)
    assert torch.isfinite(logits).all()
    assert tok.pad_token is not None and tok.eos_token is not None


def test_family_shares_one_tokenizer_and_vocabulary():
    small, large = (load_tokenizer(n) for n in BUNDLED)
    assert small.get_vocab() == large.get_vocab()
    text = "Federated learning keeps data on the device."
    assert small(text)["input_ids"] == large(text)["input_ids"]


def test_larger_model_is_bigger_and_has_lower_heldout_perplexity():
    stats = {n: json.loads((BUNDLED_DIR / n / "pretrain_stats.json").read_text()) for n in BUNDLED}
    small, large = (load_model(n) for n in BUNDLED)
    n_small = sum(p.numel() for p in small.parameters())
    n_large = sum(p.numel() for p in large.parameters())
    assert n_small == stats["tiny-small"]["parameters"] and n_large == stats["tiny-large"]["parameters"]
    assert 0.5e6 < n_small < 3e6 and 5e6 < n_large < 15e6
    assert stats["tiny-large"]["heldout_perplexity"] < 0.9 * stats["tiny-small"]["heldout_perplexity"]


def test_bundled_model_predicts_text_better_than_chance():
    """A real pretrained model: next-token loss on ordinary English far below uniform (ln 8192 ~ 9.0)."""
    model, tok = load_model("tiny-small"), load_tokenizer("tiny-small")
    ids = tok(
        "It was the best of times, it was the worst of times, and the people of the nation were united.",
        return_tensors="pt",
    )["input_ids"]
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss
    assert float(loss) < 6.5


def test_short_names_resolve_and_others_pass_through(tmp_path):
    assert set(BUNDLED) <= set(MODELS.names())
    assert resolve_model_path("tiny-small") == str(BUNDLED_DIR / "tiny-small")
    assert resolve_model_path("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)


def test_load_model_dtype_and_device_validation():
    assert next(load_model("tiny-small", dtype="bfloat16").parameters()).dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="model.dtype"):
        load_model("tiny-small", dtype="int3")
    with pytest.raises(ConfigError, match="device"):
        select_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            select_device("cuda")
        assert select_device("auto").type == "cpu"
