"""What crosses the wire for one message, shared by every runtime so that bytes and compression are identical.

The server packs a :class:`~fedpeft.algorithms.base.Msg` into a :class:`Packet` (arrays encoded by the codec with
the downlink compressor); the client unpacks it, runs its handler and packs the reply with the uplink compressor,
whose error-feedback residuals (top-k) persist in the client's state as ``ef/<key>`` tensors. Byte counts are the
encoded payload sizes (:attr:`WireState.nbytes`); the small JSON header is not counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fedpeft.comm.codec import WireState, decode_state, encode_state
from fedpeft.comm.compression import Compressor, TopKErrorFeedback, make_compressor

if TYPE_CHECKING:
    from fedpeft.algorithms.base import ClientApp, ClientContext, Msg
    from fedpeft.config import CommConfig

EF_PREFIX = "ef/"


@dataclass
class Packet:
    """A message on the wire: action, encoded arrays, small config and metrics."""

    action: str
    wire: WireState
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return self.wire.nbytes


def downlink_compressor(comm: CommConfig) -> Compressor:
    return make_compressor(comm.down)


def uplink_compressor(comm: CommConfig, client_state: dict[str, Any]) -> Compressor:
    """The client's uplink compressor, with its error-feedback residuals restored from ``client_state``."""
    if comm.up == "topk":
        comp = make_compressor("topk", ratio=comm.topk_ratio, error_feedback=comm.error_feedback)
        if isinstance(comp, TopKErrorFeedback):
            for key, value in client_state.items():
                if key.startswith(EF_PREFIX):
                    comp.residuals[key[len(EF_PREFIX) :]] = value
        return comp
    return make_compressor(comm.up)


def save_uplink_state(comp: Compressor, client_state: dict[str, Any]) -> None:
    if isinstance(comp, TopKErrorFeedback):
        for key, residual in comp.residuals.items():
            client_state[EF_PREFIX + key] = residual


def pack(msg: Msg, compressor: Compressor) -> Packet:
    return Packet(msg.action, encode_state(dict(msg.arrays), compressor), dict(msg.config), dict(msg.metrics))


def unpack(packet: Packet) -> Msg:
    from fedpeft.algorithms.base import Msg

    return Msg(packet.action, decode_state(packet.wire), dict(packet.config), dict(packet.metrics))


def serve(app: ClientApp, ctx: ClientContext, packet: Packet) -> Packet:
    """The client side of one exchange, the same on every runtime: unpack, handle, pack the reply (uplink
    compression with the client's persistent error feedback)."""
    reply = app.handle(ctx, unpack(packet))
    comp = uplink_compressor(ctx.cfg.comm, ctx.state)
    out = pack(reply, comp)
    save_uplink_state(comp, ctx.state)
    return out
