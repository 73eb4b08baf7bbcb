"""Routing a new, unlabeled input to one of FL-TAC's task adapters (beyond the paper). Two routers:

``hidden`` (:class:`Router`): the mean, over the prompt tokens, of the last hidden layer of the model carrying the
*initial* adapter (for LoRA that is the frozen base model; :func:`fedpeft.training.features.prompt_features`), so
every client and the server compute the same features without training anything. Each client reports, once, the
mean feature of each of its local tasks (a [H] vector, never its examples); the server averages them within each
cluster (weighted by example counts) into one centroid per task adapter; an input goes to the adapter with the
nearest centroid (cosine distance).

``tokens`` (:class:`TokenRouter`): read off the task adapters themselves, no client feature and no forward pass.
Each adapter's token profile (the column norms of its input-embedding LoRA, unit length; ``cluster.adapter_vector``
with ``tokens``) says which tokens it was trained on; every token is shared out between the adapters in
proportion to their profiles, and an input goes to the adapter owning the largest share of its distinct prompt
tokens.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from fedpeft.training.features import Collate, prompt_features


def cluster_centroids(
    features: Sequence[torch.Tensor], labels: Sequence[int], weights: Sequence[float]
) -> dict[int, torch.Tensor]:
    """Weighted mean feature [H] of each cluster's members (one feature per client task)."""
    out: dict[int, torch.Tensor] = {}
    for k in sorted(set(labels)):
        idx = [i for i, lab in enumerate(labels) if lab == k]
        w = torch.tensor([float(weights[i]) for i in idx], dtype=torch.float64)
        stack = torch.stack([features[i].double() for i in idx])  # [m, H]
        out[k] = ((w[:, None] * stack).sum(0) / w.sum()).float()
    return out


@dataclass
class Router:
    """Nearest-centroid router (``hidden``): ``names[i]`` is the adapter whose centroid is ``centroids[i]`` [K, H].

    ``center`` [H] (the mean feature of all tasks) is subtracted from inputs and centroids before the cosine:
    hidden states of a language model share a large common direction that would otherwise make every cosine ~1.
    """

    names: list[str]
    centroids: torch.Tensor
    center: torch.Tensor
    kind = "hidden"
    describes = "mean last hidden state over prompt tokens, initial adapter"

    def featurize(
        self, model: torch.nn.Module, examples: Sequence[Mapping[str, Any]], collate: Collate
    ) -> torch.Tensor:
        """The inputs' features [N, H] for :meth:`route` (``model`` carries the initial adapter)."""
        return prompt_features(model, examples, collate)

    def route(self, features: torch.Tensor) -> list[int]:
        """Index of the nearest centroid (cosine after centering) for each row of ``features`` [N, H]."""
        if features.shape[0] == 0:
            return []
        x = F.normalize(features.float() - self.center.float(), dim=1)  # [N, H]
        c = F.normalize(self.centroids.float() - self.center.float(), dim=1)  # [K, H]
        return [int(i) for i in (x @ c.T).argmax(1)]

    def save(self, folder: str | Path) -> None:
        """``router.safetensors`` (centroids, center) + ``router.json`` (adapter names, feature definition)."""
        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {"centroids": self.centroids.contiguous(), "center": self.center.contiguous()}
        save_file(tensors, str(path / "router.safetensors"))
        meta = {"adapters": self.names, "router": self.kind, "features": self.describes}
        (path / "router.json").write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> Router:
        """The router saved in ``folder``, of the kind its ``router.json`` names (``hidden`` when absent)."""
        path = Path(folder)
        meta = json.loads((path / "router.json").read_text())
        kind = ROUTERS[str(meta.get("router", "hidden"))]
        tensors = load_file(str(path / "router.safetensors"))
        return kind(list(meta["adapters"]), tensors["centroids"], tensors["center"])


@dataclass
class TokenRouter(Router):
    """Token-share router (``tokens``): ``centroids[i]`` [K, V] is adapter i's share of every vocabulary token
    (the columns sum to 1 over the adapters where any adapter has a profile, 0 elsewhere); ``center`` is unused
    (zeros [V])."""

    kind = "tokens"
    describes = "distinct prompt tokens; adapters' shares of each token from their input-embedding LoRA profiles"

    def featurize(
        self, model: torch.nn.Module, examples: Sequence[Mapping[str, Any]], collate: Collate
    ) -> torch.Tensor:
        """[N, V] 0/1: which vocabulary tokens each input's prompt holds (the model is not run)."""
        return prompt_tokens(examples, self.centroids.shape[1])

    def route(self, features: torch.Tensor) -> list[int]:
        """The adapter owning the largest share of each input's distinct prompt tokens (``features`` [N, V] 0/1)."""
        if features.shape[0] == 0:
            return []
        return [int(i) for i in (features.float() @ self.centroids.float().T).argmax(1)]


ROUTERS: dict[str, type[Router]] = {cls.kind: cls for cls in (Router, TokenRouter)}


def prompt_tokens(examples: Sequence[Mapping[str, Any]], vocab: int) -> torch.Tensor:
    """[N, V] 0/1 presence of each vocabulary token in each example's prompt (``input_ids[:prompt_length]``)."""
    out = torch.zeros(len(examples), vocab)
    for i, ex in enumerate(examples):
        out[i, torch.as_tensor(list(ex["input_ids"][: int(ex["prompt_length"])]), dtype=torch.long)] = 1.0
    return out


def fit_token_router(profiles: Sequence[torch.Tensor], names: Sequence[str]) -> TokenRouter:
    """A token-share router from each adapter's token profile [V] (``cluster.adapter_vector(state, "tokens")``)."""
    stack = torch.stack([p.double() for p in profiles])  # [K, V]
    shares = stack / stack.sum(0, keepdim=True).clamp_min(1e-12)  # [K, V]: each token split between the adapters
    return TokenRouter(list(names), shares.float(), torch.zeros(stack.shape[1]))


def fit_router(
    features: Sequence[torch.Tensor], labels: Sequence[int], weights: Sequence[float], prefix: str = "cluster_"
) -> Router:
    """A router over clusters from member features [H] each, their cluster ids and example counts."""
    cents = cluster_centroids(features, labels, weights)
    ids = sorted(cents)
    w = torch.tensor([float(v) for v in weights], dtype=torch.float64)
    center = (torch.stack([f.double() for f in features]) * w[:, None]).sum(0) / w.sum()
    return Router([f"{prefix}{i}" for i in ids], torch.stack([cents[i] for i in ids]), center.float())
