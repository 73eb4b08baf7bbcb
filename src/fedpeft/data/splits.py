"""Deterministic train/evaluation splits for datasets that ship without one.

QNLI's and RTE's GLUE test labels are not public: QNLI's test split is a hashed share of our GLUE-train subset
(:func:`qnli_is_test`), RTE's the 249 GLUE-train rows kept out of ``train.tsv``. Dolly-15K has no official split:
we hold out every row whose instruction hashes into bucket 0 of 10 (crc32, stable across Python versions and
machines), so the pretraining script and the data loaders agree on which rows are never trained on.
A user's file given without an evaluation file is split by :func:`heldout_rows` (a seeded share of each task).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

DOLLY_HELDOUT_BUCKETS = 10


def dolly_is_heldout(instruction: str) -> bool:
    """Return True when a Dolly row belongs to the held-out (test) split.

    Parameters
    ----------
    instruction:
        The row's ``instruction`` field.
    """
    return zlib.crc32(instruction.encode("utf-8")) % DOLLY_HELDOUT_BUCKETS == 0


QNLI_TEST_BUCKETS = 10


def qnli_is_test(question: str) -> bool:
    """Return True when a QNLI row of our GLUE-train subset belongs to our test split (GLUE's test labels are not
    public): the crc32 of the question in bucket 0 of 10, so every row sharing a question is on the same side.

    Parameters
    ----------
    question:
        The row's ``question`` field, stripped.
    """
    return zlib.crc32(question.encode("utf-8")) % QNLI_TEST_BUCKETS == 0


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


def heldout_rows(tasks: Sequence[str], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split row numbers into (train, held-out) when a user's file comes without an evaluation file.

    Stratified by task, so every task with at least two rows is evaluated (per-task scores need each task on both
    sides): a task of ``n`` rows gives ``max(1, round(fraction * n))`` rows to the held-out side, at most ``n - 1``,
    chosen by a permutation seeded by ``seed`` and the task name (the split of one task does not move when another
    task's rows change). Both lists are sorted; together they hold every row exactly once.

    Parameters
    ----------
    tasks:
        The ``task`` of each row.
    fraction:
        Share of each task held out, in (0, 1).
    seed:
        Seed of the choice; the same rows, fraction and seed always give the same split.
    """
    by_task: dict[str, list[int]] = {}
    for row, task in enumerate(tasks):
        by_task.setdefault(task, []).append(row)
    train: list[int] = []
    held: list[int] = []
    for task, rows in by_task.items():
        rng = np.random.default_rng([seed, zlib.crc32(task.encode("utf-8"))])
        order = rng.permutation(len(rows))
        n_held = min(len(rows) - 1, max(1, round(fraction * len(rows))))
        held.extend(rows[i] for i in order[:n_held])
        train.extend(rows[i] for i in order[n_held:])
    return sorted(train), sorted(held)
