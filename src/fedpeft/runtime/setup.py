"""Job setup shared by every runtime: base model + adapter, encoded data split over clients, server-side pieces.

Everything here is deterministic from the config (seeded partition and local test splits), so the server process
and each Flower worker process build identical client data independently, without shipping data around.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch

from fedpeft.adapters import adapter_state, attach_adapter, count_trainable, load_adapter_state, save_adapter
from fedpeft.adapters.merge import added_to_base, lora_scaling
from fedpeft.algorithms import attacks
from fedpeft.algorithms.aggregation import State
from fedpeft.algorithms.base import ClientData, ServerData, derive_seed
from fedpeft.algorithms.lora_aggregation import lora_deltas, lora_pairs
from fedpeft.config import RunConfig
from fedpeft.data import collate, encode_dataset
from fedpeft.data.partition import partition_indices
from fedpeft.data.templates import choose_template
from fedpeft.data.tokenize import bos_prefix
from fedpeft.errors import ConfigError
from fedpeft.models import load_model, load_tokenizer, select_device
from fedpeft.registry import DATASETS
from fedpeft.training.centralized import Task, evaluate_task, example_scores, metric_name, prepare_task
from fedpeft.training.evaluate import predict_labels


@dataclass
class FederatedData:
    """The server's eval task and every client's local train/test examples."""

    task: Task
    clients: list[ClientData]
    partition: list[dict[str, Any]]  # per client: num_examples and label (or task) counts, for the setup event


def build_model(cfg: RunConfig) -> tuple[torch.nn.Module, Any]:
    """The frozen base model with the configured adapter attached (initialised from ``adapter.init_seed``)."""
    tokenizer = load_tokenizer(cfg.model.name)
    model = load_model(cfg.model.name, cfg.model.dtype, cfg.model.device)
    return attach_adapter(model, cfg.adapter), tokenizer


def local_test_split(rows: list[int], fraction: float, seed: int, client: int) -> tuple[list[int], list[int]]:
    """Split a client's rows into (train, test) with a seeded shuffle; at least one row stays for training."""
    if fraction <= 0 or len(rows) < 2:
        return rows, []
    gen = torch.Generator().manual_seed(derive_seed(seed, "local_test", client))
    order = [rows[i] for i in torch.randperm(len(rows), generator=gen).tolist()]
    n_test = min(len(rows) - 1, math.ceil(fraction * len(rows)))
    return sorted(order[n_test:]), sorted(order[:n_test])


def build_federated_data(cfg: RunConfig, tokenizer: Any) -> FederatedData:
    """Load and encode the dataset once, partition the training split over clients, cut local test splits."""
    task = prepare_task(cfg, tokenizer)
    fed = cfg.federation
    index = datasets.Dataset.from_dict(
        {"label": [int(e["label"]) for e in task.train], "task": [str(e.get("task", "")) for e in task.train]}
    )
    parts = partition_indices(index, fed.partition_config(cfg.seed))
    clients: list[ClientData] = []
    summary: list[dict[str, Any]] = []
    by = fed.partition_by
    backdoor = backdoor_trigger(cfg, task)
    for cid, rows in enumerate(parts):
        train_rows, test_rows = local_test_split(list(rows), fed.local_test_fraction, cfg.seed, cid)
        train = [task.train[i] for i in train_rows]
        if backdoor is not None and attacks.kind_of(cfg, cid) == "backdoor":  # a simulated attacker's own data
            gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "backdoor", cid))
            word_ids = task.word_ids.tolist() if task.word_ids is not None else None
            train = attacks.poison(train, backdoor[0], cfg, backdoor[1], word_ids, gen)
        clients.append(
            ClientData(
                train=train,
                test=[task.train[i] for i in test_rows],
                word_ids=task.word_ids,
                collate=task.collate,
                eval_mode=task.eval_mode,
            )
        )
        counts: dict[str, int] = {}
        for i in rows:
            key = str(task.train[i]["label"] if by == "label" else task.train[i].get("task", ""))
            counts[key] = counts.get(key, 0) + 1
        summary.append({"client": cid, "num_examples": len(rows), f"{by}_counts": dict(sorted(counts.items()))})
    return FederatedData(task, clients, summary)


