"""FedsLLM client: the bottom of the model (embeddings, layers [0, cut)) with its adapter, one exchange per
micro-batch with the main server.

- ``train.split_start``: the client-side global adapter arrives; the client draws the round's batches (the same
  generator and order as FedAvg's local training), runs micro-batch 0 through its layers and replies with the
  activations at the cut [B, T, H] (kind ``activations``) and the batch fields the loss needs (kind ``batch``:
  mask, labels, prompt lengths; the token ids stay here).
- ``train.split_head`` (U-shaped split only): the main server's output [B, T, H] for micro-batch j comes down;
  the client runs the final norm, the head and the loss on it (the labels never leave), keeps the head's
  gradients in its state and replies with the gradient at the server's output (kind ``gradients``) and the loss.
- ``train.split_step``: the gradient at the cut for micro-batch j comes back (kind ``gradients``). The client
  recomputes micro-batch j's forward (no autograd graph is kept between messages: on Flower a message may run in
  another worker, so everything that must survive is in ``ctx.state``), backpropagates, and at the end of an
  optimizer step applies AdamW with the joint gradient norm (its own and the server's, which the message brings:
  clipping as one model would). It replies with micro-batch j + 1's activations, or after the last one with its
  update (local - received, kind ``adapter``), and its squared gradient norm for the server's own clipping.

Dropout: each micro-batch's forward runs under a random state seeded by (seed, round, client, micro-batch), so the
recomputed forward draws the same masks as the one whose activations were sent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from fedpeft.adapters import adapter_state, load_adapter_state
from fedpeft.algorithms.aggregation import State, state_sub
from fedpeft.algorithms.base import ClientApp, ClientContext, Msg, derive_seed
from fedpeft.algorithms.fedsllm.split import BATCH_KEYS, bottom_params, partition, top_loss
from fedpeft.algorithms.local_training import round_train_config
from fedpeft.models.split import forward_bottom, num_layers
from fedpeft.training.flops import FLOPS, add_flops, shape_key
from fedpeft.training.loop import sample_indices
from fedpeft.training.trainer import Trainer, autocast_context

app = ClientApp("fedsllm")

START, HEAD, STEP = "train.split_start", "train.split_head", "train.split_step"
PREFIX = "fedsllm/"
RECEIVED, ADAPTER, GRADS, OPT = f"{PREFIX}received/", f"{PREFIX}adapter/", f"{PREFIX}grad/", f"{PREFIX}opt/"
SECONDS = f"{PREFIX}seconds"  # the client's compute time in this round so far


def _substate(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def micro_batches(ctx: ClientContext, rnd: int, cfg: Any) -> list[list[int]]:
    """The round's micro-batches as example indices: exactly the order FedAvg's local training draws
    (``ctx.generator(rnd, "train")``, :func:`~fedpeft.training.loop.sample_indices`)."""
    examples = ctx.data.train
    micro = cfg.steps * cfg.grad_accum
    order = sample_indices(
        [int(e.get("label", -1)) for e in examples],
        micro * cfg.batch_size,
        ctx.generator(rnd, "train"),
        cfg.balanced_sampling,
    )
    return [order[j * cfg.batch_size : (j + 1) * cfg.batch_size] for j in range(micro)]


def _counted(key: tuple[Any, ...], batch: Mapping[str, Tensor], work: Callable[[], Any]) -> Any:
    """Run ``work`` and report its FLOPs to the device's meter: counted exactly the first times a shape is seen
    (:class:`~fedpeft.training.flops.FlopModel`), predicted from the shape afterwards."""
    b, t = (int(n) for n in batch["input_ids"].shape[:2])
    known = FLOPS.predict(key, b, t)
    if known is not None:
        add_flops(known)
        return work()
    with FlopCounterMode(display=False) as counter:  # forwards compute the same bits under the counter
        out = work()
    FLOPS.record(key, b, t, int(counter.get_total_flops()))
    add_flops(int(counter.get_total_flops()))
    return out


def _bottom(
    ctx: ClientContext, trainer: Trainer, batch: Mapping[str, Tensor], cut: int, seed: int, *, graph: bool
) -> Tensor:
    """Micro-batch forward to the cut [B, T, H] under a random state of its own (dropout masks reproducible);
    ``graph``: through the trainer, for :meth:`Trainer.backward_from`, else without autograd (what is sent)."""
    devices = [trainer.device] if trainer.device.type == "cuda" else []
    args = (ctx.model, batch["input_ids"].to(trainer.device), batch["attention_mask"].to(trainer.device), cut)

    def run() -> Tensor:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            if graph:
                return trainer.forward(forward_bottom, *args)
            with torch.no_grad(), autocast_context(trainer.device, trainer.cfg.precision):
                return forward_bottom(*args)

    out: Tensor = _counted(shape_key(ctx.model, "fedsllm_bottom", cut, graph), batch, run)
    return out


def _backward(
    ctx: ClientContext, trainer: Trainer, batch: Mapping[str, Tensor], out: Tensor, grad: Tensor, cut: int
) -> None:
    """The server's gradient at the cut through the client's layers. Its FLOPs are counted on a throwaway
    ``autograd.grad`` of the retained graph (some backward kernels differ in the last bit under the counter), the
    real backward runs outside the counter."""
    key = shape_key(ctx.model, "fedsllm_bottom_backward", cut)
    b, t = (int(n) for n in batch["input_ids"].shape[:2])
    if out.requires_grad and FLOPS.predict(key, b, t) is None:
        with FlopCounterMode(display=False) as counter:
            torch.autograd.grad(
                out, trainer.params, grad_outputs=grad.to(out.dtype), retain_graph=True, allow_unused=True
            )
        FLOPS.record(key, b, t, int(counter.get_total_flops()))
    add_flops(FLOPS.predict(key, b, t) or 0)
    trainer.backward_from(grad, out, scale=False)  # the server's gradient is of loss / grad_accum


def _seed(ctx: ClientContext, rnd: int, j: int) -> int:
    return derive_seed(ctx.cfg.seed, rnd, ctx.client_id, "split", j)


def _u_shaped(msg: Msg) -> bool:
    return bool(msg.config.get("u_shaped", False))


def _activations_reply(
    ctx: ClientContext, trainer: Trainer, msg: Msg, j: int, batches: list[list[int]]
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Micro-batch j through the client's layers: the arrays (activations + the fields the server's loss needs;
    only the mask in a U-shaped split) and their kinds."""
    rnd, cut = int(msg.config["round"]), int(msg.config["cut"])
    batch = ctx.data.collate([ctx.data.train[i] for i in batches[j]])
    hidden = _bottom(ctx, trainer, batch, cut, _seed(ctx, rnd, j), graph=False)  # no graph kept: recomputed later
    arrays = {"hidden": hidden}  # [B, T, H]
    sent = ("attention_mask",) if _u_shaped(msg) else BATCH_KEYS
    arrays.update({k: batch[k] for k in sent if k in batch})
    kinds = {k: "batch" for k in arrays}
    kinds["hidden"] = "activations"
    return arrays, kinds


