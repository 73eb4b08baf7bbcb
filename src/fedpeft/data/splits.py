"""Deterministic train/evaluation splits for bundled datasets that ship without one.

Dolly-15K has no official split. We hold out every row whose instruction hashes into bucket 0 of 10
(crc32, stable across Python versions and machines), so the pretraining script and the data loaders
agree on which rows are never trained on.
"""

from __future__ import annotations

import zlib

DOLLY_HELDOUT_BUCKETS = 10


def dolly_is_heldout(instruction: str) -> bool:
    """Return True when a Dolly row belongs to the held-out (test) split.

    Parameters
    ----------
    instruction:
        The row's ``instruction`` field.
    """
    return zlib.crc32(instruction.encode("utf-8")) % DOLLY_HELDOUT_BUCKETS == 0


NI_HELDOUT_BUCKETS = 5


def ni_task_is_heldout(task: str) -> bool:
    """Return True when a Natural Instructions task is held out whole, for unseen-task evaluation.

    About one task in five: the crc32 of the task name (the file stem) in bucket 0 of 5. On the 36 bundled v1
    tasks this holds out 6 tasks, from five source datasets.

    Parameters
    ----------
    task:
        The task name (task file name without ``.json``).
    """
    return zlib.crc32(task.encode("utf-8")) % NI_HELDOUT_BUCKETS == 0
