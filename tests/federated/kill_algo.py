"""A plugin for the kill-and-resume test: FedAdam that can SIGKILL its own process at a chosen point.

``test_fedadam_killable`` is FedAdam unchanged unless the environment variable ``FEDPEFT_TEST_KILL_AT_ROUND`` names a
round ``N``: then the server process kills itself with SIGKILL right after round ``N``'s client updates were
collected and applied, before round ``N`` is evaluated, logged or checkpointed. At that moment the checkpoint of
round ``N - 1`` is on disk, ``metrics.jsonl`` already holds round ``N``'s ``client_train`` lines (which a resume must
cut off), and the server optimizer's moments in memory are one step ahead of the checkpoint's. The reference run and
the resumed run use the same class without the variable, so the three runs differ by the kill only.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from fedpeft.algorithms.base import Grid
from fedpeft.algorithms.fedavg import FedAdam
from fedpeft.registry import ALGORITHMS, register_algorithm

NAME = "test_fedadam_killable"
KILL_ENV = "FEDPEFT_TEST_KILL_AT_ROUND"

if NAME not in ALGORITHMS:

    @register_algorithm(NAME)
    class KillableFedAdam(FedAdam):
        def fit_round(self, rnd: int, grid: Grid) -> dict[str, Any]:
            info = super().fit_round(rnd, grid)
            if os.environ.get(KILL_ENV) == str(rnd):
                os.kill(os.getpid(), signal.SIGKILL)
            return info
