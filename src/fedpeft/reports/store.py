"""Read a run directory (``config.toml``, ``metrics.jsonl``, ``summary.json``) into a typed :class:`RunRecord`.

The schema is documented in ``docs/run-directory.md``. A run may still be in progress or may have been killed, so
``summary.json`` is optional and a truncated last line of ``metrics.jsonl`` is skipped. Unknown events are ignored, so
older readers keep working when new events are added; fields that newer runs add (``phase`` events, ``bytes_by_kind``
and ``device_budget`` in summary.json) are optional, so older run directories load too.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from fedpeft.errors import DataFormatError, FedPeftError

# Metrics where a lower value is better; every other metric is maximised.
LOWER_IS_BETTER = frozenset({"perplexity", "loss"})
# Preference order of the primary metric (docs/run-directory.md, summary.json).
PRIMARY_METRICS = ("accuracy", "rouge_l", "perplexity")
# Event fields that are never metric values.
_NOT_METRICS = frozenset({"event", "time", "round", "client", "num_examples", "stage", "step", "clients"})

# Round-event fields every algorithm logs (plotted elsewhere); the rest are the algorithm's own (purity, ari, ...).
_ROUND_STANDARD = frozenset({"bytes_up", "bytes_down", "seconds", "train_loss"})
# Phase-event fields every phase logs; the rest are the algorithm's own.
_PHASE_STANDARD = frozenset({"event", "time", "round", "name", "seconds", "bytes_up", "bytes_down"})
# The phases of a run in the order they happen (fedpeft.comm.ledger.PHASES without the rounds).
PHASE_ORDER = ("prepare", "finish")
# The numeric fields of a device-budget row (summary.json ``device_budget``).
BUDGET_FIELDS = (
    "messages",
    "rounds",
    "seconds",
    "seconds_per_round",
    "flops",
    "flops_per_round",
    "trainable_params",
    "params_held",
    "bytes_up",
    "bytes_down",
)

Series = dict[int, float]  # round (or step) -> value


@dataclass(frozen=True)
class ClientData:
    """One client's share of the training data, from the ``setup`` event's ``partition``."""

    client: int
    num_examples: int
    counts: dict[str, int]  # label (or task) -> number of examples


@dataclass(frozen=True)
class Incident:
    """A ``rejected`` update or a client ``failure``."""

    kind: str  # "rejected" or "failure"
    round: int
    client: int
    reason: str


@dataclass(frozen=True)
class ByteCounts:
    """Bytes sent each way: ``up`` (client to server) and ``down``."""

    up: int = 0
    down: int = 0


@dataclass(frozen=True)
class Phase:
    """A ``prepare`` (before round 1) or ``finish`` (after the last round) phase of the algorithm.

    ``round`` is the round the phase event was logged with (0 for ``prepare``, the last round for ``finish``; None
    when only summary.json told of the phase). ``fields`` are the algorithm's own fields of the ``phase`` event.
    """

    name: str
    round: int | None = None
    seconds: float | None = None
    bytes_up: int = 0
    bytes_down: int = 0
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BudgetRow:
    """One row of the device budget: one client's device, or the max / mean over clients.

    ``seconds``: wall time the device spent serving messages; ``flops``: matrix-product FLOPs of its training and
    forward passes; ``trainable_params`` / ``params_held``: the largest seen in one message; bytes in total and (per
    client rows only) by payload kind. A field summary.json lacks is None.
    """

    messages: float | None = None
    rounds: float | None = None
    seconds: float | None = None
    seconds_per_round: float | None = None
    flops: float | None = None
    flops_per_round: float | None = None
    trainable_params: float | None = None
    params_held: float | None = None
    bytes_up: float | None = None
    bytes_down: float | None = None
    bytes_by_kind: dict[str, ByteCounts] = field(default_factory=dict)


def _id_key(cid: str) -> tuple[bool, int, str]:
    return (not cid.isdigit(), int(cid) if cid.isdigit() else 0, cid)


@dataclass(frozen=True)
class DeviceBudget:
    """summary.json's ``device_budget``: a row per client (keyed by client id, as in the JSON) plus max and mean."""

    per_client: dict[str, BudgetRow] = field(default_factory=dict)
    max: BudgetRow | None = None
    mean: BudgetRow | None = None

    @property
    def kinds(self) -> list[str]:
        """The payload kinds any client sent or received, ``adapter`` first, then in order of appearance."""
        seen = [k for row in self.per_client.values() for k in row.bytes_by_kind]
        return sorted(dict.fromkeys(seen), key=lambda k: k != "adapter")

    def sorted_clients(self) -> list[tuple[str, BudgetRow]]:
        """``per_client`` sorted by client id (numerically where the ids are numbers)."""
        return sorted(self.per_client.items(), key=lambda kv: _id_key(kv[0]))


