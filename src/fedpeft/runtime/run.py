"""``run_federated``: the entry point behind ``fedpeft run`` and the Python API.

Reads top to bottom: config -> run directory (new, or the one being resumed) -> runtime (local or flower-sim)
builds model, data and grid -> the algorithm's round loop -> summary. Resuming reloads the run's own saved config
(a run is continued exactly as it was started), cuts ``metrics.jsonl`` back to the last checkpoint and continues.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedpeft.config import RunConfig, load_config
from fedpeft.errors import ConfigError
from fedpeft.runs import RunDir
from fedpeft.runtime.checkpoint import load_checkpoint, truncate_log
from fedpeft.runtime.session import Session

__all__ = ["Runtime", "Session", "run_federated", "runtimes"]


def _no_check(cfg: RunConfig) -> None:
    return None


@dataclass(frozen=True)
class Runtime:
    """A runtime: ``run`` executes a session; ``check`` validates what it needs before any work starts."""

    run: Callable[[Session], None]
    check: Callable[[RunConfig], None] = _no_check


def runtimes() -> dict[str, Runtime]:
    """The runtimes available in this installation, by name (Flower's need ``fedpeft[flower]``)."""
    from fedpeft.runtime.local import run_local

    table: dict[str, Runtime] = {"local": Runtime(run_local)}
    try:
        from fedpeft.runtime.flower import run_flower_sim

        table["flower-sim"] = Runtime(run_flower_sim)
        from fedpeft.runtime.deploy.runtime import check_deploy, run_deploy

        table["deploy"] = Runtime(run_deploy, check_deploy)
    except ImportError:  # flwr not installed: the runtimes are simply unavailable, and say so when asked for
        pass
    return table


def run_federated(
    cfg: RunConfig | None = None,
    *,
    runtime: str | None = None,
    resume: str | Path | None = None,
    quiet: bool = False,
) -> RunDir:
    """Run (or resume) a federated job and return its run directory.

    Parameters
    ----------
    cfg:
        The job; ignored when resuming (the run's saved ``config.toml`` is used so it continues as it started).
    runtime:
        ``local``, ``flower-sim`` or ``deploy``; overrides ``federation.runtime``.
    resume:
        A run directory whose last checkpoint to continue from.
    quiet:
        No progress bars.
    """
    checkpoint = None
    if resume is not None:
        run = RunDir(Path(resume))
        if not (run.path / "config.toml").is_file():
            raise ConfigError("--resume", str(resume), "a run directory containing config.toml")
        cfg = load_config(RunConfig, run.path / "config.toml")
        checkpoint = load_checkpoint(run.path)
    elif cfg is None:
        raise ConfigError("cfg", None, "a RunConfig (or resume=RUN_DIR)")
    if runtime is not None and runtime != cfg.federation.runtime:
        # A copy: the caller's config object stays as it was (validated again by the dataclass constructors).
        cfg = dataclasses.replace(cfg, federation=dataclasses.replace(cfg.federation, runtime=runtime))
    table = runtimes()
    if cfg.federation.runtime not in table:
        allowed = sorted(table) if len(table) > 1 else "local; install fedpeft[flower] for flower-sim and deploy"
        raise ConfigError("runtime", cfg.federation.runtime, allowed)
    runtime_impl = table[cfg.federation.runtime]
    runtime_impl.check(cfg)
    if checkpoint is None:
        run = RunDir.create(cfg.output_dir, cfg.name)
        run.save_config(cfg)
    else:
        truncate_log(run.path / "metrics.jsonl", int(checkpoint["log_size"]))
        run.log("resume", round=int(checkpoint["round"]))
    runtime_impl.run(Session(cfg, run, checkpoint, quiet))
    return run
