"""databricks-dolly-15k: human-written instruction/response pairs in 8 categories (CC BY-SA 3.0).

``task`` is the Dolly category, which gives a natural non-IID split (one category per client) and the task labels
FL-TAC clusters on. Dolly has no official split: :func:`fedpeft.data.splits.dolly_is_heldout` defines ours.

References
----------
Conover et al., "Free Dolly: Introducing the World's First Truly Open Instruction-Tuned LLM", Databricks, 2023.
"""

from __future__ import annotations

from pathlib import Path

import datasets

from fedpeft.data.base import NO_LABEL, DatasetSpec, empty_columns, make_dataset, resolve_path
from fedpeft.data.readers import get_str, iter_jsonl
from fedpeft.data.splits import dolly_is_heldout
from fedpeft.errors import ConfigError
from fedpeft.registry import register_dataset

DOLLY_FILE = "dolly15k/databricks-dolly-15k.jsonl"
DOLLY_SPLITS = ("train", "test")


def read_dolly(path: str | Path, split: str | None = None) -> datasets.Dataset:
    """Read a Dolly-format JSONL file (``instruction``, ``context``, ``response``, ``category``).

    Parameters
    ----------
    path:
        The JSONL file.
    split:
        ``"train"``, ``"test"`` (rows where :func:`dolly_is_heldout` is True) or ``None`` for every row.

    Raises
    ------
    DataFormatError
        Invalid JSON, a missing or non-string field, or an empty instruction/response/category.
    """
    if split is not None and split not in DOLLY_SPLITS:
        raise ConfigError("split", split, DOLLY_SPLITS)
    cols = empty_columns()
    for line, obj in iter_jsonl(path):
        instruction = get_str(obj, "instruction", path, line, allow_empty=False)
        context = get_str(obj, "context", path, line, required=False)
        response = get_str(obj, "response", path, line, allow_empty=False)
        category = get_str(obj, "category", path, line, allow_empty=False)
        if split is not None and dolly_is_heldout(instruction) != (split == "test"):
            continue
        cols["instruction"].append(instruction)
        cols["input"].append(context)
        cols["output"].append(response)
        cols["label"].append(NO_LABEL)
        cols["task"].append(category)
    return make_dataset(cols)


def load_dolly(split: str, data_dir: str | Path | None = None) -> datasets.Dataset:
    """Load a Dolly split from ``<data_dir>/dolly15k/databricks-dolly-15k.jsonl``.

    Parameters
    ----------
    split:
        ``"train"`` or ``"test"`` (about 10% of rows, chosen by a hash of the instruction).
    data_dir:
        Data directory; see :meth:`DatasetSpec.load_split`.
    """
    return read_dolly(resolve_path(data_dir, DOLLY_FILE), split)


register_dataset(
    DatasetSpec(
        name="dolly",
        description="databricks-dolly-15k instruction following; task = one of 8 categories",
        task_type="generation",
        splits=DOLLY_SPLITS,
        load=load_dolly,
        template="alpaca",
    )
)
