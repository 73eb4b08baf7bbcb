"""The FedAvg family on adapters: FedAvg, FedProx, FedAvgM, FedAdam / FedYogi / FedAdagrad, FedMedian,
FedTrimmedAvg, with LoRA aggregation modes (FedIT averaging, FFA-LoRA, HetLoRA, FlexLoRA). Importing registers them."""

from fedpeft.algorithms.fedavg.config import (
    LORA_MODES,
    FedAvgConfig,
    FedAvgMConfig,
    FedOptConfig,
    FedProxConfig,
    TrimmedMeanConfig,
)
from fedpeft.algorithms.fedavg.server import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
)

__all__ = [
    "LORA_MODES",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgConfig",
    "FedAvgM",
    "FedAvgMConfig",
    "FedMedian",
    "FedOptConfig",
    "FedProx",
    "FedProxConfig",
    "FedTrimmedAvg",
    "FedYogi",
    "TrimmedMeanConfig",
]
