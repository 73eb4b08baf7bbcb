"""Processes of a Flower deployment: commands, the Flower app folder, and a supervised loopback cluster.

The building blocks (commands for ``flower-superlink``, ``flower-supernode`` and the fedpeft node worker, the
``$FLWR_HOME/config.toml``, the app folder, node registration, ``flwr run``) serve both the one-machine
:class:`LocalCluster` behind the ``deploy`` runtime and the separate-machine commands of ``fedpeft deploy``.

Every process is started in its own session (process group) and recorded in ``pids.json``; stopping sends SIGTERM
to the SuperNodes and workers, then to the SuperLink, and SIGKILLs whatever of their process trees (SuperExec,
ServerApp, ClientApp processes) is still alive after a grace period, so nothing outlives the cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from fedpeft.errors import FedPeftError
from fedpeft.fileio import atomic_write_text
from fedpeft.runtime.deploy.certs import CertPaths, node_key_pair

__all__ = ["DeploymentError", "LocalCluster", "flower_env", "write_app", "write_flwr_home"]

CONNECTION = "fedpeft"  # the SuperLink connection's name in $FLWR_HOME/config.toml
APP_NAME = "fedpeft-deploy"
SHIMS = {"fedpeft_client_shim.py": "shim_client.py", "fedpeft_server_shim.py": "shim_server.py"}


class DeploymentError(FedPeftError):
    """A deployment process failed, or the Flower run ended without fedpeft's server program finishing."""


def _bin(name: str) -> str:
    """A console script of this Python environment (Flower's commands are installed next to the interpreter)."""
    path = Path(sys.executable).parent / name
    if not path.is_file():
        raise DeploymentError(f"{path} not found: install fedpeft[flower] in this environment ({sys.executable})")
    return str(path)


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Environment for every Flower process: our venv first on PATH (Flower starts flower-superexec,
    flwr-serverapp and flwr-clientapp by bare name), a private FLWR_HOME, no telemetry, no update check, no
    runtime dependency installation, and a fast SuperExec task poll."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        FLWR_HOME=str(flwr_home),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        FLWR_SUPEREXEC_TASK_POLL_INTERVAL="0.2",
        PYTHONUNBUFFERED="1",
    )
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_flwr_home(flwr_home: Path, address: str, ca: Path | None) -> None:
    """``$FLWR_HOME/config.toml`` naming the SuperLink connection ``fedpeft`` (TLS with ``ca``, or insecure)."""
    conn: dict[str, Any] = {"address": address}
    if ca is None:
        conn["insecure"] = True
    else:
        conn["root-certificates"] = str(ca.resolve())
    atomic_write_text(
        flwr_home / "config.toml", tomli_w.dumps({"superlink": {"default": CONNECTION, CONNECTION: conn}})
    )


def write_app(folder: Path) -> Path:
    """The Flower app folder ``flwr run`` packages: a pyproject naming the two shims, and the shims themselves.

    It holds no fedpeft code beyond the shims; the ServerApp and the node workers import the installed fedpeft.
    """
    folder.mkdir(parents=True, exist_ok=True)
    here = Path(__file__).parent
    for target, source in SHIMS.items():
        atomic_write_text(folder / target, (here / source).read_text(encoding="utf-8"))
    from fedpeft.version import __version__

    pyproject = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {
            "name": APP_NAME,
            "version": __version__,
            "description": "fedpeft on Flower's deployment engine",
            "license": "Apache-2.0",
            "dependencies": [],
        },
        "tool": {
            "flwr": {
                "app": {
                    "publisher": "fedpeft",
                    "components": {
                        "serverapp": "fedpeft_server_shim:app",
                        "clientapp": "fedpeft_client_shim:app",
                    },
                    "config": {"run-dir": "", "resume": False},
                }
            }
        },
    }
    atomic_write_text(folder / "pyproject.toml", tomli_w.dumps(pyproject))
    return folder


def superlink_command(port: int, certs: CertPaths | None, host: str = "127.0.0.1") -> list[str]:
    """Flower's SuperLink through :mod:`fedpeft.runtime.deploy.superlink` (Control and Runtime APIs for loopback
    peers only; other machines reach the Fleet API), TLS and SuperNode authentication with ``certs``, plain HTTP
    without."""
    launcher = Path(__file__).with_name("superlink.py")  # by path: `-m` would import fedpeft (and torch)
    cmd = [sys.executable, str(launcher), "--host", host, "--port", str(port)]
    cmd += ["--disable-runtime-dependency-installation"]
    if certs is None:
        return [*cmd, "--insecure"]
    tls = ["--ssl-ca-certfile", str(certs.ca), "--ssl-certfile", str(certs.server_cert)]
    return [*cmd, *tls, "--ssl-keyfile", str(certs.server_key), "--enable-supernode-auth"]


