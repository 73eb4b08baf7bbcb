"""The FedAvg family on adapters: FedAvg, FedProx, FedAvgM, FedAdam / FedYogi / FedAdagrad, FedMedian,
FedTrimmedAvg, with LoRA aggregation modes (FedIT averaging, FFA-LoRA, HetLoRA, FlexLoRA), and FLoRA (stacking).
Importing registers them."""

from fedpeft.algorithms.fedavg.config import (
    LORA_MODES,
    FedAvgConfig,
    FedAvgMConfig,
    FedOptConfig,
    FedProxConfig,
    FLoRAConfig,
    TrimmedMeanConfig,
)
from fedpeft.algorithms.fedavg.flora import FLoRA
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
    "FLoRA",
    "FLoRAConfig",
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