def _trainer(ctx: ClientContext, msg: Msg) -> Trainer:
    trainable, held = bottom_params(
        ctx.model, int(msg.config["cut"]), _u_shaped(msg)
    )  # what a device of this split must hold
    ctx.cost.update(trainable_params=float(trainable), params_held=float(held))
    cfg = round_train_config(ctx, msg)
    return Trainer(ctx.model, cfg, word_ids=ctx.data.word_ids)


def _save(ctx: ClientContext, trainer: Trainer, msg: Msg) -> None:
    client, _ = partition(adapter_state(ctx.model), int(msg.config["cut"]), _u_shaped(msg))
    for k in [k for k in ctx.state if k.startswith((ADAPTER, GRADS, OPT))]:
        del ctx.state[k]
    ctx.state.update({ADAPTER + k: v.detach().clone() for k, v in client.items()})
    ctx.state.update(
        {
            GRADS + n: p.grad.detach().clone()
            for n, p in zip(trainer.param_names, trainer.params, strict=True)
            if p.grad is not None
        }
    )
    ctx.state.update(trainer.state_dict(OPT))


def _load(ctx: ClientContext, trainer: Trainer) -> None:
    """Restore the client-side adapter, pending gradients and optimizer state from ``ctx.state``."""
    state = {**adapter_state(ctx.model), **_substate(ctx.state, ADAPTER)}  # server-side keys: unused below the cut
    load_adapter_state(ctx.model, state)
    grads = _substate(ctx.state, GRADS)
    for name, p in zip(trainer.param_names, trainer.params, strict=True):
        p.grad = grads[name].clone() if name in grads else None
    trainer.load_state_dict(ctx.state, OPT)


