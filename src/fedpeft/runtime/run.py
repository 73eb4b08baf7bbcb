"""``run_federated``: the entry point behind ``fedpeft run`` and the Python API.

Reads top to bottom: config -> run directory (new, or the one being resumed) -> runtime (local or flower-sim)
builds model, data and grid -> the algorithm's round loop -> summary. Resuming reloads the run's own saved config
(a run is continued exactly as it was started), cuts ``metrics.jsonl`` back to the last checkpoint and continues.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedpeft.algorithms import get_algorithm
from fedpeft.algorithms.base import Algorithm, Grid, ServerContext
from fedpeft.config import RunConfig, load_config
from fedpeft.errors import ConfigError
from fedpeft.runs import RunDir
from fedpeft.runtime.checkpoint import load_checkpoint, save_checkpoint, truncate_log
from fedpeft.runtime.setup import FederatedData, ServerModel


@dataclass
class Session:
    """One run being executed: config, directory, optional checkpoint to resume from, display settings."""

    cfg: RunConfig
    run: RunDir
    resume: dict[str, Any] | None = None
    quiet: bool = False
    t_start: float = field(default_factory=time.perf_counter)

    @property
    def start_round(self) -> int:
        return 1 if self.resume is None else int(self.resume["round"]) + 1

    def server_context(
        self, server: ServerModel, client_states: Callable[[], dict[str, Any]] | None = None
    ) -> tuple[ServerContext, Callable[[], None]]:
        """The algorithm's view of the run; also returns a function that closes the round progress bar."""
        from tqdm.auto import tqdm

        fed = self.cfg.federation
        bar = tqdm(total=fed.rounds, initial=self.start_round - 1, desc="rounds", unit="round", disable=self.quiet)

        def on_round(rnd: int, info: dict[str, Any]) -> None:
            bar.update(1)
            shown = {k: f"{v:.4f}" for k, v in info.get("eval", {}).items() if not k.startswith("pred_frac")}
            if "train_loss" in info:
                shown["loss"] = f"{info['train_loss']:.3f}"
            bar.set_postfix(shown)

        def checkpoint(rnd: int, algo_state: dict[str, Any]) -> None:
            log_size = (self.run.path / "metrics.jsonl").stat().st_size
            extra = client_states() if client_states is not None else {}
            save_checkpoint(self.run.path, {"round": rnd, "algorithm": algo_state, "log_size": log_size, **extra})

        ctx = ServerContext(
            cfg=self.cfg,
            initial_state=server.initial_state(),
            evaluate=server.evaluate,
            log=self.run.log,
            save_adapter=server.save,
            checkpoint=checkpoint,
            on_round=on_round,
            eval_set=server,
        )
        return ctx, bar.close

    def log_setup(self, server: ServerModel, data: FederatedData) -> None:
        if self.resume is not None:
            return
        fed = self.cfg.federation
        self.run.log(
            "setup",
            algorithm=fed.algorithm,
            runtime=fed.runtime,
            num_clients=fed.num_clients,
            clients_per_round=fed.clients_per_round,
            rounds=fed.rounds,
            eval_examples=len(data.task.eval),
            partition=data.partition,
            **server.size(),
        )

    def execute(self, grid: Grid, server: ServerModel, data: FederatedData) -> None:
        """The part every runtime shares once it has a grid: restore, run the rounds, save, summarise."""
        if self.resume is not None:
            grid.load_state_dict(self.resume["grid"])
        ctx, close = self.server_context(server, lambda: {"grid": grid.state_dict()})
        self.log_setup(server, data)
        algo = self.make_algorithm(ctx)
        results = algo.run(grid, self.start_round)
        close()
        algo.save_adapters("adapter")
        algo.save_extras(self.run.path / "adapter")
        self.finish(results, server.size(), grid.ledger.total("up"), grid.ledger.total("down"))

    def make_algorithm(self, ctx: ServerContext) -> Algorithm:
        algo = get_algorithm(self.cfg.federation.algorithm)(self.cfg, ctx)
        if self.resume is not None:
            algo.load_state_dict(self.resume["algorithm"])
        return algo

    def finish(self, results: dict[str, Any], extra: dict[str, Any], ledger_up: int, ledger_down: int) -> None:
        fed = self.cfg.federation
        summary = {
            "algorithm": fed.algorithm,
            "runtime": fed.runtime,
            "rounds": fed.rounds,
            "num_clients": fed.num_clients,
            "clients_per_round": fed.clients_per_round,
            "model": self.cfg.model.name,
            "dataset": self.cfg.data.dataset,
            "adapter": self.cfg.adapter.method,
            **extra,
            **results,
            "bytes_up": ledger_up,
            "bytes_down": ledger_down,
            "wall_s": round(time.perf_counter() - self.t_start, 2),
        }
        if self.resume is not None:
            summary["resumed_from_round"] = int(self.resume["round"])
        self.run.save_summary(summary)


RuntimeFn = Callable[[Session], None]


def _runtimes() -> dict[str, RuntimeFn]:
    from fedpeft.runtime.local import run_local

    table: dict[str, RuntimeFn] = {"local": run_local}
    try:
        from fedpeft.runtime.flower import run_flower_sim

        table["flower-sim"] = run_flower_sim
        from fedpeft.runtime.deploy.runtime import run_deploy

        table["deploy"] = run_deploy
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
    table = _runtimes()
    if cfg.federation.runtime not in table:
        allowed = sorted(table) if len(table) > 1 else "local; install fedpeft[flower] for flower-sim and deploy"
        raise ConfigError("runtime", cfg.federation.runtime, allowed)
    if checkpoint is None:
        run = RunDir.create(cfg.output_dir, cfg.name)
        run.save_config(cfg)
    else:
        truncate_log(run.path / "metrics.jsonl", int(checkpoint["log_size"]))
        run.log("resume", round=int(checkpoint["round"]))
    table[cfg.federation.runtime](Session(cfg, run, checkpoint, quiet))
    return run
