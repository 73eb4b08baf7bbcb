"""Conversion between fedpeft's wire objects and Flower records, in both directions.

A :class:`~fedpeft.comm.transport.Packet` becomes a ``RecordDict`` of four records:

- ``"arrays"`` (:class:`ArrayRecord`): the encoded payload tensors (:attr:`WireState.tensors`, keys in order). The
  codec already bit-casts bf16 to int16, so nothing here has to deal with dtypes ArrayRecord refuses.
- ``"header"`` (:class:`ConfigRecord`): the fedpeft action (the Flower message type is copied from the instruction
  into the reply, so the reply's own action has to travel here), the wire metadata as a JSON string (nested dicts
  are not allowed in a ConfigRecord), plus runtime extras such as the run config TOML.
- ``"config"`` (:class:`ConfigRecord`): the message's config scalars, in a record of their own so that user keys
  can never collide with header keys.
- ``"metrics"`` (:class:`MetricRecord`): the numbers reported back.

A client's persistent state (``ClientContext.state``: tensors and scalars) maps onto two records kept in Flower's
``context.state``: tensors in an ArrayRecord (bf16 bit-cast to int16, tagged) and scalars in a ConfigRecord.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedpeft.comm.codec import WireState
from fedpeft.comm.transport import Packet

__all__ = [
    "ARRAYS",
    "CONFIG",
    "HEADER",
    "METRICS",
    "packet_to_records",
    "read_header",
    "records_to_packet",
    "records_to_state",
    "records_to_wire",
    "state_to_records",
    "wire_to_records",
]

ARRAYS, HEADER, CONFIG, METRICS = "arrays", "header", "config", "metrics"
_ACTION, _META = "action", "wire_meta"
#: header keys the conversion owns; extras must not use them
RESERVED_HEADER_KEYS = frozenset({_ACTION, _META})
#: the two arrays of a packed payload record (wire_to_records)
_BLOB, _LAYOUT = "blob", "layout"
#: key of the ConfigRecord scalar (in the state's scalar record) listing state tensors stored bit-cast from bf16
_BF16_TAG = "__fedpeft_bf16__"

HeaderValue = int | float | str | bool


def wire_to_records(wire: WireState) -> ArrayRecord:
    """The payload tensors of ``wire`` as an :class:`ArrayRecord` of two arrays: every tensor's bytes in one
    ``uint8`` blob, and the layout (keys in order, dtypes, shapes, offsets) as JSON bytes.

    One blob instead of one array per tensor: Flower sends every array as its own object (one HTTP request each
    way, signed and checked, in deployment), so a LoRA of 100 tensors would cost 100 requests per message.
    Separate from :func:`packet_to_records` so that the server can serialise one broadcast payload once and put
    the same record into every client's message.
    """
    bad = {k: t.dtype for k, t in wire.tensors.items() if t.dtype == torch.bfloat16}
    if bad:  # the codec bit-casts bf16; a bf16 payload here means a WireState was built by hand
        raise TypeError(f"wire tensors must not be bf16 (ArrayRecord refuses it): {sorted(bad)}")
    layout, chunks, offset = [], [], 0
    for key, tensor in wire.tensors.items():
        raw = tensor.detach().contiguous().reshape(-1).view(torch.uint8)  # [nbytes]
        layout.append([key, str(tensor.dtype).removeprefix("torch."), list(tensor.shape), offset, raw.numel()])
        chunks.append(raw)
        offset += raw.numel()
    blob = torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.uint8)
    meta = torch.frombuffer(bytearray(json.dumps(layout).encode()), dtype=torch.uint8)
    return ArrayRecord.from_torch_state_dict({_BLOB: blob, _LAYOUT: meta})


def records_to_wire(arrays: ArrayRecord, meta: Mapping[str, Any]) -> WireState:
    """Inverse of :func:`wire_to_records`: a :class:`WireState` from the payload record and its metadata."""
    packed = arrays.to_torch_state_dict()
    blob = packed[_BLOB]
    tensors: dict[str, torch.Tensor] = {}
    for key, dtype, shape, offset, nbytes in json.loads(bytes(packed[_LAYOUT].tolist()).decode()):
        # clone: a view of the blob at an odd offset could not be reinterpreted as a wider dtype
        tensors[key] = blob[offset : offset + nbytes].clone().view(getattr(torch, dtype)).reshape(shape)
    return WireState(tensors, dict(meta))


def _config_record(values: Mapping[str, Any], what: str) -> ConfigRecord:
    try:
        return ConfigRecord(dict(values))
    except TypeError as exc:  # name the offending keys: Flower's message only names the type
        allowed = (int, float, str, bytes, bool)
        bad = {
            k: type(v).__name__
            for k, v in values.items()
            if not (isinstance(v, allowed) or (isinstance(v, list) and all(isinstance(x, allowed) for x in v)))
        }
        raise TypeError(f"{what} values must be int, float, str, bytes, bool or lists of them; got {bad}") from exc


def _metric_record(values: Mapping[str, Any]) -> MetricRecord:
    try:
        return MetricRecord(dict(values))
    except TypeError as exc:
        bad = {k: type(v).__name__ for k, v in values.items() if isinstance(v, bool) or not isinstance(v, int | float)}
        raise TypeError(f"metrics must be int or float; got {bad}") from exc


def packet_to_records(
    packet: Packet, *, extra: Mapping[str, HeaderValue] | None = None, arrays: ArrayRecord | None = None
) -> RecordDict:
    """Pack ``packet`` into a Flower ``RecordDict``.

    Parameters
    ----------
    packet : Packet
        Action, encoded arrays, config and metrics of one message.
    extra : Mapping[str, int | float | str | bool], optional
        Additional header entries (e.g. the run config TOML); read back with :func:`read_header`.
    arrays : ArrayRecord, optional
        ``wire_to_records(packet.wire)`` when the caller already has it (one broadcast, many messages).

    Returns
    -------
    RecordDict
        With the records ``arrays``, ``header``, ``config`` and ``metrics``.

    Raises
    ------
    TypeError
        A config value, metric or extra that Flower's records cannot hold (e.g. ``None``, a dict).
    ValueError
        ``extra`` uses a reserved header key.
    """
    extra = dict(extra or {})
    clash = RESERVED_HEADER_KEYS & extra.keys()
    if clash:
        raise ValueError(f"header keys {sorted(clash)} are reserved")
    header = _config_record({_ACTION: packet.action, _META: json.dumps(packet.wire.meta), **extra}, "header")
    return RecordDict(
        {
            ARRAYS: arrays if arrays is not None else wire_to_records(packet.wire),
            HEADER: header,
            CONFIG: _config_record(packet.config, "message config"),
            METRICS: _metric_record(packet.metrics),
        }
    )


def records_to_packet(content: RecordDict) -> Packet:
    """Inverse of :func:`packet_to_records` (header extras are ignored; see :func:`read_header`).

    Raises
    ------
    ValueError
        ``content`` lacks one of the four records (it was not made by :func:`packet_to_records`).
    """
    missing = [k for k in (ARRAYS, HEADER, CONFIG, METRICS) if k not in content]
    if missing:
        raise ValueError(f"message content lacks the record(s) {missing}; it was not sent by fedpeft")
    header = content.config_records[HEADER]
    wire = records_to_wire(content.array_records[ARRAYS], json.loads(str(header[_META])))
    metrics: dict[str, float] = {}
    for key, value in content.metric_records[METRICS].items():
        if not isinstance(value, int | float):  # MetricRecord also allows lists; fedpeft metrics are numbers
            raise ValueError(f"metric {key!r} is {type(value).__name__}; expected a number")
        metrics[key] = value
    return Packet(str(header[_ACTION]), wire, dict(content.config_records[CONFIG]), metrics)


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
    record = _config_record({**scalars, _BF16_TAG: bf16}, "client state")
    return ArrayRecord.from_torch_state_dict(tensors), record


def records_to_state(tensors: ArrayRecord, scalars: ConfigRecord) -> dict[str, Any]:
    """Inverse of :func:`state_to_records`."""
    out: dict[str, Any] = {}
    bf16 = set(scalars.get(_BF16_TAG, []))  # type: ignore[arg-type]
    for key, value in tensors.to_torch_state_dict().items():
        out[key] = value.view(torch.bfloat16) if key in bf16 else value
    out.update({k: v for k, v in scalars.items() if k != _BF16_TAG})
    return out
