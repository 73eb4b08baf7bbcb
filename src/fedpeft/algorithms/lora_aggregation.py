"""Aggregation of LoRA adapters across clients (ALGORITHMS.md section 1).

A LoRA module adds ``ΔW = s · B · A`` to a frozen weight, with ``A`` of shape ``[r, in]``, ``B`` of shape
``[out, r]`` and scaling ``s`` (``alpha / r``, or ``alpha / sqrt(r)`` for rsLoRA). Averaging ``A`` and ``B``
separately is not averaging ``ΔW``: ``mean(B)·mean(A) != mean(B·A)``. This module offers the remedies of the
literature, all as pure functions over states keyed like PEFT's parameters
(``...q_proj.lora_A.default.weight`` / ``...q_proj.lora_B.default.weight``, or without the adapter name as in saved
adapters; embedding LoRA ``lora_embedding_A/B`` and conv LoRA ``[r, in, kh, kw]`` / ``[out, r, 1, 1]`` too):

==========================  ============  ==========================================================================
function                    paper         result
==========================  ============  ==========================================================================
:func:`average_ab`          FedIT         average A and B separately (inexact, the common baseline)
:func:`average_frozen_a`    FFA-LoRA      A shared and frozen, only B averaged (exact)
:func:`stack_lora`          FLoRA         concatenate along the rank (exact, rank grows to ``sum r_k``)
:func:`zero_pad_aggregate`  HetLoRA       heterogeneous ranks: zero-pad to ``max_rank`` and average
:func:`svd_reproject`       FlexLoRA      average the full ``ΔW_k``, truncated SVD back to a given rank
==========================  ============  ==========================================================================

Keys that are not LoRA factors (DoRA magnitudes, biases, classifier heads) are weighted-averaged in every function.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from fedpeft.algorithms.aggregation import (
    AggregationError,
    State,
    _check_keys,
    _check_tensor,
    _compute_dtype,
    _normalize_weights,
    weighted_average,
)

# `<module>.lora_A[.<adapter>][.weight]` and the embedding variant `<module>.lora_embedding_A[.<adapter>]`.
_A_KEY = re.compile(r"^(?P<prefix>.+)\.lora_(?P<emb>embedding_)?A(?P<suffix>(?:\.[^.]+)?(?:\.weight)?)$")
# Any key that is part of a LoRA product; used to reject unpaired factors where the product matters.
_FACTOR_KEY = re.compile(r"\.lora_(?:embedding_)?[AB](?:\.|$)")
_ADALORA_KEY = re.compile(r"\.lora_E(?:\.|$)")


def lora_pairs(state: Mapping[str, Tensor]) -> dict[str, tuple[str, str]]:
    """Find the LoRA factor pairs of a state.

    Parameters
    ----------
    state : dict[str, Tensor]
        An adapter state.

    Returns
    -------
    dict[str, tuple[str, str]]
        ``module_prefix -> (a_key, b_key)`` for every module whose A and B are both present, in key order. Keys
        outside the pairs (DoRA ``lora_magnitude_vector``, biases, an A without its B) are not listed.

    Raises
    ------
    AggregationError
        If one module carries two LoRA adapters (aggregate one adapter at a time).
    """
    pairs: dict[str, tuple[str, str]] = {}
    for key in state:
        match = _A_KEY.match(key)
        if match is None:
            continue
        prefix, emb, suffix = match["prefix"], match["emb"] or "", match["suffix"]
        b_key = f"{prefix}.lora_{emb}B{suffix}"
        if b_key not in state:
            continue
        if prefix in pairs:
            raise AggregationError(
                f"module {prefix!r} has two LoRA adapters ({pairs[prefix][0]!r} and {key!r}); "
                "aggregate one adapter at a time"
            )
        pairs[prefix] = (key, b_key)
    return pairs


def _others(state: Mapping[str, Tensor], pairs: Mapping[str, tuple[str, str]]) -> list[str]:
    paired = {k for ab in pairs.values() for k in ab}
    return [k for k in state if k not in paired]


def _average_others(
    states: Sequence[Mapping[str, Tensor]], others: Sequence[str], weights: Sequence[float] | None
) -> State:
    if not others:
        return {}
    return weighted_average([{k: s[k] for k in others} for s in states], weights)


def _check_lora_states(
    states: Sequence[Mapping[str, Tensor]], method: str
) -> tuple[dict[str, tuple[str, str]], list[str], list[list[int]]]:
    """Validate states for the product-based methods; return (pairs, other keys, ranks[client][pair])."""
    keys = _check_keys(states)
    pairs = lora_pairs(states[0])
    others = _others(states[0], pairs)
    adalora = [k for k in keys if _ADALORA_KEY.search(k)]
    if adalora:
        raise AggregationError(
            f"{method} needs plain LoRA products B·A but the state has AdaLoRA keys ({adalora[0]!r}); "
            "use weighted_average for AdaLoRA"
        )
    lonely = [k for k in others if _FACTOR_KEY.search(k)]
    if lonely:
        raise AggregationError(f"{method} needs both LoRA factors but {lonely[0]!r} has no matching A/B partner")
    if not pairs:
        raise AggregationError(f"{method}: the states contain no LoRA A/B pairs")
    ranks: list[list[int]] = []
    for i, state in enumerate(states):
        client_ranks = []
        for a_key, b_key in pairs.values():
            a, b = state[a_key], state[b_key]
            _check_tensor(a_key, a, f"states[{i}]")
            _check_tensor(b_key, b, f"states[{i}]")
            if a.dim() < 2 or b.dim() < 2 or a.shape[0] != b.shape[1]:
                raise AggregationError(
                    f"states[{i}]: {a_key!r} {tuple(a.shape)} and {b_key!r} {tuple(b.shape)} are not LoRA factors "
                    "(expected A [r, ...] and B [out, r, ...])"
                )
            ref_a, ref_b = states[0][a_key], states[0][b_key]
            if a.shape[1:] != ref_a.shape[1:] or b.shape[:1] + b.shape[2:] != ref_b.shape[:1] + ref_b.shape[2:]:
                raise AggregationError(
                    f"states[{i}]: LoRA factors {tuple(a.shape)}/{tuple(b.shape)} of {a_key!r}/{b_key!r} differ "
                    f"from states[0] ({tuple(ref_a.shape)}/{tuple(ref_b.shape)}) in a dimension other than the rank"
                )
            if a.dtype != ref_a.dtype or b.dtype != ref_b.dtype:
                raise AggregationError(f"states[{i}]: dtype of {a_key!r} or {b_key!r} differs from states[0]")
            client_ranks.append(int(a.shape[0]))
        ranks.append(client_ranks)
    return pairs, others, ranks


def _as_matrices(a: Tensor, b: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """View A as ``[r, in_flat]`` and B as ``[out, r]`` (conv LoRA: B must be ``[out, r, 1, 1]``)."""
    r = a.shape[0]
    if b.numel() != b.shape[0] * r:
        raise AggregationError(f"LoRA B of shape {tuple(b.shape)} is not a matrix [out, r] (or [out, r, 1, 1])")
    return a.reshape(r, -1).to(dtype), b.reshape(b.shape[0], r).to(dtype)


def _scale_factors(
    weights: Sequence[float] | None, scalings: Sequence[float] | None, target_scaling: float, n: int
) -> list[float]:
    """``w_k * s_k / target_scaling``: how much of client k's raw ``B_k·A_k`` enters the global ``B·A``."""
    ws = _normalize_weights(weights, n)
    if scalings is None:
        ss = [1.0] * n
    else:
        ss = [float(s) for s in scalings]
        if len(ss) != n:
            raise AggregationError(f"got {len(ss)} scalings for {n} states; pass one LoRA scaling per client")
        if any(not s > 0 or s == float("inf") for s in ss):
            raise AggregationError(f"scalings={ss!r} are invalid; expected finite numbers > 0")
    if not target_scaling > 0 or target_scaling == float("inf"):
        raise AggregationError(f"target_scaling={target_scaling!r} is invalid; expected a finite number > 0")
    return [w * s / float(target_scaling) for w, s in zip(ws, ss, strict=True)]


