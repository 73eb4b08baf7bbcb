"""FedHDS's selection maths on tiny synthetic tensors: reductions, the server's shared projection, HDBSCAN
clusters and their fallbacks, weighted centroids, the most central members, the privacy perturbation, and the
server-side and pooled selections."""

from __future__ import annotations

import pytest
import torch
from threadpoolctl import threadpool_limits

from fedpeft.algorithms.fedhds import select as S

CENTRES = [[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]
OUTLIERS = [[50.0, 50.0], [-40.0, 30.0], [30.0, -45.0]]


def blobs(
    centres: list[list[float]] = CENTRES, per: int = 15, std: float = 0.3, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(points [len(centres) * per, d], true blob id per point)."""
    gen = torch.Generator().manual_seed(seed)
    rows = [torch.tensor(c) + std * torch.randn(per, len(c), generator=gen) for c in centres]
    truth = torch.arange(len(centres)).repeat_interleave(per)
    return torch.cat(rows), truth


def blobs_with_outliers(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three blobs then three far-away isolated points (true id -1)."""
    pts, truth = blobs(seed=seed)
    out = torch.tensor(OUTLIERS)
    return torch.cat([pts, out]), torch.cat([truth, torch.full((len(out),), -1)])


def assert_same_partition(labels: torch.Tensor, truth: torch.Tensor) -> None:
    """``labels`` groups the non-noise points exactly as ``truth`` does (ids may be permuted); truth's -1 points are
    labelled -1."""
    assert labels.shape == truth.shape
    assert bool((labels[truth == -1] == S.NOISE).all())
    seen: set[int] = set()
    for t in torch.unique(truth[truth >= 0]).tolist():
        got = torch.unique(labels[truth == t]).tolist()
        assert len(got) == 1 and got[0] != S.NOISE, (t, got)
        assert got[0] not in seen
        seen.add(got[0])
    assert set(torch.unique(labels[labels != S.NOISE]).tolist()) == seen


def brute_force_nearest(points: torch.Tensor, labels: torch.Tensor, centre: torch.Tensor, cid: int) -> int:
    best, best_d = -1, float("inf")
    for i in range(points.shape[0]):
        if int(labels[i]) != cid:
            continue
        d = float(((points[i].double() - centre.double()) ** 2).sum().sqrt())
        if d < best_d:
            best, best_d = i, d
    return best


def cross(centre: list[float], arm: float = 1.0) -> list[list[float]]:
    """A centre and four symmetric arms: any symmetric weighting has the centre as its weighted mean."""
    x, y = centre
    return [[x, y], [x + arm, y], [x - arm, y], [x, y + arm], [x, y - arm]]


# ---------------------------------------------------------------- local clusters, centroids, central members


def test_local_clusters_recover_blobs_and_label_outliers_noise() -> None:
    pts, truth = blobs_with_outliers()
    lc = S.local_clusters(pts, min_cluster_size=5)
    assert not lc.fallback
    assert lc.labels.dtype == torch.long and lc.labels.shape == (pts.shape[0],)
    assert_same_partition(lc.labels, truth)
    assert len(torch.unique(lc.labels[lc.labels != S.NOISE])) == 3
    assert lc.probs.shape == (pts.shape[0],)
    assert bool(((lc.probs >= 0) & (lc.probs <= 1)).all())
    assert bool((lc.probs[truth == -1] == 0).all())  # noise has no membership
    assert bool((lc.probs[truth >= 0] > 0).all())


def test_local_clusters_is_order_independent_as_a_partition() -> None:
    pts, truth = blobs_with_outliers(seed=3)
    perm = torch.randperm(pts.shape[0], generator=torch.Generator().manual_seed(7))
    lc = S.local_clusters(pts[perm], min_cluster_size=5)
    assert_same_partition(lc.labels, truth[perm])


def test_weighted_centroids_near_blob_centres() -> None:
    pts, truth = blobs_with_outliers()
    lc = S.local_clusters(pts, min_cluster_size=5)
    ids, cents = S.weighted_centroids(pts, lc.labels, lc.probs)
    assert ids.dtype == torch.long and ids.tolist() == sorted(ids.tolist()) and len(ids) == 3
    assert cents.shape == (3, 2) and cents.dtype == torch.float32
    for cid, c in zip(ids.tolist(), cents, strict=True):
        blob = int(torch.unique(truth[lc.labels == cid]))
        assert torch.allclose(c, torch.tensor(CENTRES[blob]), atol=0.25), (blob, c)
    # The outliers (at distance >= 45) would drag a centroid far away if they were counted.
    assert float(cents.abs().max()) < 11


def test_nearest_members_are_truly_nearest_and_never_noise() -> None:
    pts, truth = blobs_with_outliers()
    lc = S.local_clusters(pts, min_cluster_size=5)
    ids, cents = S.weighted_centroids(pts, lc.labels, lc.probs)
    near = S.nearest_members(pts, lc.labels, ids, cents)
    assert near.dtype == torch.long and near.shape == (3,)
    for j, (cid, c) in enumerate(zip(ids.tolist(), cents, strict=True)):
        assert int(near[j]) == brute_force_nearest(pts, lc.labels, c, cid)
        assert int(lc.labels[near[j]]) == cid
    assert not set(near.tolist()) & set(torch.nonzero(truth == -1).flatten().tolist())
    assert {int(truth[i]) for i in near} == {0, 1, 2}  # one per blob


def test_nearest_members_tie_goes_to_lowest_index_and_uses_only_members() -> None:
    pts = torch.tensor([[5.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    labels = torch.tensor([1, 0, 0, 1])
    # Point 3 sits on cluster 0's centre but belongs to cluster 1; 1 and 2 tie, the lower index wins.
    near = S.nearest_members(pts, labels, torch.tensor([0, 1]), torch.tensor([[0.0, 0.0], [4.0, 0.0]]))
    assert near.tolist() == [1, 0]


def test_weighted_centroids_hand_computed() -> None:
    pts = torch.tensor([[0.0, 0.0], [2.0, 0.0], [9.0, 9.0], [4.0, 4.0], [6.0, 2.0], [100.0, -100.0]])
    labels = torch.tensor([3, 3, 7, 7, 7, -1])
    probs = torch.tensor([1.0, 3.0, 0.0, 0.0, 0.0, 1.0])
    ids, cents = S.weighted_centroids(pts, labels, probs)
    assert ids.tolist() == [3, 7]
    assert torch.allclose(cents[0], torch.tensor([1.5, 0.0]))  # (0 * 1 + 2 * 3) / 4
    # All-zero weights: the plain mean of (9, 9), (4, 4), (6, 2); the noise row is ignored.
    assert torch.allclose(cents[1], torch.tensor([19 / 3, 5.0]))
    # Weights only matter relatively.
    _, scaled = S.weighted_centroids(pts, labels, probs * 10)
    assert torch.allclose(scaled, cents)


def test_weighted_centroids_all_noise_is_empty() -> None:
    ids, cents = S.weighted_centroids(torch.ones(3, 4), torch.full((3,), -1), torch.zeros(3))
    assert ids.shape == (0,) and cents.shape == (0, 4)
    assert S.nearest_members(torch.ones(3, 4), torch.full((3,), -1), ids, cents).shape == (0,)


@pytest.mark.parametrize(("n", "min_cluster_size"), [(1, 5), (3, 5), (4, 5), (1, 1), (1, 2)])
def test_local_clusters_small_client_is_one_cluster(n: int, min_cluster_size: int) -> None:
    pts = torch.randn(n, 2, generator=torch.Generator().manual_seed(n))
    lc = S.local_clusters(pts, min_cluster_size)
    assert lc.fallback
    assert lc.labels.tolist() == [0] * n and lc.labels.dtype == torch.long
    assert lc.probs.tolist() == [1.0] * n
    ids, cents = S.weighted_centroids(pts, lc.labels, lc.probs)
    assert ids.tolist() == [0] and torch.allclose(cents[0], pts.mean(0))


def test_local_clusters_all_noise_falls_back() -> None:
    # 6 points, clusters of >= 5: no split can give two clusters, and HDBSCAN never returns the root cluster alone,
    # so it calls everything noise; the client must still form one cluster.
    pts = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    from sklearn.cluster import HDBSCAN

    assert (HDBSCAN(min_cluster_size=5).fit(pts.double().numpy()).labels_ == -1).all()  # the premise
    lc = S.local_clusters(pts, min_cluster_size=5)
    assert lc.fallback and lc.labels.tolist() == [0] * 6 and lc.probs.tolist() == [1.0] * 6


def test_local_clusters_of_nothing_raises() -> None:
    with pytest.raises(ValueError, match="no examples"):
        S.local_clusters(torch.zeros(0, 2), 2)


# ---------------------------------------------------------------------------------------- server selection


def client_centroids(seed: int = 0) -> tuple[torch.Tensor, list[int], list[int]]:
    """Uploaded centroids: three groups (similar local clusters of different clients), each a symmetric cross whose
    centre is the expected choice, then two isolated centroids; rows shuffled. Returns (centroids, index of each
    group's centre, indices of the isolated ones)."""
    rows = cross([0.0, 0.0]) + cross([20.0, 0.0]) + cross([0.0, 20.0]) + [[100.0, 100.0], [-80.0, 60.0]]
    perm = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))
    cents = torch.tensor(rows)[perm]
    where = {int(old): new for new, old in enumerate(perm.tolist())}
    return cents, sorted(where[g * 5] for g in range(3)), sorted(where[15 + k] for k in range(2))


@pytest.mark.parametrize("seed", [0, 1])
def test_server_select_one_central_centroid_per_server_cluster(seed: int) -> None:
    cents, centres, isolated = client_centroids(seed)
    sel = S.server_select(cents, min_cluster_size=3)
    assert not sel.fallback
    assert sel.chosen == centres  # exactly one per cluster: its member nearest the weighted centre
    assert sel.labels.shape == (cents.shape[0],)
    assert sel.labels[isolated].tolist() == [S.NOISE, S.NOISE]
    assert len(torch.unique(sel.labels[sel.labels != S.NOISE])) == 3
    for c in centres:  # each chosen one is in a different server cluster
        assert int(sel.labels[c]) != S.NOISE
    assert len({int(sel.labels[c]) for c in centres}) == 3


def test_server_select_keep_noise_adds_the_noise_centroids() -> None:
    cents, centres, isolated = client_centroids(2)
    sel = S.server_select(cents, min_cluster_size=3, keep_noise=True)
    assert not sel.fallback
    assert sel.chosen == sorted(centres + isolated)
    assert sel.chosen == sorted(set(sel.chosen))  # sorted, no duplicates


def test_server_select_blobs_matches_brute_force_and_drops_noise() -> None:
    pts, truth = blobs_with_outliers(seed=5)
    sel = S.server_select(pts, min_cluster_size=5)
    lc = S.local_clusters(pts, 5)
    ids, cents = S.weighted_centroids(pts, lc.labels, lc.probs)
    expected = sorted(brute_force_nearest(pts, lc.labels, c, cid) for cid, c in zip(ids.tolist(), cents, strict=True))
    assert sel.chosen == expected
    assert sorted(int(truth[i]) for i in sel.chosen) == [0, 1, 2]
    assert torch.equal(sel.labels, lc.labels)


@pytest.mark.parametrize(("n", "min_cluster_size"), [(1, 2), (1, 5), (3, 5), (6, 5)])
def test_server_select_without_structure_chooses_everything(n: int, min_cluster_size: int) -> None:
    cents = torch.randn(n, 3, generator=torch.Generator().manual_seed(n))
    sel = S.server_select(cents, min_cluster_size=min_cluster_size)
    assert sel.fallback
    assert sel.chosen == list(range(n))
    assert sel.labels.tolist() == [S.NOISE] * n


def test_server_select_of_nothing_chooses_nothing() -> None:
    sel = S.server_select(torch.zeros(0, 2))
    assert sel.chosen == [] and sel.labels.shape == (0,) and not sel.fallback
    assert S.server_select(torch.zeros(0, 2), keep_noise=True).chosen == []


# ---------------------------------------------------------------------------------------- pooled selection


def test_pooled_select_local_sorted_indices_and_no_noise() -> None:
    pts, truth = blobs_with_outliers(seed=1)
    perm = torch.randperm(pts.shape[0], generator=torch.Generator().manual_seed(11))
    pts, truth = pts[perm], truth[perm]  # every client mixes blobs and outliers
    sizes = [12, 0, 20, 16]
    out = S.pooled_select(pts, sizes, min_cluster_size=5)
    assert len(out) == len(sizes) and out[1] == []
    offsets = [0, 12, 12, 32]
    rows = []
    for c, picks in enumerate(out):
        assert picks == sorted(picks)
        assert all(isinstance(i, int) and 0 <= i < sizes[c] for i in picks)
        rows += [offsets[c] + i for i in picks]
    # The same rows as a pooled HDBSCAN + most-central member, checked by brute force.
    lc = S.local_clusters(pts, 5)
    ids, cents = S.weighted_centroids(pts, lc.labels, lc.probs)
    expected = [brute_force_nearest(pts, lc.labels, c, cid) for cid, c in zip(ids.tolist(), cents, strict=True)]
    assert sorted(rows) == sorted(expected)
    assert sorted(int(truth[r]) for r in rows) == [0, 1, 2]  # one per blob, never an outlier


def test_pooled_select_maps_rows_to_clients() -> None:
    # Two exact-duplicate groups: each group's chosen member is its first row (ties go to the lowest index).
    pts = torch.cat([torch.zeros(5, 2), torch.full((5, 2), 10.0)])
    assert S.pooled_select(pts, [3, 4, 3], 3) == [[0], [2], []]  # rows 0 and 5: client 0 row 0, client 1 row 2
    assert S.pooled_select(pts, [10], 3) == [[0, 5]]


@pytest.mark.parametrize("sizes", [[5, 5], [10, 2], []])
def test_pooled_select_sizes_must_add_up(sizes: list[int]) -> None:
    with pytest.raises(ValueError, match="sizes"):
        S.pooled_select(torch.zeros(11, 2), sizes, 3)


# ----------------------------------------------------------------------------------------- projection, reduce


def anchors(n: int = 30, seed: int = 0) -> torch.Tensor:
    """[n, 6] with clearly distinct variances per direction (well-defined principal components)."""
    gen = torch.Generator().manual_seed(seed)
    scales = torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5, 0.2])
    rot, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=torch.float64))
    return ((torch.randn(n, 6, generator=gen, dtype=torch.float64) * scales) @ rot.T + 3.0).float()


