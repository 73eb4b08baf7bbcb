import pytest
import torch

from fedpeft.comm import ByteLedger, WireState, decode_state, encode_state, make_compressor
from fedpeft.comm.compression import COMPRESSORS


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "model.layers.1.q_proj.lora_B.weight": torch.randn(4, 2, generator=g),
        "model.layers.0.q_proj.lora_A.weight": torch.randn(2, 5, generator=g),
        "model.norm.bias": torch.randn(3, generator=g).to(torch.bfloat16),
    }


@pytest.mark.parametrize("name", sorted(COMPRESSORS))
def test_encode_decode_and_bytes_round_trip(name: str) -> None:
    state = _state()
    comp = make_compressor(name)
    wire = encode_state(state, comp)
    assert wire.keys() == list(state)
    assert all(t.dtype != torch.bfloat16 for t in wire.tensors.values())
    again = WireState.from_bytes(wire.to_bytes())
    assert again.meta == wire.meta and again.nbytes == wire.nbytes
    assert list(again.tensors) == list(wire.tensors)
    direct, via_bytes = decode_state(wire), decode_state(again)
    assert list(direct) == list(state)
    for k, v in state.items():
        assert direct[k].shape == v.shape and direct[k].dtype == v.dtype
        assert torch.equal(direct[k], via_bytes[k])


def test_none_and_bf16_are_exact_for_bf16_inputs() -> None:
    state = {k: v.to(torch.bfloat16) for k, v in _state().items()}
    for name in ("none", "bf16"):
        out = decode_state(WireState.from_bytes(encode_state(state, name).to_bytes()))
        for k, v in state.items():
            assert torch.equal(out[k], v)


def test_bf16_is_bitcast_and_tagged() -> None:
    wire = encode_state({"w": torch.tensor([1.5, -2.0])}, "bf16")
    assert wire.tensors["w|values"].dtype == torch.int16
    assert wire.meta["entries"][0]["bitcast"] == {"values": "bfloat16"}
    assert wire.nbytes == 4


def test_nbytes_matches_compressor_counts() -> None:
    state = _state()
    comp = make_compressor("int4")
    expected = sum(comp.compress(k, v).nbytes for k, v in state.items())
    assert encode_state(state, comp).nbytes == expected == (4 + 4) + (5 + 4) + (2 + 4)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="key"):
        encode_state({"a|b": torch.ones(1)}, "none")
    with pytest.raises(ValueError):
        WireState.from_bytes(b"abc")
    wire = encode_state({"w": torch.ones(2)}, "none")
    del wire.tensors["w|values"]
    with pytest.raises(ValueError, match="lacks"):
        decode_state(wire)


def test_ledger_totals_and_records() -> None:
    ledger = ByteLedger()
    ledger.record(1, "c0", "down", 100)
    ledger.record(1, "c0", "up", 40)
    ledger.record(1, 3, "up", 60)
    ledger.record(2, "c0", "up", 10)
    assert ledger.total() == 210
    assert ledger.total("up") == 110
    assert ledger.per_round() == {1: 200, 2: 10}
    assert ledger.per_round("down") == {1: 100}
    assert ledger.per_client("up") == {"c0": 50, "3": 60}
    recs = ledger.to_records()
    assert recs[0] == {
        "event": "bytes", "round": 1, "client_id": "c0", "direction": "down", "nbytes": 100, "kind": "adapter",
        "phase": "round",
    }  # fmt: skip
    assert len(recs) == 4


@pytest.mark.parametrize(
    "args", [(-1, "c", "up", 1), (0, "c", "sideways", 1), (0, "c", "up", -5), (0, "", "up", 1), (0, "c", "up", 1.5)]
)
def test_ledger_rejects_bad_records(args: tuple) -> None:
    with pytest.raises(ValueError):
        ByteLedger().record(*args)


# ---------------------------------------------------------------- hostile payloads: checked before any allocation
def _channel(up: str = "none", **kw):
    from fedpeft.comm.transport import Channel
    from fedpeft.config import CommConfig

    return Channel(CommConfig(up=up, **kw), "up")


def _forged(up: str, shape: list[int], **meta) -> WireState:
    """A genuine one-tensor payload whose header then claims ``shape`` (and ``meta``): what a hostile client sends."""
    channel = _channel(up, topk_ratio=0.5)
    wire = channel.encode({"w": torch.ones(4)})
    wire.meta["entries"][0]["meta"].update(shape=shape, **meta)
    return WireState.from_bytes(wire.to_bytes())


@pytest.mark.parametrize("up", ["none", "fp16", "bf16", "int8", "int4", "topk"])
def test_a_header_cannot_claim_more_than_its_payload(up: str, monkeypatch) -> None:
    """A 4-value payload claiming 2**40 values (or 5) is refused before the receiver allocates anything: the
    claimed shape must need exactly the parts that arrived (top-k: with the receiver's own ratio)."""
    allocated: list[int] = []
    real_zeros = torch.zeros

    def spy(*size, **kw):
        allocated.append(int(torch.Size(size[0] if len(size) == 1 and not isinstance(size[0], int) else size).numel()))
        return real_zeros(*size, **kw)

    monkeypatch.setattr(torch, "zeros", spy)
    channel = _channel(up, topk_ratio=0.5)
    assert decode_state(_forged(up, [4]), channel.compressor)["w"].shape == (4,)  # the honest header: fine
    for shape in ([2**40], [5], [2, 2**20], [-4], [1] * 9):
        allocated.clear()
        with pytest.raises(ValueError, match="shape|part sizes"):
            decode_state(_forged(up, shape), channel.compressor)
        assert not allocated or max(allocated) <= 4


def test_the_receiver_picks_the_decoder_not_the_sender() -> None:
    """A run configured for fp32 uplinks refuses a top-k (or any other) payload, and a float payload that claims
    to be lossless; a dtype outside the wire set is refused; integer ids still travel losslessly."""
    fp32 = _channel("none")
    topk = _channel("topk", topk_ratio=0.5).encode({"w": torch.ones(4)})
    with pytest.raises(ValueError, match="encoded with 'topk'; this run decodes it with 'none'"):
        decode_state(topk, fp32.compressor)
    assert decode_state(topk)["w"].sum() == 2  # one's own files: the header names the decoder (and its ratio)
    lossless = encode_state({"w": torch.ones(4)}, "lossless")
    with pytest.raises(ValueError, match="encoded with 'lossless'"):
        decode_state(lossless, fp32.compressor)
    with pytest.raises(ValueError, match="dtype"):
        decode_state(_forged("none", [4], dtype="complex128"), fp32.compressor)
    ids = fp32.encode({"ids": torch.tensor([3, 2**40])}, {"ids": "ids"})
    assert decode_state(ids, fp32.compressor)["ids"].tolist() == [3, 2**40]


def test_topk_indices_must_lie_inside_the_tensor() -> None:
    channel = _channel("topk", topk_ratio=0.5)
    wire = channel.encode({"w": torch.arange(4.0)})
    wire.tensors["w|indices"] = torch.tensor([1, 7], dtype=torch.int32)
    with pytest.raises(ValueError, match="outside"):
        decode_state(wire, channel.compressor)
