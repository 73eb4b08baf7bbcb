"""FedHDS client: features of every local example, local clusters, then LoRA on the examples the server chose.

Two handlers (plus FedAvg's ``evaluate``):

- ``query.fedhds``: extract features of every local training example (with the global adapter the message brings,
  or with the fixed Turbo feature model), reduce them (t-SNE / PCA / the server's shared projection), HDBSCAN,
  and reply with each local cluster's id (int64, kind ``ids``) and membership-weighted centroid (kind
  ``centroids``); the ``pooled`` reference replies with every example's feature instead (kind ``features``).
  The client keeps, in its state until it trains, each cluster's most central example and the adapter the
  message brought (so the round's adapter crosses the wire once).
- ``train.fedhds``: the chosen local cluster ids (kind ``ids``) or example indices, or nothing (``all``); one epoch
  over those examples; reply with the update (local - received), weighted by the coreset size.

What the selection reveals: the number of local examples, the number of local clusters and each centroid, i.e.
a few coordinates summarising a group of examples in a reduced feature space (a t-SNE or private-PCA space is
the client's own; under ``shared`` the server knows the projection, so a centroid is a point of its anchor space).
``centroid_noise`` adds the paper's ``tanh(c) + N(0, s^2)``; the privacy issue quantifies what remains.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from fedpeft.adapters import load_adapter_state
from fedpeft.algorithms.aggregation import State, state_sub
from fedpeft.algorithms.base import ClientApp, ClientContext, Msg
from fedpeft.algorithms.fedavg import client as fedavg_client
from fedpeft.algorithms.fedhds import select
from fedpeft.algorithms.local_training import round_train_config, train_local
from fedpeft.data import collate
from fedpeft.training.features import layer_features

app = ClientApp("fedhds")
app.include(fedavg_client.app)  # ``evaluate`` (and ``train``) as FedAvg's

PROJECTION = ("projection/mean", "projection/components")
SELECTION_KEYS = ("clusters", "examples")
STATE_IDS, STATE_NEAREST, STATE_ROUND = "fedhds/cluster_ids", "fedhds/nearest", "fedhds/round"
STATE_ADAPTER = "fedhds/adapter/"


# ------------------------------------------------------------------------------------------------ features
@functools.lru_cache(maxsize=2)
def feature_model(name: str) -> tuple[torch.nn.Module, Any]:
    """FedHDS-Turbo's fixed feature model and tokenizer, loaded once per process (frozen, eval mode)."""
    from fedpeft.models import load_model, load_tokenizer

    model = load_model(name)
    model.requires_grad_(False)
    return model.eval(), load_tokenizer(name)


@functools.lru_cache(maxsize=4)
def _tokenizer(name: str) -> Any:
    from fedpeft.models import load_tokenizer

    return load_tokenizer(name)


def feature_rows(
    examples: Sequence[Mapping[str, Any]],
    with_response: bool,
    source: Any = None,
    target: Any = None,
    max_length: int = 512,
) -> list[dict[str, Any]]:
    """The token sequences features are taken on: each example's ``input_ids`` (cut to its prompt unless
    ``with_response``), or, when ``target`` (a tokenizer) is given, the same text decoded with ``source`` and
    encoded with ``target`` (its EOS appended after a response, at most ``max_length`` tokens keeping the end)."""
    rows = []
    for ex in examples:
        ids = list(ex["input_ids"]) if with_response else list(ex["input_ids"][: int(ex["prompt_length"])])
        if target is not None:
            text = source.decode(ids, skip_special_tokens=True)
            ids = list(target(text, add_special_tokens=False)["input_ids"])
            if with_response and target.eos_token_id is not None:
                ids.append(int(target.eos_token_id))
            ids = ids[-max_length:] or [int(target.eos_token_id or 0)]
        rows.append({"input_ids": ids, "labels": [-100] * len(ids), "prompt_length": len(ids)})
    return rows


def extract(
    model: torch.nn.Module,
    examples: Sequence[Mapping[str, Any]],
    opts: Any,
    client_model: str,
    max_length: int,
) -> Tensor:
    """[n, D] features of ``examples`` (encoded for ``client_model``) under ``model`` (the tuned model with its
    adapter), or under ``opts.feature_model`` when set (Turbo; re-tokenized when its vocabulary differs)."""
    source = _tokenizer(client_model)
    target = None
    if opts.feature_model:
        model, tok = feature_model(opts.feature_model)
        target = None if tok.get_vocab() == source.get_vocab() else tok
        source = tok if target is None else source
    rows = feature_rows(examples, opts.feature_response, source, target, max_length)
    pad = (target or source).pad_token_id
    return layer_features(
        model,
        rows,
        functools.partial(collate, pad_id=pad),
        batch_size=opts.feature_batch_size,
        layers="all" if opts.feature_layers == "all" else [-1],
        pool=opts.feature_pool,
    )


def _adapter_part(arrays: Mapping[str, Tensor]) -> State:
    return {k: v for k, v in arrays.items() if k not in PROJECTION and k not in SELECTION_KEYS}


