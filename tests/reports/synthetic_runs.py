"""Synthetic run directories for the report tests, written exactly as docs/run-directory.md describes.

A plain helper module rather than a conftest.py: a second top-level ``conftest`` module would replace tests/conftest.py
in sys.modules (see tests/data/__init__.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Ground truth of the synthetic federated run: 3 clients, 4 rounds, round 0 = before training.
GLOBAL_ACC = {0: 0.5, 1: 0.55, 2: 0.625, 3: 0.75, 4: 0.7}
GLOBAL_LOSS = {0: 0.71, 1: 0.69, 2: 0.66, 3: 0.6, 4: 0.62}
CLIENT_ACC = {  # client -> round -> accuracy on its local test split
    0: {1: 0.5, 2: 0.6, 3: 0.7, 4: 0.8},
    1: {1: 0.25, 2: 0.5, 3: 0.75, 4: 0.5},
    2: {1: 0.9, 2: 0.9, 3: 0.95, 4: 1.0},
}
REJECTED = (2, 2, "update contains non-finite values")  # round, client, reason
FAILURE = (4, 1, "timed out after 30 s")
BYTES = 327680  # one client's adapter payload, each way
PARTITION = [
    {"client": 0, "num_examples": 60, "label_counts": {"0": 50, "1": 10}},
    {"client": 1, "num_examples": 40, "label_counts": {"0": 20, "1": 20}},
    {"client": 2, "num_examples": 30, "label_counts": {"1": 30}},
]


def client_loss(rnd: int, client: int) -> float:
    return round(0.7 - 0.05 * rnd + 0.01 * client, 4)


def aggregated(rnd: int) -> list[int]:
    """Clients whose update went into round ``rnd`` (the rejected / failed ones did not)."""
    out = {REJECTED[0]: REJECTED[1], FAILURE[0]: FAILURE[1]}
    return [c for c in range(3) if out.get(rnd) != c]


def round_train_loss(rnd: int) -> float:
    clients = aggregated(rnd)
    n = {p["client"]: p["num_examples"] for p in PARTITION}
    return sum(client_loss(rnd, c) * n[c] for c in clients) / sum(n[c] for c in clients)


def federated_events() -> list[dict[str, Any]]:
    t = 1_700_000_000.0
    events: list[dict[str, Any]] = [
        {
            "event": "setup",
            "time": t,
            "algorithm": "fedavg",
            "runtime": "local",
            "num_clients": 3,
            "clients_per_round": 3,
            "rounds": 4,
            "trainable_params": 81920,
            "trainable_bytes": BYTES,
            "total_params": 1989248,
            "eval_examples": 100,
            "partition": PARTITION,
        },
        {"event": "eval", "time": t + 1, "round": 0, "accuracy": GLOBAL_ACC[0], "loss": GLOBAL_LOSS[0]},
    ]
    for rnd in range(1, 5):
        t = 1_700_000_000.0 + 10 * rnd
        for c in range(3):
            if (rnd, c) == FAILURE[:2]:
                events.append({"event": "failure", "time": t, "round": rnd, "client": c, "reason": FAILURE[2]})
                continue
            events.append(
                {
                    "event": "client_train",
                    "time": t + 1,
                    "round": rnd,
                    "client": c,
                    "num_examples": PARTITION[c]["num_examples"],
                    "loss": client_loss(rnd, c),
                    "steps": 5,
                    "seconds": 0.5,
                    "bytes_up": BYTES,
                    "bytes_down": BYTES,
                }
            )
            if (rnd, c) == REJECTED[:2]:
                events.append({"event": "rejected", "time": t + 2, "round": rnd, "client": c, "reason": REJECTED[2]})
        clients = aggregated(rnd)
        events.append(
            {
                "event": "round",
                "time": t + 3,
                "round": rnd,
                "clients": clients,
                "train_loss": round_train_loss(rnd),
                "bytes_up": BYTES * len(clients),
                "bytes_down": BYTES * 3,
                "update_norm": 0.1,
                "seconds": 2.0,
            }
        )
        for c in range(3):
            events.append(
                {
                    "event": "client_eval",
                    "time": t + 4,
                    "round": rnd,
                    "client": c,
                    "num_examples": 10,
                    "accuracy": CLIENT_ACC[c][rnd],
                    "loss": 0.5,
                }
            )
        events.append(
            {"event": "eval", "time": t + 5, "round": rnd, "accuracy": GLOBAL_ACC[rnd], "loss": GLOBAL_LOSS[rnd]}
        )
    return events


CONFIG_TOML = """name = "{name}"
seed = 0
output_dir = "runs"

