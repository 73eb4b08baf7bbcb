"""fedpeft.reports.write_report / compare_runs: the PNGs, report.html, comparison.md/.html/.png on disk."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from synthetic_runs import REJECTED, federated_events, make_central_run, make_fed_run, write_run

import fedpeft.reports
from fedpeft.errors import FedPeftError
from fedpeft.reports import compare_runs, load_run, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RUN_PNGS = ["global_metric.png", "client_metric.png", "loss.png", "bytes.png", "client_data.png", "round_fields.png"]


def assert_png(path: Path) -> None:
    from matplotlib.image import imread

    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100, (path, image.shape)


def img_sources(page: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', page)


def test_write_report_writes_every_plot_and_the_page(tmp_path: Path) -> None:
    run = make_fed_run(tmp_path)
    page_path = write_report(run)
    assert page_path == run / "report" / "report.html"
    for name in RUN_PNGS:
        assert_png(run / "report" / name)
    assert not [p for p in (run / "report").iterdir() if p.name.endswith(".tmp")]  # no temporary leftovers
    page = page_path.read_text(encoding="utf-8")
    assert img_sources(page) == RUN_PNGS
    # config summary, metrics (initial 0.5, final 0.7, best 0.75 at round 3), bytes, rejected/failed updates
    for text in ("fedavg", "tiny-small", "sst2", "lora", "local", "3 (3 per round)", "81,920"):
        assert f"<td>{text}</td>" in page
    assert '<td class="num">0.5000</td><td class="num">0.7000</td><td class="num">0.7500</td>' in page
    assert "best (round 3)" in page
    assert "3.1 MiB" in page and "3.8 MiB" in page  # 10 uploads, 12 downloads of 327680 bytes (320 KiB)
    assert f"<td>{REJECTED[2]}</td>" in page and "<td>failure</td>" in page
    assert "Skipped 1 truncated line" in page


def test_report_escapes_run_text(tmp_path: Path) -> None:
    events = federated_events()
    next(e for e in events if e["event"] == "rejected")["reason"] = "<b>bad</b> & worse"
    run = write_run(tmp_path / "x<script>alert(1)<script>", events, config_name="</script><script>alert(2)")
    page = write_report(run).read_text(encoding="utf-8")
    assert "<script>" not in page and "</script>" not in page
    assert "x&lt;script&gt;alert(1)&lt;script&gt;" in page
    assert "&lt;/script&gt;&lt;script&gt;alert(2)" in page
    assert "&lt;b&gt;bad&lt;/b&gt; &amp; worse" in page


def test_client_plot_is_skipped_without_client_eval(tmp_path: Path) -> None:
    events = [e for e in federated_events() if e["event"] != "client_eval"]
    run = write_run(tmp_path / "no-client-eval", events)
    (run / "report").mkdir()
    (run / "report" / "client_metric.png").write_bytes(b"stale")  # from an older report of this run
    page = write_report(run).read_text(encoding="utf-8")
    assert not (run / "report" / "client_metric.png").exists()
    assert img_sources(page) == [n for n in RUN_PNGS if n != "client_metric.png"]


def test_centralized_report_has_loss_and_before_after(tmp_path: Path) -> None:
    run = make_central_run(tmp_path)
    page = write_report(run).read_text(encoding="utf-8")
    assert img_sources(page) == ["loss.png"]
    assert_png(run / "report" / "loss.png")
    assert "<th>before</th><th>after</th>" in page
    assert '<td>accuracy</td><td class="num">0.5000</td><td class="num">0.8100</td>' in page
    assert "<tr><td>steps</td><td>20</td></tr>" in page


def test_report_into_another_folder(tmp_path: Path) -> None:
    record = load_run(make_central_run(tmp_path))
    page = write_report(record, tmp_path / "elsewhere")
    assert page == tmp_path / "elsewhere" / "report.html"
    assert (tmp_path / "elsewhere" / "loss.png").is_file()
    assert not (record.path / "report").exists()


def test_compare_runs(tmp_path: Path) -> None:
    a = make_fed_run(tmp_path, name="fedavg-a")
    events = federated_events()
    for e in events:
        if e["event"] == "eval":
            e["accuracy"] = round(e["accuracy"] + 0.1, 4)
    b = write_run(tmp_path / "fedprox-|b", events)  # a pipe must not break the markdown table
    c = make_central_run(tmp_path)
    out = tmp_path / "cmp"
    page_path = compare_runs([a, b, c], out)
    assert page_path == out / "comparison.html"
    assert_png(out / "comparison.png")
    md = (out / "comparison.md").read_text(encoding="utf-8").splitlines()
    assert md[0].startswith("| run | algorithm | adapter | rounds |")
    rows = md[2:]
    assert len(rows) == 3
    cells = [[c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows]
    assert all(len(r) == len(cells[0]) for r in cells) and len(cells[0]) == 13
    assert [r[0] for r in cells] == ["fedavg-a", "fedprox-\\|b", "central-20260101-120000"]
    assert [r[5] for r in cells] == ["0.7000", "0.8000", "0.8100"]  # final primary metric
    assert [r[6] for r in cells] == ["0.7500 (round 3)", "0.8500 (round 3)", "-"]
    page = page_path.read_text(encoding="utf-8")
    assert img_sources(page) == ["comparison.png"]
    assert "<td>fedprox-|b</td>" in page and '<td class="num">0.8000</td>' in page


def test_compare_runs_errors(tmp_path: Path) -> None:
    with pytest.raises(FedPeftError, match="at least one"):
        compare_runs([], tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FedPeftError, match="empty"):
        compare_runs([make_fed_run(tmp_path), tmp_path / "empty"], tmp_path / "out")


def test_package_does_not_import_matplotlib_at_import_time() -> None:
    # Checked on the source: matplotlib may only be imported inside functions (lazily).
    package = Path(fedpeft.reports.__file__).parent
    for source in package.glob("*.py"):
        tree = ast.parse(source.read_text(encoding="utf-8"))
        for node in tree.body:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n.split(".")[0] == "matplotlib" for n in names), source
