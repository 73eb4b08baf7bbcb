"""Write the report of one run (``<run>/report/``) and the comparison of several runs."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from fedpeft.errors import FedPeftError
from fedpeft.fileio import atomic_write_text
from fedpeft.reports import plots
from fedpeft.reports.html import render_comparison_html, render_run_html
from fedpeft.reports.store import RunRecord, load_run
from fedpeft.reports.tables import display_names, markdown_table, render_run_markdown

PlotFn = Callable[[RunRecord, Path], "Path | None"]

RUN_PLOTS: tuple[tuple[str, PlotFn], ...] = (
    ("global_metric.png", plots.plot_global_metrics),
    ("client_metric.png", plots.plot_client_metrics),
    ("loss.png", plots.plot_loss),
    ("bytes.png", plots.plot_bytes),
    ("client_data.png", plots.plot_client_data),
    ("round_fields.png", plots.plot_round_fields),
)


def _as_record(run: str | Path | RunRecord) -> RunRecord:
    return run if isinstance(run, RunRecord) else load_run(run)


def write_report(run_dir: str | Path | RunRecord, out_dir: str | Path | None = None) -> Path:
    """Write the plots, ``report.html`` and ``report.md`` (the same tables in markdown) of one run.

    The tables: configuration, metrics, communication, bytes by payload kind, phases, device budget, rejected and
    failed updates (sections the run has no data for are left out). Plots a run has no data for (e.g.
    ``client_metric.png`` without ``client_eval`` events) are skipped, and a stale copy from an earlier report is
    removed, so the page never shows an image of another state of the run.

    Parameters
    ----------
    run_dir
        A run directory (or an already loaded :class:`RunRecord`).
    out_dir
        Where to write; default ``<run_dir>/report``.

    Returns
    -------
    Path
        The path of ``report.html``.

    Raises
    ------
    FedPeftError
        If ``run_dir`` is not a run directory.
    """
    record = _as_record(run_dir)
    out = Path(out_dir) if out_dir is not None else record.path / "report"
    out.mkdir(parents=True, exist_ok=True)
    images: list[str] = []
    for name, plot in RUN_PLOTS:
        if plot(record, out / name) is not None:
            images.append(name)
        else:
            (out / name).unlink(missing_ok=True)
    page = out / "report.html"
    atomic_write_text(page, render_run_html(record, images))
    atomic_write_text(out / "report.md", render_run_markdown(record, images))
    return page


def compare_runs(run_dirs: Iterable[str | Path | RunRecord], out_dir: str | Path) -> Path:
    """Compare runs: write ``comparison.html``, ``comparison.md`` and ``comparison.png`` into ``out_dir``.

    The table has one row per run (name, algorithm, adapter, rounds, primary metric, its final and best value, bytes
    up and down, wall time, and the device budget's largest per-client seconds per round, FLOPs per round and
    parameters held); the plot shows each run's primary global metric per round. ``comparison.png`` is not
    written when no run has per-round evaluation (e.g. only centralized runs).

    Parameters
    ----------
    run_dirs
        Run directories (or loaded records), in the order of the table rows.
    out_dir
        Folder for the three files (created if missing).

    Returns
    -------
    Path
        The path of ``comparison.html``.

    Raises
    ------
    FedPeftError
        If ``run_dirs`` is empty or one of them is not a run directory.
    """
    records = [_as_record(r) for r in run_dirs]
    if not records:
        raise FedPeftError("compare_runs needs at least one run directory")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images: list[str] = []
    if plots.plot_comparison(records, out / "comparison.png", names=display_names(records)) is not None:
        images.append("comparison.png")
    else:
        (out / "comparison.png").unlink(missing_ok=True)
    atomic_write_text(out / "comparison.md", markdown_table(records))
    page = out / "comparison.html"
    atomic_write_text(page, render_comparison_html(records, images))
    return page
