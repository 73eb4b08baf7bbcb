"""Secure aggregation for the FedAvg family: the SecAgg exchanges of :mod:`fedpeft.privacy.secagg` over any
:class:`~fedpeft.algorithms.base.Grid` (``local``, ``flower-sim``, ``deploy`` alike), and the client's handlers.

A round with ``privacy.secure_aggregation`` (the key upload rides on the training reply, so three extra exchanges):

1. ``train`` (config ``secagg``): the client trains as usual but keeps its update in its state; it replies with
   two fresh public keys, its example count and loss (those two in the clear, as in plain FedAvg).
2. ``train.secagg_shares``: every party's public keys -> each party's encrypted Shamir shares for every other party.
3. ``train.secagg_masked``: the shares addressed to it and its weight factor -> its masked, quantized vector
   ``[update * factor, factor * clip]`` modulo ``2^secagg_modulus_bits`` (int32 on the wire, 4 bytes a value like
   fp32, when the modulus has at most 32 bits; int64 above).
4. ``train.secagg_unmask``: who is active / dropped -> its shares of the active parties' mask seeds and the dropped
   parties' ``sk1``; the client then forgets every secret of the round.

The server divides the unmasked sum of ``update * factor`` by the sum of ``factor``: the example-weighted mean of
the surviving clients' updates (``factor`` = examples / the round's largest count; 1 for an unweighted mean), up to
the quantization error. Secrets and the held update live in the client's state under ``secagg/`` only between
the exchanges of one round; a checkpoint is taken between rounds, when none is left.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from fedpeft.algorithms.aggregation import State
from fedpeft.algorithms.base import ClientApp, ClientContext, Msg, Reply
from fedpeft.privacy import secagg

if TYPE_CHECKING:
    from fedpeft.algorithms.base import Algorithm, Grid

app = ClientApp("secagg")
KIND = "secagg"  #: payload kind of keys, ciphertexts, masked vectors and shares (lossless; apart in the ledger)
PREFIX = "secagg/"  #: client state keys of the running protocol, all removed at its end
MAX_KEY_BYTES = 1024  #: a serialized EC public key is ~120 bytes; anything larger is refused before use


def levels(bits: int) -> int:
    """Quantization levels: ``2^bits - 1``, odd, so that 0.0 falls on a level and a coordinate every client left
    at zero sums to exactly zero (what FedAvg gives)."""
    return 2**bits - 1


def wire_dtype(modulus_bits: int) -> torch.dtype:
    """What a masked vector travels as: int32 (4 bytes, fp32's size) when values fit in 32 bits, else int64."""
    return torch.int32 if modulus_bits <= 32 else torch.int64


def pack(values: Tensor, modulus_bits: int) -> Tensor:
    """(D,) int64 in ``[0, 2^bits)`` -> the wire dtype (int32 holds the low 32 bits as two's complement)."""
    if wire_dtype(modulus_bits) == torch.int64:
        return values
    return torch.where(values >= 2**31, values - 2**32, values).to(torch.int32)


def unpack(values: Tensor) -> Tensor:
    """Inverse of :func:`pack`: -> (D,) int64 in ``[0, 2^bits)``."""
    return values.to(torch.int64) & 0xFFFFFFFF if values.dtype == torch.int32 else values


def to_tensor(data: bytes) -> Tensor:
    """bytes -> (len,) uint8 (what travels and what client state holds)."""
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).clone() if data else torch.zeros(0, dtype=torch.uint8)


def to_bytes(t: Tensor) -> bytes:
    """(len,) uint8 -> bytes."""
    if t.dtype != torch.uint8 or t.dim() != 1:
        raise ValueError(f"expected a 1-D uint8 tensor of bytes, got {t.dtype} {tuple(t.shape)}")
    return t.numpy().tobytes()


def _msg(action: str, arrays: Mapping[str, Tensor], config: Mapping[str, Any] | None = None) -> Msg:
    return Msg(action, dict(arrays), dict(config or {}), kinds={k: KIND for k in arrays})


def flatten(state: State) -> Tensor:
    """The state's tensors, in key order, as one (D,) float64 vector."""
    return (
        torch.cat([state[k].detach().reshape(-1).to(torch.float64) for k in sorted(state)]) if state else torch.zeros(0)
    )


def unflatten(vec: Tensor, template: State) -> State:
    """Inverse of :func:`flatten` onto ``template``'s keys, shapes and dtypes."""
    out: State = {}
    at = 0
    for k in sorted(template):
        n = template[k].numel()
        out[k] = vec[at : at + n].reshape(template[k].shape).to(template[k].dtype)
        at += n
    if at != vec.numel():
        raise ValueError(f"vector of {vec.numel()} values for a state of {at}")
    return out


