"""Comparison tables of several runs: plain text (terminal) and markdown."""

from __future__ import annotations

from collections.abc import Sequence

from fedpeft.reports.store import RunRecord

COLUMNS = ("run", "algorithm", "adapter", "rounds", "metric", "final", "best", "bytes_up", "bytes_down", "wall_s")
MISSING = "-"


def format_bytes(n: float | None) -> str:
    """``n`` bytes in decimal units (``"7.86 MB"``); ``"-"`` for None."""
    if n is None:
        return MISSING
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if abs(value) < 1000 or unit == "GB":
            return f"{int(value)} B" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


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
            }
        )
    return rows


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
    numeric = {"rounds", "final", "bytes_up", "bytes_down", "wall_s"}

    def line(cells: dict[str, str]) -> str:
        parts = [cells[c].rjust(widths[c]) if c in numeric else cells[c].ljust(widths[c]) for c in COLUMNS]
        return "  ".join(parts).rstrip()

    header = line({c: c for c in COLUMNS})
    rule = "  ".join("-" * widths[c] for c in COLUMNS)
    return "\n".join([header, rule, *(line(r) for r in rows)])


def markdown_table(records: Sequence[RunRecord]) -> str:
    """The comparison table as GitHub-flavoured markdown (``|`` in cells escaped), ending with a newline."""

    def cell(text: str) -> str:
        return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")

    rows = comparison_rows(records)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(cell(r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"
