"""Secure aggregation of client updates (SecAgg, Bonawitz et al., CCS 2017; SecAgg+, Bell et al., CCS 2020) on
Flower's cryptographic primitives: the server learns the sum of the surviving clients' quantized vectors, nothing
about any single one, and the sum survives clients dropping out up to the threshold.

The protocol, per round, every party a sampled client (ids are client ids):

1. **keys**: each party makes two EC key pairs (``sk1/pk1`` for pairwise masks, ``sk2/pk2`` for encrypting
   shares; Flower's ``generate_key_pairs``, SECP384R1) and uploads the public keys.
2. **shares**: with every other party's public keys, each party draws a private mask seed ``b``, splits ``b`` and
   ``sk1`` into Shamir shares (Flower's ``create_shares``, ``threshold`` of ``n`` reconstruct) and sends share
   ``j`` to party ``j`` encrypted under their ECDH+HKDF key (Flower's ``generate_shared_key`` / Fernet
   ``encrypt``), routed through the server.
3. **masked**: each party quantizes its vector to integers in ``[0, levels)`` (stochastic rounding with its own
   generator), adds its private mask ``PRG(b)`` and, for every other party ``j``, ``+PRG(s_ij)`` if its id is
   larger, ``-PRG(s_ij)`` if smaller (``s_ij`` = ECDH of ``sk1_i`` and ``pk1_j``), all modulo ``2^modulus_bits``;
   pairwise masks cancel in the sum.
4. **unmask**: the server names the parties whose masked vectors arrived (active) and those that dropped after
   step 2 (dead); each survivor returns its share of ``b`` of every active party and of ``sk1`` of every dead
   one. The server rebuilds those secrets from ``threshold`` shares, subtracts the active parties' private masks
   and cancels the dead parties' pairwise masks. It never gets both secrets of one party.

Every party is every other's neighbour (SecAgg+ with its share number >= the number of parties, i.e. SecAgg).
Masks are expanded from their 32-byte keys with ChaCha20 (``cryptography``), not with Flower's
``pseudo_rand_gen``, which folds its seed to 32 bits for NumPy's RandomState (a mask an adversary could brute-force);
Flower's stochastic rounding draws from NumPy's global generator, so the quantization here is our own, seeded.
Security model: an honest-but-curious server, colluding with fewer than ``threshold`` clients, learns only the
sum; a malicious server that lies about who dropped can learn more (SecAgg's consistency round is not
implemented), and the per-coordinate clip is the only bound on what one client adds to the sum.
"""

from __future__ import annotations

import base64
import hashlib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "Keys",
    "dequantize_sum",
    "encrypt_shares",
    "expand_mask",
    "make_keys",
    "mask_vector",
    "open_shares",
    "quantize",
    "unmask_sum",
]


def _flwr():  # type: ignore[no-untyped-def]
    """Flower's SecAgg+ primitives (imported on use: they come with fedpeft[flower])."""
    try:
        from flwr.common.secure_aggregation import secaggplus_utils
        from flwr.common.secure_aggregation.crypto import shamir, symmetric_encryption
        from flwr.supercore.primitives import asymmetric
    except ImportError as exc:  # pragma: no cover - the flower extra is part of every install path we ship
        raise ImportError("secure aggregation uses Flower's SecAgg+ primitives: pip install 'fedpeft[flower]'") from exc
    return shamir, symmetric_encryption, secaggplus_utils, asymmetric


# ---------------------------------------------------------------------------------------------------- quantization
def quantize(x: torch.Tensor, clip: float, levels: int, gen: torch.Generator) -> torch.Tensor:
    """``x`` (D,) float -> (D,) int64 in ``[0, levels)``: clipped to ``[-clip, clip]``, mapped affinely onto
    ``[0, levels - 1]`` and stochastically rounded (unbiased inside the clip range)."""
    scale = (levels - 1) / (2.0 * clip)
    y = (x.detach().to(torch.float64).clamp(-clip, clip) + clip) * scale  # (D,) in [0, levels-1]
    low = torch.floor(y)
    up = torch.rand(y.shape, generator=gen, dtype=torch.float64) < (y - low)  # round up with prob. frac(y)
    return (low + up.to(torch.float64)).to(torch.int64).clamp(0, levels - 1)


