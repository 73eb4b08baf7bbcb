"""Compression of single update tensors for the wire.

Every compressor maps one tensor to an :class:`Encoded` (payload tensors plus JSON-able metadata) and back.
Byte counts come from :attr:`Encoded.nbytes`: the exact size of the payload tensors, scales included.

Registered compressors (:data:`COMPRESSORS`):

- ``lossless``: every tensor as it is, any dtype (integer ids, bool masks, fp16 activations): the default of every
  payload kind but adapter updates (see :mod:`fedpeft.comm.codec`).
- ``none``: identity, floating tensors sent as fp32.
- ``fp16`` / ``bf16``: cast to half precision.
- ``int8`` / ``int4``: symmetric per-tensor quantization with an fp32 absmax scale; int4 packs two values per byte.
- ``topk``: keep a fraction of entries by magnitude (int32 indices + fp32 values), with error feedback
  (Stich et al. 2018, "Sparsified SGD with memory"; Karimireddy et al. 2019, "Error feedback fixes SignSGD").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from fedpeft import registry
from fedpeft.errors import ConfigError

__all__ = [
    "COMPRESSORS",
    "CastCompressor",
    "Compressor",
    "Encoded",
    "Int4Compressor",
    "Int8Compressor",
    "LosslessCompressor",
    "TopKCompressor",
    "TopKErrorFeedback",
    "make_compressor",
]


def dtype_name(dtype: torch.dtype) -> str:
    """Name of ``dtype`` without the ``torch.`` prefix (e.g. ``"bfloat16"``)."""
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str) -> torch.dtype:
    """Inverse of :func:`dtype_name` for any torch dtype."""
    dt = getattr(torch, name, None)
    if not isinstance(dt, torch.dtype):
        raise ValueError(f"unknown dtype name {name!r}")
    return dt


@dataclass
class Encoded:
    """One compressed tensor.

    Attributes
    ----------
    payload : dict[str, torch.Tensor]
        Tensors that travel (values, indices, scales). Their bytes are what :attr:`nbytes` counts.
    meta : dict[str, Any]
        JSON-able description: ``compressor``, original ``shape`` and ``dtype``, and compressor-specific fields.
    """

    payload: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Exact bytes of the payload tensors (scales included, metadata excluded)."""
        return sum(t.numel() * t.element_size() for t in self.payload.values())


def _check_tensor(name: str, tensor: torch.Tensor) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise ValueError(f"{name}: only floating-point tensors can be compressed, got dtype {tensor.dtype}")


def _base_meta(compressor: str, tensor: torch.Tensor) -> dict[str, Any]:
    return {"compressor": compressor, "shape": list(tensor.shape), "dtype": dtype_name(tensor.dtype)}


#: dtypes a payload's metadata may name: the receiver never builds a tensor of any other (float8, complex, ...)
WIRE_DTYPES = frozenset(
    {"float32", "float16", "bfloat16", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"}
)
#: most dimensions a payload's metadata may name
MAX_NDIM = 8


def _check_meta(
    encoded: Encoded, compressor: str, parts: tuple[str, ...], sizes: Callable[[int], tuple[int, ...]] | None = None
) -> tuple[list[int], torch.dtype]:
    """Validate what the sender says before anything is allocated: compressor, parts, shape, dtype, and (``sizes``:
    numel -> expected numel of each part) that the payload holds exactly what the claimed shape needs, so a
    hostile header cannot make the receiver allocate more than it actually received."""
    meta = encoded.meta
    if not isinstance(meta, dict) or meta.get("compressor") != compressor:
        got = meta.get("compressor") if isinstance(meta, dict) else meta
        raise ValueError(f"encoded tensor was made by {got!r}, not {compressor!r}")
    missing = [p for p in parts if p not in encoded.payload]
    if missing:
        raise ValueError(f"encoded tensor lacks payload part(s) {missing}")
    extra = sorted(set(encoded.payload) - set(parts))
    if extra:
        raise ValueError(f"encoded tensor has unexpected payload part(s) {extra}")
    shape = meta.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_NDIM
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)
    ):
        raise ValueError(f"encoded tensor has an invalid shape {shape!r} (at most {MAX_NDIM} non-negative ints)")
    if meta.get("dtype") not in WIRE_DTYPES:
        raise ValueError(f"encoded tensor has dtype {meta.get('dtype')!r}; allowed: {sorted(WIRE_DTYPES)}")
    if sizes is not None:
        want = sizes(math.prod(shape))
        got_sizes = tuple(encoded.payload[p].numel() for p in parts)
        if got_sizes != want:
            raise ValueError(
                f"{compressor} payload of shape {shape} needs part sizes {dict(zip(parts, want, strict=True))}, "
                f"got {dict(zip(parts, got_sizes, strict=True))}"
            )
    return list(shape), dtype_from_name(meta["dtype"])


