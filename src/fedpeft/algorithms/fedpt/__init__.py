"""FedPT (Gao et al., arXiv 2410.00362): federated proxy-tuning of a large black-box model through a small one.
Importing registers the ``fedpt`` algorithm."""

from fedpeft.algorithms.fedpt.config import FedPTConfig
from fedpeft.algorithms.fedpt.proxy import LogitSource, LogitSum, proxy_logits
from fedpeft.algorithms.fedpt.server import FedPT, proxy_model

__all__ = ["FedPT", "FedPTConfig", "LogitSource", "LogitSum", "proxy_logits", "proxy_model"]
