"""The ``deploy`` runtime: certificates, the Flower app folder, the node worker, and end-to-end loopback runs with
three SuperNodes, TLS and authentication on, a node killed mid-run, an intruder refused, a killed ServerApp resumed.

The end-to-end tests start real processes (SuperLink, SuperNodes, node workers, ServerApp, ClientApps); every one
is stopped by PID when the test ends, also on failure (the runtime's own teardown, then a sweep of whatever the
pids file names).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("flwr", reason="the deploy runtime needs fedpeft[flower]")

from safetensors.torch import load_file

from fedpeft.config import RunConfig, from_dict
from fedpeft.errors import ConfigError
from fedpeft.runtime import run_federated
from fedpeft.runtime.deploy import certs as certs_mod
from fedpeft.runtime.deploy.cluster import descendants, flower_env, flwr_cli, free_port, write_app

pytestmark = pytest.mark.slow


# ------------------------------------------------------------------------------------------------ certificates
def test_certs_chain_sans_node_keys_and_reuse(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from flwr.supercore.primitives.asymmetric import uses_nist_ec_curve

    modes: list[tuple[str, int]] = []  # every chmod while the files are made: the keys are 0600 from their first byte
    real_chmod = os.chmod
    os.chmod = lambda path, mode, *a, **k: (modes.append((Path(path).name, mode)), real_chmod(path, mode, *a, **k))[1]  # type: ignore[assignment]
    try:
        paths = certs_mod.generate(tmp_path / "c", 2, hosts=["node.example", "10.1.2.3"])
    finally:
        os.chmod = real_chmod
    private = ("ca.key", "server.key", "node-0", "node-1")
    assert {m for name, m in modes if name.lstrip(".").startswith(private) and ".pub" not in name} == {0o600}
    assert any(name.lstrip(".").startswith("node-0.") and ".pub" not in name for name, _ in modes)  # temp files seen
    ca = x509.load_pem_x509_certificate(paths.ca.read_bytes())
    server = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)  # signed by our CA (raises otherwise)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} == {"10.1.2.3", "127.0.0.1", "::1"}
    assert set(sans.get_values_for_type(x509.DNSName)) == {"node.example", "localhost"}
    for i in range(2):  # the formats Flower's SuperNode and `flwr supernode register` load
        from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

        key = load_ssh_private_key(paths.node_key(i).read_bytes(), None)
        pub = load_ssh_public_key(paths.node_pub(i).read_bytes())
        assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
        assert isinstance(pub, ec.EllipticCurvePublicKey) and uses_nist_ec_curve(pub)
        assert pub.public_numbers() == key.public_key().public_numbers()
        assert paths.node_key(i).stat().st_mode & 0o777 == 0o600
    assert paths.server_key.stat().st_mode & 0o777 == 0o600 and paths.ca_key.stat().st_mode & 0o777 == 0o600

    # a TLS handshake as Flower's clients do it (hostname checking on) succeeds for 127.0.0.1, fails for a name
    # that is not in the certificate
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(paths.server_cert, paths.server_key)
    client_ctx = ssl.create_default_context(cafile=str(paths.ca))
    assert _handshake(server_ctx, client_ctx, "127.0.0.1") is None
    assert "mismatch" in str(_handshake(server_ctx, client_ctx, "other.example"))

    # again with more nodes: the CA and existing keys are kept, the new key is added
    before = (paths.ca.read_bytes(), paths.node_key(1).read_bytes())
    again = certs_mod.generate(tmp_path / "c", 3)
    assert (again.ca.read_bytes(), again.node_key(1).read_bytes()) == before and again.node_key(2).is_file()
    with pytest.raises(ConfigError, match="nodes"):
        certs_mod.generate(tmp_path / "d", 0)
    with pytest.raises(ConfigError, match="node-3"):
        again.check(4)


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, name: str) -> Exception | None:
    """An in-memory TLS handshake; the client's error, or None when it succeeded."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=name)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for end, outbox, peer_in in ((client, c_out, s_in), (server, s_out, c_in)):
            try:
                end.do_handshake()
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as exc:
                if end is client:
                    return exc
            peer_in.write(outbox.read())
        if client.version() is not None and server.version() is not None:
            return None
    return RuntimeError("handshake did not finish")


