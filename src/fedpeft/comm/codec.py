"""The one codec between adapter state dicts and wire records.

``encode_state`` compresses every tensor of a state dict into a flat, ordered :class:`WireState`; ``decode_state``
inverts it. The wire keys are ``"<state key>|<payload part>"``. bf16 payloads are bit-cast to int16 and tagged in
the metadata (Flower's ArrayRecord refuses bf16), so ``WireState.tensors`` can go into an ArrayRecord as is.
``to_bytes``/``from_bytes`` use safetensors with the metadata as JSON in the safetensors metadata header.

Every entry has a payload *kind* (``adapter`` unless the message says otherwise: ``ids``, ``features``,
``activations``, ...). Adapter entries go through the run's compressor (``comm.up`` / ``comm.down``); other kinds
through their own (lossless unless configured), and integer or bool tensors are always sent losslessly, whatever
the compressor: a quantized token id or cluster id is a different id.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from fedpeft.comm.compression import WIRE_DTYPES, Compressor, Encoded, LosslessCompressor, make_compressor

__all__ = ["ADAPTER", "SEP", "WIRE_VERSION", "WireState", "decode_state", "encode_state"]

#: the payload kind of adapter tensors (weights or updates), the default kind of every array
ADAPTER = "adapter"
_LOSSLESS = LosslessCompressor()
_FLOATING = frozenset({"float32", "float16", "bfloat16", "float64"})

SEP = "|"
WIRE_VERSION = 1
_META_KEY = "fedpeft"


@dataclass
class WireState:
    """A compressed state dict, ready to travel.

    Attributes
    ----------
    tensors : dict[str, torch.Tensor]
        Payload tensors keyed ``"<state key>|<part>"``, in state-dict order; no bf16 (bit-cast to int16).
    meta : dict[str, Any]
        JSON-able: ``version``, ``compressor`` and ``entries`` (one per state key, in order: ``key``, the
        compressor metadata, ``parts`` and ``bitcast`` = parts stored bit-cast with their real dtype).
    """

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Exact bytes of the payload tensors (the metadata header is not counted)."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def keys(self) -> list[str]:
        """State-dict keys, in order."""
        return [e["key"] for e in self.meta.get("entries", [])]

    def kinds(self) -> dict[str, str]:
        """``{key: kind}`` of the entries that are not :data:`ADAPTER` (the default kind)."""
        return {e["key"]: e["kind"] for e in self.meta.get("entries", []) if e.get("kind", ADAPTER) != ADAPTER}

    def nbytes_by_kind(self) -> dict[str, int]:
        """Exact payload bytes per kind (kinds in order of first appearance)."""
        out: dict[str, int] = {}
        for e in self.meta.get("entries", []):
            kind = e.get("kind", ADAPTER)
            parts = [self.tensors[f"{e['key']}{SEP}{p}"] for p in e["parts"]]
            out[kind] = out.get(kind, 0) + sum(t.numel() * t.element_size() for t in parts)
        return out

    def to_bytes(self) -> bytes:
        """Serialize with safetensors; the metadata goes as JSON in the header's ``__metadata__``."""
        tensors = {k: t.contiguous() for k, t in self.tensors.items()}
        return bytes(st_save(tensors, metadata={_META_KEY: json.dumps(self.meta)}))

    @classmethod
    def from_bytes(cls, data: bytes) -> WireState:
        """Inverse of :meth:`to_bytes`."""
        if len(data) < 8:
            raise ValueError("wire data too short to be a safetensors buffer")
        (hlen,) = struct.unpack("<Q", data[:8])
        try:
            header = json.loads(data[8 : 8 + hlen])
            meta = json.loads(header["__metadata__"][_META_KEY])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"wire data has no fedpeft metadata header: {exc}") from exc
        if meta.get("version") != WIRE_VERSION:
            raise ValueError(f"unsupported wire version {meta.get('version')!r}; expected {WIRE_VERSION}")
        loaded = st_load(data)
        order = [f"{e['key']}{SEP}{p}" for e in meta["entries"] for p in e["parts"]]
        missing = [k for k in order if k not in loaded]
        if missing:
            raise ValueError(f"wire data lacks tensors {missing}")
        return cls({k: loaded[k] for k in order}, meta)