def lora_deltas(state: Mapping[str, Tensor], scaling: float = 1.0) -> dict[str, Tensor]:
    """The full weight update ``scaling · B · A`` of every LoRA module, as ``[out, in_flat]`` float32/64 matrices.

    For embedding LoRA the matrix is ``[embedding_dim, num_embeddings]`` (PEFT adds its transpose); for conv LoRA
    ``in_flat = in · kh · kw``. Used to merge a stacked (FLoRA) adapter into the base and in tests.
    """
    out: dict[str, Tensor] = {}
    for prefix, (a_key, b_key) in lora_pairs(state).items():
        a, b = _as_matrices(state[a_key], state[b_key], _compute_dtype(state[a_key].dtype))
        out[prefix] = scaling * (b @ a)  # [out, r] @ [r, in] -> [out, in]
    return out


def average_ab(states: Sequence[Mapping[str, Tensor]], weights: Sequence[float] | None = None) -> State:
    """FedIT: weighted average of A and B separately (and of every other key).

    Zhang et al., "Towards Building the Federated GPT: Federated Instruction Tuning", ICASSP 2024. This is plain
    FedAvg on the factors and therefore inexact: ``mean(B)·mean(A) = mean(B·A)`` only when the A's (or the B's)
    agree; the cross terms ``B_j·A_k`` pollute the product. It is the common baseline and needs equal ranks.
    """
    return weighted_average(states, weights)


