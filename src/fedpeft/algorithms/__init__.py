"""Federated algorithms: the contract (:mod:`fedpeft.algorithms.base`), the registered algorithms, and the
server-side aggregation maths shared by all of them.

:mod:`fedpeft.algorithms.aggregation` holds state arithmetic, FedAvg / robust aggregators and the FedOpt server
optimizers; :mod:`fedpeft.algorithms.lora_aggregation` the LoRA-specific variants (FedIT, FFA-LoRA, FLoRA, HetLoRA,
FlexLoRA).
"""

from fedpeft.algorithms.aggregation import (
    SERVER_OPTIMIZERS,
    AggregationError,
    FedAdagrad,
    FedAdam,
    FedAvgM,
    FedAvgServer,
    FedYogi,
    ServerOptimizer,
    State,
    check_update,
    clip_update,
    coordinate_median,
    state_add,
    state_norm,
    state_scale,
    state_sub,
    trimmed_mean,
    weighted_average,
)
from fedpeft.algorithms.base import Algorithm, ClientApp, ClientContext, Grid, Msg, Reply, ServerContext
from fedpeft.algorithms.lora_aggregation import (
    average_ab,
    average_frozen_a,
    lora_deltas,
    lora_pairs,
    stack_lora,
    svd_reproject,
    truncate_to_rank,
    zero_pad_aggregate,
)


def load_builtin_algorithms() -> None:
    """Import the built-in algorithm packages (every subpackage of ``fedpeft.algorithms``, found on disk), which
    registers them (idempotent; :data:`fedpeft.registry.ALGORITHMS` does it on its first lookup anyway)."""
    from fedpeft.registry import ALGORITHMS

    ALGORITHMS.names()


def get_algorithm(name: str, field: str = "federation.algorithm") -> type[Algorithm]:
    """The registered algorithm class ``name``; an unknown name raises ConfigError listing the registered ones."""
    from fedpeft.registry import ALGORITHMS

    return ALGORITHMS.get(name, field)


__all__ = [
    "SERVER_OPTIMIZERS",
    "AggregationError",
    "Algorithm",
    "ClientApp",
    "ClientContext",
    "FedAdagrad",
    "FedAdam",
    "FedAvgM",
    "FedAvgServer",
    "FedYogi",
    "Grid",
    "Msg",
    "Reply",
    "ServerContext",
    "ServerOptimizer",
    "State",
    "average_ab",
    "average_frozen_a",
    "check_update",
    "clip_update",
    "coordinate_median",
    "get_algorithm",
    "load_builtin_algorithms",
    "lora_deltas",
    "lora_pairs",
    "stack_lora",
    "state_add",
    "state_norm",
    "state_scale",
    "state_sub",
    "svd_reproject",
    "trimmed_mean",
    "truncate_to_rank",
    "weighted_average",
    "zero_pad_aggregate",
]
