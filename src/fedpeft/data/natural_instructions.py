"""Natural Instructions task files, v1 and v2 (Super-NaturalInstructions) layouts.

One JSON file is one task; ``task`` is the file stem, ``instruction`` the task definition (optionally followed by
positive examples), ``input`` the instance input and ``output`` its first reference output.

Layouts accepted
----------------
- v1 (Mishra et al., 2022): ``Definition`` a string; ``Examples: {"Positive Examples": [...]}``;
  ``Instances: [{"input", "output": [...]}]``.
- v2 (Wang et al., 2022): ``Definition`` a list of strings; top-level ``"Positive Examples"``;
  ``Instances: [{"id", "input", "output": [...]}]``.

Splits
------
- ``train``: the first 90% of the instances of every task that is not held out (after ``max_instances_per_task``).
- ``test``: the last 10% (``floor(n / 10)``) of the same tasks: seen tasks, unseen instances. The last rather than
  a random 10% keeps the split stable when ``max_instances_per_task`` grows.
- ``unseen``: every instance of the held-out tasks, for unseen-task generalisation. Held-out tasks are
  ``heldout_tasks`` when given, else those :func:`fedpeft.data.splits.ni_task_is_heldout` picks (~1 in 5).

References
----------
Mishra et al., "Cross-Task Generalization via Natural Language Crowdsourcing Instructions", ACL 2022.
Wang et al., "Super-NaturalInstructions: Generalization via Declarative Instructions on 1600+ NLP Tasks", EMNLP 2022.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from fedpeft.data.base import NO_LABEL, DatasetSpec, empty_columns, make_dataset, resolve_path
from fedpeft.data.readers import get_str, load_json
from fedpeft.data.splits import ni_task_is_heldout
from fedpeft.errors import ConfigError, DataFormatError
from fedpeft.registry import register_dataset

NI_DIR = "natural_instructions_v1/tasks"
NI_SPLITS = ("train", "test", "unseen")
NI_TEST_DIVISOR = 10  # test = the last n // 10 instances of each seen task


@dataclass(frozen=True)
class NiTask:
    """One parsed task file.

    Parameters
    ----------
    name:
        File stem.
    definition:
        Task definition (v2 lists joined with blank lines).
    positive_examples:
        ``(input, output)`` demonstration pairs.
    instances:
        ``(input, first output)`` pairs in file order.
    """

    name: str
    definition: str
    positive_examples: tuple[tuple[str, str], ...]
    instances: tuple[tuple[str, str], ...]

    def instruction(self, num_examples: int = 0) -> str:
        """The definition followed by the first ``num_examples`` positive examples."""
        parts = [self.definition.strip()]
        for i, (inp, out) in enumerate(self.positive_examples[:num_examples], start=1):
            parts.append(f"Example {i}:\nInput: {inp.strip()}\nOutput: {out.strip()}")
        return "\n\n".join(parts)


def _first_output(value: Any, path: Path, field: str) -> str:
    """v1/v2 instance outputs are lists of acceptable answers; demonstrations may be plain strings."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value[0]
    if isinstance(value, list) and not value:
        raise DataFormatError(path, None, field, "empty list of outputs")
    raise DataFormatError(path, None, field, f"expected a string or a list of strings, got {type(value).__name__}")


def _definition(obj: dict[str, Any], path: Path) -> str:
    value = obj.get("Definition")
    if isinstance(value, str) and value.strip():  # v1
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):  # v2
        return "\n\n".join(v.strip() for v in value)
    if value is None:
        raise DataFormatError(path, None, "Definition", "missing")
    raise DataFormatError(path, None, "Definition", "expected a non-empty string (v1) or list of strings (v2)")


def _examples(obj: dict[str, Any], path: Path) -> tuple[tuple[str, str], ...]:
    examples = obj.get("Examples")
    if isinstance(examples, dict):  # v1 nests them
        raw, prefix = examples.get("Positive Examples", []), "Examples.Positive Examples"
    else:  # v2 keeps them at the top level
        raw, prefix = obj.get("Positive Examples", []), "Positive Examples"
    if not isinstance(raw, list):
        raise DataFormatError(path, None, prefix, "expected a list")
    pairs = []
    for i, ex in enumerate(raw):
        where = f"{prefix}[{i}]"
        if not isinstance(ex, dict):
            raise DataFormatError(path, None, where, "expected an object with input and output")
        inp = get_str(ex, "input", path, None, where=where + ".")
        if "output" not in ex:
            raise DataFormatError(path, None, where + ".output", "missing")
        pairs.append((inp, _first_output(ex["output"], path, where + ".output")))
    return tuple(pairs)


def read_ni_task(path: str | Path, max_instances: int | None = None) -> NiTask:
    """Parse one Natural Instructions task file (v1 or v2 layout).

    Parameters
    ----------
    path:
        The task JSON file.
    max_instances:
        Keep only the first this many instances.

    Raises
    ------
    DataFormatError
        Invalid JSON, or a missing/ill-typed ``Definition``, ``Instances``, ``input`` or ``output``; the field is
        named with its index, e.g. ``Instances[3].output``.
    """
    path = Path(path)
    obj = load_json(path)
    if not isinstance(obj, dict):
        raise DataFormatError(path, None, None, "expected a JSON object with Definition and Instances")
    raw = obj.get("Instances")
    if raw is None:
        raise DataFormatError(path, None, "Instances", "missing")
    if not isinstance(raw, list):
        raise DataFormatError(path, None, "Instances", "expected a list")
    if max_instances is not None:
        raw = raw[:max_instances]
    instances = []
    for i, inst in enumerate(raw):
        where = f"Instances[{i}]"
        if not isinstance(inst, dict):
            raise DataFormatError(path, None, where, "expected an object with input and output")
        inp = get_str(inst, "input", path, None, where=where + ".")
        if "output" not in inst:
            raise DataFormatError(path, None, where + ".output", "missing")
        instances.append((inp, _first_output(inst["output"], path, where + ".output")))
    return NiTask(path.stem, _definition(obj, path), _examples(obj, path), tuple(instances))


