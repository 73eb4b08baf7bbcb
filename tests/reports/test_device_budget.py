"""Phases, bytes per payload kind and the device budget: loaded into RunRecord, rendered in report.md / report.html and
in the comparison; older run directories without them still load and render."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
from synthetic_runs import (
    BYTES,
    FED_SUMMARY,
    GLOBAL_ACC,
    PARAMS_HELD,
    PHASED_SUMMARY,
    PREPARE,
    PREPARE_FIELDS,
    federated_events,
    make_central_run,
    make_fed_run,
    make_phased_run,
    phased_events,
    write_run,
)

from fedpeft.errors import DataFormatError
from fedpeft.reports import compare_runs, format_table, load_run, write_report
from fedpeft.reports.store import BudgetRow, ByteCounts, DeviceBudget, Phase
from fedpeft.reports.tables import format_bytes, format_count, format_flops, format_seconds


def section(md: str, title: str) -> list[str]:
    """The table lines (header, rule, rows) of the ``## title`` section of a markdown report; [] when absent."""
    lines = md.splitlines()
    if f"## {title}" not in lines:
        return []
    start = lines.index(f"## {title}") + 2
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return lines[start:end]


def cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]


def report_md(run: Path) -> str:
    write_report(run)
    return (run / "report" / "report.md").read_text(encoding="utf-8")


# ----------------------------------------------------------------------------------------------------------------------
# Loading


def test_phases_kinds_and_budget_are_loaded(tmp_path: Path) -> None:
    rec = load_run(make_phased_run(tmp_path))
    assert PREPARE == {"seconds": 1.5, "bytes_up": 65536, "bytes_down": 0}
    assert rec.phases == {
        "prepare": Phase("prepare", 0, 1.5, 65536, 0, PREPARE_FIELDS),
        "finish": Phase("finish", 4, 0.25, 0, 12288, {}),
    }
    assert [p.name for p in rec.ordered_phases] == ["prepare", "finish"]
    assert rec.bytes_by_kind == {
        "adapter": ByteCounts(10 * BYTES, 12 * BYTES),
        "features": ByteCounts(65536, 0),
        "ids": ByteCounts(0, 12288),
    }
    budget = rec.device_budget
    assert isinstance(budget, DeviceBudget)
    assert [cid for cid, _ in budget.sorted_clients()] == ["0", "1", "2"]
    assert budget.kinds == ["adapter", "features", "ids"]
    one = budget.per_client["1"]
    assert (one.rounds, one.seconds, one.seconds_per_round, one.flops, one.flops_per_round) == (
        3,
        3.0,
        1.0,
        2.7e9,
        9e8,
    )
    assert (one.trainable_params, one.params_held, one.messages) == (81920, PARAMS_HELD, 4)
    assert (one.bytes_up, one.bytes_down) == (3 * BYTES + 16384, 4 * BYTES + 4096)
    assert one.bytes_by_kind["features"] == ByteCounts(16384, 0)
    assert budget.max is not None and budget.mean is not None
    assert (budget.max.seconds_per_round, budget.max.flops_per_round, budget.max.params_held) == (
        1.0,
        1.2e9,
        PARAMS_HELD,
    )
    assert budget.mean.rounds == 3.667 and budget.mean.seconds_per_round == 0.583
    assert budget.max.bytes_by_kind == {}  # summary.json keeps payload kinds in the per-client rows only


def test_phase_events_are_not_metric_series(tmp_path: Path) -> None:
    events = phased_events()
    prepare = next(e for e in events if e["event"] == "phase")
    prepare["accuracy"] = 0.99  # an algorithm field that looks like a metric
    rec = load_run(write_run(tmp_path / "phased", events, PHASED_SUMMARY, truncated_tail=False))
    assert rec.global_metrics["accuracy"] == GLOBAL_ACC
    assert set(rec.global_metrics) == {"accuracy", "loss"}
    assert rec.round_fields == {"update_norm": {r: 0.1 for r in range(1, 5)}}
    assert rec.rounds_done == 4
    # the rounds' own bytes: the phases' transfers are not folded into round 0 or the last round
    assert rec.bytes_up == {1: 3 * BYTES, 2: 2 * BYTES, 3: 3 * BYTES, 4: 2 * BYTES}
    assert rec.total_bytes_up == 10 * BYTES and rec.total_bytes_down == 12 * BYTES
    assert rec.phases["prepare"].fields == {**PREPARE_FIELDS, "accuracy": 0.99}


def test_phases_from_summary_when_the_events_lack_them(tmp_path: Path) -> None:
    rec = load_run(write_run(tmp_path / "no-phase-events", federated_events(), PHASED_SUMMARY))
    assert rec.phases == {
        "prepare": Phase("prepare", None, 1.5, 65536, 0, {}),
        "finish": Phase("finish", None, 0.25, 0, 12288, {}),
    }


