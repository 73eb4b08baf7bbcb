"""Reports of multi-task runs: per-task metric keys grouped by metric, one panel per metric with a line per task and
the mean, a task legend outside the panels, titles that fit, and grouped metric tables in report.html / report.md."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from synthetic_runs import TASKS_12, make_fed_run, make_multitask_run, multitask_events, multitask_metrics, write_run

from fedpeft.reports import load_run, write_report
from fedpeft.reports.plots import client_data_figure, short_label, task_metric_figure
from fedpeft.reports.store import MetricGroup, group_metrics

if TYPE_CHECKING:
    from matplotlib.figure import Figure, SubFigure
    from matplotlib.legend import Legend
    from matplotlib.text import Text


def test_group_metrics_on_twelve_tasks() -> None:
    names = multitask_metrics(1, TASKS_12, ("rouge_l", "exact_match"))
    assert len(names) == 2 * 13 + 1
    for tasks in (TASKS_12, ()):  # the run's task names known, or recognised from the keys alone
        groups = group_metrics(names, tasks)
        assert [g.metric for g in groups] == ["rouge_l", "exact_match", "loss"]
        rouge, exact, loss = groups
        assert rouge.mean == "rouge_l" and list(rouge.tasks) == sorted(TASKS_12)
        assert rouge.tasks["open_qa"] == "rouge_l_open_qa" and rouge.tasks["closed_qa"] == "rouge_l_closed_qa"
        assert exact.tasks == {t: f"exact_match_{t}" for t in sorted(TASKS_12)}
        assert loss == MetricGroup("loss", "loss")
        keys = [k for g in groups for k in g.keys]
        assert sorted(keys) == sorted(names)  # every key in exactly one group


def test_group_metrics_suffixes_that_are_not_tasks() -> None:
    # a task name that is the tail of another ("qa" / "open_qa"): the longest known task wins
    groups = group_metrics(["rouge_l", "rouge_l_qa", "rouge_l_open_qa"], ["qa", "open_qa"])
    assert groups == [MetricGroup("rouge_l", "rouge_l", {"open_qa": "rouge_l_open_qa", "qa": "rouge_l_qa"})]
    # FL-TAC: accuracy per task, routed inference (a variant) and the router's own accuracy (a metric of its own)
    fltac = ["accuracy", "accuracy_sst2", "accuracy_qnli", "accuracy_rte", "accuracy_routed", "routing_accuracy"]
    for tasks in (["sst2", "qnli", "rte"], []):
        accuracy, routing = group_metrics(fltac, tasks)
        assert list(accuracy.tasks) == ["qnli", "rte", "sst2"] and accuracy.variants == {"routed": "accuracy_routed"}
        assert accuracy.keys == ["accuracy", "accuracy_routed", "accuracy_qnli", "accuracy_rte", "accuracy_sst2"]
        assert routing == MetricGroup("routing_accuracy", "routing_accuracy")
    # a single-task run: nothing is grouped, whatever the underscores
    single = ["accuracy", "accuracy_routed", "macro_f1", "pred_frac_0", "pred_frac_1", "loss"]
    groups = group_metrics(single)
    assert [g.metric for g in groups] == single  # primary first, loss last, the rest by name
    assert not any(g.tasks or g.variants for g in groups)
    # per-task keys whose mean was not logged still form a group when the tasks are known
    (group,) = group_metrics(["rouge_l_a", "rouge_l_b"], ["a", "b"])
    assert group == MetricGroup("rouge_l", None, {"a": "rouge_l_a", "b": "rouge_l_b"})


def test_run_record_tasks(tmp_path: Path) -> None:
    record = load_run(make_multitask_run(tmp_path))
    assert record.tasks == sorted(TASKS_12)  # from the setup event's task_counts
    assert [len(g.tasks) for g in record.metric_groups] == [12, 12, 0]
    assert load_run(make_fed_run(tmp_path)).tasks == []  # label counts are not tasks
    events = multitask_events(tasks=["sst2", "qnli", "rte"], num_clients=4, metrics=("accuracy",))
    for part in events[0]["partition"]:  # a label partition of a mix: the tasks come from the dataset name
        part["label_counts"] = part.pop("task_counts")
    run = write_run(tmp_path / "mix", events, {"dataset": "sst2+qnli+rte"}, truncated_tail=False)
    assert load_run(run).tasks == ["qnli", "rte", "sst2"]


def _legends(fig: Figure | SubFigure) -> list[Legend]:
    return [*fig.legends, *(leg for sub in fig.subfigs for leg in _legends(sub))]


def _inside(text: Text, fig: Figure) -> bool:
    box = text.get_window_extent()
    return box.x0 >= -1 and box.y0 >= -1 and box.x1 <= fig.bbox.width + 1 and box.y1 <= fig.bbox.height + 1


def _render(fig: Figure) -> None:
    fig.canvas.draw()  # runs the constrained layout, so the extents below are the saved image's


def test_multitask_figure_has_a_panel_per_metric_and_a_task_legend(tmp_path: Path) -> None:
    record = load_run(make_multitask_run(tmp_path))
    fig = task_metric_figure(record.global_metrics, record.metric_groups, f"{record.name}: global evaluation")
    _render(fig)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["rouge_l (12 tasks)", "exact_match (12 tasks)", "loss"]
    rouge, exact, loss = axes
    assert len(rouge.get_lines()) == 13 and len(exact.get_lines()) == 13 and len(loss.get_lines()) == 1
    widths = sorted(line.get_linewidth() for line in rouge.get_lines())
    assert widths[-1] > 2 * widths[-2]  # the mean is the one bold line
    assert any("coincide" in t.get_text() for t in exact.texts)  # twelve exact-match lines at 0: said, not hidden
    assert not any("coincide" in t.get_text() for t in rouge.texts)
    (legend,) = _legends(fig)
    entries = [t.get_text() for t in legend.get_texts()]
    assert entries == ["mean of the 12 tasks", *(short_label(t) for t in sorted(TASKS_12))]
    assert all(len(e) <= 48 for e in entries) and len(set(entries)) == 13
    # the legend is outside every panel, and every title fits in the image without running into another
    legend_box = legend.get_window_extent()
    assert all(not legend_box.overlaps(ax.get_window_extent()) for ax in axes)
    titles = [fig._suptitle, *(ax.title for ax in axes)]
    assert all(t is not None and _inside(t, fig) for t in titles)
    boxes = [t.get_window_extent() for t in titles if t is not None]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    assert not boxes[0].overlaps(legend_box)


def test_report_of_a_multitask_run(tmp_path: Path) -> None:
    run = make_multitask_run(tmp_path)
    write_report(run)
    from matplotlib.image import imread

    height, width = imread(run / "report" / "global_metric.png").shape[:2]
    assert width > height  # two panels per row and the legend: 2 x 2, not a tall grid of twelve-plus panels


def test_single_task_plot_is_unchanged(tmp_path: Path) -> None:
    record = load_run(make_fed_run(tmp_path))
    assert not any(g.tasks for g in record.metric_groups)  # the plain one-panel-per-metric figure is drawn


def test_client_data_title_fits_with_many_clients_and_tasks(tmp_path: Path) -> None:
    tasks = [f"task{i:03d}_some_dataset_answer_generation_variant_{i}" for i in range(30)]
    for num_clients, task_names in ((12, TASKS_12), (50, tasks)):
        name = f"ni-{len(task_names)}-tasks-{num_clients}-clients-with-a-long-name-20260101-120000"
        record = load_run(make_multitask_run(tmp_path, name=name, tasks=task_names, num_clients=num_clients))
        fig = client_data_figure(record)
        assert fig is not None
        _render(fig)
        title = fig._suptitle
        assert title is not None
        assert f"{num_clients} clients, {len(task_names)} tasks" in " ".join(title.get_text().split())
        (legend,) = _legends(fig)
        assert len(legend.get_texts()) == len(task_names)
        assert _inside(title, fig) and _inside(legend.get_title(), fig)
        assert not title.get_window_extent().overlaps(legend.get_window_extent())
        (ax,) = fig.axes
        assert not legend.get_window_extent().overlaps(ax.get_window_extent())
        assert len(ax.get_xticks()) <= 30  # 50 client ids are not crammed under the bars
        assert fig.get_figwidth() <= 24


def _markdown_section(text: str, title: str) -> list[list[str]]:
    section = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [[c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows]


def test_metric_tables_are_grouped_by_metric(tmp_path: Path) -> None:
    run = make_multitask_run(tmp_path)
    page = write_report(run).read_text(encoding="utf-8")
    table = _markdown_section((run / "report" / "report.md").read_text(encoding="utf-8"), "Metrics")
    header, _rule, *rows = table
    assert header == ["metric", "task", "initial (round 0)", "final (round 5)", "best (round 5)"]
    assert len(rows) == 2 * 13 + 1
    tasks = sorted(TASKS_12)
    assert rows[0][:2] == ["rouge_l", "mean of 12 tasks"]
    assert [r[:2] for r in rows[1:13]] == [["", t] for t in tasks]  # one row per task under its metric
    assert rows[13][:2] == ["exact_match", "mean of 12 tasks"]
    assert [r[:2] for r in rows[14:26]] == [["", t] for t in tasks]
    assert rows[26][:2] == ["loss", ""]
    index = {t: i for i, t in enumerate(TASKS_12)}
    for row in rows[1:13]:
        assert row[2] == f"{multitask_metrics(0, TASKS_12, ('rouge_l',))[f'rouge_l_{row[1]}']:.4f}"
        assert row[3] == f"{2.0 + 1.5 * index[row[1]] + 0.8 * 5 * (index[row[1]] % 3):.4f}"
    assert all(r[2:] == ["0.0000"] * 3 for r in rows[13:26])
    # report.html: the same rows, a rule above each metric's group after the first
    assert "<th>metric</th><th>task</th><th>initial (round 0)</th>" in page
    starts = re.findall(r'<tr class="group"><td>([^<]*)</td><td>([^<]*)</td>', page)
    assert starts == [("exact_match", "mean of 12 tasks"), ("loss", "")]
    for task in tasks:
        assert page.count(f"<tr><td></td><td>{task}</td>") == 2


def test_single_task_metrics_table_keeps_its_columns(tmp_path: Path) -> None:
    run = make_fed_run(tmp_path)
    write_report(run)
    header, _rule, *rows = _markdown_section((run / "report" / "report.md").read_text(encoding="utf-8"), "Metrics")
    assert header == ["metric", "initial (round 0)", "final (round 4)", "best (round 3)"]
    assert [r[0] for r in rows] == ["accuracy", "loss"]
