"""Split one dataset into federated clients with IID and non-IID schemes, on flwr-datasets partitioners.

Partitioners run on a two-column index table (row number + the ``by`` column), never on the text, and the result
is a list of row numbers per client that :func:`partition_dataset` selects from the original dataset. That keeps
partitioning cheap on 67k rows and lets every scheme (including ShardPartitioner, which sorts) report rows of the
caller's dataset.

Schemes
-------
- ``iid``: a seeded permutation cut into equal contiguous blocks (IidPartitioner).
- ``dirichlet``: label (or task) skew; each class is spread over clients by Dir(alpha) proportions
  (DirichletPartitioner; Yurochkin et al. 2019, Hsu et al. 2019). Small alpha -> clients dominated by one class.
- ``natural``: one client per distinct ``task`` (GroupedNaturalIdPartitioner with groups of one, sorted task names);
  ``num_clients`` must equal the number of tasks.
- ``shard``: sort by ``by``, cut into ``num_clients * shards_per_client`` shards, deal shards at random
  (ShardPartitioner; McMahan et al. 2017). Shard size is rounded up so every example is used.
- ``quantity``: quantity skew with IID content; client sizes are ``min_partition_size`` plus a Dir(alpha) share of
  the rest (Li et al. 2022, "Federated Learning on Non-IID Data Silos"), cut from a seeded permutation
  (SizePartitioner).

Every scheme puts every example in exactly one client and gives every client at least ``min_partition_size``
examples (``natural``: at least one). The same config and dataset always give the same partition.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

import datasets
import numpy as np

from fedpeft.data.base import NO_LABEL, column_values
from fedpeft.errors import ConfigError

if TYPE_CHECKING:
    # flwr_datasets imports matplotlib and seaborn for its plots (~2-3 s): builders import partitioners lazily, so
    # `import fedpeft.data` stays cheap in processes that never partition (each deployment ClientApp message).
    from flwr_datasets.partitioner import Partitioner

Scheme = Literal["iid", "dirichlet", "natural", "shard", "quantity"]
PartitionBy = Literal["label", "task"]

ROW = "__row__"  # index-table column holding the caller's row number

#: DirichletPartitioner gives up after 11 draws that leave a client below min_partition_size; with small alpha that
#: happens often even on SST-2 (2 classes, 10 clients). We retry with this many derived seeds before reporting.
DIRICHLET_RESTARTS = 10


@dataclass(frozen=True)
class PartitionConfig:
    """How to split a dataset over clients.

    Parameters
    ----------
    scheme:
        ``"iid"``, ``"dirichlet"``, ``"natural"``, ``"shard"`` or ``"quantity"`` (see the module docstring).
    num_clients:
        Number of clients (>= 1).
    alpha:
        Dirichlet concentration for ``dirichlet`` (class skew) and ``quantity`` (size skew); smaller is more skewed.
    by:
        Column the non-IID schemes look at: ``"label"`` (class index) or ``"task"``. ``natural`` requires ``"task"``.
    shards_per_client:
        Shards each client gets under ``shard``.
    min_partition_size:
        Fewest examples a client may get (>= 1: an empty client cannot train).
    seed:
        Seed of every random choice; the same seed gives the same partition.
    """

    scheme: Scheme
    num_clients: int
    alpha: float = 0.5
    by: PartitionBy = "label"
    shards_per_client: int = 2
    min_partition_size: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ConfigError("scheme", self.scheme, sorted(SCHEMES))
        if self.by not in get_args(PartitionBy):
            raise ConfigError("by", self.by, get_args(PartitionBy))
        for name, value in (
            ("num_clients", self.num_clients),
            ("shards_per_client", self.shards_per_client),
            ("min_partition_size", self.min_partition_size),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(name, value, "an integer >= 1")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError("seed", self.seed, "an integer >= 0")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, int | float) or not 0 < self.alpha < math.inf:
            raise ConfigError("alpha", self.alpha, "a finite number > 0")
        if self.scheme == "natural" and self.by != "task":
            raise ConfigError("by", self.by, ["task"])


def _iid(index: datasets.Dataset, cfg: PartitionConfig) -> Partitioner:
    from flwr_datasets.partitioner import IidPartitioner

    return IidPartitioner(num_partitions=cfg.num_clients)


def _dirichlet(index: datasets.Dataset, cfg: PartitionConfig, seed: int) -> Partitioner:
    from flwr_datasets.partitioner import DirichletPartitioner

    return DirichletPartitioner(
        num_partitions=cfg.num_clients,
        partition_by=cfg.by,
        alpha=float(cfg.alpha),
        min_partition_size=cfg.min_partition_size,
        self_balancing=False,  # the plain Dirichlet split of the papers; balancing would hide the skew asked for
        shuffle=True,
        seed=seed,
    )


def _natural(index: datasets.Dataset, cfg: PartitionConfig) -> Partitioner:
    from flwr_datasets.partitioner import GroupedNaturalIdPartitioner

    # Groups of one == NaturalIdPartitioner, but with sorted ids and without its progress bar.
    return GroupedNaturalIdPartitioner(partition_by=cfg.by, group_size=1, mode="strict", sort_unique_ids=True)


def _shard(index: datasets.Dataset, cfg: PartitionConfig) -> Partitioner:
    from flwr_datasets.partitioner import ShardPartitioner

    num_shards = cfg.num_clients * cfg.shards_per_client
    return ShardPartitioner(
        num_partitions=cfg.num_clients,
        partition_by=cfg.by,
        # Rounded up and incomplete shard kept: every example lands in some shard, every shard in some client.
        shard_size=math.ceil(len(index) / num_shards),
        keep_incomplete_shard=True,
        shuffle=True,
        seed=cfg.seed,
    )


def quantity_sizes(n: int, cfg: PartitionConfig) -> list[int]:
    """Client sizes for quantity skew: ``min_partition_size`` each plus a Dir(alpha) share of the remainder.

    Rounding leftovers go to the clients with the largest fractional parts, so the sizes sum to ``n`` exactly.
    """
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 1]))
    spare = n - cfg.num_clients * cfg.min_partition_size
    shares = rng.dirichlet(np.full(cfg.num_clients, float(cfg.alpha))) * spare
    sizes = np.floor(shares).astype(np.int64)
    order = np.argsort(-(shares - sizes), kind="stable")
    sizes[order[: spare - int(sizes.sum())]] += 1
    return [int(s) + cfg.min_partition_size for s in sizes]


def _quantity(index: datasets.Dataset, cfg: PartitionConfig) -> Partitioner:
    from flwr_datasets.partitioner import SizePartitioner

    return SizePartitioner(partition_sizes=quantity_sizes(len(index), cfg))


#: Scheme name -> builder of the flwr-datasets partitioner (given the index table and the config).
SCHEMES: dict[str, Callable[[datasets.Dataset, PartitionConfig], Partitioner]] = {
    "iid": _iid,
    "dirichlet": lambda index, cfg: _dirichlet(index, cfg, cfg.seed),
    "natural": _natural,
    "shard": _shard,
    "quantity": _quantity,
}

#: Schemes whose partitioner slices contiguous blocks and so needs the rows permuted first.
_CONTIGUOUS = {"iid", "quantity"}


def _check_fits(dataset: datasets.Dataset, cfg: PartitionConfig) -> None:
    """Data-dependent checks, before any partitioner runs, with errors that say what to change."""
    n = len(dataset)
    if cfg.by not in dataset.column_names:
        raise ConfigError("by", cfg.by, [c for c in get_args(PartitionBy) if c in dataset.column_names])
    if cfg.scheme == "natural":
        groups = len(set(column_values(dataset, cfg.by)))
        if cfg.num_clients != groups:
            raise ConfigError("num_clients", cfg.num_clients, f"{groups}, the number of distinct {cfg.by!r} values")
        return
    if cfg.num_clients * cfg.min_partition_size > n:
        raise ConfigError(
            "num_clients" if cfg.num_clients > n else "min_partition_size",
            cfg.num_clients if cfg.num_clients > n else cfg.min_partition_size,
            f"num_clients * min_partition_size <= {n} (the dataset size)",
        )
    unlabelled = cfg.by == "label" and set(column_values(dataset, "label")) == {NO_LABEL}
    if cfg.scheme in ("dirichlet", "shard") and unlabelled:
        raise ConfigError("by", "label", "'task' (this dataset has no class labels: every label is -1)")
    if cfg.scheme == "shard" and n < cfg.num_clients * cfg.shards_per_client:
        raise ConfigError(
            "shards_per_client", cfg.shards_per_client, f"at most {n // cfg.num_clients} for {n} examples"
        )


def _run(partitioner: Partitioner, index: datasets.Dataset, num_clients: int) -> list[list[int]]:
    partitioner.dataset = index
    with warnings.catch_warnings():  # flwr warns on every Dirichlet redraw; failure is reported by us instead
        warnings.simplefilter("ignore")
        return [column_values(partitioner.load_partition(i), ROW) for i in range(num_clients)]


def partition_indices(dataset: datasets.Dataset, cfg: PartitionConfig) -> list[list[int]]:
    """Row numbers of ``dataset`` for each client.

    Parameters
    ----------
    dataset:
        A dataset with the ``cfg.by`` column (any canonical dataset).
    cfg:
        The partition config.

    Returns
    -------
    list[list[int]]
        ``num_clients`` lists; for ``natural`` client ``i`` holds the ``i``-th task in sorted order.

    Raises
    ------
    ConfigError
        When the config cannot be met on this dataset (too many clients, no labels to skew, a Dirichlet
        ``min_partition_size`` no draw satisfies ...), naming the field to change.
    """
    _check_fits(dataset, cfg)
    n = len(dataset)
    rows = np.arange(n)
    if cfg.scheme in _CONTIGUOUS:
        rows = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0])).permutation(n)
    columns: dict[str, Any] = {ROW: rows.tolist()}
    if cfg.scheme not in _CONTIGUOUS:
        columns[cfg.by] = column_values(dataset, cfg.by)
    index = datasets.Dataset.from_dict(columns)

    if cfg.scheme != "dirichlet":
        try:
            parts = _run(SCHEMES[cfg.scheme](index, cfg), index, cfg.num_clients)
        except ValueError as err:  # flwr-datasets' own feasibility checks, reworded as a config problem
            raise ConfigError("scheme", cfg.scheme, f"settings that fit {n} examples ({err})") from None
        smallest = min(len(p) for p in parts)
        if cfg.scheme != "natural" and smallest < cfg.min_partition_size:
            # Only shard can get here: its last, incomplete shard may be smaller than the minimum.
            raise ConfigError(
                "min_partition_size", cfg.min_partition_size, f"at most {smallest} for this {cfg.scheme} split"
            )
        return parts
    for attempt in range(DIRICHLET_RESTARTS):
        seed = cfg.seed if attempt == 0 else int(np.random.SeedSequence([cfg.seed, attempt]).generate_state(1)[0])
        try:
            return _run(_dirichlet(index, cfg, seed), index, cfg.num_clients)
        except ValueError as err:
            if "max number of attempts" not in str(err):
                raise
    raise ConfigError(
        "min_partition_size",
        cfg.min_partition_size,
        f"a size Dirichlet draws can meet: {DIRICHLET_RESTARTS * 11} draws with alpha={cfg.alpha} over "
        f"{cfg.num_clients} clients and {n} examples all left a client smaller; lower min_partition_size, "
        "raise alpha or use fewer clients",
    )


def partition_dataset(dataset: datasets.Dataset, cfg: PartitionConfig) -> list[datasets.Dataset]:
    """Split ``dataset`` into ``cfg.num_clients`` client datasets (see :func:`partition_indices`)."""
    return [dataset.select(rows) for rows in partition_indices(dataset, cfg)]


def partition_summary(parts: Sequence[datasets.Dataset], by: PartitionBy = "label") -> list[dict[str, Any]]:
    """Size and ``by`` histogram of each client.

    Returns
    -------
    list[dict]
        One ``{"client": i, "size": n, "histogram": {value: count}}`` per client, histogram keys sorted.
    """
    if by not in get_args(PartitionBy):
        raise ConfigError("by", by, get_args(PartitionBy))
    summary = []
    for i, part in enumerate(parts):
        counts = Counter(column_values(part, by)) if len(part) else Counter()
        summary.append({"client": i, "size": len(part), "histogram": dict(sorted(counts.items()))})
    return summary


def format_summary(summary: Sequence[dict[str, Any]], max_columns: int = 8) -> str:
    """Plain-text table of :func:`partition_summary`.

    One column per value when there are at most ``max_columns`` distinct values (labels, a few tasks);
    otherwise the number of distinct values and the dominant one with its share (many tasks).
    """
    values = sorted({v for row in summary for v in row["histogram"]})
    wide = len(values) <= max_columns
    header = ["client", "size", *(str(v) for v in values)] if wide else ["client", "size", "distinct", "top (share)"]
    lines = []
    for row in summary:
        hist = row["histogram"]
        cells = [str(row["client"]), str(row["size"])]
        if wide:
            cells += [str(hist.get(v, 0)) for v in values]
        else:
            top = max(hist, key=hist.__getitem__) if hist else "-"
            share = f"{hist[top] / row['size']:.0%}" if hist else "-"
            cells += [str(len(hist)), f"{top} ({share})"]
        lines.append(cells)
    widths = [max(len(r[j]) for r in [header, *lines]) for j in range(len(header))]
    render = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *lines]]
    return "\n".join(render)