def dequantize_sum(total: torch.Tensor, count: int, clip: float, levels: int) -> torch.Tensor:
    """Inverse of :func:`quantize` for a sum of ``count`` quantized vectors: (D,) int64 -> (D,) float64."""
    return total.to(torch.float64) * (2.0 * clip / (levels - 1)) - count * clip


# ---------------------------------------------------------------------------------------------------- masks
def _key32(key: bytes) -> bytes:
    """32 key bytes: a Fernet key (url-safe base64 of 32 bytes) decoded, anything else hashed with SHA-256."""
    try:
        raw = base64.urlsafe_b64decode(key)
        if len(raw) == 32:
            return raw
    except (ValueError, TypeError):
        pass
    return hashlib.sha256(key).digest()


def expand_mask(key: bytes, length: int, modulus_bits: int) -> torch.Tensor:
    """A (length,) int64 mask uniform in ``[0, 2^modulus_bits)``: the ChaCha20 keystream under ``key`` (each key
    is used for one vector only: keys and seeds are fresh every round)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

    stream = Cipher(algorithms.ChaCha20(_key32(key), b"\x00" * 16), mode=None).encryptor()
    raw = stream.update(b"\x00" * (8 * length))
    words = torch.frombuffer(bytearray(raw), dtype=torch.int64)  # (length,) any int64
    return words & ((1 << modulus_bits) - 1)


# ---------------------------------------------------------------------------------------------------- one party
@dataclass
class Keys:
    """A party's two key pairs (serialized: private keys PEM-less DER bytes as Flower writes them)."""

    sk1: bytes
    pk1: bytes
    sk2: bytes
    pk2: bytes


def make_keys() -> Keys:
    """Two fresh EC key pairs (Flower's ``generate_key_pairs``)."""
    *_, asym = _flwr()
    sk1, pk1 = asym.generate_key_pairs()
    sk2, pk2 = asym.generate_key_pairs()
    ser = asym.private_key_to_bytes, asym.public_key_to_bytes
    return Keys(ser[0](sk1), ser[1](pk1), ser[0](sk2), ser[1](pk2))


def _shared(sk: bytes, pk: bytes) -> bytes:
    _, sym, _, asym = _flwr()
    return bytes(sym.generate_shared_key(asym.bytes_to_private_key(sk), asym.bytes_to_public_key(pk)))


def _check_parties(me: int, keys: Keys, public: Mapping[int, tuple[bytes, bytes]], threshold: int) -> None:
    if public.get(me) != (keys.pk1, keys.pk2):
        raise ValueError(f"party {me}: the server's key list does not hold this party's own public keys")
    flat = [k for pair in public.values() for k in pair]
    if len(set(flat)) != len(flat):
        raise ValueError("two parties announced the same public key")
    if not 2 <= threshold <= len(public):
        raise ValueError(f"threshold {threshold} must lie in [2, {len(public)}] (the number of parties)")


def encrypt_shares(
    me: int, keys: Keys, seed: bytes, public: Mapping[int, tuple[bytes, bytes]], threshold: int
) -> tuple[dict[int, bytes], tuple[bytes, bytes]]:
    """Step 2 for party ``me``: Shamir shares of ``seed`` and ``sk1``, one per party (in id order), each encrypted
    for its holder. Returns ({holder: ciphertext} for the others, (seed share, sk1 share) kept by ``me``)."""
    shamir, sym, utils, _ = _flwr()
    parties = sorted(public)
    _check_parties(me, keys, public, threshold)
    seed_shares = shamir.create_shares(seed, threshold, len(parties))
    sk_shares = shamir.create_shares(keys.sk1, threshold, len(parties))
    out: dict[int, bytes] = {}
    own = (b"", b"")
    for i, holder in enumerate(parties):
        if holder == me:
            own = (seed_shares[i], sk_shares[i])
            continue
        plain = utils.share_keys_plaintext_concat(me, holder, seed_shares[i], sk_shares[i])
        out[holder] = bytes(sym.encrypt(_shared(keys.sk2, public[holder][1]), plain))
    return out, own