def average_frozen_a(
    states: Sequence[Mapping[str, Tensor]], weights: Sequence[float] | None = None, *, atol: float = 0.0
) -> State:
    """FFA-LoRA: A is frozen and identical on every client, only B (and non-LoRA keys) are averaged.

    Sun, Li, Ding, Li, "Improving LoRA in Privacy-preserving Federated Learning", ICLR 2024. With a shared A,
    ``mean(B)·A = mean(B·A)`` exactly. States may omit the A's altogether (only B travels; clients regenerate A from
    the shared seed): then this is a weighted average of what was sent. When A's are present they must agree up to
    ``atol`` (default: bit-identical) and ``states[0]``'s A is returned.
    """
    keys = _check_keys(states)
    a_keys = [k for k in keys if _A_KEY.match(k)]
    for a_key in a_keys:
        ref = states[0][a_key]
        _check_tensor(a_key, ref, "states[0]")
        for i, state in enumerate(states[1:], start=1):
            a = state[a_key]
            _check_tensor(a_key, a, f"states[{i}]")
            same = a.shape == ref.shape and (
                torch.equal(a, ref) if atol == 0.0 else torch.allclose(a, ref, rtol=0.0, atol=atol)
            )
            if not same:
                raise AggregationError(
                    f"frozen-A aggregation needs identical A on every client, but states[{i}][{a_key!r}] differs from "
                    "states[0]; were clients initialised from different seeds?"
                )
    averaged = _average_others(states, [k for k in keys if k not in set(a_keys)], weights)
    return {k: states[0][k].clone() if k in a_keys else averaged[k] for k in keys}


def stack_lora(
    states: Sequence[Mapping[str, Tensor]],
    weights: Sequence[float] | None = None,
    *,
    scalings: Sequence[float] | None = None,
    target_scaling: float = 1.0,
) -> State:
    """FLoRA: stack client factors along the rank so that the global product is the exact weighted sum.

    Wang et al., "FLoRA: Federated Fine-Tuning Large Language Models with Heterogeneous Low-Rank Adaptations",
    NeurIPS 2024. With normalized weights ``w_k``::

        A = [A_1; A_2; ...; A_K]                          # [sum r_k, in]
        B = [c_1 B_1, c_2 B_2, ..., c_K B_K]              # [out, sum r_k],  c_k = w_k * s_k / target_scaling
        target_scaling · B · A = sum_k w_k · s_k · B_k · A_k   (exactly)

    Client ranks may differ. The returned rank is ``sum_k r_k``: it grows with the number of clients, so the federated
    core either merges ``target_scaling · B · A`` into the base weights and restarts the clients' LoRA (the paper's
    choice), or re-projects with :func:`svd_reproject`. ``scalings`` are the clients' LoRA scalings ``s_k`` (needed when
    ``alpha / r_k`` differs between clients); ``target_scaling`` is the scaling the stacked module will be used with.
    Non-LoRA keys are weighted-averaged.
    """
    pairs, others, _ = _check_lora_states(states, "stack_lora")
    coef = _scale_factors(weights, scalings, target_scaling, len(states))
    out: State = _average_others(states, others, weights)
    for a_key, b_key in pairs.values():
        dtype_a, dtype_b = states[0][a_key].dtype, states[0][b_key].dtype
        cd = _compute_dtype(dtype_b)
        # Folding the weight into B (not A) keeps each client's A row space untouched.
        out[a_key] = torch.cat([s[a_key] for s in states], dim=0).to(dtype_a)  # [sum r_k, in, ...]
        out[b_key] = torch.cat([s[b_key].to(cd) * c for s, c in zip(states, coef, strict=True)], dim=1).to(dtype_b)
    return {k: out[k] for k in states[0]}


