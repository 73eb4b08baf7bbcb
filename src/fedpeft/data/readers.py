"""Strict readers for TSV and JSON Lines files.

They report every problem as :class:`~fedpeft.errors.DataFormatError` naming the file, the 1-based line and the
field, because a user with a 100k-line file needs to know exactly where to look.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from fedpeft.errors import DataFormatError


def read_tsv(path: str | Path, columns: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(line, row)`` for each data row of a tab-separated file with a header row.

    Quotes are data, not syntax (``csv.QUOTE_NONE``): GLUE sentences contain unbalanced quotes.

    Parameters
    ----------
    path:
        The file.
    columns:
        Header names to return; other columns are ignored.

    Raises
    ------
    DataFormatError
        Empty file, a header lacking a column, a row with the wrong number of fields, or bytes that are not UTF-8.
    """
    path = Path(path)
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        try:
            header = next(reader, None)
            if header is None:
                raise DataFormatError(path, 1, None, f"empty file; expected a header row with {', '.join(columns)}")
            for name in columns:
                if name not in header:
                    raise DataFormatError(path, 1, name, f"missing from the header row {header}")
            index = {name: header.index(name) for name in columns}
            for row in reader:
                if not row:  # a blank line (often the last one) carries no example
                    continue
                if len(row) != len(header):
                    # Name the first field that is missing, so "label" shows up for a truncated row.
                    missing = header[len(row)] if len(row) < len(header) else None
                    raise DataFormatError(
                        path,
                        reader.line_num,
                        missing,
                        f"expected {len(header)} tab-separated fields ({', '.join(header)}), got {len(row)}",
                    )
                yield reader.line_num, {name: row[i] for name, i in index.items()}
        except UnicodeDecodeError as err:
            raise DataFormatError(path, reader.line_num + 1, None, f"not UTF-8 text ({err.reason})") from None


def parse_label(value: str, allowed: Sequence[int], path: str | Path, line: int, field: str = "label") -> int:
    """Parse a class index from a text field and check it is one of ``allowed``."""
    try:
        label = int(value.strip())
    except ValueError:
        label = None
    if label is None or label not in allowed:
        raise DataFormatError(path, line, field, f"expected one of {list(allowed)}, got {value!r}")
    return label


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line, object)`` for each non-blank line of a JSON Lines file.

    Raises
    ------
    DataFormatError
        Invalid JSON, or a line whose value is not a JSON object.
    """
    path = Path(path)
    with path.open(encoding="utf-8") as handle:
        line = 0
        try:
            for line, raw in enumerate(handle, start=1):  # line is also read by the except clause
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw)
                except json.JSONDecodeError as err:
                    raise DataFormatError(path, line, None, f"invalid JSON: {err.msg} (column {err.colno})") from None
                if not isinstance(obj, dict):
                    raise DataFormatError(path, line, None, f"expected a JSON object, got {type(obj).__name__}")
                yield line, obj
        except UnicodeDecodeError as err:
            raise DataFormatError(path, line + 1, None, f"not UTF-8 text ({err.reason})") from None


def load_json(path: str | Path) -> Any:
    """Parse a whole JSON file; invalid JSON raises DataFormatError with the line of the error."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as err:
        raise DataFormatError(path, err.lineno, None, f"invalid JSON: {err.msg} (column {err.colno})") from None
    except UnicodeDecodeError as err:
        raise DataFormatError(path, None, None, f"not UTF-8 text ({err.reason})") from None


def get_str(
    obj: Mapping[str, Any],
    key: str,
    path: str | Path,
    line: int | None,
    *,
    required: bool = True,
    allow_empty: bool = True,
    where: str = "",
) -> str:
    """Read a string field of a JSON record with a precise error.

    Parameters
    ----------
    obj:
        The record.
    key:
        Field name.
    path, line:
        Location for the error message (``line`` is None for records inside one JSON document).
    required:
        When False a missing or null field reads as ``""``.
    allow_empty:
        When False an empty or whitespace-only string is an error.
    where:
        Prefix of the field name in messages for nested records, e.g. ``"Instances[3]."``.
    """
    name = where + key
    if key not in obj or obj[key] is None:
        if required:
            raise DataFormatError(path, line, name, "missing")
        return ""
    value = obj[key]
    if not isinstance(value, str):
        raise DataFormatError(path, line, name, f"expected a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise DataFormatError(path, line, name, "empty")
    return value
