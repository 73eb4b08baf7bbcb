"""The ``flower-sim`` runtime: record conversion, FlowerGrid over an in-process fake of Flower's grid, and the
acceptance test (same seeded FedAvg job on ``local`` and ``flower-sim`` gives the same adapter and bytes)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("flwr", reason="flower-sim needs fedpeft[flower]")

from flwr.app import Context, Error, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from safetensors.torch import load_file

from fedpeft.algorithms import get_algorithm
from fedpeft.algorithms.base import Msg
from fedpeft.comm.codec import decode_state, encode_state
from fedpeft.comm.transport import Packet
from fedpeft.config import RunConfig, from_dict
from fedpeft.registry import ALGORITHMS
from fedpeft.runtime import run_federated
from fedpeft.runtime.deploy.grid import DeployGrid
from fedpeft.runtime.flower import client_app as flower_client_module
from fedpeft.runtime.flower import config_text
from fedpeft.runtime.flower import grid as grid_module
from fedpeft.runtime.flower.grid import FlowerGrid
from fedpeft.runtime.flower.records import (
    packet_to_records,
    read_header,
    records_to_packet,
    records_to_state,
    state_to_records,
)
from fedpeft.runtime.local import LocalGrid
from fedpeft.runtime.setup import build_federated_data, build_model


def _job(
    tmp_path: Path, algorithm_table: dict[str, Any] | None = None, dataset: str = "sst2", **federation: Any
) -> RunConfig:
    """The acceptance job: tiny-small on SST-2, 3 clients, 2 rounds of 3 local steps, LoRA r=4 on q/v."""
    return from_dict(
        RunConfig,
        {
            "name": "fsim",
            "seed": 3,
            "output_dir": str(tmp_path),
            "model": {"name": "tiny-small"},
            "data": {"dataset": dataset, "max_length": 64, "train_limit": 600, "eval_limit": 100},
            "adapter": {"method": "lora", "r": 4, "target_modules": ["q_proj", "v_proj"]},
            "train": {"steps": 3, "batch_size": 8, "lr": 4e-3},
            "federation": {"rounds": 2, "num_clients": 3, **federation},
            "algorithm": algorithm_table or {},
        },
    )


# ---------------------------------------------------------------------------------------------------------- records
def test_packet_round_trips_through_flower_records() -> None:
    g = torch.Generator().manual_seed(0)
    state = {
        "layers.0.q_proj.lora_A.weight": torch.randn(4, 6, generator=g),
        "layers.0.q_proj.lora_B.weight": torch.randn(6, 4, generator=g),
    }
    wire = encode_state(state, "bf16")  # bf16 payloads travel bit-cast to int16, tagged in the meta
    assert any(e["bitcast"] for e in wire.meta["entries"])
    config = {"round": 3, "lr": 0.5, "mode": "svd", "flag": True}
    metrics = {"num_examples": 12, "loss": 0.25}
    content = packet_to_records(Packet("train.fltac", wire, config, metrics), extra={"run_config": "x = 1\n"})

    back = records_to_packet(content)
    assert back.action == "train.fltac"
    assert back.wire.meta == wire.meta and back.wire.nbytes == wire.nbytes
    assert list(back.wire.tensors) == list(wire.tensors)
    for key, tensor in wire.tensors.items():
        assert back.wire.tensors[key].dtype == tensor.dtype and torch.equal(back.wire.tensors[key], tensor)
    assert back.config == config and {k: type(v) for k, v in back.config.items()} == {
        "round": int,
        "lr": float,
        "mode": str,
        "flag": bool,
    }
    assert back.metrics == metrics and isinstance(back.metrics["num_examples"], int)
    assert read_header(content, "run_config") == "x = 1\n"
    decoded, direct = decode_state(back.wire), decode_state(wire)
    assert all(torch.equal(decoded[k], direct[k]) and decoded[k].dtype == torch.float32 for k in state)


def test_a_message_is_four_flower_objects_whatever_the_payload() -> None:
    """Flower moves every object of a message (Message, RecordDict, each record, each array) with a request of its
    own per hop; a 28-tensor LoRA packet must travel as 4 objects, not one per tensor or per record."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    g = torch.Generator().manual_seed(0)
    state = {f"layers.{i}.proj.lora_{ab}.weight": torch.randn(8, 16, generator=g) for i in range(14) for ab in "AB"}
    wire = encode_state(state, "fp16")
    packet = Packet("train", wire, {"round": 2, "lr": 1e-3}, {"num_examples": 5, "loss": 0.5})
    content = packet_to_records(packet, extra={"run_config": "x = 1\n"})
    assert len(get_all_nested_objects(content)) == 3  # + the Message itself
    back = records_to_packet(content)
    assert all(torch.equal(back.wire.tensors[k], t) for k, t in wire.tensors.items())
    assert (back.config, back.metrics) == (packet.config, packet.metrics)


