"""The ``deploy`` runtime: a loopback Flower deployment started, supervised and stopped around one run.

:func:`run_deploy` is what ``fedpeft run --runtime deploy`` (and ``fedpeft deploy run``) calls once the run
directory exists: it starts a :class:`~fedpeft.runtime.deploy.cluster.LocalCluster` (SuperLink, one SuperNode and
node worker per client; TLS and SuperNode authentication unless ``deploy.insecure``), submits the fedpeft app with
``flwr run`` naming the run directory, follows the run's ``metrics.jsonl`` for the progress bar, restarts nodes that
die (they rejoin later rounds), and stops every process at the end, also on failure, Ctrl-C or SIGTERM.

The run is over when the server program has written ``summary.json``. It failed when the server program wrote
``deploy/server_error.txt``, when its ServerApp process vanished without either, or when the SuperLink died; the
checkpoint of the last finished round stays, and ``fedpeft run --resume RUN_DIR`` continues from it on a new cluster.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fedpeft.config import RunConfig
from fedpeft.runtime.deploy.cluster import (
    DeploymentError,
    LocalCluster,
    flower_env,
    run_status,
    submit_run,
    write_app,
    write_flwr_home,
)
from fedpeft.runtime.deploy.server import ERROR_FILE
from fedpeft.runtime.session import Session

__all__ = ["DeploymentError", "run_deploy"]

INSECURE_WARNING = (
    "fedpeft: WARNING: deploy.insecure = true: the SuperLink and SuperNodes talk plain HTTP without TLS, and "
    "SuperNodes are not authenticated (any process that reaches the port can join). Use it only for debugging."
)


def _mtime(path: Path) -> float | None:
    return path.stat().st_mtime_ns if path.is_file() else None


class _Progress:
    """A rounds bar fed by the ``round`` lines the server program appends to ``metrics.jsonl``."""

    def __init__(self, session: Session) -> None:
        from tqdm.auto import tqdm

        self.path = session.run.path / "metrics.jsonl"
        self.offset = self.path.stat().st_size if self.path.is_file() else 0
        rounds = session.cfg.federation.rounds
        self.bar = tqdm(total=rounds, initial=session.start_round - 1, desc="rounds", unit="round",
                        disable=session.quiet)  # fmt: skip

    def update(self) -> None:
        if not self.path.is_file():
            return
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        complete = data[: data.rfind(b"\n") + 1]  # only whole lines; the rest is read next time
        self.offset += len(complete)
        for line in complete.decode("utf-8").splitlines():
            event: dict[str, Any] = json.loads(line)
            if event.get("event") == "round":
                self.bar.update(1)
                failures = event.get("failures", 0)
                self.bar.set_postfix({"failures": failures} if failures else {})

    def close(self) -> None:
        self.bar.close()


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """Turn SIGTERM into SystemExit while the cluster runs, so that ``finally: cluster.stop()`` still stops every
    process it started (SIGTERM's default action would end this process and orphan the nodes). Main thread only:
    elsewhere Python cannot set signal handlers, and the caller owns the signals."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def unwind(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the stop short
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, unwind)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def check_deploy(cfg: RunConfig) -> None:
    """What the deploy runtime needs before any work starts: a given certs folder holds what it must."""
    if cfg.deploy.certs:
        from fedpeft.runtime.deploy.certs import CertPaths

        dep = cfg.deploy
        CertPaths(Path(dep.certs)).check(0 if dep.superlink else cfg.federation.num_clients, server=not dep.superlink)


def run_deploy(session: Session) -> None:
    """Run the session's algorithm through Flower's deployment engine (the ``deploy`` runtime).

    Without ``deploy.superlink``, a loopback cluster is started for the run and stopped after it. With it, the run
    is submitted to that running SuperLink (its ServerApp then writes this run directory, so submit from the
    SuperLink's machine or a shared filesystem) and followed until it ends.

    Raises
    ------
    DeploymentError
        A deployment process failed to start, the SuperLink died, or the server program failed or was killed
        (the message says so and how to resume).
    """
    cfg, run_path = session.cfg, session.run.path
    dep = cfg.deploy
    if dep.insecure:
        print(INSECURE_WARNING, file=sys.stderr, flush=True)
    (run_path / ERROR_FILE).unlink(missing_ok=True)
    certs = Path(dep.certs) if dep.certs else None
    resume = session.resume is not None
    if dep.superlink:
        workdir = run_path / "deploy"
        env = flower_env(workdir / "flwr_home")
        ca = None if dep.insecure or certs is None else certs / "ca.pem"
        write_flwr_home(workdir / "flwr_home", dep.superlink, ca)
        run_id = submit_run(write_app(workdir / "app"), run_path, resume, env)
        _follow(session, run_id, env, None)
        return
    cluster = LocalCluster(
        run_path / "deploy",
        cfg.federation.num_clients,
        insecure=dep.insecure,
        certs=certs,
        port=dep.port,
        node_threads=dep.node_threads,
        fast=dep.fast_nodes,
        idle_poll=dep.node_idle_poll,
    )
    with _sigterm_unwinds():
        try:
            cluster.start()
            run_id = submit_run(cluster.app_dir, run_path, resume, cluster.env)
            _follow(session, run_id, cluster.env, cluster)
        finally:
            cluster.stop()


def _follow(session: Session, run_id: int, env: dict[str, str], cluster: LocalCluster | None) -> None:
    """Wait for the run's end (``summary.json`` rewritten), keeping the progress bar and the nodes going; raise
    DeploymentError when the server program failed, its ServerApp vanished, or Flower ended the run."""
    run_path = session.run.path
    summary, error = run_path / "summary.json", run_path / ERROR_FILE
    summary_before = _mtime(summary)
    resume_hint = f"resume with: fedpeft run --resume {run_path}"

    def finished() -> bool:
        return _mtime(summary) != summary_before

    def failed_without_trace(what: str) -> None:
        time.sleep(1.0)  # it may have just finished writing
        if not finished() and not error.is_file():
            raise DeploymentError(f"{what} before the run finished; {resume_hint}")

    progress = _Progress(session)
    seen_server, last_status = False, time.monotonic()
    try:
        while not finished():
            time.sleep(0.5)
            progress.update()
            if error.is_file():
                raise DeploymentError(f"the fedpeft server program failed:\n{error.read_text()[-3000:]}\n{resume_hint}")
            if cluster is not None:
                try:
                    cluster.check(session.cfg.deploy.restart_nodes)
                except DeploymentError as exc:
                    raise DeploymentError(f"{exc}\n{resume_hint}") from None
                running = bool(cluster.serverapp_pids(cluster.children))
                seen_server = seen_server or running
                if seen_server and not running and not finished():  # the ServerApp process vanished: killed
                    failed_without_trace(f"the ServerApp of Flower run {run_id} died")
            if time.monotonic() - last_status > (15.0 if cluster is not None else 5.0):
                last_status = time.monotonic()  # a slower, process-independent check of Flower's view
                try:
                    status = run_status(run_id, env)
                except DeploymentError as exc:
                    # The SuperLink may have died since the check above; if our own SuperLink is still alive, the
                    # query failed for another reason (a loaded machine) and the supervision above goes on.
                    time.sleep(0.5)
                    if cluster is not None and cluster.superlink.alive():
                        continue
                    why = "the SuperLink died" if cluster is not None else "the SuperLink cannot be reached"
                    raise DeploymentError(f"{why}: {exc}\n{resume_hint}") from None
                if status.startswith("finished:") and not finished():
                    failed_without_trace(f"Flower run {run_id} ended as {status!r}")
        progress.update()
    finally:
        progress.close()
