"""PNG plots of a run (and of several runs side by side).

matplotlib is imported inside the functions and drawn through the Agg canvas directly (no pyplot, no global backend
switch), so importing :mod:`fedpeft.reports` costs nothing and never changes the caller's matplotlib state. Each
function returns the path it wrote, or None when the run has nothing to draw; files are written atomically.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedpeft.fileio import atomic_write_bytes
from fedpeft.reports.store import MetricGroup, RunRecord, Series, order_metrics

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure, SubFigure
    from matplotlib.lines import Line2D

MIB = 2**20
MAX_METRIC_PANELS = 12
MAX_LEGEND_ENTRIES = 20
MAX_TASK_LEGEND_ENTRIES = 60  # a task legend longer than this is left out (the colours still tell tasks apart)
LEGEND_ROWS = 30  # entries per legend column before a second column starts
LABEL_CHARS = 48  # longer task names are shortened in the middle in legends
BAR_HATCHES = ("", "//", "..", "xx")  # bars of tasks 1-20, 21-40, ... (colours repeat every 20 tasks)
CHAR_WIDTH_IN = 0.068  # rough width of one character of a "small" legend font, in inches


def _figure(width: float = 7.0, height: float = 4.0) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    out = Path(path)
    atomic_write_bytes(out, buf.getvalue())
    return out


def _xy(series: Series) -> tuple[list[int], list[float]]:
    xs = sorted(series)
    return xs, [series[x] for x in xs]


def _integer_x(ax: Axes, label: str = "round") -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(label)
    ax.grid(True, alpha=0.3)


def _ordered_metrics(names: Sequence[str]) -> list[str]:
    """Primary metrics first (in preference order), then the rest alphabetically, ``loss`` last."""
    return order_metrics(names)


def _suptitle(fig: Figure, title: str, width_in: float) -> None:
    """A figure title wrapped to the figure's width (so a long run name never runs off the image)."""
    chars = max(30, int(width_in / 0.1))  # ~0.1 in per character of the default suptitle font
    pieces = title.split(": ", 1) if len(title) > chars and ": " in title else [title]  # run name, then what
    if len(pieces) == 2:
        pieces[0] += ":"
    fig.suptitle("\n".join(line for piece in pieces for line in textwrap.wrap(piece, chars, break_long_words=True)))


def _titled_figure(width: float, height: float, title: str) -> tuple[Figure, SubFigure]:
    """A figure with ``title`` on top and one subfigure below it for the panels and their legend: the constrained
    layout keeps the title, the panels and a legend outside them (``loc="outside right upper"``) from overlapping."""
    fig = _figure(width, height)
    _suptitle(fig, title, width)
    return fig, fig.add_subfigure(fig.add_gridspec(1, 1)[0, 0])


def short_label(name: str, limit: int = LABEL_CHARS) -> str:
    """``name`` shortened in the middle with an ellipsis when longer than ``limit`` characters (a legend entry)."""
    if len(name) <= limit:
        return name
    head = (limit - 1) // 2
    return name[:head] + "…" + name[len(name) - (limit - 1 - head) :]


def _legend_labels(names: Sequence[str]) -> list[str]:
    """Legend entries for ``names``: shortened (:func:`short_label`) unless that makes two of them equal."""
    short = [short_label(n) for n in names]
    return short if len(set(short)) == len(set(names)) else list(names)


def _legend_columns(entries: int) -> int:
    return max(1, math.ceil(entries / LEGEND_ROWS))


def _legend_width(labels: Sequence[str], columns: int) -> float:
    """Inches a figure legend of ``labels`` in ``columns`` columns takes (handle, padding and text)."""
    return columns * (0.75 + CHAR_WIDTH_IN * max((len(t) for t in labels), default=4))