def list_ni_tasks(directory: str | Path) -> list[str]:
    """Task names (file stems) of the ``*.json`` files in ``directory``, sorted."""
    return sorted(p.stem for p in Path(directory).glob("*.json"))


def _check_names(field: str, names: Sequence[str], available: Sequence[str]) -> None:
    if isinstance(names, str):  # a bare string would be read as a list of characters
        raise ConfigError(field, names, "a list of task names")
    for name in names:
        if name not in available:
            raise ConfigError(field, name, available)


def load_ni_directory(
    directory: str | Path,
    split: str,
    *,
    tasks: Sequence[str] | None = None,
    heldout_tasks: Sequence[str] | None = None,
    max_instances_per_task: int | None = None,
    num_examples: int = 0,
) -> datasets.Dataset:
    """Load one split of a directory of Natural Instructions task files (v1 or v2).

    Parameters
    ----------
    directory:
        Folder of ``<task>.json`` files.
    split:
        ``"train"``, ``"test"`` or ``"unseen"`` (see the module docstring).
    tasks:
        Use only these tasks (file stems); default all.
    heldout_tasks:
        Tasks kept out of train/test and served by ``"unseen"``; default :func:`ni_task_is_heldout`; ``[]`` holds
        out nothing.
    max_instances_per_task:
        Cap each task to its first this many instances before splitting.
    num_examples:
        Positive examples appended to each instruction (0 = definition only).

    Raises
    ------
    ConfigError
        Unknown split or task names, an empty directory, or ``"unseen"`` with no held-out task.
    """
    directory = Path(directory)
    if split not in NI_SPLITS:
        raise ConfigError("split", split, NI_SPLITS)
    available = list_ni_tasks(directory)
    if not available:
        raise ConfigError("tasks_dir", str(directory), "a folder of Natural Instructions <task>.json files")
    if max_instances_per_task is not None and (
        not isinstance(max_instances_per_task, int) or max_instances_per_task < 1
    ):
        raise ConfigError("max_instances_per_task", max_instances_per_task, "a positive integer or None")
    if not isinstance(num_examples, int) or num_examples < 0:
        raise ConfigError("num_examples", num_examples, "a non-negative integer")
    if tasks is not None:
        _check_names("tasks", tasks, available)
    selected = [t for t in available if tasks is None or t in tasks]
    if heldout_tasks is None:
        heldout = {t for t in selected if ni_task_is_heldout(t)}
    else:
        _check_names("heldout_tasks", heldout_tasks, available)
        heldout = set(heldout_tasks)
    wanted = [t for t in selected if (t in heldout) == (split == "unseen")]
    if not wanted:
        raise ConfigError(
            "heldout_tasks",
            sorted(heldout),
            f"a choice that leaves at least one task for split {split!r}",
        )

    cols = empty_columns()
    for name in wanted:
        task = read_ni_task(directory / f"{name}.json", max_instances_per_task)
        n_test = len(task.instances) // NI_TEST_DIVISOR
        n_train = len(task.instances) - n_test
        chosen = {"train": task.instances[:n_train], "test": task.instances[n_train:], "unseen": task.instances}
        instruction = task.instruction(num_examples)
        for inp, out in chosen[split]:
            cols["instruction"].append(instruction)
            cols["input"].append(inp)
            cols["output"].append(out)
            cols["label"].append(NO_LABEL)
            cols["task"].append(name)
    return make_dataset(cols)


def load_natural_instructions(
    split: str,
    data_dir: str | Path | None = None,
    *,
    tasks_dir: str | Path | None = None,
    tasks: Sequence[str] | None = None,
    heldout_tasks: Sequence[str] | None = None,
    max_instances_per_task: int | None = None,
    num_examples: int = 0,
) -> datasets.Dataset:
    """Load Natural Instructions from ``tasks_dir``, or ``<data_dir>/natural_instructions_v1/tasks``.

    See :func:`load_ni_directory` for the options; ``tasks_dir`` points at any v1 or v2 task folder
    (e.g. a Super-NaturalInstructions checkout's ``tasks/``).
    """
    directory = Path(tasks_dir) if tasks_dir is not None else resolve_path(data_dir, NI_DIR)
    return load_ni_directory(
        directory,
        split,
        tasks=tasks,
        heldout_tasks=heldout_tasks,
        max_instances_per_task=max_instances_per_task,
        num_examples=num_examples,
    )


register_dataset(
    DatasetSpec(
        name="natural_instructions",
        description="Natural Instructions (v1/v2) task files; task = file stem; 'unseen' = held-out tasks",
        task_type="generation",
        splits=NI_SPLITS,
        load=load_natural_instructions,
        template="alpaca",
    )
)
