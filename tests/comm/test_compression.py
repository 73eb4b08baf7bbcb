import math

import pytest
import torch

from fedpeft.comm.compression import (
    COMPRESSORS,
    TopKCompressor,
    TopKErrorFeedback,
    make_compressor,
    pack_int4,
    unpack_int4,
)
from fedpeft.errors import ConfigError


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", sorted(COMPRESSORS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_round_trip_keeps_shape_and_dtype(name: str, dtype: torch.dtype) -> None:
    comp = make_compressor(name)
    x = _rand(3, 5).to(dtype)
    y = comp.decompress(comp.compress("w", x))
    assert y.shape == x.shape and y.dtype == dtype


def test_none_is_lossless_fp32() -> None:
    comp = make_compressor("none")
    x = _rand(4, 3)
    enc = comp.compress("w", x)
    assert enc.nbytes == 12 * 4
    assert torch.equal(comp.decompress(enc), x)


@pytest.mark.parametrize(("name", "dtype"), [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_half_casts(name: str, dtype: torch.dtype) -> None:
    comp = make_compressor(name)
    x = _rand(2, 7)
    enc = comp.compress("w", x)
    assert enc.payload["values"].dtype == dtype
    assert enc.nbytes == 14 * 2
    assert torch.equal(comp.decompress(enc), x.to(dtype).to(torch.float32))


@pytest.mark.parametrize(("name", "qmax"), [("int8", 127), ("int4", 7)])
@pytest.mark.parametrize("shape", [(4, 6), (3, 5), (1,), ()])
def test_quantizers_error_and_bytes(name: str, qmax: int, shape: tuple[int, ...]) -> None:
    comp = make_compressor(name)
    x = _rand(*shape, seed=3) * 2.5
    enc = comp.compress("w", x)
    scale = float(enc.payload["scale"])
    assert enc.payload["scale"].dtype == torch.float32
    assert scale == pytest.approx(float(x.abs().max()) / qmax)
    err = (comp.decompress(enc) - x).abs().max()
    assert float(err) <= scale / 2 * (1 + 1e-5)
    n = x.numel()
    expected = (n if name == "int8" else math.ceil(n / 2)) + 4
    assert enc.nbytes == expected


def test_int4_packing_round_trip_odd_length() -> None:
    q = torch.tensor([-7, 7, 0, 3, -1], dtype=torch.int16)
    packed = pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.numel() == 3
    assert torch.equal(unpack_int4(packed, 5), q)


def test_quantize_zero_tensor() -> None:
    comp = make_compressor("int4")
    x = torch.zeros(3)
    assert torch.equal(comp.decompress(comp.compress("w", x)), x)


def test_topk_keeps_largest_and_counts_bytes() -> None:
    comp = TopKCompressor(ratio=0.25)
    x = torch.tensor([[0.1, -5.0, 0.2, 0.3], [4.0, 0.0, -0.5, 0.05]])
    enc = comp.compress("w", x)
    assert enc.payload["indices"].dtype == torch.int32 and enc.payload["values"].dtype == torch.float32
    assert enc.nbytes == 2 * (4 + 4)
    expected = torch.zeros_like(x)
    expected[0, 1], expected[1, 0] = -5.0, 4.0
    assert torch.equal(comp.decompress(enc), expected)


def test_topk_error_feedback_conserves_mass_exactly() -> None:
    comp = TopKErrorFeedback(ratio=0.2)
    g = torch.Generator().manual_seed(7)
    sent = torch.zeros(3, 4)
    total = torch.zeros(3, 4)
    for _ in range(25):
        x = torch.randint(-50, 51, (3, 4), generator=g).to(torch.float32)  # integers: sums are exact in fp32
        before = comp.residual("w")
        before = torch.zeros(12) if before is None else before.clone()
        dec = comp.decompress(comp.compress("w", x))
        after = comp.residual("w")
        assert after is not None
        assert torch.equal(dec.reshape(-1) + after, x.reshape(-1) + before)  # per-round invariant
        sent += dec
        total += x
    residual = comp.residual("w")
    assert residual is not None
    assert torch.equal(sent + residual.reshape(3, 4), total)


def test_topk_error_feedback_residual_per_key_and_shape_check() -> None:
    comp = TopKErrorFeedback(ratio=0.5)
    comp.compress("a", torch.ones(4))
    comp.compress("b", torch.ones(2))
    assert set(comp.residuals) == {"a", "b"}
    with pytest.raises(ValueError, match="residual"):
        comp.compress("a", torch.ones(5))
    comp.reset()
    assert comp.residual("a") is None


def test_registry_errors() -> None:
    with pytest.raises(ConfigError, match="int4"):
        make_compressor("zip")
    with pytest.raises(ConfigError):
        make_compressor("topk", ratio=0.0)
    with pytest.raises(ConfigError):
        make_compressor("int8", ratio=0.5)
    assert isinstance(make_compressor("topk", error_feedback=False), TopKCompressor)
    assert not isinstance(make_compressor("topk", error_feedback=False), TopKErrorFeedback)


def test_rejects_non_float() -> None:
    with pytest.raises(ValueError, match="floating"):
        make_compressor("int8").compress("w", torch.ones(3, dtype=torch.int64))


def test_decompress_rejects_foreign_encoding() -> None:
    enc = make_compressor("int8").compress("w", torch.ones(3))
    with pytest.raises(ValueError, match="int8"):
        make_compressor("int4").decompress(enc)