def encode_state(
    state: dict[str, torch.Tensor],
    compressor: Compressor | str,
    kinds: Mapping[str, str] | None = None,
    compressors: Callable[[str], Compressor] | None = None,
) -> WireState:
    """Compress every tensor of ``state`` (keys kept in order) into a :class:`WireState`.

    Parameters
    ----------
    state : dict[str, Tensor]
        What travels.
    compressor : Compressor or str
        For the :data:`ADAPTER` entries: a :class:`Compressor` (stateful ones, e.g. top-k with error feedback, keep
        their state across calls) or a registered name.
    kinds : Mapping[str, str], optional
        ``{key: kind}`` for entries of another kind than :data:`ADAPTER`.
    compressors : Callable[[str], Compressor], optional
        The compressor of each other kind; lossless when omitted.

    Integer and bool tensors are encoded losslessly whatever the kind's compressor.
    """
    comp = make_compressor(compressor) if isinstance(compressor, str) else compressor
    if not isinstance(state, dict):
        raise ValueError(f"state must be a dict of tensors, got {type(state).__name__}")
    kinds = dict(kinds or {})
    unknown = sorted(set(kinds) - set(state))
    if unknown:
        raise ValueError(f"payload kinds name keys {unknown} that the state does not have")
    tensors: dict[str, torch.Tensor] = {}
    entries: list[dict[str, Any]] = []
    for key, value in state.items():
        if not isinstance(key, str) or not key or SEP in key:
            raise ValueError(f"state key {key!r} must be a non-empty string without {SEP!r}")
        kind = kinds.get(key, ADAPTER)
        use = comp if kind == ADAPTER else (compressors(kind) if compressors is not None else _LOSSLESS)
        if isinstance(value, torch.Tensor) and not value.is_floating_point():
            use = _LOSSLESS  # ids, masks, counts: never cast or quantized
        enc = use.compress(key, value)
        bitcast: dict[str, str] = {}
        for part, t in enc.payload.items():
            if t.dtype == torch.bfloat16:
                t = t.contiguous().view(torch.int16)
                bitcast[part] = "bfloat16"
            tensors[f"{key}{SEP}{part}"] = t
        entries.append({"key": key, "meta": enc.meta, "parts": list(enc.payload), "bitcast": bitcast, "kind": kind})
    return WireState(tensors, {"version": WIRE_VERSION, "compressor": comp.name, "entries": entries})


def decode_state(wire: WireState, decoders: Callable[[str], Compressor] | None = None) -> dict[str, torch.Tensor]:
    """Decompress a :class:`WireState` into a state dict with the original keys (in order), shapes and dtypes.

    Parameters
    ----------
    wire : WireState
        What arrived.
    decoders : Callable[[str], Compressor], optional
        The receiver's own compressor of each payload kind (its channel). Given, every entry must have been encoded
        by it (integer / bool entries: losslessly), and its metadata is checked against what actually arrived
        before anything is allocated (:func:`fedpeft.comm.compression._check_meta`): a peer cannot pick the decoder
        nor claim a tensor larger than its payload. Omitted (reading one's own files), the metadata names the
        decoder.

    Raises
    ------
    ValueError
        Malformed metadata, a compressor the receiver does not use for that kind, or a payload that does not hold
        what its metadata claims.
    """
    entries = wire.meta.get("entries") if isinstance(wire.meta, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValueError("wire metadata has no list of entries")
    out: dict[str, torch.Tensor] = {}
    own: dict[tuple[str, object], Compressor] = {}
    for entry in entries:
        key, meta, parts = entry.get("key"), entry.get("meta"), entry.get("parts")
        if not isinstance(key, str) or not isinstance(meta, dict) or not isinstance(parts, list):
            raise ValueError(f"malformed wire entry {str(entry)[:200]}")
        name = meta.get("compressor")
        if decoders is not None:
            kind = entry.get("kind", ADAPTER)
            if not isinstance(kind, str):
                raise ValueError(f"{key}: payload kind {kind!r} is not a string")
            if meta.get("dtype") not in WIRE_DTYPES:
                raise ValueError(f"{key}: payload claims dtype {meta.get('dtype')!r}; allowed: {sorted(WIRE_DTYPES)}")
            integer = meta.get("dtype") not in _FLOATING
            decoder = _LOSSLESS if integer else decoders(kind)
            if name != decoder.name:
                allowed = "lossless (integer payload)" if integer else repr(decoder.name)
                raise ValueError(f"{key}: {kind} payload encoded with {name!r}; this run decodes it with {allowed}")
        else:
            cache_key = (str(name), meta.get("ratio"))
            if cache_key not in own:
                opts = {"ratio": meta["ratio"], "error_feedback": False} if name == "topk" else {}
                own[cache_key] = make_compressor(str(name), **opts)
            decoder = own[cache_key]
        payload: dict[str, torch.Tensor] = {}
        for part in parts:
            wkey = f"{key}{SEP}{part}"
            if wkey not in wire.tensors:
                raise ValueError(f"wire state lacks tensor {wkey!r}")
            t = wire.tensors[wkey]
            if entry.get("bitcast", {}).get(part) == "bfloat16":
                t = t.contiguous().view(torch.bfloat16)
            payload[part] = t
        out[key] = decoder.decompress(Encoded(payload, meta))
    return out
