"""FedsLLM's ``[algorithm]`` table."""

from __future__ import annotations

from dataclasses import dataclass

from fedpeft.algorithms.fedavg.config import FedAvgConfig
from fedpeft.errors import ConfigError


@dataclass
class FedsLLMConfig(FedAvgConfig):
    """FedsLLM (Zhao et al., arXiv 2407.09250): federated split learning with LoRA.

    ``cut``: the number of decoder layers on the clients (embeddings and layers [0, cut) with their adapter); the
    main server runs layers [cut, L), the final norm and the LM head with theirs. ``None``: the middle, L // 2.
    ``u_shaped``: keep the final norm, the LM head and the labels on the clients (a U-shaped split): the main
    server runs only layers [cut, L) and sees neither labels nor outputs; two exchanges per micro-batch instead of
    one (the server's output down, its gradient up).
    ``plan``: a plan JSON written by ``fedpeft plan --json`` whose cut (and LoRA rank, which must equal
    ``adapter.r``) the run uses; exclusive with ``cut``.
    The FedAvg fields apply to both halves: the federated server averages the clients' client-side updates, the
    main server its per-client copies of the server-side adapter, with the same weights, every round.
    """

    cut: int | None = None
    u_shaped: bool = False
    plan: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.cut is not None and (isinstance(self.cut, bool) or not isinstance(self.cut, int) or self.cut < 0):
            raise ConfigError("algorithm.cut", self.cut, "an integer >= 0 (decoder layers on the clients)")
        if self.cut is not None and self.plan is not None:
            raise ConfigError("algorithm.plan", self.plan, "omitted when algorithm.cut is set (the plan has a cut)")
        if self.client_ranks is not None:
            raise ConfigError("algorithm.client_ranks", self.client_ranks, "omitted (split training has one rank)")