def test_records_reject_what_flower_cannot_carry() -> None:
    wire = encode_state({"w": torch.zeros(2)}, "none")
    with pytest.raises(TypeError, match="'bad'"):
        packet_to_records(Packet("train", wire, {"bad": None}))
    with pytest.raises(TypeError, match="'acc'"):
        packet_to_records(Packet("train", wire, {}, {"acc": "high"}))  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="reserved"):
        packet_to_records(Packet("train", wire), extra={"action": "evaluate"})
    with pytest.raises(ValueError, match="lacks the record"):
        records_to_packet(RecordDict())


def test_a_payload_too_big_for_one_flower_object_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from fedpeft.runtime.flower import records

    monkeypatch.setattr(records, "MAX_PAYLOAD_BYTES", 32)  # the real cap is ~2 GiB: too big to allocate in a test
    assert records.wire_to_records(encode_state({"w": torch.zeros(8)}, "none"))  # 32 bytes: at the cap, fine
    with pytest.raises(ValueError, match="bytes is more than one Flower message can carry"):
        records.wire_to_records(encode_state({"w": torch.zeros(9)}, "none"))


def test_client_state_round_trips_including_bf16() -> None:
    state = {
        "ef/w": torch.randn(3, 2).to(torch.bfloat16),
        "ef/v": torch.arange(4, dtype=torch.float32),
        "count": 7,
        "name": "c1",
        "on": False,
    }
    back = records_to_state(*state_to_records(state))
    assert back.keys() == state.keys()
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            assert back[key].dtype == value.dtype and torch.equal(back[key], value)
        else:
            assert back[key] == value and type(back[key]) is type(value)
    with pytest.raises(TypeError, match="'nested'"):
        state_to_records({"nested": {"a": 1}})


def test_client_app_routes_every_message_type(monkeypatch: pytest.MonkeyPatch) -> None:
    """One dispatcher: control queries to their functions, every other type (any algorithm's, a plugin's included,
    registered or not) to ``handle``, which answers unknown actions with an error naming the ones it has."""
    from types import SimpleNamespace

    seen: list[str] = []
    monkeypatch.setattr(flower_client_module, "handle", lambda m, c: seen.append(m.metadata.message_type))
    monkeypatch.setattr(flower_client_module, "_CONTROL", {**flower_client_module._CONTROL, "query.fedpeft_hello": (
        lambda m, c: seen.append("hello"))})  # fmt: skip
    actions = [a for _, cls in ALGORITHMS.items() for a in cls.client_app.actions] + ["train.some_plugin_action"]
    for action in [*actions, "query.fedpeft_hello"]:
        flower_client_module.app(SimpleNamespace(metadata=SimpleNamespace(message_type=action)), None)
    assert seen == [*actions, "hello"]
    assert {"train", "train.fltac", "query.fltac", "train.flora"} <= set(actions)


def test_config_text_round_trips(tmp_path: Path) -> None:
    import tomllib

    cfg = _job(tmp_path, timeout=30.0)
    assert from_dict(RunConfig, tomllib.loads(config_text(cfg))) == cfg


# ------------------------------------------------------------------------------- FlowerGrid, no simulation engine
class VirtualClock:
    """Stands in for the ``time`` module of ``fedpeft.runtime.flower.grid`` (and so of DeployGrid): ``sleep``
    advances a virtual clock instead of waiting. Timeouts keep acting, on a clock that only the grid's polling moves,
    so the tests can say exactly how long a call waited without reading the wall clock of a busy machine."""

    def __init__(self, limit: float = 120.0) -> None:
        self.now, self.sleeps, self.limit = 0.0, 0, limit

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.now += seconds
        if self.now > self.limit:  # a grid that ignores its timeout would otherwise poll forever
            raise AssertionError(f"still waiting after {self.now:.1f} virtual seconds: the timeout is ignored")


@pytest.fixture()
def clock(monkeypatch: pytest.MonkeyPatch) -> VirtualClock:
    fake = VirtualClock()
    monkeypatch.setattr(grid_module, "time", fake)
    return fake


