"""FL-TAC end to end on the local runtime: per-task adapters, clustering reports, bytes, exported task adapters that
plain peft reproduces, a router, truth labels never used to cluster, and resume after a crash."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from safetensors.torch import load_file

from fedpeft.algorithms.fltac import client as fltac_client
from fedpeft.algorithms.fltac.server import FLTAC
from fedpeft.errors import ConfigError
from fedpeft.runtime import run_federated
from fedpeft.runtime.checkpoint import load_checkpoint

# Product distance and K chosen by silhouette each round (the number of tasks unknown to the server).
AUTO_K = {"min_task_examples": 4, "distance": "product", "k_selection": "silhouette", "max_clusters": 3}
MIX = {"dataset": "sst2+rte", "train_limit": 120, "eval_limit": 40, "max_length": 64}
FED = {"algorithm": "fltac", "rounds": 2, "num_clients": 3, "partition_by": "task", "alpha": 0.5}


def lines(run, kind):
    return [e for e in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if e["event"] == kind]


def adapters(run):
    return {p.parent.name: load_file(p) for p in sorted((run / "adapter").glob("cluster_*/adapter_model.safetensors"))}


@pytest.mark.slow
def test_fltac_trains_one_adapter_per_task_and_exports_them(job, tmp_path):
    from peft import PeftModel

    from fedpeft.algorithms.fltac.router import Router
    from fedpeft.models import load_model, load_tokenizer
    from fedpeft.runtime.setup import build_federated_data
    from fedpeft.training.evaluate import evaluate_classification

    cfg = job(data=MIX, federation={**FED, "client_eval_every": 2}, algorithm={"min_task_examples": 4})
    run = run_federated(cfg, quiet=True).path
    tasks = {e["client"]: e["num_tasks"] for e in lines(run, "client_tasks")}
    assert sorted(tasks) == [0, 1, 2] and all(1 <= n <= 2 for n in tasks.values())  # one query per client
    rounds = lines(run, "round")
    slots = sum(tasks.values())
    # SST-2 and RTE adapters are apart from round 1 on: k-means recovers the tasks exactly in both rounds.
    assert [(r["adapters"], r["clusters"], r["purity"], r["ari"]) for r in rounds] == [(slots, 2, 1.0, 1.0)] * 2
    # The same read off the server's own state (not its report): members share a cluster iff they share a task.
    algo = load_checkpoint(run)["algorithm"]
    assign, truth = algo["assign"], algo["truth"]
    assert sorted(assign) == sorted(truth) and len(assign) == slots and set(truth.values()) == {0, 1}
    assert all((assign[a] == assign[b]) == (truth[a] == truth[b]) for a in assign for b in assign)
    per_task = sorted(Counter(truth.values()).values())
    assert all(sorted(r["cluster_sizes"]) == per_task for r in rounds)

    # Up: one LoRA update per local task (4 layers x (q, v) x (A [4, 128] + B [128, 4]) fp32); down: one per task.
    per_adapter = 4 * 2 * 2 * 4 * 128 * 4
    for e in lines(run, "client_train"):
        assert e["bytes_up"] == e["bytes_down"] == tasks[e["client"]] * per_adapter

    final = lines(run, "eval")[-1]
    assert {"accuracy", "accuracy_sst2", "accuracy_rte", "accuracy_routed", "routing_accuracy"} <= set(final)
    assert final["accuracy"] == pytest.approx((final["accuracy_sst2"] + final["accuracy_rte"]) / 2)
    assert {e["client"] for e in lines(run, "client_eval")} == {0, 1, 2}

    # Exported: one PEFT adapter per cluster + router + the measured task -> adapter map; plain peft reproduces the
    # per-task accuracy the server logged.
    # Each task owns its own cluster's adapter; the two exported adapters were trained (B moved off its zero
    # initialisation) and differ.
    owner = json.loads((run / "adapter" / "tasks.json").read_text())["task_adapters_measured"]
    names = ["rte", "sst2"]  # task index order
    assert owner == {t: f"cluster_{assign[next(m for m in truth if truth[m] == i)]}" for i, t in enumerate(names)}
    assert sorted(owner.values()) == ["cluster_0", "cluster_1"]
    assert Router.load(run / "adapter").names == ["cluster_0", "cluster_1"]
    exported = adapters(run)
    assert exported.keys() == {"cluster_0", "cluster_1"}
    assert exported["cluster_0"].keys() == exported["cluster_1"].keys()
    assert all(bool(v.abs().sum() > 0) for a in exported.values() for k, v in a.items() if "lora_B" in k)
    assert any(not torch.equal(v, exported["cluster_1"][k]) for k, v in exported["cluster_0"].items())
    tok = load_tokenizer("tiny-small")
    task = build_federated_data(cfg, tok).task
    for name in names:  # plain peft on each task's exported adapter reproduces the server's per-task accuracy
        rows = [e for e in task.eval if e["task"] == name]
        model = PeftModel.from_pretrained(load_model("tiny-small"), str(run / "adapter" / owner[name]))
        got = evaluate_classification(model, rows, task.collate, None)["accuracy"]
        assert got == pytest.approx(final[f"accuracy_{name}"]), name
    sst2 = [e for e in task.eval if e["task"] == "sst2"]
    acc = final["accuracy_sst2"]
    assert sorted(p.name for p in (run / "adapters" / "round_0002").iterdir()) == ["cluster_0", "cluster_1"]

    # fedpeft export: every task adapter + router, or one by name; merging needs the name.
    from transformers import AutoModelForCausalLM

    from fedpeft.runtime.export import export_run

    everything = export_run(run, tmp_path / "all")
    assert {"cluster_0", "cluster_1", "router.json", "router.safetensors"} <= {p.name for p in everything.iterdir()}
    with pytest.raises(ConfigError, match="--adapter"):
        export_run(run, tmp_path / "merged", merge=True)
    with pytest.raises(ConfigError, match="cluster_0"):
        export_run(run, tmp_path / "one", adapter="cluster_9")
    merged = export_run(run, tmp_path / "merged", merge=True, adapter=owner["sst2"])
    plain = AutoModelForCausalLM.from_pretrained(merged)
    assert evaluate_classification(plain, sst2, task.collate, None)["accuracy"] == pytest.approx(acc)


@pytest.mark.slow
def test_clustering_never_reads_the_true_tasks(job, monkeypatch):
    options = {"min_task_examples": 4, "cluster_on": "update", "normalize": True}
    honest = run_federated(job(data=MIX, federation=FED, algorithm=options), quiet=True).path
    original = fltac_client.app._handlers["query.fltac"]

    def lying(ctx, msg):
        reply = original(ctx, msg)
        reply.metrics = {k: (0.0 if k.startswith("task") else v) for k, v in reply.metrics.items()}
        return reply

    monkeypatch.setitem(fltac_client.app._handlers, "query.fltac", lying)
    blind = run_federated(job(data=MIX, federation=FED, algorithm=options), quiet=True).path
    want, got = adapters(honest), adapters(blind)
    assert want.keys() == got.keys() == {"cluster_0", "cluster_1"}
    for name in want:
        for key, value in want[name].items():
            assert torch.equal(got[name][key], value), (name, key)
    assert all(r["purity"] == 1.0 for r in lines(blind, "round"))  # every point "is" task 0 when told so


@pytest.mark.slow
def test_without_report_truth_no_task_id_leaves_a_client_and_the_adapters_are_the_same(job, monkeypatch):
    """``report_truth = false`` (the default on deploy): the server does not send the task list, no reply carries
    a task field, the report has no purity/ARI/per-task table, the routed score is the headline; the adapters are
    bit-identical to a run that reported the truth (clustering never read it). On deploy, true is refused."""
    options = {"min_task_examples": 4}
    told = run_federated(job(data=MIX, federation=FED, algorithm=options), quiet=True).path
    sent: list[dict] = []
    original = fltac_client.app._handlers["query.fltac"]

    def spy(ctx, msg):
        reply = original(ctx, msg)
        sent.append({"config": dict(msg.config), "metrics": dict(reply.metrics)})
        return reply

    monkeypatch.setitem(fltac_client.app._handlers, "query.fltac", spy)
    blind = run_federated(job(data=MIX, federation=FED, algorithm={**options, "report_truth": False}), quiet=True)
    assert sent and all("task_names" not in s["config"] for s in sent)
    assert not [k for s in sent for k in s["metrics"] if k.startswith("task")]
    want, got = adapters(told), adapters(blind.path)
    assert want.keys() == got.keys() and want
    for name in want:
        for key, value in want[name].items():
            assert torch.equal(got[name][key], value), (name, key)
    rounds = lines(blind.path, "round")
    assert rounds and not any("ari" in r or "purity" in r for r in rounds)
    assert all("ari" in r for r in lines(told, "round"))
    final = json.loads((blind.path / "summary.json").read_text())["final"]
    assert final["accuracy"] == final["accuracy_routed"] and "routing_accuracy" not in final
    assert not (blind.path / "adapter" / "tasks.json").exists() and (told / "adapter" / "tasks.json").exists()
    with pytest.raises(ConfigError, match="report_truth"):
        job(data=MIX, federation={**FED, "runtime": "deploy"}, algorithm={**options, "report_truth": True})


@pytest.mark.slow
def test_fltac_resumes_after_a_crash_to_the_same_result(job, monkeypatch):
    cfg = job(data=MIX, federation=FED, algorithm=AUTO_K)
    straight = run_federated(cfg, quiet=True).path
    real = FLTAC.fit_round

    def crash_in_round_2(self, rnd, grid):
        if rnd == 2:
            raise RuntimeError("killed")
        return real(self, rnd, grid)

    monkeypatch.setattr(FLTAC, "fit_round", crash_in_round_2)
    crashed_cfg = job(data=MIX, federation=FED, algorithm=AUTO_K)
    with pytest.raises(RuntimeError, match="killed"):
        run_federated(crashed_cfg, quiet=True)
    monkeypatch.setattr(FLTAC, "fit_round", real)
    crashed = max((straight.parent).glob("t-*"), key=lambda p: p.stat().st_mtime)
    assert crashed != straight
    resumed = run_federated(resume=crashed, quiet=True).path
    want, got = adapters(straight), adapters(resumed)
    assert want.keys() == got.keys() and want
    for name in want:
        for key, value in want[name].items():
            assert torch.equal(got[name][key], value), (name, key)
    assert len(lines(resumed, "client_tasks")) == 3  # described once; the resumed server remembered them
    assert all(2 <= r["clusters"] <= 3 and "k_score" in r for r in lines(resumed, "round"))


def test_fltac_config_errors(job):
    with pytest.raises(ConfigError, match="algorithm.distance"):
        job(data=MIX, federation=FED, algorithm={"distance": "cosine"})
    with pytest.raises(ConfigError, match="algorithm.cluster_on"):
        job(data=MIX, federation=FED, algorithm={"cluster_on": "gradient"})
    with pytest.raises(ConfigError, match="algorithm.k_selection"):
        job(data=MIX, federation=FED, algorithm={"k_selection": "elbow"})
    with pytest.raises(ConfigError, match="'flat' for adapter.method='ia3'"):
        job(data=MIX, federation=FED, adapter={"method": "ia3"}, algorithm={"distance": "product"})
    with pytest.raises(ConfigError, match="algorithm.cluster_min_examples"):
        job(data=MIX, federation=FED, algorithm={"cluster_min_examples": 0})
    with pytest.raises(ConfigError, match="algorithm"):
        job(data=MIX, federation=FED, algorithm={"momentum": 0.9})  # a FedAvgM field is not an FL-TAC field


@pytest.mark.slow
def test_token_profiles_tell_qnli_from_rte_from_the_first_round(job):
    # QNLI and RTE share the label words " yes" / " no": their flattened updates point the same way, but their
    # data (instructions, sources) touch different tokens of the input-embedding LoRA.
    lora = {"target_modules": ["embed_tokens", "q_proj", "v_proj"]}
    data = {**MIX, "dataset": "qnli+rte+sst2"}
    fed = {**FED, "num_clients": 4}
    options = {"min_task_examples": 4, "distance": "tokens", "router": "tokens"}
    run = run_federated(job(data=data, federation=fed, adapter=lora, algorithm=options), quiet=True).path
    rounds = lines(run, "round")
    assert len(rounds) == 2 and all(r["clusters"] == 3 for r in rounds)
    assert [(r["purity"], r["ari"]) for r in rounds] == [(1.0, 1.0), (1.0, 1.0)]
    assert all(r["fitted_on"] == r["adapters"] for r in rounds)  # cluster_min_examples = 1: every adapter
    # The tokens router reads the task adapters alone (no client sent a feature) and is saved as such.
    assert json.loads((run / "adapter" / "router.json").read_text())["router"] == "tokens"
    assert lines(run, "eval")[-1]["routing_accuracy"] >= 0.8  # chance: 1/3


def test_token_distance_and_router_need_lora_on_the_input_embedding(job):
    for field in ("distance", "router"):
        with pytest.raises(ConfigError, match=f"algorithm.{field}.*embed_tokens"):
            run_federated(job(data=MIX, federation=FED, algorithm={field: "tokens"}), quiet=True)
    with pytest.raises(ConfigError, match="algorithm.router"):
        job(data=MIX, federation=FED, algorithm={"router": "nearest"})