def concat_lora(states: Sequence[Mapping[str, Tensor]]) -> State:
    """Concatenate LoRA states along the rank: ``B·A`` of the result is the sum of the states' ``B·A``.

    FLoRA sends a client every stacked round it has not merged yet as one adapter this way. Only LoRA factor keys
    are allowed (the stacks FLoRA keeps have no others). An empty sequence gives an empty state.
    """
    if not states:
        return {}
    pairs, others, _ = _check_lora_states(states, "concat_lora")
    if others:
        raise AggregationError(f"concat_lora takes LoRA factors only; got other keys {others[:3]}")
    out: State = {}
    for a_key, b_key in pairs.values():
        out[a_key] = torch.cat([s[a_key] for s in states], dim=0)  # [sum r, in]
        out[b_key] = torch.cat([s[b_key] for s in states], dim=1)  # [out, sum r]
    return {k: out[k] for k in states[0]}


def truncate_to_rank(state: Mapping[str, Tensor], rank: int) -> State:
    """Keep the first ``rank`` components of every LoRA pair: ``A[:rank]``, ``B[:, :rank]``; other keys copied.

    HetLoRA sends each client the first ``r_k`` components of the global adapter. Applied to the output of
    :func:`svd_reproject`, whose components are sorted by singular value, it yields the best rank-``rank``
    approximation (the FlexLoRA per-client re-projection) without a second SVD.
    """
    if not isinstance(rank, int) or rank < 1:
        raise AggregationError(f"rank={rank!r} is invalid; expected an int >= 1")
    pairs = lora_pairs(state)
    out = {k: t.clone() for k, t in state.items()}
    for a_key, b_key in pairs.values():
        r = state[a_key].shape[0]
        if rank > r:
            raise AggregationError(f"cannot truncate {a_key!r} of rank {r} to the larger rank {rank}")
        out[a_key] = state[a_key][:rank].clone()
        out[b_key] = state[b_key][:, :rank].clone()
    return out


def zero_pad_aggregate(
    states: Sequence[Mapping[str, Tensor]],
    weights: Sequence[float] | None = None,
    ranks: Sequence[int] | None = None,
    max_rank: int | None = None,
) -> State:
    """HetLoRA: zero-pad each client's factors to ``max_rank`` and average them.

    Cho, Liu, Joshi, "Heterogeneous LoRA for Federated Fine-tuning of On-Device Foundation Models", EMNLP 2024.
    ``A_k [r_k, in]`` gets zero rows and ``B_k [out, r_k]`` zero columns up to ``max_rank``, then everything is
    weighted-averaged; the result is the global adapter at ``max_rank``, from which :func:`truncate_to_rank` cuts each
    client's rank. Components beyond ``r_k`` are thereby shrunk by the clients that lack them; the paper's
    sparsity-weighted variant and rank self-pruning are not implemented here. Assumes all clients use the same LoRA
    scaling (e.g. a fixed ``alpha / max_rank``); otherwise use :func:`svd_reproject` with ``scalings``.

    Parameters
    ----------
    states : sequence of dict[str, Tensor]
        Client states; ranks may differ between clients.
    weights : sequence of float, optional
        Client weights (sample counts); uniform when ``None``.
    ranks : sequence of int, optional
        Each client's rank, checked against the shapes (every module of client k must have rank ``ranks[k]``).
        Inferred from the shapes when ``None``.
    max_rank : int, optional
        Rank of the result; at least every client's rank. Defaults to the largest client rank.
    """
    pairs, others, found = _check_lora_states(states, "zero_pad_aggregate")
    if ranks is not None:
        if len(ranks) != len(states):
            raise AggregationError(f"got {len(ranks)} ranks for {len(states)} states")
        for i, (r, fr) in enumerate(zip(ranks, found, strict=True)):
            if any(x != r for x in fr):
                raise AggregationError(f"ranks[{i}]={r} but states[{i}] has LoRA ranks {sorted(set(fr))}")
    largest = max(max(fr) for fr in found)
    if max_rank is None:
        max_rank = largest
    if not isinstance(max_rank, int) or max_rank < largest:
        raise AggregationError(
            f"max_rank={max_rank!r} is invalid; expected an int >= the largest client rank {largest}"
        )
    ws = _normalize_weights(weights, len(states))
    out: State = _average_others(states, others, weights)
    for a_key, b_key in pairs.values():
        for key, dim in ((a_key, 0), (b_key, 1)):
            ref = states[0][key]
            cd = _compute_dtype(ref.dtype)
            shape = list(ref.shape)
            shape[dim] = max_rank
            acc = torch.zeros(shape, dtype=cd, device=ref.device)  # [max_rank, in] or [out, max_rank]
            for s, w in zip(states, ws, strict=True):
                t = s[key]
                # Adding into the leading slice is the same as padding with zeros and adding.
                acc.narrow(dim, 0, t.shape[dim]).add_(t.to(cd), alpha=w)
            out[key] = acc.to(ref.dtype)
    return {k: out[k] for k in states[0]}


