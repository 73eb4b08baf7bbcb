"""FL-TAC's ``[algorithm]`` table."""

from __future__ import annotations

from dataclasses import dataclass

from fedpeft.algorithms.fltac.cluster import SPACES
from fedpeft.algorithms.fltac.router import ROUTERS
from fedpeft.errors import ConfigError

K_SELECTIONS = ("fixed", "silhouette", "eigengap")
CLUSTER_ON = ("adapter", "update")


@dataclass
class FLTACConfig:
    """FL-TAC (Ping et al., arXiv 2404.15384): one adapter per client task, k-means on the server, cluster means.

    ``num_clusters``: K for k-means; 0 = the number of tasks in the job's evaluation data (the paper's known N).
    ``k_selection``: ``fixed`` (use ``num_clusters``), or choose K each round when the number of tasks is unknown:
    ``silhouette`` (best mean silhouette over K = 2..``max_clusters``) or ``eigengap`` (spectral eigengap).
    ``distance``: cluster the flattened adapters (``flat``: A and B, the paper), each LoRA module's ``B·A``
    (``product``: invariant to rescaling A against B; LoRA only), or the adapters' token profiles (``tokens``: the
    norm of each vocabulary column of the input-embedding LoRA, unit length; needs ``embed_tokens`` among LoRA's
    target modules; beyond the paper: tells apart tasks whose flattened updates point the same way, e.g. QNLI
    and RTE, which share the label words " yes" / " no").
    ``cluster_on``: what is clustered: the trained ``adapter`` (the paper) or its ``update`` this round (trained -
    received; beyond the paper: a member that was put in the wrong cluster is not held there by its starting point).
    ``normalize``: scale every vector to unit length before k-means (clusters by direction, not by how far an adapter
    moved; beyond the paper).
    ``weighted``: cluster means weighted by each adapter's number of training examples (the reference code);
    ``false`` = uniform mean (the paper's text).
    ``n_init``: k-means restarts (the paper: 10).
    ``min_task_examples``: a client trains an adapter for a local task only when it holds at least this many
    training examples of it (Dirichlet splits leave some clients 1-2 examples of a task; 1 = train them all).
    ``cluster_min_examples``: k-means places its centroids using only the adapters trained on at least this many
    examples; every adapter, these small ones included, then joins its nearest centroid (beyond the paper: an
    adapter trained on a handful of examples over-fits them, lies far from every other and would take a centroid
    of its own, merging two real tasks; 1 = fit on all, the paper).
    ``router``: how an unlabeled input picks its task adapter (beyond the paper): ``hidden`` (nearest centroid of
    the clients' mean prompt features under the frozen base) or ``tokens`` (the adapter owning the largest share
    of the input's prompt tokens, from the adapters' token profiles; needs LoRA on the input embedding; clients
    then send no feature at all).
    ``router_examples``: how many of a task's local examples (a seeded sample) a client averages into the task's
    ``hidden`` router feature, computed once on first contact.
    ``report_truth``: clients tell the server each slot's true task (on first contact), for the evaluation report
    only (purity, ARI, each task's own adapter, routing accuracy); clustering never reads it. Default (unset): on
    in simulation (``local``, ``flower-sim``, where everything is one machine anyway), off on ``deploy``, where
    true task ids never leave a client (and ``true`` is refused): the report then holds the routed scores only.
    Privacy: the ``tokens`` distance and router read the clients' vocabularies off their embedding-LoRA uploads
    (which tokens each task adapter moved): they are for research in simulation, not for private deployments.
    """

    num_clusters: int = 0
    k_selection: str = "fixed"
    max_clusters: int = 8
    distance: str = "flat"
    cluster_on: str = "adapter"
    normalize: bool = False
    weighted: bool = True
    n_init: int = 10
    min_task_examples: int = 8
    cluster_min_examples: int = 1
    router: str = "hidden"
    router_examples: int = 64
    report_truth: bool | None = None

    def __post_init__(self) -> None:
        if self.k_selection not in K_SELECTIONS:
            raise ConfigError("algorithm.k_selection", self.k_selection, K_SELECTIONS)
        if self.distance not in SPACES:
            raise ConfigError("algorithm.distance", self.distance, SPACES)
        if self.cluster_on not in CLUSTER_ON:
            raise ConfigError("algorithm.cluster_on", self.cluster_on, CLUSTER_ON)
        if self.num_clusters < 0:
            raise ConfigError("algorithm.num_clusters", self.num_clusters, "0 (= number of tasks) or a positive K")
        if self.max_clusters < 2:
            raise ConfigError("algorithm.max_clusters", self.max_clusters, "an integer >= 2")
        if self.n_init < 1:
            raise ConfigError("algorithm.n_init", self.n_init, "an integer >= 1")
        if self.router not in ROUTERS:
            raise ConfigError("algorithm.router", self.router, sorted(ROUTERS))
        if self.router_examples < 1:
            raise ConfigError("algorithm.router_examples", self.router_examples, "an integer >= 1")
        if self.min_task_examples < 1:
            raise ConfigError("algorithm.min_task_examples", self.min_task_examples, "an integer >= 1")
        if self.cluster_min_examples < 1:
            raise ConfigError("algorithm.cluster_min_examples", self.cluster_min_examples, "an integer >= 1")
