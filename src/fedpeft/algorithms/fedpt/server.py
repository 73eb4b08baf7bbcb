"""FedPT server (Gao et al., "FedPT: Federated Proxy-Tuning of Large Language Models on Resource-Constrained Edge
Devices", arXiv 2410.00362; ALGORITHMS.md section 4).

Each round is FedAvg on the small model's adapter (the clients' plain ``train``: they only ever hold the small
model), then, on the server:

1. the proxy-tuned large model ``z_L + alpha * (z_E - z_A)`` is formed with the aggregated small model as the
   expert ``E`` and the original small model as the anti-expert ``A`` (every round);
2. it is distilled into the aggregated small model on the server's unlabeled prompts (forward KL at a
   temperature), and the distilled adapter is the next round's global adapter.

The large model is a :class:`~fedpeft.algorithms.fedpt.proxy.LogitSource`: the server asks it for logits and nothing
else (no weights read, no gradient). Each evaluated round reports the proxy-tuned large model (the headline metrics)
and, with their prefixes, the small model (``small_``) and the untuned large model (``large_``, evaluated once).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from fedpeft.adapters import adapter_state, attach_adapter, load_adapter_state
from fedpeft.algorithms.aggregation import State
from fedpeft.algorithms.base import ServerContext, derive_seed
from fedpeft.algorithms.fedavg import client
from fedpeft.algorithms.fedavg.server import FedAvg
from fedpeft.algorithms.fedpt.config import FedPTConfig
from fedpeft.algorithms.fedpt.proxy import LogitSource, LogitSum
from fedpeft.errors import ConfigError
from fedpeft.models import load_model
from fedpeft.registry import register_algorithm
from fedpeft.training.losses import Positions, distillation_loss
from fedpeft.training.trainer import Trainer

if TYPE_CHECKING:
    from fedpeft.algorithms.base import Grid
    from fedpeft.config import RunConfig


#: The sub-folder of a FedPT run's adapter folders holding the proxy's expert adapter.
EXPERT_FOLDER = "expert"


def proxy_model(large: LogitSource, expert: LogitSource, antiexpert: LogitSource, alpha: float) -> LogitSum:
    """The proxy-tuned large model: ``z_L + alpha * (z_E - z_A)``."""
    return LogitSum([(1.0, large), (alpha, expert), (-alpha, antiexpert)])


@register_algorithm("fedpt")
class FedPT(FedAvg):
    """FedPT: federated LoRA on a small model, a large black-box model proxy-tuned with it, distilled back."""

    config_cls = FedPTConfig
    client_app = client.app  # the clients run plain FedAvg training on the small model
    opts: FedPTConfig

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        super().check_config(cfg)
        opts: FedPTConfig = cfg.algorithm
        roles = sorted(cfg.server.models)
        if opts.large not in cfg.server.models:
            raise ConfigError("algorithm.large", opts.large, f"a role of [server.models] (it has {roles})")
        if not {"client", opts.large} <= set(cfg.server.same_vocab):
            raise ConfigError(
                "server.same_vocab",
                cfg.server.same_vocab,
                f"a list naming 'client' and {opts.large!r}: proxy-tuning adds their logits token by token",
            )
        if opts.distill and opts.distill_steps > 0 and cfg.server.data is None:
            raise ConfigError(
                "server.data", None, "unlabeled prompts for the distillation (or algorithm.distill = false)"
            )

    def __init__(self, cfg: RunConfig, server: ServerContext) -> None:
        super().__init__(cfg, server)
        device = server.device
        self.large = LogitSource.of_model(server.models[self.opts.large], cfg.server.models[self.opts.large])
        # The small model three times on the server: the original (anti-expert), the aggregated adapter (expert,
        # fixed during a round's distillation) and the distillation student. Small by construction.
        anti = load_model(cfg.model.name, cfg.model.dtype, device)
        self.antiexpert = LogitSource.of_model(anti, f"{cfg.model.name} (pre-trained)")
        self.expert_model = attach_adapter(load_model(cfg.model.name, cfg.model.dtype, device), cfg.adapter)
        if getattr(self.expert_model, "_is_prompt_learning", False):
            raise ConfigError("adapter.method", cfg.adapter.method, "an adapter that adds no virtual tokens")
        self.expert = LogitSource.of_model(self.expert_model, f"{cfg.model.name} (tuned)", freeze=False)
        self.proxy = proxy_model(self.large, self.expert, self.antiexpert, self.opts.alpha)  # checks vocab sizes
        self.expert_state: State = {k: v.clone() for k, v in self.state.items()}
        self.large_metrics: dict[str, float] | None = None
        self.trainer: Trainer | None = None
        if self.opts.distill and self.opts.distill_steps > 0:
            student = attach_adapter(load_model(cfg.model.name, cfg.model.dtype, device), cfg.adapter)
            steps = self.opts.distill_steps * cfg.federation.rounds  # one schedule over the whole run
            settings = dataclasses.replace(
                cfg.train, lr=self.opts.distill_lr, steps=steps, warmup_steps=0, grad_accum=1
            )
            positions: Positions = self.opts.distill_positions  # type: ignore[assignment]  # validated in config
            loss = distillation_loss(self.teacher_logits, self.opts.temperature, positions)
            self.trainer = Trainer(student, settings, loss)  # its optimizer state persists across rounds

    def teacher_logits(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The proxy-tuned large model's logits [B, T, V] on a distillation batch."""
        return self.proxy(batch["input_ids"], batch["attention_mask"]).logits

    def fit_round(self, rnd: int, grid: Grid) -> dict[str, Any]:
        info = super().fit_round(rnd, grid)  # FedAvg on the small model's adapter
        self.expert_state = {k: v.clone() for k, v in self.state.items()}
        if self.trainer is not None:
            info.update(self.distill(rnd))
        return info

    def distill(self, rnd: int) -> dict[str, Any]:
        """``distill_steps`` of forward KL from the proxy-tuned large model (expert = this round's aggregate) into
        the aggregated small model; the result is the new global adapter."""
        assert self.trainer is not None and self.server.server_data is not None  # __init__ / check_config
        data = self.server.server_data
        t0 = time.perf_counter()
        load_adapter_state(self.expert_model, self.expert_state)
        student = self.trainer.model
        load_adapter_state(student, self.state)
        gen = torch.Generator().manual_seed(derive_seed(self.cfg.seed, rnd, "distill"))
        batch = min(self.opts.distill_batch, len(data.examples))
        # a fixed probe batch (the first prompts) measures the KL before and after the round's steps
        probe = {k: v.to(self.trainer.device) for k, v in data.collate(list(data.examples[:batch])).items()}
        kl_before = self.probe_kl(probe)
        losses = []
        student.train()
        for _ in range(self.opts.distill_steps):
            pick = torch.randperm(len(data.examples), generator=gen)[:batch].tolist()
            losses.append(self.trainer.step(data.collate([data.examples[i] for i in pick])))
        student.eval()
        self.state = {k: v.detach().clone() for k, v in adapter_state(student).items()}
        return {
            "distill_loss": sum(losses) / len(losses),
            "distill_kl_before": kl_before,
            "distill_kl_after": self.probe_kl(probe),
            "distill_s": round(time.perf_counter() - t0, 3),
        }

    @torch.no_grad()
    def probe_kl(self, batch: Mapping[str, torch.Tensor]) -> float:
        """The distillation loss of the student on ``batch`` (no update)."""
        assert self.trainer is not None
        return float(self.trainer.loss(self.trainer.model, batch))

    def global_metrics(self, rnd: int) -> dict[str, float]:
        """The proxy-tuned large model's metrics (headline), the small model's (``small_``) and the untuned large
        model's (``large_``, a constant reference evaluated once)."""
        eval_set = self.server.eval_set
        if eval_set is None:
            raise ConfigError("federation.runtime", self.cfg.federation.runtime, "a runtime with a server eval set")
        load_adapter_state(self.expert_model, self.expert_state)
        out = dict(eval_set.evaluate_model(self.proxy))
        if self.opts.eval_small:
            out.update({f"small_{k}": v for k, v in self.server.evaluate(self.state).items()})
        if self.opts.eval_large:
            if self.large_metrics is None:
                self.large_metrics = eval_set.evaluate_model(LogitSum([(1.0, self.large)]))
            out.update({f"large_{k}": v for k, v in self.large_metrics.items()})
        return out

    def adapters(self) -> dict[str, State]:
        """The small model's global adapter (what the clients start from) and, in ``expert/``, the adapter the
        proxy-tuned large model uses as its expert (the aggregate before distillation): ``fedpeft generate`` rebuilds
        the proxy-tuned model from the run directory with it."""
        return {"": self.state, EXPERT_FOLDER: self.expert_state}

    def results(self) -> dict[str, Any]:
        out = super().results()
        final = out["final"]
        out["fedpt"] = {
            "proxy": {k: v for k, v in final.items() if not k.startswith(("small_", "large_"))},
            "small": {k[6:]: v for k, v in final.items() if k.startswith("small_")},
            "large": {k[6:]: v for k, v in final.items() if k.startswith("large_")},
            "alpha": self.opts.alpha,
            "distill": bool(self.trainer is not None),
        }
        return out

    def state_dict(self) -> dict[str, Any]:
        out = {**super().state_dict(), "expert_state": self.expert_state, "large_metrics": self.large_metrics}
        if self.trainer is not None:
            out.update(self.trainer.state_dict("distill/"))
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.expert_state = dict(state["expert_state"])
        self.large_metrics = state["large_metrics"]
        if self.trainer is not None:
            self.trainer.load_state_dict(state, prefix="distill/")
