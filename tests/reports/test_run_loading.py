"""fedpeft.reports.load_run: a run directory parsed into exact per-round series, final/best, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from synthetic_runs import (
    BYTES,
    CLIENT_ACC,
    FAILURE,
    GLOBAL_ACC,
    GLOBAL_LOSS,
    REJECTED,
    client_loss,
    federated_events,
    make_central_run,
    make_fed_run,
    round_train_loss,
    write_run,
)

from fedpeft.errors import DataFormatError, FedPeftError
from fedpeft.reports import RunRecord, format_table, load_run


def test_series_are_parsed_exactly(tmp_path: Path) -> None:
    rec = load_run(make_fed_run(tmp_path))
    assert isinstance(rec, RunRecord)
    assert rec.global_metrics["accuracy"] == GLOBAL_ACC
    assert rec.global_metrics["loss"] == GLOBAL_LOSS
    assert set(rec.global_metrics) == {"accuracy", "loss"}  # round/time/event are not metrics
    assert rec.client_metrics["accuracy"] == CLIENT_ACC
    assert set(rec.client_metrics) == {"accuracy", "loss"}  # num_examples is not a metric
    # client 2's update in round 2 was trained (then rejected); client 1 failed in round 4 and logged no training
    assert rec.client_train_loss[2][2] == client_loss(2, 2)
    assert set(rec.client_train_loss[1]) == {1, 2, 3}
    assert rec.client_train_loss[0] == {r: client_loss(r, 0) for r in range(1, 5)}
    assert rec.train_loss == {r: round_train_loss(r) for r in range(1, 5)}
    assert rec.round_fields == {"update_norm": {r: 0.1 for r in range(1, 5)}}  # the algorithm's own round numbers
    assert rec.bytes_up == {1: 3 * BYTES, 2: 2 * BYTES, 3: 3 * BYTES, 4: 2 * BYTES}
    assert rec.bytes_down == {r: 3 * BYTES for r in range(1, 5)}
    assert rec.total_bytes_up == 10 * BYTES
    assert rec.total_bytes_down == 12 * BYTES


def test_incidents_and_partition(tmp_path: Path) -> None:
    rec = load_run(make_fed_run(tmp_path))
    assert [(i.kind, i.round, i.client, i.reason) for i in rec.incidents] == [
        ("rejected", *REJECTED),
        ("failure", *FAILURE),
    ]
    assert [(p.client, p.num_examples, p.counts) for p in rec.partition] == [
        (0, 60, {"0": 50, "1": 10}),
        (1, 40, {"0": 20, "1": 20}),
        (2, 30, {"1": 30}),
    ]
    assert rec.partition_key == "label_counts"


def test_task_partition_uses_task_counts(tmp_path: Path) -> None:
    events = federated_events()
    events[0]["partition"] = [{"client": 0, "num_examples": 7, "task_counts": {"qa": 4, "summarize": 3}}]
    rec = load_run(write_run(tmp_path / "tasks", events))
    assert rec.partition_key == "task_counts"
    assert rec.partition[0].counts == {"qa": 4, "summarize": 3}


def test_initial_final_best(tmp_path: Path) -> None:
    rec = load_run(make_fed_run(tmp_path))
    assert rec.primary_metric == "accuracy"
    assert rec.initial == {"accuracy": 0.5, "loss": 0.71}
    assert rec.final == {"accuracy": 0.7, "loss": 0.62}  # round 4, not the best round
    assert rec.best == {"accuracy": 0.75, "loss": 0.6, "round": 3}
    assert rec.rounds_done == 4


def test_perplexity_is_minimised_and_rouge_preferred_over_it(tmp_path: Path) -> None:
    ppl = [{"event": "eval", "time": float(r), "round": r, "perplexity": p} for r, p in enumerate([30.0, 12.0, 15.0])]
    rec = load_run(write_run(tmp_path / "lm", ppl, truncated_tail=False))
    assert rec.primary_metric == "perplexity"
    assert rec.best == {"perplexity": 12.0, "round": 1}
    assert rec.final == {"perplexity": 15.0}
    gen = [{"event": "eval", "time": 0.0, "round": 0, "rouge_l": 0.2, "perplexity": 9.0, "exact_match": 0.1}]
    assert load_run(write_run(tmp_path / "gen", gen)).primary_metric == "rouge_l"


def test_best_takes_the_earliest_round_on_ties(tmp_path: Path) -> None:
    evs = [{"event": "eval", "time": 0.0, "round": r, "accuracy": a} for r, a in enumerate([0.5, 0.8, 0.8, 0.6])]
    assert load_run(write_run(tmp_path / "tie", evs)).best["round"] == 1


def test_truncated_last_line_is_skipped(tmp_path: Path) -> None:
    rec = load_run(make_fed_run(tmp_path, truncated_tail=True))
    assert rec.skipped_lines == 1
    assert rec.rounds_done == 4  # the half-written round-5 line left no trace
    assert 5 not in rec.client_train_loss[0]


def test_bad_line_in_the_middle_is_an_error_naming_the_line(tmp_path: Path) -> None:
    run = make_fed_run(tmp_path, truncated_tail=False)
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    lines[3] = '{"event": "client_train", "rou\n'
    (run / "metrics.jsonl").write_text("".join(lines))
    with pytest.raises(DataFormatError, match=r"metrics\.jsonl, line 4"):
        load_run(run)


def test_run_in_progress_has_no_summary(tmp_path: Path) -> None:
    rec = load_run(make_fed_run(tmp_path, summary=False))
    assert not rec.finished
    assert rec.summary is None
    assert rec.wall_s == 45.0  # span of the logged events (setup at t, last eval at t + 45)
    # attributes come from the setup event and config.toml instead of summary.json
    assert (rec.get("algorithm"), rec.get("runtime"), rec.get("rounds")) == ("fedavg", "local", 4)
    assert (rec.get("model"), rec.get("dataset"), rec.get("adapter")) == ("tiny-small", "sst2", "lora")
    assert rec.best == {"accuracy": 0.75, "loss": 0.6, "round": 3}


def test_finished_run_reads_summary(tmp_path: Path) -> None:
    rec = load_run(make_fed_run(tmp_path))
    assert rec.finished
    assert rec.wall_s == 61.5
    assert rec.config["adapter"]["r"] == 8


def test_resumed_round_keeps_the_later_value(tmp_path: Path) -> None:
    events = federated_events()
    events += [
        {"event": "resume", "time": 2e9, "round": 3},
        {"event": "eval", "time": 2e9 + 1, "round": 4, "accuracy": 0.8, "loss": 0.5},
    ]
    rec = load_run(write_run(tmp_path / "resumed", events))
    assert rec.resumed_from == [3]
    assert rec.global_metrics["accuracy"][4] == 0.8
    assert rec.best == {"accuracy": 0.8, "loss": 0.5, "round": 4}


def test_centralized_run_loads(tmp_path: Path) -> None:
    rec = load_run(make_central_run(tmp_path))
    assert rec.centralized
    assert rec.train_steps == {0: 0.79, 10: 0.68, 20: 0.55}
    assert rec.stage_metrics == {
        "before": {"accuracy": 0.5, "pred_frac_0": 1.0},
        "after": {"accuracy": 0.81, "pred_frac_0": 0.6},
    }
    assert rec.initial["accuracy"] == 0.5
    assert rec.final["accuracy"] == 0.81
    assert rec.global_metrics == {}
    assert rec.get("steps") == 20


def test_not_a_run_directory(tmp_path: Path) -> None:
    empty = tmp_path / "just-a-folder"
    empty.mkdir()
    (empty / "notes.txt").write_text("hello")
    with pytest.raises(FedPeftError, match="just-a-folder.*not a run directory"):
        load_run(empty)
    with pytest.raises(FedPeftError, match="missing-run"):
        load_run(tmp_path / "missing-run")


def test_config_only_run_just_started(tmp_path: Path) -> None:
    run = tmp_path / "starting"
    run.mkdir()
    (run / "config.toml").write_text('name = "x"\n[adapter]\nmethod = "ia3"\n')
    rec = load_run(run)
    assert rec.rounds_done == 0 and rec.final == {} and rec.best == {} and rec.primary_metric is None
    assert rec.get("adapter") == "ia3"


def test_invalid_summary_is_a_clear_error(tmp_path: Path) -> None:
    run = make_fed_run(tmp_path)
    (run / "summary.json").write_text(json.dumps([1, 2]))
    with pytest.raises(DataFormatError, match=r"summary\.json"):
        load_run(run)


def test_format_table_has_one_aligned_row_per_run(tmp_path: Path) -> None:
    a = load_run(make_fed_run(tmp_path, name="run-a"))
    b = load_run(make_fed_run(tmp_path, name="run-b", summary=False))
    c = load_run(make_central_run(tmp_path))
    lines = format_table([a, b, c]).splitlines()
    assert len(lines) == 5
    assert lines[0].split()[:5] == ["run", "algorithm", "adapter", "rounds", "metric"]
    assert len({len(line) for line in lines[:2]}) == 1
    assert lines[2].split()[:7] == ["run-a", "fedavg", "lora", "4", "accuracy", "0.7000", "0.7500"]
    assert "3.1 MiB" in lines[2]  # 10 uploads of 327680 bytes (3.125 MiB)
    assert lines[4].split()[:6] == ["central-20260101-120000", "centralized", "lora", "-", "accuracy", "0.8100"]
