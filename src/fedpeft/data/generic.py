"""User data: JSON Lines / JSON files and Hugging Face ``datasets`` (hub name or local path).

Both map user field names onto the canonical schema; ``task`` defaults to the file stem or dataset name so that a
single-task file still partitions and reports cleanly.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets

from fedpeft.data.base import COLUMNS, NO_LABEL, DatasetSpec, column_values, empty_columns, make_dataset
from fedpeft.data.readers import get_str, iter_jsonl, load_json
from fedpeft.errors import ConfigError, DataFormatError
from fedpeft.registry import register_dataset


def _json_records(path: Path) -> Iterator[tuple[int | None, str, dict[str, Any]]]:
    """Yield ``(line, where, record)`` from a JSON Lines file or a JSON array (the Alpaca data format)."""
    with path.open(encoding="utf-8") as handle:
        head = handle.read(4096).lstrip()
    if head.startswith("["):
        records = load_json(path)
        for i, obj in enumerate(records):
            if not isinstance(obj, dict):
                raise DataFormatError(path, None, f"[{i}]", f"expected a JSON object, got {type(obj).__name__}")
            yield None, f"[{i}].", obj
    else:
        for line, obj in iter_jsonl(path):
            yield line, "", obj


def load_jsonl(
    path: str | Path,
    instruction_field: str = "instruction",
    input_field: str | None = "input",
    output_field: str = "output",
    task_field: str | None = None,
    *,
    label_field: str | None = None,
    task: str | None = None,
) -> datasets.Dataset:
    """Load instruction data from a JSON Lines file (one object per line) or a JSON array file.

    Parameters
    ----------
    path:
        ``.jsonl`` file, or ``.json`` file holding a list of objects (e.g. Alpaca's ``alpaca_data.json``).
    instruction_field:
        Required, non-empty string field -> ``instruction``.
    input_field:
        Optional string field -> ``input`` (missing or null reads as ``""``); ``None`` to ignore.
    output_field:
        Required string field -> ``output``.
    task_field:
        Optional string field -> ``task``; when ``None`` every row gets ``task`` (default: the file stem).
    label_field:
        Optional integer field (class index >= 0) -> ``label``; otherwise ``label`` is -1.
    task:
        Task name used when ``task_field`` is ``None``.

    Raises
    ------
    DataFormatError
        Naming the file, the 1-based line (JSONL) or record index (JSON array) and the field: invalid JSON, a
        missing required field, a non-string value or a bad label.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError("path", str(path), "an existing .jsonl or .json file")
    default_task = task if task is not None else path.stem
    cols = empty_columns()
    for line, where, obj in _json_records(path):
        cols["instruction"].append(get_str(obj, instruction_field, path, line, allow_empty=False, where=where))
        cols["input"].append(get_str(obj, input_field, path, line, required=False, where=where) if input_field else "")
        cols["output"].append(get_str(obj, output_field, path, line, where=where))
        if task_field is None:
            cols["task"].append(default_task)
        else:
            cols["task"].append(get_str(obj, task_field, path, line, allow_empty=False, where=where))
        label: Any = NO_LABEL
        if label_field is not None:
            label = obj.get(label_field)
            if isinstance(label, bool) or not isinstance(label, int) or label < 0:
                raise DataFormatError(path, line, where + label_field, f"expected a class index >= 0, got {label!r}")
        cols["label"].append(label)
    return make_dataset(cols)


#: File suffix -> ``datasets`` builder name for single local files.
_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}


def _open_hf(name_or_path: str | Path, split: str, cache_dir: str | Path | None, name: str | None) -> datasets.Dataset:
    path = Path(name_or_path)
    cache = str(cache_dir) if cache_dir is not None else None
    if path.is_dir() and any((path / f).is_file() for f in ("dataset_dict.json", "state.json", "dataset_info.json")):
        loaded = datasets.load_from_disk(str(path))  # written by save_to_disk
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ConfigError("split", split, list(loaded))
            return loaded[split]
        return loaded
    if path.is_file():
        builder = _FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ConfigError("name_or_path", str(path), f"a file ending in one of {sorted(_FILE_BUILDERS)}")
        extra = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
        ds = datasets.load_dataset(builder, data_files={split: str(path)}, split=split, cache_dir=cache, **extra)
    else:  # a local folder of data files, or a hub name (downloads unless HF_DATASETS_OFFLINE is set)
        ds = datasets.load_dataset(str(name_or_path), name, split=split, cache_dir=cache)
    if not isinstance(ds, datasets.Dataset):
        raise ConfigError("split", split, "a single split name such as 'train'")
    return ds


def _int_labels(values: Any, column: str) -> list[int]:
    """Class indices from a label column (ClassLabel or int); anything else is a mapping mistake."""
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError("columns", f"label->{column}", f"a column of integer class indices (found {v!r})")
        out.append(v)
    return out


