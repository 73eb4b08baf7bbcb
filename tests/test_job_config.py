from pathlib import Path

import pytest
import tomllib

from fedpeft.algorithms import get_algorithm
from fedpeft.config import JobConfig, RunConfig, load_config, merge_overrides, parse_override, to_dict
from fedpeft.errors import ConfigError

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.toml"))


def test_there_are_recipes():
    assert RECIPES, "recipes/ must ship at least the demo recipe"


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_parses_and_validates(recipe):
    """Federated recipes (with a [federation] table, for `fedpeft run`) parse as RunConfig, the others as JobConfig
    (`fedpeft finetune`); either way every field is validated, including the algorithm's own table."""
    federated = "federation" in tomllib.loads(recipe.read_text())
    cfg = load_config(RunConfig if federated else JobConfig, recipe)
    assert cfg.train.steps >= 1
    if federated:
        assert isinstance(cfg, RunConfig)
        assert isinstance(cfg.algorithm, get_algorithm(cfg.federation.algorithm).config_cls)


def test_parse_override_uses_toml_values():
    assert parse_override("train.lr=1e-3") == (["train", "lr"], 0.001)
    assert parse_override("adapter.target_modules=['q_proj']") == (["adapter", "target_modules"], ["q_proj"])
    assert parse_override("model.name=tiny-large") == (["model", "name"], "tiny-large")
    with pytest.raises(ConfigError, match="--set"):
        parse_override("train.lr")


def test_overrides_apply_and_types_are_checked():
    cfg = load_config(JobConfig, None, ["train.lr=0.01", "adapter.r=4", "train.balanced_sampling=true"])
    assert cfg.train.lr == 0.01 and cfg.adapter.r == 4 and cfg.train.balanced_sampling is True
    with pytest.raises(ConfigError, match="train.steps"):
        load_config(JobConfig, None, ["train.steps='many'"])


def test_unknown_field_names_the_field_and_lists_known_ones():
    with pytest.raises(ConfigError) as exc:
        load_config(JobConfig, None, ["train.learning_rate=0.1"])
    assert "train.learning_rate" in str(exc.value) and "train.lr" in str(exc.value)


def test_unknown_dataset_lists_registered_names():
    with pytest.raises(ConfigError, match="data.dataset.*sst2"):
        load_config(JobConfig, None, ["data.dataset=imagenet"])


def test_bad_recipe_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nlr=1")
    with pytest.raises(ConfigError, match="recipe"):
        load_config(JobConfig, bad)
    with pytest.raises(ConfigError, match="recipe"):
        load_config(JobConfig, tmp_path / "missing.toml")


def test_merge_does_not_mutate_input_and_round_trips():
    base = {"train": {"lr": 1.0}}
    out = merge_overrides(base, ["train.lr=2.0"])
    assert base["train"]["lr"] == 1.0 and out["train"]["lr"] == 2.0
    cfg = load_config(JobConfig, None, ["train.lr=0.5"])
    again = load_config(JobConfig, None, [])
    assert to_dict(cfg) != to_dict(again)
    from fedpeft.config import from_dict

    assert to_dict(from_dict(JobConfig, to_dict(cfg))) == to_dict(cfg)


def test_own_data_recipe_ships_its_example_file():
    """recipes/own_data.toml's train_file (relative to the repository root) holds 5 tasks of 8 examples."""
    from fedpeft.data import get_dataset
    from fedpeft.training.centralized import raw_splits

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(RunConfig, root / "recipes" / "own_data.toml")
    assert cfg.data.train_file is not None and cfg.federation.partition_by == "task"
    cfg.data.train_file = str(root / cfg.data.train_file)
    raw = raw_splits(cfg, get_dataset(cfg.data.dataset))
    assert raw.note["tasks"] == ["addition", "antonyms", "capitals", "plurals", "sentiment"]
    assert (raw.note["train_examples"], raw.note["eval_examples"]) == (30, 10)