def test_fit_projection_matches_sklearn_pca_up_to_sign() -> None:
    from sklearn.decomposition import PCA

    x = anchors()
    mean, comps = S.fit_projection(x, 3)
    assert mean.shape == (6,) and comps.shape == (3, 6) and comps.dtype == torch.float32
    assert torch.allclose(mean, x.mean(0), atol=1e-5)
    ref = torch.from_numpy(PCA(n_components=3).fit(x.double().numpy()).components_).float()
    dots = (comps * ref).sum(1)
    assert torch.allclose(dots.abs(), torch.ones(3), atol=1e-4)
    # The same directions as the covariance's top eigenvectors.
    xc = x.double() - x.double().mean(0)
    _, vecs = torch.linalg.eigh(xc.T @ xc)
    top = vecs[:, -3:].flip(1).T.float()  # descending eigenvalue
    assert torch.allclose((comps * top).sum(1).abs(), torch.ones(3), atol=1e-4)
    assert torch.allclose(comps @ comps.T, torch.eye(3), atol=1e-5)  # orthonormal


def test_fit_projection_sign_convention_is_deterministic() -> None:
    x = anchors(seed=4)
    mean, comps = S.fit_projection(x, 4)
    for row in comps:  # the largest-magnitude coordinate of every component is positive
        assert float(row[row.abs().argmax()]) > 0
    again = S.fit_projection(x, 4)
    assert torch.equal(again[0], mean) and torch.equal(again[1], comps)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(1))
    mean_p, comps_p = S.fit_projection(x[perm], 4)
    assert torch.allclose(mean_p, mean, atol=1e-5) and torch.allclose(comps_p, comps, atol=1e-4)
    # Mirrored anchors span the same directions; the convention gives the very same components.
    _, comps_m = S.fit_projection(-x, 4)
    assert torch.allclose(comps_m, comps, atol=1e-4)