def svd_reproject(
    states: Sequence[Mapping[str, Tensor]],
    weights: Sequence[float] | None,
    rank: int,
    *,
    scalings: Sequence[float] | None = None,
    target_scaling: float = 1.0,
) -> State:
    """FlexLoRA: average the clients' full updates and re-project them onto rank ``rank`` by truncated SVD.

    Bai, Chen, Qian, Yao, Li, "Federated Fine-tuning of Large Language Models under Heterogeneous Tasks and Client
    Resources", NeurIPS 2024::

        ΔW = sum_k w_k · s_k · B_k · A_k                 # [out, in]
        ΔW ≈ U_r S_r V_r^T                                # best rank-r approximation (Eckart-Young)
        B = U_r · sqrt(S_r / target_scaling),  A = sqrt(S_r / target_scaling) · V_r^T

    so that ``target_scaling · B · A`` is the best rank-``rank`` approximation of ``ΔW`` and is exact when
    ``rank(ΔW) <= rank``. Components are sorted by singular value, so :func:`truncate_to_rank` of the result gives each
    client its own best rank-``r_k`` approximation. If ``ΔW`` has fewer than ``rank`` components the rest are zero.

    The dense ``[out, in]`` SVD is never formed: ``ΔW = B_stack · A_stack`` with the FLoRA stack of inner size
    ``R = sum r_k``; QR of both factors reduces the SVD to an ``R x R`` core, ``O((out + in) R^2)`` instead of
    ``O(out · in · min(out, in))``. Computed in float64 (the matrices are small) and cast back.

    Parameters
    ----------
    states : sequence of dict[str, Tensor]
        Client states; ranks may differ between clients.
    weights : sequence of float or None
        Client weights (sample counts); uniform when ``None``.
    rank : int
        Rank of the returned adapter.
    scalings : sequence of float, optional
        Each client's LoRA scaling ``s_k`` (``alpha / r_k``); 1 when ``None``.
    target_scaling : float
        The scaling the returned adapter will be used with.
    """
    if not isinstance(rank, int) or rank < 1:
        raise AggregationError(f"rank={rank!r} is invalid; expected an int >= 1")
    pairs, others, _ = _check_lora_states(states, "svd_reproject")
    coef = _scale_factors(weights, scalings, target_scaling, len(states))
    out: State = _average_others(states, others, weights)
    f64 = torch.float64
    for a_key, b_key in pairs.values():
        ref_a, ref_b = states[0][a_key], states[0][b_key]
        mats = [_as_matrices(s[a_key], s[b_key], f64) for s in states]
        a_stack = torch.cat([a for a, _ in mats], dim=0)  # [R, in]
        b_stack = torch.cat([b * c for (_, b), c in zip(mats, coef, strict=True)], dim=1)  # [out, R]
        q_b, r_b = torch.linalg.qr(b_stack)  # [out, kb], [kb, R]
        q_a, r_a = torch.linalg.qr(a_stack.T)  # [in, ka], [ka, R]
        u_c, sig, vh_c = torch.linalg.svd(r_b @ r_a.T, full_matrices=False)  # core [kb, ka]
        k = min(rank, sig.shape[0])
        root = sig[:k].sqrt()  # ΔW/target_scaling = (U sqrt S)(sqrt S V^T)
        b_new = torch.zeros(ref_b.shape[0], rank, dtype=f64, device=ref_b.device)  # [out, rank]
        a_new = torch.zeros(rank, a_stack.shape[1], dtype=f64, device=ref_a.device)  # [rank, in]
        b_new[:, :k] = (q_b @ u_c[:, :k]) * root
        a_new[:k] = root[:, None] * (vh_c[:k] @ q_a.T)
        out[a_key] = a_new.reshape(rank, *ref_a.shape[1:]).to(ref_a.dtype)
        out[b_key] = b_new.reshape(ref_b.shape[0], rank, *ref_b.shape[2:]).to(ref_b.dtype)
    return {k: out[k] for k in states[0]}
