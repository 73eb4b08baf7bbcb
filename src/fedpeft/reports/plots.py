"""PNG plots of a run (and of several runs side by side).

matplotlib is imported inside the functions and drawn through the Agg canvas directly (no pyplot, no global backend
switch), so importing :mod:`fedpeft.reports` costs nothing and never changes the caller's matplotlib state. Each
function returns the path it wrote, or None when the run has nothing to draw; files are written atomically.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fedpeft.fileio import atomic_write_bytes
from fedpeft.reports.store import PRIMARY_METRICS, RunRecord, Series

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

MIB = 2**20
MAX_METRIC_PANELS = 12
MAX_LEGEND_ENTRIES = 20


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
    rank = {m: i for i, m in enumerate(PRIMARY_METRICS)}
    return sorted(names, key=lambda m: (rank.get(m, len(rank)), m == "loss", m))


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
    """Every global eval metric against the round, one panel per metric (``global_metric.png``)."""
    metrics = _ordered_metrics(list(record.global_metrics))
    return _panels(record.global_metrics, metrics, f"{record.name}: global evaluation", path)


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
    parts = sorted(record.partition, key=lambda p: p.client)
    if not parts:
        return None
    labels = _label_order({label for p in parts for label in p.counts})
    fig = _figure(max(6.0, min(16.0, 0.35 * len(parts) + 3.0)), 4.0)
    ax = fig.subplots()
    xs = list(range(len(parts)))
    bottom = [0.0] * len(parts)
    if labels:
        from matplotlib import colormaps

        qualitative = "tab10" if len(labels) <= 10 else "tab20" if len(labels) <= 20 else None
        cmap = colormaps[qualitative or "viridis"]
        for i, label in enumerate(labels):
            heights = [float(p.counts.get(label, 0)) for p in parts]
            color = cmap(i) if qualitative else cmap(i / max(1, len(labels) - 1))
            ax.bar(xs, heights, bottom=bottom, color=color, label=label, width=0.8)
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        if len(labels) <= MAX_LEGEND_ENTRIES:
            title = "task" if record.partition_key == "task_counts" else "label"
            ax.legend(title=title, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    else:
        ax.bar(xs, [float(p.num_examples) for p in parts], width=0.8)
    ax.set_xticks(xs, [str(p.client) for p in parts], fontsize="small")
    ax.set_xlabel("client")
    ax.set_ylabel("examples")
    ax.set_title(f"{record.name}: client data")
    return _save(fig, path)


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