# ------------------------------------------------------------------------------------------------------ the client
def clear(state: dict[str, Any]) -> None:
    """Forget every secret and held vector of the protocol."""
    for key in [k for k in state if k.startswith(PREFIX)]:
        del state[key]


def _keys(state: Mapping[str, Any]) -> secagg.Keys:
    return secagg.Keys(*(to_bytes(state[PREFIX + name]) for name in ("sk1", "pk1", "sk2", "pk2")))


def _public(arrays: Mapping[str, Tensor]) -> dict[int, tuple[bytes, bytes]]:
    parties = sorted(int(k.split("/")[1]) for k in arrays if k.startswith("pk1/"))
    return {p: (to_bytes(arrays[f"pk1/{p}"]), to_bytes(arrays[f"pk2/{p}"])) for p in parties}


def hold(ctx: ClientContext, update: State, metrics: Mapping[str, float]) -> Msg:
    """Step 1 on the client (from the ``train`` handler): keep ``update`` in the state, make two key pairs, and
    reply with the public keys (and the usual metrics, in the clear)."""
    clear(ctx.state)
    keys = secagg.make_keys()
    ctx.state[PREFIX + "update"] = flatten(update).to(torch.float32)  # (D,)
    for name in ("sk1", "pk1", "sk2", "pk2"):
        ctx.state[PREFIX + name] = to_tensor(getattr(keys, name))
    msg = _msg("train", {"pk1": to_tensor(keys.pk1), "pk2": to_tensor(keys.pk2)})
    msg.metrics = dict(metrics)
    return msg


@app.on("train.secagg_shares")
def shares_handler(ctx: ClientContext, msg: Msg) -> Msg:
    """Step 2: split a fresh mask seed and ``sk1`` among the parties, encrypt each share for its holder."""
    me, keys, public = ctx.client_id, _keys(ctx.state), _public(msg.arrays)
    threshold = int(msg.config["threshold"])
    floor = secagg.threshold_for(len(public), ctx.cfg.privacy.secagg_threshold)
    if threshold < floor:  # the run's own setting, not the server's word, decides how many shares a secret needs
        raise ValueError(f"threshold {threshold} below the run's {floor} for {len(public)} parties")
    seed = secagg.fresh_seed()
    out, own = secagg.encrypt_shares(me, keys, seed, public, threshold)
    ctx.state[PREFIX + "seed"] = to_tensor(seed)
    ctx.state[PREFIX + "threshold"] = threshold
    ctx.state[f"{PREFIX}share_b/{me}"], ctx.state[f"{PREFIX}share_sk/{me}"] = to_tensor(own[0]), to_tensor(own[1])
    return _msg("train.secagg_shares", {f"ct/{dst}": to_tensor(ct) for dst, ct in out.items()})


@app.on("train.secagg_masked")
def masked_handler(ctx: ClientContext, msg: Msg) -> Msg:
    """Step 3: keep the shares the others sent; send ``[update * factor, factor * clip]`` quantized and masked."""
    priv = ctx.cfg.privacy
    me, keys, state = ctx.client_id, _keys(ctx.state), ctx.state
    public = _public(msg.arrays)  # every party that shared, this one included (the server resends the keys)
    if public.get(me) != (keys.pk1, keys.pk2):
        raise ValueError(f"party {me}: the key list does not hold this party's own public keys")
    cts = {int(k.split("/")[1]): to_bytes(v) for k, v in msg.arrays.items() if k.startswith("ct/")}
    for src, (b_share, sk_share) in secagg.open_shares(me, keys, public, cts).items():
        state[f"{PREFIX}share_b/{src}"], state[f"{PREFIX}share_sk/{src}"] = to_tensor(b_share), to_tensor(sk_share)
    factor = float(msg.config["factor"])
    if not 0 < factor <= 1:
        raise ValueError(f"weight factor {factor} outside (0, 1]")
    update = state.pop(PREFIX + "update").to(torch.float64)  # (D,)
    vec = torch.cat([update * factor, torch.tensor([factor * priv.secagg_clip], dtype=torch.float64)])  # (D+1,)
    q = secagg.quantize(vec, priv.secagg_clip, levels(priv.secagg_bits), ctx.generator(int(msg.config["round"]), KIND))
    neighbours = sorted({me, *cts})
    masked = secagg.mask_vector(
        me, q, to_bytes(state[PREFIX + "seed"]), keys, public, neighbours, priv.secagg_modulus_bits
    )
    return _msg("train.secagg_masked", {"masked": pack(masked, priv.secagg_modulus_bits)})