# Suffixes of ``<metric>_<suffix>`` keys that are a variant of the metric, not a task: FL-TAC's routed inference.
VARIANT_SUFFIXES = ("routed",)


def order_metrics(names: Iterable[str]) -> list[str]:
    """Primary metrics first (in preference order), then the rest alphabetically, ``loss`` last."""
    rank = {m: i for i, m in enumerate(PRIMARY_METRICS)}
    return sorted(names, key=lambda m: (rank.get(m, len(rank)), m == "loss", m))


@dataclass(frozen=True)
class MetricGroup:
    """One global metric and, in a multi-task run, its per-task breakdown.

    ``metric`` is the metric's name (``rouge_l``); ``mean`` the key of its headline value (the unweighted mean over
    the tasks in a multi-task run; ``metric`` itself when logged, else None); ``tasks`` maps each task to its key
    (``rouge_l_<task>``), in task order; ``variants`` maps a label to the key of another reading of the same metric
    (``routed``: ``accuracy_routed``, FL-TAC's router-picked adapter). A metric without tasks has only ``mean``.
    """

    metric: str
    mean: str | None
    tasks: dict[str, str] = field(default_factory=dict)
    variants: dict[str, str] = field(default_factory=dict)

    @property
    def keys(self) -> list[str]:
        """Every key of the group: the mean, the variants, then the tasks."""
        head = [self.mean] if self.mean is not None else []
        return head + list(self.variants.values()) + list(self.tasks.values())


def _split_task(name: str, tasks: Sequence[str]) -> tuple[str, str] | None:
    """``(metric, task)`` when ``name`` is ``<metric>_<task>`` for one of ``tasks`` (the longest that fits)."""
    for task in sorted(tasks, key=len, reverse=True):
        if task and name.endswith("_" + task) and len(name) > len(task) + 1:
            return name[: -len(task) - 1], task
    return None


def group_metrics(names: Iterable[str], tasks: Iterable[str] = ()) -> list[MetricGroup]:
    """Group metric keys by metric: ``rouge_l``, ``rouge_l_<task>``, ... become one :class:`MetricGroup`.

    Per-task keys are ``<metric>_<task>`` (:func:`fedpeft.training.evaluate.summarize_by_task`, FL-TAC's
    ``accuracy_<task>``). ``tasks`` are the run's task names when known (:attr:`RunRecord.tasks`); keys no known task
    explains are recognised as ``<metric>_<suffix>`` when ``<metric>`` is itself a key and at least two suffixes share
    it. ``<metric>_routed`` is a variant of a metric that has tasks. Every other key is a group of its own. Groups
    come primary metric first (:func:`order_metrics`), tasks in name order.

    Parameters
    ----------
    names
        Metric keys, e.g. those of an ``eval`` event.
    tasks
        Task names the run is known to have (may be empty).

    Returns
    -------
    list[MetricGroup]
        One group per metric; every key of ``names`` is in exactly one group.
    """
    keys = list(dict.fromkeys(names))
    present = set(keys)
    known = [t for t in dict.fromkeys(tasks) if t]
    per_task: dict[str, dict[str, str]] = {}  # metric -> task -> key
    rest: list[str] = []
    for name in keys:
        split = _split_task(name, known)
        if split is not None and split[0] not in VARIANT_SUFFIXES:
            per_task.setdefault(split[0], {})[split[1]] = name
        else:
            rest.append(name)
    # Keys no known task explains: <metric>_<suffix> with <metric> logged, the longest such metric.
    guessed: dict[str, dict[str, str]] = {}
    for name in rest:
        bases = [b for b in present if b != name and name.startswith(b + "_")]
        if bases:
            base = max(bases, key=len)
            guessed.setdefault(base, {})[name[len(base) + 1 :]] = name
    for base, found in guessed.items():
        tasks_of = {s: k for s, k in found.items() if s not in VARIANT_SUFFIXES}
        if len(tasks_of) >= 2 or (tasks_of and base in per_task):
            per_task.setdefault(base, {}).update(tasks_of)
    grouped = {k for found in per_task.values() for k in found.values()}
    variants: dict[str, dict[str, str]] = {}
    for base in per_task:
        for suffix in VARIANT_SUFFIXES:
            key = f"{base}_{suffix}"
            if key in present and key not in grouped:
                variants.setdefault(base, {})[suffix] = key
                grouped.add(key)
    metrics = set(per_task) | {k for k in keys if k not in grouped}
    return [
        MetricGroup(
            metric=m,
            mean=m if m in present else None,
            tasks=dict(sorted(per_task.get(m, {}).items())),
            variants=variants.get(m, {}),
        )
        for m in order_metrics(metrics)
    ]