# ------------------------------------------------------------------------------------------------ app and worker
def test_app_folder_is_valid_and_its_shims_import_neither_torch_nor_fedpeft(tmp_path: Path) -> None:
    from flwr.common.config import get_project_config, validate_config

    app = write_app(tmp_path / "app")
    ok, errors, _ = validate_config(get_project_config(app), check_module=True, project_dir=app)
    assert ok, errors
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import fedpeft_client_shim, fedpeft_server_shim; "
        "heavy = [m for m in ('torch', 'fedpeft', 'transformers') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(app)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"  # each message's ClientApp process stays light


def test_worker_serves_forwarded_messages(tmp_path: Path) -> None:
    """The shim's framing and the worker's serve step over a real socket pair: the reply and the changed state
    come back; a handler that raises becomes an error reply; every message is logged with record digests."""
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from fedpeft.runtime.deploy import worker as worker_mod
    from fedpeft.runtime.deploy.shim_client import recv_frame, send_frame

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 5, 1  # type: ignore[misc]
    try:

        def app(msg: Message, ctx: Context) -> Message:
            if msg.metadata.message_type == "query.boom":
                raise KeyError("boom")
            ctx.state["seen"] = ConfigRecord({"n": 1})
            return Message(RecordDict({"echo": msg.content.array_records["a"]}), reply_to=msg)

        arrays = ArrayRecord({"w": torch.arange(4.0)})
        log = tmp_path / "messages.jsonl"
        for mtype in ("train", "query.boom"):
            msg = Message(RecordDict({"a": arrays}), dst_node_id=5, message_type=mtype, group_id="3")
            ctx = Context(1, 5, {"partition-id": 2}, RecordDict(), {})
            a, b = socket.socketpair()
            with a, b:
                send_frame(a, (msg, ctx))
                worker_mod._serve_one(b, app, log)
                reply, state = recv_frame(a)
            if mtype == "train":
                assert not reply.has_error() and "seen" in state
                assert reply.content.array_records["echo"]["w"].numpy().tolist() == [0, 1, 2, 3]
            else:
                assert reply.has_error() and "KeyError: 'boom'" in reply.error.reason and "seen" not in state
        lines = [json.loads(x) for x in log.read_text().splitlines()]
        assert [x["type"] for x in lines] == ["train", "query.boom"] and lines[0]["partition"] == 2
        assert lines[0]["records"]["a"] == worker_mod.record_digests(RecordDict({"a": arrays}))["a"]
    finally:
        for attr in ("_run_id", "_node_id", "_task_id"):
            setattr(TaskIdentity, attr, None)


def test_deploy_config_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="deploy.port"):
        from_dict(RunConfig, {"deploy": {"port": 70000}})
    with pytest.raises(ConfigError, match="deploy.node_threads"):
        from_dict(RunConfig, {"deploy": {"node_threads": 0}})
    with pytest.raises(ConfigError, match="deploy.certs"):
        run_federated(from_dict(RunConfig, {"deploy": {"certs": "/nonexistent"}}), runtime="deploy")
    assert not list(tmp_path.iterdir())  # refused before a run directory was made