def _floating(compressor: str, dtype: torch.dtype) -> None:
    if not dtype.is_floating_point:
        raise ValueError(f"{compressor} payload claims dtype {dtype}; only floating tensors are compressed")


class Compressor:
    """Interface: ``compress(name, tensor) -> Encoded`` and ``decompress(encoded) -> tensor``.

    ``name`` is the state-dict key; stateful compressors (error feedback) keep per-key state under it.
    ``decompress`` returns a tensor of the original shape and dtype.
    """

    name: str = ""

    def compress(self, name: str, tensor: torch.Tensor) -> Encoded:
        raise NotImplementedError

    def decompress(self, encoded: Encoded) -> torch.Tensor:
        raise NotImplementedError


class CastCompressor(Compressor):
    """Cast to a wire dtype: ``fp16`` / ``bf16``, or ``none`` = fp32 (lossless for fp32/fp16/bf16 inputs)."""

    def __init__(self, name: str, wire_dtype: torch.dtype) -> None:
        self.name = name
        self.wire_dtype = wire_dtype

    def compress(self, name: str, tensor: torch.Tensor) -> Encoded:
        _check_tensor(name, tensor)
        return Encoded({"values": tensor.detach().to(self.wire_dtype).contiguous()}, _base_meta(self.name, tensor))

    def decompress(self, encoded: Encoded) -> torch.Tensor:
        shape, dtype = _check_meta(encoded, self.name, ("values",), lambda n: (n,))
        _floating(self.name, dtype)
        return encoded.payload["values"].reshape(shape).to(dtype)


class LosslessCompressor(Compressor):
    """Every tensor exactly as it is, of any dtype (integers, bool, floats of any width): ``numel * itemsize`` bytes.

    bool travels as uint8 (the wire layer moves raw bytes; one byte per value either way).
    """

    name = "lossless"

    def compress(self, name: str, tensor: torch.Tensor) -> Encoded:
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{name}: expected a torch.Tensor, got {type(tensor).__name__}")
        values = tensor.detach().contiguous()
        if values.dtype == torch.bool:
            values = values.view(torch.uint8)
        return Encoded({"values": values}, _base_meta(self.name, tensor))

    def decompress(self, encoded: Encoded) -> torch.Tensor:
        shape, dtype = _check_meta(encoded, self.name, ("values",), lambda n: (n,))
        values = encoded.payload["values"]
        if dtype == torch.bool:
            values = values.view(torch.bool)
        if values.dtype != dtype:
            raise ValueError(f"lossless payload has dtype {values.dtype}, its metadata says {dtype}")
        return values.reshape(shape)