def test_project_shapes_and_values() -> None:
    x = anchors()
    mean, comps = S.fit_projection(x, 2)
    feats = torch.randn(7, 6, generator=torch.Generator().manual_seed(2))
    out = S.project(feats, mean, comps)
    assert out.shape == (7, 2) and out.dtype == torch.float32
    assert torch.allclose(out, (feats - mean) @ comps.T, atol=1e-5)
    on_anchors = S.project(x, mean, comps)
    assert torch.allclose(on_anchors.mean(0), torch.zeros(2), atol=1e-4)  # centred
    var = on_anchors.var(0)
    assert float(var[0]) > float(var[1])  # first component carries most variance
    with pytest.raises(ValueError, match="columns"):
        S.project(torch.zeros(3, 5), mean, comps)


def test_fit_projection_pads_when_anchors_are_few() -> None:
    x = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 0.0, 0.0, -2.0], [3.0, -1.0, 1.0, 0.0, 0.0]])
    mean, comps = S.fit_projection(x, 5)
    assert comps.shape == (5, 5)
    assert torch.equal(comps[3:], torch.zeros(2, 5))  # min(N, D) = 3 SVD directions, then zero rows
    assert torch.allclose(comps[:2].norm(dim=1), torch.ones(2), atol=1e-5)
    out = S.project(torch.randn(4, 5, generator=torch.Generator().manual_seed(0)), mean, comps)
    assert out.shape == (4, 5) and torch.equal(out[:, 3:], torch.zeros(4, 2))
    _, two = S.fit_projection(x[:2], 3)  # two anchors: one direction, the line through them
    assert torch.allclose(two[0].abs(), (x[1] / x[1].norm()).abs(), atol=1e-5)
    assert torch.equal(two[2], torch.zeros(5))


