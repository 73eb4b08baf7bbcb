"""FedAvg-family client: load the global adapter, train locally, send back the update (``local - received``).

Sending the update rather than the state is what makes uplink compression meaningful (top-k of an update, with
error feedback), and lets robust aggregators and server optimizers work on pseudo-gradients directly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from fedpeft.algorithms import attacks
from fedpeft.algorithms.aggregation import State, state_sub
from fedpeft.algorithms.base import ClientApp, ClientContext, Msg
from fedpeft.algorithms.local_training import evaluate_local, round_train_config, train_local, train_metrics
from fedpeft.algorithms.lora_aggregation import truncate_to_rank, zero_pad_aggregate
from fedpeft.algorithms.secure_aggregation import app as secagg_app
from fedpeft.algorithms.secure_aggregation import hold
from fedpeft.config import TrainConfig
from fedpeft.privacy import dp
from fedpeft.privacy.dp_sgd import DPSGDTrainer, client_epsilon

app = ClientApp("fedavg")
app.include(secagg_app)  # the SecAgg exchanges (privacy.secure_aggregation)


def proximal_term(
    model: torch.nn.Module, anchor: Mapping[str, Tensor], mu: float
) -> Callable[[torch.nn.Module], Tensor]:
    """FedProx's ``mu/2 * ||w - w_anchor||^2`` over the trainable parameters (Li et al., MLSys 2020)."""
    anchors = {k: v.detach().clone() for k, v in anchor.items()}

    def term(m: torch.nn.Module) -> Tensor:
        params = dict(m.named_parameters())
        total = sum(((params[k] - a.to(params[k].dtype)) ** 2).sum() for k, a in anchors.items())
        return 0.5 * mu * total  # type: ignore[return-value]

    return term


def fit_to_model(received: State, ctx: ClientContext) -> State:
    """Zero-pad a lower-rank adapter (heterogeneous ranks) to the model's rank. Padded components have zero A rows
    and zero B columns, so their gradients are zero and they stay zero: the client trains exactly rank ``r_k``."""
    model_rank = ctx.cfg.adapter.r
    return zero_pad_aggregate([received], None, max_rank=model_rank)


@app.on("train")
def train_handler(ctx: ClientContext, msg: Msg) -> Msg:
    rnd = int(msg.config["round"])
    rank = int(msg.config.get("rank", 0))
    received = msg.arrays
    start = fit_to_model(received, ctx) if rank else received
    mu = float(msg.config.get("proximal_mu", 0.0))
    extra = proximal_term(ctx.model, start, mu) if mu > 0 else None
    attack = attacks.kind_of(ctx.cfg, ctx.client_id)  # "none" for every honest client
    examples = ctx.data.train
    if attack == "label_flip":
        examples = attacks.flip_labels(examples, len(ctx.data.word_ids) if ctx.data.word_ids is not None else 2)
    cfg = round_train_config(ctx, msg)
    trainer = dp_sgd_trainer(ctx, cfg) if ctx.cfg.privacy.dp == "sample" else None
    try:
        local, result = train_local(ctx, start, examples, cfg, rnd, extra_loss=extra, trainer=trainer)
    finally:
        if trainer is not None:
            trainer.close()
    if rank:
        local = truncate_to_rank(local, rank)
    update, metrics = state_sub(local, received), train_metrics(ctx, result)
    if trainer is not None:  # the privacy this client's examples have spent so far (its own running total)
        priv = ctx.cfg.privacy
        total = int(ctx.state.get("dp/updates", 0)) + trainer.updates
        ctx.state["dp/updates"] = total
        metrics["dp_epsilon"] = client_epsilon(
            total, cfg.batch_size, len(examples), priv.dp_noise_multiplier, priv.dp_delta
        )
    if attack != "none":
        update = attacks.corrupt(attack, update, ctx.cfg, ctx.generator(rnd, "attack"))
    if "dp_clip" in msg.config:  # client-level DP: bound this client's influence before anything leaves
        update = dp.clip_update(update, float(msg.config["dp_clip"]))[0]  # its norm is not reported: it would leak
        if "dp_noise_std" in msg.config:  # local DP: the noise is added here, from the OS's randomness
            update = dp.add_noise(update, float(msg.config["dp_noise_std"]), dp.noise_generator())
    if msg.config.get("secagg"):  # the update never leaves in the clear: held for the masked exchange
        return hold(ctx, update, metrics)
    return Msg("train", arrays=update, metrics=metrics)


def dp_sgd_trainer(ctx: ClientContext, cfg: TrainConfig) -> DPSGDTrainer:
    """A DP-SGD trainer for this round (privacy.dp = "sample"); per-example clipping replaces ``max_grad_norm``."""
    priv = ctx.cfg.privacy
    return DPSGDTrainer(
        ctx.model,
        dataclasses.replace(cfg, max_grad_norm=0.0),
        word_ids=ctx.data.word_ids,
        clip=priv.dp_clip,
        noise_multiplier=priv.dp_noise_multiplier,
    )


@app.on("evaluate")
def evaluate_handler(ctx: ClientContext, msg: Msg) -> Msg:
    state = fit_to_model(msg.arrays, ctx) if int(msg.config.get("rank", 0)) else msg.arrays
    return Msg("evaluate", metrics=evaluate_local(ctx, state, int(msg.config.get("limit", 64))))
