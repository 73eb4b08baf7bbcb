"""SecAgg on tiny vectors: the server's sum is exact with every party, with parties dropped after sharing (up to the
threshold), and refused below it; a masked vector says nothing of its party's vector; quantization is unbiased
and bounded; forged or misrouted shares are refused."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("flwr", reason="SecAgg uses Flower's primitives (fedpeft[flower])")

from fedpeft.privacy import secagg

BITS, LEVELS = 40, 2**16


def _protocol(vectors: dict[int, torch.Tensor], threshold: int, drop: set[int] = frozenset()):
    """Run the four steps in process; ``drop`` parties vanish after step 2. Returns (sum, masked vectors)."""
    keys = {p: secagg.make_keys() for p in vectors}
    public = {p: (k.pk1, k.pk2) for p, k in keys.items()}
    seeds = {p: secagg.fresh_seed() for p in vectors}
    outbox, own = {}, {}
    for p in vectors:
        outbox[p], own[p] = secagg.encrypt_shares(p, keys[p], seeds[p], public, threshold)
    held = {p: {p: own[p]} for p in vectors}  # party -> {source: (seed share, sk share)}
    for p in vectors:
        inbox = {src: outbox[src][p] for src in vectors if src != p}
        held[p].update(secagg.open_shares(p, keys[p], public, inbox))
    masked = {
        p: secagg.mask_vector(p, v, seeds[p], keys[p], public, sorted(vectors), BITS)
        for p, v in vectors.items()
        if p not in drop
    }
    active, dead = sorted(masked), sorted(drop)
    seed_shares = {a: [held[s][a][0] for s in active] for a in active}
    sk_shares = {d: [held[s][d][1] for s in active] for d in dead}
    return secagg.unmask_sum(masked, dead, seed_shares, sk_shares, public, threshold, BITS), masked


def _vectors(n: int, dim: int = 50) -> dict[int, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {p: torch.randint(0, LEVELS, (dim,), generator=g) for p in (3, 7, 11, 20, 42)[:n]}


def test_the_sum_is_exact_and_a_masked_vector_looks_uniform():
    vectors = _vectors(4)
    total, masked = _protocol(vectors, threshold=3)
    assert torch.equal(total, sum(vectors.values()))
    for p, y in masked.items():
        assert not torch.equal(y, vectors[p])
        assert int(y.max()) > LEVELS * 1000  # spread over [0, 2^40), not the vector's [0, 2^16)
        # the masked vector is uncorrelated with the vector it hides
        c = torch.corrcoef(torch.stack([y.double(), vectors[p].double()]))[0, 1]
        assert abs(float(c)) < 0.5


@pytest.mark.parametrize("drop", [{7}, {3, 42}])
def test_dropouts_after_sharing_up_to_the_threshold(drop):
    vectors = _vectors(5)
    total, _ = _protocol(vectors, threshold=3, drop=set(drop))
    assert torch.equal(total, sum(v for p, v in vectors.items() if p not in drop))


def test_below_the_threshold_nothing_is_unmasked():
    with pytest.raises(ValueError, match="shares"):
        _protocol(_vectors(4), threshold=3, drop={3, 7})


def test_forged_and_misrouted_shares_are_refused():
    keys = {p: secagg.make_keys() for p in (1, 2, 3)}
    public = {p: (k.pk1, k.pk2) for p, k in keys.items()}
    out, _ = secagg.encrypt_shares(1, keys[1], secagg.fresh_seed(), public, 2)
    with pytest.raises(ValueError, match="arrived as|decrypt"):  # 1's share for 2 delivered to 3
        secagg.open_shares(3, keys[3], public, {1: out[2]})
    with pytest.raises(ValueError, match="decrypt"):
        secagg.open_shares(2, keys[2], public, {1: out[2][:-3] + b"abc"})
    with pytest.raises(ValueError, match="own public keys"):
        secagg.encrypt_shares(1, keys[1], secagg.fresh_seed(), {**public, 1: public[2]}, 2)


def test_quantization_is_unbiased_bounded_and_seeded():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.123456, 0.5, 3.0])
    q = [secagg.quantize(x, 1.0, 2**8, torch.Generator().manual_seed(s)) for s in range(2000)]
    assert all(int(t.min()) >= 0 and int(t.max()) <= 255 for t in q)
    mean = secagg.dequantize_sum(torch.stack(q).sum(0), 2000, 1.0, 2**8) / 2000
    assert torch.allclose(mean, x.clamp(-1, 1).double(), atol=2e-3)  # clipped to +-1, unbiased inside
    assert torch.equal(q[0], secagg.quantize(x, 1.0, 2**8, torch.Generator().manual_seed(0)))


def test_masks_are_keyed_uniform_and_in_range():
    a, b = secagg.expand_mask(b"k" * 32, 10_000, BITS), secagg.expand_mask(b"j" * 32, 10_000, BITS)
    assert int(a.min()) >= 0 and int(a.max()) < 2**BITS and not torch.equal(a, b)
    assert torch.equal(a, secagg.expand_mask(b"k" * 32, 10_000, BITS))
    assert abs(float(a.double().mean()) / 2**BITS - 0.5) < 0.02
