from pathlib import Path

import datasets
import pytest
import tomllib

from fedpeft.algorithms import get_algorithm
from fedpeft.config import JobConfig, RunConfig, load_config, merge_overrides, parse_override, to_dict
from fedpeft.data.base import DATA_DIR_ENV, column_values
from fedpeft.data.partition import partition_indices
from fedpeft.errors import ConfigError
from fedpeft.registry import DATASETS, MODELS
from fedpeft.runtime import run as run_module
from fedpeft.training.centralized import check_data

REPO = Path(__file__).resolve().parents[1]
#: run and fine-tune recipes; planner scenarios (a [network] table, for `fedpeft plan`) are tests/planning's
RECIPES = sorted(p for p in (REPO / "recipes").glob("*.toml") if "network" not in tomllib.loads(p.read_text()))


def test_there_are_recipes():
    assert RECIPES, "recipes/ must ship at least the demo recipe"


@pytest.fixture
def no_model_download(monkeypatch):
    """Any attempt to fetch a model that is not bundled (``smollm2-135m``) fails the test instead of downloading."""

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"test tried to fetch model {self.name!r}")

    for _, spec in MODELS.items():
        if spec.fetcher is not None:
            monkeypatch.setattr(type(spec.fetcher), "fetch", refuse)


def _load_recipe(recipe: Path) -> JobConfig:
    federated = "federation" in tomllib.loads(recipe.read_text())
    cfg = load_config(RunConfig if federated else JobConfig, recipe)
    assert type(cfg) is (RunConfig if federated else JobConfig)
    return cfg


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_parses_and_validates(recipe, no_model_download):
    """Federated recipes (with a [federation] table, for `fedpeft run`) parse as RunConfig, the others as JobConfig
    (`fedpeft finetune`), every field validated, including the algorithm's own table; and what a recipe names exists:
    its model is a registered short name (bundled and loadable offline, or fetched into the cache on first use), every
    dataset of it is registered and has the recipe's train and eval splits, and its federation is self-consistent."""
    cfg = _load_recipe(recipe)
    assert cfg.name and cfg.train.steps >= 1 and cfg.train.lr > 0
    spec = MODELS.get(cfg.model.name)  # a short name, not a hub id or a path that would reach the network
    if spec.fetcher is None:
        assert spec.available(), f"{cfg.model.name}: bundled checkpoint missing"
    else:
        assert spec.path is None and spec.location().name == cfg.model.name  # fetched on first use, never here
    for name in cfg.data.tasks:
        splits = DATASETS.get(name).splits
        for split in (cfg.data.train_split, cfg.data.eval_split):
            assert split in splits, f"dataset {name!r} has no split {split!r} (it has {splits})"
        if not cfg.data.uses_heldout:
            assert cfg.data.train_split != cfg.data.eval_split, "evaluation on the training split"
    if isinstance(cfg, RunConfig):
        assert isinstance(cfg.algorithm, get_algorithm(cfg.federation.algorithm).config_cls)
        fed = cfg.federation
        assert 1 <= fed.clients_per_round <= fed.num_clients
        if len(cfg.data.tasks) > 1 or fed.partition == "natural":
            assert fed.partition_by == "task", "a mix or a natural partition splits by task"
        if len(cfg.data.tasks) > 1 and fed.partition == "natural":
            assert fed.num_clients == len(cfg.data.tasks)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_passes_the_data_preflight(recipe, shared_data, monkeypatch, no_model_download):
    """The data pre-flight `fedpeft finetune` / `fedpeft run` do before any model is loaded (check_data, or
    check_federated_data, which also partitions the training rows as the run will): it must pass on the shipped
    data without adjusting the recipe (a natural partition's num_clients already equals its number of tasks), and
    give every client a non-empty, disjoint share. A mix of datasets, which the pre-flight leaves to setup, is checked
    here task by task the same way (its splits loaded without a tokenizer, then partitioned by task)."""
    monkeypatch.setenv(DATA_DIR_ENV, str(shared_data))
    monkeypatch.chdir(REPO)  # recipes give data files relative to the repository root
    cfg = _load_recipe(recipe)
    data = cfg.data
    seen: list = []  # what check_data returned inside check_federated_data (so the data is loaded once)

    def recording_check_data(c):
        seen.append(check_data(c))
        return seen[-1]

    monkeypatch.setattr(run_module, "check_data", recording_check_data)
    if isinstance(cfg, RunConfig):
        checked, note, lines = run_module.check_federated_data(cfg)
        assert checked.federation == cfg.federation, lines  # nothing adjusted
        assert note is None or "num_clients_adjusted" not in note
        raw = seen[0]
    else:
        raw = check_data(cfg)
    if len(data.tasks) == 1:
        assert raw is not None and len(raw.train) > 0 and len(raw.eval) > 0
        for split, limit in ((raw.train, data.train_limit), (raw.eval, data.eval_limit)):
            assert limit is None or len(split) <= limit
        train_rows = {"label": column_values(raw.train, "label"), "task": column_values(raw.train, "task")}
    else:
        assert raw is None  # a mix is left to setup
        train_rows = {"label": [], "task": []}
        for name in data.tasks:
            spec = DATASETS.get(name)
            train = spec.load_split(data.train_split, data.data_dir, data.train_limit, **data.options)
            held = spec.load_split(data.eval_split, data.data_dir, data.eval_limit, **data.options)
            assert len(train) > 0 and len(held) > 0, name
            assert set(column_values(train, "task")) == {name}
            train_rows["label"] += column_values(train, "label")
            train_rows["task"] += column_values(train, "task")
    if not isinstance(cfg, RunConfig):
        return
    fed = cfg.federation
    if fed.partition == "natural":
        assert len(set(train_rows["task"])) == fed.num_clients
    parts = partition_indices(datasets.Dataset.from_dict(train_rows), fed.partition_config(cfg.seed))
    assert len(parts) == fed.num_clients and all(parts), [len(p) for p in parts]
    flat = [i for p in parts for i in p]
    assert len(flat) == len(set(flat)) and set(flat) <= set(range(len(train_rows["task"])))


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


