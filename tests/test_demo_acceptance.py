"""The default job (`make demo` = `fedpeft run recipes/demo.toml`) at reduced size must still learn SST-2.

The shipped recipe is run through the CLI, with only its size reduced (fewer clients, rounds and training rows, a
fixed share of the test set), so a change that breaks what the demo shows (aggregation, the embedding LoRA, the
label-word loss, balanced sampling, the learning-rate decay, secure aggregation) fails here rather than in a user's
first run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedpeft.cli import main

ROOT = Path(__file__).resolve().parents[1]
REDUCED = [
    "federation.rounds=4",
    "federation.num_clients=4",
    "federation.eval_every=4",
    "federation.client_eval_every=0",
    "data.train_limit=4000",
    "data.eval_limit=400",  # a fixed random 400 of the 1,821 SST-2 test sentences (201 negative, 199 positive)
]


@pytest.mark.slow
def test_the_default_job_learns_sst2_at_reduced_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["run", str(ROOT / "recipes" / "demo.toml"), "--quiet", "--set", f"output_dir='{tmp_path}'"]
    for item in REDUCED:
        args += ["--set", item]
    assert main(args) == 0
    run = Path(capsys.readouterr().out.strip().splitlines()[-1])
    evals = {
        e["round"]: e for e in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if e["event"] == "eval"
    }
    assert sorted(evals) == [0, 4]
    before, after = evals[0], evals[4]
    # Measured at this size (15 s here): round 0 50.5% at every seed (the untrained model says "negative" to all);
    # after 4 rounds 63.5% / 64.5% / 59.8% at seeds 0 / 1 / 2 ("positive" for 54.5% / 51.5% / 20.3%). The recipe's
    # seed 0 must end at least 8 points above the majority share (50.3%; the 95% interval of a coin on 400 is
    # +-4.9 points) and predict both labels.
    assert before["accuracy"] < 0.55
    assert after["accuracy"] >= 0.583, after
    assert after["accuracy"] - before["accuracy"] >= 0.07
    assert 0.2 <= after["pred_frac_1"] <= 0.8
    # its embedding LoRA names each client's tokens: it is uploaded only under secure aggregation
    kinds = json.loads((run / "summary.json").read_text())["bytes_by_kind"]
    assert kinds["adapter"]["up"] == 0 and kinds["secagg"]["up"] > 0