@app.on("train.secagg_unmask")
def unmask_handler(ctx: ClientContext, msg: Msg) -> Msg:
    """Step 4: shares of the active parties' seeds and of the dropped parties' ``sk1``; then forget the round."""
    active = [int(x) for x in msg.arrays["active"].tolist()]
    dead = [int(x) for x in msg.arrays["dead"].tolist()]
    if set(active) & set(dead):
        raise ValueError("a party cannot be both active and dropped: that would reveal both of its secrets")
    state = ctx.state
    threshold = int(state[PREFIX + "threshold"])  # as agreed when the shares were made
    if len(active) < threshold:
        raise ValueError(f"{len(active)} active parties, fewer than the threshold {threshold}")
    try:
        out = {f"b/{a}": state[f"{PREFIX}share_b/{a}"] for a in active}
        out.update({f"sk/{d}": state[f"{PREFIX}share_sk/{d}"] for d in dead})
    except KeyError as exc:
        raise ValueError(f"no share held for party {exc}") from exc
    clear(state)
    return _msg("train.secagg_unmask", out)


# ------------------------------------------------------------------------------------------------------ the server
def _bytes_field(arrays: Mapping[str, Tensor], key: str, limit: int | None = None) -> Tensor:
    t = arrays.get(key)
    if t is None or t.dtype != torch.uint8 or t.dim() != 1 or t.numel() == 0 or (limit and t.numel() > limit):
        raise ValueError(f"{key!r}: expected 1-D uint8 bytes" + (f" of at most {limit}" if limit else ""))
    return t


def _ok(alg: Algorithm, rnd: int, replies: Sequence[Reply], check: Any) -> dict[int, Msg]:
    """The replies that arrived and pass ``check(client, msg)``; failures and rejections logged."""
    good: dict[int, Msg] = {}
    for r in replies:
        if not r.ok or r.msg is None:
            alg.log_failure(rnd, r)
            continue
        try:
            check(r.client_id, r.msg)
        except (ValueError, KeyError, TypeError) as exc:
            alg.server.log("rejected", round=rnd, client=r.client_id, reason=f"secure aggregation: {exc}")
            continue
        good[r.client_id] = r.msg
    return good


