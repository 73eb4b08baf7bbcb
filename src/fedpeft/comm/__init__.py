"""Communication: the codec (state <-> wire tensors, per payload kind), compression, channels and the byte ledger.

This layer knows nothing about algorithms: converting an algorithm's message to a :class:`Packet` and serving it on
a client is :mod:`fedpeft.runtime.transport`.
"""

from fedpeft.comm.codec import WireState, decode_state, encode_state
from fedpeft.comm.compression import COMPRESSORS, Compressor, Encoded, TopKErrorFeedback, make_compressor
from fedpeft.comm.ledger import ByteLedger
from fedpeft.comm.transport import Channel, Packet

__all__ = [
    "COMPRESSORS",
    "ByteLedger",
    "Channel",
    "Compressor",
    "Encoded",
    "Packet",
    "TopKErrorFeedback",
    "WireState",
    "decode_state",
    "encode_state",
    "make_compressor",
]
