"""FL-TAC's server maths as free functions: adapter vectors, k-means, choosing K, cluster means, stable cluster ids,
and the clustering scores reported each round (purity, adjusted Rand index).

Everything takes and returns plain tensors / lists so it is tested on tiny inputs (tests/algorithms/test_fltac_math.py).
k-means, the silhouette and the adjusted Rand index come from scikit-learn (the paper's reference code uses its
``KMeans``); the rest is written here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from fedpeft.algorithms.aggregation import State, weighted_average
from fedpeft.algorithms.lora_aggregation import lora_deltas, lora_pairs

SPACES = ("flat", "product", "tokens")


def token_keys(state: Mapping[str, torch.Tensor]) -> list[str]:
    """The keys of the embedding LoRA's A factors (``...lora_embedding_A...``, [r, vocab]), sorted."""
    return sorted(k for k in state if ".lora_embedding_A" in k)


def adapter_vector(state: Mapping[str, torch.Tensor], space: str = "flat", scaling: float = 1.0) -> torch.Tensor:
    """One adapter as a 1-D float64 vector [D] for clustering.

    ``flat``: every tensor flattened, in sorted key order (the paper). ``product``: each LoRA module's
    ``scaling · B·A`` flattened (invariant to how the update is split between A and B, e.g. ``A·c, B/c``), followed
    by any non-LoRA tensors flattened. ``tokens`` (beyond the paper): the adapter's token profile, the norm of
    every vocabulary column of its input-embedding LoRA factor A ([r, vocab] -> [vocab]), scaled to unit length.
    A column moves only when its token occurs in the training data, in proportion to how often, so the profile is
    what the adapter was trained on, token by token: the instruction and the inputs of its task, whatever the
    shared direction the label-word loss gives every task's update (needs LoRA on the input embedding).
    """
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")
    if space == "flat":
        return torch.cat([state[k].detach().reshape(-1).double() for k in sorted(state)])
    if space == "tokens":
        keys = token_keys(state)
        if not keys:
            raise ValueError("the 'tokens' distance needs LoRA on the input embedding (lora_embedding_A)")
        profile = torch.cat([state[k].detach().double().norm(dim=0) for k in keys])  # [vocab]
        return profile / profile.norm().clamp_min(1e-12)
    pairs = lora_pairs(dict(state))
    if not pairs:
        raise ValueError("the 'product' distance needs LoRA adapters (lora_A / lora_B pairs)")
    in_pairs = {k for pair in pairs.values() for k in pair}
    deltas = lora_deltas(dict(state), scaling)  # prefix -> [out, in]
    parts = [deltas[p].reshape(-1).double() for p in sorted(deltas)]
    parts += [state[k].detach().reshape(-1).double() for k in sorted(state) if k not in in_pairs]
    return torch.cat(parts)


def kmeans(
    x: torch.Tensor, k: int, *, seed: int, n_init: int = 10, fit: Sequence[bool] | None = None
) -> tuple[list[int], float]:
    """k-means (k-means++ init, ``n_init`` restarts, scikit-learn) of the rows of ``x`` [n, D] -> (labels, inertia).

    ``fit`` [n] (optional): fit the centroids on the marked rows only and give every row its nearest centroid (an
    adapter trained on a handful of examples is an outlier that would otherwise take a centroid of its own); when
    fewer than ``k`` distinct rows are marked, all rows are used. ``inertia`` is over all rows either way. ``k`` is
    clipped to the number of distinct rows, so identical adapters never make empty clusters.
    """
    from sklearn.cluster import KMeans

    data = x.detach().double().cpu().numpy()
    distinct = n_distinct(data)
    k = max(1, min(k, distinct))
    if k == 1:
        return [0] * len(data), float(((data - data.mean(0)) ** 2).sum())
    chosen = data
    if fit is not None:
        mask = np.asarray(fit, dtype=bool)
        if mask.shape != (len(data),):
            raise ValueError(f"fit must mark each of the {len(data)} rows, got shape {mask.shape}")
        if n_distinct(data[mask]) >= k:
            chosen = data[mask]
    km = KMeans(n_clusters=k, n_init=n_init, random_state=seed % 2**32).fit(chosen)
    labels = km.predict(data)
    inertia = float(((data - km.cluster_centers_[labels]) ** 2).sum())
    return [int(v) for v in labels], inertia


def n_distinct(data: np.ndarray) -> int:
    """Distinct rows of ``data`` [n, D], by their bytes (np.unique(axis=0) sorts the rows as one wide structured
    type, slow for a few dozen adapters of ~10^5-10^6 values each)."""
    return len({row.tobytes() for row in np.ascontiguousarray(data)})


def silhouette(x: torch.Tensor, labels: Sequence[int]) -> float:
    """Mean silhouette coefficient (Euclidean) of a clustering of the rows of ``x``; -1 when undefined."""
    from sklearn.metrics import silhouette_score

    n_clusters = len(set(labels))
    if n_clusters < 2 or n_clusters >= len(labels):
        return -1.0
    return float(silhouette_score(x.detach().double().cpu().numpy(), list(labels)))


