"""``Session``: one run being executed, the part every runtime shares once it has a grid.

A runtime (``local``, ``flower-sim``, ``deploy``) builds the model, data and its grid, then calls
:meth:`Session.execute` in the server process: the server's own resources are built there (and only there), the
algorithm runs its phases and rounds over a :class:`~fedpeft.runtime.budget.MeteredGrid`, and the run directory
gets its adapters, checkpoints and summary (bytes per payload kind, phases, the device budget).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fedpeft.algorithms import get_algorithm
from fedpeft.algorithms.base import Algorithm, Grid, ServerContext
from fedpeft.config import RunConfig
from fedpeft.runs import RunDir
from fedpeft.runtime.budget import DeviceBudget, MeteredGrid
from fedpeft.runtime.checkpoint import save_checkpoint
from fedpeft.runtime.setup import FederatedData, ServerModel, ServerResources, build_server_resources

__all__ = ["Session"]


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
        self,
        server: ServerModel,
        client_states: Callable[[], dict[str, Any]] | None = None,
        resources: ServerResources | None = None,
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
        if resources is not None:
            ctx.models, ctx.tokenizers = resources.models, resources.tokenizers
            ctx.device, ctx.server_data = resources.device, resources.data
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

    def warn_privacy(self, server: ServerModel) -> None:
        """Say (stderr and a ``privacy`` event, every run) when the adapter's uploads name the clients' tokens."""
        from fedpeft.privacy.audit import warning_text

        model: Any = server.model  # a transformers model (nn.Module's typing hides get_input_embeddings)
        vocab = int(model.get_input_embeddings().weight.shape[0])
        trainable = {k: p for k, p in server.model.named_parameters() if p.requires_grad}
        text = warning_text(trainable, vocab, self.cfg.privacy.secure_aggregation)
        if text is not None and self.resume is None:
            print(f"fedpeft: privacy: {text}", file=sys.stderr, flush=True)
            self.run.log("privacy", message=text)

    def execute(self, grid: Grid, server: ServerModel, data: FederatedData) -> None:
        """The part every runtime shares once it has a grid, run in the server process: build the server's own
        resources, restore, run the phases and rounds, save, summarise."""
        resources = build_server_resources(self.cfg, server.task.tokenizer)
        budget = DeviceBudget()
        if self.resume is not None:
            grid.load_state_dict(self.resume["grid"])
            budget.load_state_dict(self.resume.get("budget", {"clients": {}}))
        metered = MeteredGrid(grid, budget)

        def client_states() -> dict[str, Any]:
            return {"grid": grid.state_dict(), "budget": budget.state_dict()}

        ctx, close = self.server_context(server, client_states, resources)
        self.log_setup(server, data)
        self.warn_privacy(server)
        algo = self.make_algorithm(ctx)
        results = algo.run(metered, self.start_round)
        close()
        algo.save_adapters("adapter")
        algo.save_extras(self.run.path / "adapter")
        ledger = grid.ledger
        extra = {
            **server.size(),
            "bytes_by_kind": ledger.per_kind(),
            "device_budget": budget.table(ledger),
        }
        self.finish(results, extra, ledger.total("up"), ledger.total("down"))

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
