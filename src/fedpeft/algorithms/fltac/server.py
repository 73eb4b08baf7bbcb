"""FL-TAC server (Ping et al., "FL-TAC: Enhanced Fine-Tuning in Federated Learning via Low-Rank, Task-Specific
Adapter Clustering", ICLR 2024 workshop, arXiv 2404.15384; ALGORITHMS.md section 2).

Each round: sampled clients train one adapter per local task and upload them unlabeled; the server flattens every
adapter, runs k-means with K = number of tasks, averages each cluster, and every member adapter is replaced by its
cluster mean (returned to its owner with the next message). Cluster ids are kept stable across rounds by matching
the new cluster means to the previous ones (Hungarian), so "task adapter k" means the same thing every round; after
the last round the K cluster adapters are the task adapters, saved as ``adapter/cluster_<k>/`` (Hugging Face PEFT
format) with a router (``adapter/router.*``) that picks one for an unlabeled input.

Reported every round, for evaluation only (the clustering never reads them): purity and adjusted Rand index of the
clustering against the true tasks, per-task accuracy of the task's adapter, the router's accuracy and the accuracy
of routed inference.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fedpeft.adapters.merge import lora_scaling
from fedpeft.algorithms.aggregation import State, state_add
from fedpeft.algorithms.base import Algorithm, EvalSet, Grid, Msg, Scalar, ServerContext, derive_seed
from fedpeft.algorithms.fltac import cluster
from fedpeft.algorithms.fltac.client import app, join_slots, split_slots
from fedpeft.algorithms.fltac.config import FLTACConfig
from fedpeft.algorithms.fltac.router import Router, fit_router, fit_token_router
from fedpeft.errors import ConfigError
from fedpeft.registry import register_algorithm

if TYPE_CHECKING:
    from fedpeft.config import RunConfig


def member(client: int, slot: int) -> str:
    """Key of one uploaded adapter: (client, slot)."""
    return f"{client}:{slot}"


@register_algorithm("fltac")
class FLTAC(Algorithm):
    """FL-TAC: per-task client adapters, clustered (k-means) and averaged per cluster on the server."""

    config_cls = FLTACConfig
    client_app = app
    opts: FLTACConfig

    def __init__(self, cfg: RunConfig, server: ServerContext) -> None:
        super().__init__(cfg, server)
        if server.eval_set is None:
            raise ConfigError("runtime", cfg.federation.runtime, "a runtime that provides the server's eval set")
        self.eval_set: EvalSet = server.eval_set
        self.task_names = sorted(set(self.eval_set.tasks))
        self.initial = {k: v.clone() for k, v in server.initial_state.items()}
        for field in ("distance", "router"):
            if getattr(self.opts, field) == "tokens" and not cluster.token_keys(self.initial):
                raise ConfigError(
                    f"algorithm.{field}",
                    "tokens",
                    "LoRA on the input embedding (add it, e.g. 'embed_tokens', to adapter.target_modules)",
                )
        self.scaling = lora_scaling(cfg.adapter) if cfg.adapter.method == "lora" else 1.0
        self.clusters: list[State] = []  # the task adapters, by stable cluster id
        self.assign: dict[str, int] = {}  # member -> cluster id of its latest clustering
        self.slots: dict[int, int] = {}  # client -> number of local tasks (learnt on first contact)
        self.counts: dict[str, float] = {}  # member -> training examples
        self.features: dict[str, torch.Tensor] = {}  # member -> mean prompt feature [H] (router)
        self.truth: dict[str, int] = {}  # member -> true task index: REPORTING ONLY, never used to cluster
        report = self.opts.report_truth
        self.report_truth = cfg.federation.runtime != "deploy" if report is None else bool(report)
        self._eval_features: torch.Tensor | None = None

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        if cfg.algorithm.report_truth and cfg.federation.runtime == "deploy":
            raise ConfigError(
                "algorithm.report_truth", True, "false or unset on deploy: true task ids never leave a client there"
            )
        # LoRA-only options -> the value that works for any adapter
        for field, lora_only, other in (("distance", ("product", "tokens"), "flat"), ("router", ("tokens",), "hidden")):
            value = getattr(cfg.algorithm, field)
            if value in lora_only and cfg.adapter.method != "lora":
                raise ConfigError(f"algorithm.{field}", value, f"{other!r} for adapter.method={cfg.adapter.method!r}")

    @property
    def num_clusters(self) -> int:
        return self.opts.num_clusters or len(self.task_names)

    # ------------------------------------------------------------------ exchanges
    def describe(self, rnd: int, grid: Grid, clients: Sequence[int]) -> None:
        """First contact: ask clients how many tasks they hold, with counts, router features (and true task ids)."""
        if not clients:
            return
        config: dict[str, Scalar] = {"round": rnd}
        if self.report_truth:  # the clients answer with each slot's index in this list; without it they never do
            config["task_names"] = "|".join(self.task_names)
        msgs = [(c, Msg("query.fltac", self.initial, config)) for c in clients]
        for r in grid.send_and_receive(msgs, round=rnd, timeout=self.cfg.federation.timeout):
            if not r.ok or r.msg is None:
                self.log_failure(rnd, r)
                continue
            m = r.msg.metrics
            n = int(m.get("num_slots", 0))
            feats = [r.msg.arrays.get(f"feature{j}") for j in range(n)] if self.opts.router == "hidden" else []
            bad_feature = any(f is None or f.dim() != 1 or not bool(torch.isfinite(f).all()) for f in feats)
            if bad_feature or any(float(m.get(f"n{j}", 0)) <= 0 for j in range(n)):
                self.server.log("rejected", round=rnd, client=r.client_id, reason="malformed task description")
                continue
            self.slots[r.client_id] = n
            for j, feat in enumerate(feats):
                assert feat is not None
                self.features[member(r.client_id, j)] = feat.float()
            for j in range(n):
                key = member(r.client_id, j)
                self.counts[key] = float(m[f"n{j}"])
                if self.report_truth:
                    self.truth[key] = int(m.get(f"task{j}", -1))
            self.server.log("client_tasks", round=rnd, client=r.client_id, num_tasks=n)

    def start_state(self, client: int, slot: int) -> State:
        """What (client, slot) trains from: its cluster's adapter, or the initial adapter before it was clustered."""
        cid = self.assign.get(member(client, slot))
        return self.clusters[cid] if cid is not None else self.initial

    def client_states(self, client: int) -> State:
        return join_slots({j: self.start_state(client, j) for j in range(self.slots[client])})

    # ------------------------------------------------------------------ one round
    def fit_round(self, rnd: int, grid: Grid) -> dict[str, Any]:
        sampled = self.sample_clients(rnd, grid.client_ids())
        self.describe(rnd, grid, [c for c in sampled if c not in self.slots])
        clients = [c for c in sampled if self.slots.get(c, 0) > 0]
        config: dict[str, Scalar] = {"round": rnd, "lr": self.client_lr(rnd)}
        msgs = [(c, Msg("train.fltac", self.client_states(c), config)) for c in clients]
        zeros = {k: torch.zeros_like(v) for k, v in self.initial.items()}
        accepted = self.collect(
            rnd, grid, msgs, reference=lambda c: join_slots(dict.fromkeys(range(self.slots[c]), zeros))
        )
        info: dict[str, Any] = {"clients": [a.client_id for a in accepted], "sampled": sampled}
        members: list[str] = []
        states: list[State] = []
        updates: list[State] = []
        for a in accepted:
            for j, update in sorted(split_slots(a.arrays).items()):
                members.append(member(a.client_id, j))
                states.append(state_add(self.start_state(a.client_id, j), update))
                updates.append(update)
        if not states:
            return info
        total = sum(a.num_examples for a in accepted)
        info["train_loss"] = sum(a.metrics.get("loss", 0.0) * a.num_examples for a in accepted) / total
        info.update(self.recluster(rnd, members, states, updates))
        return info

    def recluster(self, rnd: int, members: list[str], states: list[State], updates: list[State]) -> dict[str, Any]:
        """k-means over this round's adapters, cluster means, stable ids; returns the round's clustering fields."""
        opts = self.opts
        points = states if opts.cluster_on == "adapter" else updates
        vectors = torch.stack([cluster.adapter_vector(s, opts.distance, self.scaling) for s in points])  # [n, D]
        if opts.normalize:
            vectors = vectors / vectors.norm(dim=1, keepdim=True).clamp_min(1e-12)
        seed = derive_seed(self.cfg.seed, rnd, "kmeans")
        info: dict[str, Any] = {"adapters": len(states)}
        if opts.k_selection == "fixed":
            k = self.num_clusters
        else:
            k, score = cluster.choose_k(vectors, opts.k_selection, opts.max_clusters, seed=seed, n_init=opts.n_init)
            if not math.isnan(score):
                info["k_score"] = score
        fit = [self.counts[m] >= opts.cluster_min_examples for m in members]
        info["fitted_on"] = sum(fit)
        labels, inertia = cluster.kmeans(vectors, k, seed=seed, n_init=opts.n_init, fit=fit)
        weights = [self.counts[m] for m in members] if opts.weighted else None
        means = cluster.cluster_means(states, labels, weights)
        order = sorted(means)
        new = torch.stack([cluster.adapter_vector(means[i], opts.distance, self.scaling) for i in order])
        old = [cluster.adapter_vector(c, opts.distance, self.scaling) for c in self.clusters]
        ids = cluster.match_clusters(new, torch.stack(old) if old else new[:0])
        stable = dict(zip(order, ids, strict=True))
        for i, cid in stable.items():
            while len(self.clusters) <= cid:
                self.clusters.append(self.initial)
            self.clusters[cid] = means[i]
        final = [stable[lab] for lab in labels]
        for m, cid in zip(members, final, strict=True):
            self.assign[m] = cid
        info.update(
            clusters=len(order), inertia=inertia, cluster_sizes=[final.count(cid) for cid in range(len(self.clusters))]
        )
        if self.report_truth:  # reporting only, from here on
            truth = [self.truth.get(m, -1) for m in members]
            info.update(purity=cluster.purity(final, truth), ari=cluster.adjusted_rand(final, truth))
        return info

    # ------------------------------------------------------------------ evaluation
    def task_clusters(self) -> dict[int, int]:
        """For reporting: task index -> the cluster that is that task's adapter (matched on the latest assignment);
        empty without ``report_truth``."""
        if not self.report_truth:
            return {}
        keys = sorted(self.assign)
        return cluster.task_of_cluster(
            [self.assign[k] for k in keys], [self.truth[k] for k in keys], len(self.task_names)
        )

    def router(self) -> Router:
        """The ``algorithm.router`` kind of router over the current task adapters."""
        if self.opts.router == "tokens":  # read off the adapters: every cluster's token profile
            profiles = [cluster.adapter_vector(state, "tokens") for state in self.clusters]
            return fit_token_router(profiles, [f"cluster_{i}" for i in range(len(self.clusters))])
        keys = sorted(self.assign)
        return fit_router(
            [self.features[k] for k in keys], [self.assign[k] for k in keys], [self.counts[k] for k in keys]
        )

    def global_metrics(self, rnd: int) -> dict[str, float]:
        """Per-task score of each task's adapter, their mean (the headline), and routed inference. Without
        ``report_truth`` the server cannot know which adapter is which task's: the routed scores only (the
        headline is then the routed mean)."""
        if not self.clusters:
            return self.server.evaluate(self.initial)
        es = self.eval_set
        name = es.metric
        scores = {cid: es.scores(state) for cid, state in enumerate(self.clusters)}  # cid -> [N]
        owner = self.task_clusters()
        by_task: dict[str, list[int]] = {}
        for i, t in enumerate(es.tasks):
            by_task.setdefault(t, []).append(i)
        metrics: dict[str, float] = {}
        # Routed inference: no task label at test time; the router picks the adapter for each input.
        router = self.router()
        if self._eval_features is None:  # the eval inputs' router features: the same every round
            self._eval_features = es.features(self.initial, router.featurize)
        ids = [int(n.split("_")[1]) for n in router.names]
        routed = [ids[i] for i in router.route(self._eval_features)]
        metrics[f"{name}_routed"] = sum(
            sum(scores[routed[i]][i] for i in rows) / len(rows) for rows in by_task.values()
        ) / len(by_task)
        if not self.report_truth:
            metrics[name] = metrics[f"{name}_routed"]
            return metrics
        for t, rows in sorted(by_task.items()):
            cid = owner.get(self.task_names.index(t))
            if cid is None and -1 not in scores:  # a task no clustered adapter serves: the initial adapter, once
                scores[-1] = es.scores(self.initial)
            values = scores[cid if cid is not None else -1]
            metrics[f"{name}_{t}"] = sum(values[i] for i in rows) / len(rows)
        metrics[name] = sum(metrics[f"{name}_{t}"] for t in by_task) / len(by_task)
        metrics["routing_accuracy"] = sum(
            routed[i] == owner.get(self.task_names.index(t), -1) for i, t in enumerate(es.tasks)
        ) / len(es.tasks)
        return metrics

    def client_eval_messages(self, rnd: int, clients: Sequence[int]) -> list[tuple[int, Msg]]:
        limit = self.cfg.federation.client_eval_limit
        known = [c for c in clients if self.slots.get(c, 0) > 0]
        return [(c, Msg("evaluate.fltac", self.client_states(c), {"round": rnd, "limit": limit})) for c in known]

    # ------------------------------------------------------------------ state and outputs
    def global_state(self) -> State:
        """Every task adapter, keys prefixed ``cluster_<k>/`` (the initial adapter before the first round)."""
        if not self.clusters:
            return {f"cluster_0/{k}": v for k, v in self.initial.items()}
        return {f"cluster_{i}/{k}": v for i, state in enumerate(self.clusters) for k, v in state.items()}

    def adapters(self) -> dict[str, State]:
        return _split_prefixed(self.global_state())

    def save_extras(self, folder: Path) -> None:
        if not self.assign:
            return
        self.router().save(folder)
        if not self.report_truth:
            return
        owner = {self.task_names[t]: f"cluster_{c}" for t, c in self.task_clusters().items()}
        (folder / "tasks.json").write_text(json.dumps({"task_adapters_measured": owner}, indent=2) + "\n")

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "clusters": self.clusters,
            "assign": self.assign,
            "slots": self.slots,
            "counts": self.counts,
            "features": self.features,
            "truth": self.truth,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.clusters = list(state["clusters"])
        self.assign = {str(k): int(v) for k, v in state["assign"].items()}
        self.slots = {int(k): int(v) for k, v in state["slots"].items()}
        self.counts = {str(k): float(v) for k, v in state["counts"].items()}
        self.features = dict(state["features"])
        self.truth = {str(k): int(v) for k, v in state["truth"].items()}


def _split_prefixed(state: State) -> dict[str, State]:
    out: dict[str, State] = {}
    for name, value in state.items():
        head, _, key = name.partition("/")
        out.setdefault(head, {})[key] = value
    return out
