"""Tables of runs: the comparison of several runs (plain text for the terminal, markdown) and the tables of one run's
report (:func:`run_tables`: configuration, metrics, communication, bytes by payload kind, phases, device budget,
incidents), each a :class:`Table` that ``html.py`` and :func:`render_run_markdown` render.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from fedpeft.reports.store import BudgetRow, ByteCounts, MetricGroup, RunRecord, group_metrics

COLUMNS = (
    "run",
    "algorithm",
    "adapter",
    "rounds",
    "metric",
    "final",
    "best",
    "bytes_up",
    "bytes_down",
    "wall_s",
    "max_s_per_round",
    "max_flops_per_round",
    "max_params_held",
)
#: Right-aligned columns of the comparison table.
NUMERIC_COLUMNS = frozenset(
    {"rounds", "final", "best", "bytes_up", "bytes_down", "wall_s"}
    | {"max_s_per_round", "max_flops_per_round", "max_params_held"}
)
MISSING = "-"


def _scaled(n: float | None, units: tuple[str, ...], base: int) -> str:
    """``n`` in the largest of ``units`` (each ``base`` times the previous) below ``base``, one decimal; the first
    unit is shown whole; ``"-"`` for None."""
    if n is None:
        return MISSING
    value = float(n)
    for unit in units:
        if abs(value) < base or unit == units[-1]:
            return f"{round(value)} {unit}" if unit == units[0] else f"{value:.1f} {unit}"
        value /= base
    raise AssertionError("unreachable")


def format_bytes(n: float | None) -> str:
    """``n`` bytes in binary units, one decimal (``"16.0 KiB"``, ``"3.1 MiB"``; 1 KiB = 1024 B); ``"-"`` for None."""
    return _scaled(n, ("B", "KiB", "MiB", "GiB", "TiB"), 1024)


def format_flops(n: float | None) -> str:
    """``n`` FLOPs in decimal units with one decimal (``"1.2 GFLOP"``); ``"-"`` for None."""
    return _scaled(n, ("FLOP", "kFLOP", "MFLOP", "GFLOP", "TFLOP", "PFLOP"), 1000)


def format_count(n: float | None) -> str:
    """A count with thousands separators (``"1,909,376"``; one decimal when not whole, as in a mean); ``"-"``."""
    if n is None:
        return MISSING
    return f"{round(n):,}" if float(n).is_integer() else f"{n:,.1f}"


def format_seconds(n: float | None) -> str:
    """Seconds with three decimals; ``"-"`` for None."""
    return MISSING if n is None else f"{n:.3f}"


def format_value(value: object) -> str:
    """A metric or attribute for a table cell: floats with 4 decimals, None as ``"-"``."""
    if value is None:
        return MISSING
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def display_names(records: Sequence[RunRecord]) -> list[str]:
    """Run names for a comparison; runs sharing a directory name are told apart by their parent folder."""
    names = [r.name for r in records]
    return [f"{r.path.parent.name}/{r.name}" if names.count(r.name) > 1 else r.name for r in records]


def rounds_cell(record: RunRecord) -> str:
    """``"20"`` for a finished run, ``"3/20"`` for one stopped early, ``"-"`` for a centralized run."""
    if record.centralized:
        return MISSING
    done, planned = record.rounds_done, record.get("rounds")
    return str(done) if planned in (None, done) else f"{done}/{planned}"


def comparison_rows(records: Sequence[RunRecord]) -> list[dict[str, str]]:
    """One dict per run with the :data:`COLUMNS` as keys, every value already formatted."""
    rows = []
    for name, rec in zip(display_names(records), records, strict=True):
        metric = rec.primary_metric
        best = rec.best
        best_cell = format_value(best.get(metric or ""))
        if metric in best and "round" in best:
            best_cell += f" (round {int(best['round'])})"
        centralized = rec.centralized
        rows.append(
            {
                "run": name,
                "algorithm": str(rec.get("algorithm", MISSING)),
                "adapter": str(rec.get("adapter", MISSING)),
                "rounds": rounds_cell(rec),
                "metric": metric or MISSING,
                "final": format_value(rec.final.get(metric or "")),
                "best": best_cell,
                "bytes_up": MISSING if centralized else format_bytes(rec.total_bytes_up),
                "bytes_down": MISSING if centralized else format_bytes(rec.total_bytes_down),
                "wall_s": MISSING if rec.wall_s is None else f"{rec.wall_s:.1f}",
                **_budget_max_cells(rec),
            }
        )
    return rows


def _budget_max_cells(rec: RunRecord) -> dict[str, str]:
    """The comparison's device-budget columns: the largest per-client value of the run (``-`` without a budget)."""
    peak = rec.device_budget.max if rec.device_budget is not None else None
    if peak is None or rec.centralized:
        return dict.fromkeys(("max_s_per_round", "max_flops_per_round", "max_params_held"), MISSING)
    return {
        "max_s_per_round": format_seconds(peak.seconds_per_round),
        "max_flops_per_round": format_flops(peak.flops_per_round),
        "max_params_held": format_count(peak.params_held),
    }


