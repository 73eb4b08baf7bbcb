"""FedHDS end to end on the bundled tiny-small model: the selection exchange, coreset training, bytes kept apart,
the baselines in the same harness, the same selection and adapters on local and flower-sim, and resume."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from fedpeft.algorithms.base import Msg
from fedpeft.algorithms.fedhds import select
from fedpeft.comm.transport import Channel
from fedpeft.config import CommConfig
from fedpeft.errors import ConfigError
from fedpeft.registry import COMPRESSORS
from fedpeft.runtime import run_federated

from .conftest import crash_and_resume

FED = {
    "algorithm": "fedhds",
    "rounds": 2,
    "num_clients": 3,
    "alpha": 1.0,
    "min_partition_size": 4,
    "local_test_fraction": 0.0,
}
TRAIN = {"batch_size": 1, "lr": 3e-3}
DATA = {"train_limit": 150}
HDS = {"min_cluster_size": 3}


def lines(run, kind):
    return [e for e in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if e["event"] == kind]


def adapter(run):
    return load_file(run / "adapter" / "adapter_model.safetensors")


def test_fedhds_trains_one_epoch_on_the_chosen_examples_and_keeps_selection_bytes_apart(job):
    run = run_federated(job(data=DATA, train=TRAIN, federation=FED, algorithm=HDS), quiet=True).path
    selects, trains, rounds = lines(run, "client_select"), lines(run, "client_train"), lines(run, "round")
    assert [len([s for s in selects if s["round"] == r]) for r in (1, 2)] == [3, 3]  # every client, every round
    held = {s["client"]: s["num_examples"] for s in selects}
    assert sum(held.values()) == 150
    for r in rounds:
        mine = [t for t in trains if t["round"] == r["round"]]
        # one example per chosen centroid, one step per example at batch 1 (one epoch)
        assert sum(t["num_examples"] for t in mine) == r["coreset"] > 0
        assert all(t["steps"] == t["num_examples"] for t in mine)
        if not r["server_fallback"]:
            assert r["coreset"] == r["server_clusters"] < r["local_clusters"]
        assert r["data_fraction"] == pytest.approx(r["coreset"] / 150)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["fedhds"]["examples_trained"] == sum(r["coreset"] for r in rounds)
    assert summary["fedhds"]["data_fraction"] == pytest.approx(summary["fedhds"]["examples_trained"] / 300)
    kinds = summary["bytes_by_kind"]
    # centroids: float32 [m, 2] up; ids: int64 cluster ids up (one per local cluster) and chosen ids down
    local = sum(s["clusters"] for s in selects)
    assert kinds["centroids"] == {"up": local * 2 * 4, "down": 0}
    assert kinds["ids"] == {"up": local * 8, "down": sum(r["coreset"] for r in rounds) * 8}
    # the adapter goes down once per client per round (with the query), not again with the training message
    n_adapter = sum(v.numel() * 4 for v in adapter(run).values())
    assert kinds["adapter"]["down"] == 2 * 3 * n_adapter
    assert all(r["selection_bytes"] > 0 for r in rounds)
    # the run's report shows the selection apart from the adapter
    from fedpeft.reports.store import load_run
    from fedpeft.reports.tables import format_bytes, selection_table

    table = selection_table(load_run(run))
    assert table is not None
    cells = dict(table.rows)
    assert cells["examples trained"] == str(summary["fedhds"]["examples_trained"])
    assert cells["data fraction"] == f"{100 * summary['fedhds']['data_fraction']:.2f}%"
    assert cells["selection bytes up"] == format_bytes(local * 2 * 4 + local * 8)


def test_baselines_share_the_harness(job):
    """``all`` trains every example once (full-data FedIT); ``random`` draws as many examples as ``hds`` chose,
    per client and round, so the two see the same amount of data."""
    full = run_federated(job(data=DATA, train=TRAIN, federation=FED, algorithm={"coreset": "all"}), quiet=True).path
    assert [r["coreset"] for r in lines(full, "round")] == [150, 150]
    assert not lines(full, "client_select")
    assert "centroids" not in json.loads((full / "summary.json").read_text())["bytes_by_kind"]

    hds = run_federated(job(data=DATA, train=TRAIN, federation=FED, algorithm=HDS), quiet=True).path
    rnd = run_federated(
        job(data=DATA, train=TRAIN, federation=FED, algorithm={**HDS, "coreset": "random"}), quiet=True
    ).path
    per_client = lambda run: sorted((t["round"], t["client"], t["num_examples"]) for t in lines(run, "client_train"))  # noqa: E731
    assert per_client(rnd)[0] == per_client(hds)[0]  # round 1: the same model, so the same HDS counts
    assert not torch.equal(next(iter(adapter(rnd).values())), next(iter(adapter(hds).values())))


def test_pooled_reference_uploads_every_feature(job):
    run = run_federated(
        job(data=DATA, train=TRAIN, federation={**FED, "rounds": 1}, algorithm={**HDS, "coreset": "pooled"}),
        quiet=True,
    ).path
    kinds = json.loads((run / "summary.json").read_text())["bytes_by_kind"]
    # tiny-small: 4 layers + the embedding output, hidden 128: [n, 5 * 128] float32 per client
    assert kinds["features"]["up"] == 150 * 5 * 128 * 4
    assert lines(run, "round")[0]["coreset"] >= 1


def test_no_chosen_centroid_leaves_the_adapter_unchanged(job, monkeypatch):
    """The reference replaces the global adapter with a zero aggregate when nobody trains; FedHDS keeps it."""
    monkeypatch.setattr(
        select, "server_select", lambda c, *a, **k: select.ServerSelection([], torch.zeros(len(c)).long(), False)
    )
    cfg = job(data=DATA, train=TRAIN, federation={**FED, "rounds": 1}, algorithm=HDS)
    run = run_federated(cfg, quiet=True).path
    (r,) = lines(run, "round")
    assert r["coreset"] == 0 and r["clients"] == [] and r["update_norm"] == 0.0
    assert all(bool((v != 0).any()) for k, v in adapter(run).items() if "lora_A" in k)  # A kept its init


def test_shared_projection_and_turbo(job):
    """Turbo (a fixed feature model) with the server's shared projection: the projection goes down as its own
    payload kind, fitted once on the anchors; the adapter goes down with the training message."""
    server = {"data": {"dataset": "sst2", "split": "test", "limit": 40, "labels": True}}
    opts = {**HDS, "reduction": "shared", "feature_model": "tiny-small", "feature_layers": "last"}
    run = run_federated(job(data=DATA, train=TRAIN, federation=FED, algorithm=opts, server=server), quiet=True).path
    kinds = json.loads((run / "summary.json").read_text())["bytes_by_kind"]
    # mean [128] + components [2, 128], float32, to 3 clients in 2 rounds
    assert kinds["projection"] == {"up": 0, "down": 2 * 3 * 3 * 128 * 4}
    trains = lines(run, "client_train")
    assert trains and all(t["bytes_down"] > 3 * 128 * 4 for t in trains)  # the adapter came with training


def test_reselecting_every_k_rounds_reuses_the_coresets(job):
    cfg = job(data=DATA, train=TRAIN, federation={**FED, "rounds": 3}, algorithm={**HDS, "select_every": 2})
    run = run_federated(cfg, quiet=True).path
    assert sorted({s["round"] for s in lines(run, "client_select")}) == [1, 3]
    trains = lines(run, "client_train")
    by_round = {r: sorted((t["client"], t["num_examples"]) for t in trains if t["round"] == r) for r in (1, 2, 3)}
    assert by_round[2] == by_round[1] and by_round[1]
    assert not lines(run, "failure")


@pytest.mark.parametrize("down", [n for n in COMPRESSORS.names() if n != "topk"])
def test_integer_ids_survive_every_downlink_setting(down):
    comm = CommConfig(down=down, payloads={"ids": "int8", "centroids": "lossless"})
    ids = torch.tensor([0, 7, 123456789, 2**40], dtype=torch.long)
    state = {"a.lora_A.weight": torch.randn(4, 8, generator=torch.Generator().manual_seed(0))}
    msg = Msg("train.fedhds", {**state, "clusters": ids}, {"round": 1}, kinds={"clusters": "ids"})
    wire = Channel(comm, "down").encode(dict(msg.arrays), msg.kinds)
    from fedpeft.comm.transport import Packet
    from fedpeft.runtime.transport import unpack

    back = unpack(Packet(msg.action, wire), Channel(comm, "down"))
    assert back.arrays["clusters"].dtype == torch.long and torch.equal(back.arrays["clusters"], ids)
    assert back.kinds["clusters"] == "ids"


def test_config_errors(job):
    with pytest.raises(ConfigError, match="server.data"):
        job(federation=FED, algorithm={"reduction": "shared"})
    for field, value in (("reduction", "umap"), ("coreset", "kmeans"), ("dims", 0), ("server_min_cluster_size", 1)):
        with pytest.raises(ConfigError, match=f"algorithm.{field}"):
            job(federation=FED, algorithm={field: value})
    with pytest.raises(ConfigError, match="centroid_noise"):
        job(federation=FED, algorithm={"centroid_noise": -1.0})


@pytest.mark.slow
def test_local_and_flower_sim_select_and_train_the_same(job, tmp_path):
    cfg = lambda: job(data=DATA, train=TRAIN, federation=FED, algorithm=HDS)  # noqa: E731
    local = run_federated(cfg(), quiet=True).path
    sim = run_federated(cfg(), runtime="flower-sim", quiet=True).path
    pick = lambda run, kind, keys: sorted(tuple(e[k] for k in keys) for e in lines(run, kind))  # noqa: E731
    keys = ("round", "client", "clusters", "noise", "num_examples")
    assert pick(sim, "client_select", keys) == pick(local, "client_select", keys)
    assert pick(sim, "client_train", ("round", "client", "num_examples")) == pick(
        local, "client_train", ("round", "client", "num_examples")
    )
    a, b = adapter(local), adapter(sim)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_fedhds_resumes_after_a_crash_to_the_same_result(job, monkeypatch):
    """Stopped inside round 2 and resumed from the round-1 checkpoint, the run ends where the uninterrupted one did
    (the server's coreset bookkeeping and the clients' selection state come back from the checkpoint)."""
    from fedpeft.algorithms.fedhds.server import FedHDS

    cfg = lambda: job(data=DATA, train=TRAIN, federation=FED, algorithm={**HDS, "select_every": 2})  # noqa: E731
    whole, resumed = crash_and_resume(FedHDS, cfg, monkeypatch)
    a, b = adapter(whole), adapter(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda run: [(t["round"], t["client"], t["num_examples"]) for t in lines(run, "client_train")]  # noqa: E731
    assert strip(resumed) == strip(whole)
    s_whole, s_resumed = (json.loads((p / "summary.json").read_text())["fedhds"] for p in (whole, resumed))
    assert s_resumed["examples_trained"] == s_whole["examples_trained"]


def test_a_malformed_selection_reply_is_rejected_and_the_client_sits_out(job, monkeypatch):
    """Duplicate cluster ids (or centroids of the wrong shape) from a client are logged as rejected; the others
    select and train as usual."""
    real = select.weighted_centroids

    def duplicated(points, labels, probs):
        ids, cents = real(points, labels, probs)
        if len(points) > 60:  # the client with the most examples lies
            ids = torch.zeros_like(ids)
        return ids, cents

    monkeypatch.setattr(select, "weighted_centroids", duplicated)
    run = run_federated(job(data=DATA, train=TRAIN, federation={**FED, "rounds": 1}, algorithm=HDS), quiet=True).path
    rejected = lines(run, "rejected")
    liar = {s["client"] for s in lines(run, "client_select")} ^ {0, 1, 2}
    assert len(rejected) == 1 and {rejected[0]["client"]} == liar
    assert "malformed selection" in rejected[0]["reason"]
    assert liar.isdisjoint(t["client"] for t in lines(run, "client_train"))
