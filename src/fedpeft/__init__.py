"""fedpeft: federated parameter-efficient fine-tuning of language models on resource-constrained devices.

Public API (everything else is internal):

- configs: :class:`JobConfig`, :func:`load_config`
- models: :func:`load_model`, :func:`load_tokenizer`
- adapters: :class:`AdapterConfig`, :func:`attach_adapter`, :func:`adapter_state`, :func:`load_adapter_state`,
  :func:`count_trainable`, :func:`save_adapter`, :func:`load_saved_adapter`
- data: :func:`load_dataset`, :class:`PartitionConfig`, :func:`partition_dataset`
- training: :class:`TrainConfig`, :func:`train`, :func:`run_centralized`
- federated: :class:`RunConfig`, :func:`run_federated`, :func:`get_algorithm`, :func:`export_run`
- reports: :func:`load_run`, :func:`write_report`, :func:`compare_runs`
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
from fedpeft.algorithms import get_algorithm
from fedpeft.config import JobConfig, RunConfig, load_config
from fedpeft.data import PartitionConfig, load_dataset, partition_dataset
from fedpeft.models import load_model, load_tokenizer
from fedpeft.reports import compare_runs, load_run, write_report
from fedpeft.runtime import run_federated
from fedpeft.runtime.export import export_run
from fedpeft.training.centralized import run_centralized
from fedpeft.training.loop import TrainConfig, train
from fedpeft.version import __version__ as __version__

__all__ = [
    "AdapterConfig",
    "JobConfig",
    "PartitionConfig",
    "RunConfig",
    "TrainConfig",
    "adapter_state",
    "attach_adapter",
    "compare_runs",
    "count_trainable",
    "export_run",
    "get_algorithm",
    "load_adapter_state",
    "load_config",
    "load_dataset",
    "load_model",
    "load_run",
    "load_saved_adapter",
    "load_tokenizer",
    "partition_dataset",
    "run_centralized",
    "run_federated",
    "save_adapter",
    "train",
    "write_report",
]