@pytest.mark.parametrize("bad", [torch.zeros(1, 4), torch.zeros(0, 4), torch.zeros(4)])
def test_fit_projection_needs_two_anchor_rows(bad: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="at least 2 anchor rows"):
        S.fit_projection(bad, 2)


def test_reduce_validation() -> None:
    x = torch.zeros(5, 4)
    with pytest.raises(ValueError, match="projection"):
        S.reduce(x, "shared")
    with pytest.raises(ValueError, match="reduction must be one of"):
        S.reduce(x, "umap")


def test_reduce_pca_and_shared() -> None:
    x = anchors(n=12, seed=6)
    out = S.reduce(x, "pca", dims=3)
    assert out.shape == (12, 3)
    assert torch.allclose(out, S.project(x, *S.fit_projection(x, 3)), atol=1e-6)
    proj = S.fit_projection(anchors(seed=9), 2)
    shared = S.reduce(x, "shared", projection=proj)
    assert torch.allclose(shared, S.project(x, *proj))
    # The shared space needs no local fit: even one or two rows are projected, not sent to the origin.
    assert torch.allclose(S.reduce(x[:2], "shared", projection=proj), shared[:2])
    assert float(shared[:2].abs().sum()) > 0


@pytest.mark.parametrize("method", ["pca", "tsne"])
@pytest.mark.parametrize("n", [0, 1, 2])
def test_reduce_tiny_client_sits_at_the_origin(method: str, n: int) -> None:
    x = torch.randn(n, 8, generator=torch.Generator().manual_seed(n)) + 5
    out = S.reduce(x, method, dims=3)
    assert out.shape == (n, 3) and torch.equal(out, torch.zeros(n, 3))


