"""GLUE classification tasks (SST-2, QNLI, RTE) read from the TSV files of ../shared/data/glue.

Labels keep the GLUE class index; ``output`` is the label word of that index, so a causal LM is trained to say the
word and evaluated by comparing the scores of the label words (see :func:`fedpeft.data.tokenize.label_word_logits`).

References
----------
Wang et al., "GLUE: A Multi-Task Benchmark and Analysis Platform for Natural Language Understanding", ICLR 2019.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import datasets

from fedpeft.data.base import BUNDLED_DIR, DatasetSpec, data_dir_is_explicit, empty_columns, make_dataset, resolve_path
from fedpeft.data.readers import parse_label, read_tsv
from fedpeft.data.splits import qnli_is_test
from fedpeft.errors import ConfigError, DataFormatError
from fedpeft.registry import register_dataset


@dataclass(frozen=True)
class GlueTask:
    """How one GLUE task's TSV files map onto the canonical schema.

    Parameters
    ----------
    name:
        Registry name and ``task`` column value.
    folder:
        Folder under ``<data_dir>/glue``.
    files:
        Split name -> TSV file name.
    text_columns:
        TSV columns holding the text, in the order the input shows them.
    make_input:
        Builds the ``input`` string from the text columns.
    label_words:
        Word of each GLUE class index.
    instruction:
        Task instruction stored in every row (used by the generic instruction template).
    """

    name: str
    folder: str
    files: Mapping[str, str]
    text_columns: tuple[str, ...]
    make_input: Callable[[Mapping[str, str]], str]
    label_words: tuple[str, str]
    instruction: str


def read_glue_tsv(
    path: str | Path, task: GlueTask, keep: Callable[[Mapping[str, str]], bool] | None = None
) -> datasets.Dataset:
    """Read one GLUE TSV file into the canonical schema (only the rows ``keep`` accepts, when given).

    Raises
    ------
    DataFormatError
        A missing column, a wrong field count, an empty text field or a label that is not 0/1.
    """
    cols = empty_columns()
    allowed = range(len(task.label_words))
    for line, row in read_tsv(path, (*task.text_columns, "label")):
        for name in task.text_columns:
            # Strip: SST-2 sentences end with a space that would otherwise sit before "\nSentiment:".
            row[name] = row[name].strip()
            if not row[name]:
                raise DataFormatError(path, line, name, "empty")
        label = parse_label(row["label"], allowed, path, line)
        if keep is not None and not keep(row):
            continue
        cols["instruction"].append(task.instruction)
        cols["input"].append(task.make_input(row))
        cols["output"].append(task.label_words[label])
        cols["label"].append(label)
        cols["task"].append(task.name)
    return make_dataset(cols)


SST2 = GlueTask(
    name="sst2",
    folder="sst2",
    files={"train": "train.tsv", "dev": "dev.tsv", "test": "test_labeled.tsv"},
    text_columns=("sentence",),
    make_input=lambda row: row["sentence"],
    label_words=("negative", "positive"),  # GLUE SST-2: 1 = positive
    instruction="Classify the sentiment of the movie review as positive or negative.",
)

QNLI = GlueTask(
    name="qnli",
    folder="qnli",
    # "test": the rows of our GLUE-train subset whose question hashes into the held-out bucket (qnli_is_test);
    # "train" is the rest. GLUE's test labels are not public, and GLUE dev has been used for tuning.
    files={"train": "train_subset.tsv", "test": "train_subset.tsv", "dev": "dev.tsv"},
    text_columns=("question", "sentence"),
    make_input=lambda row: f"Question: {row['question']}\nSentence: {row['sentence']}",
    label_words=("yes", "no"),  # GLUE QNLI: 0 = entailment (the sentence answers the question)
    instruction="Does the sentence contain the answer to the question? Answer yes or no.",
)

RTE = GlueTask(
    name="rte",
    folder="rte",
    # "test": 249 rows of GLUE train kept out of train.tsv and out of all tuning (GLUE's test labels are not public)
    files={"train": "train.tsv", "test": "train_heldout.tsv", "dev": "dev.tsv"},
    text_columns=("premise", "hypothesis"),
    make_input=lambda row: f"Premise: {row['premise']}\nHypothesis: {row['hypothesis']}",
    label_words=("yes", "no"),  # GLUE RTE: 0 = entailment
    instruction="Does the premise entail the hypothesis? Answer yes or no.",
)

#: Bundled SST-2 files (flat, so the package-data glob ``data/bundled/*`` ships them).
SST2_BUNDLED = {"train": "sst2_train.tsv", "dev": "sst2_dev.tsv", "test": "sst2_test.tsv"}


def _glue_path(task: GlueTask, split: str, data_dir: str | Path | None) -> Path:
    return resolve_path(data_dir, f"glue/{task.folder}/{task.files[split]}")


def load_sst2(split: str, data_dir: str | Path | None = None) -> datasets.Dataset:
    """Load SST-2 (Socher et al., 2013; GLUE version): ``label`` 1 = positive, ``output`` the sentiment word.

    The splits fall back to the copy bundled in the package when no data directory is configured
    (the default job runs offline from a pip install); an explicit ``data_dir`` or ``$FEDPEFT_DATA_DIR`` is always
    used as given.

    Parameters
    ----------
    split:
        ``"train"`` (67,349 rows), ``"dev"`` (872: choose settings here) or ``"test"`` (1,821 labelled: report here).
    data_dir:
        Data directory with ``glue/sst2/``.
    """
    try:
        path = _glue_path(SST2, split, data_dir)
    except ConfigError:
        bundled = BUNDLED_DIR / SST2_BUNDLED.get(split, "")
        if data_dir_is_explicit(data_dir) or split not in SST2_BUNDLED or not bundled.is_file():
            raise
        path = bundled
    return read_glue_tsv(path, SST2)


def load_qnli(split: str, data_dir: str | Path | None = None) -> datasets.Dataset:
    """Load QNLI: ``label`` 0 = entailment -> ``"yes"``.

    ``"train"`` (9,482 rows) and ``"test"`` (993) split our 10,475-row subset of GLUE train by question
    (:func:`fedpeft.data.splits.qnli_is_test`: no question on both sides); ``"dev"`` is GLUE dev (5,463).
    """
    path = _glue_path(QNLI, split, data_dir)
    if split == "dev":
        return read_glue_tsv(path, QNLI)
    return read_glue_tsv(path, QNLI, keep=lambda row: qnli_is_test(row["question"]) == (split == "test"))


def load_rte(split: str, data_dir: str | Path | None = None) -> datasets.Dataset:
    """Load RTE: ``label`` 0 = entailment -> ``"yes"``; ``"train"`` (2,241) + ``"test"`` (249) are GLUE train,
    ``"dev"`` is GLUE dev (277)."""
    return read_glue_tsv(_glue_path(RTE, split, data_dir), RTE)


register_dataset(
    DatasetSpec(
        name="sst2",
        description="GLUE SST-2 movie-review sentiment (2 classes; bundled train/dev/test)",
        task_type="classification",
        splits=tuple(SST2.files),
        load=load_sst2,
        label_words=SST2.label_words,
        template="sst2",
    )
)
register_dataset(
    DatasetSpec(
        name="qnli",
        description="GLUE QNLI question/sentence entailment (2 classes)",
        task_type="classification",
        splits=tuple(QNLI.files),
        load=load_qnli,
        label_words=QNLI.label_words,
        template="qnli",
    )
)
register_dataset(
    DatasetSpec(
        name="rte",
        description="GLUE RTE premise/hypothesis entailment (2 classes)",
        task_type="classification",
        splits=tuple(RTE.files),
        load=load_rte,
        label_words=RTE.label_words,
        template="rte",
    )
)
