"""FL-TAC client: one adapter per local task, uploaded without its task name.

A client's local tasks are numbered ``0 .. n-1`` in the order of their names ("slots"); the server addresses
adapters by (client, slot) and never learns which task a slot is. Arrays travel as ``slot<j>/<adapter key>``.

Three handlers:

- ``query.fltac``: once per client, on first contact: how many slots it has, each slot's example count and mean
  prompt feature (for the ``hidden`` router, computed with the initial adapter the server sends), and, for
  reporting only and only when the server sends the task list (simulation; never on ``deploy``), each slot's task
  index in that list (purity / ARI / per-task accuracy; clustering never uses it).
- ``train.fltac``: for each slot, start from the adapter the server sent for it, train ``train.steps`` steps on that
  task's examples only, send back the update (local - received).
- ``evaluate.fltac``: each slot's adapter scored on that task's local test examples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from fedpeft.adapters import load_adapter_state
from fedpeft.algorithms.aggregation import State, state_sub
from fedpeft.algorithms.base import ClientApp, ClientContext, Msg
from fedpeft.algorithms.local_training import evaluate_examples, local_metric, round_train_config, train_local
from fedpeft.training.features import prompt_features

app = ClientApp("fltac")


def slot_key(slot: int, key: str) -> str:
    return f"slot{slot}/{key}"


def split_slots(arrays: Mapping[str, Any], prefix: str = "slot") -> dict[int, State]:
    """``{"slot<j>/<key>": t}`` -> ``{j: {key: t}}``."""
    out: dict[int, State] = {}
    for name, value in arrays.items():
        head, _, key = name.partition("/")
        if head.startswith(prefix) and head[len(prefix) :].isdigit():
            out.setdefault(int(head[len(prefix) :]), {})[key] = value
    return out


def join_slots(states: Mapping[int, State], prefix: str = "slot") -> State:
    return {f"{prefix}{j}/{k}": v for j, state in sorted(states.items()) for k, v in state.items()}


def local_tasks(examples: Sequence[Mapping[str, Any]], min_examples: int) -> list[str]:
    """This client's task names with at least ``min_examples`` examples, sorted: slot j is the j-th."""
    counts: dict[str, int] = {}
    for ex in examples:
        name = str(ex.get("task", ""))
        counts[name] = counts.get(name, 0) + 1
    return sorted(name for name, n in counts.items() if n >= min_examples)


def _slots(ctx: ClientContext) -> list[str]:
    return local_tasks(ctx.data.train, int(ctx.cfg.algorithm.min_task_examples))


def _of_task(examples: Sequence[Mapping[str, Any]], task: str) -> list[Mapping[str, Any]]:
    return [ex for ex in examples if str(ex.get("task", "")) == task]


@app.on("query.fltac")
def describe(ctx: ClientContext, msg: Msg) -> Msg:
    # true task ids go to the server only when it asks (simulation reports), never from a deployed node
    report = "task_names" in msg.config and ctx.cfg.federation.runtime != "deploy"
    known = str(msg.config.get("task_names", "")).split("|")
    load_adapter_state(ctx.model, msg.arrays)  # the initial adapter: features in the same space as the server's
    arrays: State = {}
    metrics: dict[str, float] = {}
    tasks = _slots(ctx)
    for j, task in enumerate(tasks):
        examples = _of_task(ctx.data.train, task)
        if ctx.cfg.algorithm.router == "hidden":  # the tokens router reads the adapters alone
            gen = ctx.generator(0, "router", j)
            pick = torch.randperm(len(examples), generator=gen)[: int(ctx.cfg.algorithm.router_examples)].tolist()
            sample = [examples[i] for i in sorted(pick)]
            arrays[f"feature{j}"] = prompt_features(ctx.model, sample, ctx.data.collate).mean(0)  # [H]
        metrics[f"n{j}"] = float(len(examples))
        if report:
            metrics[f"task{j}"] = float(known.index(task)) if task in known else -1.0  # reporting only
    metrics["num_slots"] = float(len(tasks))
    metrics["num_examples"] = float(sum(metrics[f"n{j}"] for j in range(len(tasks))) or 1)
    return Msg("query.fltac", arrays=arrays, metrics=metrics)


@app.on("train.fltac")
def train_tasks(ctx: ClientContext, msg: Msg) -> Msg:
    rnd = int(msg.config["round"])
    received = split_slots(msg.arrays)
    tasks = _slots(ctx)
    if sorted(received) != list(range(len(tasks))):
        raise ValueError(f"client {ctx.client_id} holds {len(tasks)} task(s) but was sent slots {sorted(received)}")
    cfg = round_train_config(ctx, msg)
    updates: dict[int, State] = {}
    metrics: dict[str, float] = {"num_examples": 0.0, "loss": 0.0, "steps": 0.0, "seconds": 0.0}
    for j, task in enumerate(tasks):
        examples = _of_task(ctx.data.train, task)
        local, result = train_local(ctx, received[j], examples, cfg, rnd, j)  # slot j: its own random stream
        updates[j] = state_sub(local, received[j])
        metrics[f"n{j}"] = float(len(examples))
        metrics[f"loss{j}"] = result.mean_loss
        metrics["num_examples"] += len(examples)
        metrics["loss"] += result.mean_loss * len(examples)
        metrics["steps"] += result.steps
        metrics["seconds"] += round(result.seconds, 3)
    metrics["loss"] /= max(metrics["num_examples"], 1.0)
    return Msg("train.fltac", arrays=join_slots(updates), metrics=metrics)


@app.on("evaluate.fltac")
def evaluate_tasks(ctx: ClientContext, msg: Msg) -> Msg:
    """Each slot's adapter on the local test examples of that slot's task; the mean is weighted by examples."""
    received = split_slots(msg.arrays)
    limit = int(msg.config.get("limit", 64))
    total, weighted = 0, 0.0
    metrics: dict[str, float] = {}
    name = local_metric(ctx)
    for j, task in enumerate(_slots(ctx)):
        examples = _of_task(ctx.data.test, task)[:limit]
        if not examples or j not in received:
            continue
        score = evaluate_examples(ctx, received[j], examples)[name]
        metrics[f"{name}{j}"] = score
        total += len(examples)
        weighted += score * len(examples)
    metrics["num_examples"] = float(total)
    if total:
        metrics[name] = weighted / total
    return Msg("evaluate.fltac", metrics=metrics)
