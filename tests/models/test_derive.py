"""Deriving a small model from a large one (FedPT's real pair): the layer cut, the brief distillation, determinism,
and the build into the cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedpeft.errors import ConfigError
from fedpeft.models import load_model
from fedpeft.models.derive import DerivedModel, cut_layers, distill_kl
from fedpeft.models.fetch import SOURCE_FILE

BUNDLED = Path(__file__).resolve().parents[2] / "src" / "fedpeft" / "data" / "bundled"


def test_cutting_every_layer_is_the_parent_and_a_cut_keeps_the_chosen_layers():
    parent = load_model("tiny-large").eval()
    ids = torch.tensor([[5, 17, 300, 42, 9]])
    whole = cut_layers(parent, tuple(range(parent.config.num_hidden_layers)))
    with torch.no_grad():
        assert torch.equal(whole(input_ids=ids).logits, parent(input_ids=ids).logits)
    cut = cut_layers(parent, (0, 5, 7))
    assert cut.config.num_hidden_layers == 3
    assert torch.equal(cut.model.layers[1].mlp.up_proj.weight, parent.model.layers[5].mlp.up_proj.weight)
    assert torch.equal(cut.model.embed_tokens.weight, parent.model.embed_tokens.weight)
    with pytest.raises(ConfigError, match="layers"):
        cut_layers(parent, (0, 8))
    with pytest.raises(ConfigError, match="layers"):
        cut_layers(parent, (1, 1))


def test_distill_kl_is_zero_on_equal_logits_and_positive_otherwise():
    z = torch.randn(2, 3, 7, generator=torch.Generator().manual_seed(0))
    assert float(distill_kl(z, z)) == pytest.approx(0.0, abs=1e-6)
    assert float(distill_kl(z, z.flip(-1))) > 0


@pytest.fixture
def corpus(tmp_path):
    """A data directory whose corpus is real text (the bundled SST-2 training sentences)."""
    lines = [r.split("\t")[0] for r in (BUNDLED / "sst2_train.tsv").read_text().splitlines()[1:4000]]
    (tmp_path / "data" / "corpus").mkdir(parents=True)
    (tmp_path / "data" / "corpus" / "sst2.txt").write_text("\n\n".join(lines))
    return tmp_path / "data"


def test_a_derived_model_is_deterministic_gets_closer_to_its_parent_and_lands_in_the_cache(
    corpus, tmp_path, monkeypatch
):
    monkeypatch.setenv("FEDPEFT_CACHE", str(tmp_path / "cache"))
    spec = DerivedModel("tiny-cut", "tiny-large", (0, 7), steps=6, batch_size=4, block=32, lr=1e-3, max_blocks=120)
    assert not spec.is_fetched() and "not built" in spec.state()
    folder = spec.fetch(log=lambda s: None, data_dir=corpus)
    assert spec.is_fetched() and folder == tmp_path / "cache" / "models" / "tiny-cut"
    record = json.loads((folder / SOURCE_FILE).read_text())
    assert record["layers_kept"] == [0, 7] and record["parent_layers"] == 8
    assert record["heldout_after"]["kl"] < record["heldout_before"]["kl"]
    child = load_model(str(folder))
    assert child.config.num_hidden_layers == 2
    # the same spec built again (elsewhere) gives the same weights
    again = tmp_path / "again"
    again.mkdir()
    spec.build(again, log=lambda s: None, data_dir=corpus)
    other = load_model(str(again))
    assert all(torch.equal(a, b) for a, b in zip(child.state_dict().values(), other.state_dict().values(), strict=True))
    # a second fetch is a no-op (the folder is complete)
    assert spec.fetch(log=lambda s: None, data_dir=corpus) == folder


def test_no_corpus_is_a_clear_error(tmp_path):
    spec = DerivedModel("tiny-cut", "tiny-large", (0,), steps=1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="corpus"):
        spec.build(tmp_path / "out", log=lambda s: None, data_dir=tmp_path / "empty")
