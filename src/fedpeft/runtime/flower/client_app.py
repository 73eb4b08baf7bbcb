"""The Flower ClientApp of fedpeft: one module-level app that serves every registered algorithm.

It must live in an importable module (not ``__main__``, not a closure): Ray then pickles ``app`` by reference, each
worker process imports this module once, and :data:`_CACHE` (model + client data) survives across messages in that
process. Flower does not pin nodes to workers, so everything per *client* (error-feedback residuals, ...) lives in
the node's ``context.state`` instead, which Flower ships to whichever worker runs the message.

The run's resolved config (TOML text) goes to each node once, with the hello query, and is kept in the node's
``context.state``; every later message carries only its digest. A worker builds the model and the federated data
from the config once (both deterministic from it, so every process holds identical copies), picks the client's
data by ``node_config["partition-id"]`` and runs :func:`fedpeft.runtime.transport.serve`, the same client path as
the ``local`` runtime.

Every message type reaches one dispatcher (:class:`FedpeftClientApp`), so algorithms registered by plugins (imported
when a worker reads the run's config) need no Flower registration at import. Three control queries (prefix
``fedpeft_``, reserved): ``query.fedpeft_hello`` (the config; partition id of the node, and warm-up of the worker),
``query.fedpeft_state_get`` and ``query.fedpeft_state_set`` (read / replace the node's client state, for
checkpoints and resume).
"""

from __future__ import annotations

import hashlib
import re
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import tomllib

# torch must be imported in the worker before ArrayRecord.to_torch_state_dict() is called (Flower checks
# sys.modules), so import it here at the top rather than lazily.
import torch
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp as FlowerClientApp

from fedpeft.algorithms import get_algorithm
from fedpeft.algorithms.base import ClientContext, ClientData
from fedpeft.config import RunConfig, from_dict
from fedpeft.runtime.flower.records import (
    HEADER,
    packet_to_records,
    read_header,
    records_to_packet,
    records_to_state,
    state_to_records,
)
from fedpeft.runtime.setup import build_federated_data, build_model
from fedpeft.runtime.transport import serve

__all__ = [
    "CONFIG_KEY",
    "DIGEST_KEY",
    "HELLO",
    "PARTITION_KEY",
    "SECONDS_KEY",
    "STATE_GET",
    "STATE_KEYS",
    "STATE_SET",
    "FedpeftClientApp",
    "app",
    "config_digest",
]

#: header entries added by this runtime (see records.packet_to_records ``extra``)
CONFIG_KEY = "run_config"  # resolved RunConfig as TOML text, in the hello query only
DIGEST_KEY = "run_config_sha256"  # its digest, on every other message the server sends
SECONDS_KEY = "seconds"  # time the client spent serving the message, on every reply
STATE_KEYS = "state_keys"  # number of entries in the client's state after the message, on every reply
PARTITION_KEY = "partition_id"  # in the hello reply

CONTROL_PREFIX = "fedpeft_"
HELLO = f"query.{CONTROL_PREFIX}hello"
STATE_GET = f"query.{CONTROL_PREFIX}state_get"
STATE_SET = f"query.{CONTROL_PREFIX}state_set"
#: records of the client state in ``context.state`` (and in state_get / state_set messages)
STATE_TENSORS, STATE_SCALARS = "fedpeft_state_tensors", "fedpeft_state_scalars"
#: record in ``context.state`` holding the run config the hello brought (text and digest)
RUN_CONFIG = "fedpeft_run_config"
#: ErrorCode.CLIENT_APP_RAISED_EXCEPTION (flwr.common.constant); the code Flower itself uses for a raising handler
CLIENT_EXCEPTION_CODE = 2


@dataclass
class _Worker:
    """What one worker process builds once per run: the config, the model (adapter attached) and the clients' data
    (every client's in simulation, where a Ray worker serves any node; only its own on a deployment node)."""

    cfg: RunConfig
    model: torch.nn.Module
    clients: dict[int, ClientData]


@dataclass
class ProcessRole:
    """How this process serves nodes. Simulation (the default): any partition, one thread per Ray actor.
    A deployment node worker (:mod:`fedpeft.runtime.deploy.worker`) serves exactly one partition, keeps only that
    partition's data after building it, and refuses messages addressed to any other partition."""

    partition: int | None = None
    threads: int = 1


ROLE = ProcessRole()

# One entry at most, by config digest: a worker serves one run; another config is a new run (the old one is dropped).
_CACHE: dict[str, _Worker] = {}


def config_digest(config_text: str) -> str:
    """The digest that stands for a run's config on every message after the hello."""
    return hashlib.sha256(config_text.encode()).hexdigest()


def _config_text(msg: Message, context: Context) -> tuple[str, str]:
    """(digest, text) of the run config a message belongs to: the text the hello left in the node's state."""
    digest = str(read_header(msg.content, DIGEST_KEY))
    if RUN_CONFIG not in context.state.config_records:
        raise RuntimeError("this node was not greeted for the run (no run config in its state); the server greets")
    held = context.state.config_records[RUN_CONFIG]
    if held["digest"] != digest:
        raise RuntimeError(f"this node holds run config {str(held['digest'])[:12]}, the message is for {digest[:12]}")
    return digest, str(held["text"])


