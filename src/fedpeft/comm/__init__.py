"""Communication: the codec (adapter state <-> wire records), compression and the byte ledger."""

from fedpeft.comm.codec import WireState, decode_state, encode_state
from fedpeft.comm.compression import COMPRESSORS, Compressor, Encoded, TopKErrorFeedback, make_compressor
from fedpeft.comm.ledger import ByteLedger
from fedpeft.comm.transport import Packet, pack, serve, unpack

__all__ = [
    "COMPRESSORS",
    "ByteLedger",
    "Compressor",
    "Encoded",
    "Packet",
    "TopKErrorFeedback",
    "WireState",
    "decode_state",
    "encode_state",
    "make_compressor",
    "pack",
    "serve",
    "unpack",
]
