"""Self-contained HTML pages (inline CSS, images by relative path) for one run and for a comparison of runs.

Every piece of text that comes from a run (names, config values, reasons) goes through :func:`html.escape`.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence

from fedpeft.reports.store import RunRecord
from fedpeft.reports.tables import COLUMNS, NUMERIC_COLUMNS, Table, comparison_rows, run_tables

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; word-break: break-all; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; } caption { text-align: left; font-weight: 600; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } th { background: #f3f3f3; }
img { max-width: 100%; border: 1px solid #eee; } .note { color: #666; }
tr.group td { border-top: 2px solid #888; }
"""

PLOT_TITLES = {
    "global_metric.png": "Global evaluation",
    "client_metric.png": "Per-client evaluation",
    "loss.png": "Training loss",
    "bytes.png": "Communication per round",
    "client_data.png": "Client data",
    "round_fields.png": "Algorithm figures per round (clustering purity / ARI, update norm, ...)",
    "comparison.png": "Primary metric per round",
}


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _page(title: str, body: Iterable[str]) -> str:
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            f"<title>{_e(title)}</title>",
            f"<style>{_CSS}</style>",
            "</head>",
            "<body>",
            *body,
            "</body>",
            "</html>",
            "",
        ]
    )


def _table(
    header: Sequence[str],
    rows: Iterable[Sequence[object]],
    numeric: Iterable[int] = (),
    group_starts: Iterable[int] = (),
) -> str:
    """An HTML table; rows whose index is in ``group_starts`` (other than the first) get a rule above them."""
    num = set(numeric)
    starts = set(group_starts) - {0}
    out = ["<table>", "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>"]
    for r, row in enumerate(rows):
        cells = "".join(f'<td class="num">{_e(v)}</td>' if i in num else f"<td>{_e(v)}</td>" for i, v in enumerate(row))
        out.append(f'<tr class="group">{cells}</tr>' if r in starts else f"<tr>{cells}</tr>")
    out.append("</table>")
    return "\n".join(out)


def _section(table: Table) -> list[str]:
    """A :class:`Table` as ``<h2>``, ``<table>`` (none without a header) and a note paragraph."""
    out = [f"<h2>{_e(table.title)}</h2>"]
    if table.header:
        out.append(_table(table.header, table.rows, numeric=table.numeric, group_starts=table.group_starts))
    if table.note:
        out.append(f'<p class="note">{_e(table.note)}</p>')
    return out


def _images(images: Sequence[str]) -> list[str]:
    out: list[str] = []
    for name in images:
        title = PLOT_TITLES.get(name, name)
        out += [f"<h2>{_e(title)}</h2>", f'<img src="{_e(name)}" alt="{_e(title)}">']
    return out


def render_run_html(record: RunRecord, images: Sequence[str]) -> str:
    """The ``report.html`` page of one run.

    Parameters
    ----------
    record
        The loaded run.
    images
        PNG file names, relative to the folder the page is written to, in display order.

    Returns
    -------
    str
        A complete HTML document.
    """
    title = f"fedpeft report: {record.name}"
    body = [f"<h1>{_e(title)}</h1>"]
    status = "finished" if record.finished else "in progress or interrupted (no summary.json)"
    notes = [f"Run directory: <code>{_e(record.path)}</code>. Status: {_e(status)}."]
    if record.resumed_from:
        notes.append("Resumed after round " + ", ".join(str(r) for r in record.resumed_from) + ".")
    if record.skipped_lines:
        notes.append(f"Skipped {record.skipped_lines} truncated line(s) at the end of metrics.jsonl.")
    body.append('<p class="note">' + " ".join(notes) + "</p>")
    for table in run_tables(record):
        body += _section(table)
    body += _images(images)
    return _page(title, body)


def render_comparison_html(records: Sequence[RunRecord], images: Sequence[str]) -> str:
    """The ``comparison.html`` page: the comparison table of ``records`` and the given images.

    Parameters
    ----------
    records
        The loaded runs, one table row each.
    images
        PNG file names relative to the page's folder.

    Returns
    -------
    str
        A complete HTML document.
    """
    title = f"fedpeft comparison of {len(records)} run(s)"
    rows = [[row[c] for c in COLUMNS] for row in comparison_rows(records)]
    numeric = [i for i, c in enumerate(COLUMNS) if c in NUMERIC_COLUMNS]
    body = [f"<h1>{_e(title)}</h1>", _table(COLUMNS, rows, numeric=numeric)]
    body.append("<h2>Run directories</h2>")
    body.append("<ul>" + "".join(f"<li><code>{_e(r.path)}</code></li>" for r in records) + "</ul>")
    body += _images(images)
    return _page(title, body)
