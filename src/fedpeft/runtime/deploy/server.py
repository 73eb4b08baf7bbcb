"""The server program of a deployment, run by Flower's ``flwr-serverapp`` process on the SuperLink's machine.

``fedpeft`` (the submitting side, :mod:`fedpeft.runtime.deploy.runtime`) has already created the run directory and
saved the resolved config there (or, for ``--resume``, cut ``metrics.jsonl`` back to the last checkpoint); the
run config of the Flower run names that directory. This program loads the config and checkpoint from it, builds
the server model, and runs the same :meth:`~fedpeft.runtime.run.Session.execute` as the other runtimes over a
:class:`~fedpeft.runtime.flower.grid.FlowerGrid` in deployment mode (nodes may leave and rejoin).

Flower discards the ServerApp's stdout, so an exception is also written to ``deploy/server_error.txt`` in the run
directory, where the supervisor reads it.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any

from fedpeft.config import RunConfig, load_config
from fedpeft.fileio import atomic_write_text
from fedpeft.runs import RunDir

RUN_DIR_KEY, RESUME_KEY = "run-dir", "resume"
ERROR_FILE = Path("deploy") / "server_error.txt"


def serve(grid: Any, context: Any) -> None:
    """Run the fedpeft job named by ``context.run_config`` on the deployment's nodes (the ServerApp's main)."""
    run_path = Path(str(context.run_config[RUN_DIR_KEY]))
    try:
        from fedpeft.runtime.checkpoint import load_checkpoint
        from fedpeft.runtime.deploy.grid import DeployGrid
        from fedpeft.runtime.flower import config_text
        from fedpeft.runtime.session import Session
        from fedpeft.runtime.setup import ServerModel, build_federated_data, build_model

        if not (run_path / "config.toml").is_file():
            raise FileNotFoundError(f"{run_path} has no config.toml; submit runs with `fedpeft deploy`")
        cfg = load_config(RunConfig, run_path / "config.toml")
        checkpoint = load_checkpoint(run_path) if bool(context.run_config[RESUME_KEY]) else None
        session = Session(cfg, RunDir(run_path), checkpoint, quiet=True)
        model, tokenizer = build_model(cfg)
        data = build_federated_data(cfg, tokenizer)
        server = ServerModel(cfg, model, data.task, run_path)
        deploy = cfg.deploy
        flower_grid = DeployGrid(
            grid, cfg, config_text(cfg), connect_timeout=deploy.connect_timeout, poll_interval=deploy.poll_interval
        )
        _bound_object_pulls(flower_grid)
        session.execute(flower_grid, server, data)
    except BaseException:
        atomic_write_text(run_path / ERROR_FILE, traceback.format_exc())
        raise


def _bound_object_pulls(flower_grid: Any) -> None:
    """Make the ServerApp's reply downloads give up at the exchange's deadline.

    Flower's ``HttpGrid.pull_messages`` downloads a reply's objects with ``pull_objects`` and its defaults: up to
    500 tries and 7200 s, backing off from 1 s to 10 s. A node killed while uploading its reply leaves the reply's
    message without all its objects, and the server program would then wait up to two hours instead of counting
    the client as failed at ``federation.timeout``. This wraps the function that module calls so that the download
    stops at the deadline of the exchange in progress (``FlowerGrid.deadline``; no change without a timeout) and
    retries faster (0.05 s growing to 0.5 s). Flower then returns the reply as an error (code 3), and the client is a
    failure of the round like any other.
    """
    import flwr.superlink.grid.http_grid as http_grid

    original = http_grid.pull_objects

    def bounded(*args: Any, **kwargs: Any) -> Any:
        kwargs["initial_backoff"] = min(kwargs.get("initial_backoff", 0.05), 0.05)
        kwargs["backoff_cap"] = min(kwargs.get("backoff_cap", 0.5), 0.5)
        if flower_grid.deadline is not None:
            kwargs["max_time"] = max(1.0, flower_grid.deadline - time.monotonic())
        return original(*args, **kwargs)

    http_grid.pull_objects = bounded