def task_styles(n: int) -> list[dict[str, Any]]:
    """A colour and line style per task, all different: tab10 for up to 10 tasks; beyond, tab20's ten dark colours
    first, then its ten light ones, then the same twenty dashed, dotted and dash-dotted."""
    from matplotlib import colormaps

    if n <= 10:
        return [{"color": colormaps["tab10"](i), "linestyle": "-"} for i in range(n)]
    tab20 = colormaps["tab20"]
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))
    styles = ("-", "--", ":", "-.")
    return [{"color": tab20(order[i % 20]), "linestyle": styles[(i // 20) % len(styles)]} for i in range(n)]


def _panels(
    series: dict[str, Series], names: Sequence[str], title: str, path: str | Path, unit: Sequence[str] = ()
) -> Path | None:
    """One small line plot per name (at most MAX_METRIC_PANELS, three per row); ``unit`` names get a [0, 1] axis."""
    names = list(names)[:MAX_METRIC_PANELS]
    if not names:
        return None
    ncols = min(3, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig = _figure(4.0 * ncols, 3.0 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, name in zip(axes, names, strict=False):
        ax.plot(*_xy(series[name]), marker="o", markersize=3)
        ax.set_title(name)
        if name in unit:
            ax.set_ylim(-0.05, 1.05)
        _integer_x(ax)
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    fig.suptitle(title)
    return _save(fig, path)


def plot_global_metrics(record: RunRecord, path: str | Path) -> Path | None:
    """Every global eval metric against the round, one panel per metric (``global_metric.png``).

    In a multi-task run (per-task keys such as ``rouge_l_<task>``, :attr:`RunRecord.metric_groups`) a metric's panel
    has a thin line per task and its mean over the tasks bold, with one legend of the tasks right of the panels.
    """
    title = f"{record.name}: global evaluation"
    groups = record.metric_groups
    if not any(g.tasks for g in groups):
        metrics = _ordered_metrics(list(record.global_metrics))
        return _panels(record.global_metrics, metrics, title, path)
    fig = task_metric_figure(record.global_metrics, groups, title)
    return _save(fig, path)


def _coincide(series: Sequence[Series]) -> bool:
    first = series[0]
    return all(s == first for s in series[1:])


def task_metric_figure(metrics: dict[str, Series], groups: Sequence[MetricGroup], title: str) -> Figure:
    """The figure of :func:`plot_global_metrics` for a multi-task run: a panel per :class:`MetricGroup` (at most
    MAX_METRIC_PANELS, two per row), a thin line per task, the mean bold black, variants (``routed``) dashed black,
    and one legend (mean, variants, tasks) right of the panels. Tasks keep their colour in every panel."""
    groups = list(groups)[:MAX_METRIC_PANELS]
    tasks = sorted({t for g in groups for t in g.tasks})
    styles = dict(zip(tasks, task_styles(len(tasks)), strict=True))
    labels = dict(zip(tasks, _legend_labels(tasks), strict=True))
    variants = list(dict.fromkeys(v for g in groups for v in g.variants))
    mean_label = f"mean of the {len(tasks)} tasks"
    entries = [mean_label, *variants, *labels.values()]
    show_legend = len(tasks) <= MAX_TASK_LEGEND_ENTRIES
    columns = _legend_columns(len(entries))
    legend_w = _legend_width(entries, columns) if show_legend else 0.0
    ncols = 1 if len(groups) == 1 else 2
    nrows = math.ceil(len(groups) / ncols)
    legend_h = 0.6 + 0.2 * math.ceil(len(entries) / columns) if show_legend else 0.0
    width = 5.0 * ncols + legend_w
    fig, panel = _titled_figure(width, max(3.4 * nrows + 0.5, legend_h), title)
    axes = panel.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, group in zip(axes, groups, strict=False):
        for task, key in group.tasks.items():
            ax.plot(*_xy(metrics[key]), linewidth=1.1, alpha=0.85, marker="o", markersize=2.5, **styles[task])
        for key in group.variants.values():
            ax.plot(*_xy(metrics[key]), color="black", linestyle="--", linewidth=1.8, zorder=4)
        if group.mean is not None:
            bold = group.tasks or group.variants
            ax.plot(
                *_xy(metrics[group.mean]),
                color="black" if bold else "tab:blue",
                linewidth=2.8 if bold else 1.5,
                marker="o",
                markersize=4 if bold else 3,
                zorder=5,
            )
        ax.set_title(group.metric + (f" ({len(group.tasks)} tasks)" if group.tasks else ""))
        task_series = [metrics[k] for k in group.tasks.values()]
        if len(task_series) > 1 and _coincide(task_series):
            ax.text(
                0.02,
                0.96,
                f"all {len(task_series)} task lines coincide",
                transform=ax.transAxes,
                va="top",
                fontsize="small",
                color="dimgray",
            )
        _integer_x(ax)
    for ax in axes[len(groups) :]:
        ax.set_visible(False)
    if show_legend:
        handles = [_line(color="black", linewidth=2.8, marker="o", markersize=4)]
        handles += [_line(color="black", linestyle="--", linewidth=1.8) for _ in variants]
        handles += [_line(linewidth=1.1, marker="o", markersize=2.5, **styles[t]) for t in tasks]
        panel.legend(handles, entries, loc="outside right upper", fontsize="small", ncols=columns, title="task")
    return fig


def _line(**style: Any) -> Line2D:
    from matplotlib.lines import Line2D

    return Line2D([], [], **style)


def _client_metric(record: RunRecord) -> str | None:
    names = _ordered_metrics(list(record.client_metrics))
    return names[0] if names else None


def plot_client_metrics(record: RunRecord, path: str | Path) -> Path | None:
    """Per-client eval metric per round, a thin line per client and the global metric bold (``client_metric.png``).

    Returns None (and writes nothing) when the run logged no ``client_eval`` events.
    """
    metric = _client_metric(record)
    if metric is None:
        return None
    fig = _figure()
    ax = fig.subplots()
    clients = record.client_metrics[metric]
    for i, client in enumerate(sorted(clients)):
        label = f"clients ({len(clients)})" if i == 0 else None
        ax.plot(*_xy(clients[client]), color="tab:blue", linewidth=0.8, alpha=0.45, label=label)
    if metric in record.global_metrics:
        ax.plot(*_xy(record.global_metrics[metric]), color="black", linewidth=2.5, marker="o", label="global")
    ax.set_ylabel(metric)
    ax.set_title(f"{record.name}: per-client {metric}")
    ax.legend(loc="best")
    _integer_x(ax)
    return _save(fig, path)


def plot_loss(record: RunRecord, path: str | Path) -> Path | None:
    """Round train loss (bold) and per-client train loss (thin), or the step loss of a centralized run."""
    if not record.train_loss and not record.client_train_loss and not record.train_steps:
        return None
    fig = _figure()
    ax = fig.subplots()
    if record.train_loss or record.client_train_loss:
        clients = record.client_train_loss
        for i, client in enumerate(sorted(clients)):
            label = f"clients ({len(clients)})" if i == 0 else None
            ax.plot(*_xy(clients[client]), color="tab:orange", linewidth=0.8, alpha=0.45, label=label)
        if record.train_loss:
            ax.plot(*_xy(record.train_loss), color="black", linewidth=2.5, marker="o", label="round (weighted mean)")
        _integer_x(ax)
    else:
        ax.plot(*_xy(record.train_steps), color="black", linewidth=1.5, label="train")
        _integer_x(ax, "step")
    ax.set_ylabel("train loss")
    ax.set_title(f"{record.name}: training loss")
    ax.legend(loc="best")
    return _save(fig, path)


def plot_round_fields(record: RunRecord, path: str | Path) -> Path | None:
    """The algorithm's own per-round numbers (FL-TAC's purity and adjusted Rand index, FLoRA's global rank,
    the update norm), one panel each (``round_fields.png``)."""
    preferred = ("ari", "purity", "clusters")
    names = sorted(
        record.round_fields, key=lambda n: (n not in preferred, preferred.index(n) if n in preferred else 0, n)
    )
    title = f"{record.name}: per-round algorithm figures"
    return _panels(record.round_fields, names, title, path, unit=("ari", "purity"))


def plot_bytes(record: RunRecord, path: str | Path) -> Path | None:
    """Bytes up and down per round, in MiB (2^20 bytes, the unit of the report's tables), as grouped bars
    (``bytes.png``)."""
    rounds = sorted(set(record.bytes_up) | set(record.bytes_down))
    if not rounds:
        return None
    fig = _figure()
    ax = fig.subplots()
    width = 0.4
    up = [record.bytes_up.get(r, 0) / MIB for r in rounds]
    down = [record.bytes_down.get(r, 0) / MIB for r in rounds]
    ax.bar([r - width / 2 for r in rounds], up, width=width, label="up (clients → server)")
    ax.bar([r + width / 2 for r in rounds], down, width=width, label="down (server → clients)")
    ax.set_ylabel("MiB")
    ax.set_title(f"{record.name}: communication per round")
    ax.margins(y=0.25)  # headroom for the legend above the bars
    ax.legend(loc="upper right", ncols=2)
    _integer_x(ax)
    return _save(fig, path)


def _label_order(labels: set[str]) -> list[str]:
    if all(label.lstrip("-").isdigit() for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def plot_client_data(record: RunRecord, path: str | Path) -> Path | None:
    """Examples per client, stacked by label (or by task), from the ``setup`` event (``client_data.png``)."""
    fig = client_data_figure(record)
    return None if fig is None else _save(fig, path)


def client_data_figure(record: RunRecord) -> Figure | None:
    """The figure of :func:`plot_client_data`; None when the run has no partition.

    The legend (labels or tasks, long task names shortened in the middle) sits right of the bars, in columns of at
    most LEGEND_ROWS entries; the title is the figure's, wrapped to its width. With many clients only every few
    client ids are written under the bars.
    """
    parts = sorted(record.partition, key=lambda p: p.client)
    if not parts:
        return None
    labels = _label_order({label for p in parts for label in p.counts})
    is_task = record.partition_key == "task_counts"
    limit = MAX_TASK_LEGEND_ENTRIES if is_task else MAX_LEGEND_ENTRIES
    show_legend = 0 < len(labels) <= limit
    entries = _legend_labels(labels) if is_task else labels
    columns = _legend_columns(len(labels))
    legend_w = _legend_width(entries, columns) if show_legend else 0.0
    bars_w = max(5.0, min(12.0, 0.22 * len(parts) + 2.0))
    rows = math.ceil(len(labels) / columns) if show_legend else 0
    width = bars_w + legend_w
    what = f", {len(labels)} tasks" if is_task and labels else ""
    title = f"{record.name}: client data ({len(parts)} clients{what})"
    fig, panel = _titled_figure(width, max(4.0, 0.9 + 0.2 * rows), title)
    ax = panel.subplots()
    xs = list(range(len(parts)))
    bottom = [0.0] * len(parts)
    if labels:
        from matplotlib import colormaps

        hatches = [""] * len(labels)
        if is_task and len(labels) > 10:  # the task colours of global_metric.png; hatched beyond 20 tasks
            styles = task_styles(len(labels))
            colors = [styles[i]["color"] for i in range(len(labels))]
            hatches = [BAR_HATCHES[(i // 20) % len(BAR_HATCHES)] for i in range(len(labels))]
        else:
            qualitative = "tab10" if len(labels) <= 10 else "tab20" if len(labels) <= 20 else None
            cmap = colormaps[qualitative or "viridis"]
            colors = [cmap(i) if qualitative else cmap(i / max(1, len(labels) - 1)) for i in range(len(labels))]
        for label, entry, color, hatch in zip(labels, entries, colors, hatches, strict=True):
            heights = [float(p.counts.get(label, 0)) for p in parts]
            ax.bar(xs, heights, bottom=bottom, color=color, label=entry, width=0.8, hatch=hatch or None)
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        ax.set_ylim(0, 1.05 * max(bottom))
        if show_legend:
            kind = "task" if is_task else "label"
            panel.legend(title=kind, loc="outside right upper", fontsize="small", ncols=columns)
    else:
        ax.bar(xs, [float(p.num_examples) for p in parts], width=0.8)
    step = max(1, math.ceil(len(parts) / 30))
    ticks = xs[::step]
    ax.set_xticks(ticks, [str(parts[i].client) for i in ticks], fontsize="small")
    ax.set_xlim(-0.6, len(parts) - 0.4)
    ax.set_xlabel("client")
    ax.set_ylabel("examples")
    return fig


def plot_comparison(records: Sequence[RunRecord], path: str | Path, names: Sequence[str] | None = None) -> Path | None:
    """Each run's primary global metric against the round, one line per run (``comparison.png``).

    Runs with different primary metrics get one panel per metric. A centralized run's final value is drawn as a
    dashed horizontal line (a reference for the federated runs); runs without any evaluation are left out. Returns
    None when no run has a per-round series to draw.
    """
    labels = list(names) if names is not None else [r.name for r in records]
    groups: dict[str, list[tuple[str, Series]]] = {}
    references: dict[str, list[tuple[str, float]]] = {}
    for label, rec in zip(labels, records, strict=True):
        metric = rec.primary_metric
        if metric and rec.global_metrics.get(metric):
            groups.setdefault(metric, []).append((label, rec.global_metrics[metric]))
        elif metric and rec.centralized and metric in rec.final:
            references.setdefault(metric, []).append((label, rec.final[metric]))
    if not groups:
        return None
    fig = _figure(7.0 * len(groups), 4.5)
    axes = fig.subplots(1, len(groups), squeeze=False).ravel()
    for ax, (metric, runs) in zip(axes, groups.items(), strict=True):
        for label, series in runs:
            ax.plot(*_xy(series), marker="o", markersize=3, label=label)
        for label, value in references.get(metric, []):
            ax.axhline(value, linestyle="--", linewidth=1.2, color="gray", label=f"{label} (centralized)")
        ax.set_ylabel(metric)
        ax.set_title(f"global {metric}")
        if len(runs) + len(references.get(metric, [])) <= MAX_LEGEND_ENTRIES:
            ax.legend(loc="best", fontsize="small")
        _integer_x(ax)
    return _save(fig, path)