[model]
name = "tiny-small"

[data]
dataset = "sst2"

[adapter]
method = "lora"
r = 8
"""


def write_run(
    path: Path,
    events: list[dict[str, Any]],
    summary: dict[str, Any] | None = None,
    truncated_tail: bool = True,
    config_name: str = "demo",
) -> Path:
    """A run directory at ``path``; ``truncated_tail`` appends half a line, as a run killed mid-write leaves."""
    path.mkdir(parents=True)
    (path / "config.toml").write_text(CONFIG_TOML.format(name=config_name.replace('"', '\\"')), encoding="utf-8")
    text = "".join(json.dumps(e) + "\n" for e in events)
    if truncated_tail:
        text += '{"event": "client_train", "time": 1700000099.0, "round": 5, "cli'
    (path / "metrics.jsonl").write_text(text, encoding="utf-8")
    if summary is not None:
        (path / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return path


FED_SUMMARY = {
    "algorithm": "fedavg",
    "runtime": "local",
    "rounds": 4,
    "num_clients": 3,
    "model": "tiny-small",
    "dataset": "sst2",
    "adapter": "lora",
    "trainable_params": 81920,
    "initial": {"accuracy": 0.5},
    "final": {"accuracy": 0.7},
    "best": {"accuracy": 0.75, "round": 3},
    "bytes_up": 0,
    "bytes_down": 0,
    "wall_s": 61.5,
}


def make_fed_run(root: Path, name: str = "fedavg-sst2-20260101-120000", summary: bool = True, **kwargs: Any) -> Path:
    """The synthetic federated run as ``root/name`` (``summary=False``: a run still in progress or killed)."""
    return write_run(root / name, federated_events(), FED_SUMMARY if summary else None, **kwargs)


CENTRALIZED_EVENTS: list[dict[str, Any]] = [
    {
        "event": "setup",
        "time": 1.0,
        "trainable_params": 81920,
        "trainable_bytes": BYTES,
        "total_params": 1989248,
        "train_examples": 500,
        "eval_examples": 100,
    },
    {"event": "eval", "time": 2.0, "stage": "before", "accuracy": 0.5, "pred_frac_0": 1.0},
    {"event": "train_step", "time": 3.0, "step": 0, "loss": 0.79},
    {"event": "train_step", "time": 4.0, "step": 10, "loss": 0.68},
    {"event": "train_step", "time": 5.0, "step": 20, "loss": 0.55},
    {"event": "eval", "time": 6.0, "stage": "after", "accuracy": 0.81, "pred_frac_0": 0.6},
]


def make_central_run(root: Path) -> Path:
    """A centralized (``fedpeft finetune``) run: setup, train_step and before/after eval events."""
    summary = {
        "algorithm": "centralized",
        "model": "tiny-small",
        "dataset": "sst2",
        "adapter": "lora",
        "trainable_params": 81920,
        "steps": 20,
        "before": {"accuracy": 0.5},
        "final": {"accuracy": 0.81},
        "wall_s": 5.0,
    }
    return write_run(root / "central-20260101-120000", CENTRALIZED_EVENTS, summary, truncated_tail=False)


# ---------------------------------------------------------------------------------------------------------------------
# A run with prepare / finish phases, payload kinds other than the adapter, and a device budget (the synthetic
# federated run above plus what the runtime writes since phases and device costs were added).

PREPARE = {"seconds": 1.5, "bytes_up": 65536, "bytes_down": 0}  # clients upload features once
FINISH = {"seconds": 0.25, "bytes_up": 0, "bytes_down": 12288}  # the server sends each client 4 KiB of ids
PREPARE_FIELDS = {"clusters": 2, "feature_dim": 64}  # the algorithm's own fields of the prepare event
# client -> payload kind -> bytes each way (adapter: 4 / 3 / 3 uploads and 4 downloads of BYTES, as the rounds say)
CLIENT_KINDS = {
    "0": {
        "adapter": {"up": 4 * BYTES, "down": 4 * BYTES},
        "features": {"up": 16384, "down": 0},
        "ids": {"up": 0, "down": 4096},
    },
    "1": {
        "adapter": {"up": 3 * BYTES, "down": 4 * BYTES},
        "features": {"up": 16384, "down": 0},
        "ids": {"up": 0, "down": 4096},
    },
    "2": {
        "adapter": {"up": 3 * BYTES, "down": 4 * BYTES},
        "features": {"up": 32768, "down": 0},
        "ids": {"up": 0, "down": 4096},
    },
}
# client -> (rounds taken part in, seconds, FLOPs) of its device
CLIENT_COST = {"0": (4, 2.0, 4_800_000_000), "1": (3, 3.0, 2_700_000_000), "2": (4, 1.0, 4_800_000_000)}
PARAMS_HELD = 1989248


def budget_row(cid: str) -> dict[str, Any]:
    """One client's device-budget row, as fedpeft.runtime.budget.DeviceBudget.table writes it."""
    rounds, seconds, flops = CLIENT_COST[cid]
    kinds = CLIENT_KINDS[cid]
    return {
        "messages": rounds + 1,
        "rounds": rounds,
        "seconds": seconds,
        "seconds_per_round": round(seconds / rounds, 3),
        "flops": flops,
        "flops_per_round": flops // rounds,
        "trainable_params": 81920,
        "params_held": PARAMS_HELD,
        "bytes_up": sum(k["up"] for k in kinds.values()),
        "bytes_down": sum(k["down"] for k in kinds.values()),
        "bytes_by_kind": kinds,
    }


