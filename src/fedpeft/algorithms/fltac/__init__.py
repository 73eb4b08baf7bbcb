"""FL-TAC (Ping et al., arXiv 2404.15384): task-specific adapters clustered on the server, plus an inference router.
Importing registers the ``fltac`` algorithm."""

from fedpeft.algorithms.fltac.config import FLTACConfig
from fedpeft.algorithms.fltac.router import Router, TokenRouter, prompt_tokens
from fedpeft.algorithms.fltac.server import FLTAC
from fedpeft.training.features import prompt_features  # re-exported: the router's feature, documented here

__all__ = ["FLTAC", "FLTACConfig", "Router", "TokenRouter", "prompt_features", "prompt_tokens"]