def format_table(records: Sequence[RunRecord]) -> str:
    """A plain-text, column-aligned comparison table of ``records`` for the terminal.

    Parameters
    ----------
    records
        Loaded runs (:func:`fedpeft.reports.load_run`), one row each, in the given order.

    Returns
    -------
    str
        A header line, a rule, and one line per run (no trailing newline).
    """
    rows = comparison_rows(records)
    widths = {c: max([len(c)] + [len(r[c]) for r in rows]) for c in COLUMNS}
    numeric = NUMERIC_COLUMNS - {"best"}

    def line(cells: dict[str, str]) -> str:
        parts = [cells[c].rjust(widths[c]) if c in numeric else cells[c].ljust(widths[c]) for c in COLUMNS]
        return "  ".join(parts).rstrip()

    header = line({c: c for c in COLUMNS})
    rule = "  ".join("-" * widths[c] for c in COLUMNS)
    return "\n".join([header, rule, *(line(r) for r in rows)])


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _markdown_rows(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: frozenset[int] = frozenset()) -> str:
    rule = "|" + "|".join("---:" if i in numeric else "---" for i in range(len(header))) + "|"
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |", rule]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def markdown_table(records: Sequence[RunRecord]) -> str:
    """The comparison table as GitHub-flavoured markdown (``|`` in cells escaped), ending with a newline."""
    rows = comparison_rows(records)
    return _markdown_rows(COLUMNS, [[r[c] for c in COLUMNS] for r in rows])


# ---------------------------------------------------------------------------------------------------------------------
# The tables of one run's report


@dataclass(frozen=True)
class Table:
    """A titled table of formatted cells; ``numeric``: indices of right-aligned columns; ``note``: text after it.

    A table without a header renders as its note alone (e.g. "No evaluation logged yet."). ``group_starts``: indices
    of rows that begin a group of rows (a metric and its tasks), drawn with a rule above them in HTML.
    """

    title: str
    header: tuple[str, ...]
    rows: Sequence[tuple[str, ...]] = ()
    numeric: frozenset[int] = frozenset()
    note: str = ""
    group_starts: frozenset[int] = frozenset()


def config_table(rec: RunRecord) -> Table:
    """Configuration: name, algorithm, model, dataset, adapter, rounds (or steps), clients, runtime, size, time."""
    clients = rec.get("num_clients")
    per_round = rec.get("clients_per_round")
    clients_cell = MISSING if clients is None else f"{clients}" + (f" ({per_round} per round)" if per_round else "")
    if rec.centralized:
        rounds_cell = str(rec.get("steps", MISSING))
    else:
        planned = rec.get("rounds")
        rounds_cell = f"{rec.rounds_done}" + (f" of {planned}" if planned not in (None, rec.rounds_done) else "")
    trainable = rec.get("trainable_params")
    rows = [
        ("name", rec.config.get("name", rec.name)),
        ("algorithm", rec.get("algorithm", MISSING)),
        ("model", rec.get("model", MISSING)),
        ("dataset", rec.get("dataset", MISSING)),
        ("adapter", rec.get("adapter", MISSING)),
        ("steps" if rec.centralized else "rounds", rounds_cell),
        ("clients", clients_cell),
        ("runtime", rec.get("runtime", MISSING)),
        ("trainable params", MISSING if trainable is None else f"{int(trainable):,}"),
        ("wall time (s)", MISSING if rec.wall_s is None else f"{rec.wall_s:.1f}"),
    ]
    return Table("Configuration", ("field", "value"), [(k, str(v)) for k, v in rows])


