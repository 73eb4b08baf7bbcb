"""FedHDS's selection maths as free functions on tensors (Qin et al., arXiv 2410.10926; ALGORITHMS.md section 3).

The two levels of the hierarchy:

- client: :func:`reduce` its examples' features to a few dimensions, :func:`local_clusters` (HDBSCAN), summarise
  each cluster by its membership-weighted centroid (:func:`weighted_centroids`) and remember its most central
  example (:func:`nearest_members`); optionally perturb the centroids (:func:`perturb`) before they leave;
- server: :func:`server_select`: HDBSCAN over every uploaded centroid, and in each server cluster the centroid
  nearest the cluster's centre is chosen; its owner trains on that local cluster's most central example.

Beyond the reference code: :func:`fit_projection` (a PCA the server fits on public anchor examples and broadcasts,
so that centroids of different clients live in one space; per-client t-SNE spaces are not comparable), the
fallbacks that let small clients contribute (see :func:`local_clusters`), and :func:`pooled_select` (the
centralized coreset used as an upper reference for selection quality).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

REDUCTIONS = ("tsne", "pca", "shared")
NOISE = -1  # HDBSCAN's label for points in no cluster


def one_thread() -> Any:
    """scikit-learn's OpenMP/BLAS pools limited to one thread. A client's t-SNE and HDBSCAN run on a few hundred
    points, where one thread is as fast as two on an idle machine, while two threads on cores shared with
    training (or other clients) spin-wait: 0.1 s became 5-25 s for 60 points on this 2-core machine."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def fit_projection(anchors: Tensor, dims: int) -> tuple[Tensor, Tensor]:
    """PCA of ``anchors`` [N, D]: (mean [D], components [dims, D]), each component's sign fixed so that its
    largest-magnitude coordinate is positive (SVD signs are arbitrary; a broadcast projection must be reproducible)."""
    if anchors.dim() != 2 or anchors.shape[0] < 2:
        raise ValueError(f"need at least 2 anchor rows [N, D] to fit a projection, got {tuple(anchors.shape)}")
    x = anchors.double()
    mean = x.mean(0)  # [D]
    _, _, vh = torch.linalg.svd(x - mean, full_matrices=False)  # vh [min(N, D), D]
    comps = vh[:dims]
    signs = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True)))  # [dims, 1]
    comps = comps * torch.where(signs == 0, torch.ones_like(signs), signs)
    if comps.shape[0] < dims:  # fewer anchors than dims: pad with zero directions (coordinates stay 0)
        comps = torch.cat([comps, comps.new_zeros(dims - comps.shape[0], comps.shape[1])])
    return mean.float(), comps.float()


def project(features: Tensor, mean: Tensor, components: Tensor) -> Tensor:
    """[n, D] -> [n, d] with a projection of :func:`fit_projection`."""
    if features.shape[1] != mean.shape[0]:
        raise ValueError(f"features have {features.shape[1]} columns, the projection expects {mean.shape[0]}")
    return ((features.double() - mean.double()) @ components.double().T).float()


def reduce(
    features: Tensor, method: str, *, dims: int = 2, seed: int = 0, projection: tuple[Tensor, Tensor] | None = None
) -> Tensor:
    """Reduce one client's features [n, D] to [n, dims].

    ``tsne``: t-SNE with perplexity ``min(30, n - 1)`` (the reference), seeded (the reference is not); a private
    space per client. ``pca``: this client's own PCA; also private. ``shared``: the server's ``projection``
    (:func:`fit_projection`), the same for every client. With fewer than 3 rows t-SNE is undefined and a local
    PCA is meaningless: such a client's rows are returned at the origin of a private space (``tsne`` / ``pca``)
    and it forms one cluster (:func:`local_clusters`).
    """
    if method not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {method!r}")
    n = features.shape[0]
    if method == "shared":
        if projection is None:
            raise ValueError("the shared reduction needs the server's projection")
        return project(features, *projection)
    if n < 3:
        return torch.zeros(n, dims)
    x = features.double().numpy()
    if method == "pca":
        mean, comps = fit_projection(features, dims)
        return project(features, mean, comps)
    from sklearn.manifold import TSNE

    tsne = TSNE(n_components=dims, perplexity=float(min(30, n - 1)), random_state=seed % 2**32, init="pca")
    with one_thread():
        return torch.from_numpy(tsne.fit_transform(x)).float()


@dataclass
class LocalClusters:
    """One client's clustering of its reduced points.

    ``labels`` [n]: cluster id per point (-1 = noise, never chosen); ``probs`` [n]: HDBSCAN membership strength;
    ``fallback``: True when the client was too small to cluster or HDBSCAN found no cluster, so all its points form
    cluster 0 with weight 1 (a client never drops out of selection for being small).
    """

    labels: Tensor
    probs: Tensor
    fallback: bool


