"""Conversion between fedpeft's wire objects and Flower records, in both directions.

A :class:`~fedpeft.comm.transport.Packet` becomes a ``RecordDict`` of two :class:`ConfigRecord`:

- ``"payload"``: the encoded payload tensors (:attr:`WireState.tensors`) packed into one ``bytes`` value, with
  their layout (keys in order, dtypes, shapes, offsets) as a JSON string. Kept apart from the header so that the
  server can serialise one broadcast payload once and put the same record into every client's message.
- ``"header"``: the fedpeft action (the Flower message type is copied from the instruction into the reply, so the
  reply's own action has to travel here), the wire metadata as a JSON string (nested dicts are not allowed in a
  ConfigRecord), the message's config scalars under ``config/<key>`` and its metrics under ``metric/<key>`` (so
  that user keys can never collide with header keys), plus runtime extras such as the run config TOML.

Why so few records, and no ArrayRecord: Flower moves every record and every array as an object of its own, one
request per object per hop (ServerApp -> SuperLink -> SuperNode -> ClientApp and back, each signed and checked in
deployment). With one record each for arrays, config and metrics and an array per tensor, a LoRA message was
~100 objects; packed, a message is 4 (Message, RecordDict, two records), which is what the deployment's
per-round latency is made of (docs/results.md).

A client's persistent state (``ClientContext.state``: tensors and scalars) maps onto two records kept in Flower's
``context.state``: tensors in an ArrayRecord (bf16 bit-cast to int16, tagged) and scalars in a ConfigRecord.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from fedpeft.comm.codec import WireState
from fedpeft.comm.transport import Packet

__all__ = [
    "HEADER",
    "PAYLOAD",
    "packet_to_records",
    "read_header",
    "records_to_packet",
    "records_to_state",
    "records_to_wire",
    "state_to_records",
    "wire_to_records",
]

PAYLOAD, HEADER = "payload", "header"
_ACTION, _META = "action", "wire_meta"
_CONFIG, _METRIC, _COST = "config/", "metric/", "cost/"  # key prefixes of config, metrics and device cost
#: header keys the conversion owns; extras must not use them (nor start with the two prefixes)
RESERVED_HEADER_KEYS = frozenset({_ACTION, _META})
#: the two values of a payload record (wire_to_records)
_BLOB, _LAYOUT = "blob", "layout"
#: key of the ConfigRecord scalar (in the state's scalar record) listing state tensors stored bit-cast from bf16
_BF16_TAG = "__fedpeft_bf16__"

HeaderValue = int | float | str | bool

#: Largest packed payload: a Flower object travels in one gRPC message, capped at 2 GiB (``GRPC_MAX_MESSAGE_LENGTH``);
#: 16 MiB are left for the rest of the message. PEFT adapters are far below it; full fine-tuning of a >0.5B model in
#: fp32 is not.
MAX_PAYLOAD_BYTES = 2**31 - 2**24


def wire_to_records(wire: WireState) -> ConfigRecord:
    """The payload tensors of ``wire`` as one :class:`ConfigRecord`: every tensor's bytes in one ``bytes`` value,
    and the layout (keys in order, dtypes, shapes, offsets) as a JSON string.

    Separate from :func:`packet_to_records` so that the server can serialise one broadcast payload once and put
    the same record into every client's message.

    Raises
    ------
    ValueError
        The payload exceeds :data:`MAX_PAYLOAD_BYTES` (one Flower object cannot carry it).
    """
    bad = {k: t.dtype for k, t in wire.tensors.items() if t.dtype == torch.bfloat16}
    if bad:  # the codec bit-casts bf16; a bf16 payload here means a WireState was built by hand
        raise TypeError(f"wire tensors must not be bf16 (the codec bit-casts them): {sorted(bad)}")
    layout, chunks, offset = [], [], 0
    for key, tensor in wire.tensors.items():
        raw = tensor.detach().contiguous().reshape(-1).view(torch.uint8)  # [nbytes]
        layout.append([key, str(tensor.dtype).removeprefix("torch."), list(tensor.shape), offset, raw.numel()])
        chunks.append(raw)
        offset += raw.numel()
    if offset > MAX_PAYLOAD_BYTES:
        raise ValueError(
            f"a payload of {offset:,} bytes is more than one Flower message can carry ({MAX_PAYLOAD_BYTES:,}); "
            "train a smaller adapter, compress the wire (comm.down / comm.up), or use the local runtime"
        )
    blob = torch.cat(chunks).numpy().tobytes() if chunks else b""
    return ConfigRecord({_BLOB: blob, _LAYOUT: json.dumps(layout)})


def records_to_wire(payload: ConfigRecord, meta: Mapping[str, Any]) -> WireState:
    """Inverse of :func:`wire_to_records`: a :class:`WireState` from the payload record and its metadata."""
    blob = payload[_BLOB]
    if not isinstance(blob, bytes):
        raise ValueError(f"payload blob is {type(blob).__name__}; expected bytes")
    buffer = torch.frombuffer(bytearray(blob), dtype=torch.uint8) if blob else torch.zeros(0, dtype=torch.uint8)
    tensors: dict[str, torch.Tensor] = {}
    for key, dtype, shape, offset, nbytes in json.loads(str(payload[_LAYOUT])):
        # clone: a view of the blob at an odd offset could not be reinterpreted as a wider dtype
        tensors[key] = buffer[offset : offset + nbytes].clone().view(getattr(torch, dtype)).reshape(shape)
    return WireState(tensors, dict(meta))


def _check_values(values: Mapping[str, Any], what: str) -> None:
    """Raise a TypeError naming the keys whose values a ConfigRecord cannot hold (Flower's only names the type)."""
    allowed = (int, float, str, bytes, bool)
    bad = {
        k: type(v).__name__
        for k, v in values.items()
        if not (isinstance(v, allowed) or (isinstance(v, list) and all(isinstance(x, allowed) for x in v)))
    }
    if bad:
        raise TypeError(f"{what} values must be int, float, str, bytes, bool or lists of them; got {bad}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def packet_to_records(
    packet: Packet, *, extra: Mapping[str, HeaderValue] | None = None, payload: ConfigRecord | None = None
) -> RecordDict:
    """Pack ``packet`` into a Flower ``RecordDict``.

    Parameters
    ----------
    packet : Packet
        Action, encoded arrays, config and metrics of one message.
    extra : Mapping[str, int | float | str | bool], optional
        Additional header entries (e.g. the run config TOML); read back with :func:`read_header`.
    payload : ConfigRecord, optional
        ``wire_to_records(packet.wire)`` when the caller already has it (one broadcast, many messages).

    Returns
    -------
    RecordDict
        With the records ``payload`` and ``header``.

    Raises
    ------
    TypeError
        A config value, metric or extra that Flower's records cannot hold (e.g. ``None``, a dict, a string metric).
    ValueError
        ``extra`` uses a reserved header key.
    """
    extra = dict(extra or {})
    clash = [k for k in extra if k in RESERVED_HEADER_KEYS or k.startswith((_CONFIG, _METRIC, _COST))]
    if clash:
        raise ValueError(f"header keys {sorted(clash)} are reserved")
    _check_values(packet.config, "message config")
    _check_values(extra, "header")
    bad = {k: type(v).__name__ for k, v in {**packet.metrics, **packet.cost}.items() if not _is_number(v)}
    if bad:
        raise TypeError(f"metrics and device cost must be int or float; got {bad}")
    header = ConfigRecord(
        {
            _ACTION: packet.action,
            _META: json.dumps(packet.wire.meta),
            **{_CONFIG + k: v for k, v in packet.config.items()},
            **{_METRIC + k: v for k, v in packet.metrics.items()},
            **{_COST + k: v for k, v in packet.cost.items()},
            **extra,
        }
    )
    return RecordDict({PAYLOAD: payload if payload is not None else wire_to_records(packet.wire), HEADER: header})


def records_to_packet(content: RecordDict) -> Packet:
    """Inverse of :func:`packet_to_records` (header extras are ignored; see :func:`read_header`).

    Raises
    ------
    ValueError
        ``content`` lacks one of the two records (it was not made by :func:`packet_to_records`).
    """
    missing = [k for k in (PAYLOAD, HEADER) if k not in content.config_records]
    if missing:
        raise ValueError(f"message content lacks the record(s) {missing}; it was not sent by fedpeft")
    header = content.config_records[HEADER]
    wire = records_to_wire(content.config_records[PAYLOAD], json.loads(str(header[_META])))
    config: dict[str, Any] = {}
    numbers: dict[str, dict[str, float]] = {_METRIC: {}, _COST: {}}
    for key, value in header.items():
        if key.startswith(_CONFIG):
            config[key.removeprefix(_CONFIG)] = value
        elif key.startswith((_METRIC, _COST)):
            prefix = _METRIC if key.startswith(_METRIC) else _COST
            if not _is_number(value):
                what = f"{prefix[:-1]} {key.removeprefix(prefix)!r}"
                raise ValueError(f"{what} is {type(value).__name__}; expected a number")
            numbers[prefix][key.removeprefix(prefix)] = value  # type: ignore[assignment]
    return Packet(str(header[_ACTION]), wire, config, numbers[_METRIC], numbers[_COST])


def read_header(content: RecordDict, key: str) -> Any:
    """One header entry of a message packed by :func:`packet_to_records` (``KeyError`` when absent)."""
    if HEADER not in content:
        raise KeyError(f"message content has no {HEADER!r} record")
    return content.config_records[HEADER][key]


def state_to_records(state: Mapping[str, Any]) -> tuple[ArrayRecord, ConfigRecord]:
    """A client's persistent state as (tensors, scalars) records for Flower's ``context.state``.

    Raises
    ------
    TypeError
        A value that is neither a tensor nor a ConfigRecord value (the client-state contract allows only these).
    """
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    bf16: list[str] = []
    for key, value in state.items():
        if key == _BF16_TAG:
            raise ValueError(f"client state key {_BF16_TAG!r} is reserved")
        if isinstance(value, torch.Tensor):
            if value.dtype == torch.bfloat16:  # ArrayRecord goes through numpy, which has no bf16
                value = value.contiguous().view(torch.int16)
                bf16.append(key)
            tensors[key] = value
        else:
            scalars[key] = value
    _check_values(scalars, "client state")
    return ArrayRecord.from_torch_state_dict(tensors), ConfigRecord({**scalars, _BF16_TAG: bf16})


def records_to_state(tensors: ArrayRecord, scalars: ConfigRecord) -> dict[str, Any]:
    """Inverse of :func:`state_to_records`."""
    out: dict[str, Any] = {}
    bf16 = set(scalars.get(_BF16_TAG, []))  # type: ignore[arg-type]
    for key, value in tensors.to_torch_state_dict().items():
        out[key] = value.view(torch.bfloat16) if key in bf16 else value
    out.update({k: v for k, v in scalars.items() if k != _BF16_TAG})
    return out