def test_reduce_tsne_shape_determinism_and_structure() -> None:
    d = 16
    gen = torch.Generator().manual_seed(0)
    centres = (10 * torch.randn(3, d, generator=gen)).tolist()
    x, truth = blobs(centres, per=20, std=0.5, seed=1)  # 60 rows: perplexity 30
    # One OpenMP thread: scikit-learn's Barnes-Hut t-SNE takes 0.1 s so, but 5-25 s on a loaded 2-core machine.
    with threadpool_limits(limits=1):
        a = S.reduce(x, "tsne", dims=2, seed=3)
        b = S.reduce(x, "tsne", dims=2, seed=3)
    assert a.shape == (60, 2) and a.dtype == torch.float32
    assert torch.equal(a, b)
    # Well-separated blobs stay separated in the embedding.
    assert_same_partition(S.local_clusters(a, 5).labels, truth)


# -------------------------------------------------------------------------------------------------- perturb


def test_perturb_without_noise_is_tanh() -> None:
    c = torch.tensor([[-3.0, -0.5, 0.0], [0.25, 1.0, 40.0]])
    out = S.perturb(c, 0.0, torch.Generator().manual_seed(0))
    assert out.dtype == torch.float32 and out.shape == c.shape
    assert torch.equal(out, torch.tanh(c.double()).float())
    assert torch.allclose(out, torch.tanh(c))
    assert float(out.abs().max()) <= 1.0


def test_perturb_noise_is_seeded_gaussian_with_std_sigma() -> None:
    c = torch.randn(200, 50, generator=torch.Generator().manual_seed(1)) * 3
    sigma = 0.5
    a = S.perturb(c, sigma, torch.Generator().manual_seed(42))
    b = S.perturb(c, sigma, torch.Generator().manual_seed(42))
    other = S.perturb(c, sigma, torch.Generator().manual_seed(43))
    assert torch.equal(a, b)
    assert not torch.allclose(a, other)
    noise = (a.double() - torch.tanh(c.double())).flatten()
    assert abs(float(noise.std()) - sigma) < 0.02  # 10,000 draws: std error ~0.004
    assert abs(float(noise.mean())) < 0.02
    # The noise scales linearly with sigma for one seed.
    twice = S.perturb(c, 2 * sigma, torch.Generator().manual_seed(42))
    assert torch.allclose(twice.double() - torch.tanh(c.double()), 2 * noise.view_as(c), atol=1e-5)


def test_perturb_negative_sigma_raises() -> None:
    with pytest.raises(ValueError, match="sigma"):
        S.perturb(torch.zeros(2, 2), -0.1, torch.Generator().manual_seed(0))
