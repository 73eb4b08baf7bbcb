"""FedsLLM server (Zhao et al., "FedsLLM: Federated Split Learning for Large Language Models over Communication
Networks", arXiv 2407.09250; ALGORITHMS.md section 5): the main server and the federated server in one program.

Each round, for the sampled clients in parallel (one exchange per micro-batch, all clients in lockstep):

1. ``train.split_start`` sends each client the client-side global adapter; it answers with micro-batch 0's
   activations at the cut;
2. the main server runs layers [cut, L), the head and the loss on them with *this client's copy* of the
   server-side adapter (SplitFed: one copy per client, each with its own AdamW), backpropagates, and returns the
   gradient at the cut with ``train.split_step``; the client backpropagates, steps, and sends the next
   micro-batch's activations, or after the last its client-side update;
3. at the end of each optimizer step both sides clip by the joint gradient norm (they exchange their squared
   norms), so that one client, full participation and the same seed give unsplit LoRA training's trajectory;
4. the federated server averages the client-side updates, the main server its copies, with the same weights.

The gradient of a client's server-side copy waits in the copy's slot until the client's norm arrives with the next
message, then the copy steps. A client that fails or sends malformed activations mid-round is dropped from the
round (its copy discarded), as a failed client is in FedAvg.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from fedpeft.adapters import adapter_state, attach_adapter, load_adapter_state
from fedpeft.algorithms.aggregation import State, state_sub
from fedpeft.algorithms.base import Accepted, Msg, Reply, Scalar, ServerContext
from fedpeft.algorithms.fedavg.server import FedAvg
from fedpeft.algorithms.fedsllm import client
from fedpeft.algorithms.fedsllm.config import FedsLLMConfig
from fedpeft.algorithms.fedsllm.split import BATCH_KEYS, partition, top_loss
from fedpeft.errors import ConfigError
from fedpeft.models import load_model
from fedpeft.models.split import forward_middle, num_layers
from fedpeft.registry import register_algorithm
from fedpeft.training.losses import make_loss
from fedpeft.training.trainer import Trainer, autocast_context

if TYPE_CHECKING:
    from fedpeft.algorithms.base import Grid
    from fedpeft.config import RunConfig


def resolve_cut(opts: FedsLLMConfig, layers: int, rank: int) -> int:
    """The run's cut: ``algorithm.cut``, the plan's, or the middle ``layers // 2``; checked against the model."""
    cut = opts.cut
    if opts.plan is not None:
        path = Path(opts.plan)
        if not path.is_file():
            raise ConfigError("algorithm.plan", opts.plan, "a plan JSON written by `fedpeft plan --json`")
        plan = json.loads(path.read_text())
        cut = int(plan["cut"])
        if int(plan.get("rank", rank)) != rank:
            raise ConfigError("adapter.r", rank, f"the plan's LoRA rank {plan['rank']} (set adapter.r to it)")
    cut = layers // 2 if cut is None else cut
    if not 0 <= cut <= layers:
        raise ConfigError("algorithm.cut", cut, f"an integer in [0, {layers}] (the model has {layers} layers)")
    return cut


@dataclass
class Slot:
    """The main server's per-client copy of the server-side adapter during a round."""

    state: State  # the copy (server-side keys)
    opt: dict[str, Any] = field(default_factory=dict)  # its AdamW state, flat (Trainer.state_dict)
    grads: dict[str, Tensor] = field(default_factory=dict)  # gradients waiting for the client's norm
    sq_norm: float = 0.0  # the server side's squared gradient norm at the end of the last optimizer step
    losses: list[float] = field(default_factory=list)  # one per micro-batch
    word_ids: Tensor | None = None
    seconds: float = 0.0  # main-server compute for this client
    inputs: Tensor | None = None  # U-shaped: the activations of the current micro-batch (the middle recomputes)
    mask: Tensor | None = None