class InProcessGrid:
    """Flower's grid API served in this process: each message is handed to the real fedpeft Flower ClientApp with
    a per-node Context (what Flower's engine does in Ray workers); exceptions become error replies as in Flower.

    Nodes can be taken offline (``offline``: listed no more, their messages never answered) and restarted
    (``restart``: a new activation time and an empty ``context.state``, as a SuperNode that came back)."""

    def __init__(self, num_nodes: int, drop: Iterable[int] = ()) -> None:
        self.contexts = {  # node ids in the opposite order of partition ids, like Flower's random ids can be
            2000 - 7 * i: Context(1, 2000 - 7 * i, {"partition-id": i, "num-partitions": num_nodes}, RecordDict(), {})
            for i in range(num_nodes)
        }
        self.drop = set(drop)  # partitions whose replies never arrive (a timeout)
        self.offline: set[int] = set()  # node ids
        self.activated = {node: "t0" for node in self.contexts}
        self.calls: list[list[int]] = []  # node ids of each push
        self.pulls: list[list[int]] = []  # node ids of the messages asked for by each pull
        self.received: list[tuple[int, str]] = []  # (node id, message type) of every message handled
        self._pending: dict[str, Message] = {}

    def get_node_ids(self) -> list[int]:
        return [n for n in self.contexts if n not in self.offline]

    def get_nodes(self) -> list[Any]:
        from types import SimpleNamespace

        return [SimpleNamespace(node_id=n, last_activated_at=self.activated[n]) for n in self.get_node_ids()]

    def restart(self, node: int) -> None:
        ctx = self.contexts[node]
        self.contexts[node] = Context(1, node, dict(ctx.node_config), RecordDict(), {})
        self.activated[node] += "'"
        self.offline.discard(node)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        from uuid import uuid4

        msgs = list(messages)
        nodes = [m.metadata.dst_node_id for m in msgs]
        assert len(nodes) == len(set(nodes)), "FlowerGrid must not send two messages to one node in one call"
        self.calls.append(nodes)
        ids = []
        for m in msgs:
            m.metadata.__dict__["_message_id"] = str(uuid4())  # as Flower's grids do when pushing
            self._pending[m.metadata.message_id] = m
            ids.append(m.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        out = []
        self.pulls.append([self._pending[mid].metadata.dst_node_id for mid in message_ids])
        for mid in list(message_ids):
            m = self._pending[mid]
            ctx = self.contexts[m.metadata.dst_node_id]
            dropped = int(ctx.node_config["partition-id"]) in self.drop and not m.metadata.message_type.startswith(
                "query"
            )
            if dropped or m.metadata.dst_node_id in self.offline:
                continue  # never answered: stays pending
            del self._pending[mid]
            self.received.append((m.metadata.dst_node_id, m.metadata.message_type))
            try:
                out.append(flower_client_module.app(m, ctx))
            except Exception as exc:
                out.append(Message(Error(code=2, reason=f"{type(exc).__name__}: {exc}"), reply_to=m))
        return out


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunConfig, str, torch.nn.Module, list[Any]]:
    """Model + data built once for the in-process tests (top-k uplink: clients get error-feedback state)."""
    cfg = _job(tmp_path_factory.mktemp("inproc"), local_test_fraction=0.2)
    cfg.data.train_limit = 150
    cfg.train.steps = 1
    cfg.comm.up = "topk"
    cfg.comm.topk_ratio = 0.25
    model, tokenizer = build_model(cfg)
    return cfg, config_text(cfg), model, build_federated_data(cfg, tokenizer).clients


