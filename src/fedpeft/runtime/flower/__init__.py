"""The ``flower-sim`` runtime: the same algorithms on Flower's simulation engine (Ray workers as clients).

The server program runs in a thread of this process (Flower's ServerApp ``main``) with the server's own model for
evaluation and saving; the clients run :mod:`fedpeft.runtime.flower.client_app` in Ray worker processes, each of
which builds the model and data once from the config sent with the messages. Messages go through the same codec
and compression as in the ``local`` runtime (:func:`fedpeft.comm.transport.serve` on the client), so results and
byte counts match it.

Importing this package raises ImportError when flwr (``fedpeft[flower]``) is not installed; ``run_federated``
then reports the runtime as unavailable.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import tomli_w
import tomllib

# Flower reads this once, when flwr is first imported, and posts usage telemetry to flower.ai unless it is "0";
# so it is defaulted here, before the flwr imports below (a user's own setting wins; Ray workers inherit it).
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

from fedpeft.config import RunConfig, from_dict, to_dict
from fedpeft.runtime.flower.client_app import app as flower_client_app
from fedpeft.runtime.flower.grid import FlowerGrid
from fedpeft.runtime.session import Session
from fedpeft.runtime.setup import ServerModel, build_federated_data, build_model

__all__ = ["FlowerGrid", "config_text", "flower_client_app", "run_flower_sim"]

# Defaults only: a user who sets these in the environment keeps their value.
_ENV_DEFAULTS = {
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",  # silences Ray's FutureWarning about num_gpus=0 actors
    "RAY_DEDUP_LOGS": "0",  # worker logs (when shown) are not folded into "repeated Nx" lines
}


def config_text(cfg: RunConfig) -> str:
    """``cfg`` as the TOML text sent to the workers, checked to parse back to an equal config.

    Raises
    ------
    ValueError
        The TOML round trip changes the config (the workers would train a different job than the server runs).
    """
    text = tomli_w.dumps(to_dict(cfg))
    if from_dict(RunConfig, tomllib.loads(text)) != cfg:
        raise ValueError("the run config does not survive its TOML round trip; workers would see another config")
    return text


class _NoRunSimulationDeprecation(logging.Filter):
    """Drops Flower's "run_simulation is deprecated" warning: fedpeft uses this API on purpose (the ServerApp runs
    in this process, next to the run directory and the server model), and users cannot act on the warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "`run_simulation` function is deprecated" not in record.getMessage()


def _ray_cpus(workers: int = 0) -> int:
    """Ray's CPU count = the number of client workers (each actor takes one CPU): ``workers``, or one per CPU."""
    return workers if workers > 0 else max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def _flower_environment(quiet: bool, workers: int = 0) -> Iterator[dict[str, Any]]:
    """Environment defaults, Flower's logger, and a private Ray temp dir for one simulation; yields the backend
    config for ``run_simulation`` and undoes every process-wide change on exit."""
    for key, value in _ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    flwr_logger = logging.getLogger("flwr")
    old_level = flwr_logger.level
    if quiet:
        flwr_logger.setLevel(logging.ERROR)  # the engine's INFO/WARNING lines; errors still show
    deprecation = _NoRunSimulationDeprecation()
    flwr_logger.addFilter(deprecation)
    # Flower's Ray backend appends sys.path to os.environ["PYTHONPATH"] for good; restore it afterwards.
    old_pythonpath = os.environ.get("PYTHONPATH")
    # Ray's default temp dir is /tmp/ray; a private, short one (unix socket paths are limited to ~107 chars) is
    # removed afterwards instead of accumulating session folders.
    ray_tmp = tempfile.mkdtemp(prefix="fpray-", dir="/tmp")
    try:
        yield {
            # one CPU per client: as many Ray workers as CPUs (Flower's default of 2 CPUs would halve them)
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {
                "num_cpus": _ray_cpus(workers),
                "logging_level": "ERROR" if quiet else "WARNING",
                "log_to_driver": not quiet,  # worker prints ("(ClientAppActor pid=...)" lines)
                "_temp_dir": ray_tmp,
            },
        }
    finally:
        if old_pythonpath is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old_pythonpath
        flwr_logger.setLevel(old_level)
        flwr_logger.removeFilter(deprecation)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def run_flower_sim(session: Session) -> None:
    """Run the session's algorithm on Flower's simulation engine (the ``flower-sim`` runtime).

    Mirrors :func:`fedpeft.runtime.local.run_local`: model, data and the server model are built in this process,
    then the ServerApp ``main`` (a thread of this process) connects a :class:`FlowerGrid`, runs the algorithm's
    round loop, saves the final adapter and writes the summary. One Ray worker per CPU serves the
    ``num_clients`` simulated nodes.

    Parameters
    ----------
    session : Session
        The run being executed (config, run directory, optional checkpoint to resume from).

    Raises
    ------
    Exception
        Whatever the server program raised (re-raised here unchanged), or RuntimeError when the simulation
        ended without the server program finishing.
    """
    cfg = session.cfg
    text = config_text(cfg)
    model, tokenizer = build_model(cfg)
    data = build_federated_data(cfg, tokenizer)
    server = ServerModel(cfg, model, data.task, session.run.path)

    outcome: dict[str, Any] = {}
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        # Kept in `outcome` so that the caller re-raises it as it was, whatever Flower does with it.
        try:
            session.execute(FlowerGrid(grid, cfg, text), server, data)
            outcome["done"] = True
        except BaseException as exc:
            outcome["error"] = exc
            raise

    with _flower_environment(session.quiet, cfg.federation.sim_workers) as backend_config:
        try:
            run_simulation(
                server_app=server_app,
                client_app=flower_client_app,
                num_supernodes=cfg.federation.num_clients,
                backend_config=backend_config,  # type: ignore[arg-type]
            )
        except BaseException as exc:
            error = outcome.get("error")
            if error is not None and error is not exc:
                raise error from exc  # Flower wrapped the server program's exception
            raise
    if "error" in outcome:  # Flower 1.41 re-raises it itself; this guards against a version that does not
        raise outcome["error"]
    if not outcome.get("done"):
        raise RuntimeError("the Flower simulation ended before the fedpeft server program finished")