def eigengap_k(x: torch.Tensor, k_max: int) -> int:
    """Number of clusters by the eigengap heuristic: the largest gap among the smallest eigenvalues of the
    symmetric normalised Laplacian of a locally scaled Gaussian affinity (Zelnik-Manor & Perona, NeurIPS 2004:
    ``W_ij = exp(-d_ij^2 / (s_i s_j))``, ``s_i`` = distance to the ``ceil(log2 n)``-th nearest neighbour)."""
    n = x.shape[0]
    if n < 3:
        return n
    d = torch.cdist(x.double(), x.double())  # [n, n]
    knn = min(n - 1, max(1, math.ceil(math.log2(n))))
    scale = d.sort(dim=1).values[:, knn].clamp_min(1e-12)  # [n]; column 0 is the point itself
    w = torch.exp(-(d**2) / (scale[:, None] * scale[None, :]))
    w.fill_diagonal_(0.0)
    inv_sqrt = w.sum(1).clamp_min(1e-12).rsqrt()
    lap = torch.eye(n, dtype=torch.float64) - inv_sqrt[:, None] * w * inv_sqrt[None, :]
    eig = torch.linalg.eigvalsh(lap)  # ascending
    k_hi = min(k_max, n - 1)
    gaps = eig[1 : k_hi + 1] - eig[:k_hi]  # gaps[i] = λ_{i+1} - λ_i: choosing k = i + 1 clusters
    return int(gaps.argmax()) + 1


def choose_k(x: torch.Tensor, method: str, k_max: int, *, seed: int, n_init: int = 10) -> tuple[int, float]:
    """K for the rows of ``x`` when the number of tasks is unknown -> (k, score).

    ``silhouette``: k in 2..k_max with the best mean silhouette of its k-means clustering (score = that silhouette).
    ``eigengap``: :func:`eigengap_k` (score = 0.0).
    """
    n = x.shape[0]
    if method not in ("silhouette", "eigengap"):
        raise ValueError(f"method must be 'silhouette' or 'eigengap', got {method!r}")
    if method == "eigengap":
        return max(1, eigengap_k(x, k_max)), 0.0
    best_k, best = 1, -1.0
    for k in range(2, min(k_max, n - 1) + 1):
        labels, _ = kmeans(x, k, seed=seed, n_init=n_init)
        score = silhouette(x, labels)
        if score > best:
            best_k, best = k, score
    return best_k, best


def cluster_means(
    states: Sequence[State], labels: Sequence[int], weights: Sequence[float] | None = None
) -> dict[int, State]:
    """The mean adapter of each cluster: uniform (the paper) or weighted by ``weights`` (e.g. sample counts)."""
    out: dict[int, State] = {}
    for k in sorted(set(labels)):
        idx = [i for i, lab in enumerate(labels) if lab == k]
        w = [float(weights[i]) for i in idx] if weights is not None else None
        out[k] = weighted_average([states[i] for i in idx], w)
    return out


def match_clusters(new: torch.Tensor, old: torch.Tensor) -> list[int]:
    """Stable cluster ids: ``ids[i]`` is the old id whose centre is matched to new centre ``i`` (Hungarian on
    Euclidean distance); new centres left over (more clusters than before) get fresh ids after the old ones.

    ``new`` [k_new, D], ``old`` [k_old, D].
    """
    from scipy.optimize import linear_sum_assignment

    ids = [-1] * new.shape[0]
    if old.shape[0]:
        cost = torch.cdist(new.double(), old.double()).cpu().numpy()
        rows, cols = linear_sum_assignment(cost)
        for r, c in zip(rows, cols, strict=True):
            ids[int(r)] = int(c)
    fresh = old.shape[0]
    for i in range(len(ids)):
        if ids[i] < 0:
            ids[i] = fresh
            fresh += 1
    return ids


def contingency(labels: Sequence[int], truth: Sequence[int]) -> dict[int, dict[int, int]]:
    """``table[cluster][task]`` = how many points of ``task`` fell in ``cluster``."""
    table: dict[int, dict[int, int]] = {}
    for lab, t in zip(labels, truth, strict=True):
        row = table.setdefault(int(lab), {})
        row[int(t)] = row.get(int(t), 0) + 1
    return table


def purity(labels: Sequence[int], truth: Sequence[int]) -> float:
    """Fraction of points whose cluster's majority task is their own task (1.0 = every cluster is one task)."""
    if not labels:
        return 0.0
    return sum(max(row.values()) for row in contingency(labels, truth).values()) / len(labels)


def adjusted_rand(labels: Sequence[int], truth: Sequence[int]) -> float:
    """Adjusted Rand index of a clustering against the true tasks (1.0 = identical partitions, ~0 = chance)."""
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(list(truth), list(labels)))


def task_of_cluster(labels: Sequence[int], truth: Sequence[int], num_tasks: int) -> dict[int, int]:
    """For reporting: which cluster is each task's adapter, as ``{task: cluster}``: the cluster holding most of
    that task's adapters (the adapter most clients of the task train and receive). Two similar tasks can share one
    cluster; a task with no clustered adapter is absent."""
    table = contingency(labels, truth)
    out: dict[int, int] = {}
    for t in range(num_tasks):
        counts = {k: row.get(t, 0) for k, row in table.items() if row.get(t, 0) > 0}
        if counts:
            out[t] = min(counts, key=lambda k: (-counts[k], k))  # most members; ties -> lowest id
    return out
