"""Reports of run directories: plots, a self-contained ``report.html`` per run, and comparisons of runs.

The run directory layout and the ``metrics.jsonl`` events are described in ``docs/run-directory.md``.

>>> record = load_run("runs/sst2-fedavg-20260101-120000")          # doctest: +SKIP
>>> write_report(record)                                            # doctest: +SKIP
>>> print(format_table([load_run(p) for p in paths]))               # doctest: +SKIP
"""

from __future__ import annotations

from fedpeft.reports.report import compare_runs, write_report
from fedpeft.reports.store import BudgetRow, ByteCounts, ClientData, DeviceBudget, Incident, Phase, RunRecord, load_run
from fedpeft.reports.tables import format_table

__all__ = [
    "BudgetRow",
    "ByteCounts",
    "ClientData",
    "DeviceBudget",
    "Incident",
    "Phase",
    "RunRecord",
    "compare_runs",
    "format_table",
    "load_run",
    "write_report",
]
