"""``run_federated``: the entry point behind ``fedpeft run`` and the Python API.

Reads top to bottom: config -> run directory (new, or the one being resumed) -> runtime (local or flower-sim)
builds model, data and grid -> the algorithm's round loop -> summary. Resuming reloads the run's own saved config
(a run is continued exactly as it was started), cuts ``metrics.jsonl`` back to the last checkpoint and continues.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from fedpeft.config import RunConfig, load_config
from fedpeft.data.base import column_values
from fedpeft.data.partition import partition_indices
from fedpeft.errors import ConfigError
from fedpeft.runs import RunDir
from fedpeft.runtime.checkpoint import load_checkpoint, truncate_log
from fedpeft.runtime.session import Session
from fedpeft.training.centralized import check_data, describe_data

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


#: Partition errors name PartitionConfig's fields; the recipe calls them this.
_PARTITION_FIELDS = {"scheme": "partition", "by": "partition_by"}


def _say(text: str) -> None:
    print(f"fedpeft: {text}", file=sys.stderr, flush=True)


def check_federated_data(cfg: RunConfig) -> tuple[RunConfig, dict[str, Any] | None, list[str]]:
    """The data pre-flight of a new run, before its directory exists and before any model is loaded.

    Loads the training and eval examples without a tokenizer (a bad file fails here, naming file, line and field)
    and partitions the training rows as the run will: a natural (one task per client) partition whose
    ``num_clients`` differs from the number of tasks gets ``num_clients`` adjusted, or a ConfigError saying what it
    must be when the adjusted config is invalid (e.g. a per-client list in ``[algorithm]``); any other setting the
    data cannot meet fails here too. Returns the (possibly adjusted) config, the data note for the run's ``data``
    event and the lines to tell the user.
    """
    raw = check_data(cfg)
    if raw is None:  # a mix of built-in corpora: partitioned (and checked) per task at setup
        return cfg, None, []
    # Saved absolute: Flower workers, deployment nodes and --resume may start in another directory.
    files: dict[str, Any] = {}
    for key in ("train_file", "eval_file"):
        if (value := getattr(cfg.data, key)) is not None:
            files[key] = str(Path(value).expanduser().absolute())
    if files:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **files))
    note, lines = dict(raw.note), [describe_data(raw.note)]
    fed = cfg.federation
    tasks = column_values(raw.train, "task")
    if fed.partition == "natural" and len(set(tasks)) != fed.num_clients:
        n = len(set(tasks))
        why = f"the natural partition gives one client per task and the training data has {n} tasks"
        try:
            cfg = dataclasses.replace(cfg, federation=dataclasses.replace(fed, num_clients=n))
        except ConfigError as exc:
            raise ConfigError("federation.num_clients", fed.num_clients, f"{n}: {why} ({exc})") from None
        lines.append(f"federation.num_clients adjusted {fed.num_clients} -> {n}: {why}")
        note["num_clients_adjusted"] = {"from": fed.num_clients, "to": n}
        fed = cfg.federation
    index = datasets.Dataset.from_dict({"label": column_values(raw.train, "label"), "task": tasks})
    try:
        partition_indices(index, fed.partition_config(cfg.seed))
    except ConfigError as exc:
        raise exc.renamed(f"federation.{_PARTITION_FIELDS.get(exc.field, exc.field)}") from None
    return cfg, note, lines


#: Events a run logs before it starts its first round; a run directory with nothing else never started.
_SETUP_EVENTS = frozenset({"data", "setup"})


def _discard_unstarted(run: RunDir) -> None:
    """After a failure: remove a run directory that holds only its config and setup events (no round, phase or
    checkpoint; nothing to resume or look at); a directory holding anything more is marked with a ``failed`` event."""
    if (run.path / "checkpoint").exists():
        return  # it started: --resume continues it
    log = run.path / "metrics.jsonl"
    lines = log.read_text(encoding="utf-8").splitlines() if log.is_file() else []
    events = set()
    for line in lines:
        try:
            events.add(json.loads(line).get("event"))
        except json.JSONDecodeError:
            events.add(None)
    files = {p.name for p in run.path.iterdir()}
    if files <= {"config.toml", "metrics.jsonl"} and events <= _SETUP_EVENTS:
        shutil.rmtree(run.path, ignore_errors=True)
        _say(f"removed {run.path}: the run stopped before its first round")
    else:
        run.log("failed", before_first_round=True)


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
    note: dict[str, Any] | None = None
    if checkpoint is None:
        # Everything the data can fail on fails here, before the run directory exists (a resumed run was checked);
        # first, so that the runtime checks the client count the run will have.
        cfg, note, lines = check_federated_data(cfg)
        for line in lines:
            _say(line)
    runtime_impl.check(cfg)
    if checkpoint is None:
        run = RunDir.create(cfg.output_dir, cfg.name)
        run.save_config(cfg)
        if note is not None:
            run.log("data", **note)
    else:
        truncate_log(run.path / "metrics.jsonl", int(checkpoint["log_size"]))
        run.log("resume", round=int(checkpoint["round"]))
    try:
        runtime_impl.run(Session(cfg, run, checkpoint, quiet))
    except BaseException:  # Ctrl-C included: an empty run directory is litter either way
        if checkpoint is None:
            _discard_unstarted(run)
        raise
    return run
