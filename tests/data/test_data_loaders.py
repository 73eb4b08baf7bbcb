"""Loaders on the real shared data, the bundled SST-2 fallback, and user-file loaders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets
import pytest

import fedpeft.data as D
from fedpeft.data import base
from fedpeft.errors import ConfigError
from fedpeft.registry import DATASETS


def check_schema(ds: datasets.Dataset) -> None:
    assert tuple(ds.column_names) == D.COLUMNS
    assert ds.features == D.FEATURES


@pytest.mark.parametrize(
    ("name", "split", "rows"),
    [("sst2", "dev", 872), ("sst2", "test", 1821), ("qnli", "dev", 5463), ("rte", "dev", 277), ("rte", "train", 2241)],
)
def test_glue_row_counts_and_label_words(shared_data: Path, name: str, split: str, rows: int) -> None:
    spec = D.get_dataset(name)
    ds = spec.load_split(split, data_dir=shared_data)
    check_schema(ds)
    assert len(ds) == rows
    assert set(ds["label"]) == {0, 1}
    assert set(ds["task"]) == {name}
    assert all(spec.label_words[lab] == out for lab, out in zip(ds["label"], ds["output"], strict=True))


def test_glue_label_conventions(shared_data: Path) -> None:
    sst2 = D.load_sst2("dev", shared_data)
    # First data row of dev.tsv: "it 's a charming and often affecting journey . <TAB>1"
    assert sst2[0]["input"] == "it 's a charming and often affecting journey ."  # stripped
    assert (sst2[0]["label"], sst2[0]["output"]) == (1, "positive")
    rte = D.load_rte("dev", shared_data)
    assert rte[1]["label"] == 0 and rte[1]["output"] == "yes"  # 0 = entailment
    assert rte[1]["input"].startswith("Premise: Yet, we now") and "\nHypothesis: Bacteria" in rte[1]["input"]
    qnli = D.load_qnli("dev", shared_data)
    assert qnli[0]["input"].startswith("Question: What came into force") and qnli[0]["output"] == "yes"


def test_test_splits_are_held_out_from_training(shared_data: Path) -> None:
    """RTE's test is the 249 GLUE-train rows kept out of train.tsv; QNLI's test a question-hashed share of our
    GLUE-train subset: no question on both sides, and together they are the whole file."""
    assert (len(D.load_rte("train", shared_data)), len(D.load_rte("test", shared_data))) == (2241, 249)
    train, test = D.load_qnli("train", shared_data), D.load_qnli("test", shared_data)
    assert (len(train), len(test)) == (9482, 993)

    def question(rows: Any) -> set[str]:
        return {x.split("\nSentence: ")[0] for x in rows["input"]}

    assert not question(train) & question(test)
    assert len(D.load_sst2("test", shared_data)) == 1821


def test_sst2_falls_back_to_bundled_copy(monkeypatch: pytest.MonkeyPatch, shared_data: Path, tmp_path: Path) -> None:
    monkeypatch.delenv(base.DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(base, "default_data_dir", lambda: None)
    for split in ("dev", "test"):  # the job chooses on dev and reports on test from a pip install
        assert D.load_sst2(split).to_dict() == D.load_sst2(split, shared_data).to_dict()
    # An explicit directory always wins, even when it lacks the file.
    with pytest.raises(ConfigError, match=r"glue/sst2/dev\.tsv"):
        D.load_sst2("dev", tmp_path)
    monkeypatch.setenv(base.DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(ConfigError, match="data_dir"):
        D.load_sst2("dev")


def test_bundled_files_and_attribution() -> None:
    train = D.BUNDLED_DIR / "sst2_train.tsv"
    with train.open(encoding="utf-8") as handle:
        assert handle.readline() == "sentence\tlabel\n"
        assert sum(1 for _ in handle) == 67349
    total = sum(p.stat().st_size for p in D.BUNDLED_DIR.iterdir())
    assert total < 5_000_000
    assert "Socher" in (D.BUNDLED_DIR / "ATTRIBUTION.md").read_text(encoding="utf-8")


def test_explicit_data_dir_wins(tmp_path: Path) -> None:
    folder = tmp_path / "glue" / "sst2"
    folder.mkdir(parents=True)
    (folder / "dev.tsv").write_text("sentence\tlabel\ngood\t1\nbad\t0\n", encoding="utf-8")
    ds = D.load_dataset("sst2", "dev", data_dir=tmp_path)
    assert ds["input"] == ["good", "bad"] and ds["output"] == ["positive", "negative"]


def test_dolly_splits(shared_data: Path) -> None:
    train = D.load_dolly("train", shared_data)
    test = D.load_dolly("test", shared_data)
    check_schema(test)
    assert len(train) + len(test) == 15011
    assert 0.08 < len(test) / 15011 < 0.12
    assert all(D.dolly_is_heldout(i) for i in test["instruction"])
    assert set(test["task"]) == set(train["task"]) and len(set(train["task"])) == 8
    assert set(test["label"]) == {-1}


def test_natural_instructions_splits(shared_data: Path) -> None:
    train = D.load_dataset("natural_instructions", "train", data_dir=shared_data)
    test = D.load_dataset("natural_instructions", "test", data_dir=shared_data)
    unseen = D.load_dataset("natural_instructions", "unseen", data_dir=shared_data)
    check_schema(unseen)
    seen_tasks = set(train["task"])
    assert seen_tasks == set(test["task"])
    assert not seen_tasks & set(unseen["task"])
    assert len(seen_tasks | set(unseen["task"])) == 36
    assert all(D.ni_task_is_heldout(t) for t in set(unseen["task"]))
    # Test = the last floor(n / 10) instances of each seen task: 200-instance tasks give 20.
    per_task = {t: test["task"].count(t) for t in seen_tasks}
    assert max(per_task.values()) == 20
    assert len(train) + len(test) + len(unseen) == sum(
        len(json.loads(p.read_text())["Instances"])
        for p in (shared_data / "natural_instructions_v1/tasks").glob("*.json")
    )


def test_natural_instructions_options(shared_data: Path) -> None:
    tasks_dir = shared_data / "natural_instructions_v1" / "tasks"
    names = D.list_ni_tasks(tasks_dir)
    assert len(names) == 36
    pick = names[:2]
    ds = D.load_natural_instructions(
        "train", shared_data, tasks=pick, heldout_tasks=[], max_instances_per_task=10, num_examples=1
    )
    assert len(ds) == 18 and set(ds["task"]) == set(pick)  # 10 - 10 // 10 per task
    assert "\n\nExample 1:\nInput: " in ds[0]["instruction"]
    unseen = D.load_natural_instructions("unseen", tasks_dir=tasks_dir, tasks=pick, heldout_tasks=pick[1:])
    assert set(unseen["task"]) == {pick[1]} and len(unseen) == 200
    with pytest.raises(ConfigError, match="tasks"):
        D.load_natural_instructions("train", shared_data, tasks=["no_such_task"])
    with pytest.raises(ConfigError, match="heldout_tasks"):
        D.load_natural_instructions("unseen", shared_data, heldout_tasks=[])


def test_natural_instructions_v2_layout(tmp_path: Path) -> None:
    task = {
        "Contributors": ["x"],
        "Source": ["y"],
        "Definition": ["Answer the arithmetic question.", "Give only the number."],
        "Positive Examples": [{"input": "1+1", "output": "2", "explanation": "sum"}],
        "Negative Examples": [],
        "Instances": [{"id": f"t-{i}", "input": f"{i}+1", "output": [str(i + 1), "?"]} for i in range(20)],
    }
    (tmp_path / "task001_add.json").write_text(json.dumps(task), encoding="utf-8")
    parsed = D.read_ni_task(tmp_path / "task001_add.json")
    assert parsed.definition == "Answer the arithmetic question.\n\nGive only the number."
    assert parsed.positive_examples == (("1+1", "2"),)
    train = D.load_natural_instructions("train", tasks_dir=tmp_path, heldout_tasks=[], num_examples=1)
    test = D.load_natural_instructions("test", tasks_dir=tmp_path, heldout_tasks=[])
    assert len(train) == 18 and len(test) == 2
    assert test["input"] == ["18+1", "19+1"] and test["output"] == ["19", "20"]  # first output only
    assert train[0]["task"] == "task001_add"
    assert train[0]["instruction"].endswith("Example 1:\nInput: 1+1\nOutput: 2")


def test_load_split_validation(shared_data: Path) -> None:
    spec = D.get_dataset("rte")
    with pytest.raises(ConfigError, match=r"split='unseen' is invalid; allowed: 'train', 'test', 'dev'"):
        spec.load_split("unseen", shared_data)
    with pytest.raises(ConfigError, match="rte option"):
        spec.load_split("dev", shared_data, tasks=["x"])
    with pytest.raises(ConfigError, match="dataset"):
        D.get_dataset("nope")
    with pytest.raises(ConfigError, match="limit"):
        spec.load_split("dev", shared_data, limit=0)


def test_limit_is_a_fixed_random_subset(shared_data: Path) -> None:
    a = D.load_dataset("rte", "dev", shared_data, limit=50)
    b = D.load_dataset("rte", "dev", shared_data, limit=50)
    full = D.load_dataset("rte", "dev", shared_data)
    assert len(a) == 50 and a.to_dict() == b.to_dict()
    positions = [full["input"].index(x) for x in a["input"]]
    assert positions == sorted(positions) and positions[-1] > 50  # file order, not just the first rows


def test_registry_specs_are_consistent() -> None:
    assert {"sst2", "qnli", "rte", "dolly", "natural_instructions", "jsonl", "hf"} <= set(DATASETS.names())
    for name, spec in DATASETS.items():
        assert spec.name == name
        assert spec.template in D.TEMPLATES
        assert (spec.task_type == "classification") == (spec.num_labels > 0)


def test_load_jsonl_and_json_array(tmp_path: Path) -> None:
    rows = [
        {"q": "Add.", "ctx": "1 and 2", "a": "3", "kind": "math", "y": 0},
        {"q": "Greet.", "a": "hi", "kind": "chat", "y": 1},
    ]
    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    ds = D.load_jsonl(jsonl, "q", "ctx", "a", task_field="kind", label_field="y")
    check_schema(ds)
    assert ds["input"] == ["1 and 2", ""] and ds["task"] == ["math", "chat"] and ds["label"] == [0, 1]
    array = tmp_path / "alpaca.json"
    array.write_text(json.dumps([{"instruction": "Say hi.", "input": "", "output": "hi"}]), encoding="utf-8")
    ds = D.load_jsonl(array)
    assert ds[0] == {"instruction": "Say hi.", "input": "", "output": "hi", "label": -1, "task": "alpaca"}
    via_registry = D.load_dataset("jsonl", "train", data_dir=tmp_path, path="alpaca.json")
    assert via_registry.to_dict() == ds.to_dict()
    with pytest.raises(ConfigError, match="path"):
        D.load_dataset("jsonl", "train")


def test_load_hf_dataset_local_paths(tmp_path: Path) -> None:
    source = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"question": ["2+2?", "Capital of France?"], "answer": ["4", "Paris"]}),
            "test": datasets.Dataset.from_dict({"question": ["1+1?"], "answer": ["2"]}),
        }
    )
    saved = tmp_path / "saved"
    source.save_to_disk(str(saved))
    ds = D.load_hf_dataset(saved, "test", {"instruction": "question", "output": "answer"})
    check_schema(ds)
    assert ds[0] == {"instruction": "1+1?", "input": "", "output": "2", "label": -1, "task": "saved"}
    with pytest.raises(ConfigError, match="split"):
        D.load_hf_dataset(saved, "validation", {"instruction": "question", "output": "answer"})
    with pytest.raises(ConfigError, match="columns"):
        D.load_hf_dataset(saved, "train", {"instruction": "prompt", "output": "answer"})
    with pytest.raises(ConfigError, match="instruction"):
        D.load_hf_dataset(saved, "train", {"output": "answer"})
    with pytest.raises(ConfigError, match="integer class indices"):
        D.load_hf_dataset(saved, "train", {"instruction": "question", "output": "answer", "label": "answer"})

    # A classification file: constant instruction, output from label words.
    csv_file = tmp_path / "reviews.csv"
    csv_file.write_text("text,label\ngreat film,1\nawful,0\n", encoding="utf-8")
    ds = D.load_hf_dataset(
        csv_file,
        "train",
        {"input": "text"},
        instruction="Classify the sentiment.",
        label_words=("negative", "positive"),
        cache_dir=tmp_path / "cache",
    )
    assert ds["output"] == ["positive", "negative"] and ds["label"] == [1, 0] and ds["task"] == ["reviews"] * 2


def test_dolly_heldout_categories(shared_data: Path) -> None:
    """FedHDS's unseen-category split: summarization (1,188 rows, MANIFEST) leaves train and test for 'unseen'."""
    held = ["summarization"]
    train = D.load_dolly("train", shared_data, heldout_categories=held)
    test = D.load_dolly("test", shared_data, heldout_categories=held)
    unseen = D.load_dolly("unseen", shared_data, heldout_categories=held)
    check_schema(unseen)
    assert "summarization" not in set(train["task"]) | set(test["task"])
    assert set(train["task"]) == set(test["task"]) and len(set(train["task"])) == 7
    assert set(unseen["task"]) == {"summarization"} and len(unseen) == 1188
    assert len(train) + len(test) + len(unseen) == 15011
    assert all(D.dolly_is_heldout(i) for i in test["instruction"])
    # The other categories keep the same train / test rows as without the option.
    full_test = D.load_dolly("test", shared_data)
    kept = [i for i, t in zip(full_test["instruction"], full_test["task"], strict=True) if t != "summarization"]
    assert test["instruction"] == kept
    assert len(train) + len(test) == 15011 - 1188
    # Through the registry, as a recipe passes it.
    via_spec = D.get_dataset("dolly").load_split("unseen", shared_data, heldout_categories=held)
    assert via_spec.to_dict() == unseen.to_dict()


def test_dolly_heldout_categories_validation(shared_data: Path) -> None:
    with pytest.raises(ConfigError, match="heldout_categories"):
        D.load_dolly("unseen", shared_data)
    with pytest.raises(ConfigError, match="heldout_categories"):
        D.load_dolly("unseen", shared_data, heldout_categories=[])
    with pytest.raises(ConfigError, match="heldout_categories.*poetry"):
        D.load_dolly("train", shared_data, heldout_categories=["summarization", "poetry"])
    with pytest.raises(ConfigError, match="heldout_categories.*list"):
        D.load_dolly("train", shared_data, heldout_categories="summarization")
    with pytest.raises(ConfigError, match="split"):
        D.load_dolly("dev", shared_data, heldout_categories=["summarization"])
