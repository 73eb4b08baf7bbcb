"""Partitioners: validation, determinism, coverage, skew, and the summary table."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import datasets
import pytest

import fedpeft.data as D
from fedpeft.data.partition import quantity_sizes
from fedpeft.errors import ConfigError


def synthetic(n: int = 600) -> datasets.Dataset:
    """600 rows, imbalanced labels (300/200/100) and 4 round-robin tasks; ``input`` is the row number."""
    labels = [0] * (n // 2) + [1] * (n // 3) + [2] * (n - n // 2 - n // 3)
    return D.make_dataset(
        {
            "instruction": ["i"] * n,
            "input": [str(i) for i in range(n)],
            "output": ["o"] * n,
            "label": labels,
            "task": [f"t{i % 4}" for i in range(n)],
        }
    )


@pytest.fixture(scope="module")
def data() -> datasets.Dataset:
    return synthetic()


def rows(parts: list[datasets.Dataset]) -> list[list[int]]:
    return [[int(x) for x in p["input"]] for p in parts]


def dominance(parts: list[datasets.Dataset], by: str = "label") -> float:
    """Mean share of each client's most common value."""
    summary = D.partition_summary(parts, by)  # type: ignore[arg-type]
    return sum(max(r["histogram"].values()) / r["size"] for r in summary) / len(summary)


CONFIGS = {
    "iid": D.PartitionConfig("iid", 10),
    "dirichlet": D.PartitionConfig("dirichlet", 10, alpha=0.3),
    "natural": D.PartitionConfig("natural", 4, by="task"),
    "shard": D.PartitionConfig("shard", 10, shards_per_client=2),
    "quantity": D.PartitionConfig("quantity", 10, alpha=1.0, min_partition_size=5),
}


@pytest.mark.parametrize("scheme", sorted(CONFIGS))
def test_every_example_in_exactly_one_client(data: datasets.Dataset, scheme: str) -> None:
    cfg = CONFIGS[scheme]
    parts = D.partition_dataset(data, cfg)
    assert len(parts) == cfg.num_clients
    flat = [r for part in rows(parts) for r in part]
    assert sorted(flat) == list(range(len(data)))
    assert min(len(p) for p in parts) >= cfg.min_partition_size
    assert all(p.column_names == data.column_names for p in parts)
    # partition_indices are row numbers of the caller's dataset (ShardPartitioner sorts internally).
    assert rows(parts) == D.partition_indices(data, cfg)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shard", "quantity"])
def test_same_seed_same_partition_other_seed_differs(data: datasets.Dataset, scheme: str) -> None:
    cfg = CONFIGS[scheme]
    first = D.partition_indices(data, cfg)
    assert D.partition_indices(data, cfg) == first
    other = D.partition_indices(data, dataclasses.replace(cfg, seed=1))
    assert other != first


def test_iid_is_balanced_and_shuffled(data: datasets.Dataset) -> None:
    parts = D.partition_dataset(data, CONFIGS["iid"])
    assert {len(p) for p in parts} == {60}
    assert dominance(parts) < 0.7  # every client sees a mix (the data are sorted by label)


def test_dirichlet_small_alpha_gives_dominated_clients(data: datasets.Dataset) -> None:
    skewed = D.partition_dataset(data, D.PartitionConfig("dirichlet", 10, alpha=0.1))
    flat = D.partition_dataset(data, D.PartitionConfig("dirichlet", 10, alpha=100.0))
    assert dominance(skewed) > 0.8
    assert dominance(flat) < 0.6
    by_task = D.partition_dataset(data, D.PartitionConfig("dirichlet", 6, alpha=0.1, by="task"))
    assert dominance(by_task, "task") > 0.7


def test_natural_gives_one_task_per_client(data: datasets.Dataset) -> None:
    parts = D.partition_dataset(data, CONFIGS["natural"])
    assert [set(p["task"]) for p in parts] == [{"t0"}, {"t1"}, {"t2"}, {"t3"}]
    with pytest.raises(ConfigError, match="num_clients=5 is invalid; expected 4, the number of distinct 'task'"):
        D.partition_dataset(data, D.PartitionConfig("natural", 5, by="task"))
    with pytest.raises(ConfigError, match="by='label' is invalid; allowed: 'task'"):
        D.PartitionConfig("natural", 4)


