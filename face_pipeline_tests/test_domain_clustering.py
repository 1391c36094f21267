"""Unsupervised mode: the k-NN graph, the clustering methods, the baselines, and stable cluster names."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from face_pipeline.domain.assignment import thresholds_for_space
from face_pipeline.domain.clustering import (
    NOISE,
    UnknownFaceClusterer,
    cluster_unknown,
    cluster_unknown_indexed,
    drop_weak_members,
    extend_clusters,
    relabel_by_size,
)
from face_pipeline.domain.naming import (
    cluster_ids,
    noise_cluster_id,
    parse_cluster_id,
    person_cluster_id,
    stable_cluster_numbers,
    unknown_cluster_id,
)
from face_pipeline.domain.neighbors import MISSING, FaceIndex, knn_graph
from face_pipeline_eval.baselines import immich_baseline, plain_hdbscan_baseline
from face_pipeline_eval.cluster_metrics import evaluate_clustering
from face_pipeline_eval.synthetic import synthetic_faces


@pytest.fixture(scope="module")
def library() -> tuple[np.ndarray, np.ndarray]:
    return synthetic_faces(3000, seed=7)


def unit(rows: list[list[float]]) -> np.ndarray:
    x = np.asarray(rows, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def on_circle(degrees: list[float], dim: int = 4) -> np.ndarray:
    t = np.radians(np.asarray(degrees))
    x = np.zeros((len(t), dim), np.float32)
    x[:, 0], x[:, 1] = np.cos(t), np.sin(t)
    return x


# --- synthetic generator ----------------------------------------------------------------------------


def test_synthetic_faces_look_like_a_photo_library() -> None:
    vectors, identities = synthetic_faces(4000, dim=512, seed=3)
    assert vectors.dtype == np.float32 and vectors.shape == (4000, 512)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    _, sizes = np.unique(identities, return_counts=True)
    assert (sizes == 1).mean() > 0.4 and sizes.max() >= 50  # many one-off people, a few big ones
    rng = np.random.default_rng(0)
    i, j = rng.integers(0, 4000, (2, 20_000))
    cos = (vectors[i] * vectors[j]).sum(1)
    same = (identities[i] == identities[j]) & (i != j)
    assert 0.6 <= np.median(cos[same]) <= 0.75
    assert abs(np.median(cos[~same]) - 0.05) < 0.03
    again, _ = synthetic_faces(4000, dim=512, seed=3)
    np.testing.assert_array_equal(vectors, again)


# --- k-NN graph ---------------------------------------------------------------------------------------


def test_exact_knn_graph_matches_brute_force() -> None:
    vectors, _ = synthetic_faces(500, dim=32, seed=1)
    graph = knn_graph(vectors, 5, method="exact")
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    expected = np.sort(sims, axis=1)[:, ::-1][:, :5]
    np.testing.assert_allclose(graph.similarities, expected, atol=1e-5)
    assert not (graph.indices == np.arange(500)[:, None]).any()  # never its own neighbour
    assert graph.exact


def test_ivf_knn_graph_finds_the_close_neighbours(library) -> None:
    vectors, _ = library
    exact = knn_graph(vectors, 10, method="exact")
    approx = knn_graph(vectors, 10, method="ivf")
    assert not approx.exact
    found = (exact.indices[:, :, None] == approx.indices[:, None, :]).any(2)
    strong = exact.similarities >= 0.5  # the edges clustering needs
    assert found[strong].mean() >= 0.98
    assert not (approx.indices == np.arange(len(vectors))[:, None]).any()


def test_ivf_similarities_are_exact_float32_cosines_best_first(library) -> None:
    # the search scores with float16 codes; the graph must carry the true cosines, or thresholds would shift
    vectors, _ = library
    graph = knn_graph(vectors, 10, method="ivf")
    cosines = np.einsum("nd,nkd->nk", vectors, vectors[graph.indices])
    np.testing.assert_allclose(graph.similarities, cosines, atol=1e-6)
    assert graph.similarities.dtype == np.float32 and graph.indices.dtype == np.int64
    assert (np.diff(graph.similarities, axis=1) <= 0).all()


@pytest.mark.parametrize("method", ["exact", "ivf"])
def test_float16_vectors_give_the_graph_and_groups_of_their_float32_values(library, method) -> None:
    # a run's whole-library working copy is float16, searched a block at a time without a float32 copy and
    # scored by the search itself (its codes hold float16 exactly): the graph must be that of the same values
    # in float32, scored exactly (to float32 rounding: a near-tie may swap two neighbours), and the groups
    # those of the full-precision vectors
    vectors, _ = library
    half = vectors.astype(np.float16)
    blocked, whole = knn_graph(half, 10, method=method), knn_graph(half.astype(np.float32), 10, method=method)
    np.testing.assert_allclose(blocked.similarities, whole.similarities, atol=1e-6)
    assert (blocked.indices == whole.indices).mean() > 0.999
    eps = thresholds_for_space("arcface").cluster_eps
    labels, index = cluster_unknown_indexed(half, "dbscan", 2, eps, knn_method=method)
    np.testing.assert_array_equal(labels, cluster_unknown(vectors, "dbscan", 2, eps, knn_method=method))
    assert index.size == len(vectors)


def test_knn_graph_is_deterministic_for_a_seed(library) -> None:
    vectors, _ = library
    first, again = knn_graph(vectors, 8, method="ivf", seed=3), knn_graph(vectors, 8, method="ivf", seed=3)
    np.testing.assert_array_equal(first.indices, again.indices)


@pytest.mark.parametrize("knn_method", ["auto", "ivf"])  # 3,000 faces: 'auto' searches exhaustively
def test_clustering_hands_over_the_index_a_later_run_would_otherwise_build(library, knn_method) -> None:
    # A full run keeps an index of the pool it grouped; the inverted file the k-NN graph searched is that
    # index already, so handing it over must change neither the groups nor what the index answers.
    vectors, _ = library
    eps = thresholds_for_space("arcface").cluster_eps
    labels, index = cluster_unknown_indexed(vectors, "dbscan", 2, eps, knn_method=knn_method)
    np.testing.assert_array_equal(labels, cluster_unknown(vectors, "dbscan", 2, eps, knn_method=knn_method))
    built = FaceIndex.build(vectors, method="ivf" if knn_method == "ivf" else "auto")
    assert index.size == built.size == len(vectors)
    queries = vectors[::7] * 0.9 + vectors[1::7][: len(vectors[::7])] * 0.1
    found, sims = index.search(queries, 10)
    expected, expected_sims = built.search(queries, 10)
    np.testing.assert_array_equal(found, expected)
    np.testing.assert_allclose(sims, expected_sims, atol=1e-6)


@pytest.mark.parametrize("method", ["exact", "ivf"])
def test_duplicate_faces_are_each_others_neighbour_never_their_own(method) -> None:
    vectors, _ = synthetic_faces(400, dim=64, seed=2)
    vectors = np.concatenate([vectors, vectors[:50]])  # the same photo imported twice
    graph = knn_graph(vectors, 5, method=method, n_lists=8)
    rows = np.arange(len(vectors))
    assert not (graph.indices == rows[:, None]).any()
    twin = np.concatenate([rows[400:], rows[:50]])
    assert (graph.indices[np.r_[0:50, 400:450]] == twin[:, None]).any(1).all()
    np.testing.assert_allclose(graph.similarities[np.r_[0:50, 400:450], 0], 1.0, atol=1e-5)


def test_grouping_loads_no_torch_and_arcface_grouping_no_sklearn() -> None:
    # torch belongs to training and projection only (issue 14: it cost every command 1.5 s at start-up)
    probe = (
        "import sys, numpy as np\n"
        "from face_pipeline.domain.clustering import cluster_unknown\n"
        "x = np.random.default_rng(0).standard_normal((300, 16)).astype(np.float32)\n"
        "x /= np.linalg.norm(x, axis=1, keepdims=True)\n"
        "cluster_unknown(x, 'dbscan', 2, eps=0.5); cluster_unknown(x, 'dbscan', 2, eps=0.5, knn_method='ivf')\n"
        "print(__import__('json').dumps(sorted(m for m in ('torch', 'sklearn', 'faiss') if m in sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    # the ArcFace spaces' grouping (DBSCAN with pairs) needs neither torch nor scikit-learn
    assert json.loads(done.stdout.strip().splitlines()[-1]) == ["faiss"], done.stderr


def test_knn_graph_handles_tiny_inputs_and_bad_parameters() -> None:
    graph = knn_graph(unit([[1, 0], [0, 1], [1, 1]]), 10)
    assert graph.indices.shape == (3, 2) and (graph.indices != MISSING).all()
    assert knn_graph(unit([[1, 0]]), 5).indices.shape == (1, 0)
    with pytest.raises(ValueError, match="n_neighbors must be a positive integer, got 0"):
        knn_graph(unit([[1, 0], [0, 1]]), 0)
    with pytest.raises(ValueError, match="method must be 'auto', 'exact' or 'ivf', got 'hnsw'"):
        knn_graph(unit([[1, 0], [0, 1]]), 1, method="hnsw")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_probe must be >= 1, got 0"):
        knn_graph(unit([[1, 0], [0, 1]]), 1, n_probe=0)
    with pytest.raises(ValueError, match="n_lists must be >= 1, got 0"):
        knn_graph(unit([[1, 0], [0, 1]]), 1, n_lists=0)


# --- clustering -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("hdbscan", {}),
        ("hdbscan", {"knn_method": "ivf"}),
        ("dbscan", {}),
        ("agglomerative", {}),
        ("agglomerative", {"linkage": "complete"}),
    ],
)
def test_methods_reach_the_quality_floor(library, method, params) -> None:
    vectors, identities = library
    labels = cluster_unknown(vectors, method, min_cluster_size=3, eps=0.5, **params)
    report = evaluate_clustering(identities, labels)
    assert report.purity >= 0.95
    assert report.bcubed_f1 >= 0.9
    assert report.strangers_in_clusters <= 0.02


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """The same groups and the same lone faces, whatever the numbers."""
    pairs = np.unique(np.stack([a, b]), axis=1)
    return (a == NOISE).tolist() == (b == NOISE).tolist() and len(np.unique(pairs[0])) == len(
        np.unique(pairs[1])
    ) == pairs.shape[1]


def test_dbscan_with_pairs_is_sklearns_dbscan_without_loading_it(library) -> None:
    from sklearn.cluster import DBSCAN

    vectors, _ = library
    clusterer = UnknownFaceClusterer("dbscan", min_cluster_size=2, min_samples=2, eps=0.6, min_links=0).fit(vectors)
    distances = clusterer.graph_.to_sparse(1.0 - 0.6)
    distances.data = np.clip(1.0 - distances.data, 1e-6, 2.0)
    expected = DBSCAN(eps=0.6, min_samples=2, metric="precomputed").fit_predict(distances)
    assert (clusterer.labels_ != NOISE).sum() > 1000
    assert same_partition(clusterer.labels_, relabel_by_size(expected, 2))


def test_hdbscan_without_eps_is_plain_hdbscan_on_the_graph(library) -> None:
    vectors, identities = library
    report = evaluate_clustering(identities, cluster_unknown(vectors, eps=None))
    assert report.bcubed_f1 >= 0.9


def test_labels_are_numbered_by_size_and_small_groups_are_noise(library) -> None:
    vectors, _ = library
    clusterer = UnknownFaceClusterer(eps=0.5, min_cluster_size=4).fit(vectors)
    labels = clusterer.labels_
    sizes = np.bincount(labels[labels != NOISE])
    assert clusterer.n_clusters_ == len(sizes)
    assert (np.diff(sizes) <= 0).all() and sizes.min() >= 4
    assert labels.dtype == np.int64 and clusterer.graph_.indices.shape[0] == len(vectors)


def test_strangers_and_tiny_inputs_are_noise() -> None:
    far_apart = np.eye(8, dtype=np.float32)
    assert (cluster_unknown(far_apart, eps=0.5) == NOISE).all()
    assert (cluster_unknown(far_apart[:2], eps=0.5) == NOISE).all()
    assert cluster_unknown(np.empty((0, 8), np.float32)).shape == (0,)


def test_a_stranger_hanging_on_one_link_is_dropped() -> None:
    # a tight group of four, plus a face linked (within eps) to only one of them
    # (eps 0.02 links faces less than 11.5 degrees apart: face 4 reaches face 3 only)
    vectors = on_circle([0, 2, 4, 6, 16])
    graph = knn_graph(vectors, 4)
    kept = drop_weak_members(np.array([0, 0, 0, 0, 0]), graph, eps=0.02, min_links=2, min_cluster_size=3)
    assert kept.tolist() == [0, 0, 0, 0, NOISE]
    # clusters that fall under min_cluster_size dissolve entirely
    assert (drop_weak_members(np.array([0, 0, 1, 1, 1]), graph, 0.02, 2, 3) == NOISE).all()


def test_relabel_by_size() -> None:
    assert relabel_by_size(np.array([5, 5, 9, 9, 9, 2, NOISE]), 2).tolist() == [1, 1, 0, 0, 0, NOISE, NOISE]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"method": "kmeans"}, "method must be one of"),
        ({"min_cluster_size": 1}, "min_cluster_size must be an integer >= 2, got 1"),
        ({"min_samples": 1}, "min_samples must be an integer >= 2, got 1"),
        ({"eps": 0.0}, r"eps must be a cosine distance in \(0, 2\], got 0.0"),
        ({"eps": 3}, "eps must be a cosine distance"),
        ({"method": "dbscan", "eps": None}, "eps is required for method 'dbscan'"),
        ({"min_links": 3, "eps": 0.5}, r"min_links must be below min_cluster_size \(3\), got 3"),
        ({"n_neighbors": 0}, "n_neighbors must be a positive integer, got 0"),
        ({"linkage": "ward", "eps": 0.5}, "linkage must be"),
    ],
)
def test_bad_parameters_are_refused(params, message) -> None:
    with pytest.raises(ValueError, match=message):
        UnknownFaceClusterer(**params).fit(np.eye(4, dtype=np.float32))


def test_bad_vectors_are_refused() -> None:
    with pytest.raises(ValueError, match=r"2-D array \(n, d\), got shape \(4,\)"):
        cluster_unknown(np.ones(4, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        cluster_unknown(np.full((4, 2), np.nan, np.float32))


# --- incremental -------------------------------------------------------------------------------------------


def nearest_existing(existing: np.ndarray, new: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims = new @ existing.T
    order = np.argsort(-sims, axis=1)[:, :k]
    return order, np.take_along_axis(sims, order, 1)


def test_new_faces_join_merge_and_found_groups() -> None:
    # eps 0.02 links faces less than 11.5 degrees apart
    existing = on_circle([0, 2, 4, 20, 22, 24, 26, 60, 200])
    labels = np.array([5, 5, 5, 7, 7, 7, 7, NOISE, NOISE])
    new = on_circle([12, 66, 120, 150, 152])  # bridges 5 and 7; befriends the loner at 60; alone; a new pair
    result = extend_clusters(labels, new, *nearest_existing(existing, new, 4), eps=0.02)
    assert result.new_labels.tolist() == [7, 8, NOISE, 9, 9]  # the larger group keeps its label; fresh from 8
    assert result.changed_rows.tolist() == [0, 1, 2, 7]  # group 5 merged into 7, the loner joined 8
    assert result.changed_labels.tolist() == [7, 7, 7, 8]


def test_extending_groups_as_well_as_reclustering_and_touching_only_the_neighbourhood() -> None:
    vectors, identities = synthetic_faces(4000, seed=5)
    new = np.sort(np.random.default_rng(0).permutation(4000)[:400])
    old = np.setdiff1d(np.arange(4000), new)
    rule = {"method": "dbscan", "min_cluster_size": 2, "eps": 0.6, "min_links": 1, "min_samples": 2}
    before = cluster_unknown(vectors[old], **rule)
    index = FaceIndex.build(vectors[old])
    found, sims = index.search(vectors[new], 15)
    result = extend_clusters(before, vectors[new], found, sims, eps=0.6)

    after = np.empty(4000, dtype=np.int64)
    after[old] = before
    after[old[result.changed_rows]] = result.changed_labels
    after[new] = result.new_labels
    extended = evaluate_clustering(identities, after)
    reclustered = evaluate_clustering(identities, cluster_unknown(vectors, **rule))
    assert extended.bcubed_f1 >= reclustered.bcubed_f1 - 0.01 and extended.purity >= 0.98
    # only faces a new face links to, and members of groups merged through them, change
    linked = np.unique(found[sims >= 0.4])
    touched_groups = np.unique(before[linked][before[linked] != NOISE])
    allowed = np.union1d(linked, np.flatnonzero(np.isin(before, touched_groups)))
    assert np.isin(result.changed_rows, allowed).all() and len(result.changed_rows) < 0.05 * len(old)
    assert (before[result.changed_rows] != result.changed_labels).all()


def test_face_index_round_trips_and_grows() -> None:
    vectors, _ = synthetic_faces(1500, dim=64, seed=4)
    index = FaceIndex.build(vectors[:1000], n_lists=16)
    index.add(vectors[1000:])
    again = FaceIndex.from_bytes(index.to_bytes())
    assert again.size == 1500 and again.dim == 64
    found, sims = again.search(vectors[[3, 1200]], 1)
    assert found[:, 0].tolist() == [3, 1200] and np.allclose(sims[:, 0], 1.0, atol=1e-3)
    with pytest.raises(ValueError, match=r"queries must have 64 columns, got shape \(1, 8\)"):
        again.search(np.ones((1, 8), np.float32), 1)


def test_extend_clusters_refuses_mismatched_neighbours() -> None:
    with pytest.raises(ValueError, match="neighbors and similarities must both be"):
        extend_clusters(np.zeros(3), np.eye(2, dtype=np.float32), np.zeros((2, 2)), np.zeros((1, 2)), eps=0.5)


# --- baselines ----------------------------------------------------------------------------------------


def test_immich_baseline_follows_immichs_order_and_deferral() -> None:
    # 0, 1, 2 within 0.06 of each other (core); 3 near 2 only (deferred, joins later); 4 alone;
    # 5 and 6 only near each other: deferred, and no person to join, so alone.
    vectors = on_circle([0, 5, 10, 25, 0, 0, 0])
    vectors[4] = [0, 0, 1, 0]
    vectors[5], vectors[6] = unit([[0, 0, 0, 1], [0, 0, 0.087, 1]])
    labels = immich_baseline(vectors, max_distance=0.06, min_faces=3)
    assert labels.tolist() == [0, 0, 0, 0, NOISE, NOISE, NOISE]
    with pytest.raises(ValueError, match="max_distance must be a cosine distance"):
        immich_baseline(vectors, max_distance=0)


def test_plain_hdbscan_baseline_runs(library) -> None:
    vectors, identities = library
    labels = plain_hdbscan_baseline(vectors[:600], min_cluster_size=3)
    assert labels.shape == (600,) and (labels >= NOISE).all()
    assert evaluate_clustering(identities[:600], labels).purity >= 0.9


def at_space_defaults(vectors: np.ndarray, space: str) -> np.ndarray:
    """The unknown pool grouped the way the pipeline groups it in `space` (services.clustering)."""
    defaults = thresholds_for_space(space)
    size = defaults.min_cluster_size
    return cluster_unknown(
        vectors,
        method=defaults.cluster_method,  # type: ignore[arg-type]
        min_cluster_size=size,
        eps=defaults.cluster_eps,
        min_links=min(2, size - 1),
        min_samples=min(3, size),
    )


@pytest.mark.slow
def test_real_lfw_buffalo_s_vectors_beat_both_baselines(lfw_dev_arcface: dict[str, np.ndarray]) -> None:
    """The default model's space at its own grouping defaults (DBSCAN, eps 0.6, pairs allowed).
    Measured on lfw-dev: BCubed F 0.990, purity 0.994, 0.9% of strangers grouped; Immich's rule at its ArcFace
    default (0.5): F 0.933, 0.3% of strangers grouped (its groups need 3 faces)."""
    vectors, identities = lfw_dev_arcface["vectors"], lfw_dev_arcface["identities"]
    ours = evaluate_clustering(identities, at_space_defaults(vectors, "insightface_buffalo_s"))
    immich = evaluate_clustering(identities, immich_baseline(vectors, 0.5))
    assert ours.purity >= 0.99 and ours.bcubed_f1 >= 0.98
    assert ours.bcubed_f1 > immich.bcubed_f1 + 0.03 and ours.purity >= immich.purity - 0.005
    assert ours.strangers_in_clusters < 0.02
    if os.environ.get("FACE_TEST_PLAIN_HDBSCAN"):
        plain = evaluate_clustering(identities, plain_hdbscan_baseline(vectors))
        assert ours.bcubed_f1 > plain.bcubed_f1 and ours.purity > plain.purity


@pytest.mark.slow
def test_real_lfw_dlib_vectors_beat_both_baselines(lfw_dev_embeddings: dict[str, np.ndarray]) -> None:
    """dlib, the licence-free choice, at its own defaults (HDBSCAN, eps 0.055, groups of 3+)."""
    vectors, identities = lfw_dev_embeddings["vectors"], lfw_dev_embeddings["identities"]
    ours = evaluate_clustering(identities, at_space_defaults(vectors, "dlib_resnet_v1"))
    immich = evaluate_clustering(identities, immich_baseline(vectors, 0.06))
    assert ours.purity >= 0.95 and ours.bcubed_f1 >= 0.89
    assert ours.strangers_in_clusters < min(immich.strangers_in_clusters, 0.05)
    if os.environ.get("FACE_TEST_PLAIN_HDBSCAN"):
        plain = evaluate_clustering(identities, plain_hdbscan_baseline(vectors))
        assert ours.bcubed_f1 > plain.bcubed_f1 and ours.purity > plain.purity


# --- names ----------------------------------------------------------------------------------------------


def test_cluster_ids_round_trip() -> None:
    uuid = "a3f9b2c1-0d4e-4f5a-9b6c-7d8e9f001122"
    assert parse_cluster_id(person_cluster_id(uuid)) == ("person", uuid)
    assert parse_cluster_id(unknown_cluster_id(5)) == ("unknown", 5)
    assert parse_cluster_id(noise_cluster_id(123)) == ("noise", "123")
    assert unknown_cluster_id(np.int64(7)) == "unknown_cluster_7"


@pytest.mark.parametrize(
    "bad",
    [
        "unknown_cluster_",
        "unknown_cluster_0",
        "unknown_cluster_x",
        "person_",
        "cluster_5",
        "unknown_noise_a_b",
        "unknown_cluster_05",
    ],
)
def test_parse_cluster_id_quotes_the_bad_value(bad) -> None:
    with pytest.raises(ValueError, match=f"not a cluster id: '{bad}'"):
        parse_cluster_id(bad)


def test_cluster_id_builders_validate() -> None:
    with pytest.raises(ValueError, match="cluster number must be an integer >= 1, got 0"):
        unknown_cluster_id(0)
    with pytest.raises(ValueError, match="person id must be letters"):
        person_cluster_id("bad id")


def test_cluster_ids_for_the_pool() -> None:
    ids = cluster_ids(np.array([0, NOISE, 1]), np.array([10, 11, 12]), np.array([7, 3]))
    assert ids.tolist() == ["unknown_cluster_7", "unknown_noise_11", "unknown_cluster_3"]


def numbers_for(labels, faces, previous, next_free=100):
    return stable_cluster_numbers(np.array(labels), np.array(faces), previous, next_free)


def test_a_growing_or_shrinking_cluster_keeps_its_number() -> None:
    grown, next_free = numbers_for([0] * 5, [1, 2, 3, 4, 5], {1: 3, 2: 3, 3: 3})
    assert grown.tolist() == [3] and next_free == 100
    # seven of ten faces were deleted; the three left still are cluster 3
    shrunk, _ = numbers_for([0, 0, 0], [1, 2, 3], {i: 3 for i in range(1, 11)})
    assert shrunk.tolist() == [3]


def test_a_split_cluster_leaves_its_number_to_the_larger_part() -> None:
    previous = {i: 5 for i in range(10)}
    numbers, next_free = numbers_for([1] * 4 + [0] * 6, list(range(10)), previous)
    assert numbers.tolist() == [5, 100] and next_free == 101


def test_merged_clusters_keep_the_number_they_share_most_with() -> None:
    previous = {**{i: 5 for i in range(4)}, **{i: 7 for i in range(4, 10)}}
    numbers, _ = numbers_for([0] * 10, list(range(10)), previous)
    assert numbers.tolist() == [7]


def test_a_few_leaked_faces_do_not_carry_a_number_and_numbers_are_never_reused() -> None:
    # old 9 = faces 0..9; now 1..9 form cluster 1, face 0 ended in a big new cluster 0 of strangers
    # old 4 = faces 50..52, now all noise: 4 is retired, not handed to anyone
    previous = {**{i: 9 for i in range(10)}, 50: 4, 51: 4, 52: 4}
    faces = [0, *range(20, 39), *range(1, 10), 50, 51, 52]
    labels = [0] * 20 + [1] * 9 + [NOISE] * 3
    numbers, next_free = numbers_for(labels, faces, previous, next_free=12)
    assert numbers.tolist() == [12, 9] and next_free == 13


def test_stable_numbers_survive_a_rerun_with_added_and_removed_faces() -> None:
    vectors, _ = synthetic_faces(3000, seed=11)
    face_ids = np.arange(3000) + 1000
    first = cluster_unknown(vectors, eps=0.5)
    numbers, next_free = stable_cluster_numbers(first, face_ids, {}, 1)
    assert sorted(numbers.tolist()) == list(range(1, next_free))
    clustered = first != NOISE
    previous = (face_ids[clustered], numbers[first[clustered]])

    rng = np.random.default_rng(0)
    keep = rng.random(3000) > 0.1  # 10% of the photos deleted ...
    extra, _ = synthetic_faces(300, seed=12)  # ... 300 new faces (other people) added
    vectors2 = np.concatenate([vectors[keep], extra])
    face_ids2 = np.concatenate([face_ids[keep], np.arange(300) + 10_000])
    second = cluster_unknown(vectors2, eps=0.5)
    numbers2, next_free2 = stable_cluster_numbers(second, face_ids2, previous, next_free)
    # a new cluster made of exactly the surviving faces of one old cluster (plus new faces) keeps its number
    old_of_face = dict(zip(previous[0].tolist(), previous[1].tolist(), strict=True))
    old_now = np.array([old_of_face.get(f, 0) for f in face_ids2.tolist()])
    kept_right = total = 0
    for label in range(int(second.max()) + 1):  # a loop over clusters
        olds = set(old_now[(second == label) & (old_now > 0)].tolist())
        if len(olds) == 1:
            (old,) = olds
            if ((old_now == old) <= (second == label)).all():  # all of the old cluster's faces are here
                total += 1
                kept_right += int(numbers2[label] == old)
    assert total > 50 and kept_right == total
    assert len(set(numbers2[numbers2 > 0].tolist())) == (numbers2 > 0).sum()  # one cluster per number
    assert next_free2 >= next_free


def test_stable_numbers_validate_their_inputs() -> None:
    with pytest.raises(ValueError, match="next_free must exceed every previous number"):
        numbers_for([0], [1], {1: 8}, next_free=8)
    with pytest.raises(ValueError, match="same length"):
        stable_cluster_numbers(np.array([0, 0]), np.array([1]), {}, 1)
