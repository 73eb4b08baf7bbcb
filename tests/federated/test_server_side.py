"""The contract's server side: phases, typed payloads, bytes per kind, plugin discovery, the device budget."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from federated.conftest import small_job  # type: ignore[import-not-found]
from fedpeft.comm.codec import WireState, decode_state
from fedpeft.comm.transport import Channel
from fedpeft.config import CommConfig, RunConfig, from_dict
from fedpeft.errors import ConfigError
from fedpeft.registry import ALGORITHMS, import_subpackages
from fedpeft.runtime import run_federated
from fedpeft.runtime.checkpoint import load_checkpoint

PLUGIN = "federated.phase_algo"


def _events(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------------ typed payloads
def test_integer_and_bool_payloads_are_lossless_under_any_compressor() -> None:
    comm = CommConfig(up="int4", down="int8")
    arrays = {
        "w": torch.linspace(-1, 1, 10),
        "ids": torch.tensor([2**40 + 3, -7, 0], dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "feat": torch.linspace(-3, 3, 6, dtype=torch.float64),
    }
    for direction in ("up", "down"):
        wire = Channel(comm, direction).encode(dict(arrays), {"ids": "ids", "mask": "ids", "feat": "features"})
        back = decode_state(WireState.from_bytes(wire.to_bytes()))
        assert torch.equal(back["ids"], arrays["ids"]) and back["ids"].dtype == torch.int64
        assert torch.equal(back["mask"], arrays["mask"]) and back["mask"].dtype == torch.bool
        assert torch.equal(back["feat"], arrays["feat"])  # another kind: lossless by default, float64 kept
        assert not torch.equal(back["w"], arrays["w"])  # the adapter kind is quantized as configured
        assert wire.nbytes_by_kind() == {"adapter": {"up": 5, "down": 10}[direction] + 4, "ids": 24 + 3, "features": 48}
        assert wire.kinds() == {"ids": "ids", "mask": "ids", "feat": "features"}


def test_kind_compression_and_error_feedback_are_per_kind() -> None:
    comm = CommConfig(up="topk", topk_ratio=0.5, payloads={"grads": "topk", "acts": "fp16"})
    state: dict[str, Any] = {}
    x = torch.tensor([1.0, -0.25, 0.5, 0.125])
    for _ in range(2):
        ch = Channel(comm, "up")
        ch.load_residuals(state)
        wire = ch.encode({"w": x.clone(), "g": x.clone(), "a": x.clone()}, {"g": "grads", "a": "acts"})
        ch.save_residuals(state)
    assert sorted(state) == ["ef/grads/g", "ef/w"]  # one residual per kind, never shared
    assert torch.equal(state["ef/w"], state["ef/grads/g"])  # same input, same top-k, same memory
    assert wire.tensors["a|values"].dtype == torch.float16
    with pytest.raises(ConfigError, match="comm.payloads.acts"):
        CommConfig(payloads={"acts": "zip"})
    with pytest.raises(ConfigError, match="comm.payloads.adapter"):
        CommConfig(payloads={"adapter": "fp16"})


def test_message_kinds_are_checked() -> None:
    from fedpeft.algorithms.base import Msg

    with pytest.raises(ValueError, match="not one of its arrays"):
        Msg("train", {"a": torch.zeros(1)}, kinds={"b": "ids"})
    with pytest.raises(ValueError, match="identifier"):
        Msg("train", {"a": torch.zeros(1)}, kinds={"a": "two words"})


# ------------------------------------------------------------------------------------------------ discovery
def test_builtin_algorithms_are_found_on_disk_and_plugins_load() -> None:
    import_subpackages("fedpeft.algorithms")
    assert {"fedavg", "fltac", "flora"} <= set(ALGORITHMS.names())
    with pytest.raises(ConfigError, match="plugins"):
        from_dict(RunConfig, {"plugins": ["no_such_module_anywhere"]})
    with pytest.raises(ConfigError, match="federation.algorithm"):
        from_dict(RunConfig, {"federation": {"algorithm": "test_nowhere"}})


# ------------------------------------------------------------------------------------------------ phases
def _phase_job(tmp_path: Path, **extra: Any) -> RunConfig:
    raw = small_job(tmp_path / "runs", federation={"algorithm": "test_phases", "rounds": 2}, plugins=[PLUGIN])
    raw["comm"] = {"up": "int8", "down": "fp16"}
    for key, value in extra.items():
        raw[key] = {**raw.get(key, {}), **value}
    return from_dict(RunConfig, raw)


@pytest.mark.slow
def test_prepare_and_finish_phases_on_local(tmp_path: Path) -> None:
    import federated.phase_algo as plugin  # type: ignore[import-not-found]

    before = dict(plugin.CALLS)
    run = run_federated(_phase_job(tmp_path), runtime="local", quiet=True).path
    events = _events(run)
    kinds = [e["event"] for e in events]
    phases = [e for e in events if e["event"] == "phase"]
    assert [p["name"] for p in phases] == ["prepare", "finish"]
    # prepare after the round-0 evaluation and before round 1; finish after the last round
    assert kinds.index("phase") < kinds.index("round") and kinds[-1] == "phase"
    prep, fin = phases
    assert prep["big"] == [2**40, 2**40 + 1, 2**40 + 2]  # int64 through an int8/fp16 run, exact
    assert sum(prep["label_counts"]) > 0
    summary = json.loads((run / "summary.json").read_text())
    kinds = summary["bytes_by_kind"]
    # counts (2 x int64) + big (1 x int64) per client: three clients at prepare, client 0 again at finish
    assert kinds["counts"]["up"] == 4 * (16 + 8) and kinds["mask"]["up"] == 4 * 2  # 2 bools each time
    width = kinds["features"]["up"] // 3
    assert width % 4 == 0 and width > 0  # one float32 [(L+1) * H] vector per client, lossless
    assert prep["bytes_up"] == 3 * (16 + 8 + 2) + 3 * width and prep["bytes_down"] == 0
    assert summary["phases"]["prepare"]["bytes_up"] == prep["bytes_up"]
    # the split forward equals the full forward at every cut, on the client
    assert fin["split_cuts"] >= 3 and fin["split_max_gap"] < 1e-5
    assert summary["bytes_by_kind"]["adapter"]["up"] > 0
    rounds = [e for e in events if e["event"] == "round"]
    assert sum(r["bytes_up"] for r in rounds) == summary["bytes_by_kind"]["adapter"]["up"]
    budget = summary["device_budget"]
    assert set(budget["per_client"]) == {"0", "1", "2"}
    assert budget["max"]["params_held"] > budget["max"]["trainable_params"] > 0
    assert plugin.CALLS["prepare"] == before["prepare"] + 1 and plugin.CALLS["finish"] == before["finish"] + 1


@pytest.mark.slow
def test_resume_after_prepare_does_not_redo_it(tmp_path: Path) -> None:
    """Kill right after the prepare checkpoint (simulated: the run is stopped in round 1), resume: prepare is not
    run again, and the run ends like an uninterrupted one."""
    import federated.phase_algo as plugin  # type: ignore[import-not-found]

    cfg = _phase_job(tmp_path)
    full = run_federated(cfg, runtime="local", quiet=True).path

    class Stop(Exception):
        pass

    original = plugin.PhaseAlgo.fit_round

    def stop(self: Any, rnd: int, grid: Any) -> Any:
        raise Stop

    plugin.PhaseAlgo.fit_round = stop  # type: ignore[method-assign]
    try:
        with pytest.raises(Stop):
            run_federated(cfg, runtime="local", quiet=True)
    finally:
        plugin.PhaseAlgo.fit_round = original  # type: ignore[method-assign]
    killed = sorted((tmp_path / "runs").iterdir())[-1]
    assert load_checkpoint(killed)["round"] == 0  # the checkpoint the prepare phase wrote
    calls = dict(plugin.CALLS)
    run_federated(resume=killed, quiet=True)
    assert plugin.CALLS["prepare"] == calls["prepare"]  # not redone
    a, b = (json.loads((p / "summary.json").read_text()) for p in (full, killed))
    assert a["final"] == b["final"] and a["bytes_by_kind"] == b["bytes_by_kind"]
    assert [(p["bytes_up"], p["bytes_down"]) for p in a["phases"].values()] == [
        (p["bytes_up"], p["bytes_down"]) for p in b["phases"].values()
    ]  # (their seconds differ)
    assert [e["name"] for e in _events(killed) if e["event"] == "phase"] == ["prepare", "finish"]


# ------------------------------------------------------------------------------------------------ server resources
def test_server_data_is_never_the_clients_or_the_eval_split(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="server.data.split.*evaluation split"):
        _phase_job(tmp_path, server={"data": {"dataset": "sst2", "split": "dev"}})
    with pytest.raises(ConfigError, match="server.data.split.*clients' training split"):
        _phase_job(tmp_path, server={"data": {"dataset": "sst2", "split": "train"}})
    with pytest.raises(ConfigError, match="server.same_vocab"):
        _phase_job(tmp_path, server={"same_vocab": ["client", "large"]})  # no such role
    with pytest.raises(ConfigError, match="server.models.client"):
        _phase_job(tmp_path, server={"models": {"client": "tiny-small"}})


def test_server_resources_vocabulary_check_and_prompts_only(tmp_path: Path) -> None:
    import shutil

    from fedpeft.models import BUNDLED_DIR, load_tokenizer
    from fedpeft.runtime.setup import build_server_resources

    other = tmp_path / "other-vocab"
    shutil.copytree(BUNDLED_DIR / "tiny-small", other)
    tok = json.loads((other / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    a, b = sorted(vocab)[100:102]
    vocab[a], vocab[b] = vocab[b], vocab[a]  # two tokens swap ids: same size, different vocabulary
    (other / "tokenizer.json").write_text(json.dumps(tok))
    client_tok = load_tokenizer("tiny-small")
    cfg = _phase_job(tmp_path, server={"models": {"large": str(other)}, "same_vocab": ["client", "large"]})
    with pytest.raises(ConfigError, match=r"server.same_vocab.*client = 'tiny-small'.*large = .*differ in 4"):
        build_server_resources(cfg, client_tok)
    cfg = _phase_job(
        tmp_path,
        server={"models": {"large": "tiny-large"}, "same_vocab": ["client", "large"],
                "data": {"dataset": "sst2", "split": "test", "limit": 5}},
    )  # fmt: skip
    res = build_server_resources(cfg, client_tok)
    large = res.models["large"]
    assert not any(p.requires_grad for p in large.parameters()) and not large.training
    assert res.data is not None and len(res.data.examples) == 5 and not res.data.labeled
    ex = res.data.examples[0]
    assert len(ex["input_ids"]) == ex["prompt_length"] and set(ex["labels"]) == {-100} and ex["label"] == -1


@pytest.mark.slow
def test_plugin_algorithm_with_phases_on_flower_sim_matches_local(tmp_path: Path) -> None:
    server = {"models": {"large": "tiny-large"}, "data": {"dataset": "sst2", "split": "test", "limit": 7}}
    local = run_federated(_phase_job(tmp_path / "l", server=server), runtime="local", quiet=True).path
    sim = run_federated(_phase_job(tmp_path / "s", server=server), runtime="flower-sim", quiet=True).path
    a, b = (json.loads((p / "summary.json").read_text()) for p in (local, sim))
    assert a["final"] == b["final"]
    assert a["bytes_by_kind"] == b["bytes_by_kind"] and a["phases"].keys() == b["phases"].keys()
    pa, pb = ([e for e in _events(p) if e["event"] == "phase"] for p in (local, sim))
    same = ("name", "bytes_up", "big")
    assert [[e.get(k) for k in same] for e in pa] == [[e.get(k) for k in same] for e in pb]
    assert pa[0]["feature_sums"] == pytest.approx(pb[0]["feature_sums"], rel=1e-6)
    assert pa[1]["split_max_gap"] < 1e-5 and pb[1]["split_max_gap"] < 1e-5
    # the persistent optimizer: client state survived Flower's process boundaries (steps counted across rounds)
    for p in (local, sim):
        steps = [e["optimizer_steps"] for e in _events(p) if e["event"] == "client_train" and e["client"] == 0]
        assert steps == [2.0, 4.0]
    from safetensors.torch import load_file

    wa, wb = (load_file(p / "adapter" / "adapter_model.safetensors") for p in (local, sim))
    for key, value in wa.items():
        assert torch.equal(wb[key], value), key
    assert a["device_budget"]["max"]["flops"] == b["device_budget"]["max"]["flops"] > 0
    assert a["device_budget"]["max"]["params_held"] == b["device_budget"]["max"]["params_held"]
    # the server's own model and data reached the server program (in the ServerApp process on flower-sim) ...
    assert pa[0]["server_models"] == pb[0]["server_models"] and pa[0]["server_examples"] == 7
    assert pa[0]["server_models"]["large"] > a["device_budget"]["max"]["params_held"]  # ... and no client holds it
