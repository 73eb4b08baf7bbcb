"""What crosses the wire for one message, and how each payload kind is compressed, for every runtime alike.

A :class:`Packet` is a message on the wire: its action, its arrays encoded by the codec, small config and metrics,
and (replies only) the client's device cost of serving it. A :class:`Channel` is one direction's compression:
adapter tensors go through the run's ``comm.up`` / ``comm.down`` compressor, every other payload kind through its
own (``comm.payloads``, lossless by default), and integer / bool tensors always travel losslessly (the codec sees
to that). Error-feedback residuals (top-k on the uplink) persist in the client's state per kind: ``ef/<key>`` for
adapter tensors, ``ef/<kind>/<key>`` for others, so two kinds never share a residual.

Conversion between a Packet and an algorithm's message lives above this layer (:mod:`fedpeft.runtime.transport`):
the wire knows nothing about algorithms. Byte counts are the encoded payload sizes (:attr:`WireState.nbytes`,
per kind :meth:`WireState.nbytes_by_kind`); the small JSON header is not counted.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fedpeft.comm.codec import ADAPTER, WireState, encode_state
from fedpeft.comm.compression import Compressor, TopKErrorFeedback, make_compressor

if TYPE_CHECKING:
    from fedpeft.config import CommConfig

EF_PREFIX = "ef/"


@dataclass
class Packet:
    """A message on the wire: action, encoded arrays, small config and metrics; ``cost`` is the client's device
    cost of serving it (replies only: seconds, FLOPs, parameters, ...)."""

    action: str
    wire: WireState
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    cost: dict[str, float] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return self.wire.nbytes


class Channel:
    """The compressors of one direction (``up`` or ``down``) of the wire, one per payload kind.

    Parameters
    ----------
    comm : CommConfig
        ``up`` / ``down`` for adapter tensors, ``payloads`` (kind -> compressor name) for the others,
        ``topk_ratio`` / ``error_feedback`` for top-k.
    direction : str
        ``up`` (client to server: top-k keeps error feedback) or ``down``.
    """

    def __init__(self, comm: CommConfig, direction: str) -> None:
        if direction not in ("up", "down"):
            raise ValueError(f"direction must be 'up' or 'down', got {direction!r}")
        self.comm, self.direction = comm, direction
        self._made: dict[str, Compressor] = {}

    def name(self, kind: str) -> str:
        """The compressor name of ``kind`` in this direction."""
        if kind == ADAPTER:
            return str(self.comm.up if self.direction == "up" else self.comm.down)
        return str(dict(self.comm.payloads).get(kind, "lossless"))

    def compressor(self, kind: str) -> Compressor:
        """The (cached, possibly stateful) compressor of ``kind``."""
        comp = self._made.get(kind)
        if comp is None:
            name = self.name(kind)
            if name == "topk":
                # error feedback needs memory on the sender: only the client (uplink) keeps it
                feedback = self.comm.error_feedback and self.direction == "up"
                comp = make_compressor("topk", ratio=self.comm.topk_ratio, error_feedback=feedback)
            else:
                comp = make_compressor(name)
            self._made[kind] = comp
        return comp

    def encode(self, arrays: dict[str, Any], kinds: Mapping[str, str] | None = None) -> WireState:
        """Encode ``arrays`` (``kinds``: key -> kind for the non-adapter ones)."""
        return encode_state(arrays, self.compressor(ADAPTER), kinds, self.compressor)

    # ------------------------------------------------------------------ error feedback in the client's state
    @staticmethod
    def _prefix(kind: str) -> str:
        return EF_PREFIX if kind == ADAPTER else f"{EF_PREFIX}{kind}/"

    def load_residuals(self, client_state: Mapping[str, Any]) -> None:
        """Restore the top-k residuals of every kind from ``client_state`` (keys ``ef/...``)."""
        # A configured kind's residuals are under ef/<kind>/; anything else under ef/ is an adapter key (adapter keys
        # may hold '/' themselves, e.g. FL-TAC's slot<j>/...).
        configured = {k for k in dict(self.comm.payloads) if k != ADAPTER}
        for key, value in client_state.items():
            if not key.startswith(EF_PREFIX):
                continue
            rest = key[len(EF_PREFIX) :]
            head, sep, tail = rest.partition("/")
            kind, name = (head, tail) if sep and head in configured else (ADAPTER, rest)
            comp = self.compressor(kind)
            if isinstance(comp, TopKErrorFeedback):
                comp.residuals[name] = value

    def save_residuals(self, client_state: MutableMapping[str, Any]) -> None:
        """Write the residuals of every top-k compressor used into ``client_state``."""
        for kind, comp in self._made.items():
            if isinstance(comp, TopKErrorFeedback):
                for key, residual in comp.residuals.items():
                    client_state[self._prefix(kind) + key] = residual


def downlink_compressor(comm: CommConfig) -> Compressor:
    """The adapter compressor of the downlink (``comm.down``)."""
    return Channel(comm, "down").compressor(ADAPTER)


def uplink_compressor(comm: CommConfig, client_state: dict[str, Any]) -> Compressor:
    """The client's adapter uplink compressor, with its error-feedback residuals restored from ``client_state``."""
    channel = Channel(comm, "up")
    channel.load_residuals(client_state)
    return channel.compressor(ADAPTER)