@register_algorithm("fedsllm")
class FedsLLM(FedAvg):
    """FedsLLM: split learning with LoRA (clients: layers below the cut; main server: the rest), SplitFed-style
    per-client server copies, FedAvg of both halves every round."""

    supports_secure_aggregation = False  # its own round (selection / split exchanges) aggregates in the clear
    simulates_attacks = False

    config_cls = FedsLLMConfig
    client_app = client.app
    opts: FedsLLMConfig

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        super().check_config(cfg)
        if cfg.federation.client_eval_every:
            raise ConfigError(
                "federation.client_eval_every",
                cfg.federation.client_eval_every,
                "0: clients hold only the bottom of the model (the server evaluates the whole adapter)",
            )
        if cfg.adapter.method == "adalora":
            raise ConfigError("adapter.method", "adalora", "a method without global rank reallocation (lora, ...)")

    def __init__(self, cfg: RunConfig, server: ServerContext) -> None:
        super().__init__(cfg, server)
        self.model = attach_adapter(load_model(cfg.model.name, cfg.model.dtype, server.device), cfg.adapter)
        self.layers = num_layers(self.model)
        self.cut = resolve_cut(self.opts, self.layers, cfg.adapter.r)
        self.slots: dict[int, Slot] = {}
        if self.cut == 0:  # said on every run, not buried in the docs
            text = (
                "fedsllm at cut 0 sends the token embeddings themselves: the main server can read every client's "
                "text from them; use algorithm.cut >= 1 (deeper is harder to invert, not impossible)"
            )
            print(f"fedpeft: warning: {text}", file=sys.stderr, flush=True)
            server.log("privacy", message=text)

    # ------------------------------------------------------------------ the round
    def fit_round(self, rnd: int, grid: Grid) -> dict[str, Any]:
        clients = self.sample_clients(rnd, grid.client_ids())
        client_part, server_part = partition(self.state, self.cut, self.opts.u_shaped)
        self.slots = {c: Slot(dict(server_part)) for c in clients}
        self.shapes: list[list[int]] = []  # [B, T] of every micro-batch's activations (delay-model checks)
        base: dict[str, Scalar] = {
            "round": rnd,
            "lr": self.client_lr(rnd),
            "cut": self.cut,
            "u_shaped": self.opts.u_shaped,
        }
        micro = self.cfg.train.steps * self.cfg.train.grad_accum

        msgs = [(c, Msg(client.START, dict(client_part), dict(base))) for c in clients]
        replies = self.exchange(rnd, grid, msgs, "hidden")
        accepted: list[Accepted] = []
        for j in range(micro):
            for r in replies:
                assert r.msg is not None
                if "client_sq_norm" in r.msg.metrics:  # the client finished an optimizer step: so does its copy
                    self.server_step(rnd, r.client_id, float(r.msg.metrics["client_sq_norm"]))
            config = {**base, "micro": j}
            if self.opts.u_shaped:  # the middle's output down, its gradient up: the loss is computed on the client
                outs = {r.client_id: self.middle_forward(r.client_id, r.msg) for r in replies}  # type: ignore[arg-type]
                msgs = [
                    (c, Msg(client.HEAD, {"hidden": h}, config, kinds={"hidden": "activations"}))
                    for c, h in outs.items()
                ]
                replies = self.exchange(rnd, grid, msgs, "grad")
                grads = {r.client_id: self.middle_backward(rnd, r.client_id, r.msg, j) for r in replies}  # type: ignore[arg-type]
            else:
                grads = {r.client_id: self.top_forward_backward(rnd, r.client_id, r.msg, j) for r in replies}  # type: ignore[arg-type]
            msgs = [
                (
                    c,
                    Msg(
                        client.STEP,
                        {"grad": g},
                        {**config, "server_sq_norm": self.slots[c].sq_norm},
                        kinds={"grad": "gradients"},
                    ),
                )
                for c, g in grads.items()
            ]
            if j + 1 < micro:
                replies = self.exchange(rnd, grid, msgs, "hidden")
            else:  # the last reply is the client-side update: validated like any FedAvg update
                accepted = self.collect(rnd, grid, msgs, reference=lambda c: client_part)
        for a in accepted:  # the copies' last step
            if "client_sq_norm" in a.metrics:
                self.server_step(rnd, a.client_id, float(a.metrics["client_sq_norm"]))
        info: dict[str, Any] = {"clients": [a.client_id for a in accepted], "sampled": clients, "cut": self.cut}
        info["server_seconds"] = round(sum(s.seconds for s in self.slots.values()), 3)
        info["split_shapes"] = self.shapes
        if accepted:
            weights = [float(a.num_examples) for a in accepted]
            losses = [statistics.fmean(self.slots[a.client_id].losses) for a in accepted]
            info["train_loss"] = sum(w * x for w, x in zip(weights, losses, strict=True)) / sum(weights)
            client_delta = self.combine([a.arrays for a in accepted], weights)  # the federated server
            copies = [state_sub(self.slots[a.client_id].state, server_part) for a in accepted]
            self.state = self.optimizer.step(self.state, {**client_delta, **self.combine(copies, weights)})
        self.slots = {}
        return info

    def exchange(self, rnd: int, grid: Grid, msgs: list[tuple[int, Msg]], key: str) -> list[Reply]:
        """One lockstep exchange; failed clients and malformed replies (``key``'s tensor) drop the client from the
        round (its copy discarded)."""
        replies = grid.send_and_receive(msgs, round=rnd, timeout=self.cfg.federation.timeout)
        kept = []
        for r in replies:
            if not r.ok:
                self.log_failure(rnd, r)
                self.slots.pop(r.client_id, None)
                continue
            assert r.msg is not None
            if key == "grad" and "loss" in r.msg.metrics:
                self.slots[r.client_id].losses.append(float(r.msg.metrics["loss"]))
            problem = self.check_reply(r.msg.arrays, key, self.slots[r.client_id])
            if problem is not None:
                self.server.log("rejected", round=rnd, client=r.client_id, reason=problem)
                self.slots.pop(r.client_id, None)
                continue
            if key == "hidden":
                self.shapes.append([int(n) for n in r.msg.arrays["hidden"].shape[:2]])
            kept.append(r)
        return kept

    def check_reply(self, arrays: Mapping[str, Tensor], key: str, slot: Slot) -> str | None:
        """Why a client's activations (``hidden``) or gradient (``grad``) cannot be used; None when they can."""
        value, size = arrays.get(key), self.model.config.hidden_size  # type: ignore[union-attr]
        if value is None:
            return f"{key} missing"
        if value.dim() != 3 or value.shape[-1] != size or not value.is_floating_point():
            return f"{key} must be floating [B, T, {size}]; got {value.dtype} {tuple(value.shape)}"
        if key == "hidden":
            mask = arrays.get("attention_mask")
            if mask is None or tuple(mask.shape) != tuple(value.shape[:2]):
                return (
                    f"attention mask {None if mask is None else tuple(mask.shape)} does not match {tuple(value.shape)}"
                )
        elif slot.inputs is None or value.shape != slot.inputs.shape:
            return f"gradient {tuple(value.shape)} does not match the output sent"
        if not bool(torch.isfinite(value).all()):
            return f"{key} is not finite"
        return None

    # ------------------------------------------------------------------ the main server's half
    def trainer(self, rnd: int, slot: Slot) -> Trainer:
        """A trainer of the main server's model holding ``slot``'s copy, optimizer state and pending gradients."""
        cfg = dataclasses.replace(self.cfg.train, lr=self.client_lr(rnd))  # the clients' settings this round
        trainer = Trainer(self.model, cfg, make_loss(cfg.loss, slot.word_ids))
        load_adapter_state(self.model, {**adapter_state(self.model), **slot.state})
        trainer.load_state_dict(slot.opt)
        for name, p in zip(trainer.param_names, trainer.params, strict=True):
            p.grad = slot.grads[name].clone() if name in slot.grads else None
        return trainer

    def save(self, slot: Slot, trainer: Trainer) -> None:
        state = {k: v.detach().clone() for k, v in adapter_state(self.model).items()}
        _, slot.state = partition(state, self.cut, self.opts.u_shaped)
        slot.opt = trainer.state_dict("opt/")
        slot.grads = {
            n: p.grad.detach().clone()
            for n, p in zip(trainer.param_names, trainer.params, strict=True)
            if p.grad is not None
        }

    def top_forward_backward(self, rnd: int, cid: int, msg: Msg, j: int) -> Tensor:
        """Micro-batch j of client ``cid`` on the top half: loss, backward into the copy; the gradient at the cut."""
        slot = self.slots[cid]
        t0 = time.perf_counter()
        if "word_ids" in msg.arrays:
            slot.word_ids = msg.arrays["word_ids"]
        trainer = self.trainer(rnd, slot)
        hidden = msg.arrays["hidden"].to(trainer.device).requires_grad_()  # [B, T, H], a leaf: its grad goes back
        batch = {k: msg.arrays[k] for k in BATCH_KEYS if k in msg.arrays}
        batch["input_ids"] = torch.zeros_like(batch["attention_mask"])  # shapes only: the tokens stay on the client
        self.model.train()
        slot.losses.append(trainer.accumulate(batch, top_loss(trainer.loss, hidden, self.cut)))
        self.model.eval()
        if (j + 1) % trainer.cfg.grad_accum == 0:
            slot.sq_norm = trainer.grad_sq_norm()
        self.save(slot, trainer)
        slot.seconds += time.perf_counter() - t0
        assert hidden.grad is not None
        return hidden.grad.detach()  # d (loss / grad_accum) / d hidden

    def middle_forward(self, cid: int, msg: Msg) -> Tensor:
        """U-shaped: layers [cut, L) on client ``cid``'s activations, without autograd (recomputed for backward)."""
        slot = self.slots[cid]
        t0 = time.perf_counter()
        slot.inputs, slot.mask = msg.arrays["hidden"], msg.arrays["attention_mask"].to(self.server.device)
        load_adapter_state(self.model, {**adapter_state(self.model), **slot.state})
        self.model.train()
        with torch.no_grad(), autocast_context(self.server.device, self.cfg.train.precision):
            out = forward_middle(self.model, slot.inputs.to(self.server.device), slot.mask, self.cut, self.layers)
        self.model.eval()
        slot.seconds += time.perf_counter() - t0
        return out  # [B, T, H]

    def middle_backward(self, rnd: int, cid: int, msg: Msg, j: int) -> Tensor:
        """U-shaped: the client's gradient at the middle's output backpropagated through layers [cut, L) into the
        copy; the gradient at the cut."""
        slot = self.slots[cid]
        assert slot.inputs is not None and slot.mask is not None
        t0 = time.perf_counter()
        trainer = self.trainer(rnd, slot)
        hidden = slot.inputs.to(trainer.device).requires_grad_()  # [B, T, H]
        self.model.train()
        trainer.forward(forward_middle, self.model, hidden, slot.mask, self.cut, self.layers)
        trainer.backward_from(msg.arrays["grad"], scale=False)  # already d (loss / grad_accum) / d output
        self.model.eval()
        if (j + 1) % trainer.cfg.grad_accum == 0:
            slot.sq_norm = trainer.grad_sq_norm()
        self.save(slot, trainer)
        slot.seconds += time.perf_counter() - t0
        assert hidden.grad is not None
        return hidden.grad.detach()

    def server_step(self, rnd: int, cid: int, client_sq_norm: float) -> None:
        """The copy's optimizer step, clipped by the joint norm (its own and the client's)."""
        slot = self.slots[cid]
        trainer = self.trainer(rnd, slot)
        trainer.apply(other_sq_norm=client_sq_norm)
        self.save(slot, trainer)