@dataclass
class RunRecord:
    """Everything a report needs from one run directory.

    Series map a round (or, for ``train_steps``, an optimizer step) to a value. When a resumed run logs a round
    again, the later value wins.
    """

    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] | None = None
    setup: dict[str, Any] = field(default_factory=dict)
    global_metrics: dict[str, Series] = field(default_factory=dict)  # metric -> round -> value
    client_metrics: dict[str, dict[int, Series]] = field(default_factory=dict)  # metric -> client -> round -> value
    client_train_loss: dict[int, Series] = field(default_factory=dict)  # client -> round -> loss
    train_loss: Series = field(default_factory=dict)  # round -> example-weighted train loss
    round_fields: dict[str, Series] = field(default_factory=dict)  # algorithm-specific numbers of round events
    bytes_up: dict[int, int] = field(default_factory=dict)  # round -> bytes
    bytes_down: dict[int, int] = field(default_factory=dict)
    incidents: list[Incident] = field(default_factory=list)
    partition: list[ClientData] = field(default_factory=list)
    partition_key: str = "label_counts"  # or "task_counts"
    train_steps: Series = field(default_factory=dict)  # centralized: step -> loss
    stage_metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # centralized: stage -> metrics
    resumed_from: list[int] = field(default_factory=list)
    phases: dict[str, Phase] = field(default_factory=dict)  # name -> phase, from phase events and summary.json
    bytes_by_kind: dict[str, ByteCounts] = field(default_factory=dict)  # payload kind -> bytes (summary.json)
    device_budget: DeviceBudget | None = None  # summary.json's device_budget
    first_time: float | None = None
    last_time: float | None = None
    skipped_lines: int = 0

    # ----------------------------------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The run directory's name (``<name>-<YYYYmmdd-HHMMSS>``)."""
        return self.path.name

    @property
    def finished(self) -> bool:
        """True when ``summary.json`` exists (the run ended normally)."""
        return self.summary is not None

    @property
    def centralized(self) -> bool:
        """True for a ``fedpeft finetune`` run (train steps and before/after evaluation, no rounds)."""
        return self.get("algorithm") == "centralized" or (
            bool(self.train_steps or self.stage_metrics) and not (self.global_metrics or self.train_loss)
        )

    def get(self, key: str, default: Any = None) -> Any:
        """A run attribute (``algorithm``, ``model``, ``rounds``...) from summary.json, the setup event or config."""
        for source in (self.summary or {}, self.setup):
            if source.get(key) is not None:
                return source[key]
        aliases = {"model": ("model", "name"), "dataset": ("data", "dataset"), "adapter": ("adapter", "method")}
        if key in aliases:
            table, sub = aliases[key]
            value = self.config.get(table)
            if isinstance(value, dict) and value.get(sub) is not None:
                return value[sub]
        found = _find_key(self.config, key)
        return default if found is None else found

    @property
    def rounds_done(self) -> int:
        """The last round with a ``round`` (or global ``eval``) event; 0 before the first round ends."""
        rounds = set(self.train_loss) | {r for s in self.global_metrics.values() for r in s}
        return max(rounds, default=0)

    @property
    def primary_metric(self) -> str | None:
        """``accuracy`` if evaluated, else ``rouge_l``, else ``perplexity``; None when none of them was logged."""
        available = set(self.global_metrics) | {k for m in self.stage_metrics.values() for k in m}
        if not available and self.summary:
            available = set(self.summary.get("final") or {})
        return next((m for m in PRIMARY_METRICS if m in available), None)

    @property
    def tasks(self) -> list[str]:
        """The run's task names, sorted: the ``setup`` partition's ``task_counts``, a mix's datasets
        (``"sst2+qnli+rte"``) and ``data.task_subset``; empty when the run names no tasks."""
        found = {t for p in self.partition for t in p.counts} if self.partition_key == "task_counts" else set()
        dataset = self.get("dataset")
        if isinstance(dataset, str) and "+" in dataset:
            found |= {d.strip() for d in dataset.split("+") if d.strip()}
        data = self.config.get("data")
        subset = data.get("task_subset") if isinstance(data, dict) else None
        if isinstance(subset, list):
            found |= {str(t) for t in subset}
        return sorted(found)

    @property
    def metric_groups(self) -> list[MetricGroup]:
        """The global metrics grouped by metric, each with its per-task keys (:func:`group_metrics`)."""
        return group_metrics(self.global_metrics, self.tasks)

    def _round_metrics(self, rnd: int) -> dict[str, float]:
        return {m: s[rnd] for m, s in self.global_metrics.items() if rnd in s}

    @property
    def initial(self) -> dict[str, float]:
        """Global metrics before training (round 0, or the centralized ``before`` stage)."""
        if 0 in {r for s in self.global_metrics.values() for r in s}:
            return self._round_metrics(0)
        if "before" in self.stage_metrics:
            return dict(self.stage_metrics["before"])
        summary = self.summary or {}
        return dict(summary.get("initial") or summary.get("before") or {})

    @property
    def final(self) -> dict[str, float]:
        """Global metrics at the last evaluated round (or the centralized ``after`` stage)."""
        rounds = {r for s in self.global_metrics.values() for r in s}
        if rounds:
            return self._round_metrics(max(rounds))
        if "after" in self.stage_metrics:
            return dict(self.stage_metrics["after"])
        return dict((self.summary or {}).get("final") or {})

    @property
    def best(self) -> dict[str, float]:
        """Global metrics at the round with the best primary metric, plus ``"round"``; earliest round on ties.

        Empty when no round was evaluated. ``perplexity`` is minimised, the other primary metrics maximised.
        """
        metric = self.primary_metric
        series = self.global_metrics.get(metric or "", {})
        if not series:
            return {} if self.global_metrics else dict((self.summary or {}).get("best") or {})
        sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
        best_round = max(sorted(series), key=lambda r: sign * series[r])  # max keeps the first of equal keys
        return {**self._round_metrics(best_round), "round": best_round}

    @property
    def total_bytes_up(self) -> int:
        """Bytes sent from clients to the server over all finished rounds."""
        return sum(self.bytes_up.values()) if self.bytes_up else int((self.summary or {}).get("bytes_up") or 0)

    @property
    def total_bytes_down(self) -> int:
        """Bytes sent from the server to clients over all finished rounds."""
        return sum(self.bytes_down.values()) if self.bytes_down else int((self.summary or {}).get("bytes_down") or 0)

    @property
    def ordered_phases(self) -> list[Phase]:
        """The phases in the order they ran (``prepare``, then ``finish``; unknown names after them)."""
        rank = {name: i for i, name in enumerate(PHASE_ORDER)}
        return sorted(self.phases.values(), key=lambda p: (rank.get(p.name, len(rank)), p.name))

    @property
    def wall_s(self) -> float | None:
        """Wall-clock seconds: summary.json's ``wall_s``, else the span of the logged events (run in progress)."""
        if self.summary and self.summary.get("wall_s") is not None:
            return float(self.summary["wall_s"])
        if self.first_time is None or self.last_time is None:
            return None
        return round(self.last_time - self.first_time, 2)


