"""Runtimes deliver an algorithm's messages: ``local`` (one process) and ``flower-sim`` (Flower's simulation engine)."""

from fedpeft.runtime.run import Session, run_federated

__all__ = ["Session", "run_federated"]
