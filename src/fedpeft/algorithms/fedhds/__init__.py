"""FedHDS (Qin et al., Findings of ACL 2025, arXiv 2410.10926): data-efficient federated instruction tuning by
hierarchical coreset selection. Importing registers the ``fedhds`` algorithm."""

from fedpeft.algorithms.fedhds.config import FedHDSConfig
from fedpeft.algorithms.fedhds.server import FedHDS

__all__ = ["FedHDS", "FedHDSConfig"]