def secure_mean(
    alg: Algorithm, rnd: int, grid: Grid, msgs: Sequence[tuple[int, Msg]], template: State, weighted: bool
) -> tuple[State | None, dict[str, Any]]:
    """Run one round's training and SecAgg exchanges; return the weighted mean update of the surviving clients
    (None when fewer than the threshold survive: the round is skipped) and the round's info."""
    priv, timeout = alg.cfg.privacy, alg.cfg.federation.timeout
    dim = sum(v.numel() for v in template.values())
    modulus = 2**priv.secagg_modulus_bits
    info: dict[str, Any] = {"sampled": [c for c, _ in msgs]}
    sent = [(c, Msg(m.action, m.arrays, {**m.config, "secagg": True}, kinds=m.kinds)) for c, m in msgs]

    def check_keys(c: int, m: Msg) -> None:
        _bytes_field(m.arrays, "pk1", MAX_KEY_BYTES), _bytes_field(m.arrays, "pk2", MAX_KEY_BYTES)
        num = m.metrics.get("num_examples", 0)
        if not (isinstance(num, (int, float)) and num > 0):
            raise ValueError(f"num_examples={num!r}")

    trained = _ok(alg, rnd, grid.send_and_receive(sent, round=rnd, timeout=timeout), check_keys)
    threshold = secagg.threshold_for(len(trained), priv.secagg_threshold)
    secagg_info: dict[str, Any] = {"parties": len(trained), "threshold": threshold}
    info["secagg"] = secagg_info
    if trained:
        total = sum(float(m.metrics["num_examples"]) for m in trained.values())
        info["train_loss"] = (
            sum(float(m.metrics.get("loss", 0.0)) * float(m.metrics["num_examples"]) for m in trained.values()) / total
        )
    for c, m in trained.items():
        alg.server.log("client_train", round=rnd, client=c, **dict(m.metrics))
    info["reported"] = {c: dict(m.metrics) for c, m in trained.items()}  # popped by the caller (DP accounting)
    if len(trained) < 2:
        secagg_info["aborted"] = "fewer than 2 parties"
        return None, info

    keys = {f"{name}/{c}": m.arrays[name] for c, m in trained.items() for name in ("pk1", "pk2")}
    parties = sorted(trained)

    def check_shares(c: int, m: Msg) -> None:
        want = {f"ct/{p}" for p in parties if p != c}
        if set(m.arrays) != want:
            raise ValueError(f"ciphertexts for {sorted(m.arrays)}, expected {sorted(want)}")
        for k in want:
            _bytes_field(m.arrays, k, 64 * MAX_KEY_BYTES)

    share_msgs = [(c, _msg("train.secagg_shares", keys, {"round": rnd, "threshold": threshold})) for c in parties]
    shared = _ok(alg, rnd, grid.send_and_receive(share_msgs, round=rnd, timeout=timeout), check_shares)
    top = max(float(trained[c].metrics["num_examples"]) for c in shared) if shared else 1.0
    factors = {c: float(trained[c].metrics["num_examples"]) / top if weighted else 1.0 for c in shared}

    def check_masked(c: int, m: Msg) -> None:
        y = m.arrays.get("masked")
        want = wire_dtype(priv.secagg_modulus_bits)
        if y is None or set(m.arrays) != {"masked"} or y.dtype != want or tuple(y.shape) != (dim + 1,):
            raise ValueError(f"expected only 'masked', {want} of shape ({dim + 1},)")
        if int(unpack(y).min()) < 0 or int(unpack(y).max()) >= modulus:
            raise ValueError("masked values outside [0, modulus)")

    masked_msgs = []
    for c in sorted(shared):
        arrays = {f"ct/{s}": shared[s].arrays[f"ct/{c}"] for s in sorted(shared) if s != c}
        arrays.update({f"{name}/{s}": keys[f"{name}/{s}"] for s in sorted(shared) for name in ("pk1", "pk2")})
        masked_msgs.append((c, _msg("train.secagg_masked", arrays, {"round": rnd, "factor": factors[c]})))
    masked = _ok(alg, rnd, grid.send_and_receive(masked_msgs, round=rnd, timeout=timeout), check_masked)
    active, dead = sorted(masked), sorted(set(shared) - set(masked))
    secagg_info.update(shared=len(shared), masked=len(masked), dropped=dead)
    if len(active) < threshold:
        secagg_info["aborted"] = f"{len(active)} masked vectors, threshold {threshold}"
        return None, info

    def check_unmask(c: int, m: Msg) -> None:
        want = {f"b/{a}" for a in active} | {f"sk/{d}" for d in dead}
        if set(m.arrays) != want:
            raise ValueError(f"shares for {sorted(m.arrays)}, expected {sorted(want)}")
        for k in want:
            _bytes_field(m.arrays, k, 4 * MAX_KEY_BYTES)

    lists = {"active": torch.tensor(active, dtype=torch.int64), "dead": torch.tensor(dead, dtype=torch.int64)}
    unmask_msgs = [(c, _msg("train.secagg_unmask", lists, {"round": rnd, "threshold": threshold})) for c in active]
    revealed = _ok(alg, rnd, grid.send_and_receive(unmask_msgs, round=rnd, timeout=timeout), check_unmask)
    secagg_info["unmasked_by"] = len(revealed)
    public = {c: (to_bytes(keys[f"pk1/{c}"]), to_bytes(keys[f"pk2/{c}"])) for c in parties}
    try:
        total_q = secagg.unmask_sum(
            {a: unpack(masked[a].arrays["masked"]) for a in active},
            dead,
            {a: [to_bytes(m.arrays[f"b/{a}"]) for m in revealed.values()] for a in active},
            {d: [to_bytes(m.arrays[f"sk/{d}"]) for m in revealed.values()] for d in dead},
            public,
            threshold,
            priv.secagg_modulus_bits,
        )
    except ValueError as exc:  # too few shares, or shares that do not combine
        secagg_info["aborted"] = str(exc)
        return None, info
    summed = secagg.dequantize_sum(total_q, len(active), priv.secagg_clip, levels(priv.secagg_bits))  # (D+1,) float64
    weight = float(summed[-1]) / priv.secagg_clip  # sum of the active parties' factors
    expected = sum(factors[a] for a in active)
    if not math.isfinite(weight) or abs(weight - expected) > 1e-3 * max(1.0, expected):
        secagg_info["aborted"] = f"unmasked weight {weight:.6f} != the active parties' {expected:.6f}"
        return None, info
    info["clients"] = active
    return unflatten(summed[:-1] / expected, template), info