def supernode_command(
    superlink: str,
    partition: int,
    num_partitions: int,
    port: int,
    certs: CertPaths | None,
    key: Path | None = None,
    *,
    worker_socket: Path | None = None,
    idle_poll: float | None = 0.25,
) -> list[str]:
    """The SuperNode serving ``partition``: TLS against ``certs.ca`` and authenticated with ``key`` (by default the
    partition's key in ``certs``), or plain HTTP when ``certs`` is None.

    With ``worker_socket`` it is a stock node whose per-message ClientApp forwards to the worker at that socket;
    without, the node runs with ``--isolation process`` and the fedpeft worker is its executor. ``idle_poll``
    starts it through :mod:`fedpeft.runtime.deploy.supernode` with that idle wait instead of Flower's 3 s
    (None: the stock ``flower-supernode`` command)."""
    node_config = f"partition-id={partition} num-partitions={num_partitions}"
    if worker_socket is not None:
        node_config += f' worker-socket="{worker_socket}"'
    if idle_poll is None:
        cmd = [_bin("flower-supernode")]
    else:
        launcher = Path(__file__).with_name("supernode.py")  # by path: `-m` would import fedpeft (and torch)
        cmd = [sys.executable, str(launcher), "--idle-poll", str(idle_poll)]
    cmd += ["--superlink", superlink, "--host", "127.0.0.1", "--port", str(port), "--node-config", node_config]
    if worker_socket is None:
        cmd += ["--isolation", "process"]
    if certs is None:
        return [*cmd, "--insecure"]
    key = key or certs.node_key(partition)
    return [*cmd, "--root-certificates", str(certs.ca), "--auth-supernode-private-key", str(key)]


def worker_command(
    partition: int, threads: int, message_log: Path, *, executor: str | None = None, socket_path: Path | None = None
) -> list[str]:
    """The fedpeft node worker: executor of the SuperNode at ``executor`` (host:port), or socket server."""
    how = ["--executor", str(executor)] if executor is not None else ["--socket", str(socket_path)]
    return [
        sys.executable, "-m", "fedpeft.runtime.deploy.worker", *how, "--partition-id", str(partition),
        "--threads", str(threads), "--message-log", str(message_log),
    ]  # fmt: skip


def flwr_cli(args: list[str], env: dict[str, str], timeout: float = 120.0) -> dict[str, Any]:
    """Run a ``flwr`` CLI command with ``--format json`` and return its JSON answer (raise on failure)."""
    proc = subprocess.run(
        [_bin("flwr"), *args, "--format", "json"], env=env, capture_output=True, text=True, timeout=timeout
    )
    out = proc.stdout
    try:  # one (pretty-printed) JSON object, possibly after other output
        answer: dict[str, Any] = json.loads(out[out.index("{") :]) if "{" in out else {}
    except json.JSONDecodeError:
        answer = {}
    if proc.returncode != 0 or not answer.get("success", False):
        detail = answer.get("error-message") or proc.stderr.strip()[-800:] or proc.stdout.strip()[-800:]
        raise DeploymentError(f"`flwr {' '.join(args)}` failed: {detail}")
    return answer


def register_node(pub: Path, partition: int, env: dict[str, str]) -> int:
    """Register SuperNode ``partition``'s public key with the SuperLink (authentication on); returns its node id."""
    answer = flwr_cli(["supernode", "register", str(pub), CONNECTION, "--name", f"partition-{partition}"], env)
    return int(answer["node-id"])


def submit_run(app_dir: Path, run_path: Path, resume: bool, env: dict[str, str]) -> int:
    """``flwr run`` the fedpeft app for the run directory ``run_path``; returns Flower's run id."""
    override = run_path / "deploy" / "run_config.toml"
    atomic_write_text(override, tomli_w.dumps({"run-dir": str(run_path.resolve()), "resume": resume}))
    answer = flwr_cli(["run", str(app_dir), CONNECTION, "--run-config", str(override)], env)
    return int(answer["run-id"])