def quantize_symmetric(x: torch.Tensor, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-tensor quantization.

    Parameters
    ----------
    x : torch.Tensor
        Floating tensor, any shape.
    qmax : int
        Largest code magnitude (127 for int8, 7 for int4).

    Returns
    -------
    q : torch.Tensor
        Integer codes in ``[-qmax, qmax]`` (int16), same shape as ``x``.
    scale : torch.Tensor
        fp32 scalar, ``absmax(x) / qmax``; ``x ≈ q * scale`` with error at most ``scale / 2``.
    """
    xf = x.detach().to(torch.float32)
    absmax = xf.abs().max() if xf.numel() else torch.zeros(())
    scale = (absmax / qmax).to(torch.float32).reshape(1)  # (1,)
    if float(scale) == 0.0:
        q = torch.zeros_like(xf, dtype=torch.int16)
    else:
        q = torch.round(xf / scale).clamp(-qmax, qmax).to(torch.int16)
    return q, scale


class Int8Compressor(Compressor):
    """int8 codes plus one fp32 scale: ``numel + 4`` bytes."""

    name = "int8"

    def compress(self, name: str, tensor: torch.Tensor) -> Encoded:
        _check_tensor(name, tensor)
        q, scale = quantize_symmetric(tensor, 127)
        return Encoded({"q": q.to(torch.int8).reshape(-1), "scale": scale}, _base_meta(self.name, tensor))

    def decompress(self, encoded: Encoded) -> torch.Tensor:
        shape, dtype = _check_meta(encoded, self.name, ("q", "scale"), lambda n: (n, 1))
        _floating(self.name, dtype)
        x = encoded.payload["q"].to(torch.float32) * encoded.payload["scale"].to(torch.float32)
        return x.reshape(shape).to(dtype)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Pack codes in ``[-7, 7]`` two per byte: element ``2i`` in the low nibble, ``2i+1`` in the high nibble.

    ``q`` (n,) integer -> (ceil(n/2),) uint8. Codes are stored offset by 8 (nibble values 1..15).
    """
    u = (q.reshape(-1).to(torch.int16) + 8).to(torch.uint8)  # (n,)
    if u.numel() % 2:
        u = torch.cat([u, torch.zeros(1, dtype=torch.uint8)])  # (n+1,)
    pairs = u.reshape(-1, 2)  # (ceil(n/2), 2)
    return (pairs[:, 0] | (pairs[:, 1] << 4)).contiguous()


def unpack_int4(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: (ceil(n/2),) uint8 -> (n,) int16 codes in ``[-7, 7]``."""
    lo = (packed & 0x0F).to(torch.int16)
    hi = ((packed >> 4) & 0x0F).to(torch.int16)
    return torch.stack([lo, hi], dim=1).reshape(-1)[:n] - 8  # (n,)


class Int4Compressor(Compressor):
    """int4 codes packed two per uint8 plus one fp32 scale: ``ceil(numel/2) + 4`` bytes."""

    name = "int4"

    def compress(self, name: str, tensor: torch.Tensor) -> Encoded:
        _check_tensor(name, tensor)
        q, scale = quantize_symmetric(tensor, 7)
        return Encoded({"q": pack_int4(q), "scale": scale}, _base_meta(self.name, tensor))

    def decompress(self, encoded: Encoded) -> torch.Tensor:
        shape, dtype = _check_meta(encoded, self.name, ("q", "scale"), lambda n: ((n + 1) // 2, 1))
        _floating(self.name, dtype)
        n = math.prod(shape)
        q = unpack_int4(encoded.payload["q"], n)
        x = q.to(torch.float32) * encoded.payload["scale"].to(torch.float32)
        return x.reshape(shape).to(dtype)


def topk_count(n: int, ratio: float) -> int:
    """How many of ``n`` entries top-k keeps: ``min(n, max(1, ceil(ratio * n)))``, 0 for an empty tensor."""
    return min(n, max(1, math.ceil(ratio * n))) if n else 0


def topk_select(x: torch.Tensor, ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Entries of largest magnitude.

    ``x`` (n,) fp32 -> ``indices`` (k,) int32 into ``x`` and ``values`` (k,) fp32, with ``k = max(1, ceil(ratio*n))``
    (0 for an empty tensor).
    """
    n = x.numel()
    k = topk_count(n, ratio)
    idx = torch.topk(x.abs(), k, sorted=False).indices if k else torch.zeros(0, dtype=torch.int64)
    idx = torch.sort(idx).values
    return idx.to(torch.int32), x[idx].to(torch.float32)


class TopKCompressor(Compressor):
    """Top-k sparsification without memory: ``k`` int32 indices + ``k`` fp32 values (8k bytes)."""

    name = "topk"

    def __init__(self, ratio: float = 0.1) -> None:
        if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not 0.0 < float(ratio) <= 1.0:
            raise ConfigError("compression.ratio", ratio, "a number in (0, 1]")
        self.ratio = float(ratio)

    def k(self, n: int) -> int:
        """Entries kept of an ``n``-entry tensor."""
        return topk_count(n, self.ratio)

    def _encode(self, tensor: torch.Tensor, flat: torch.Tensor) -> Encoded:
        idx, vals = topk_select(flat, self.ratio)
        meta = _base_meta(self.name, tensor)
        meta["ratio"] = self.ratio
        return Encoded({"indices": idx, "values": vals}, meta)

    def compress(self, name: str, tensor: torch.Tensor) -> Encoded:
        _check_tensor(name, tensor)
        return self._encode(tensor, tensor.detach().to(torch.float32).reshape(-1))

    def decompress(self, encoded: Encoded) -> torch.Tensor:
        # k follows from the shape and this receiver's own ratio: a header cannot claim a huge tensor for a few values
        shape, dtype = _check_meta(encoded, self.name, ("indices", "values"), lambda n: (self.k(n), self.k(n)))
        _floating(self.name, dtype)
        n = math.prod(shape)
        idx = encoded.payload["indices"].to(torch.int64)  # (k,)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise ValueError(f"topk payload has indices outside [0, {n})")
        out = torch.zeros(n, dtype=torch.float32)  # (n,)
        out[idx] = encoded.payload["values"].to(torch.float32)
        return out.reshape(shape).to(dtype)


class TopKErrorFeedback(TopKCompressor):
    """Top-k with error feedback: a per-key fp32 residual is added before selection, and what was not sent is kept.

    Invariant each call: ``decompress(compress(k, x)) + residual_after == x + residual_before`` (exactly, in fp32).
    """

    def __init__(self, ratio: float = 0.1) -> None:
        super().__init__(ratio)
        self.residuals: dict[str, torch.Tensor] = {}

    def compress(self, name: str, tensor: torch.Tensor) -> Encoded:
        _check_tensor(name, tensor)
        flat = tensor.detach().to(torch.float32).reshape(-1)  # (n,)
        prev = self.residuals.get(name)
        if prev is not None:
            if prev.shape != flat.shape:
                raise ValueError(f"{name}: tensor has {flat.numel()} entries but its residual has {prev.numel()}")
            flat = flat + prev
        enc = self._encode(tensor, flat)
        residual = flat.clone()
        residual[enc.payload["indices"].to(torch.int64)] = 0.0
        self.residuals[name] = residual
        return enc

    def residual(self, name: str) -> torch.Tensor | None:
        """The flat fp32 residual kept for ``name`` (None before its first compression)."""
        return self.residuals.get(name)

    def reset(self) -> None:
        """Forget all residuals."""
        self.residuals.clear()


def _topk_factory(ratio: float = 0.1, error_feedback: bool = True) -> Compressor:
    return TopKErrorFeedback(ratio) if error_feedback else TopKCompressor(ratio)


COMPRESSORS: dict[str, Callable[..., Compressor]] = {
    "lossless": LosslessCompressor,
    "none": lambda: CastCompressor("none", torch.float32),
    "fp16": lambda: CastCompressor("fp16", torch.float16),
    "bf16": lambda: CastCompressor("bf16", torch.bfloat16),
    "int8": Int8Compressor,
    "int4": Int4Compressor,
    "topk": _topk_factory,
}


for _name, _factory in COMPRESSORS.items():  # the names config validation reads, from the registry
    registry.COMPRESSORS.register(_name, _factory)


def make_compressor(name: str, **kwargs: Any) -> Compressor:
    """Build a registered compressor; unknown names raise :class:`ConfigError` listing the allowed ones."""
    if name not in COMPRESSORS:
        raise ConfigError("compression.name", name, sorted(COMPRESSORS))
    try:
        return COMPRESSORS[name](**kwargs)
    except TypeError as exc:
        raise ConfigError("compression", kwargs, f"options accepted by {name!r} ({exc})") from exc