def backdoor_trigger(cfg: RunConfig, task: Task) -> tuple[list[int], int] | None:
    """The backdoor attack's trigger token ids and where they go (after the BOS prefix), or None without one.
    Refused before any work when the task has no label words to target."""
    if cfg.attack.kind != "backdoor" or cfg.attack.fraction <= 0:
        return None
    if task.word_ids is None or task.eval_mode != "label_words":
        raise ConfigError("attack.kind", "backdoor", "a classification dataset scored by its label words")
    if cfg.attack.target >= len(task.word_ids):
        raise ConfigError("attack.target", cfg.attack.target, f"a class index below {len(task.word_ids)}")
    ids = list(task.tokenizer(cfg.attack.trigger, add_special_tokens=False)["input_ids"])
    return ids, len(bos_prefix(task.tokenizer))


def triggered_examples(cfg: RunConfig, task: Task) -> list[dict[str, Any]]:
    """The eval examples of the classes other than the backdoor's target, triggered; empty without a backdoor."""
    backdoor = backdoor_trigger(cfg, task)
    if backdoor is None:
        return []
    return attacks.triggered(task.eval, backdoor[0], cfg.attack.target, backdoor[1], cfg.data.max_length)


def backdoor_success(model: torch.nn.Module, cfg: RunConfig, task: Task, examples: list[dict[str, Any]]) -> float:
    """The share of ``examples`` (from :func:`triggered_examples`) that ``model`` assigns to the target class."""
    preds = predict_labels(model, examples, task.collate, task.word_ids, cfg.eval.batch_size)
    return sum(p == cfg.attack.target for p in preds) / len(preds)


class ServerModel:
    """The server's copy of the model: evaluates and saves global adapter states.

    A LoRA state of another rank than the attached adapter (FLoRA's stacked global adapter) is evaluated by merging
    its ``scaling · B·A`` into the base weights (the attached LoRA zeroed) and saved as a LoRA of its own rank.
    """

    def __init__(self, cfg: RunConfig, model: torch.nn.Module, task: Task, run_path: Path) -> None:
        self.cfg, self.model, self.task, self.run_path = cfg, model, task, run_path
        self.template = adapter_state(model)
        # The EvalSet view (fedpeft.algorithms.base.EvalSet) for algorithms that score several adapters per example.
        self.tasks = [str(e.get("task", "")) for e in task.eval]
        self.metric = metric_name(task)
        # a simulated backdoor's success rate is measured on the eval examples of other classes, triggered
        self.triggered = triggered_examples(cfg, task)

    def initial_state(self) -> State:
        return {k: v.clone() for k, v in self.template.items()}

    def _matches(self, state: State) -> bool:
        return state.keys() == self.template.keys() and all(state[k].shape == v.shape for k, v in self.template.items())

    @contextlib.contextmanager
    def loaded(self, state: State) -> Iterator[torch.nn.Module]:
        """The model carrying ``state`` for the duration of the block."""
        if self._matches(state) or not lora_pairs(state):
            load_adapter_state(self.model, state)  # raises AdapterStateError naming the mismatch otherwise
            yield self.model
            return
        load_adapter_state(self.model, {k: torch.zeros_like(v) for k, v in self.template.items()})
        with added_to_base(self.model, lora_deltas(state, lora_scaling(self.cfg.adapter))):
            yield self.model

    def evaluate(self, state: State) -> dict[str, float]:
        with self.loaded(state) as model:
            metrics = evaluate_task(model, self.task, self.cfg.eval.batch_size, self.cfg.eval.max_new_tokens)
            if self.triggered:
                metrics["backdoor_asr"] = backdoor_success(model, self.cfg, self.task, self.triggered)
            return metrics

    def evaluate_model(self, model: torch.nn.Module) -> dict[str, float]:
        """The run's evaluation of another model over the same vocabulary (the EvalSet view)."""
        return evaluate_task(model, self.task, self.cfg.eval.batch_size, self.cfg.eval.max_new_tokens)

    def scores(self, state: State) -> list[float]:
        """Per-example headline score (``self.metric``) of ``state`` on the eval split."""
        with self.loaded(state) as model:
            scores = example_scores(model, self.task, self.cfg.eval.batch_size, self.cfg.eval.max_new_tokens)
        return scores[self.metric]

    def features(
        self, state: State, featurize: Callable[..., torch.Tensor], data: ServerData | None = None
    ) -> torch.Tensor:
        """``featurize(model, examples, collate)`` with ``state`` loaded, on the eval examples (FL-TAC's router
        features) or on ``data``'s (FedHDS's anchors)."""
        with self.loaded(state) as model:
            if data is not None:
                return featurize(model, data.examples, data.collate)
            return featurize(model, self.task.eval, self.task.collate)

    def save(self, state: State, relative: str) -> None:
        if self._matches(state):
            load_adapter_state(self.model, state)
            save_adapter(self.model, self.run_path / relative)
            return
        # A LoRA of another rank: attach one of that rank (same scaling) to a fresh base and save it from there.
        rank = int(state[next(iter(lora_pairs(state).values()))[0]].shape[0])
        adapter = dataclasses.replace(self.cfg.adapter, r=rank, alpha=lora_scaling(self.cfg.adapter) * rank)
        model = attach_adapter(load_model(self.cfg.model.name, self.cfg.model.dtype, "cpu"), adapter)
        load_adapter_state(model, state)
        save_adapter(model, self.run_path / relative)

    def size(self) -> dict[str, int]:
        s = count_trainable(self.model)
        return {"trainable_params": s.params, "trainable_bytes": s.bytes, "total_params": s.total_params}