def test_run_in_progress_has_phase_events_but_no_budget(tmp_path: Path) -> None:
    rec = load_run(write_run(tmp_path / "running", phased_events()[:-1]))  # killed before finish, no summary.json
    assert list(rec.phases) == ["prepare"]
    assert rec.device_budget is None and rec.bytes_by_kind == {}
    md = report_md(rec.path)
    assert section(md, "Phases")[2:] == ["| prepare | 1.500 | 64.0 KiB | 0 B | clusters=2, feature_dim=64 |"]
    assert section(md, "Device budget") == [] and section(md, "Bytes by payload kind") == []


def test_older_run_without_the_new_fields_loads(tmp_path: Path) -> None:
    rec = load_run(make_fed_run(tmp_path))
    assert rec.phases == {} and rec.bytes_by_kind == {} and rec.device_budget is None


def test_partial_budget_rows_load_with_missing_fields(tmp_path: Path) -> None:
    summary = copy.deepcopy(PHASED_SUMMARY)
    summary["device_budget"] = {"per_client": {"0": {"rounds": 2, "seconds_per_round": 0.5}}}
    rec = load_run(write_run(tmp_path / "partial", federated_events(), summary))
    assert rec.device_budget == DeviceBudget({"0": BudgetRow(rounds=2, seconds_per_round=0.5)})
    rows = section(report_md(rec.path), "Device budget")
    assert rows[2:] == ["| 0 | 2 | 0.500 | - | - | - | - | - |"]  # no max / mean rows, no payload-kind columns


@pytest.mark.parametrize(
    ("key", "value", "field"),
    [
        ("device_budget", [1, 2], "device_budget"),
        ("device_budget", {"per_client": {"0": 5}}, "device_budget.per_client.0"),
        ("bytes_by_kind", {"adapter": [1, 2]}, "bytes_by_kind.adapter"),
        ("phases", "prepare", "phases"),
    ],
)
def test_malformed_new_fields_are_clear_errors(tmp_path: Path, key: str, value: object, field: str) -> None:
    run = make_fed_run(tmp_path)
    (run / "summary.json").write_text(json.dumps({**FED_SUMMARY, key: value}))
    with pytest.raises(DataFormatError, match=rf"summary\.json: field '{re.escape(field)}': expected a JSON object"):
        load_run(run)


# ----------------------------------------------------------------------------------------------------------------------
# Rendering


def test_formatters() -> None:
    assert [format_bytes(n) for n in (None, 0, 1023, 16384, 4 * BYTES, 3 * 2**30)] == [
        "-",
        "0 B",
        "1023 B",
        "16.0 KiB",
        "1.2 MiB",  # 1.25 MiB, rounded half to even
        "3.0 GiB",
    ]
    assert [format_flops(n) for n in (None, 0, 999, 1.2e9, 9e8, 3.5e12)] == [
        "-",
        "0 FLOP",
        "999 FLOP",
        "1.2 GFLOP",
        "900.0 MFLOP",
        "3.5 TFLOP",
    ]
    assert [format_count(n) for n in (None, 1989248, 2.0, 3.667)] == ["-", "1,989,248", "2", "3.7"]
    assert format_seconds(0.5) == "0.500" and format_seconds(None) == "-"