def metrics_table(rec: RunRecord) -> Table:
    """Global metrics at round 0, the last round and the best round (centralized: before / after).

    In a multi-task run (per-task keys such as ``rouge_l_<task>``) the rows are grouped by metric: the metric's mean
    over the tasks, its variants (``routed``), then one row per task, with a ``task`` column (:func:`task_metric_rows`).
    """
    initial, final, best = rec.initial, rec.final, rec.best
    names = sorted(set(initial) | set(final) | {k for k in best if k != "round"})
    if not names:
        return Table("Metrics", (), note="No evaluation logged yet.")
    primary = rec.primary_metric
    if rec.centralized:
        stages: tuple[str, ...] = ("before", "after")
        values: tuple[dict[str, float], ...] = (initial, final)
    else:
        best_label = f"best (round {int(best['round'])})" if "round" in best else "best"
        stages = ("initial (round 0)", f"final (round {rec.rounds_done})", best_label)
        values = (initial, final, best)
    groups = group_metrics(names, rec.tasks)
    note = f"Primary metric: {primary}." if primary else ""
    if any(g.tasks for g in groups):
        rows, starts = task_metric_rows(groups, values)
        ntasks = len({t for g in groups for t in g.tasks})
        note += (
            f" {ntasks} tasks: a metric's first row is the unweighted mean over its tasks (the headline), then one "
            "row per task."
        )
        header = ("metric", "task", *stages)
        return Table("Metrics", header, rows, frozenset(range(2, len(header))), note.strip(), starts)
    names.sort(key=lambda m: m != primary)
    header = ("metric", *stages)
    plain = [(m, *(format_value(v.get(m)) for v in values)) for m in names]
    return Table("Metrics", header, plain, frozenset(range(1, len(header))), note)


def task_metric_rows(
    groups: Sequence[MetricGroup], values: Sequence[dict[str, float]]
) -> tuple[list[tuple[str, ...]], frozenset[int]]:
    """The rows of a multi-task metrics table and the indices of the rows that start a metric's group.

    Each row is ``(metric, task, value per column of values)``: a group's first row names the metric and holds its
    mean (``mean of N tasks``; empty for a metric without tasks), then its variants and one row per task, whose
    metric cell is left empty. Missing values are ``-``.
    """
    rows: list[tuple[str, ...]] = []
    starts: set[int] = set()
    for group in groups:
        starts.add(len(rows))
        entries: list[tuple[str, str]] = []
        if group.mean is not None:
            entries.append((f"mean of {len(group.tasks)} tasks" if group.tasks else "", group.mean))
        entries += list(group.variants.items()) + list(group.tasks.items())
        for i, (label, key) in enumerate(entries):
            rows.append((group.metric if i == 0 else "", label, *(format_value(v.get(key)) for v in values)))
    return rows, frozenset(starts)


def communication_table(rec: RunRecord) -> Table | None:
    """Bytes of the rounds, in total and per round; None for a centralized run or one without traffic yet."""
    if rec.centralized or not (rec.bytes_up or rec.bytes_down or rec.total_bytes_up):
        return None
    n = max(1, len(rec.bytes_up) or rec.rounds_done)
    up, down = rec.total_bytes_up, rec.total_bytes_down
    rows = [
        ("total", format_bytes(up), format_bytes(down), format_bytes(up + down)),
        ("mean per round", format_bytes(up / n), format_bytes(down / n), format_bytes((up + down) / n)),
    ]
    notes = []
    payload = rec.get("trainable_bytes")
    if payload is not None:
        notes.append(f"Trainable adapter size: {format_bytes(payload)}.")
    if rec.phases:
        phase_up = sum(p.bytes_up for p in rec.phases.values())
        phase_down = sum(p.bytes_down for p in rec.phases.values())
        names = [p.name for p in rec.ordered_phases]
        which = " and ".join(names) + (" phases add" if len(names) > 1 else " phase adds")
        notes.append(f"Rounds only: the {which} {format_bytes(phase_up)} up and {format_bytes(phase_down)} down.")
    return Table("Communication", ("", "up", "down", "total"), rows, frozenset({1, 2, 3}), " ".join(notes))