@app.on(START)
def start_handler(ctx: ClientContext, msg: Msg) -> Msg:
    t0 = time.perf_counter()
    rnd = int(msg.config["round"])
    for k in [k for k in ctx.state if k.startswith(PREFIX)]:
        del ctx.state[k]  # a new round: nothing of the last one is used
    received: State = dict(msg.arrays)
    load_adapter_state(ctx.model, {**adapter_state(ctx.model), **received})
    trainer = _trainer(ctx, msg)  # a fresh AdamW per round, as FedAvg's local training
    ctx.model.train()
    arrays, kinds = _activations_reply(ctx, trainer, msg, 0, micro_batches(ctx, rnd, trainer.cfg))
    ctx.model.eval()
    if ctx.data.word_ids is not None and not _u_shaped(msg):
        arrays["word_ids"], kinds["word_ids"] = ctx.data.word_ids, "batch"
    ctx.state.update({RECEIVED + k: v.detach().clone() for k, v in received.items()})
    ctx.state[SECONDS] = time.perf_counter() - t0
    _save(ctx, trainer, msg)
    return Msg(START, arrays=arrays, kinds=kinds)


@app.on(HEAD)
def head_handler(ctx: ClientContext, msg: Msg) -> Msg:
    """U-shaped split: the head and the loss on the server's output for micro-batch j, on the client."""
    t0 = time.perf_counter()
    rnd, j = int(msg.config["round"]), int(msg.config["micro"])
    trainer = _trainer(ctx, msg)
    _load(ctx, trainer)
    batch = ctx.data.collate([ctx.data.train[i] for i in micro_batches(ctx, rnd, trainer.cfg)[j]])
    out = msg.arrays["hidden"].to(trainer.device).requires_grad_()  # [B, T, H]: layers [cut, L) done, no norm
    layers = num_layers(ctx.model)
    ctx.model.train()
    loss = trainer.accumulate(batch, top_loss(trainer.loss, out, layers))  # norm + head + loss; head grads kept
    ctx.model.eval()
    ctx.state[SECONDS] = float(ctx.state.get(SECONDS, 0.0)) + time.perf_counter() - t0
    _save(ctx, trainer, msg)
    assert out.grad is not None
    return Msg(HEAD, arrays={"grad": out.grad.detach()}, metrics={"loss": loss}, kinds={"grad": "gradients"})


@app.on(STEP)
def step_handler(ctx: ClientContext, msg: Msg) -> Msg:
    t0 = time.perf_counter()
    rnd, j = int(msg.config["round"]), int(msg.config["micro"])
    cut = int(msg.config["cut"])
    trainer = _trainer(ctx, msg)
    _load(ctx, trainer)
    cfg = trainer.cfg
    batches = micro_batches(ctx, rnd, cfg)
    ctx.model.train()
    batch = ctx.data.collate([ctx.data.train[i] for i in batches[j]])
    out = _bottom(ctx, trainer, batch, cut, _seed(ctx, rnd, j), graph=True)  # recompute j's forward, with its graph
    _backward(ctx, trainer, batch, out, msg.arrays["grad"], cut)
    metrics: dict[str, float] = {}
    if (j + 1) % cfg.grad_accum == 0:  # the end of an optimizer step: clip jointly with the server's norm
        metrics["client_sq_norm"] = trainer.grad_sq_norm()
        trainer.apply(other_sq_norm=float(msg.config["server_sq_norm"]))
    if j + 1 < len(batches):
        arrays, kinds = _activations_reply(ctx, trainer, msg, j + 1, batches)
        ctx.model.eval()
        ctx.state[SECONDS] = float(ctx.state.get(SECONDS, 0.0)) + time.perf_counter() - t0
        _save(ctx, trainer, msg)
        return Msg(STEP, arrays=arrays, metrics=metrics, kinds=kinds)
    ctx.model.eval()
    client, _ = partition(adapter_state(ctx.model), cut, _u_shaped(msg))
    update = state_sub(client, _substate(ctx.state, RECEIVED))
    seconds = float(ctx.state.get(SECONDS, 0.0)) + time.perf_counter() - t0
    for k in [k for k in ctx.state if k.startswith(PREFIX)]:
        del ctx.state[k]
    metrics.update({"num_examples": len(ctx.data.train), "steps": cfg.steps, "seconds": round(seconds, 3)})
    return Msg(STEP, arrays=update, metrics=metrics)


__all__ = ["HEAD", "START", "STEP", "app", "micro_batches"]