def test_report_has_budget_phases_and_kind_tables(tmp_path: Path) -> None:
    run = make_phased_run(tmp_path)
    md = report_md(run)
    budget = section(md, "Device budget")
    assert budget[0] == (
        "| client | rounds | s/round | FLOPs/round | trainable params | params held | up | down "
        "| adapter up | adapter down | features up | features down | ids up | ids down |"
    )
    assert budget[1] == "|---|" + "---:|" * 13  # every column but the client is right-aligned
    assert budget[2:] == [
        # client 0: 4 rounds, 2.0 s, 4.8 GFLOP; up 4 x 320 KiB adapter + 16 KiB features; down 4 x 320 KiB + 4 KiB ids
        "| 0 | 4 | 0.500 | 1.2 GFLOP | 81,920 | 1,989,248 | 1.3 MiB | 1.3 MiB | 1.2 MiB | 1.2 MiB "
        "| 16.0 KiB | 0 B | 0 B | 4.0 KiB |",
        "| 1 | 3 | 1.000 | 900.0 MFLOP | 81,920 | 1,989,248 | 976.0 KiB | 1.3 MiB | 960.0 KiB | 1.2 MiB "
        "| 16.0 KiB | 0 B | 0 B | 4.0 KiB |",
        "| 2 | 4 | 0.250 | 1.2 GFLOP | 81,920 | 1,989,248 | 992.0 KiB | 1.3 MiB | 960.0 KiB | 1.2 MiB "
        "| 32.0 KiB | 0 B | 0 B | 4.0 KiB |",
        "| max | 4 | 1.000 | 1.2 GFLOP | 81,920 | 1,989,248 | 1.3 MiB | 1.3 MiB | 1.2 MiB | 1.2 MiB "
        "| 32.0 KiB | 0 B | 0 B | 4.0 KiB |",
        # mean rounds 11/3, FLOPs/round (1.2 + 0.9 + 1.2) / 3 G, up (1296 + 976 + 992) / 3 KiB, features 64 / 3 KiB
        "| mean | 3.7 | 0.583 | 1.1 GFLOP | 81,920 | 1,989,248 | 1.1 MiB | 1.3 MiB | 1.0 MiB | 1.2 MiB "
        "| 21.3 KiB | 0 B | 0 B | 4.0 KiB |",
    ]
    assert section(md, "Phases") == [
        "| phase | seconds | up | down | details |",
        "|---|---:|---:|---:|---|",
        "| prepare | 1.500 | 64.0 KiB | 0 B | clusters=2, feature_dim=64 |",
        "| finish | 0.250 | 0 B | 12.0 KiB |  |",
    ]
    assert section(md, "Bytes by payload kind") == [
        "| kind | up | down |",
        "|---|---:|---:|",
        "| adapter | 3.1 MiB | 3.8 MiB |",  # 10 and 12 transfers of 320 KiB
        "| features | 64.0 KiB | 0 B |",
        "| ids | 0 B | 12.0 KiB |",
        "| total | 3.2 MiB | 3.8 MiB |",
    ]
    assert "the prepare and finish phases add 64.0 KiB up and 12.0 KiB down" in md
    titles = [line[3:] for line in md.splitlines() if line.startswith("## ")]
    assert titles == [
        "Configuration",
        "Metrics",
        "Communication",
        "Bytes by payload kind",
        "Phases",
        "Device budget",
        "Rejected and failed updates",
    ]

    page = (run / "report" / "report.html").read_text(encoding="utf-8")
    for title in ("Device budget", "Phases", "Bytes by payload kind"):
        assert f"<h2>{title}</h2>" in page
    num = "".join(
        f'<td class="num">{v}</td>'
        for v in ("3", "1.000", "900.0 MFLOP", "81,920", "1,989,248", "976.0 KiB", "1.3 MiB", "960.0 KiB")
    )
    assert f"<tr><td>1</td>{num}" in page
    assert "<tr><td>prepare</td>" in page and "<td>clusters=2, feature_dim=64</td>" in page
    assert '<tr><td>ids</td><td class="num">0 B</td><td class="num">12.0 KiB</td></tr>' in page


def test_budget_with_adapters_only_has_no_kind_columns(tmp_path: Path) -> None:
    summary = copy.deepcopy(PHASED_SUMMARY)
    for row in summary["device_budget"]["per_client"].values():
        row["bytes_by_kind"] = {"adapter": row["bytes_by_kind"]["adapter"]}
    del summary["phases"]
    md = report_md(write_run(tmp_path / "adapters-only", federated_events(), summary))
    budget = section(md, "Device budget")
    assert cells(budget[0]) == [
        "client",
        "rounds",
        "s/round",
        "FLOPs/round",
        "trainable params",
        "params held",
        "up",
        "down",
    ]
    assert all(len(cells(line)) == 8 for line in budget[2:]) and len(budget) == 2 + 5
    assert section(md, "Phases") == []


def test_older_run_still_renders_without_the_new_sections(tmp_path: Path) -> None:
    run = make_fed_run(tmp_path)
    md = report_md(run)
    page = (run / "report" / "report.html").read_text(encoding="utf-8")
    for title in ("Device budget", "Phases", "Bytes by payload kind"):
        assert section(md, title) == [] and f"<h2>{title}</h2>" not in page
    assert section(md, "Communication")[2] == "| total | 3.1 MiB | 3.8 MiB | 6.9 MiB |"
    assert "phase" not in md
    central = make_central_run(tmp_path)
    md = report_md(central)
    assert section(md, "Metrics")[2] == "| accuracy | 0.5000 | 0.8100 |"
    assert section(md, "Communication") == [] and section(md, "Device budget") == []


def test_comparison_has_budget_max_columns(tmp_path: Path) -> None:
    phased = make_phased_run(tmp_path)
    old = make_fed_run(tmp_path, name="fedavg-old")
    central = make_central_run(tmp_path)
    page = compare_runs([phased, old, central], tmp_path / "cmp")
    md = (tmp_path / "cmp" / "comparison.md").read_text(encoding="utf-8").splitlines()
    assert cells(md[0])[-3:] == ["max_s_per_round", "max_flops_per_round", "max_params_held"]
    assert [cells(line)[-3:] for line in md[2:]] == [
        ["1.000", "1.2 GFLOP", "1,989,248"],  # the largest per-client values of the budget
        ["-", "-", "-"],  # no device budget in an older run
        ["-", "-", "-"],  # centralized
    ]
    html = page.read_text(encoding="utf-8")
    assert "<th>max_flops_per_round</th>" in html
    assert '<td class="num">1.000</td><td class="num">1.2 GFLOP</td><td class="num">1,989,248</td></tr>' in html
    lines = format_table([load_run(phased), load_run(old)]).splitlines()
    assert lines[0].split()[-3:] == ["max_s_per_round", "max_flops_per_round", "max_params_held"]
    assert lines[2].split()[-4:] == ["1.000", "1.2", "GFLOP", "1,989,248"]
    assert lines[3].split()[-3:] == ["-", "-", "-"]
