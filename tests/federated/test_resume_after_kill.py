"""A run killed mid-round (SIGKILL) and resumed with ``fedpeft run --resume`` ends exactly like an uninterrupted run.

The kill is deterministic: the plugin ``federated.kill_algo`` (FedAdam; tests/ goes on the subprocesses'
PYTHONPATH) kills its own server process right after round ``KILL_AT``'s updates were applied, when the checkpoint
of round ``KILL_AT - 1`` is on disk and round ``KILL_AT``'s first log lines are already written.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tomli_w
import torch
from safetensors.torch import load_file

from federated.conftest import small_job  # type: ignore[import-not-found]
from federated.kill_algo import KILL_ENV, NAME  # type: ignore[import-not-found]

ROUNDS = 4
KILL_AT = 3
TESTS = Path(__file__).resolve().parents[1]
TIMING = {"time", "seconds", "seconds_per_round", "wall_s"}  # the only fields two runs may differ in (wall clock)


def cli(*args: str, kill_at: int | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), env.get("PYTHONPATH", "")) if p)
    env.pop(KILL_ENV, None)
    if kill_at is not None:
        env[KILL_ENV] = str(kill_at)
    cmd = [sys.executable, "-m", "fedpeft.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)


def run_path(proc: subprocess.CompletedProcess[str]) -> Path:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return Path(proc.stdout.strip().splitlines()[-1])


def events(run: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def untimed(value: Any) -> Any:
    """``value`` without its wall-clock fields, at any depth."""
    if isinstance(value, dict):
        return {k: untimed(v) for k, v in value.items() if k not in TIMING}
    return [untimed(v) for v in value] if isinstance(value, list) else value


def safetensors_files(run: Path) -> list[Path]:
    return sorted(p.relative_to(run) for p in run.rglob("adapter_model.safetensors"))


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tmp_path: Path) -> None:
    def recipe(name: str) -> Path:
        raw = small_job(tmp_path / name, federation={"rounds": ROUNDS, "algorithm": NAME}, train={"steps": 6})
        raw["algorithm"] = {"server_lr": 0.01}
        raw["plugins"] = ["federated.kill_algo"]
        path = tmp_path / f"{name}.toml"
        path.write_text(tomli_w.dumps(raw))
        return path

    reference = run_path(cli("run", str(recipe("ref")), "--quiet"))

    killed = cli("run", str(recipe("killed")), "--quiet", kill_at=KILL_AT)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    (run_dir,) = (tmp_path / "killed").iterdir()
    assert not (run_dir / "summary.json").exists()
    assert torch.load(run_dir / "checkpoint" / "state.pt", weights_only=True)["round"] == KILL_AT - 1
    before = events(run_dir)  # the killed round's client updates were logged, the round itself was not
    assert [e["round"] for e in before if e["event"] == "round"] == list(range(1, KILL_AT))
    assert {e["client"] for e in before if e["event"] == "client_train" and e["round"] == KILL_AT} == {0, 1, 2}
    assert "plugins" in (run_dir / "config.toml").read_text() and NAME in (run_dir / "config.toml").read_text()

    resumed = run_path(cli("run", "--resume", str(run_dir), "--quiet"))
    assert resumed == run_dir

    # every adapter (per round and final): same tensors, same file bytes
    files = safetensors_files(reference)
    assert files == safetensors_files(resumed) and len(files) == ROUNDS + 1
    for name in files:
        a, b = load_file(reference / name), load_file(resumed / name)
        assert a.keys() == b.keys() and a
        for k in a:
            assert torch.equal(b[k], a[k]), (name, k, (b[k] - a[k]).abs().max().item())
        assert (resumed / name).read_bytes() == (reference / name).read_bytes(), name

    ref_summary = json.loads((reference / "summary.json").read_text())
    res_summary = json.loads((resumed / "summary.json").read_text())
    assert res_summary.pop("resumed_from_round") == KILL_AT - 1
    assert untimed(res_summary) == untimed(ref_summary)  # final metrics, bytes, device budget (FLOPs, params)
    # the log: the unfinished round cut off, one resume line, then exactly the uninterrupted run's lines
    assert [e["round"] for e in events(resumed) if e["event"] == "resume"] == [KILL_AT - 1]
    assert [e["round"] for e in events(resumed) if e["event"] == "round"] == list(range(1, ROUNDS + 1))
    assert untimed([e for e in events(resumed) if e["event"] != "resume"]) == untimed(events(reference))


def test_resume_of_a_folder_without_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(tomli_w.dumps(small_job(tmp_path)))
    proc = cli("run", "--resume", str(tmp_path))
    assert proc.returncode == 2
    assert "no checkpoint" in proc.stderr
