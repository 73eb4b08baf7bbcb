import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from fedpeft.errors import ConfigError
from fedpeft.models import BUNDLED_DIR, load_model, load_tokenizer, resolve_model_path, select_device
from fedpeft.models.pretrain import collect_texts, heldout_perplexity, pack_blocks
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


# The model card's figures (docs/model_card.md, "Sizes and figures").
CARD = {"tiny-small": (1_907_328, 252.8), "tiny-large": (8_545_536, 183.8)}
HELDOUT_EVERY, BLOCK, N_HELDOUT = 50, 128, 32  # pretrain.main's defaults; 32 blocks = 4,096 held-out tokens


def _first_heldout_blocks(data_dir):
    """The first N_HELDOUT of the model card's 1,153 held-out blocks, built by pretrain's own code: the same documents
    in the same order, packed into 128-token blocks, every 50th block held out. Block boundaries depend only on the
    tokens before them, so packing a prefix of the documents gives a prefix of the full stream's blocks."""
    docs = collect_texts(data_dir)
    need = (N_HELDOUT - 1) * HELDOUT_EVERY + 1
    k = 1024
    while len(blocks := pack_blocks(docs[:k], BUNDLED_DIR / "tiny-small", BLOCK)) < need:
        k *= 2
    return blocks[torch.arange(len(blocks)) % HELDOUT_EVERY == 0][:N_HELDOUT]


def test_larger_model_is_bigger_and_has_lower_heldout_perplexity(shared_data):
    heldout = _first_heldout_blocks(shared_data)
    assert heldout.shape == (N_HELDOUT, BLOCK)
    ppl = {}
    for name in BUNDLED:
        model = load_model(name)
        n_params = sum(p.numel() for p in model.parameters())
        stats = json.loads((BUNDLED_DIR / name / "pretrain_stats.json").read_text())
        assert n_params == CARD[name][0] == stats["parameters"], name
        ppl[name] = heldout_perplexity(model, heldout, torch.device("cpu"))  # bf16 autocast, as the card measured
    # Measured on this slice: 148.0 and 106.2 (ratio 0.717); the card's full held-out set: 252.8 and 183.8 (0.727).
    # The slice (public-domain books, the start of the stream) is easier text than the average held-out block, so each
    # model must beat its card figure; a model that was not pretrained scores in the thousands (uniform: 8,192).
    assert ppl["tiny-small"] < CARD["tiny-small"][1] and ppl["tiny-large"] < CARD["tiny-large"][1], ppl
    assert ppl["tiny-large"] < 0.8 * ppl["tiny-small"], ppl


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