def test_shard_limits_labels_per_client(data: datasets.Dataset) -> None:
    parts = D.partition_dataset(data, D.PartitionConfig("shard", 10, shards_per_client=1))
    # One shard of sorted data spans at most two adjacent labels.
    assert all(len(set(p["label"])) <= 2 for p in parts)
    assert sum(len(set(p["label"])) == 1 for p in parts) >= 7


def test_quantity_skews_sizes_not_labels(data: datasets.Dataset) -> None:
    cfg = D.PartitionConfig("quantity", 10, alpha=0.5, min_partition_size=5)
    sizes = quantity_sizes(len(data), cfg)
    assert sum(sizes) == len(data) and min(sizes) >= 5 and max(sizes) > 3 * min(sizes)
    parts = D.partition_dataset(data, cfg)
    assert [len(p) for p in parts] == sizes
    big = parts[sizes.index(max(sizes))]
    assert len(set(big["label"])) == 3  # content stays IID


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"scheme": "random", "num_clients": 2}, "scheme"),
        ({"scheme": "iid", "num_clients": 0}, "num_clients"),
        ({"scheme": "dirichlet", "num_clients": 2, "alpha": 0.0}, "alpha"),
        ({"scheme": "dirichlet", "num_clients": 2, "alpha": float("inf")}, "alpha"),
        ({"scheme": "iid", "num_clients": 2, "by": "category"}, "by"),
        ({"scheme": "shard", "num_clients": 2, "shards_per_client": 0}, "shards_per_client"),
        ({"scheme": "iid", "num_clients": 2, "min_partition_size": 0}, "min_partition_size"),
        ({"scheme": "iid", "num_clients": 2, "seed": -1}, "seed"),
        ({"scheme": "iid", "num_clients": 2.5}, "num_clients"),
    ],
)
def test_config_validation_names_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        D.PartitionConfig(**kwargs)
    assert err.value.field == field


def test_scheme_error_lists_the_schemes() -> None:
    with pytest.raises(ConfigError, match="'dirichlet', 'iid', 'natural', 'quantity', 'shard'"):
        D.PartitionConfig("random", 2)  # type: ignore[arg-type]


def test_data_dependent_errors(data: datasets.Dataset) -> None:
    tiny = synthetic(30)
    with pytest.raises(ConfigError, match="min_partition_size") as err:
        D.partition_dataset(tiny, D.PartitionConfig("dirichlet", 10, alpha=0.05, min_partition_size=3))
    assert "lower min_partition_size, raise alpha or use fewer clients" in str(err.value)
    with pytest.raises(ConfigError, match="num_clients"):
        D.partition_dataset(tiny, D.PartitionConfig("iid", 31))
    with pytest.raises(ConfigError, match="min_partition_size"):
        D.partition_dataset(tiny, D.PartitionConfig("quantity", 10, min_partition_size=4))
    generation = D.make_dataset({**data.to_dict(), "label": [-1] * len(data)})
    with pytest.raises(ConfigError, match="no class labels"):
        D.partition_dataset(generation, D.PartitionConfig("dirichlet", 4))


def test_summary_histograms_sum_to_sizes(data: datasets.Dataset) -> None:
    parts = D.partition_dataset(data, CONFIGS["dirichlet"])
    summary = D.partition_summary(parts, "label")
    assert [r["client"] for r in summary] == list(range(10))
    for row, part in zip(summary, parts, strict=True):
        assert row["size"] == len(part) == sum(row["histogram"].values())
        assert list(row["histogram"]) == sorted(row["histogram"])
    table = D.format_summary(summary)
    lines = table.splitlines()
    assert lines[0].split() == ["client", "size", "0", "1", "2"] and len(lines) == 11
    assert lines[1].split()[:2] == ["0", str(len(parts[0]))]
    narrow = D.format_summary(D.partition_summary(parts, "task"), max_columns=2)
    assert narrow.splitlines()[0].split()[:3] == ["client", "size", "distinct"]


def test_real_data_partitions(shared_data: Path) -> None:
    sst2 = D.load_dataset("sst2", "dev", shared_data)
    parts = D.partition_dataset(sst2, D.PartitionConfig("dirichlet", 10, alpha=0.5, min_partition_size=10))
    assert sum(len(p) for p in parts) == 872 and min(len(p) for p in parts) >= 10
    dolly = D.load_dataset("dolly", "test", shared_data)
    parts = D.partition_dataset(dolly, D.PartitionConfig("natural", 8, by="task"))
    assert all(len(set(p["task"])) == 1 for p in parts)
    assert sum(len(p) for p in parts) == len(dolly)