def device_budget() -> dict[str, Any]:
    """summary.json's ``device_budget``: per-client rows, their max and mean (over clients, numbers only)."""
    rows = {cid: budget_row(cid) for cid in CLIENT_KINDS}
    numeric = [k for k in rows["0"] if k != "bytes_by_kind"]
    return {
        "per_client": rows,
        "max": {k: max(r[k] for r in rows.values()) for k in numeric},
        "mean": {k: round(sum(r[k] for r in rows.values()) / len(rows), 3) for k in numeric},
    }


def bytes_by_kind() -> dict[str, dict[str, int]]:
    """summary.json's ``bytes_by_kind``: the clients' rows added up."""
    out: dict[str, dict[str, int]] = {}
    for kinds in CLIENT_KINDS.values():
        for kind, counts in kinds.items():
            row = out.setdefault(kind, {"up": 0, "down": 0})
            row["up"] += counts["up"]
            row["down"] += counts["down"]
    return out


def phased_events() -> list[dict[str, Any]]:
    """The federated events with a ``prepare`` phase event before round 1 and a ``finish`` one after round 4."""
    events = federated_events()
    first_client = next(i for i, e in enumerate(events) if e["event"] == "client_train")
    prepare = {"event": "phase", "time": 1_700_000_002.0, "round": 0, "name": "prepare", **PREPARE, **PREPARE_FIELDS}
    finish = {"event": "phase", "time": 1_700_000_050.0, "round": 4, "name": "finish", **FINISH}
    return [*events[:first_client], prepare, *events[first_client:], finish]


PHASED_SUMMARY = {
    **FED_SUMMARY,
    "bytes_up": 10 * BYTES + PREPARE["bytes_up"],  # the ledger's total: rounds and phases
    "bytes_down": 12 * BYTES + FINISH["bytes_down"],
    "bytes_by_kind": bytes_by_kind(),
    "device_budget": device_budget(),
    "phases": {"prepare": PREPARE, "finish": FINISH},
}


