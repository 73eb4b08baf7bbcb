"""The canonical example schema every loader returns, and the dataset spec the registry holds.

Every loader turns its source format into one Hugging Face ``datasets.Dataset`` with exactly the columns of
:data:`COLUMNS`, so templates, tokenization, partitioners and metrics never look at a source format again.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import datasets
import numpy as np

from fedpeft.errors import ConfigError

#: Column order of every dataset a loader returns.
COLUMNS: tuple[str, ...] = ("instruction", "input", "output", "label", "task")

#: Arrow types of :data:`COLUMNS`; fixed so that datasets from different loaders concatenate.
FEATURES = datasets.Features(
    {
        "instruction": datasets.Value("string"),
        "input": datasets.Value("string"),
        "output": datasets.Value("string"),
        "label": datasets.Value("int64"),
        "task": datasets.Value("string"),
    }
)

#: ``label`` of an example that is not a classification example.
NO_LABEL = -1

#: Environment variable naming the data directory (the layout of ../shared/data).
DATA_DIR_ENV = "FEDPEFT_DATA_DIR"

#: Data shipped inside the package (SST-2), so the default job runs offline from a pip install.
BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"

TaskType = Literal["classification", "generation"]


def make_dataset(columns: Mapping[str, Sequence[Any]]) -> datasets.Dataset:
    """Build a dataset in the canonical schema from column lists.

    Parameters
    ----------
    columns:
        A mapping with exactly the keys of :data:`COLUMNS`, each a sequence of equal length.

    Returns
    -------
    datasets.Dataset
        In-memory dataset with the :data:`FEATURES` schema.
    """
    if set(columns) != set(COLUMNS):
        raise ValueError(f"canonical columns are {COLUMNS}, got {sorted(columns)}")
    return datasets.Dataset.from_dict({c: list(columns[c]) for c in COLUMNS}, features=FEATURES)


def column_values(dataset: datasets.Dataset, name: str) -> list[Any]:
    """All values of one column as a list.

    ``dataset[name]`` is a lazy ``Column`` in datasets >= 4 whose iteration decodes one row at a time (~10x slower
    on 67k rows); slicing it fetches the whole column in one Arrow read. Older versions return a list already.
    """
    values = dataset[name]
    return values if isinstance(values, list) else list(values[:])


def empty_columns() -> dict[str, list[Any]]:
    """Fresh column lists for a loader to append rows to."""
    return {c: [] for c in COLUMNS}


def subsample(dataset: datasets.Dataset, limit: int | None, seed: int = 0) -> datasets.Dataset:
    """Return a fixed random subset of ``limit`` rows, kept in file order.

    A random subset rather than the first rows, because several source files are grouped by class or task
    (the first rows of Dolly are all one category), and file order so that results stay easy to inspect.

    Parameters
    ----------
    dataset:
        Any dataset.
    limit:
        Number of rows to keep; ``None`` or a value >= ``len(dataset)`` keeps everything.
    seed:
        Seed of the subset choice; the default makes ``limit`` alone reproducible.
    """
    if limit is None:
        return dataset
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigError("limit", limit, "a positive integer or None")
    if limit >= len(dataset):
        return dataset
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(dataset), size=limit, replace=False))
    return dataset.select(keep.tolist())


def default_data_dir() -> Path | None:
    """Where the public datasets live when no ``data_dir`` is given.

    ``$FEDPEFT_DATA_DIR`` when set; otherwise ``<repo>/../shared/data`` found relative to this file (a source
    checkout next to the shared folder); otherwise ``None`` (a pip install: only bundled data is available).
    """
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env)
    # src/fedpeft/data/base.py -> parents[3] is the repository root; shared/ sits beside it.
    parents = Path(__file__).resolve().parents
    if len(parents) > 4:
        candidate = parents[4] / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return None


def data_dir_is_explicit(data_dir: str | Path | None) -> bool:
    """True when the user chose the data directory (argument or environment), so no fallback may replace it."""
    return data_dir is not None or bool(os.environ.get(DATA_DIR_ENV))


def resolve_path(data_dir: str | Path | None, relative: str) -> Path:
    """Find the file or folder ``relative`` (e.g. ``"glue/qnli/dev.tsv"``) under the data directory.

    Parameters
    ----------
    data_dir:
        Explicit directory, or ``None`` for :func:`default_data_dir`.
    relative:
        Path of the file inside the data directory.

    Raises
    ------
    ConfigError
        Naming field ``data_dir`` when the directory is unknown or lacks the file.
    """
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    if root is None:
        raise ConfigError("data_dir", None, f"a directory containing {relative} (pass data_dir or set ${DATA_DIR_ENV})")
    path = root / relative
    if not path.exists():
        raise ConfigError("data_dir", str(root), f"a directory containing {relative} (not found: {path})")
    return path


@dataclass(frozen=True, kw_only=True)
class DatasetSpec:
    """A named dataset: how to load each split and how to turn an example into a prompt.

    Parameters
    ----------
    name:
        Registry name (``"sst2"``, ``"dolly"`` ...).
    description:
        One line for ``fedpeft list`` and error messages.
    task_type:
        ``"classification"`` (scored by label words, ``label`` >= 0) or ``"generation"`` (``label`` == -1).
    splits:
        Split names :meth:`load_split` accepts.
    load:
        ``load(split, data_dir, **options) -> datasets.Dataset`` in the canonical schema; ``data_dir`` is the
        caller's value (``None`` when not given) so that a loader can fall back to bundled data.
    label_words:
        For classification: the word of each class index (``label_words[label] == output``).
    template:
        Name of the default prompt template in :mod:`fedpeft.data.templates`.
    file_option:
        The loader option that takes a data file, for datasets that read the user's own files: a recipe's
        ``data.train_file`` / ``data.eval_file`` arrive there (``None``: the dataset reads its own corpus).
    """

    name: str
    description: str
    task_type: TaskType
    splits: tuple[str, ...]
    load: Callable[..., datasets.Dataset] = field(repr=False, compare=False)
    label_words: tuple[str, ...] = ()
    template: str = "alpaca"
    file_option: str | None = None

    @property
    def num_labels(self) -> int:
        """Number of classes (0 for generation datasets)."""
        return len(self.label_words)

    def option_names(self) -> list[str]:
        """Keyword options the loader accepts beyond ``split`` and ``data_dir``."""
        params = inspect.signature(self.load).parameters
        return [p for p in params if p not in ("split", "data_dir")]

    def load_split(
        self,
        split: str,
        data_dir: str | Path | None = None,
        limit: int | None = None,
        **options: Any,
    ) -> datasets.Dataset:
        """Load one split in the canonical schema.

        Parameters
        ----------
        split:
            One of :attr:`splits`.
        data_dir:
            Data directory with the layout of ../shared/data. An explicit value always wins; when ``None``,
            ``$FEDPEFT_DATA_DIR``, then ../shared/data next to a source checkout, then bundled data.
        limit:
            Keep a fixed random subset of this many rows (see :func:`subsample`).
        **options:
            Loader-specific options (see :meth:`option_names`).

        Raises
        ------
        ConfigError
            For an unknown split, an unknown option or a missing data directory.
        """
        if split not in self.splits:
            raise ConfigError("split", split, self.splits)
        allowed = self.option_names()
        for key in options:
            if key not in allowed:
                raise ConfigError(f"{self.name} option", key, allowed)
        dataset = self.load(split=split, data_dir=data_dir, **options)
        return subsample(dataset, limit)