def load_hf_dataset(
    name_or_path: str | Path,
    split: str = "train",
    columns: Mapping[str, str] | None = None,
    *,
    instruction: str | None = None,
    label_words: Sequence[str] = (),
    task: str | None = None,
    config_name: str | None = None,
    cache_dir: str | Path | None = None,
) -> datasets.Dataset:
    """Load a Hugging Face dataset by hub name or local path and map it onto the canonical schema.

    Parameters
    ----------
    name_or_path:
        A folder written by ``save_to_disk``, a local ``.jsonl/.json/.csv/.tsv/.parquet`` file, a local folder of
        data files, or a hub name (the only case that needs the network).
    split:
        Split to load.
    columns:
        Canonical field -> source column, e.g. ``{"instruction": "question", "output": "answer"}``. A canonical
        field that is not mapped is read from the column of the same name when it exists.
    instruction:
        Constant instruction for datasets without an instruction column (e.g. ``"Classify the sentiment."``).
    label_words:
        Word of each class index; with a ``label`` column and no ``output`` column, ``output`` is the word.
    task:
        Constant ``task`` when there is no task column (default: the last path component of ``name_or_path``).
    config_name:
        Hub dataset configuration (``load_dataset(name, config_name)``).
    cache_dir:
        ``datasets`` cache folder (tests point it at a temporary folder).

    Raises
    ------
    ConfigError
        Field ``columns`` when a mapped column is absent or no instruction/output source exists; ``split`` for an
        unknown split.
    """
    ds = _open_hf(name_or_path, split, cache_dir, config_name)
    mapping = dict(columns or {})
    for key, source in mapping.items():
        if key not in COLUMNS:
            raise ConfigError("columns", key, COLUMNS)
        if source not in ds.column_names:
            raise ConfigError("columns", f"{key}->{source}", f"a column of {name_or_path}: {ds.column_names}")
    for key in COLUMNS:
        if key not in mapping and key in ds.column_names:
            mapping[key] = key
    n = len(ds)
    labels = [NO_LABEL] * n
    if "label" in mapping:
        labels = _int_labels(column_values(ds, mapping["label"]), mapping["label"])
    out: dict[str, list[Any]] = empty_columns()
    out["label"] = labels
    if "instruction" in mapping:
        out["instruction"] = [str(v) for v in column_values(ds, mapping["instruction"])]
    elif instruction is not None:
        out["instruction"] = [instruction] * n
    else:
        raise ConfigError("columns", dict(mapping), "a mapping for 'instruction' (or pass instruction=...)")
    out["input"] = [""] * n
    if "input" in mapping:
        out["input"] = [("" if v is None else str(v)) for v in column_values(ds, mapping["input"])]
    if "output" in mapping:
        out["output"] = [str(v) for v in column_values(ds, mapping["output"])]
    elif label_words and "label" in mapping:
        if any(not 0 <= lab < len(label_words) for lab in labels):
            raise ConfigError("label_words", list(label_words), f"one word per label value; labels are {set(labels)}")
        out["output"] = [label_words[lab] for lab in labels]
    else:
        raise ConfigError("columns", dict(mapping), "a mapping for 'output' (or a label column and label_words)")
    origin = Path(str(name_or_path))
    default_task = task if task is not None else (origin.stem if origin.is_file() else origin.name)
    out["task"] = [str(v) for v in column_values(ds, mapping["task"])] if "task" in mapping else [default_task] * n
    return make_dataset(out)


def _load_jsonl_spec(
    split: str,
    data_dir: str | Path | None = None,
    *,
    path: str | Path | None = None,
    instruction_field: str = "instruction",
    input_field: str | None = "input",
    output_field: str = "output",
    task_field: str | None = None,
    label_field: str | None = None,
) -> datasets.Dataset:
    """Registry entry for user files: the config names one file per split (relative paths under ``data_dir``)."""
    if path is None:
        raise ConfigError("path", None, f"the .jsonl/.json file of split {split!r}")
    file = Path(path)
    if not file.is_absolute() and data_dir is not None:
        file = Path(data_dir) / file
    return load_jsonl(file, instruction_field, input_field, output_field, task_field, label_field=label_field)


def _load_hf_spec(
    split: str,
    data_dir: str | Path | None = None,
    *,
    name_or_path: str | None = None,
    columns: Mapping[str, str] | None = None,
    instruction: str | None = None,
    label_words: Sequence[str] = (),
    task: str | None = None,
    config_name: str | None = None,
) -> datasets.Dataset:
    """Registry entry for Hugging Face datasets; ``name_or_path`` is required."""
    if name_or_path is None:
        raise ConfigError("name_or_path", None, "a Hugging Face dataset name or a local path")
    return load_hf_dataset(
        name_or_path,
        split,
        columns,
        instruction=instruction,
        label_words=label_words,
        task=task,
        config_name=config_name,
    )


register_dataset(
    DatasetSpec(
        name="jsonl",
        description="your own JSON Lines / JSON array file (option path=...; fields instruction/input/output)",
        task_type="generation",
        splits=("train", "dev", "test"),
        load=_load_jsonl_spec,
        template="alpaca",
    )
)
register_dataset(
    DatasetSpec(
        name="hf",
        description="a Hugging Face dataset by name or local path (option name_or_path=..., columns={...})",
        task_type="generation",
        splits=("train", "validation", "test"),
        load=_load_hf_spec,
        template="alpaca",
    )
)
