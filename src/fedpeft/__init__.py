"""fedpeft: federated parameter-efficient fine-tuning of language models on resource-constrained devices.

Public API (everything else is internal):

- configs: :class:`JobConfig`, :func:`load_config`
- models: :func:`load_model`, :func:`load_tokenizer`
- adapters: :class:`AdapterConfig`, :func:`attach_adapter`, :func:`adapter_state`, :func:`load_adapter_state`,
  :func:`count_trainable`, :func:`save_adapter`, :func:`load_saved_adapter`
- data: :func:`load_dataset`, :class:`PartitionConfig`, :func:`partition_dataset`
- training: :class:`TrainConfig`, :func:`train`, :func:`run_centralized`
"""

from fedpeft.adapters import (
    AdapterConfig,
    adapter_state,
    attach_adapter,
    count_trainable,
    load_adapter_state,
    load_saved_adapter,
    save_adapter,
)
from fedpeft.config import JobConfig, load_config
from fedpeft.data import PartitionConfig, load_dataset, partition_dataset
from fedpeft.models import load_model, load_tokenizer
from fedpeft.training.centralized import run_centralized
from fedpeft.training.loop import TrainConfig, train

__version__ = "0.1.0"

__all__ = [
    "AdapterConfig",
    "JobConfig",
    "PartitionConfig",
    "TrainConfig",
    "adapter_state",
    "attach_adapter",
    "count_trainable",
    "load_adapter_state",
    "load_config",
    "load_dataset",
    "load_model",
    "load_saved_adapter",
    "load_tokenizer",
    "partition_dataset",
    "run_centralized",
    "save_adapter",
    "train",
]
