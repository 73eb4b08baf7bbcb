"""Your own data from a recipe: file formats, field mapping, loader options, the held-out share, bad files before any
work, natural partitioning, and a federated run on a user file given only on the command line."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import fedpeft.data as D
from fedpeft.cli import main
from fedpeft.config import JobConfig, RunConfig, load_config
from fedpeft.data.base import column_values
from fedpeft.data.splits import heldout_rows
from fedpeft.errors import ConfigError, DataFormatError
from fedpeft.training.centralized import raw_splits

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "own_data.toml"

ROWS: list[dict[str, Any]] = [
    {"question": "Capital of France?", "context": "", "answer": "Paris", "category": "geo"},
    {"question": "Capital of Peru?", "context": "", "answer": "Lima", "category": "geo"},
    {"question": "Add the numbers.", "context": "2 + 3", "answer": "5", "category": "math"},
    {"question": "Add the numbers.", "context": "4 + 4", "answer": "8", "category": "math"},
]
FIELDS = {"instruction": "question", "input": "context", "output": "answer", "task": "category"}


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    """``rows`` in the format of ``path``'s extension."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    elif path.suffix in (".csv", ".tsv"):
        with path.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter="," if path.suffix == ".csv" else "\t")
            writer.writeheader()
            writer.writerows(rows)
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def col(ds: datasets.Dataset, name: str) -> list[Any]:
    return column_values(ds, name)


def canonical(n_tasks: int, per_task: int) -> list[dict[str, Any]]:
    return [
        {"instruction": f"Task {t}: repeat the word.", "input": f"w{t}x{i}", "output": f"w{t}x{i}", "task": f"t{t}"}
        for t in range(n_tasks)
        for i in range(per_task)
    ]


@pytest.mark.parametrize("suffix", [".json", ".csv", ".tsv", ".parquet"])
def test_every_format_loads_the_same_examples(tmp_path: Path, suffix: str) -> None:
    reference = D.load_file(write_rows(tmp_path / "mine.jsonl", ROWS), FIELDS).to_dict()
    other = D.load_file(write_rows(tmp_path / f"mine{suffix}", ROWS), FIELDS).to_dict()
    assert other == reference
    assert reference["task"] == ["geo", "geo", "math", "math"] and reference["input"][2] == "2 + 3"


def test_field_mapping_from_the_recipe(tmp_path: Path) -> None:
    file = write_rows(tmp_path / "qa.csv", ROWS)
    mapping = "data.fields={instruction='question', input='context', output='answer', task='category'}"
    cfg = load_config(JobConfig, None, ["data.dataset='jsonl'", f"data.train_file='{file}'", mapping])
    raw = raw_splits(cfg, D.get_dataset("jsonl"))
    assert sorted(col(raw.train, "output") + col(raw.eval, "output")) == ["5", "8", "Lima", "Paris"]
    assert set(col(raw.eval, "task")) == {"geo", "math"}  # each task held out once
    # Unmapped canonical fields are read under their own names; a task field is optional (default: file stem).
    plain = D.load_file(write_rows(tmp_path / "plain.jsonl", [{"instruction": "Hi.", "output": "Hello"}]))
    assert plain[0] == {"instruction": "Hi.", "input": "", "output": "Hello", "label": -1, "task": "plain"}
    with pytest.raises(ConfigError, match=r"data\.fields\.prompt.*canonical fields"):
        load_config(JobConfig, None, ["data.dataset='jsonl'", "data.train_file='x.jsonl'", "data.fields={prompt='q'}"])
    with pytest.raises(ConfigError, match=r"data\.fields=.*jsonl"):
        load_config(JobConfig, None, ["data.fields={instruction='q'}"])  # sst2 maps no fields


def test_options_reach_the_hugging_face_loader(tmp_path: Path) -> None:
    saved = tmp_path / "saved"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list([{k: r[k] for k in ("question", "answer")} for r in ROWS]),
            "test": datasets.Dataset.from_dict({"question": ["1+1?"], "answer": ["2"]}),
        }
    ).save_to_disk(str(saved))
    over = [
        "data.dataset='hf'",
        "data.eval_split='test'",
        f"data.options={{name_or_path='{saved}', task='qa'}}",
        "data.fields={instruction='question', output='answer'}",
    ]
    raw = raw_splits(load_config(JobConfig, None, over), D.get_dataset("hf"))
    assert col(raw.train, "output") == ["Paris", "Lima", "5", "8"] and col(raw.eval, "instruction") == ["1+1?"]
    assert set(col(raw.train, "task")) == {"qa"}  # the loader's own `task` option arrived too
    # One split's folder through data.train_file (the hf loader's file option); a bad option names the allowed ones.
    file = tmp_path / "one"
    datasets.Dataset.from_list(ROWS).save_to_disk(str(file))
    mapping = "data.fields={instruction='question', output='answer', task='category'}"
    cfg = load_config(JobConfig, None, ["data.dataset='hf'", f"data.train_file='{file}'", mapping])
    assert len(raw_splits(cfg, D.get_dataset("hf")).train) == 2  # a held-out share of each task
    with pytest.raises(ConfigError, match=r"data\.options\.colums.*name_or_path"):
        load_config(JobConfig, None, ["data.dataset='hf'", "data.options={colums='x'}"])
    with pytest.raises(ConfigError, match=r"data\.options\.path.*data\.train_file"):
        load_config(JobConfig, None, ["data.dataset='jsonl'", "data.options={path='x.jsonl'}"])
    with pytest.raises(ConfigError, match=r"data\.train_file=.*jsonl"):
        load_config(JobConfig, None, [f"data.train_file='{file}'"])  # sst2 reads its own corpus