@pytest.fixture()
def in_process(built: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``built``, shared by a LocalGrid and the Flower client module's worker cache, with Flower's run identity set."""
    cfg, text, model, clients = built
    # Message() needs a run identity, which only a Flower run sets (private attributes; restored after the test)
    for attr, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, attr, value)
    worker = flower_client_module._Worker(cfg, model, dict(enumerate(clients)))
    monkeypatch.setattr(flower_client_module, "_CACHE", {flower_client_module.config_digest(text): worker})
    return cfg, text, model, clients, get_algorithm("fedavg").client_app


@pytest.mark.slow
def test_flower_grid_matches_local_grid(in_process: Any) -> None:
    cfg, text, model, clients, app = in_process
    from fedpeft.adapters import adapter_state

    local = LocalGrid(app, model, cfg, clients)
    fake = InProcessGrid(3)
    grid = FlowerGrid(fake, cfg, text)  # type: ignore[arg-type]
    assert grid.nodes == {0: 2000, 1: 1993, 2: 1986}
    state = adapter_state(model)
    msgs = [(c, Msg("train", state, {"round": 1})) for c in (2, 0, 1)]
    want, got = local.send_and_receive(msgs, round=1), grid.send_and_receive(msgs, round=1)
    assert [r.client_id for r in got] == [0, 1, 2]
    for w, g in zip(want, got, strict=True):
        assert g.ok and w.msg is not None and g.msg is not None
        assert (g.bytes_up, g.bytes_down) == (w.bytes_up, w.bytes_down)
        assert g.msg.metrics["num_examples"] == w.msg.metrics["num_examples"]
        assert g.msg.arrays.keys() == w.msg.arrays.keys()
        for k, v in w.msg.arrays.items():
            assert torch.equal(g.msg.arrays[k], v), (g.client_id, k)
    assert grid.ledger.per_round() == local.ledger.per_round() and grid.ledger.total() > 0

    # the error-feedback residuals live on the nodes, and checkpoints read them back in the local layout
    saved, want_states = grid.state_dict(), local.state_dict()["states"]
    assert set(saved["states"][0]) == set(want_states[0]) and any(k.startswith("ef/") for k in want_states[0])
    for cid, st in want_states.items():
        for k, v in st.items():
            assert torch.equal(saved["states"][cid][k], v), (cid, k)
    fresh = FlowerGrid(InProcessGrid(3), cfg, text)  # type: ignore[arg-type]
    fresh.load_state_dict(saved)
    assert fresh.ledger.per_round() == grid.ledger.per_round()
    again = fresh.state_dict()["states"]
    assert all(torch.equal(again[2][k], saved["states"][2][k]) for k in saved["states"][2])


@pytest.mark.slow
def test_the_config_goes_to_each_node_once(in_process: Any) -> None:
    """The hello carries the config text and leaves it in the node's state; later messages carry its digest only,
    and a node that was never greeted (or holds another run's config) answers with an error saying so."""
    cfg, text, model, _, _ = in_process
    from fedpeft.adapters import adapter_state

    fake = InProcessGrid(3)
    sent: list[Any] = []
    push = fake.push_messages
    fake.push_messages = lambda msgs: push(sent.extend(msgs) or msgs)  # type: ignore[method-assign]
    grid = FlowerGrid(fake, cfg, text)  # type: ignore[arg-type]
    state = adapter_state(model)
    assert all(r.ok for r in grid.send_and_receive([(c, Msg("train", state, {"round": 1})) for c in (0, 1)], round=1))
    headers = [m.content.config_records["header"] for m in sent]
    hellos = [h for m, h in zip(sent, headers, strict=True) if m.metadata.message_type == "query.fedpeft_hello"]
    others = [h for m, h in zip(sent, headers, strict=True) if m.metadata.message_type != "query.fedpeft_hello"]
    assert len(hellos) == 3 and all(h["run_config"] == text for h in hellos)
    assert len(others) == 2 and all("run_config" not in h for h in others)
    assert all(h["run_config_sha256"] == flower_client_module.config_digest(text) for h in others)
    fake.restart(2000)  # partition 0's node comes back with an empty state: not greeted for this run
    reply = grid.send_and_receive([(0, Msg("train", state, {"round": 2}))], round=2)[0]
    assert not reply.ok and "not greeted" in str(reply.error)


@pytest.mark.slow
def test_flower_grid_failures_timeouts_and_waves(in_process: Any, clock: VirtualClock) -> None:
    cfg, text, model, _, app = in_process
    from fedpeft.adapters import adapter_state

    fake = InProcessGrid(3, drop=[1])
    grid = FlowerGrid(fake, cfg, text)  # type: ignore[arg-type]
    state = adapter_state(model)
    fake.calls.clear()
    msgs = [
        (0, Msg("train", state, {"round": 1})),
        (2, Msg("train", state, {})),  # no "round": the FedAvg handler raises KeyError
        (1, Msg("query.nothere", state)),  # no handler: fails on the server, as in the local runtime
        (0, Msg("evaluate", state, {"round": 1, "limit": 4})),  # second message to client 0: a second wave
        (1, Msg("train", state, {"round": 1})),  # second wave too, and dropped: times out
    ]
    fake.pulls.clear()
    replies = grid.send_and_receive(msgs, round=1, timeout=8.0)
    # wave 1 (nodes 2000, 1986) answers at the first pull, without waiting; wave 2 waits for the dropped reply of
    # node 1993 until the deadline of the whole call (virtual seconds: 8 s of 0.1 s polls), then gives up on it
    assert fake.pulls[0] == [2000, 1986] and all(1993 in p for p in fake.pulls[1:])
    assert 8.0 <= clock.now < 8.0 + grid.poll_interval and len(fake.pulls) == 1 + clock.sleeps + 1
    assert [r.client_id for r in replies] == [0, 0, 1, 1, 2]
    assert replies[0].ok and replies[0].msg is not None and replies[0].msg.action == "train"
    assert replies[1].ok and replies[1].msg is not None and "num_examples" in replies[1].msg.metrics
    with pytest.raises(ValueError) as exc_info:  # what the local runtime reports for the same message
        app.handle(None, Msg("query.nothere"))  # type: ignore[arg-type]
    assert replies[2].error == f"ValueError: {exc_info.value}"
    assert replies[3].error == "timeout" and replies[3].bytes_up == 0
    assert replies[4].error is not None and replies[4].error.endswith("KeyError: 'round'")
    assert len(fake.calls) == 2 and sorted(fake.calls[0]) == [1986, 2000] and sorted(fake.calls[1]) == [1993, 2000]
    # down is counted for every message (as in the local runtime); up only for replies that came back
    wire_bytes = encode_state(dict(state), "none").nbytes
    assert grid.ledger.total("down") == 5 * wire_bytes
    assert grid.ledger.per_client("up").keys() == {"0"}
    # a failed client keeps its previous state (Flower drops a failed call's context changes)
    assert "fedpeft_state_tensors" not in fake.contexts[1986].state  # client 2 never succeeded
    with pytest.raises(ValueError, match="client id 5"):
        grid.send_and_receive([(5, Msg("train", state, {}))], round=1)


@pytest.mark.slow
def test_flower_grid_dynamic_nodes_leave_and_rejoin(in_process: Any, clock: VirtualClock) -> None:
    """Deployment mode: an offline node's client fails at once (no wait), a restarted node is greeted again and
    gets back its client state from the last checkpoint, and only its own."""
    cfg, text, model, _, _ = in_process
    from fedpeft.adapters import adapter_state

    fake = InProcessGrid(3)
    grid = DeployGrid(fake, cfg, text, poll_interval=0.01)  # type: ignore[arg-type]
    state = adapter_state(model)
    train = lambda rnd: [(c, Msg("train", state, {"round": rnd})) for c in range(3)]  # noqa: E731
    assert all(r.ok for r in grid.send_and_receive(train(1), round=1))
    saved = grid.state_dict()  # the checkpoint: every client has error-feedback residuals (top-k uplink)
    assert all(any(k.startswith("ef/") for k in saved["states"][c]) for c in range(3))

    fake.offline.add(1993)  # client 1's node dies
    fake.calls.clear()
    replies = grid.send_and_receive(train(2), round=2, timeout=30)
    # known offline: no message is pushed to its node and the call never waits (the virtual clock did not move)
    assert [sorted(c) for c in fake.calls] == [[1986, 2000]] and (clock.now, clock.sleeps) == (0.0, 0)
    assert [r.ok for r in replies] == [True, False, True]
    assert replies[1].error == "client 1: its node 1993 is offline" and replies[1].bytes_up == 0
    during = grid.state_dict()  # a checkpoint while it is away keeps its last saved state
    for k, v in saved["states"][1].items():
        assert torch.equal(during["states"][1][k], v)

    fake.restart(1993)  # it comes back with an empty context.state
    fake.received.clear()
    pushed: list[Message] = []
    push = fake.push_messages
    fake.push_messages = lambda msgs: push(pushed.extend(msgs) or msgs)  # type: ignore[method-assign]
    assert all(r.ok for r in grid.send_and_receive(train(3), round=3))
    to_node = [t for node, t in fake.received if node == 1993]
    assert to_node == ["query.fedpeft_hello", "query.fedpeft_state_set", "train"]  # greeted, restored, trained
    assert all(node == 1993 for node, t in fake.received if t != "train")  # the others got nothing extra
    restored = grid.state_dict()["states"][1]
    assert restored.keys() == saved["states"][1].keys()
    # what node 1993 was given back is exactly client 1's checkpointed state (which is not client 0's)
    (state_set,) = [m for m in pushed if m.metadata.message_type == "query.fedpeft_state_set"]
    content = state_set.content
    given = records_to_state(
        content.array_records[flower_client_module.STATE_TENSORS],
        content.config_records[flower_client_module.STATE_SCALARS],
    )
    own, other = saved["states"][1], saved["states"][0]
    assert state_set.metadata.dst_node_id == 1993 and given.keys() == own.keys()
    assert all(torch.equal(given[k], v) if isinstance(v, torch.Tensor) else given[k] == v for k, v in own.items())
    assert any(not torch.equal(v, other[k]) for k, v in own.items() if k.startswith("ef/"))


# ------------------------------------------------------------------------------------------------- acceptance
def _summary_and_events(run_path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    summary = json.loads((run_path / "summary.json").read_text())
    events = [json.loads(line) for line in (run_path / "metrics.jsonl").read_text().splitlines()]
    return summary, events


@pytest.fixture()
def one_torch_thread() -> Any:
    """Run the local runtime with one torch thread, like each Flower worker: the same arithmetic on both sides, and
    on a busy two-core machine 2-4x faster than two threads waiting for each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# FLoRA also exercises a custom action pair (train.flora / evaluate.flora), dense client state kept in Flower's
# context.state across rounds, and growing downlink payloads.
FLORA = {"algorithm_table": {"client_ranks": [2, 4]}, "algorithm": "flora", "client_eval_every": 1}


# FL-TAC: a first-contact query exchange, several adapters per client per message, and k-means on the server.
FLTAC = {
    "algorithm_table": {"min_task_examples": 4},
    "dataset": "sst2+rte",
    "algorithm": "fltac",
    "client_eval_every": 1,
}


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("setting", [{}, FLORA, FLTAC], ids=["fedavg", "flora", "fltac"])
def test_flower_sim_reproduces_the_local_runtime(tmp_path: Path, setting: dict[str, Any]) -> None:
    local = run_federated(_job(tmp_path / "local", **setting), runtime="local", quiet=True).path
    flower = run_federated(_job(tmp_path / "flower", **setting), runtime="flower-sim", quiet=True).path

    files = sorted(p.relative_to(local) for p in (local / "adapter").rglob("adapter_model.safetensors"))
    assert files == sorted(p.relative_to(flower) for p in (flower / "adapter").rglob("adapter_model.safetensors"))
    assert len(files) == (2 if setting is FLTAC else 1)  # FL-TAC: one adapter per task cluster
    for name in files:
        want, got = load_file(local / name), load_file(flower / name)
        assert got.keys() == want.keys() and want
        for key, value in want.items():  # bit-identical, not merely close
            assert torch.equal(got[key], value), (name, key, (got[key] - value).abs().max().item())

    (s_local, e_local), (s_flower, e_flower) = _summary_and_events(local), _summary_and_events(flower)
    assert s_flower["runtime"] == "flower-sim" and s_local["runtime"] == "local"
    assert (s_flower["bytes_up"], s_flower["bytes_down"]) == (s_local["bytes_up"], s_local["bytes_down"])
    assert s_local["bytes_up"] > 0

    def count(events: list[dict[str, Any]], name: str) -> int:
        return sum(e["event"] == name for e in events)

    assert count(e_flower, "client_train") == count(e_local, "client_train") == 3 * 2
    assert count(e_flower, "failure") == count(e_local, "failure") == 0
    rounds = [(e["bytes_up"], e["bytes_down"]) for e in e_flower if e["event"] == "round"]
    assert rounds == [(e["bytes_up"], e["bytes_down"]) for e in e_local if e["event"] == "round"]


def test_sim_workers_sets_the_number_of_ray_workers() -> None:
    import os

    from fedpeft.config import FederationConfig
    from fedpeft.errors import ConfigError
    from fedpeft.runtime.flower import _flower_environment, _ray_cpus

    assert (_ray_cpus(1), _ray_cpus(3), _ray_cpus(0)) == (1, 3, os.cpu_count() or 1)
    with _flower_environment(quiet=True, workers=1) as backend:
        assert backend["init_args"]["num_cpus"] == 1 and backend["client_resources"]["num_cpus"] == 1
    with pytest.raises(ConfigError, match="sim_workers"):
        FederationConfig(sim_workers=-1)