def make_phased_run(root: Path, name: str = "split-sst2-20260101-120000", **kwargs: Any) -> Path:
    """The synthetic federated run with phases, payload kinds and a device budget, as ``root/name``."""
    kwargs.setdefault("truncated_tail", False)
    return write_run(root / name, phased_events(), PHASED_SUMMARY, **kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# A multi-task run: Natural-Instructions-like task names, clients holding several tasks (Dirichlet over tasks), and
# per-task eval keys as fedpeft.training.evaluate.summarize_by_task writes them (``rouge_l_<task>``,
# ``exact_match_<task>`` and their means ``rouge_l`` / ``exact_match``), plus a loss.

TASKS_12 = [
    "subtask003_mctaco_question_generation_event_duration",
    "subtask007_mctaco_answer_generation_transient_stationary",
    "subtask010_mctaco_answer_generation_event_ordering",
    "subtask012_mctaco_question_generation_absolute_timepoint",
    "subtask015_mctaco_question_generation_frequency",
    "subtask017_mctaco_wrong_answer_generation_frequency",
    "subtask020_mctaco_span_based_question",
    "subtask023_cosmosqa_question_generation",
    "subtask031_winogrande_question_generation_object",
    "subtask034_winogrande_question_modification_object",
    "open_qa",  # a task name that ends another one's ("closed_qa" does not, "qa" would)
    "closed_qa",
]


def task_score(metric: str, task_index: int, rnd: int) -> float:
    """The synthetic per-task score: Rouge-L (x100) rising by task; exact match 0 for every task (as small models)."""
    if metric == "exact_match":
        return 0.0
    return round(2.0 + 1.5 * task_index + 0.8 * rnd * (task_index % 3), 4)


def multitask_metrics(rnd: int, tasks: list[str], metrics: tuple[str, ...]) -> dict[str, float]:
    """One eval event's metric values: ``<metric>_<task>`` per task, ``<metric>`` their mean, and ``loss``."""
    out: dict[str, float] = {}
    for metric in metrics:
        per_task = {f"{metric}_{t}": task_score(metric, i, rnd) for i, t in enumerate(tasks)}
        out[metric] = sum(per_task.values()) / len(per_task)
        out.update(per_task)
    out["loss"] = round(3.0 - 0.1 * rnd, 4)
    return out


def multitask_events(
    tasks: list[str] | None = None,
    num_clients: int = 40,
    rounds: int = 5,
    metrics: tuple[str, ...] = ("rouge_l", "exact_match"),
) -> list[dict[str, Any]]:
    """Setup (clients holding 1-3 tasks each, ``task_counts``), then per round client_train, round and eval events."""
    tasks = list(TASKS_12 if tasks is None else tasks)
    partition = []
    for c in range(num_clients):
        held = [tasks[(c + k) % len(tasks)] for k in range(1 + c % 3)]
        counts = {t: 10 + (7 * c + 3 * k) % 25 for k, t in enumerate(held)}
        partition.append({"client": c, "num_examples": sum(counts.values()), "task_counts": counts})
    t0 = 1_700_000_000.0
    events: list[dict[str, Any]] = [
        {
            "event": "setup",
            "time": t0,
            "algorithm": "fedavg",
            "runtime": "local",
            "num_clients": num_clients,
            "clients_per_round": num_clients,
            "rounds": rounds,
            "trainable_params": 16384,
            "trainable_bytes": 65536,
            "eval_examples": 240,
            "partition": partition,
        },
        {"event": "eval", "time": t0 + 1, "round": 0, **multitask_metrics(0, tasks, metrics)},
    ]
    for rnd in range(1, rounds + 1):
        t = t0 + 10 * rnd
        for c in range(num_clients):
            events.append(
                {
                    "event": "client_train",
                    "time": t + 1,
                    "round": rnd,
                    "client": c,
                    "num_examples": partition[c]["num_examples"],
                    "loss": round(3.0 - 0.1 * rnd + 0.01 * c, 4),
                    "steps": 2,
                    "seconds": 0.5,
                    "bytes_up": 65536,
                    "bytes_down": 65536,
                }
            )
        events.append(
            {
                "event": "round",
                "time": t + 2,
                "round": rnd,
                "clients": list(range(num_clients)),
                "train_loss": round(3.0 - 0.1 * rnd, 4),
                "bytes_up": 65536 * num_clients,
                "bytes_down": 65536 * num_clients,
                "update_norm": 0.1,
                "seconds": 2.0,
            }
        )
        events.append({"event": "eval", "time": t + 3, "round": rnd, **multitask_metrics(rnd, tasks, metrics)})
    return events


MULTITASK_CONFIG = """name = "ni-12-tasks"
seed = 0

[model]
name = "tiny-small"

[data]
dataset = "natural_instructions"

[adapter]
method = "lora"
r = 8
"""


def make_multitask_run(root: Path, name: str = "ni-12-tasks-20260101-120000", **kwargs: Any) -> Path:
    """The synthetic multi-task run (12 tasks, 40 clients by default; ``kwargs`` go to :func:`multitask_events`)."""
    path = write_run(root / name, multitask_events(**kwargs), truncated_tail=False)
    (path / "config.toml").write_text(MULTITASK_CONFIG, encoding="utf-8")
    return path
