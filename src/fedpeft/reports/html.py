"""Self-contained HTML pages (inline CSS, images by relative path) for one run and for a comparison of runs.

Every piece of text that comes from a run (names, config values, reasons) goes through :func:`html.escape`.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence

from fedpeft.reports.store import RunRecord
from fedpeft.reports.tables import COLUMNS, MISSING, comparison_rows, format_bytes, format_value

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; word-break: break-all; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; } caption { text-align: left; font-weight: 600; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } th { background: #f3f3f3; }
img { max-width: 100%; border: 1px solid #eee; } .note { color: #666; }
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


def _table(header: Sequence[str], rows: Iterable[Sequence[object]], numeric: Iterable[int] = ()) -> str:
    num = set(numeric)
    out = ["<table>", "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>"]
    for row in rows:
        cells = "".join(f'<td class="num">{_e(v)}</td>' if i in num else f"<td>{_e(v)}</td>" for i, v in enumerate(row))
        out.append(f"<tr>{cells}</tr>")
    out.append("</table>")
    return "\n".join(out)


def _config_rows(rec: RunRecord) -> list[tuple[str, object]]:
    clients = rec.get("num_clients")
    per_round = rec.get("clients_per_round")
    clients_cell = MISSING if clients is None else f"{clients}" + (f" ({per_round} per round)" if per_round else "")
    if rec.centralized:
        rounds_cell = str(rec.get("steps", MISSING))
    else:
        planned = rec.get("rounds")
        rounds_cell = f"{rec.rounds_done}" + (f" of {planned}" if planned not in (None, rec.rounds_done) else "")
    trainable = rec.get("trainable_params")
    return [
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


def _metric_section(rec: RunRecord) -> list[str]:
    initial, final, best = rec.initial, rec.final, rec.best
    names = sorted(set(initial) | set(final) | {k for k in best if k != "round"})
    if not names:
        return ["<h2>Metrics</h2>", '<p class="note">No evaluation logged yet.</p>']
    primary = rec.primary_metric
    names.sort(key=lambda m: m != primary)
    if rec.centralized:
        header: list[str] = ["metric", "before", "after"]
        rows: list[list[object]] = [[m, format_value(initial.get(m)), format_value(final.get(m))] for m in names]
    else:
        best_label = f"best (round {int(best['round'])})" if "round" in best else "best"
        header = ["metric", "initial (round 0)", f"final (round {rec.rounds_done})", best_label]
        rows = [[m, format_value(initial.get(m)), format_value(final.get(m)), format_value(best.get(m))] for m in names]
    note = f'<p class="note">Primary metric: {_e(primary)}.</p>' if primary else ""
    return ["<h2>Metrics</h2>", _table(header, rows, numeric=range(1, len(header))), note]


def _bytes_section(rec: RunRecord) -> list[str]:
    if rec.centralized or not (rec.bytes_up or rec.bytes_down or rec.total_bytes_up):
        return []
    n = max(1, len(rec.bytes_up) or rec.rounds_done)
    up, down = rec.total_bytes_up, rec.total_bytes_down
    rows: list[list[object]] = [
        ["total", format_bytes(up), format_bytes(down), format_bytes(up + down)],
        ["mean per round", format_bytes(up / n), format_bytes(down / n), format_bytes((up + down) / n)],
    ]
    payload = rec.get("trainable_bytes")
    out = ["<h2>Communication</h2>", _table(["", "up", "down", "total"], rows, numeric=(1, 2, 3))]
    if payload is not None:
        out.append(f'<p class="note">Trainable adapter size: {_e(format_bytes(payload))}.</p>')
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
    body += ["<h2>Configuration</h2>", _table(["field", "value"], _config_rows(record))]
    body += _metric_section(record)
    body += _bytes_section(record)
    if record.incidents:
        rows = [(i.round, i.client, i.kind, i.reason) for i in sorted(record.incidents, key=lambda i: i.round)]
        body += [
            "<h2>Rejected and failed updates</h2>",
            _table(["round", "client", "kind", "reason"], rows, numeric=(0, 1)),
        ]
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
    numeric = [i for i, c in enumerate(COLUMNS) if c in ("rounds", "final", "best", "bytes_up", "bytes_down", "wall_s")]
    body = [f"<h1>{_e(title)}</h1>", _table(COLUMNS, rows, numeric=numeric)]
    body.append("<h2>Run directories</h2>")
    body.append("<ul>" + "".join(f"<li><code>{_e(r.path)}</code></li>" for r in records) + "</ul>")
    body += _images(images)
    return _page(title, body)