def _find_key(tree: dict[str, Any], key: str) -> Any:
    """The value of ``key`` at the shallowest level of a nested dict, or None."""
    level: list[dict[str, Any]] = [tree]
    while level:
        for d in level:
            if d.get(key) is not None and not isinstance(d[key], dict):
                return d[key]
        level = [v for d in level for v in d.values() if isinstance(v, dict)]
    return None


def _metrics(event: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in event.items()
        if k not in _NOT_METRICS and isinstance(v, int | float) and not isinstance(v, bool)
    }


def _number(value: Any) -> float | None:
    """``value`` as a float when it is a JSON number, else None."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _phase_from_event(ev: dict[str, Any]) -> Phase:
    seconds = _number(ev.get("seconds"))
    return Phase(
        name=str(ev["name"]),
        round=None if ev.get("round") is None else int(ev["round"]),
        seconds=seconds,
        bytes_up=int(ev.get("bytes_up") or 0),
        bytes_down=int(ev.get("bytes_down") or 0),
        fields={k: v for k, v in ev.items() if k not in _PHASE_STANDARD},
    )


def _apply(rec: RunRecord, ev: dict[str, Any]) -> None:
    """Fold one event into ``rec``."""
    kind = ev.get("event")
    t = ev.get("time")
    if isinstance(t, int | float):
        rec.first_time = t if rec.first_time is None else min(rec.first_time, t)
        rec.last_time = t if rec.last_time is None else max(rec.last_time, t)
    rnd: Any = ev.get("round")
    if kind == "setup":
        rec.setup = {k: v for k, v in ev.items() if k not in ("event", "time")}
        rec.partition = []
        for part in ev.get("partition") or []:
            key = "task_counts" if "task_counts" in part else "label_counts"
            rec.partition_key = key
            counts = {str(k): int(v) for k, v in (part.get(key) or {}).items()}
            num = int(part.get("num_examples", sum(counts.values())))
            rec.partition.append(ClientData(int(part["client"]), num, counts))
    elif kind == "eval" and "stage" in ev:
        rec.stage_metrics[str(ev["stage"])] = _metrics(ev)
    elif kind == "eval" and rnd is not None:
        for metric, value in _metrics(ev).items():
            rec.global_metrics.setdefault(metric, {})[int(rnd)] = value
    elif kind == "client_eval":
        for metric, value in _metrics(ev).items():
            rec.client_metrics.setdefault(metric, {}).setdefault(int(ev["client"]), {})[int(rnd)] = value
    elif kind == "client_train":
        if ev.get("loss") is not None:
            rec.client_train_loss.setdefault(int(ev["client"]), {})[int(rnd)] = float(ev["loss"])
    elif kind == "round":
        if ev.get("train_loss") is not None:
            rec.train_loss[int(rnd)] = float(ev["train_loss"])
        rec.bytes_up[int(rnd)] = int(ev.get("bytes_up") or 0)
        rec.bytes_down[int(rnd)] = int(ev.get("bytes_down") or 0)
        for name, value in _metrics(ev).items():
            if name not in _ROUND_STANDARD:
                rec.round_fields.setdefault(name, {})[int(rnd)] = value
    elif kind in ("rejected", "failure"):
        rec.incidents.append(Incident(str(kind), int(rnd or 0), int(ev.get("client", -1)), str(ev.get("reason", ""))))
    elif kind == "train_step":
        rec.train_steps[int(ev["step"])] = float(ev["loss"])
    elif kind == "resume":
        rec.resumed_from.append(int(rnd or 0))
    elif kind == "phase":  # never a metric series: its numbers are the phase's cost and the algorithm's fields
        phase = _phase_from_event(ev)
        rec.phases[phase.name] = phase


def _object(value: Any, path: Path, name: str) -> dict[str, Any]:
    """``value`` when it is a JSON object (``{}`` when absent); anything else is a DataFormatError."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DataFormatError(path, None, name, f"expected a JSON object, got {type(value).__name__}")
    return value


