"""Malformed inputs raise DataFormatError naming the file, the 1-based line (or record) and the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import fedpeft.data as D
from fedpeft.data.glue import RTE, SST2, read_glue_tsv
from fedpeft.errors import DataFormatError


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def expect(err: pytest.ExceptionInfo[DataFormatError], path: Path, line: int | None, field: str | None) -> None:
    message = str(err.value)
    assert path.name in message
    assert err.value.line == line
    assert err.value.field == field
    if line is not None:
        assert f"line {line}" in message
    if field is not None:
        assert repr(field) in message


@pytest.mark.parametrize(
    ("body", "line", "field"),
    [
        ("sentence\tlabel\ngood\t1\nbad\t2\n", 3, "label"),  # label outside 0/1
        ("sentence\tlabel\ngood\t1\nbad\tnegative\n", 3, "label"),  # not an integer
        ("sentence\tlabel\ngood\t1\nno label here\n", 3, "label"),  # missing field
        ("sentence\tlabel\n\t1\n", 2, "sentence"),  # empty text
        ("text\tlabel\ngood\t1\n", 1, "sentence"),  # header lacks the column
        ("", 1, None),  # empty file
    ],
)
def test_tsv_errors(tmp_path: Path, body: str, line: int, field: str | None) -> None:
    path = write(tmp_path / "train.tsv", body)
    with pytest.raises(DataFormatError) as err:
        read_glue_tsv(path, SST2)
    expect(err, path, line, field)


def test_tsv_quotes_are_data(tmp_path: Path) -> None:
    path = write(tmp_path / "dev.tsv", 'premise\thypothesis\tlabel\nHe said "hi\tA "quote\t0\n')
    ds = read_glue_tsv(path, RTE)
    assert ds[0]["input"] == 'Premise: He said "hi\nHypothesis: A "quote'


def test_tsv_extra_field(tmp_path: Path) -> None:
    path = write(tmp_path / "dev.tsv", "sentence\tlabel\ngood\t1\textra\n")
    with pytest.raises(DataFormatError, match="expected 2 tab-separated fields") as err:
        read_glue_tsv(path, SST2)
    expect(err, path, 2, None)


DOLLY_ROW = {"instruction": "Name a color.", "context": "", "response": "Blue", "category": "open_qa"}


@pytest.mark.parametrize(
    ("second_line", "line", "field"),
    [
        (json.dumps({k: v for k, v in DOLLY_ROW.items() if k != "response"}), 2, "response"),
        (json.dumps({**DOLLY_ROW, "response": 42}), 2, "response"),
        (json.dumps({**DOLLY_ROW, "instruction": "  "}), 2, "instruction"),
        ('{"instruction": "broken",', 2, None),
        ("[1, 2]", 2, None),
    ],
)
def test_dolly_jsonl_errors(tmp_path: Path, second_line: str, line: int, field: str | None) -> None:
    path = write(tmp_path / "dolly.jsonl", json.dumps(DOLLY_ROW) + "\n" + second_line + "\n")
    with pytest.raises(DataFormatError) as err:
        D.read_dolly(path)
    expect(err, path, line, field)


def test_invalid_json_reports_its_line(tmp_path: Path) -> None:
    path = write(tmp_path / "data.jsonl", json.dumps(DOLLY_ROW) + "\n\n" + "{not json}\n")
    with pytest.raises(DataFormatError, match="invalid JSON") as err:
        D.load_jsonl(path, output_field="response")
    expect(err, path, 3, None)  # blank lines still count


def test_jsonl_user_fields(tmp_path: Path) -> None:
    path = write(tmp_path / "mine.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n')
    with pytest.raises(DataFormatError) as err:
        D.load_jsonl(path)
    expect(err, path, 2, "output")
    path = write(tmp_path / "labels.jsonl", '{"instruction": "a", "output": "b", "y": "one"}\n')
    with pytest.raises(DataFormatError) as err:
        D.load_jsonl(path, label_field="y")
    expect(err, path, 1, "y")
    path = write(tmp_path / "array.json", json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c"}]))
    with pytest.raises(DataFormatError) as err:
        D.load_jsonl(path)
    expect(err, path, None, "[1].output")


GOOD = {"input": "x", "output": ["y"]}
NI_TASK = {"Definition": "Do it.", "Instances": [GOOD, {"input": "z", "output": ["w"]}]}


@pytest.mark.parametrize(
    ("task", "field"),
    [
        ({**NI_TASK, "Instances": [GOOD, {"input": "z", "output": []}]}, "Instances[1].output"),
        ({**NI_TASK, "Instances": [GOOD, {"output": ["w"]}]}, "Instances[1].input"),
        ({"Instances": NI_TASK["Instances"]}, "Definition"),
        ({"Definition": "Do it."}, "Instances"),
        ({**NI_TASK, "Definition": [1, 2]}, "Definition"),
    ],
)
def test_ni_json_errors(tmp_path: Path, task: dict, field: str) -> None:
    path = write(tmp_path / "task9.json", json.dumps(task))
    with pytest.raises(DataFormatError) as err:
        D.read_ni_task(path)
    expect(err, path, None, field)


def test_ni_invalid_json_line(tmp_path: Path) -> None:
    path = write(tmp_path / "task9.json", '{\n  "Definition": "Do it.",\n  "Instances": [,]\n}\n')
    with pytest.raises(DataFormatError, match="invalid JSON") as err:
        D.read_ni_task(path)
    expect(err, path, 3, None)
