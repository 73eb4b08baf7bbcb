"""User data: files (JSON Lines, JSON array, CSV, TSV, Parquet) and Hugging Face ``datasets`` (hub name or path).

Both map user field names onto the canonical schema; ``task`` defaults to the file stem or dataset name so that a
single-task file still partitions and reports cleanly. A recipe reaches them through ``data.train_file`` /
``data.eval_file`` (the spec's ``file_option``), ``data.fields`` (the ``fields`` option) and ``[data.options]``.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets

from fedpeft.data.base import COLUMNS, NO_LABEL, DatasetSpec, column_values, empty_columns, make_dataset
from fedpeft.data.readers import get_str, iter_jsonl, load_json
from fedpeft.errors import ConfigError, DataFormatError
from fedpeft.registry import register_dataset

Record = tuple[int | None, str, dict[str, Any]]  # (1-based line or None, field prefix such as "[3].", record)


def _json_records(path: Path) -> Iterator[Record]:
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


def _delimited_records(path: Path, delimiter: str) -> Iterator[Record]:
    """Rows of a CSV / TSV file with a header row, as records keyed by the header (line numbers as in an editor)."""
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        try:
            header = next(reader, None)
            if header is None:
                raise DataFormatError(path, 1, None, "empty file; expected a header row naming the fields")
            for row in reader:
                if not row:  # a blank line carries no example
                    continue
                if len(row) != len(header):
                    # Name the first missing field, so a truncated row points at what it lacks.
                    missing = header[len(row)] if len(row) < len(header) else None
                    expected = f"expected {len(header)} fields ({', '.join(header)}), got {len(row)}"
                    raise DataFormatError(path, reader.line_num, missing, expected)
                yield reader.line_num, "", dict(zip(header, row, strict=True))
        except UnicodeDecodeError as err:
            raise DataFormatError(path, reader.line_num + 1, None, f"not UTF-8 text ({err.reason})") from None
        except csv.Error as err:
            raise DataFormatError(path, reader.line_num, None, f"invalid CSV: {err}") from None


def _parquet_records(path: Path) -> Iterator[Record]:
    """Rows of a Parquet file; there are no lines, so a record is named by its 0-based index (``[i].field``)."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for a damaged file; all mean "not Parquet"
        raise DataFormatError(path, None, None, f"not a readable Parquet file ({err})") from None
    for i, obj in enumerate(table.to_pylist()):
        yield None, f"[{i}].", obj


#: File suffix -> reader of its records: the format comes from the extension (``.json`` may also hold JSON Lines).
FILE_FORMATS: dict[str, Callable[[Path], Iterator[Record]]] = {
    ".jsonl": _json_records,
    ".json": _json_records,
    ".csv": lambda path: _delimited_records(path, ","),
    ".tsv": lambda path: _delimited_records(path, "\t"),
    ".parquet": _parquet_records,
}


def _records(path: Path) -> Iterator[Record]:
    if not path.is_file():
        raise ConfigError("path", str(path), f"an existing data file ({', '.join(FILE_FORMATS)})")
    reader = FILE_FORMATS.get(path.suffix.lower())
    if reader is None:
        raise ConfigError("path", str(path), f"a file ending in one of {list(FILE_FORMATS)}")
    return reader(path)


def _label(obj: Mapping[str, Any], key: str, path: Path, line: int | None, where: str) -> int:
    """A class index >= 0; CSV cells are text, so a string of digits counts too."""
    value = obj.get(key)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DataFormatError(path, line, where + key, f"expected a class index >= 0, got {value!r}")
    return value