def _byte_counts(value: Any, path: Path, name: str) -> dict[str, ByteCounts]:
    """``{kind: {"up": n, "down": n}}`` as ``{kind: ByteCounts}``."""
    out = {}
    for kind, counts in _object(value, path, name).items():
        row = _object(counts, path, f"{name}.{kind}")
        out[str(kind)] = ByteCounts(int(_number(row.get("up")) or 0), int(_number(row.get("down")) or 0))
    return out


def _budget_row(value: Any, path: Path, name: str) -> BudgetRow:
    row = _object(value, path, name)
    numbers = {k: _number(row.get(k)) for k in BUDGET_FIELDS}
    kinds = _byte_counts(row.get("bytes_by_kind"), path, f"{name}.bytes_by_kind")
    return BudgetRow(**numbers, bytes_by_kind=kinds)


def _apply_summary(rec: RunRecord, summary: dict[str, Any], path: Path) -> None:
    """Fold summary.json's ``bytes_by_kind``, ``device_budget`` and ``phases`` (all optional) into ``rec``."""
    rec.bytes_by_kind = _byte_counts(summary.get("bytes_by_kind"), path, "bytes_by_kind")
    if summary.get("device_budget") is not None:
        budget = _object(summary["device_budget"], path, "device_budget")
        per_client = _object(budget.get("per_client"), path, "device_budget.per_client")
        rec.device_budget = DeviceBudget(
            per_client={
                str(cid): _budget_row(row, path, f"device_budget.per_client.{cid}") for cid, row in per_client.items()
            },
            max=None if budget.get("max") is None else _budget_row(budget["max"], path, "device_budget.max"),
            mean=None if budget.get("mean") is None else _budget_row(budget["mean"], path, "device_budget.mean"),
        )
    for name, value in _object(summary.get("phases"), path, "phases").items():
        if name in rec.phases:  # the phase event has the same numbers and the algorithm's fields
            continue
        row = _object(value, path, f"phases.{name}")
        rec.phases[str(name)] = Phase(
            name=str(name),
            seconds=_number(row.get("seconds")),
            bytes_up=int(_number(row.get("bytes_up")) or 0),
            bytes_down=int(_number(row.get("bytes_down")) or 0),
        )


