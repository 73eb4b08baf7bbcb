"""Run folders: unique even when runs start in the same second."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fedpeft.runs import RunDir


def test_runs_started_in_the_same_second_get_distinct_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "strftime", lambda fmt: "20261207-120000")
    out = tmp_path / "nested" / "runs"  # missing parents are created
    dirs = [RunDir.create(out, "job").path for _ in range(3)]
    assert [d.name for d in dirs] == ["job-20261207-120000", "job-20261207-120000-2", "job-20261207-120000-3"]
    assert all(d.is_dir() for d in dirs)
