"""docs/architecture.md's "Writing an algorithm" example, run as written: on local, flower-sim and deploy, resumed
after an interruption, so that the page cannot go stale.

The code block is cut out of the page, written to a module in a temporary folder (on PYTHONPATH, so Flower's Ray
workers and the deployment's processes import it too), and named in the recipe's ``plugins``.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from fedpeft.config import RunConfig, from_dict
from fedpeft.runtime import run_federated

DOC = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"
MODULE = "teacher_avg_example"


def example_code() -> str:
    """The Python block right after the ``<!-- example: teacher_avg -->`` marker of docs/architecture.md."""
    text = DOC.read_text(encoding="utf-8")
    found = re.search(r"<!-- example: teacher_avg -->\s*```python\n(.*?)\n```", text, re.S)
    assert found, "docs/architecture.md lost its example block"
    return found.group(1) + "\n"


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("plugin")
    (folder / f"{MODULE}.py").write_text(example_code(), encoding="utf-8")
    sys.path.insert(0, str(folder))
    mp = pytest.MonkeyPatch()
    mp.setenv("PYTHONPATH", f"{folder}:{__import__('os').environ.get('PYTHONPATH', '')}".rstrip(":"))
    yield MODULE
    mp.undo()
    sys.path.remove(str(folder))


def job(out: Path, **federation: Any) -> RunConfig:
    """The recipe of the docs page, small: tiny-small clients, a tiny-large teacher, unlabeled SST-2 test prompts."""
    return from_dict(
        RunConfig,
        {
            "name": "example",
            "seed": 2,
            "output_dir": str(out),
            "plugins": [MODULE],
            "model": {"name": "tiny-small"},
            "data": {"dataset": "sst2", "train_limit": 240, "eval_limit": 48, "max_length": 48},
            "adapter": {"method": "lora", "r": 2, "target_modules": ["q_proj", "v_proj"]},
            "train": {"steps": 2, "batch_size": 8, "loss": "label_words"},
            "federation": {"algorithm": "teacher_avg", "num_clients": 3, "rounds": 2, "timeout": 120.0, **federation},
            "comm": {"up": "int8"},
            "server": {
                "same_vocab": ["client", "teacher", "student"],
                "models": {"teacher": "tiny-large", "student": "tiny-small"},
                "data": {"dataset": "sst2", "split": "test", "limit": 64},
            },
            "algorithm": {"distill_steps": 2, "distill_batch": 8},
        },
    )


def _events(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _same_adapters(a: Path, b: Path, atol: float = 0.0) -> None:
    want, got = (load_file(p / "adapter" / "adapter_model.safetensors") for p in (a, b))
    assert want.keys() == got.keys() and want
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, atol=atol, rtol=0)


@pytest.fixture(scope="module")
def local_run(plugin: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_federated(job(tmp_path_factory.mktemp("local")), runtime="local", quiet=True).path


@pytest.mark.slow
def test_example_runs_on_local(local_run: Path) -> None:
    events = _events(local_run)
    phase = next(e for e in events if e["event"] == "phase")
    train_rows = sum(e["num_examples"] for e in events if e["event"] == "client_train" and e["round"] == 1)
    assert phase["name"] == "prepare" and sum(phase["label_counts"]) == train_rows  # every client's labels, exact
    assert phase["bytes_up"] == 3 * 2 * 8 and phase["bytes_down"] == 0  # 3 clients x 2 labels x int64
    rounds = [e for e in events if e["event"] == "round"]
    assert len(rounds) == 2 and all(r["distill_loss"] > 0 for r in rounds)
    summary = json.loads((local_run / "summary.json").read_text())
    kinds = summary["bytes_by_kind"]
    assert kinds["counts"] == {"up": 48, "down": 0} and kinds["weights"] == {"up": 0, "down": 2 * 3 * 2 * 4}
    assert summary["device_budget"]["max"]["flops"] > 0 and "accuracy" in summary["final"]


@pytest.mark.slow
def test_example_on_flower_sim_matches_local(local_run: Path, tmp_path: Path) -> None:
    sim = run_federated(job(tmp_path), runtime="flower-sim", quiet=True).path
    _same_adapters(local_run, sim)
    a, b = (json.loads((p / "summary.json").read_text()) for p in (local_run, sim))
    assert a["bytes_by_kind"] == b["bytes_by_kind"]
    assert a["final"]["accuracy"] == pytest.approx(b["final"]["accuracy"], abs=1e-9)


@pytest.mark.slow
def test_example_on_deploy_matches_local(local_run: Path, tmp_path: Path) -> None:
    dep = run_federated(job(tmp_path), runtime="deploy", quiet=True).path
    _same_adapters(local_run, dep)
    a, b = (json.loads((p / "summary.json").read_text()) for p in (local_run, dep))
    assert a["bytes_by_kind"] == b["bytes_by_kind"]


@pytest.mark.slow
def test_example_resumes_with_its_server_state(plugin: str, local_run: Path, tmp_path: Path) -> None:
    """Stopped in round 2 and resumed, it ends where the uninterrupted run did: the server's distillation optimizer
    and the class weights of the prepare phase come back from the checkpoint (prepare is not redone)."""
    module = sys.modules[MODULE]
    cls = module.TeacherAvg
    original = cls.fit_round

    def stop_in_round_two(self: Any, rnd: int, grid: Any) -> Any:
        if rnd == 2:
            raise KeyboardInterrupt
        return original(self, rnd, grid)

    cls.fit_round = stop_in_round_two
    try:
        with pytest.raises(KeyboardInterrupt):
            run_federated(job(tmp_path), runtime="local", quiet=True)
    finally:
        cls.fit_round = original
    stopped = next(tmp_path.iterdir())
    resumed = run_federated(resume=stopped, quiet=True).path
    _same_adapters(local_run, resumed, atol=0.0)
    assert sum(e["event"] == "phase" for e in _events(resumed)) == 1