def _read_events(path: Path, rec: RunRecord) -> None:
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError as exc:
            if lineno == len(lines):  # a run killed mid-write: skip the partial last line
                rec.skipped_lines += 1
                continue
            raise DataFormatError(path, lineno, None, f"not valid JSON ({exc.msg})") from None
        if not isinstance(event, dict) or not isinstance(event.get("event"), str):
            raise DataFormatError(path, lineno, "event", "expected a JSON object with an 'event' string")
        try:
            _apply(rec, event)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataFormatError(path, lineno, None, f"bad {event['event']!r} event ({exc!r})") from None


def load_run(run_dir: str | Path) -> RunRecord:
    """Read a run directory into a :class:`RunRecord`.

    Parameters
    ----------
    run_dir
        A folder written by ``fedpeft run`` or ``fedpeft finetune`` (see ``docs/run-directory.md``).

    Returns
    -------
    RunRecord
        The parsed config, events and (when the run finished) summary.

    Raises
    ------
    FedPeftError
        If ``run_dir`` is not a directory or holds neither ``config.toml`` nor ``metrics.jsonl``.
    DataFormatError
        If a file is malformed (a bad line other than a truncated last one, invalid TOML or JSON).
    """
    path = Path(run_dir)
    config_path, metrics_path, summary_path = (path / n for n in ("config.toml", "metrics.jsonl", "summary.json"))
    if not path.is_dir():
        raise FedPeftError(f"{path}: not a run directory (no such directory)")
    if not config_path.is_file() and not metrics_path.is_file():
        raise FedPeftError(f"{path}: not a run directory (it has neither config.toml nor metrics.jsonl)")
    rec = RunRecord(path=path)
    if config_path.is_file():
        try:
            rec.config = tomllib.loads(config_path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise DataFormatError(config_path, None, None, f"invalid TOML ({exc})") from None
    if metrics_path.is_file():
        _read_events(metrics_path, rec)
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataFormatError(summary_path, exc.lineno, None, f"invalid JSON ({exc.msg})") from None
        if not isinstance(summary, dict):
            raise DataFormatError(summary_path, None, None, "expected a JSON object")
        rec.summary = summary
        _apply_summary(rec, summary, summary_path)
    return rec
