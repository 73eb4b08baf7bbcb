"""FedHDS server (Qin et al., "Federated Data-Efficient Instruction Tuning for Large Language Models", Findings of
ACL 2025, arXiv 2410.10926; ALGORITHMS.md section 3).

Each round: a selection exchange (``query.fedhds``: the sampled clients cluster their examples and upload one
centroid per local cluster), HDBSCAN over every centroid on the server, and a training exchange
(``train.fedhds``: each owner of a chosen centroid trains one epoch on that cluster's most central example), then
FedAvg weighted by coreset size. Selection bytes are their own payload kinds (``centroids``, ``ids``,
``projection``, ``features``), so the ledger and ``summary.json["bytes_by_kind"]`` keep them apart from adapter
bytes; every ``round`` event carries the selection's time, bytes and data fraction.

Fixed against the reference code: a round in which no client trains leaves the global adapter as it was (the
reference replaces it with a zero aggregate); clients too small to cluster still offer one centroid; features are
extracted in batches; ``shared`` offers a projection in which all clients' centroids are comparable.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from fedpeft.algorithms.base import Msg, Reply, Scalar, ServerContext, derive_seed
from fedpeft.algorithms.fedavg.server import FedAvg
from fedpeft.algorithms.fedhds import select
from fedpeft.algorithms.fedhds.client import PROJECTION, app, extract
from fedpeft.algorithms.fedhds.config import FedHDSConfig
from fedpeft.errors import ConfigError
from fedpeft.registry import register_algorithm

if TYPE_CHECKING:
    from fedpeft.algorithms.base import Grid
    from fedpeft.config import RunConfig

#: What one client trains on: ("clusters" | "examples", ids, the round they were selected in).
Coreset = tuple[str, list[int], int]


@register_algorithm("fedhds")
class FedHDS(FedAvg):
    """FedHDS: hierarchical (client, then server) HDBSCAN coreset selection, LoRA on the coreset, FedAvg."""

    supports_secure_aggregation = False  # its own round (selection / split exchanges) aggregates in the clear
    simulates_attacks = False

    config_cls = FedHDSConfig
    client_app = app
    opts: FedHDSConfig

    def __init__(self, cfg: RunConfig, server: ServerContext) -> None:
        super().__init__(cfg, server)
        self.coresets: dict[int, Coreset] = {}  # client -> its latest coreset (reused until the next selection)
        self.held: dict[int, int] = {}  # client -> number of local training examples (from its query replies)
        self.totals = {"examples_trained": 0, "examples_offered": 0, "select_s": 0.0, "train_s": 0.0}
        self._projection: tuple[Tensor, Tensor] | None = None  # Turbo's shared projection: fitted once
        self.answered: set[int] = set()  # clients whose selection reply of this round was accepted

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        super().check_config(cfg)
        opts: FedHDSConfig = cfg.algorithm
        if opts.reduction == "shared" and cfg.server.data is None:
            raise ConfigError(
                "algorithm.reduction", "shared", "a [server.data] table: the public anchor examples it is fitted on"
            )

    # ------------------------------------------------------------------ selection
    def selection_round(self, rnd: int) -> bool:
        return self.opts.coreset != "all" and (rnd - 1) % self.opts.select_every == 0

    def projection(self) -> tuple[Tensor, Tensor]:
        """The shared projection: a PCA of the anchors' features (``[server.data]``), under the Turbo model (fitted
        once) or the current global model (refitted at every selection)."""
        if self._projection is not None:
            return self._projection
        data = self.server.server_data
        assert data is not None and self.server.eval_set is not None  # check_config / the runtimes guarantee both
        opts = self.opts

        def featurize(model: torch.nn.Module, examples: Sequence[Mapping[str, Any]], _collate: Any) -> Tensor:
            return extract(model, examples, opts, self.cfg.model.name, self.cfg.data.max_length)

        anchors = self.server.eval_set.features(self.state, featurize, data)  # [N, D]
        proj = select.fit_projection(anchors, opts.dims)
        if opts.feature_model:
            self._projection = proj
        return proj

    def query_message(self, rnd: int) -> Msg:
        arrays: dict[str, Tensor] = {}
        kinds: dict[str, str] = {}
        if not self.opts.feature_model:  # features under the current global adapter: the round's broadcast
            arrays.update(self.state)
        if self.opts.reduction == "shared" and self.opts.coreset != "pooled":
            for key, value in zip(PROJECTION, self.projection(), strict=True):
                arrays[key], kinds[key] = value, "projection"
        return Msg("query.fedhds", arrays, {"round": rnd}, kinds=kinds)

    def _valid(self, rnd: int, r: Reply) -> bool:
        """A well-formed query reply (malformed ones are logged as rejected and the client sits the round out)."""
        assert r.msg is not None
        a, n = r.msg.arrays, r.msg.metrics.get("num_examples", 0)
        if not (isinstance(n, (int, float)) and float(n).is_integer() and n > 0):
            n = -1  # not a count: fails every check below
        if self.opts.coreset == "pooled":
            f = a.get("features")
            ok = f is not None and f.dim() == 2 and f.shape[0] == n > 0 and bool(torch.isfinite(f).all())
        else:
            ids, cents = a.get("cluster_ids"), a.get("centroids")
            ok = (
                ids is not None
                and cents is not None
                and not ids.is_floating_point()
                and ids.dim() == 1
                and len(set(ids.tolist())) == ids.shape[0]  # distinct local cluster ids
                and cents.shape == (ids.shape[0], self.opts.dims)
                and bool(torch.isfinite(cents).all())
                and n > 0
            )
        if not ok:
            self.server.log("rejected", round=rnd, client=r.client_id, reason="malformed selection reply")
        return ok

    def select(self, rnd: int, grid: Grid, targets: Sequence[int]) -> dict[str, Any]:
        """The selection exchange and the server's clustering; fills :attr:`coresets` for ``targets``."""
        t0 = time.perf_counter()
        msg = self.query_message(rnd)
        replies = grid.send_and_receive([(c, msg) for c in targets], round=rnd, timeout=self.cfg.federation.timeout)
        good: list[Reply] = []
        for r in replies:
            self.coresets.pop(r.client_id, None)
            if not r.ok:
                self.log_failure(rnd, r)
            elif self._valid(rnd, r):
                good.append(r)
        for r in good:
            assert r.msg is not None
            self.held[r.client_id] = int(r.msg.metrics["num_examples"])
            self.server.log(
                "client_select",
                round=rnd,
                client=r.client_id,
                bytes_up=r.bytes_up,
                bytes_down=r.bytes_down,
                **r.msg.metrics,
            )
        info: dict[str, Any] = {"queried": len(targets)}
        if self.opts.coreset == "pooled":
            info.update(self.select_pooled(rnd, good))
        elif good:
            info.update(self.select_hierarchical(rnd, good))
        self.answered = {r.client_id for r in good}
        parts = ("features_s", "reduce_s", "cluster_s")
        client_s = [sum(r.msg.metrics.get(k, 0.0) for k in parts) for r in good if r.msg is not None]
        info["client_select_s"] = round(sum(client_s) / max(len(client_s), 1), 3)
        info["select_s"] = round(time.perf_counter() - t0, 3)
        return info

    def select_hierarchical(self, rnd: int, good: Sequence[Reply]) -> dict[str, Any]:
        owners: list[tuple[int, int]] = []  # (client, local cluster id) per uploaded centroid
        cents: list[Tensor] = []
        for r in good:
            assert r.msg is not None
            ids = r.msg.arrays["cluster_ids"].tolist()
            owners += [(r.client_id, int(i)) for i in ids]
            cents.append(r.msg.arrays["centroids"].float())
        points = torch.cat(cents)  # [sum m_c, d]
        chosen = select.server_select(points, self.opts.server_min_cluster_size, self.opts.keep_server_noise)
        picked: dict[int, list[int]] = {r.client_id: [] for r in good}
        for i in chosen.chosen:
            client, local = owners[i]
            picked[client].append(local)
        for client, locals_ in picked.items():
            if not locals_:
                continue
            if self.opts.coreset == "random":  # as many examples as HDS chose for this client, drawn uniformly
                # O(k) whatever count the client claims; seeded by (job seed, round, client)
                rng = random.Random(derive_seed(self.cfg.seed, rnd, client, "random_coreset"))
                draw = rng.sample(range(self.held[client]), min(len(locals_), self.held[client]))
                self.coresets[client] = ("examples", sorted(draw), rnd)
            else:
                self.coresets[client] = ("clusters", sorted(locals_), rnd)
        return {
            "local_clusters": len(owners),
            "server_clusters": int(chosen.labels.max()) + 1 if len(chosen.labels) else 0,
            "server_noise": int((chosen.labels == select.NOISE).sum()),
            "server_fallback": chosen.fallback,
        }

    def select_pooled(self, rnd: int, good: Sequence[Reply]) -> dict[str, Any]:
        if not good:
            return {}
        feats = [r.msg.arrays["features"].float() for r in good if r.msg is not None]
        pool = torch.cat(feats)  # [sum n_c, D]
        seed = derive_seed(self.cfg.seed, rnd, "pooled_tsne")
        proj = self.projection() if self.opts.reduction == "shared" else None
        points = select.reduce(pool, self.opts.reduction, dims=self.opts.dims, seed=seed, projection=proj)
        chosen = select.pooled_select(points, [f.shape[0] for f in feats], self.opts.min_cluster_size)
        for r, idx in zip(good, chosen, strict=True):
            if idx:
                self.coresets[r.client_id] = ("examples", idx, rnd)
        return {"pooled_examples": int(pool.shape[0])}

    # ------------------------------------------------------------------ the round
    def fedhds_message(self, rnd: int, client: int, with_adapter: bool) -> Msg:
        mode, ids, selected = self.coresets.get(client, ("all", [], 0))
        arrays: dict[str, Tensor] = dict(self.state) if with_adapter else {}
        kinds: dict[str, str] = {}
        config: dict[str, Scalar] = {"round": rnd, "lr": self.client_lr(rnd), "selected_round": selected}
        if mode != "all":
            arrays[mode], kinds[mode] = torch.tensor(ids, dtype=torch.long), "ids"
        return Msg("train.fedhds", arrays, config, kinds=kinds)

    def fit_round(self, rnd: int, grid: Grid) -> dict[str, Any]:
        sampled = self.sample_clients(rnd, grid.client_ids())
        info: dict[str, Any] = {"sampled": sampled}
        self.answered = set()
        if self.selection_round(rnd):
            targets = sampled if self.opts.select_every == 1 else grid.client_ids()
            info.update(self.select(rnd, grid, targets))
        trainees = sampled if self.opts.coreset == "all" else [c for c in sampled if c in self.coresets]
        # The adapter went with this round's query to the clients that answered it (FedHDS, not Turbo).
        has_adapter = self.answered if not self.opts.feature_model else set()
        msgs = [(c, self.fedhds_message(rnd, c, with_adapter=c not in has_adapter)) for c in trainees]
        t0 = time.perf_counter()
        accepted = self.collect(rnd, grid, msgs, reference=lambda c: self.state)
        info["train_s"] = round(time.perf_counter() - t0, 3)
        info["clients"] = [a.client_id for a in accepted]
        for a in accepted:
            self.held[a.client_id] = int(a.metrics.get("held", self.held.get(a.client_id, 0)))
        trained = sum(a.num_examples for a in accepted)
        offered = sum(self.held.get(c, 0) for c in sampled)  # the data of every sampled client that answered
        info.update(coreset=trained, data_fraction=trained / offered if offered else 0.0)
        selection = grid.ledger.per_kind(round=rnd)
        sel_bytes = sum(v["up"] + v["down"] for k, v in selection.items() if k != "adapter")
        info["selection_bytes"] = sel_bytes
        self.totals["examples_trained"] += trained
        self.totals["examples_offered"] += offered
        self.totals["select_s"] += float(info.get("select_s", 0.0))
        self.totals["train_s"] += info["train_s"]
        if not accepted:
            return info  # no client trained: the global adapter stays as it was (the reference zeroes it)
        info["train_loss"] = sum(a.metrics.get("loss", 0.0) * a.num_examples for a in accepted) / trained
        self.state = self.optimizer.step(self.state, self.aggregate_updates(accepted, {}))
        return info

    # ------------------------------------------------------------------ state and results
    def results(self) -> dict[str, Any]:
        out = super().results()
        t = self.totals
        out["fedhds"] = {
            "coreset": self.opts.coreset,
            "examples_trained": t["examples_trained"],
            "data_fraction": t["examples_trained"] / t["examples_offered"] if t["examples_offered"] else 0.0,
            "select_seconds": round(t["select_s"], 3),
            "train_seconds": round(t["train_s"], 3),
        }
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "coresets": {c: list(v) for c, v in self.coresets.items()},
            "held": self.held,
            "totals": self.totals,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.coresets = {int(c): (str(v[0]), [int(i) for i in v[1]], int(v[2])) for c, v in state["coresets"].items()}
        self.held = {int(c): int(n) for c, n in state["held"].items()}
        self.totals = dict(state["totals"])