def _worker(config_text: str, digest: str | None = None) -> _Worker:
    digest = digest or config_digest(config_text)
    hit = _CACHE.get(digest)
    if hit is not None:
        return hit
    _CACHE.clear()
    # In simulation each actor is given one CPU (client_resources.num_cpus=1); more threads would oversubscribe the
    # machine. Set here, not at import, because the driver imports this module too and must keep its thread count.
    torch.set_num_threads(ROLE.threads)
    cfg = from_dict(RunConfig, tomllib.loads(config_text))
    model, tokenizer = build_model(cfg)
    data = build_federated_data(cfg, tokenizer)
    keep = range(len(data.clients)) if ROLE.partition is None else [ROLE.partition]
    if ROLE.partition is not None and ROLE.partition >= len(data.clients):
        raise ValueError(f"this node serves partition {ROLE.partition}, but the run has {len(data.clients)} clients")
    worker = _CACHE[digest] = _Worker(cfg, model, {cid: data.clients[cid] for cid in keep})
    return worker


def _partition_id(context: Context) -> int:
    cid = int(context.node_config["partition-id"])
    if ROLE.partition is not None and cid != ROLE.partition:
        raise ValueError(f"message for partition {cid} reached the worker of partition {ROLE.partition}")
    return cid


def _load_state(context: Context) -> dict[str, Any]:
    if STATE_TENSORS not in context.state:
        return {}
    return records_to_state(context.state.array_records[STATE_TENSORS], context.state.config_records[STATE_SCALARS])


def _store_state(context: Context, state: dict[str, Any]) -> None:
    tensors, scalars = state_to_records(state)
    context.state[STATE_TENSORS] = tensors
    context.state[STATE_SCALARS] = scalars


def _error_reply(msg: Message) -> Message:
    # Returning an Error (instead of raising) keeps Flower from logging ~100 lines of Ray traceback per failure,
    # and the reason ends with "<Type>: <message>" like the local runtime's failures (the server logs its tail).
    # context.state is left as it was: the handler only writes it back on success.
    reason = re.sub(r"\x1b\[[0-9;]*m", "", traceback.format_exc()).rstrip()
    return Message(Error(code=CLIENT_EXCEPTION_CODE, reason=reason), reply_to=msg)


def handle(msg: Message, context: Context) -> Message:
    """Serve one fedpeft message: the Flower handler registered for every algorithm action.

    Parameters
    ----------
    msg : Message
        Content packed by :func:`~fedpeft.runtime.flower.records.packet_to_records` with the run config TOML
        in the header.
    context : Context
        The node's context; ``node_config["partition-id"]`` is the fedpeft client id and ``state`` holds the
        client's persistent state.

    Returns
    -------
    Message
        The reply packet (uplink-compressed by :func:`~fedpeft.comm.transport.serve`), or an error reply.
    """
    try:
        t0 = time.perf_counter()
        worker = _worker(*reversed(_config_text(msg, context)))
        packet = records_to_packet(msg.content)
        if packet.action != msg.metadata.message_type:
            raise ValueError(f"message type {msg.metadata.message_type!r} differs from its action {packet.action!r}")
        cid = _partition_id(context)
        state = _load_state(context)
        algorithm = get_algorithm(worker.cfg.federation.algorithm)
        ctx = ClientContext(cid, worker.model, worker.clients[cid], state, worker.cfg)
        out = serve(algorithm.client_app, ctx, packet)
        extra = {SECONDS_KEY: time.perf_counter() - t0, STATE_KEYS: len(state)}
        content = packet_to_records(out, extra=extra)
        _store_state(context, state)
    except Exception:
        return _error_reply(msg)
    return Message(content, reply_to=msg)


def hello(msg: Message, context: Context) -> Message:
    """Keep the run's config in the node's state, report this node's partition id (the fedpeft client id) and build
    the worker's model and data now, so that start-up cost (and start-up errors) show here rather than inside the
    first round's timeout."""
    try:
        text = str(read_header(msg.content, CONFIG_KEY))
        digest = config_digest(text)
        _worker(text, digest)
        context.state[RUN_CONFIG] = ConfigRecord({"text": text, "digest": digest})
        content = RecordDict({HEADER: ConfigRecord({PARTITION_KEY: _partition_id(context)})})
    except Exception:
        return _error_reply(msg)
    return Message(content, reply_to=msg)


def state_get(msg: Message, context: Context) -> Message:
    """Reply with the node's client state records (empty records when it has none)."""
    tensors, scalars = state_to_records(_load_state(context))
    return Message(RecordDict({STATE_TENSORS: tensors, STATE_SCALARS: scalars}), reply_to=msg)


def state_set(msg: Message, context: Context) -> Message:
    """Replace the node's client state by the records in the message (resume from a checkpoint)."""
    context.state[STATE_TENSORS] = msg.content.array_records[STATE_TENSORS]
    context.state[STATE_SCALARS] = msg.content.config_records[STATE_SCALARS]
    return Message(RecordDict(), reply_to=msg)


_CONTROL: dict[str, Callable[[Message, Context], Message]] = {HELLO: hello, STATE_GET: state_get, STATE_SET: state_set}


class FedpeftClientApp(FlowerClientApp):
    """Flower's ClientApp with one dispatcher for every fedpeft message type: the control queries go to their
    functions, everything else to :func:`handle` (which finds the algorithm's handler by action, or replies with an
    error naming the actions it has). No per-action registration, so an algorithm that a plugin registers (imported
    when the worker reads the run's config) is served like a built-in one."""

    def __call__(self, message: Message, context: Context) -> Message:
        return _CONTROL.get(message.metadata.message_type, handle)(message, context)


app = FedpeftClientApp()