# ------------------------------------------------------------------------------------------------ end to end
def _job(
    tmp_path: Path,
    dataset: str = "sst2",
    algorithm_table: dict[str, Any] | None = None,
    server: dict[str, Any] | None = None,
    privacy: dict[str, Any] | None = None,
    **federation: Any,
) -> RunConfig:
    """tiny-small on SST-2, 3 clients, 1 local step per round, top-k uplink (clients keep error-feedback state)."""
    return from_dict(
        RunConfig,
        {
            "name": "dep",
            "seed": 5,
            "output_dir": str(tmp_path),
            "model": {"name": "tiny-small"},
            "data": {"dataset": dataset, "max_length": 48, "train_limit": 240, "eval_limit": 48},
            "adapter": {"method": "lora", "r": 2, "target_modules": ["q_proj", "v_proj"]},
            "train": {"steps": 1, "batch_size": 8, "lr": 4e-3},
            "federation": {"num_clients": 3, "rounds": 4, "timeout": 30.0, **federation},
            "comm": {"up": "topk", "topk_ratio": 0.5},
            "algorithm": algorithm_table or {},
            "server": server or {},
            "privacy": privacy or {},
        },
    )


def _events(run_path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run_path / "metrics.jsonl").read_text().splitlines()]


def _sweep(run_root: Path) -> None:
    """Kill every process a deployment under ``run_root`` recorded, with its descendants (test cleanup)."""
    for pids_file in run_root.rglob("deploy/pids.json"):
        pids = json.loads(pids_file.read_text())
        roots = [pids["superlink"], *(p for n in pids["nodes"].values() for p in n.values())]
        for pid in [r for r in roots if r] + [d for r in roots if r for d in descendants(r)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class _Background:
    """``run_federated`` in a thread; the exception it raised, if any, is kept."""

    def __init__(self, **kwargs: Any) -> None:
        self.error: BaseException | None = None
        self.result: Any = None
        self.thread = threading.Thread(target=self._run, kwargs=kwargs, daemon=True)
        self.thread.start()

    def _run(self, **kwargs: Any) -> None:
        try:
            self.result = run_federated(**kwargs)
        except BaseException as exc:
            self.error = exc


def _wait_for(cond: Any, timeout: float, what: str, bg: _Background | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        if bg is not None and not bg.thread.is_alive():
            raise AssertionError(f"the run ended before {what}: {bg.error!r}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _run_dir(root: Path) -> Path | None:
    found = sorted(root.glob("dep-*"))
    return found[0] if found else None


def _rounds_done(run_path: Path) -> int:
    if not (run_path / "metrics.jsonl").is_file():
        return 0
    return sum(e["event"] == "round" for e in _events(run_path))


def test_deploy_killed_node_rejoins_intruder_refused_data_stays_on_its_node(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    cfg = _job(root, rounds=12)  # enough rounds after the kill for node 1 to restart (imports, model) and rejoin
    try:
        bg = _Background(cfg=cfg, runtime="deploy", quiet=True)
        run_path: Path = _wait_for(lambda: _run_dir(root), 60, "the run directory", bg)
        _wait_for(lambda: _rounds_done(run_path) >= 1, 300, "round 1", bg)
        pids = json.loads((run_path / "deploy" / "pids.json").read_text())

        # kill node 1 (SuperNode and worker) in the middle of a round
        done = _rounds_done(run_path)
        _wait_for(lambda: (run_path / "deploy/logs/messages-1.jsonl").read_text().count('"train"') > done, 120,
                  "node 1 to receive a train message", bg)  # fmt: skip
        for pid in pids["nodes"]["1"].values():
            os.killpg(pid, signal.SIGKILL)

        # meanwhile, an intruder: TLS with our CA but a key the SuperLink never registered -> refused, never a node;
        # and one without any key (Flower's self-registration) -> refused as well, authentication being on
        intruder_key = tmp_path / "intruder"
        certs_mod.node_key_pair(intruder_key, tmp_path / "intruder.pub")
        env = flower_env(run_path / "deploy" / "flwr_home")
        base = [str(Path(sys.executable).parent / "flower-supernode"), "--superlink", f"127.0.0.1:{pids['port']}",
                "--root-certificates", str(run_path / "deploy" / "ca.pem"), "--isolation", "process",
                "--max-retries", "1"]  # fmt: skip
        for extra, why in (
            (["--auth-supernode-private-key", str(intruder_key)], "Failed to activate SuperNode"),
            ([], "SuperNode authentication is enabled. All SuperNodes must be registered"),
        ):
            intruder = subprocess.run(
                [*base, "--port", str(free_port()), *extra], capture_output=True, text=True, timeout=120, env=env
            )
            assert intruder.returncode != 0 and why in intruder.stdout + intruder.stderr
        listed = {str(n["node-id"]) for n in flwr_cli(["supernode", "list", "fedpeft"], env)["nodes"]}
        registered = json.loads((run_path / "deploy" / "pids.json").read_text())["registered"]
        assert listed <= {str(i) for i in registered}  # only nodes the supervisor registered, never an intruder

        bg.thread.join(timeout=600)
        assert not bg.thread.is_alive(), "the deployment did not finish"
        assert bg.error is None, bg.error
    finally:
        _sweep(root)

    events = _events(run_path)
    summary = json.loads((run_path / "summary.json").read_text())
    assert summary["runtime"] == "deploy" and summary["rounds"] == 12
    rounds = [e for e in events if e["event"] == "round"]
    assert [e["round"] for e in rounds] == list(range(1, 13))
    failures = [e for e in events if e["event"] == "failure"]
    assert failures and all(e["client"] == 1 for e in failures)
    assert sum(e["failures"] for e in rounds) == len(failures)  # counted in the round metrics
    killed_round = failures[0]["round"]
    trained = {(e["round"], e["client"]) for e in events if e["event"] == "client_train"}
    assert all((r, c) in trained for r in range(1, 13) for c in (0, 2))  # the others never missed a round
    assert any(c == 1 and r > killed_round for r, c in trained)  # node 1 came back and trained again
    assert json.loads((run_path / "deploy" / "pids.json").read_text())["restarts"][1] == 1
    # no private key (CA, SuperLink, nodes, the restarted node's fresh key) was ever among the run's files
    assert not [p for p in run_path.rglob("*") if p.is_file() and b"PRIVATE KEY" in p.read_bytes()]
    assert (run_path / "deploy" / "ca.pem").read_bytes().startswith(b"-----BEGIN CERTIFICATE")

    # isolation: each node's worker holds only its own partition; every train message a node received carried
    # exactly the bytes the others received that round (the broadcast global adapter), and state only went to
    # the node that had lost it
    logs = run_path / "deploy" / "logs"
    for i in range(3):
        held = [x for x in (logs / f"worker-{i}.log").read_text().splitlines() if "holds the training data" in x]
        assert held and all(x.endswith(f"clients {{{i}: " + x.split(f"{{{i}: ")[1]) for x in held)
    received = {i: [json.loads(x) for x in (logs / f"messages-{i}.jsonl").read_text().splitlines()] for i in range(3)}
    for rnd in range(1, 13):
        digests = {m["records"]["payload"] for i in range(3) for m in received[i] if m["type"] == "train"
                   and m["group"] == str(rnd)}  # fmt: skip
        assert len(digests) == 1
    state_sets = {i: [m for m in received[i] if m["type"] == "query.fedpeft_state_set"] for i in range(3)}
    assert not state_sets[0] and not state_sets[2] and len(state_sets[1]) == 1


def _processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains ``text`` (zombies have none)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if text.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


@pytest.mark.parametrize("victim", ["serverapp", "superlink"])
def test_deploy_killed_server_side_then_resumed_matches_local(tmp_path: Path, victim: str) -> None:
    root = tmp_path / "deploy"
    try:
        bg = _Background(cfg=_job(root), runtime="deploy", quiet=True)
        run_path: Path = _wait_for(lambda: _run_dir(root), 60, "the run directory", bg)
        _wait_for(lambda: (run_path / "checkpoint" / "state.pt").is_file() and _rounds_done(run_path) >= 2, 300,
                  "the round-2 checkpoint", bg)  # fmt: skip
        pids = json.loads((run_path / "deploy" / "pids.json").read_text())
        server = [p for p in descendants(pids["superlink"]) if b"flwr-serverapp" in Path(f"/proc/{p}/cmdline")
                  .read_bytes()]  # fmt: skip
        assert len(server) == 1
        os.kill(server[0] if victim == "serverapp" else pids["superlink"], signal.SIGKILL)
        bg.thread.join(timeout=120)
        assert bg.error is not None and "resume with: fedpeft run --resume" in str(bg.error)
        time.sleep(1.0)
        assert not _processes_mentioning(str(run_path))  # every process of the deployment was stopped
        assert not (run_path / "summary.json").exists()
        resumed = run_federated(resume=run_path, quiet=True)
        assert resumed.path == run_path
    finally:
        _sweep(root)
    # The node workers compute with one torch thread each; so does the reference (same arithmetic, and top-k
    # compression would amplify any last-bit difference into different selected entries).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = run_federated(_job(tmp_path / "local"), runtime="local", quiet=True).path
    finally:
        torch.set_num_threads(threads)

    want, got = (
        load_file(local / "adapter/adapter_model.safetensors"),
        load_file(run_path / "adapter/adapter_model.safetensors"),
    )
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert torch.equal(got[key], value), key  # bit-identical, as docs/results.md says
    s_local, s_dep = (json.loads((p / "summary.json").read_text()) for p in (local, run_path))
    assert (s_dep["bytes_up"], s_dep["bytes_down"]) == (s_local["bytes_up"], s_local["bytes_down"])
    assert s_dep["resumed_from_round"] >= 1  # the checkpoint may trail the last round event by one
    events = _events(run_path)
    assert [e["round"] for e in events if e["event"] == "round"] == [1, 2, 3, 4]
    assert sum(e["event"] == "client_train" for e in events) == 3 * 4


def test_cli_deploy_certs_and_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fedpeft.cli import main

    assert main(["deploy", "certs", str(tmp_path / "c"), "--nodes", "2", "--host", "10.0.0.9"]) == 0
    assert capsys.readouterr().out.strip().endswith(str(tmp_path / "c"))
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [
        "ca.key", "ca.pem", "node-0", "node-0.pub", "node-1", "node-1.pub", "server.key", "server.pem",
    ]  # fmt: skip
    # submitting to a SuperLink needs its CA (or --insecure); --resume takes no overrides
    with pytest.raises(SystemExit):
        main(["deploy", "submit", "recipes/deploy_sst2.toml"])  # --superlink missing
    assert main(["deploy", "submit", "recipes/deploy_sst2.toml", "--superlink", "127.0.0.1:9"]) == 2
    assert "deploy.certs" in capsys.readouterr().err


def _tiny_recipe(tmp_path: Path, name: str, rounds: int) -> Path:
    """A recipe file for a 2-client tiny-small job writing its runs to ``tmp_path/runs``."""
    path = tmp_path / "job.toml"
    path.write_text(
        f'name = "{name}"\nseed = 1\noutput_dir = "{tmp_path / "runs"}"\n[model]\nname = "tiny-small"\n'
        '[data]\ndataset = "sst2"\nmax_length = 48\ntrain_limit = 160\neval_limit = 32\n'
        '[adapter]\nmethod = "lora"\nr = 2\ntarget_modules = ["q_proj"]\n[train]\nsteps = 1\nbatch_size = 8\n'
        f"[federation]\nrounds = {rounds}\nnum_clients = 2\n"
    )
    return path


def test_multi_machine_commands_on_loopback(tmp_path: Path) -> None:
    """`deploy certs`, `deploy superlink`, two `deploy node` and `deploy submit`, as on separate machines (here all
    on loopback): the run completes, and SIGTERM stops each command with everything it started."""
    from fedpeft.cli import main

    certs, port = tmp_path / "certs", free_port()
    assert main(["deploy", "certs", str(certs), "--nodes", "2"]) == 0
    cli = [sys.executable, "-m", "fedpeft.cli", "deploy"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    logs = {name: tmp_path / f"{name}.out" for name in ("link", "node0", "node1")}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        with logs["link"].open("wb") as out:
            procs["link"] = subprocess.Popen(
                [*cli, "superlink", "--certs", str(certs), "--nodes", "2", "--host", "127.0.0.1", "--port", str(port),
                 "--workdir", str(tmp_path / "link")], stdout=out, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        _wait_for(lambda: "SuperLink listening" in logs["link"].read_text(), 180, "the SuperLink")
        assert "registered SuperNode 1" in logs["link"].read_text()
        for i in range(2):
            with logs[f"node{i}"].open("wb") as out:
                procs[f"node{i}"] = subprocess.Popen(
                    [*cli, "node", "--partition-id", str(i), "--num-partitions", "2", "--superlink",
                     f"127.0.0.1:{port}", "--certs", str(certs), "--port", str(free_port()), "--workdir",
                     str(tmp_path / f"node{i}")], stdout=out, stderr=subprocess.STDOUT, env=env,
                )  # fmt: skip
        cfg = _tiny_recipe(tmp_path, "mm", rounds=2)
        assert main(["deploy", "submit", str(cfg), "--superlink", f"127.0.0.1:{port}", "--certs", str(certs),
                     "--quiet"]) == 0  # fmt: skip
        run_path = next((tmp_path / "runs").glob("mm-*"))
        summary = json.loads((run_path / "summary.json").read_text())
        assert summary["runtime"] == "deploy" and summary["rounds"] == 2 and summary["bytes_up"] > 0
        trained = [e for e in _events(run_path) if e["event"] == "client_train"]
        assert sorted((e["round"], e["client"]) for e in trained) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        codes = {}
        for name, proc in procs.items():
            try:
                codes[name] = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = None
        time.sleep(1.0)
        leftovers = _processes_mentioning(str(tmp_path))
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert codes == {"link": 0, "node0": 0, "node1": 0} and not leftovers


def test_sigterm_to_a_deploy_run_stops_every_process_and_keeps_the_checkpoint(tmp_path: Path) -> None:
    """`fedpeft run --runtime deploy` stopped with SIGTERM (a scheduler's or a benchmark's stop, not Ctrl-C) takes
    its SuperLink, SuperNodes, workers and ServerApp down with it; the last checkpoint stays for --resume."""
    cfg = _tiny_recipe(tmp_path, "dep", rounds=50)
    out = tmp_path / "run.out"
    with out.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "fedpeft.cli", "run", str(cfg), "--runtime", "deploy",
                                 "--quiet"], stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        run_path: Path = _wait_for(lambda: _run_dir(tmp_path / "runs"), 60, "the run directory")
        _wait_for(lambda: _rounds_done(run_path) >= 1 and (run_path / "checkpoint" / "state.pt").is_file(), 300,
                  f"round 1; output:\n{out.read_text()[-2000:]}")  # fmt: skip
        assert _processes_mentioning(str(run_path))  # the deployment is up
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        _sweep(tmp_path / "runs")
    time.sleep(1.0)
    assert code == 128 + signal.SIGTERM, out.read_text()[-2000:]
    assert not _processes_mentioning(str(run_path))
    assert (run_path / "checkpoint" / "state.pt").is_file() and not (run_path / "summary.json").exists()


def _deploy_and_local(tmp_path: Path, job: dict[str, Any]) -> tuple[Path, Path]:
    """Run ``job`` on ``deploy`` (its processes swept afterwards), then on ``local`` with one torch thread like the
    deployment's workers; returns the two run directories."""
    root = tmp_path / "deploy"
    try:
        dep = run_federated(_job(root, **job), runtime="deploy", quiet=True).path
    finally:
        _sweep(root)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = run_federated(_job(tmp_path / "local", **job), runtime="local", quiet=True).path
    finally:
        torch.set_num_threads(threads)
    return dep, local


def test_fltac_on_deploy_matches_local(tmp_path: Path) -> None:
    """FL-TAC over the deployment: the first-contact query for each node's task sizes, several adapters per reply,
    k-means on the server, each member's cluster mean sent back to its own node; the task adapters, router and
    bytes equal those of a `local` run of the same config (one torch thread on both sides)."""
    job = {"dataset": "sst2+rte", "algorithm_table": {"min_task_examples": 4, "report_truth": False},
           "algorithm": "fltac", "rounds": 2, "client_eval_every": 1}  # fmt: skip
    dep, local = _deploy_and_local(tmp_path, job)

    files = sorted(p.relative_to(local) for p in (local / "adapter").rglob("adapter_model.safetensors"))
    assert len(files) == 2  # one adapter per task cluster
    assert files == sorted(p.relative_to(dep) for p in (dep / "adapter").rglob("adapter_model.safetensors"))
    for name in files:
        want, got = load_file(local / name), load_file(dep / name)
        assert got.keys() == want.keys() and want
        for key, value in want.items():
            assert torch.equal(got[key], value), key  # bit-identical, as docs/results.md says
    s_local, s_dep = (json.loads((p / "summary.json").read_text()) for p in (local, dep))
    assert s_dep["runtime"] == "deploy" and s_local["runtime"] == "local"
    assert (s_dep["bytes_up"], s_dep["bytes_down"]) == (s_local["bytes_up"], s_local["bytes_down"])
    assert s_dep["final"] == s_local["final"]
    clustering = [e for e in _events(dep) if e["event"] == "round"]
    assert [e["round"] for e in clustering] == [1, 2] and all("clusters" in e for e in clustering)
    # true task ids never left a node: no purity/ARI, no task->adapter table, the routed score is the headline
    assert not any("ari" in e or "purity" in e for e in clustering) and not (dep / "adapter" / "tasks.json").exists()
    assert "accuracy_routed" in s_dep["final"] and "routing_accuracy" not in s_dep["final"]


def test_fedhds_on_deploy_matches_local(tmp_path: Path) -> None:
    """FedHDS over the deployment: each round the selection query (global adapter + features, t-SNE, HDBSCAN on the
    node, centroids and int64 ids back), HDBSCAN over every centroid on the server, the chosen ids sent to their
    owners, whose cluster -> example map and adapter wait in the node's state until training; the same coresets,
    adapter and bytes as a `local` run of the same config (one torch thread on both sides)."""
    job = {"algorithm_table": {"min_cluster_size": 3}, "algorithm": "fedhds", "rounds": 2, "local_test_fraction": 0.0}
    dep, local = _deploy_and_local(tmp_path, job)
    want, got = (load_file(p / "adapter" / "adapter_model.safetensors") for p in (local, dep))
    assert got.keys() == want.keys() and want
    for key, value in want.items():
        assert torch.allclose(got[key], value, atol=1e-6), key
    pick = lambda run: sorted(  # noqa: E731
        (e["round"], e["client"], e["num_examples"]) for e in _events(run) if e["event"] == "client_train"
    )
    assert pick(dep) == pick(local) and pick(local)
    s_local, s_dep = (json.loads((p / "summary.json").read_text()) for p in (local, dep))
    assert s_dep["bytes_by_kind"] == s_local["bytes_by_kind"] and "centroids" in s_dep["bytes_by_kind"]
    assert s_dep["fedhds"] == {
        **s_local["fedhds"],
        **{k: s_dep["fedhds"][k] for k in ("select_seconds", "train_seconds")},
    }


def test_fedpt_on_deploy_matches_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FedPT over the deployment: the nodes train the small model only; the SuperLink's server app holds the large
    model, proxy-tunes it and distills it into the aggregate; the same adapters (global and expert), metrics and
    bytes as a `local` run of the same config (one torch thread on both sides)."""
    # The server's distillation (AdamW) turns float-summation differences between thread counts into 1e-4 weight
    # differences; the deployment's server app gets one thread like the local run's server (this process).
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    server = {
        "same_vocab": ["client", "large"],
        "models": {"large": "tiny-large"},
        "data": {"dataset": "sst2", "split": "test", "limit": 32},
    }
    pt = {"distill_steps": 2, "distill_batch": 8, "distill_positions": "last"}
    job = {"algorithm_table": pt, "algorithm": "fedpt", "rounds": 2, "server": server}
    dep, local = _deploy_and_local(tmp_path, job)
    for folder in ("adapter", "adapter/expert"):
        want, got = (load_file(p / folder / "adapter_model.safetensors") for p in (local, dep))
        assert got.keys() == want.keys() and want
        for key, value in want.items():
            assert torch.allclose(got[key], value, atol=1e-6), (folder, key)
    s_local, s_dep = (json.loads((p / "summary.json").read_text()) for p in (local, dep))
    assert s_dep["bytes_by_kind"] == s_local["bytes_by_kind"] == {"adapter": s_local["bytes_by_kind"]["adapter"]}
    assert s_dep["fedpt"]["large"] == s_local["fedpt"]["large"]
    assert s_dep["fedpt"]["proxy"]["accuracy"] == pytest.approx(s_local["fedpt"]["proxy"]["accuracy"], abs=1 / 48)
    assert s_dep["device_budget"]["max"]["params_held"] == s_local["device_budget"]["max"]["params_held"]


def test_fedsllm_on_deploy_matches_local(tmp_path: Path) -> None:
    """FedsLLM over the deployment: per micro-batch the activations go up and the gradient at the cut comes back
    through the SuperLink; a node keeps its adapter, optimizer and pending gradients in its state between messages;
    the same adapter, loss and bytes by kind as a `local` run (one torch thread on both sides)."""
    job = {"algorithm_table": {"cut": 2}, "algorithm": "fedsllm", "rounds": 2}
    dep, local = _deploy_and_local(tmp_path, job)
    want, got = (load_file(p / "adapter" / "adapter_model.safetensors") for p in (local, dep))
    assert got.keys() == want.keys() and want
    for key, value in want.items():
        assert torch.allclose(got[key], value, atol=1e-6), key
    s_local, s_dep = (json.loads((p / "summary.json").read_text()) for p in (local, dep))
    assert s_dep["bytes_by_kind"] == s_local["bytes_by_kind"]
    assert set(s_dep["bytes_by_kind"]) == {"adapter", "activations", "gradients", "batch"}
    losses = [[e["train_loss"] for e in _events(p) if e["event"] == "round"] for p in (local, dep)]
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)


def test_secure_aggregation_on_deploy_matches_local(tmp_path: Path) -> None:
    """SecAgg over the deployment: keys on the train reply, then shares routed node to node through the server,
    masked vectors, unmasking; a node keeps its secrets in its state only between those messages. The same
    adapter and bytes by kind as a `local` run; no adapter tensor goes up."""
    job = {"privacy": {"secure_aggregation": True}, "rounds": 2}
    dep, local = _deploy_and_local(tmp_path, job)
    want, got = (load_file(p / "adapter" / "adapter_model.safetensors") for p in (local, dep))
    assert got.keys() == want.keys() and want
    for key, value in want.items():
        assert torch.equal(got[key], value), key  # seeded quantization, integer sums: bit-identical
    s_local, s_dep = (json.loads((p / "summary.json").read_text()) for p in (local, dep))
    assert s_dep["bytes_by_kind"] == s_local["bytes_by_kind"]
    assert s_dep["bytes_by_kind"]["adapter"]["up"] == 0 and s_dep["bytes_by_kind"]["secagg"]["up"] > 0
    rounds = [e for e in _events(dep) if e["event"] == "round"]
    assert [e["secagg"]["masked"] for e in rounds] == [3, 3]
