"""FedHDS's ``[algorithm]`` table."""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedpeft.algorithms.fedavg.config import FedAvgConfig
from fedpeft.algorithms.fedhds.select import REDUCTIONS
from fedpeft.errors import ConfigError

CORESETS = ("hds", "random", "pooled", "all")
FEATURE_LAYERS = ("all", "last")
FEATURE_POOLS = ("last", "mean")


@dataclass
class FedHDSConfig(FedAvgConfig):
    """FedHDS (Qin et al., Findings of ACL 2025, arXiv 2410.10926): each round, hierarchical coreset selection
    (HDBSCAN within each client, then over every client's centroids on the server), then one epoch of LoRA on the
    selected examples and FedAvg weighted by coreset size. The FedAvg fields (``weighted``, ``server_lr``,
    ``lora_mode``) apply to the aggregation.

    ``coreset``: ``hds`` (the paper); ``random`` (baseline: per client, as many examples as ``hds`` chose for it
    this round, drawn uniformly; runs the ``hds`` selection to get the counts); ``pooled`` (reference: every
    client uploads every example's feature, the server clusters the pool in one space and picks the example
    nearest each cluster's centre: a centralized coreset, which reveals all features); ``all`` (baseline:
    full-data FedIT in the same harness, ``epochs`` over every local example, no selection).
    ``feature_model``: empty = features from the model being tuned with the current global adapter (FedHDS);
    a model name (e.g. ``tiny-small``) = a fixed separate model on every client (FedHDS-Turbo); examples are
    re-tokenized for it when its vocabulary differs.
    ``feature_layers``: ``all`` hidden states concatenated (embedding output included: the paper's inter-layer
    fusion) or the ``last`` only. ``feature_pool``: the ``last`` real token (the paper) or the ``mean`` over tokens.
    ``feature_response``: features of prompt + response + EOS (the reference's training format), or prompt only.
    ``reduction``: ``tsne`` (per client, the paper: private spaces the server nevertheless compares), ``pca``
    (per client; also private), ``shared`` (a PCA the server fits on ``[server.data]`` anchor examples and
    broadcasts, so every client's centroids live in one space). ``dims``: reduced dimensions (the paper: 2).
    ``min_cluster_size``: HDBSCAN's on the clients (the reference: 5 for NI, 2 for Dolly).
    ``server_min_cluster_size``: HDBSCAN's over the centroids (the reference hard-codes 2).
    ``keep_server_noise``: also select centroids HDBSCAN leaves in no server cluster (the reference drops them).
    ``centroid_noise``: sigma of the optional ``tanh(c) + N(0, sigma^2)`` before upload (0 = off).
    ``select_every``: 1 = select every round among that round's sampled clients (the paper); k > 1 = select over
    every client at rounds 1, 1 + k, ..., and train on the stored coresets in between (cheaper).
    ``epochs``: passes over the coreset per round at ``train.batch_size`` (``train.steps`` is not used).
    ``feature_batch_size``: examples per forward pass of feature extraction.
    """

    coreset: str = "hds"
    feature_model: str = ""
    feature_layers: str = "all"
    feature_pool: str = "last"
    feature_response: bool = True
    reduction: str = "tsne"
    dims: int = 2
    min_cluster_size: int = 5
    server_min_cluster_size: int = 2
    keep_server_noise: bool = False
    centroid_noise: float = 0.0
    select_every: int = 1
    epochs: int = 1
    feature_batch_size: int = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, value, allowed in (
            ("coreset", self.coreset, CORESETS),
            ("feature_layers", self.feature_layers, FEATURE_LAYERS),
            ("feature_pool", self.feature_pool, FEATURE_POOLS),
            ("reduction", self.reduction, REDUCTIONS),
        ):
            if value not in allowed:
                raise ConfigError(f"algorithm.{name}", value, allowed)
        for name in ("dims", "min_cluster_size", "select_every", "epochs", "feature_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"algorithm.{name}", value, "an integer >= 1")
        if not isinstance(self.server_min_cluster_size, int) or self.server_min_cluster_size < 2:
            raise ConfigError("algorithm.server_min_cluster_size", self.server_min_cluster_size, "an integer >= 2")
        sigma = self.centroid_noise
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not (sigma >= 0 and math.isfinite(sigma)):
            raise ConfigError("algorithm.centroid_noise", sigma, "a finite number >= 0")
        if self.client_ranks is not None:
            raise ConfigError("algorithm.client_ranks", self.client_ranks, "omitted (FedHDS trains one rank)")
