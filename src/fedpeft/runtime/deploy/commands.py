"""``fedpeft deploy certs | superlink | node``: the pieces of a deployment over several machines.

``fedpeft deploy run`` (a loopback deployment around one run) and ``deploy submit`` (a run on a running SuperLink)
go through :func:`fedpeft.runtime.run_federated` with the ``deploy`` runtime; these are the long-running parts:

- :func:`serve_superlink`: the SuperLink (TLS, SuperNode authentication) with the node keys registered;
- :func:`serve_node`: one SuperNode plus its fedpeft worker (the executor of the node's ClientApp tasks).

Both run in the foreground until Ctrl-C (or SIGTERM), then stop their processes; if one of their processes exits,
they stop the rest and exit non-zero, so that a service manager (systemd, a container runtime) restarts them.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from fedpeft.runtime.deploy.certs import CertPaths
from fedpeft.runtime.deploy.cluster import (
    CONNECTION,
    DeploymentError,
    _Proc,
    flower_env,
    register_node,
    superlink_command,
    supernode_command,
    wait_healthy,
    worker_command,
    write_flwr_home,
)

__all__ = ["exposure", "serve_node", "serve_superlink"]


def _run_until_stopped(procs: list[_Proc]) -> int:
    """Wait until Ctrl-C/SIGTERM (exit 0) or until a process exits (exit 1); stop every process either way."""
    stop = {"now": False}

    def on_signal(*_: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    code = 0
    try:
        while not stop["now"]:
            dead = [p for p in procs if not p.alive()]
            if dead:
                print(f"fedpeft: {dead[0].name} exited; see {dead[0].log}", file=sys.stderr)
                code = 1
                break
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for p in procs:
            p.signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while any(p.alive() for p in procs) and time.monotonic() < deadline:
            time.sleep(0.1)
        for p in procs:
            p.signal(signal.SIGKILL)
    return code


def exposure(host: str, insecure: bool) -> str:
    """What binding the SuperLink to ``host`` exposes, in one sentence for the operator."""
    from fedpeft.runtime.deploy.superlink import is_loopback

    if host in ("localhost", "") or is_loopback(host):
        return f"the SuperLink listens on {host or '127.0.0.1'} only: nothing is reachable from other machines"
    fleet = (
        "the Fleet API WITHOUT TLS or SuperNode authentication (--insecure): anyone who reaches it can join as a "
        "node and read the global adapter"
        if insecure
        else "the Fleet API only (TLS; SuperNodes must hold a registered key)"
    )
    return (
        f"the SuperLink listens on {host}: other machines reach {fleet}; the Control and Runtime APIs "
        "(register keys, submit, list or stop runs) answer only on this machine"
    )


def serve_superlink(
    workdir: Path, certs: Path | None, nodes: int, host: str = "127.0.0.1", port: int = 8000, insecure: bool = False
) -> int:
    """Start the SuperLink, register the public keys of ``nodes`` SuperNodes, and keep it running.

    ``host`` is the interface it binds: loopback by default; another (e.g. ``0.0.0.0``) serves the Fleet API to
    other machines, the Control and Runtime APIs staying loopback-only (:mod:`fedpeft.runtime.deploy.superlink`).

    Raises
    ------
    ConfigError
        A certificate or node key is missing (or ``certs`` is None without ``insecure``).
    DeploymentError
        The SuperLink did not come up.
    """
    paths = None
    if not insecure:
        if certs is None:
            raise DeploymentError("--certs is required (a folder made by `fedpeft deploy certs`), or --insecure")
        paths = CertPaths(certs.resolve())
        paths.check(nodes)
    else:
        print("fedpeft: WARNING: --insecure: no TLS and no SuperNode authentication", file=sys.stderr)
    flwr_home = workdir.resolve() / "flwr_home"
    env = flower_env(flwr_home)
    write_flwr_home(flwr_home, f"127.0.0.1:{port}", None if paths is None else paths.ca)
    link = _Proc("superlink", superlink_command(port, paths, host), workdir / "logs" / "superlink.log")
    link.start(env)
    assert link.popen is not None
    try:
        wait_healthy(port, None if paths is None else paths.ca, 120.0, link.popen, link.log)
        if paths is not None:
            for i in range(nodes):
                try:
                    node_id = register_node(paths.node_pub(i), i, env)
                    print(f"registered SuperNode {i} (node id {node_id})")
                except DeploymentError as exc:
                    if "already" not in str(exc).lower():
                        raise
    except BaseException:
        link.signal(signal.SIGKILL)
        raise
    print(f"SuperLink listening on {host}:{port} (log {link.log}); FLWR_HOME={flwr_home} (connection {CONNECTION!r})")
    print(f"fedpeft: {exposure(host, insecure)}", file=sys.stderr)
    return _run_until_stopped([link])


def serve_node(
    workdir: Path,
    partition: int,
    num_partitions: int,
    superlink: str,
    certs: Path | None,
    *,
    insecure: bool = False,
    port: int = 9094,
    threads: int = 1,
) -> int:
    """Start SuperNode ``partition`` (authenticated with ``certs``/node-<partition>) and its fedpeft worker.

    Raises
    ------
    DeploymentError
        ``certs`` is missing without ``insecure``.
    """
    paths = None
    if not insecure:
        if certs is None:
            need = "--certs is required (ca.pem and node-<i> from `fedpeft deploy certs`), or --insecure"
            raise DeploymentError(need)
        paths = CertPaths(certs.resolve())
        for needed in (paths.ca, paths.node_key(partition)):
            if not needed.is_file():
                raise DeploymentError(f"{needed} is missing: copy it from the machine that ran `fedpeft deploy certs`")
    workdir = workdir.resolve()
    env = flower_env(workdir / "flwr_home")
    logs = workdir / "logs"
    worker = _Proc(
        f"worker-{partition}",
        worker_command(partition, threads, logs / f"messages-{partition}.jsonl", executor=f"127.0.0.1:{port}"),
        logs / f"worker-{partition}.log",
    )
    node = _Proc(
        f"supernode-{partition}",
        supernode_command(superlink, partition, num_partitions, port, paths),
        logs / f"supernode-{partition}.log",
    )
    worker.start(env)
    node.start(env)
    print(f"SuperNode {partition} of {num_partitions} -> {superlink} (logs in {logs})")
    return _run_until_stopped([node, worker])
