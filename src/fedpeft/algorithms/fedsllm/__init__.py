"""FedsLLM (Zhao et al., arXiv 2407.09250): federated split learning with LoRA. Importing registers ``fedsllm``."""

from fedpeft.algorithms.fedsllm.config import FedsLLMConfig
from fedpeft.algorithms.fedsllm.server import FedsLLM
from fedpeft.algorithms.fedsllm.split import on_client, partition

__all__ = ["FedsLLM", "FedsLLMConfig", "on_client", "partition"]
