"""Runtimes deliver an algorithm's messages: ``local`` (one process) and ``flower-sim`` (Flower's simulation engine)."""

from fedpeft.runtime.run import run_federated
from fedpeft.runtime.session import Session

__all__ = ["Session", "run_federated"]
