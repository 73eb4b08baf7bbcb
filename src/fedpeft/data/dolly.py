"""databricks-dolly-15k: human-written instruction/response pairs in 8 categories (CC BY-SA 3.0).

``task`` is the Dolly category, which gives a natural non-IID split (one category per client) and the task labels
FL-TAC clusters on. Dolly has no official split: :func:`fedpeft.data.splits.dolly_is_heldout` defines ours.
``heldout_categories`` keeps whole categories out of ``train`` and ``test``; split ``unseen`` serves every row of
them (unseen-category generalisation, as FedHDS holds out summarization).

References
----------
Conover et al., "Free Dolly: Introducing the World's First Truly Open Instruction-Tuned LLM", Databricks, 2023.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import datasets

from fedpeft.data.base import NO_LABEL, DatasetSpec, empty_columns, make_dataset, resolve_path
from fedpeft.data.readers import get_str, iter_jsonl
from fedpeft.data.splits import dolly_is_heldout
from fedpeft.errors import ConfigError
from fedpeft.registry import register_dataset

DOLLY_FILE = "dolly15k/databricks-dolly-15k.jsonl"
DOLLY_SPLITS = ("train", "test", "unseen")
DOLLY_CATEGORIES = (
    "brainstorming",
    "classification",
    "closed_qa",
    "creative_writing",
    "general_qa",
    "information_extraction",
    "open_qa",
    "summarization",
)


def read_dolly(path: str | Path, split: str | None = None, heldout_categories: Sequence[str] = ()) -> datasets.Dataset:
    """Read a Dolly-format JSONL file (``instruction``, ``context``, ``response``, ``category``).

    Parameters
    ----------
    path:
        The JSONL file.
    split:
        ``"train"``, ``"test"`` (rows where :func:`dolly_is_heldout` is True), ``"unseen"`` (every row of
        ``heldout_categories``) or ``None`` for every row.
    heldout_categories:
        Categories kept out of ``train`` and ``test``.

    Raises
    ------
    DataFormatError
        Invalid JSON, a missing or non-string field, or an empty instruction/response/category.
    """
    if split is not None and split not in DOLLY_SPLITS:
        raise ConfigError("split", split, DOLLY_SPLITS)
    if isinstance(heldout_categories, str):  # a bare string would be read as a list of characters
        raise ConfigError("heldout_categories", heldout_categories, "a list of category names")
    unknown = [c for c in heldout_categories if c not in DOLLY_CATEGORIES]
    if unknown:
        raise ConfigError("heldout_categories", unknown, DOLLY_CATEGORIES)
    if split == "unseen" and not heldout_categories:
        raise ConfigError("heldout_categories", [], "at least one category for split 'unseen'")
    held = set(heldout_categories)
    cols = empty_columns()
    for line, obj in iter_jsonl(path):
        instruction = get_str(obj, "instruction", path, line, allow_empty=False)
        context = get_str(obj, "context", path, line, required=False)
        response = get_str(obj, "response", path, line, allow_empty=False)
        category = get_str(obj, "category", path, line, allow_empty=False)
        if split == "unseen":
            if category not in held:
                continue
        elif split is not None and (category in held or dolly_is_heldout(instruction) != (split == "test")):
            continue
        cols["instruction"].append(instruction)
        cols["input"].append(context)
        cols["output"].append(response)
        cols["label"].append(NO_LABEL)
        cols["task"].append(category)
    return make_dataset(cols)


def load_dolly(
    split: str, data_dir: str | Path | None = None, *, heldout_categories: Sequence[str] = ()
) -> datasets.Dataset:
    """Load a Dolly split from ``<data_dir>/dolly15k/databricks-dolly-15k.jsonl``.

    Parameters
    ----------
    split:
        ``"train"`` or ``"test"`` (about 10% of rows, chosen by a hash of the instruction).
    data_dir:
        Data directory; see :meth:`DatasetSpec.load_split`.
    heldout_categories:
        Categories kept out of ``train`` / ``test`` and served by ``"unseen"``.
    """
    return read_dolly(resolve_path(data_dir, DOLLY_FILE), split, heldout_categories)


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