def _read_rows(
    path: Path,
    fields: Mapping[str, str | None],
    default_task: str,
    *,
    task_required: bool,
) -> datasets.Dataset:
    """Map every record of ``path`` onto the canonical schema; ``fields`` maps canonical name -> record key.

    ``instruction`` and ``output`` are required (``instruction`` non-empty), ``input`` optional; ``task`` is required
    when ``task_required``, else read when present and ``default_task`` otherwise; ``label`` is read only when mapped.
    """
    cols = empty_columns()
    instruction, inp, output = fields["instruction"], fields.get("input"), fields["output"]
    task_key, label_key = fields.get("task"), fields.get("label")
    assert instruction is not None and output is not None
    for line, where, obj in _records(path):
        cols["instruction"].append(get_str(obj, instruction, path, line, allow_empty=False, where=where))
        cols["input"].append(get_str(obj, inp, path, line, required=False, where=where) if inp else "")
        cols["output"].append(get_str(obj, output, path, line, where=where))
        task = ""
        if task_key is not None:
            required = task_required
            task = get_str(obj, task_key, path, line, required=required, allow_empty=not required, where=where)
        cols["task"].append(task if task.strip() else default_task)
        cols["label"].append(NO_LABEL if label_key is None else _label(obj, label_key, path, line, where))
    if not cols["instruction"]:
        raise DataFormatError(path, None, None, "no examples (the file holds no records)")
    return make_dataset(cols)


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
        ``.jsonl`` file, or ``.json`` file holding a list of objects (e.g. Alpaca's ``alpaca_data.json``); CSV, TSV
        and Parquet files are read too (format from the extension, see :data:`FILE_FORMATS`).
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
    fields = {
        "instruction": instruction_field,
        "input": input_field,
        "output": output_field,
        "task": task_field,
        "label": label_field,
    }
    return _read_rows(path, fields, task if task is not None else path.stem, task_required=True)


def load_file(
    path: str | Path, fields: Mapping[str, str] | None = None, *, task: str | None = None
) -> datasets.Dataset:
    """Load your own examples from a JSON Lines, JSON array, CSV, TSV or Parquet file (format from the extension).

    Parameters
    ----------
    path:
        The file (see :data:`FILE_FORMATS`).
    fields:
        Canonical field -> the file's field, e.g. ``{"instruction": "question", "output": "answer"}``. Unmapped
        ``instruction`` / ``input`` / ``output`` / ``task`` are read from fields of those names (``input`` and
        ``task`` may be absent); ``label`` is read only when mapped. A mapped ``task`` is required in every record;
        without one, records lacking ``task`` get ``task`` (default: the file stem).
    task:
        Task name of records without one.

    Raises
    ------
    DataFormatError
        Naming the file, the line (JSON Lines, CSV, TSV) or record index (JSON array, Parquet) and the field.
    ConfigError
        Field ``fields`` for a key that is not a canonical field; ``path`` for a missing file or unknown extension.
    """
    mapping = dict(fields or {})
    for key in mapping:
        if key not in COLUMNS:
            raise ConfigError("fields", key, COLUMNS)
    path = Path(path)
    resolved: dict[str, str | None] = {n: mapping.get(n, n) for n in ("instruction", "input", "output", "task")}
    resolved["label"] = mapping.get("label")
    return _read_rows(path, resolved, task if task is not None else path.stem, task_required="task" in mapping)


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
    fields: Mapping[str, str] | None = None,
    task: str | None = None,
) -> datasets.Dataset:
    """Registry entry for user files: one file per split (``data.train_file`` / ``data.eval_file`` arrive as
    ``path``; a relative path is read under ``data_dir`` when one is given)."""
    if path is None:
        raise ConfigError("path", None, f"the data file of split {split!r} (data.train_file / data.eval_file)")
    file = Path(path)
    if not file.is_absolute() and data_dir is not None:
        file = Path(data_dir) / file
    return load_file(file, fields, task=task)


def _load_hf_spec(
    split: str,
    data_dir: str | Path | None = None,
    *,
    name_or_path: str | None = None,
    file: str | None = None,
    columns: Mapping[str, str] | None = None,
    fields: Mapping[str, str] | None = None,
    instruction: str | None = None,
    label_words: Sequence[str] = (),
    task: str | None = None,
    config_name: str | None = None,
) -> datasets.Dataset:
    """Registry entry for Hugging Face datasets: ``name_or_path`` (a hub name or a folder holding its splits,
    ``[data.options]``), or ``file`` (one file or ``save_to_disk`` folder per split: ``data.train_file`` /
    ``data.eval_file``). ``fields`` (``data.fields``) is ``columns`` under the recipe's name."""
    if (name_or_path is None) == (file is None):
        raise ConfigError("name_or_path", name_or_path, "a Hugging Face dataset name or local path, or data files")
    return load_hf_dataset(
        file if file is not None else str(name_or_path),
        split,
        {**(columns or {}), **(fields or {})},
        instruction=instruction,
        label_words=label_words,
        task=task,
        config_name=config_name,
    )


register_dataset(
    DatasetSpec(
        name="jsonl",
        description="your own file: JSON Lines, JSON array, CSV, TSV or Parquet (data.train_file, data.fields)",
        task_type="generation",
        splits=("train", "dev", "test"),
        load=_load_jsonl_spec,
        template="alpaca",
        file_option="path",
    )
)
register_dataset(
    DatasetSpec(
        name="hf",
        description="a Hugging Face dataset by name or local path (data.options.name_or_path, data.fields)",
        task_type="generation",
        splits=("train", "validation", "test"),
        load=_load_hf_spec,
        template="alpaca",
        file_option="file",
    )
)