def local_clusters(points: Tensor, min_cluster_size: int) -> LocalClusters:
    """HDBSCAN (scikit-learn) over one client's points [n, d].

    A client with fewer than ``min_cluster_size`` points (which the reference code skips, so it never trains), or
    whose points HDBSCAN calls all noise, becomes one cluster of all its points: its most central example can still
    be chosen by the server.
    """
    n = points.shape[0]
    if n == 0:
        raise ValueError("a client with no examples cannot be clustered")
    if n >= max(min_cluster_size, 2):
        from sklearn.cluster import HDBSCAN

        with one_thread():
            hdb = HDBSCAN(min_cluster_size=max(min_cluster_size, 2), copy=True).fit(points.double().numpy())
        labels = torch.from_numpy(hdb.labels_.astype(np.int64))
        if bool((labels >= 0).any()):
            return LocalClusters(labels, torch.from_numpy(hdb.probabilities_).float(), False)
    return LocalClusters(torch.zeros(n, dtype=torch.long), torch.ones(n), True)


def weighted_centroids(points: Tensor, labels: Tensor, probs: Tensor) -> tuple[Tensor, Tensor]:
    """(ids [m] int64, centroids [m, d]): each non-noise cluster's mean weighted by membership strength (a
    cluster whose weights are all zero falls back to its plain mean)."""
    ids = torch.unique(labels[labels != NOISE])  # sorted
    rows = []
    for cid in ids.tolist():
        members = labels == cid
        w = probs[members].double()
        w = w if float(w.sum()) > 0 else torch.ones_like(w)
        rows.append((points[members].double() * w[:, None]).sum(0) / w.sum())
    cents = torch.stack(rows).float() if rows else points.new_zeros(0, points.shape[1])
    return ids.long(), cents


def nearest_members(points: Tensor, labels: Tensor, ids: Tensor, centroids: Tensor) -> Tensor:
    """[m] int64: for each cluster ``ids[j]``, the index (into ``points``) of its member nearest ``centroids[j]``
    (ties: the lowest index)."""
    out = []
    for cid, centre in zip(ids.tolist(), centroids, strict=True):
        members = torch.nonzero(labels == cid).flatten()
        dist = (points[members].double() - centre.double()).norm(dim=1)
        out.append(int(members[int(dist.argmin())]))
    return torch.tensor(out, dtype=torch.long)


def perturb(centroids: Tensor, sigma: float, generator: torch.Generator) -> Tensor:
    """The paper's optional privacy step: ``tanh(c) + N(0, sigma^2)`` (bounded, then noised)."""
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    noise = torch.randn(centroids.shape, generator=generator, dtype=torch.float64) * sigma
    return (torch.tanh(centroids.double()) + noise).float()


@dataclass
class ServerSelection:
    """The server's choice over ``n`` uploaded centroids: ``chosen`` indices into them (one per server cluster;
    every centroid when HDBSCAN found no cluster, see :func:`server_select`), ``labels`` [n] (-1 = server noise)."""

    chosen: list[int]
    labels: Tensor
    fallback: bool


def server_select(centroids: Tensor, min_cluster_size: int = 2, keep_noise: bool = False) -> ServerSelection:
    """HDBSCAN over every uploaded centroid [n, d]; in each server cluster the member nearest the cluster's
    membership-weighted centre is chosen. Server noise is dropped (the reference) unless ``keep_noise``, then each
    noise centroid counts as its own cluster. When HDBSCAN finds no cluster at all (too few centroids, e.g. one
    client), every centroid is chosen: with no structure to exploit nothing is pruned."""
    n = centroids.shape[0]
    if n == 0:
        return ServerSelection([], torch.zeros(0, dtype=torch.long), False)
    clusters = local_clusters(centroids, min_cluster_size)
    if clusters.fallback:
        return ServerSelection(list(range(n)), torch.full((n,), NOISE, dtype=torch.long), True)
    ids, centres = weighted_centroids(centroids, clusters.labels, clusters.probs)
    chosen = nearest_members(centroids, clusters.labels, ids, centres).tolist()
    if keep_noise:
        chosen += torch.nonzero(clusters.labels == NOISE).flatten().tolist()
    return ServerSelection(sorted(chosen), clusters.labels, False)


def pooled_select(points: Tensor, sizes: Sequence[int], min_cluster_size: int) -> list[list[int]]:
    """The centralized coreset (upper reference): HDBSCAN over every client's reduced points pooled
    ([sum(sizes), d], client by client in order, ``sizes[c]`` rows each), the example nearest each cluster's
    weighted centre. Returns, per client, the sorted indices of its chosen examples."""
    if sum(sizes) != points.shape[0]:
        raise ValueError(f"sizes add up to {sum(sizes)} rows, points has {points.shape[0]}")
    clusters = local_clusters(points, min_cluster_size)
    ids, centres = weighted_centroids(points, clusters.labels, clusters.probs)
    picked = nearest_members(points, clusters.labels, ids, centres).tolist()
    bounds = np.cumsum([0, *sizes])
    out: list[list[int]] = [[] for _ in sizes]
    for row in sorted(picked):
        c = int(np.searchsorted(bounds, row, side="right") - 1)
        out[c].append(int(row - bounds[c]))
    return out