def test_the_job_seed_drives_data_order_and_adapter_init_unless_they_are_set():
    """`--set seed=S` must change a centralized run (it did not while train.seed and init_seed defaulted to 0)."""
    import torch

    from fedpeft.adapters import adapter_state, attach_adapter
    from fedpeft.models import load_model

    cfg = load_config(JobConfig, None, ["seed=3"])
    assert (cfg.train.seed, cfg.adapter.init_seed) == (3, 3)
    cfg = load_config(JobConfig, None, ["seed=3", "train.seed=7", "adapter.init_seed=0"])
    assert (cfg.train.seed, cfg.adapter.init_seed) == (7, 0)
    resolved = to_dict(load_config(JobConfig, None, ["seed=3"]))  # what config.toml of the run holds
    assert (resolved["train"]["seed"], resolved["adapter"]["init_seed"]) == (3, 3)
    with pytest.raises(ConfigError, match="seed"):
        load_config(JobConfig, None, ["seed=-1"])
    inits = [adapter_state(attach_adapter(load_model("tiny-small"), JobConfig(seed=s).adapter)) for s in (0, 1, 0)]
    a_keys = [k for k in inits[0] if "lora_A" in k]
    assert a_keys and all(torch.equal(inits[0][k], inits[2][k]) for k in a_keys)
    assert not any(torch.equal(inits[0][k], inits[1][k]) for k in a_keys)


SCENARIOS = sorted(p for p in (REPO / "recipes").glob("*.toml") if p not in RECIPES)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.name)
def test_every_shipped_planner_scenario_parses_and_plans(scenario):
    from fedpeft.planning import load_scenario, plan

    assert SCENARIOS, "recipes/plan_paper.toml is a scenario"
    best = plan(load_scenario(scenario))
    assert best.total_s > 0 and best.cut >= 0