# ------------------------------------------------------------------------------------------------ handlers
@app.on("query.fedhds")
def select_handler(ctx: ClientContext, msg: Msg) -> Msg:
    rnd = int(msg.config["round"])
    opts = ctx.cfg.algorithm
    received = _adapter_part(msg.arrays)
    for key in [k for k in ctx.state if k.startswith(STATE_ADAPTER)]:
        del ctx.state[key]
    if received:  # FedHDS: features under the current global model; kept for this round's training
        load_adapter_state(ctx.model, received)
        ctx.state.update({STATE_ADAPTER + k: v.clone() for k, v in received.items()})
    t0 = time.perf_counter()
    feats = extract(ctx.model, ctx.data.train, opts, ctx.cfg.model.name, ctx.cfg.data.max_length)  # [n, D]
    t1 = time.perf_counter()
    metrics: dict[str, float] = {"num_examples": float(len(ctx.data.train)), "features_s": round(t1 - t0, 3)}
    if opts.coreset == "pooled":  # the centralized reference: every feature leaves the client
        return Msg("query.fedhds", {"features": feats}, metrics=metrics, kinds={"features": "features"})
    projection = (msg.arrays[PROJECTION[0]], msg.arrays[PROJECTION[1]]) if opts.reduction == "shared" else None
    seed = int(ctx.generator(rnd, "tsne").initial_seed())
    points = select.reduce(feats, opts.reduction, dims=opts.dims, seed=seed, projection=projection)  # [n, d]
    t2 = time.perf_counter()
    clusters = select.local_clusters(points, opts.min_cluster_size)
    ids, cents = select.weighted_centroids(points, clusters.labels, clusters.probs)  # [m], [m, d]
    ctx.state[STATE_IDS] = ids
    ctx.state[STATE_NEAREST] = select.nearest_members(points, clusters.labels, ids, cents)
    ctx.state[STATE_ROUND] = rnd
    if opts.centroid_noise > 0:
        cents = select.perturb(cents, opts.centroid_noise, ctx.generator(rnd, "centroid_noise"))
    metrics.update(
        reduce_s=round(t2 - t1, 3),
        cluster_s=round(time.perf_counter() - t2, 3),
        clusters=float(len(ids)),
        noise=float(int((clusters.labels == select.NOISE).sum())),
        fallback=float(clusters.fallback),
    )
    return Msg(
        "query.fedhds",
        {"cluster_ids": ids, "centroids": cents},
        metrics=metrics,
        kinds={"cluster_ids": "ids", "centroids": "centroids"},
    )


def coreset_indices(ctx: ClientContext, msg: Msg) -> list[int]:
    """Indices into the local training examples this round trains on."""
    n = len(ctx.data.train)
    if "clusters" in msg.arrays:
        selected = int(msg.config.get("selected_round", msg.config["round"]))
        if ctx.state.get(STATE_ROUND) != selected:
            raise ValueError(
                f"client {ctx.client_id} was sent clusters of its round-{selected} selection, but its last selection "
                f"was in round {ctx.state.get(STATE_ROUND)}"
            )
        position = {int(c): j for j, c in enumerate(ctx.state[STATE_IDS].tolist())}
        wanted = [int(c) for c in msg.arrays["clusters"].tolist()]
        unknown = [c for c in wanted if c not in position]
        if unknown:
            raise ValueError(f"client {ctx.client_id} has no local cluster(s) {unknown}")
        nearest = ctx.state[STATE_NEAREST].tolist()
        picked = [int(nearest[position[c]]) for c in wanted]
    elif "examples" in msg.arrays:
        picked = [int(i) for i in msg.arrays["examples"].tolist()]
        if any(not 0 <= i < n for i in picked):
            raise ValueError(f"client {ctx.client_id} holds {n} examples; asked for indices {picked}")
    else:
        picked = list(range(n))
    if not picked:
        raise ValueError(f"client {ctx.client_id} was asked to train on an empty coreset")
    return sorted(set(picked))


@app.on("train.fedhds")
def train_handler(ctx: ClientContext, msg: Msg) -> Msg:
    rnd = int(msg.config["round"])
    received = _adapter_part(msg.arrays)
    if not received:  # the adapter came with this round's query
        received = {k[len(STATE_ADAPTER) :]: v for k, v in ctx.state.items() if k.startswith(STATE_ADAPTER)}
        if not received:
            raise ValueError(f"client {ctx.client_id} got no adapter with its query or its training message")
    for key in [k for k in ctx.state if k.startswith(STATE_ADAPTER)]:
        del ctx.state[key]
    picked = coreset_indices(ctx, msg)
    examples = [ctx.data.train[i] for i in picked]
    base = round_train_config(ctx, msg)
    steps = math.ceil(ctx.cfg.algorithm.epochs * len(examples) / base.batch_size)  # one pass per epoch
    cfg = dataclasses.replace(base, steps=steps, warmup_steps=min(base.warmup_steps, steps - 1))
    local, result = train_local(ctx, received, examples, cfg, rnd)
    metrics = {
        "num_examples": float(len(examples)),
        "held": float(len(ctx.data.train)),
        "loss": result.mean_loss,
        "steps": float(result.steps),
        "seconds": round(result.seconds, 3),
    }
    return Msg("train.fedhds", arrays=state_sub(local, received), metrics=metrics)