def test_heldout_share_is_seeded_disjoint_and_covers_every_task(tmp_path: Path) -> None:
    tasks = [f"t{i % 3}" for i in range(60)]
    train, held = heldout_rows(tasks, 0.2, seed=0)
    assert not set(train) & set(held) and sorted(train + held) == list(range(60))
    assert len(held) == 12 and {tasks[i] for i in held} == {"t0", "t1", "t2"}
    assert heldout_rows(tasks, 0.2, seed=0) == (train, held)
    assert heldout_rows(tasks, 0.2, seed=1)[1] != held

    file = write_rows(tmp_path / "mine.jsonl", canonical(3, 10))
    over = ["data.dataset='jsonl'", f"data.train_file='{file}'", "data.heldout_fraction=0.3"]
    raw = raw_splits(load_config(JobConfig, None, over), D.get_dataset("jsonl"))
    train_inputs, eval_inputs = set(col(raw.train, "input")), set(col(raw.eval, "input"))
    assert len(eval_inputs) == 9 and len(train_inputs) == 21 and not train_inputs & eval_inputs
    assert raw.note["heldout"] == {"fraction": 0.3, "seed": 0, "of_rows": 30}
    again = raw_splits(load_config(JobConfig, None, over), D.get_dataset("jsonl"))
    assert col(again.eval, "input") == col(raw.eval, "input")  # seeded: the same rows every time
    with pytest.raises(ConfigError, match="data.heldout_fraction"):
        load_config(JobConfig, None, [*over[:2], "data.heldout_fraction=1.0"])


@pytest.mark.parametrize(
    ("name", "content", "line", "field"),
    [
        ("bad.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": 3}\n', 2, "output"),
        ("bad.jsonl", '{"instruction": "a", "output": "b"}\n\n{"instruction": "c",\n', 3, None),
        ("bad.csv", "instruction,output\na,b\n,d\n", 3, "instruction"),
        ("bad.json", '[{"instruction": "a", "output": "b"}, {"output": "d"}]', None, "[1].instruction"),
    ],
)
def test_bad_file_fails_before_any_run_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, content: str, line: int | None, field: str | None
) -> None:
    bad = tmp_path / name
    bad.write_text(content, encoding="utf-8")
    cfg = load_config(JobConfig, None, ["data.dataset='jsonl'", f"data.train_file='{bad}'"])
    with pytest.raises(DataFormatError) as err:
        raw_splits(cfg, D.get_dataset("jsonl"))
    assert (err.value.path, err.value.line, err.value.field) == (str(bad), line, field)
    runs = tmp_path / "runs"
    for command, recipe in (("run", [str(RECIPE)]), ("finetune", [])):  # finetune: a recipe-less centralized job
        over = [f"data.train_file='{bad}'", f"output_dir='{runs}'", "data.dataset='jsonl'"]
        assert main([command, *recipe, *(arg for item in over for arg in ("--set", item))]) == 2
        message = capsys.readouterr().err
        assert str(bad) in message and (line is None or f"line {line}" in message)
        assert field is None or repr(field) in message
    assert not runs.exists()  # nothing created, no model loaded


