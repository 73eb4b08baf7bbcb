"""The client side of one exchange, and the message <-> packet conversion, the same on every runtime.

The server packs an algorithm's :class:`~fedpeft.algorithms.base.Msg` into a :class:`~fedpeft.comm.transport.Packet`
(arrays encoded per payload kind by the downlink :class:`~fedpeft.comm.transport.Channel`); the client unpacks it,
runs its handler, and packs the reply with the uplink channel, whose error-feedback residuals persist in the
client's state. :func:`serve` also measures what serving the message cost the device (``Packet.cost``): wall
seconds, FLOPs of the training and forward passes the handler ran (:mod:`fedpeft.training.flops`), trainable
parameters and parameters held. A handler may override the parameter counts through ``ctx.cost`` (a split-learning
client holds only its bottom layers).
"""

from __future__ import annotations

import time

import torch

from fedpeft.algorithms.base import ClientApp, ClientContext, Msg
from fedpeft.comm.transport import Channel, Packet
from fedpeft.training.flops import flop_meter

__all__ = ["device_params", "pack", "serve", "unpack"]


def pack(msg: Msg, channel: Channel) -> Packet:
    """``msg`` on the wire: arrays encoded per kind by ``channel``."""
    return Packet(msg.action, channel.encode(dict(msg.arrays), msg.kinds), dict(msg.config), dict(msg.metrics))


def unpack(packet: Packet, channel: Channel) -> Msg:
    """The message of ``packet`` (kinds restored from the wire metadata), decoded by the receiver's own ``channel``
    (the direction it travelled): the sender cannot choose the decoder, and sizes are checked before allocation.

    Raises
    ------
    ValueError
        The payload was not encoded as this run's ``comm`` settings say, or does not hold what its metadata claims.
    """
    from fedpeft.comm.codec import decode_state

    arrays = decode_state(packet.wire, channel.compressor)
    return Msg(packet.action, arrays, dict(packet.config), dict(packet.metrics), packet.wire.kinds())


def device_params(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable parameters, parameters held) of ``model``."""
    trainable = held = 0
    for p in model.parameters():
        held += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, held


def serve(app: ClientApp, ctx: ClientContext, packet: Packet) -> Packet:
    """Unpack, handle, pack the reply (uplink compression with the client's persistent error feedback), and
    attach the device cost of serving the message."""
    t0 = time.perf_counter()
    with flop_meter() as meter:
        reply = app.handle(ctx, unpack(packet, Channel(ctx.cfg.comm, "down")))
    seconds = time.perf_counter() - t0
    channel = Channel(ctx.cfg.comm, "up")
    channel.load_residuals(ctx.state)
    out = pack(reply, channel)
    channel.save_residuals(ctx.state)
    trainable, held = device_params(ctx.model)
    out.cost = {
        "seconds": seconds,
        "flops": float(meter.flops),
        "trainable_params": float(trainable),
        "params_held": float(held),
        **{k: float(v) for k, v in ctx.cost.items()},
    }
    return out