def bytes_by_kind_table(rec: RunRecord) -> Table | None:
    """Bytes per payload kind (summary.json ``bytes_by_kind``, every phase included); None when the run lacks it."""
    if not rec.bytes_by_kind:
        return None
    rows = [(kind, format_bytes(c.up), format_bytes(c.down)) for kind, c in rec.bytes_by_kind.items()]
    if len(rows) > 1:
        up = sum(c.up for c in rec.bytes_by_kind.values())
        down = sum(c.down for c in rec.bytes_by_kind.values())
        rows.append(("total", format_bytes(up), format_bytes(down)))
    note = "Over the whole run: the rounds and the prepare / finish phases."
    return Table("Bytes by payload kind", ("kind", "up", "down"), rows, frozenset({1, 2}), note)


def _detail(value: object) -> str:
    if isinstance(value, str | int | float | bool) or value is None:
        return format_value(value)
    text = json.dumps(value, separators=(",", ":"), default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def phases_table(rec: RunRecord) -> Table | None:
    """The algorithm's ``prepare`` / ``finish`` phases: seconds, bytes up and down (and the algorithm's fields)."""
    phases = rec.ordered_phases
    if not phases:
        return None
    with_details = any(p.fields for p in phases)
    header: tuple[str, ...] = ("phase", "seconds", "up", "down") + (("details",) if with_details else ())
    rows = []
    for p in phases:
        row: tuple[str, ...] = (
            p.name,
            format_seconds(p.seconds),
            format_bytes(p.bytes_up),
            format_bytes(p.bytes_down),
        )
        if with_details:
            row += (", ".join(f"{k}={_detail(v)}" for k, v in p.fields.items()),)
        rows.append(row)
    note = "Prepare runs before round 1, finish after the last round; their bytes are not in the rounds' counts."
    return Table("Phases", header, rows, frozenset({1, 2, 3}), note)


def device_budget_table(rec: RunRecord) -> Table | None:
    """One row per client plus max and mean (summary.json ``device_budget``); None when the run lacks it.

    Columns: client, rounds, s/round, FLOPs/round, trainable params, params held, up, down, and ``<kind> up`` /
    ``<kind> down`` for every payload kind when a client exchanged more than adapters.
    """
    budget = rec.device_budget
    if budget is None or not (budget.per_client or budget.max or budget.mean):
        return None
    kinds = budget.kinds if set(budget.kinds) - {"adapter"} else []
    header: tuple[str, ...] = (
        "client",
        "rounds",
        "s/round",
        "FLOPs/round",
        "trainable params",
        "params held",
        "up",
        "down",
    )
    header += tuple(f"{k} {d}" for k in kinds for d in ("up", "down"))
    clients = budget.sorted_clients()

    def kind_cells(by_kind: dict[str, ByteCounts]) -> tuple[str, ...]:
        counts = [by_kind.get(k, ByteCounts()) for k in kinds]
        return tuple(format_bytes(n) for c in counts for n in (c.up, c.down))

    def cells(label: str, row: BudgetRow, by_kind: dict[str, ByteCounts]) -> tuple[str, ...]:
        return (
            label,
            format_count(row.rounds),
            format_seconds(row.seconds_per_round),
            format_flops(row.flops_per_round),
            format_count(row.trainable_params),
            format_count(row.params_held),
            format_bytes(row.bytes_up),
            format_bytes(row.bytes_down),
            *kind_cells(by_kind),
        )

    def over_clients(reduce: str) -> dict[str, ByteCounts]:
        out = {}
        for k in kinds:
            ups = [r.bytes_by_kind.get(k, ByteCounts()).up for _, r in clients]
            downs = [r.bytes_by_kind.get(k, ByteCounts()).down for _, r in clients]
            if reduce == "max":
                out[k] = ByteCounts(max(ups, default=0), max(downs, default=0))
            else:
                n = max(1, len(clients))
                out[k] = ByteCounts(round(sum(ups) / n), round(sum(downs) / n))
        return out

    rows = [cells(cid, row, row.bytes_by_kind) for cid, row in clients]
    for label, agg in (("max", budget.max), ("mean", budget.mean)):
        if agg is not None:
            rows.append(cells(label, agg, agg.bytes_by_kind or over_clients(label)))
    note = (
        "Per client: rounds it took part in; wall seconds its device spent serving messages and the matrix-product "
        "FLOPs of its training and forward passes, per round taken part in; the most trainable parameters and "
        "parameters held in one message; bytes it sent (up) and received (down), every phase included. "
        "max and mean are over clients."
    )
    return Table("Device budget", header, rows, frozenset(range(1, len(header))), note)


def selection_table(rec: RunRecord) -> Table | None:
    """Data selection (summary.json ``fedhds``): the coreset, the share of the sampled clients' examples trained on,
    the seconds of the selection and training exchanges, and the selection's bytes (every payload kind but the
    adapter); None for runs without data selection."""
    sel = (rec.summary or {}).get("fedhds")
    if not sel:
        return None
    other = {k: c for k, c in rec.bytes_by_kind.items() if k != "adapter"}
    rows = [
        ("coreset", str(sel.get("coreset", MISSING))),
        ("examples trained", format_count(sel.get("examples_trained"))),
        ("data fraction", f"{100 * float(sel.get('data_fraction', 0.0)):.2f}%"),
        ("selection seconds", format_seconds(sel.get("select_seconds"))),
        ("training seconds", format_seconds(sel.get("train_seconds"))),
        ("selection bytes up", format_bytes(sum(c.up for c in other.values()))),
        ("selection bytes down", format_bytes(sum(c.down for c in other.values()))),
    ]
    note = (
        "Seconds are the server's wall time of the selection and training exchanges over all rounds (evaluation "
        "excluded); the fraction is examples trained over the examples the sampled clients held, summed over rounds."
    )
    return Table("Data selection", ("", "value"), rows, frozenset({1}), note)


def incidents_table(rec: RunRecord) -> Table | None:
    """Rejected and failed updates, by round; None when there were none."""
    if not rec.incidents:
        return None
    rows = [(str(i.round), str(i.client), i.kind, i.reason) for i in sorted(rec.incidents, key=lambda i: i.round)]
    return Table("Rejected and failed updates", ("round", "client", "kind", "reason"), rows, frozenset({0, 1}))


def run_tables(rec: RunRecord) -> list[Table]:
    """The tables of one run's report, in page order (sections without data are left out)."""
    tables = [
        config_table(rec),
        metrics_table(rec),
        communication_table(rec),
        bytes_by_kind_table(rec),
        phases_table(rec),
        selection_table(rec),
        device_budget_table(rec),
        incidents_table(rec),
    ]
    return [t for t in tables if t is not None]


def markdown(table: Table) -> str:
    """One table as a markdown section: ``## title``, the table (numeric columns right-aligned), the note."""
    parts = [f"## {table.title}", ""]
    if table.header:
        parts.append(_markdown_rows(table.header, table.rows, table.numeric))
    if table.note:
        parts += [table.note, ""]
    return "\n".join(parts)


def render_run_markdown(record: RunRecord, images: Sequence[str] = ()) -> str:
    """The ``report.md`` of one run: the tables of :func:`run_tables`, then the given images (relative paths)."""
    status = "finished" if record.finished else "in progress or interrupted (no summary.json)"
    parts = [f"# fedpeft report: {_md_cell(record.name)}", "", f"Run directory: `{record.path}`. Status: {status}.", ""]
    parts += [markdown(t) for t in run_tables(record)]
    parts += [f"![{name}]({name})\n" for name in images]
    return "\n".join(parts)