def test_missing_file_and_unknown_format_name_the_recipe_field(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    runs = tmp_path / "runs"
    (tmp_path / "data.xlsx").write_text("x")
    for value, needle in ((tmp_path / "nope.jsonl", "an existing data file"), (tmp_path / "data.xlsx", ".parquet")):
        assert main(["run", str(RECIPE), "--set", f"data.train_file='{value}'", "--set", f"output_dir='{runs}'"]) == 2
        err = capsys.readouterr().err
        assert "data.train_file=" in err and needle in err
    assert not runs.exists()


def test_natural_partition_picks_task_and_adjusts_the_client_count(tmp_path: Path) -> None:
    from fedpeft.runtime.run import check_federated_data

    file = write_rows(tmp_path / "mine.jsonl", canonical(4, 5))
    over = [f"data.train_file='{file}'", "federation.num_clients=7", f"output_dir='{tmp_path / 'runs'}'"]
    cfg = load_config(RunConfig, RECIPE, over)
    assert cfg.federation.partition_by == "task"  # picked by itself
    assert load_config(RunConfig, RECIPE, ["federation.partition_by='label'"]).federation.partition_by == "task"
    adjusted, note, lines = check_federated_data(cfg)
    assert adjusted.federation.num_clients == 4 and cfg.federation.num_clients == 7
    assert note is not None and note["num_clients_adjusted"] == {"from": 7, "to": 4}
    assert any("federation.num_clients adjusted 7 -> 4" in line and "4 tasks" in line for line in lines)
    unchanged, _, lines = check_federated_data(load_config(RunConfig, RECIPE, [*over[:1], "federation.num_clients=4"]))
    assert unchanged.federation.num_clients == 4 and not any("adjusted" in line for line in lines)


def test_client_count_that_must_be_changed_is_said_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the adjusted config is invalid the error says what num_clients must be; a partition the data cannot
    meet (too many Dirichlet clients for the examples) fails before the run directory as well."""
    import dataclasses

    from fedpeft.config import FederationConfig
    from fedpeft.runtime.run import check_federated_data

    file = write_rows(tmp_path / "mine.jsonl", canonical(4, 5))
    cfg = load_config(RunConfig, RECIPE, [f"data.train_file='{file}'", "federation.num_clients=7"])
    original = FederationConfig.__post_init__

    def only_seven(self: FederationConfig) -> None:  # stands in for any setting tied to the client count
        original(self)
        if self.num_clients != 7:
            raise ConfigError("algorithm.client_ranks", [4] * 7, "one rank per client")

    monkeypatch.setattr(FederationConfig, "__post_init__", only_seven)
    with pytest.raises(ConfigError, match=r"federation\.num_clients=7 .*expected 4: the natural partition"):
        check_federated_data(cfg)
    monkeypatch.setattr(FederationConfig, "__post_init__", original)
    fed = dataclasses.replace(cfg.federation, partition="dirichlet", partition_by="task", num_clients=5)
    fed = dataclasses.replace(fed, min_partition_size=8)
    with pytest.raises(ConfigError, match=r"federation\.(num_clients|min_partition_size)"):
        check_federated_data(dataclasses.replace(cfg, federation=fed))


def test_a_run_that_never_started_leaves_no_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import fedpeft.runtime.run as run_module
    from fedpeft.runtime import run_federated

    def broken(session: Any) -> None:
        session.run.log("setup", num_clients=5)
        raise RuntimeError("model failed to load")

    monkeypatch.setattr(run_module, "runtimes", lambda: {"local": run_module.Runtime(broken)})
    shipped = RECIPE.parent / "data" / "own_data.jsonl"
    cfg = load_config(RunConfig, RECIPE, [f"output_dir='{tmp_path / 'runs'}'", f"data.train_file='{shipped}'"])
    with pytest.raises(RuntimeError, match="model failed"):
        run_federated(cfg)
    assert list((tmp_path / "runs").iterdir()) == []
    assert "removed" in capsys.readouterr().err

    def broken_later(session: Any) -> None:  # something more than setup was written: kept, and marked
        (session.run.path / "certs").mkdir()
        raise RuntimeError("node failed")

    monkeypatch.setattr(run_module, "runtimes", lambda: {"local": run_module.Runtime(broken_later)})
    with pytest.raises(RuntimeError):
        run_federated(cfg)
    (kept,) = list((tmp_path / "runs").iterdir())
    events = [json.loads(line)["event"] for line in (kept / "metrics.jsonl").read_text().splitlines()]
    assert events == ["data", "failed"]


def test_federated_run_on_a_user_file_given_only_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    train = write_rows(tmp_path / "mine_train.jsonl", canonical(3, 4))
    evals = write_rows(tmp_path / "mine_eval.jsonl", canonical(3, 1))
    args = [
        "run",
        str(RECIPE),
        "--set",
        f"data.train_file='{train}'",
        "--set",
        f"data.eval_file='{evals}'",
        # a fast job: fewer rounds and steps, short generations
        *("--set", "federation.rounds=2", "--set", "train.steps=1", "--set", "eval.max_new_tokens=2"),
        *("--set", f"output_dir='{tmp_path / 'runs'}'", "--quiet"),
    ]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "federation.num_clients adjusted 5 -> 3" in captured.err  # the recipe's 5 tasks vs this file's 3
    run = Path(captured.out.strip().splitlines()[-1])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["num_clients"] == 3
    assert {"rouge_l_t0", "rouge_l_t1", "rouge_l_t2", "rouge_l"} <= set(summary["final"])
    data_event = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert data_event["event"] == "data" and data_event["eval_file"] == str(evals) and "heldout" not in data_event
