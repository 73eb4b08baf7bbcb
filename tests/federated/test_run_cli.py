"""`fedpeft run / report / export` through the CLI entry point (in-process)."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomli_w
import torch

from federated.conftest import small_job  # type: ignore[import-not-found]
from fedpeft.cli import main


def write_recipe(tmp_path: Path, **tables) -> Path:
    path = tmp_path / "job.toml"
    path.write_text(tomli_w.dumps(small_job(tmp_path / "runs", **tables)))
    return path


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("federation.algorithm=fedsgd", "allowed: 'fedadagrad'"),
        ("algorithm.momentum=0.9", "algorithm.momentum"),
        ("comm.up=int2", "comm.up='int2'"),
        ("federation.fraction=0", "federation.fraction"),
        ("adapter.method=lorra", "adapter.method"),
    ],
)
def test_config_errors_stop_before_any_work(tmp_path, capsys, override, needle):
    recipe = write_recipe(tmp_path)
    assert main(["run", str(recipe), "--set", override]) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nothing was created


def test_run_prints_table_and_run_dir_last_then_report_and_export(tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from fedpeft.models import load_model

    recipe = write_recipe(tmp_path)
    assert main(["run", str(recipe)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    run = Path(out[-1])
    assert run.is_dir() and (run / "summary.json").is_file()
    assert any(line.startswith("accuracy") for line in out)
    assert (run / "report" / "report.html").is_file() and (run / "report" / "bytes.png").is_file()

    assert main(["export", str(run), "--merge", "--out", str(tmp_path / "merged")]) == 0
    assert main(["export", str(run), "--round", "1", "--out", str(tmp_path / "r1")]) == 0
    assert (tmp_path / "r1" / "adapter_config.json").is_file()
    ids = torch.tensor([[1, 17, 230, 45, 9, 300]])
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    adapted = PeftModel.from_pretrained(load_model("tiny-small"), str(run / "adapter")).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, adapted(ids).logits, atol=1e-4, rtol=1e-4)
    assert main(["export", str(run), "--out", str(tmp_path / "merged")]) == 2  # never overwrites

    assert main(["run", str(recipe), "--quiet", "--set", "federation.algorithm=fedavgm"]) == 0
    other = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["report", str(run), str(other), "--out", str(tmp_path / "cmp")]) == 0
    printed = capsys.readouterr().out
    assert "fedavgm" in printed and (tmp_path / "cmp" / "comparison.png").is_file()


def test_export_merge_refuses_adapters_that_add_computation(tmp_path, capsys):
    recipe = write_recipe(tmp_path, adapter={"method": "prompt_tuning", "num_virtual_tokens": 4}, train={"lr": 3e-2})
    assert main(["run", str(recipe), "--quiet", "--set", "federation.rounds=1"]) == 0
    run = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["export", str(run), "--merge", "--out", str(tmp_path / "m")]) == 2
    assert "cannot be merged" in capsys.readouterr().err
    assert not (tmp_path / "m").exists() and not list(tmp_path.glob(".m.*"))  # nothing half-written left behind
    assert main(["export", str(run), "--out", str(tmp_path / "a")]) == 0  # the adapter itself exports fine
    assert (tmp_path / "a" / "adapter_config.json").is_file()


def test_lora_on_the_tied_embedding_saves_small_adapters_and_merges_exactly(tmp_path, capsys):
    """LoRA on ``embed_tokens`` of a tied-embedding model (the demo's adapter): saved adapters hold the LoRA factors
    only, not peft's copy of the whole base embedding; the merged export computes what the adapter model computes
    (folding the update into the shared matrix would also change the LM head)."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from fedpeft.models import load_model

    recipe = write_recipe(tmp_path, adapter={"target_modules": ["embed_tokens", "q_proj"]}, train={"lr": 2e-2})
    assert main(["run", str(recipe), "--quiet", "--set", "federation.rounds=1"]) == 0
    run = Path(capsys.readouterr().out.strip().splitlines()[-1])
    saved = load_file(run / "adapter" / "adapter_model.safetensors")
    assert any("lora_embedding_A" in k for k in saved) and not any(k.endswith("embed_tokens.weight") for k in saved)
    assert sum(t.numel() for t in saved.values()) == 4 * (8192 + 128) + 4 * 4 * (128 + 128)  # r=4; q_proj in 4 layers

    assert main(["export", str(run), "--merge", "--out", str(tmp_path / "merged")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    adapted = PeftModel.from_pretrained(load_model("tiny-small"), str(run / "adapter")).eval()
    base = load_model("tiny-small").eval()
    ids = torch.tensor([[1, 17, 230, 45, 9, 300]])
    with torch.no_grad():
        want = adapted(ids).logits
        assert (want - base(ids).logits).abs().max() > 1e-3  # the embedding update matters
        torch.testing.assert_close(merged(ids).logits, want, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(merged.get_output_embeddings().weight, base.get_output_embeddings().weight)
