"""A run killed mid-way (SIGKILL) and resumed with ``fedpeft run --resume`` ends exactly like an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomli_w
import torch
from safetensors.torch import load_file

from federated.conftest import small_job  # type: ignore[import-not-found]

ROUNDS = 5


def cli(*args: str, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    return subprocess.Popen(
        [sys.executable, "-m", "fedpeft.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **kw,
    )


def finish(proc) -> Path:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return Path(out.strip().splitlines()[-1])


def checkpoint_round(out_dir: Path) -> int:
    for path in out_dir.glob("*/checkpoint/state.pt"):
        try:
            return int(torch.load(path, weights_only=True)["round"])
        except Exception:
            return 0
    return 0


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tmp_path):
    def recipe(name: str) -> Path:
        raw = small_job(tmp_path / name, federation={"rounds": ROUNDS, "algorithm": "fedadam"}, train={"steps": 6})
        raw["algorithm"] = {"server_lr": 0.01}
        path = tmp_path / f"{name}.toml"
        path.write_text(tomli_w.dumps(raw))
        return path

    reference = finish(cli("run", str(recipe("ref")), "--quiet"))

    killed_out = tmp_path / "killed"
    proc = cli("run", str(recipe("killed")), "--quiet")
    deadline = time.time() + 300
    while checkpoint_round(killed_out) < 2:
        assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read()[-2000:]
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_dir = next(killed_out.iterdir())
    assert not (run_dir / "summary.json").exists(), "killed too late: the run had finished"
    killed_at = checkpoint_round(killed_out)
    assert 2 <= killed_at < ROUNDS

    resumed = finish(cli("run", "--resume", str(run_dir), "--quiet"))
    assert resumed == run_dir

    a = load_file(reference / "adapter" / "adapter_model.safetensors")
    b = load_file(resumed / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0)
    ref_summary = json.loads((reference / "summary.json").read_text())
    res_summary = json.loads((resumed / "summary.json").read_text())
    assert res_summary["final"] == ref_summary["final"]
    assert res_summary["bytes_up"] == ref_summary["bytes_up"]
    assert res_summary["resumed_from_round"] == killed_at
    lines = [json.loads(x) for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [e["round"] for e in lines if e["event"] == "round"] == list(range(1, ROUNDS + 1))
    assert [e["round"] for e in lines if e["event"] == "resume"] == [killed_at]
    for r in range(1, ROUNDS + 1):
        assert (resumed / "adapters" / f"round_{r:04d}" / "adapter_model.safetensors").is_file()


def test_resume_of_a_folder_without_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "config.toml").write_text(tomli_w.dumps(small_job(tmp_path)))
    proc = cli("run", "--resume", str(tmp_path))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "no checkpoint" in err