def open_shares(
    me: int, keys: Keys, public: Mapping[int, tuple[bytes, bytes]], ciphertexts: Mapping[int, bytes]
) -> dict[int, tuple[bytes, bytes]]:
    """Step 3 for party ``me``: decrypt the shares the others sent it; {source: (seed share, sk1 share)}.

    Raises
    ------
    ValueError
        A ciphertext does not decrypt under its claimed source's key, or names another source or destination.
    """
    _, sym, utils, _ = _flwr()
    out: dict[int, tuple[bytes, bytes]] = {}
    for src, ct in ciphertexts.items():
        if src not in public or src == me:
            raise ValueError(f"party {me}: a share from unknown source {src}")
        try:
            plain = sym.decrypt(_shared(keys.sk2, public[src][1]), ct)
        except Exception as exc:  # Fernet's InvalidToken: forged, altered or misrouted
            raise ValueError(f"party {me}: the share from {src} does not decrypt ({type(exc).__name__})") from exc
        actual, dst, seed_share, sk_share = utils.share_keys_plaintext_separate(plain)
        if actual != src or dst != me:
            raise ValueError(f"party {me}: share labelled {actual}->{dst} arrived as {src}->{me}")
        out[src] = (seed_share, sk_share)
    return out


def mask_vector(
    me: int,
    q: torch.Tensor,
    seed: bytes,
    keys: Keys,
    public: Mapping[int, tuple[bytes, bytes]],
    neighbours: Sequence[int],
    modulus_bits: int,
) -> torch.Tensor:
    """Step 3 for party ``me``: ``q`` (D,) int64 plus its private mask and the pairwise masks with each of
    ``neighbours`` (the parties whose shares reached it), modulo ``2^modulus_bits``."""
    mod = (1 << modulus_bits) - 1
    n = q.numel()
    y = (q + expand_mask(seed, n, modulus_bits)) & mod
    for other in neighbours:
        if other == me:
            continue
        pair = expand_mask(_shared(keys.sk1, public[other][0]), n, modulus_bits)
        y = (y + pair) & mod if me > other else (y - pair) & mod
    return y


# ---------------------------------------------------------------------------------------------------- the server
def unmask_sum(
    masked: Mapping[int, torch.Tensor],
    dead: Sequence[int],
    seed_shares: Mapping[int, Sequence[bytes]],
    sk_shares: Mapping[int, Sequence[bytes]],
    public: Mapping[int, tuple[bytes, bytes]],
    threshold: int,
    modulus_bits: int,
) -> torch.Tensor:
    """Step 4 on the server: the sum of the active parties' quantized vectors, (D,) int64 in ``[0, 2^bits)``.

    Parameters
    ----------
    masked : {active party: (D,) int64 masked vector}
    dead : parties that shared secrets in step 2 but sent no masked vector
    seed_shares : {active party: shares of its mask seed, from the survivors}
    sk_shares : {dead party: shares of its ``sk1``, from the survivors}
    public : every party's (pk1, pk2) of step 1

    Raises
    ------
    ValueError
        Fewer than ``threshold`` shares for a secret.
    """
    shamir, *_ = _flwr()
    mod = (1 << modulus_bits) - 1
    active = sorted(masked)
    total = torch.zeros_like(masked[active[0]])
    for a in active:
        total = (total + masked[a]) & mod
    n = total.numel()
    for a in active:
        if len(seed_shares.get(a, ())) < threshold:
            raise ValueError(f"only {len(seed_shares.get(a, ()))} shares of party {a}'s seed; {threshold} needed")
        seed = shamir.combine_shares(list(seed_shares[a]))
        total = (total - expand_mask(seed, n, modulus_bits)) & mod
    for d in dead:
        if len(sk_shares.get(d, ())) < threshold:
            raise ValueError(f"only {len(sk_shares.get(d, ()))} shares of dropped party {d}'s key; {threshold} needed")
        sk1 = shamir.combine_shares(list(sk_shares[d]))
        for a in active:  # a added +mask if a > d, -mask if a < d: take it back
            pair = expand_mask(_shared(sk1, public[a][0]), n, modulus_bits)
            total = (total - pair) & mod if a > d else (total + pair) & mod
    return total


def fresh_seed() -> bytes:
    """A private mask seed: 32 bytes from the OS's CSPRNG."""
    return os.urandom(32)


def threshold_for(parties: int, fraction: float) -> int:
    """Shares needed to rebuild a secret: ``max(2, ceil(fraction * parties))``."""
    return max(2, math.ceil(fraction * parties))
