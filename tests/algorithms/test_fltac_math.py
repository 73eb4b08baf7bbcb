"""FL-TAC's pure parts on tiny tensors: adapter vectors, k-means, K selection, cluster means, stable ids, scores,
and the router."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from fedpeft.algorithms.fltac import cluster
from fedpeft.algorithms.fltac.router import (
    Router,
    TokenRouter,
    cluster_centroids,
    fit_router,
    fit_token_router,
    prompt_tokens,
)


def lora_state(a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"m.lora_A.weight": a, "m.lora_B.weight": b}


def blobs(centers: list[list[float]], per: int = 5, noise: float = 0.05, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    rows = [torch.tensor(c) + noise * torch.randn(per, len(c), generator=gen) for c in centers]
    return torch.cat(rows)


def test_flat_vector_is_sorted_concatenation():
    state = {"b": torch.tensor([[3.0, 4.0]]), "a": torch.tensor([1.0, 2.0])}
    assert cluster.adapter_vector(state, "flat").tolist() == [1.0, 2.0, 3.0, 4.0]


def test_product_vector_is_invariant_to_rescaling_a_against_b():
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 4, generator=gen), torch.randn(3, 2, generator=gen)
    v = cluster.adapter_vector(lora_state(a, b), "product", scaling=2.0)
    w = cluster.adapter_vector(lora_state(3.0 * a, b / 3.0), "product", scaling=2.0)
    assert v.shape == (12,)
    assert torch.allclose(v, w)
    assert torch.allclose(v, (2.0 * b @ a).reshape(-1).double())
    # ... while the flattened (A, B) vectors of the same update differ
    assert not torch.allclose(
        cluster.adapter_vector(lora_state(a, b)), cluster.adapter_vector(lora_state(3 * a, b / 3))
    )


def test_product_needs_lora_and_unknown_space_is_refused():
    with pytest.raises(ValueError, match="LoRA"):
        cluster.adapter_vector({"x": torch.ones(2)}, "product")
    with pytest.raises(ValueError, match="tokens"):
        cluster.adapter_vector({"x": torch.ones(2)}, "cosine")


def embedding_lora(a: torch.Tensor, linear: torch.Tensor) -> dict[str, torch.Tensor]:
    """An adapter with an input-embedding LoRA (A [r, vocab], B [H, r]) and one linear LoRA module."""
    return {
        "emb.lora_embedding_A.default": a,
        "emb.lora_embedding_B.default": torch.ones(3, a.shape[0]),
        "q.lora_A.weight": linear[:4].reshape(2, 2),
        "q.lora_B.weight": linear[4:].reshape(2, 2),
    }


def test_token_profile_is_the_unit_norm_of_each_vocabulary_column():
    a = torch.tensor([[3.0, 0.0, 0.0, 1.0], [4.0, 0.0, 2.0, 0.0]])  # [r=2, vocab=4]; token 1 never seen
    v = cluster.adapter_vector(embedding_lora(a, torch.arange(8.0)), "tokens")
    want = torch.tensor([5.0, 0.0, 2.0, 1.0], dtype=torch.float64)
    assert torch.allclose(v, want / want.norm())
    # how far the adapter moved, and every other module, do not change its profile
    assert torch.allclose(cluster.adapter_vector(embedding_lora(7 * a, -torch.arange(8.0)), "tokens"), v)
    with pytest.raises(ValueError, match="input embedding"):
        cluster.adapter_vector(lora_state(torch.ones(2, 2), torch.ones(2, 2)), "tokens")


def test_token_profiles_separate_tasks_whose_flat_updates_point_the_same_way():
    # Two tasks, 6 adapters each. Every update is dominated by one direction shared by both tasks (as the
    # label-word loss gives QNLI and RTE), with a magnitude that varies from client to client; the tasks differ only
    # in which tokens their data holds (task 0: tokens 0-3, task 1: tokens 4-7; token 8 in both, the template).
    gen = torch.Generator().manual_seed(0)
    shared = torch.randn(8, generator=gen)
    states, truth = [], []
    for task in (0, 1):
        for scale in (0.5, 0.8, 1.0, 1.5, 2.5, 4.0):
            a = torch.zeros(2, 9)
            cols = [*range(4 * task, 4 * task + 4), 8]
            a[:, cols] = 0.01 * (1 + torch.rand(2, len(cols), generator=gen))
            states.append(embedding_lora(a, scale * shared + 0.01 * torch.randn(8, generator=gen)))
            truth.append(task)
    flat = torch.stack([cluster.adapter_vector(s, "flat") for s in states])
    tokens = torch.stack([cluster.adapter_vector(s, "tokens") for s in states])
    by_size, _ = cluster.kmeans(flat, 2, seed=0)
    by_tokens, _ = cluster.kmeans(tokens, 2, seed=0)
    assert cluster.adjusted_rand(by_tokens, truth) == 1.0
    assert cluster.adjusted_rand(by_size, truth) < 0.2  # flat k-means splits by how far each client moved


def test_kmeans_recovers_separated_blobs_and_is_seeded():
    x = blobs([[0, 0], [5, 5], [0, 5]])
    labels, inertia = cluster.kmeans(x, 3, seed=7)
    truth = [0] * 5 + [1] * 5 + [2] * 5
    assert cluster.adjusted_rand(labels, truth) == pytest.approx(1.0)
    assert inertia < 15 * 0.05**2 * 2 * 4  # only the noise is left
    assert cluster.kmeans(x, 3, seed=7) == (labels, inertia)


def test_kmeans_fitted_on_the_reliable_rows_is_not_captured_by_an_outlier():
    # two nearby tasks, a third far away, and one adapter of the third trained on a handful of examples far from
    # everything: fitted on all rows, k-means spends a centroid on the outlier and merges the two nearby tasks
    x = torch.cat([blobs([[0, 0], [1.5, 0], [0, 8]], per=6, noise=0.3), torch.tensor([[6.0, 14.0]])])
    truth = [0] * 6 + [1] * 6 + [2] * 7
    plain, _ = cluster.kmeans(x, 3, seed=0)
    assert cluster.adjusted_rand(plain, truth) < 0.7
    fit = [True] * 18 + [False]
    labels, inertia = cluster.kmeans(x, 3, seed=0, fit=fit)
    assert cluster.adjusted_rand(labels, truth) == pytest.approx(1.0)  # the outlier joins its nearest centroid
    centres = torch.stack([x[torch.tensor(labels) == c].mean(0) for c in range(3)])  # [3, 2]
    fitted = torch.stack([x[:18][torch.tensor(labels[:18]) == c].mean(0) for c in range(3)])
    expected = ((x - fitted[torch.tensor(labels)]) ** 2).sum()  # inertia over every row, outlier included
    assert inertia == pytest.approx(float(expected), rel=1e-6) and not torch.allclose(centres, fitted)
    # too few marked rows to place k centroids: every row is used
    assert cluster.kmeans(x, 3, seed=0, fit=[True, True] + [False] * 17) == cluster.kmeans(x, 3, seed=0)
    with pytest.raises(ValueError, match="each of the 19 rows"):
        cluster.kmeans(x, 3, seed=0, fit=[True])


def test_kmeans_clips_k_to_distinct_points():
    x = torch.tensor([[1.0, 1.0], [1.0, 1.0], [2.0, 2.0]])
    labels, _ = cluster.kmeans(x, 3, seed=0)
    assert len(set(labels)) == 2 and labels[0] == labels[1] != labels[2]
    assert cluster.kmeans(x[:2], 3, seed=0)[0] == [0, 0]


@pytest.mark.parametrize("method", ["silhouette", "eigengap"])
@pytest.mark.parametrize("k", [2, 3, 4])
def test_choose_k_finds_the_number_of_blobs(method, k):
    x = blobs([[10.0 * i, (-10.0) ** i] for i in range(k)], per=6)
    chosen, score = cluster.choose_k(x, method, 6, seed=0)
    assert chosen == k
    if method == "silhouette":
        assert score > 0.9


def test_silhouette_undefined_cases_and_sklearn_value():
    x = torch.tensor([[0.0], [1.0], [10.0], [11.0]])
    assert cluster.silhouette(x, [0, 0, 0, 0]) == -1.0
    assert cluster.silhouette(x, [0, 1, 2, 3]) == -1.0
    # a(i) = 1, b(i) = mean distance to the other pair: (10 + 11) / 2 = 10.5 for the points 0 and 11 ... by hand
    s0 = 1 - 1 / 10.5
    s1 = 1 - 1 / 9.5
    assert cluster.silhouette(x, [0, 0, 1, 1]) == pytest.approx((s0 + s1 + s1 + s0) / 4)


def test_cluster_means_uniform_and_weighted():
    states = [{"w": torch.tensor([0.0])}, {"w": torch.tensor([2.0])}, {"w": torch.tensor([10.0])}]
    uniform = cluster.cluster_means(states, [0, 0, 1])
    assert uniform[0]["w"].item() == pytest.approx(1.0) and uniform[1]["w"].item() == pytest.approx(10.0)
    weighted = cluster.cluster_means(states, [0, 0, 1], [3.0, 1.0, 5.0])
    assert weighted[0]["w"].item() == pytest.approx(0.5)


def test_match_clusters_follows_the_centres_and_appends_new_ids():
    old = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    new = torch.tensor([[0.1, 9.9], [0.2, 0.1], [9.7, 0.3]])
    assert cluster.match_clusters(new, old) == [2, 0, 1]
    more = torch.cat([new, torch.tensor([[50.0, 50.0]])])
    assert cluster.match_clusters(more, old) == [2, 0, 1, 3]
    assert cluster.match_clusters(new, old[:0]) == [0, 1, 2]


def test_purity_and_adjusted_rand_by_hand():
    truth = [0, 0, 0, 1, 1, 1]
    assert cluster.purity([5, 5, 5, 9, 9, 9], truth) == 1.0
    assert cluster.adjusted_rand([5, 5, 5, 9, 9, 9], truth) == pytest.approx(1.0)
    assert cluster.purity([0, 0, 1, 1, 1, 1], truth) == pytest.approx(5 / 6)
    # every permutation of the cluster ids scores the same
    for perm in itertools.permutations([0, 1, 2]):
        labels = [perm[i % 3] for i in range(6)]
        assert cluster.adjusted_rand(labels, truth) == pytest.approx(cluster.adjusted_rand([0, 1, 2] * 2, truth))
    # ARI of the clustering [0,0,1,1,1,1] vs truth: contingency [[2,0],[1,3]] -> by the formula
    index = 1 + 0 + 0 + 3  # sum C(n_ij, 2)
    a, b, n = 1 + 6, 3 + 3, 15  # C(2,2)+C(4,2); C(3,2)+C(3,2); C(6,2)
    expected = (index - a * b / n) / ((a + b) / 2 - a * b / n)
    assert cluster.adjusted_rand([0, 0, 1, 1, 1, 1], truth) == pytest.approx(expected)


def test_task_of_cluster_takes_the_cluster_holding_most_of_each_task():
    # clusters 7, 3, 5 hold mostly tasks 2, 0, 1
    labels = [7, 7, 7, 3, 3, 5, 5, 5, 3]
    truth = [2, 2, 0, 0, 0, 1, 1, 1, 1]
    assert cluster.task_of_cluster(labels, truth, 3) == {0: 3, 1: 5, 2: 7}
    # two similar tasks merged into one cluster share its adapter; an outlier cluster serves no task
    labels = [0, 1, 1, 1, 1, 2, 2]
    truth = [2, 0, 0, 1, 1, 2, 2]
    assert cluster.task_of_cluster(labels, truth, 3) == {0: 1, 1: 1, 2: 2}
    assert cluster.task_of_cluster([0, 0], [0, 0], 2) == {0: 0}  # task 1 was never clustered


def test_router_routes_to_nearest_centred_centroid_and_round_trips(tmp_path):
    common = torch.tensor([100.0, 100.0, 100.0])  # the shared direction every hidden state carries
    feats = [common + torch.tensor([1.0, 0, 0]), common + torch.tensor([0, 1.0, 0]), common + torch.tensor([1.2, 0, 0])]
    router = fit_router(feats, [0, 1, 0], [10.0, 10.0, 10.0])
    assert router.names == ["cluster_0", "cluster_1"]
    cents = cluster_centroids(feats, [0, 1, 0], [10.0, 10.0, 10.0])
    assert torch.allclose(cents[0], common + torch.tensor([1.1, 0, 0]))
    queries = torch.stack([common + torch.tensor([0.9, 0.1, 0]), common + torch.tensor([0.1, 0.8, 0])])
    assert router.route(queries) == [0, 1]
    router.save(tmp_path / "r")
    again = Router.load(tmp_path / "r")
    assert again.names == router.names and again.route(queries) == [0, 1]
    assert router.route(torch.zeros(0, 3)) == []
    assert json.loads((tmp_path / "r" / "router.json").read_text())["router"] == "hidden"


def test_token_router_gives_each_input_to_the_adapter_owning_most_of_its_tokens(tmp_path):
    # vocab of 6: adapter 0 trained on tokens 0-2, adapter 1 on tokens 2-4 (token 2 both, twice as much in 1)
    profiles = [torch.tensor([1.0, 1.0, 1.0, 0, 0, 0]), torch.tensor([0, 0, 2.0, 1.0, 1.0, 0])]
    router = fit_token_router(profiles, ["cluster_0", "cluster_1"])
    assert isinstance(router, TokenRouter)
    assert torch.allclose(router.centroids[:, 2], torch.tensor([1 / 3, 2 / 3]))  # token 2 shared out 1:2
    assert torch.equal(router.centroids[:, 5], torch.zeros(2))  # a token no adapter saw counts for nobody
    examples = [
        {"input_ids": [0, 1, 5, 5, 3], "prompt_length": 3},  # prompt 0, 1, 5 -> adapter 0 (the 3 is the answer)
        {"input_ids": [2, 3, 2], "prompt_length": 3},  # prompt 2, 3 -> adapter 1
        {"input_ids": [2, 0], "prompt_length": 2},  # 1/3 + 1 for adapter 0 against 2/3
    ]
    tokens = router.featurize(torch.nn.Linear(1, 1), examples, lambda rows: {})
    assert torch.equal(tokens, prompt_tokens(examples, 6))
    assert tokens[0].tolist() == [1.0, 1.0, 0, 0, 0, 1.0] and tokens[1].tolist() == [0, 0, 1.0, 1.0, 0, 0]
    assert router.route(tokens) == [0, 1, 0]
    router.save(tmp_path / "t")
    again = Router.load(tmp_path / "t")
    assert type(again) is TokenRouter and again.route(tokens) == [0, 1, 0]
    assert json.loads((tmp_path / "t" / "router.json").read_text())["router"] == "tokens"