# ------------------------------------------------------------------------------------------------ the server's own
@dataclass
class ServerResources:
    """``[server]``: models by role (frozen, on ``device``), their tokenizers, and the server's own examples."""

    device: torch.device
    models: dict[str, torch.nn.Module]
    tokenizers: dict[str, Any]
    data: ServerData | None


def check_same_vocab(cfg: RunConfig, tokenizers: dict[str, Any]) -> None:
    """Raise ConfigError when two roles of ``server.same_vocab`` have different vocabularies (``client`` is the
    clients' model): logit arithmetic or distillation between them would mix up tokens."""
    roles = cfg.server.same_vocab
    names = {"client": cfg.model.name, **cfg.server.models}
    if len(roles) < 2:
        return
    first = roles[0]
    vocab = tokenizers[first].get_vocab()
    for role in roles[1:]:
        other = tokenizers[role].get_vocab()
        if other != vocab:
            differ = len(set(vocab.items()) ^ set(other.items()))
            raise ConfigError(
                "server.same_vocab",
                roles,
                f"models sharing one vocabulary; {first} = {names[first]!r} ({len(vocab)} tokens) and {role} = "
                f"{names[role]!r} ({len(other)} tokens) differ in {differ} (token, id) entries",
            )


def server_examples(cfg: RunConfig, tokenizer: Any) -> ServerData | None:
    """``[server.data]`` encoded with the clients' tokenizer; prompts only unless ``labels``."""
    held = cfg.server.data
    if held is None:
        return None
    spec = DATASETS.get(held.dataset, "server.data.dataset")
    raw = spec.load_split(held.split, held.data_dir, held.limit)
    template = choose_template(held.template, spec.template, tokenizer)  # the chat template when the model has one
    rows = [dict(ex) for ex in encode_dataset(raw, tokenizer, template, cfg.data.max_length)]
    if not held.labels:
        for ex in rows:  # the prompt and nothing else: no response tokens, no label
            n = int(ex["prompt_length"])
            ex["input_ids"] = list(ex["input_ids"][:n])
            ex["labels"] = [-100] * n
            ex["label"] = -1
    return ServerData(rows, functools.partial(collate, pad_id=tokenizer.pad_token_id), held.labels)


def build_server_resources(cfg: RunConfig, client_tokenizer: Any) -> ServerResources:
    """Load the server's models (once, frozen, in this process only) and data; vocabularies checked first."""
    srv = cfg.server
    tokenizers = {"client": client_tokenizer, **{role: load_tokenizer(name) for role, name in srv.models.items()}}
    check_same_vocab(cfg, tokenizers)
    device = select_device(srv.device)
    models: dict[str, torch.nn.Module] = {}
    for role, name in srv.models.items():
        model = load_model(name, srv.dtype, device)
        model.requires_grad_(False)  # frozen until an algorithm attaches (and trains) an adapter
        models[role] = model.eval()
    tokenizers.pop("client")
    return ServerResources(device, models, tokenizers, server_examples(cfg, client_tokenizer))