def run_status(run_id: int, env: dict[str, str]) -> str:
    """Flower's status of a run: ``running``, ``finished:completed``, ``finished:failed``, ..."""
    answer = flwr_cli(["ls", CONNECTION, "--run-id", str(run_id)], env)
    runs = answer.get("runs", [])
    return str(runs[0].get("status", "unknown")) if runs else "unknown"


def wait_healthy(port: int, ca: Path | None, timeout: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Poll the SuperLink's ``/health`` until it answers (TLS verified against ``ca``)."""
    scheme = "http" if ca is None else "https"
    ctx = None if ca is None else ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DeploymentError(f"the SuperLink exited with code {proc.returncode}; log:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(f"{scheme}://127.0.0.1:{port}/health", timeout=2, context=ctx) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise DeploymentError(f"the SuperLink did not become healthy in {timeout:.0f}s; log:\n{_tail(log)}")


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-n:]
    except OSError:
        return "(no log)"


def child_map() -> dict[int, list[int]]:
    """{parent pid: child pids} of every live process (Linux /proc; empty elsewhere): one scan of /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def descendants(pid: int, children: dict[int, list[int]] | None = None) -> list[int]:
    """Every live descendant of ``pid``, from ``children`` (a :func:`child_map`) or a fresh scan of /proc."""
    children = child_map() if children is None else children
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@dataclass
class _Proc:
    name: str
    cmd: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    tree: set[int] = field(default_factory=set)  # every descendant pid ever seen, to kill leftovers at the end

    def start(self, env: dict[str, str]) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            out.write(f"\n--- {time.strftime('%H:%M:%S')} start: {' '.join(self.cmd)}\n".encode())
            out.flush()
            self.popen = subprocess.Popen(
                self.cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip

    @property
    def pid(self) -> int | None:
        return None if self.popen is None else self.popen.pid

    def alive(self) -> bool:
        # poll() also reaps an exited child: a zombie parent would keep Flower's parent monitors from firing.
        return self.popen is not None and self.popen.poll() is None

    def remember_tree(self, children: dict[int, list[int]] | None = None) -> None:
        if self.pid is not None and self.alive():
            self.tree.update(descendants(self.pid, children))

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.popen is not None
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, sig)


def _kill_pids(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


class LocalCluster:
    """A SuperLink and one SuperNode (plus its fedpeft worker) per client, all on this machine (loopback).

    Parameters
    ----------
    workdir : Path
        Folder for certificates (unless ``certs`` is given), the Flower app, FLWR_HOME, logs and ``pids.json``.
    num_nodes : int
        SuperNodes to start; node ``i`` serves partition ``i``.
    insecure : bool
        Plain HTTP and no SuperNode authentication (TLS and authentication are on otherwise).
    certs : Path, optional
        A folder made by ``fedpeft deploy certs``; generated inside ``workdir`` when omitted.
    port : int
        The SuperLink's port (0 = a free one).
    node_threads : int
        torch threads of each node worker.
    """

    def __init__(
        self,
        workdir: Path,
        num_nodes: int,
        *,
        insecure: bool = False,
        certs: Path | None = None,
        port: int = 0,
        node_threads: int = 1,
        fast: bool = True,
        idle_poll: float = 0.25,
    ) -> None:
        self.workdir = workdir.resolve()
        self.num_nodes, self.insecure, self.node_threads = num_nodes, insecure, node_threads
        self.fast, self.idle_poll = fast, idle_poll
        #: the process table of the last :meth:`check` ({parent pid: child pids}), for :meth:`serverapp_pids`
        self.children: dict[int, list[int]] | None = None
        self.port = port or free_port()
        self.certs: CertPaths | None = None
        # Private keys made for this cluster (CA, SuperLink, nodes, restarted nodes' fresh keys) live in a private
        # folder (0700, outside the run directory, removed at stop), never among the run's shareable files; only the
        # public CA certificate is copied into the run directory (``ca.pem``).
        self.key_dir = Path(tempfile.mkdtemp(prefix="fpk-"))
        if not insecure:
            from fedpeft.runtime.deploy.certs import generate

            if certs is None:
                self.certs = generate(self.key_dir / "certs", num_nodes)
            else:
                self.certs = CertPaths(Path(certs).resolve())
                self.certs.check(num_nodes)
            self.workdir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.certs.ca, self.workdir / "ca.pem")
        self.flwr_home = self.workdir / "flwr_home"
        self.env = flower_env(self.flwr_home)
        self.logs = self.workdir / "logs"
        # Unix socket paths are limited to ~107 bytes, so the sockets live in a short private folder instead.
        self.socket_dir = Path(tempfile.mkdtemp(prefix="fpd-", dir="/tmp"))
        self.superlink = _Proc("superlink", superlink_command(self.port, self.certs), self.logs / "superlink.log")
        self.node_ports = [free_port() for _ in range(num_nodes)]
        self.workers: list[_Proc] = []
        self.supernodes: list[_Proc] = []
        for i in range(num_nodes):
            log = self.logs / f"messages-{i}.jsonl"
            if fast:
                cmd = worker_command(i, node_threads, log, executor=f"127.0.0.1:{self.node_ports[i]}")
            else:
                cmd = worker_command(i, node_threads, log, socket_path=self._socket(i))
            self.workers.append(_Proc(f"worker-{i}", cmd, self.logs / f"worker-{i}.log"))
            self.supernodes.append(_Proc(f"supernode-{i}", [], self.logs / f"supernode-{i}.log"))
        # node i's current authentication key and registered node id (a restarted node gets a new key, see check)
        self.node_keys: list[tuple[Path, Path] | None] = [
            None if self.certs is None else (self.certs.node_key(i), self.certs.node_pub(i)) for i in range(num_nodes)
        ]
        self.node_ids: list[int | None] = [None] * num_nodes
        self.registered: list[int | None] = []  # every node id this cluster ever registered
        self.restarts = [0] * num_nodes

    # ------------------------------------------------------------------ start / stop
    def start(self, timeout: float = 120.0) -> None:
        """Start the SuperLink, register the node keys, start every node; return once all are up."""
        write_flwr_home(self.flwr_home, f"127.0.0.1:{self.port}", None if self.certs is None else self.certs.ca)
        self.app_dir = write_app(self.workdir / "app")
        # The workers' imports (torch, fedpeft) take longest: they start first and overlap with the SuperLink's.
        for worker in self.workers:
            worker.start(self.env)
        self.superlink.start(self.env)
        self._save_pids()
        wait_healthy(self.port, None if self.certs is None else self.certs.ca, timeout, self._popen(self.superlink),
                     self.superlink.log)  # fmt: skip
        for i in range(self.num_nodes):
            self._register(i)
        for i in range(self.num_nodes):
            if not self.fast:  # a stock node's ClientApp needs the worker's socket from its first message on
                self._wait_worker(i, timeout)
            self._start_supernode(i)
        self._save_pids()

    def _socket(self, i: int) -> Path:
        return self.socket_dir / f"node-{i}.sock"

    def _register(self, i: int) -> None:
        keys = self.node_keys[i]
        if keys is not None:
            self.node_ids[i] = register_node(keys[1], i, self.env)
            self.registered.append(self.node_ids[i])
            self._save_pids()

    def _start_supernode(self, i: int) -> None:
        keys = self.node_keys[i]
        node = self.supernodes[i]
        node.cmd = supernode_command(
            f"127.0.0.1:{self.port}", i, self.num_nodes, self.node_ports[i], self.certs,
            None if keys is None else keys[0], worker_socket=None if self.fast else self._socket(i),
            idle_poll=self.idle_poll if self.fast else None,
        )  # fmt: skip
        node.start(self.env)

    def _popen(self, proc: _Proc) -> subprocess.Popen[bytes]:
        assert proc.popen is not None
        return proc.popen

    def _wait_worker(self, i: int, timeout: float) -> None:
        sock = self._socket(i)
        deadline = time.monotonic() + timeout
        while not sock.exists():
            if not self.workers[i].alive():
                raise DeploymentError(f"node worker {i} exited; log:\n{_tail(self.workers[i].log)}")
            if time.monotonic() > deadline:
                raise DeploymentError(f"node worker {i} did not start in {timeout:.0f}s")
            time.sleep(0.1)

    def all_procs(self) -> list[_Proc]:
        return [*self.supernodes, *self.workers, self.superlink]

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the ServerApp, then the nodes, then the SuperLink; SIGKILL every process of their trees still
        alive after ``grace``.

        The ServerApp goes first: with its nodes gone it would otherwise run the remaining rounds without replies
        in the seconds the nodes take to exit, and write ``summary.json`` as if the run had finished.
        """
        children = child_map()
        for proc in self.all_procs():
            proc.remember_tree(children)
        servers = self.serverapp_pids(children)
        for pid in servers:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while any(Path(f"/proc/{pid}").exists() for pid in servers) and time.monotonic() < deadline:
            time.sleep(0.1)
        _kill_pids(set(servers))
        for proc in [*self.supernodes, *self.workers]:
            proc.signal(signal.SIGTERM)
        self._wait_exit([*self.supernodes, *self.workers], grace)
        self.superlink.remember_tree()
        self.superlink.signal(signal.SIGTERM)
        self._wait_exit([self.superlink], grace)
        for proc in self.all_procs():
            proc.signal(signal.SIGKILL)
            if proc.popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.popen.wait(timeout=5)
        _kill_pids(set().union(*(p.tree for p in self.all_procs())))
        shutil.rmtree(self.socket_dir, ignore_errors=True)
        shutil.rmtree(self.key_dir, ignore_errors=True)

    @staticmethod
    def _wait_exit(procs: list[_Proc], grace: float) -> None:
        deadline = time.monotonic() + grace
        while any(p.alive() for p in procs) and time.monotonic() < deadline:
            time.sleep(0.1)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _save_pids(self) -> None:
        pids = {
            "superlink": self.superlink.pid,
            "nodes": {
                str(i): {"supernode": self.supernodes[i].pid, "worker": self.workers[i].pid}
                for i in range(self.num_nodes)
            },
            "socket_dir": str(self.socket_dir),
            "port": self.port,
            "restarts": self.restarts,
            "registered": self.registered,
        }
        atomic_write_text(self.workdir / "pids.json", json.dumps(pids, indent=2) + "\n")

    # ------------------------------------------------------------------ supervision
    def check(self, restart_nodes: bool) -> None:
        """One supervision step: the SuperLink must be alive; a node whose SuperNode or worker died is restarted.

        A SIGKILLed SuperNode counts as online in Flower for up to 60 s, and an authenticated node cannot be
        activated again before that. So, with authentication, the supervisor (which holds the deployment's keys)
        unregisters the dead node's identity, which takes it offline at once (its pending messages end with an
        error instead of waiting for the round's timeout), and registers a fresh key for the restarted node, which
        then joins as a new node and is greeted by the server before its next message.
        """
        children = self.children = child_map()  # one scan of /proc per check, shared by every process
        for proc in self.all_procs():
            proc.remember_tree(children)
        if not self.superlink.alive():
            raise DeploymentError(
                f"the SuperLink exited (code {self._popen(self.superlink).returncode}); "
                f"log:\n{_tail(self.superlink.log)}"
            )
        if not restart_nodes:
            return
        for i in range(self.num_nodes):
            worker, node = self.workers[i], self.supernodes[i]
            if worker.alive() and node.alive():
                continue
            for half in (worker, node):  # half a node is no node: stop what is left, restart both together
                half.signal(signal.SIGKILL)
                if half.popen is not None:
                    half.popen.wait()
                _kill_pids(half.tree)
            if self.node_ids[i] is not None:
                with contextlib.suppress(DeploymentError):  # already gone is fine
                    flwr_cli(["supernode", "unregister", str(self.node_ids[i]), CONNECTION], self.env)
                self.restarts[i] += 1
                keys = (self.key_dir / "keys" / f"node-{i}.r{self.restarts[i]}", self.key_dir / "keys" /
                        f"node-{i}.r{self.restarts[i]}.pub")  # fmt: skip
                keys[0].parent.mkdir(parents=True, exist_ok=True)
                node_key_pair(*keys)
                self.node_keys[i] = keys
                self._register(i)
            else:
                self.restarts[i] += 1
            self._socket(i).unlink(missing_ok=True)  # its socket appears when it is ready
            worker.start(self.env)
            if not self.fast:
                self._wait_worker(i, 120.0)
            self._start_supernode(i)
            self._save_pids()

    def serverapp_pids(self, children: dict[int, list[int]] | None = None) -> list[int]:
        """PIDs of the ServerApp processes the SuperLink is running (from ``children``, else a fresh scan)."""
        if self.superlink.pid is None:
            return []
        return [p for p in descendants(self.superlink.pid, children) if "flwr-serverapp" in _cmdline(p)]
