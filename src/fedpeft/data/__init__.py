"""Datasets, prompt templates, tokenization and federated partitioning.

Importing this package registers the built-in datasets (``sst2``, ``qnli``, ``rte``, ``dolly``,
``natural_instructions``, ``jsonl``, ``hf``) in :data:`fedpeft.registry.DATASETS`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets

# Loader modules register their DatasetSpec on import; the imports below are what makes the names exist.
from fedpeft.data import dolly, generic, glue, natural_instructions  # noqa: F401
from fedpeft.data.base import (
    BUNDLED_DIR,
    COLUMNS,
    DATA_DIR_ENV,
    FEATURES,
    NO_LABEL,
    DatasetSpec,
    default_data_dir,
    make_dataset,
    subsample,
)
from fedpeft.data.dolly import load_dolly, read_dolly
from fedpeft.data.generic import FILE_FORMATS, load_file, load_hf_dataset, load_jsonl
from fedpeft.data.glue import load_qnli, load_rte, load_sst2
from fedpeft.data.natural_instructions import (
    NiTask,
    list_ni_tasks,
    load_natural_instructions,
    load_ni_directory,
    read_ni_task,
)
from fedpeft.data.partition import (
    SCHEMES,
    PartitionConfig,
    format_summary,
    partition_dataset,
    partition_indices,
    partition_summary,
)
from fedpeft.data.splits import dolly_is_heldout, ni_task_is_heldout
from fedpeft.data.templates import TEMPLATES, PromptTemplate, build_prompt, get_template, template_names
from fedpeft.data.tokenize import (
    IGNORE_INDEX,
    collate,
    encode_dataset,
    label_word_ids,
    label_word_logits,
    tokenize_example,
)
from fedpeft.registry import DATASETS


def get_dataset(name: str) -> DatasetSpec:
    """The registered :class:`DatasetSpec` called ``name`` (ConfigError field ``dataset`` lists the names)."""
    return DATASETS.get(name, "dataset")


def load_dataset(
    name: str, split: str = "train", data_dir: str | Path | None = None, limit: int | None = None, **options: Any
) -> datasets.Dataset:
    """Load ``split`` of the registered dataset ``name`` in the canonical schema.

    Not to be confused with ``datasets.load_dataset``: this takes fedpeft registry names (``"sst2"``, ``"dolly"``
    ...); Hugging Face datasets go through ``load_dataset("hf", split, name_or_path=...)`` or
    :func:`load_hf_dataset`. See :meth:`DatasetSpec.load_split` for the arguments.
    """
    return get_dataset(name).load_split(split, data_dir=data_dir, limit=limit, **options)


__all__ = [
    "BUNDLED_DIR",
    "COLUMNS",
    "DATA_DIR_ENV",
    "FEATURES",
    "FILE_FORMATS",
    "IGNORE_INDEX",
    "NO_LABEL",
    "SCHEMES",
    "TEMPLATES",
    "DatasetSpec",
    "NiTask",
    "PartitionConfig",
    "PromptTemplate",
    "build_prompt",
    "collate",
    "default_data_dir",
    "dolly_is_heldout",
    "encode_dataset",
    "format_summary",
    "get_dataset",
    "get_template",
    "label_word_ids",
    "label_word_logits",
    "list_ni_tasks",
    "load_dataset",
    "load_dolly",
    "load_file",
    "load_hf_dataset",
    "load_jsonl",
    "load_natural_instructions",
    "load_ni_directory",
    "load_qnli",
    "load_rte",
    "load_sst2",
    "make_dataset",
    "ni_task_is_heldout",
    "partition_dataset",
    "partition_indices",
    "partition_summary",
    "read_dolly",
    "read_ni_task",
    "subsample",
    "template_names",
    "tokenize_example",
]
