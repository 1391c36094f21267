"""Unsupervised mode: group the faces nobody has named yet, without an n x n matrix.

Every method starts from the same sparse k-nearest-neighbour graph (`neighbors.knn_graph`, searched by FAISS:
exhaustive for a few thousand faces, FAISS's inverted file above), so the cost is the neighbour search plus
work linear in the number of edges:

- ``hdbscan`` (default): HDBSCAN on the k-NN graph, cosine distance. The core distances, the
  mutual-reachability minimum spanning tree and the cluster hierarchy are computed from the graph's edges
  only (sklearn's HDBSCAN on a sparse precomputed distance matrix, EOM selection). It equals HDBSCAN on all
  pairs whenever the minimum spanning tree's edges are among the k nearest neighbours, which holds below
  the distance where identities merge; on lfw-dev (dlib) its clusters scored like plain HDBSCAN on the raw
  vectors (BCubed F 0.904 vs 0.874 with min_samples 3 vs the package default) in 0.4 s instead of 5 s.
- ``dbscan``: sklearn DBSCAN on the graph's edges within `eps` (core points are exact while
  `n_neighbors >= min_samples`); with min_samples 2 (pairs allowed, the ArcFace default) that is the connected
  components of those edges, taken from scipy without loading scikit-learn.
- ``agglomerative``: sklearn agglomerative clustering restricted to the graph's edges (connectivity),
  cut at `eps`.

Then one rule for all methods, when `eps` is given: a face stays in its cluster only while at least
`min_links` other members lie within cosine distance `eps` of it (applied until nothing changes), and a
cluster left with fewer than `min_cluster_size` faces dissolves into noise. Density methods otherwise
attach a one-off stranger to a cluster through a single lucky neighbour; on lfw-dev (dlib, eps 0.055)
this rule cut strangers in clusters from 7.2% to 1.2% and raised purity from 0.934 to 0.994 at about the
same BCubed F (0.902 vs 0.904; benchmarks/cluster_domain.py).

Labels: 0..n_clusters-1, largest cluster first; `NOISE` (-1) for faces left alone.

The baselines the evaluation compares against (the seed's plain HDBSCAN, Immich's rule) live in
`face_pipeline_eval.baselines`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp
from scipy.sparse import csgraph

from face_pipeline.domain.naming import NOISE
from face_pipeline.domain.neighbors import MISSING, FaceIndex, NeighborGraph, knn_graph

__all__ = [
    "METHODS",
    "NOISE",
    "ClusterExtension",
    "UnknownFaceClusterer",
    "cluster_unknown",
    "cluster_unknown_indexed",
    "drop_weak_members",
    "extend_clusters",
    "relabel_by_size",
]

METHODS = ("hdbscan", "agglomerative", "dbscan")
Method = Literal["hdbscan", "agglomerative", "dbscan"]

_MIN_DISTANCE = 1e-6  # a zero would vanish from a sparse matrix


class UnknownFaceClusterer:
    """Cluster face embeddings into groups that are probably one person each.

    Parameters
    ----------
    method : {'hdbscan', 'agglomerative', 'dbscan'}
        See the module docstring for exactly what each means here.
    min_cluster_size : int, default=3
        Smaller groups become noise.
    min_samples : int, default=3
        Neighbourhood size, the face itself included: HDBSCAN's core distance is the distance to the
        (min_samples - 1)-th nearest other face; DBSCAN's core faces have min_samples faces within eps.
    eps : float or None, default=None
        Cosine distance (1 - cosine similarity) at which two faces are "linked". A property of the
        embedding space (`assignment.SpaceThresholds.cluster_eps`: dlib 0.055, ArcFace 0.5). Required for
        'dbscan' (its radius) and 'agglomerative' (the cut); for 'hdbscan' it only feeds the member rule,
        and None switches that rule off.
    min_links : int, default=2
        A member needs this many other members within `eps` (0 switches the rule off).
    n_neighbors : int, default=15
        k of the k-NN graph (raised to min_samples when smaller).
    linkage : {'average', 'complete', 'single'}, default='average'
        For 'agglomerative' only.
    knn_method : {'auto', 'exact', 'ivf'}, default='auto'
        Neighbour search, see `neighbors.knn_graph`.
    n_probe : int, default=6
        Inverted-file lists searched per face (see `neighbors.knn_graph`).
    seed : int, default=0
        Seeds the approximate neighbour search; results are deterministic for a seed.
    keep_index : bool, default=False
        Keep the inverted file the graph was searched with as `graph_.index` (see `neighbors.knn_graph`).

    Attributes
    ----------
    labels_ : ndarray of shape (n,), int64
        Cluster per face, 0.. by decreasing size, NOISE (-1) for none.
    n_clusters_ : int
    graph_ : NeighborGraph
        The k-NN graph the clusters were built from (useful for diagnostics and reuse).
    """

    def __init__(
        self,
        method: Method = "hdbscan",
        *,
        min_cluster_size: int = 3,
        min_samples: int = 3,
        eps: float | None = None,
        min_links: int = 2,
        n_neighbors: int = 15,
        linkage: Literal["average", "complete", "single"] = "average",
        knn_method: Literal["auto", "exact", "ivf"] = "auto",
        n_probe: int = 6,
        seed: int = 0,
        keep_index: bool = False,
    ) -> None:
        self.method = method
        self.min_cluster_size = min_cluster_size
        self.min_samples = min_samples
        self.eps = eps
        self.min_links = min_links
        self.n_neighbors = n_neighbors
        self.linkage = linkage
        self.knn_method = knn_method
        self.n_probe = n_probe
        self.seed = seed
        self.keep_index = keep_index

    def _validate(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if not isinstance(self.min_cluster_size, (int, np.integer)) or self.min_cluster_size < 2:
            raise ValueError(f"min_cluster_size must be an integer >= 2, got {self.min_cluster_size!r}")
        if not isinstance(self.min_samples, (int, np.integer)) or self.min_samples < 2:
            raise ValueError(f"min_samples must be an integer >= 2, got {self.min_samples!r}")
        if self.eps is not None and not 0.0 < float(self.eps) <= 2.0:
            raise ValueError(f"eps must be a cosine distance in (0, 2], got {self.eps!r}")
        if self.eps is None and self.method != "hdbscan":
            raise ValueError(
                f"eps is required for method {self.method!r}: a cosine distance, e.g. "
                "SpaceThresholds.cluster_eps of the embedding space"
            )
        if not isinstance(self.min_links, (int, np.integer)) or self.min_links < 0:
            raise ValueError(f"min_links must be an integer >= 0, got {self.min_links!r}")
        if self.min_links >= self.min_cluster_size:
            raise ValueError(
                f"min_links must be below min_cluster_size ({self.min_cluster_size}), got {self.min_links!r}"
            )
        if not isinstance(self.n_neighbors, (int, np.integer)) or self.n_neighbors < 1:
            raise ValueError(f"n_neighbors must be a positive integer, got {self.n_neighbors!r}")
        if self.linkage not in ("average", "complete", "single"):
            raise ValueError(f"linkage must be 'average', 'complete' or 'single', got {self.linkage!r}")

    def fit(self, vectors: np.ndarray) -> UnknownFaceClusterer:
        """Cluster `vectors`, shape (n, d), L2-normalised float32 or float16 (other floats are cast; float16,
        a run's whole-library working copy, is searched a block at a time without a float32 copy)."""
        self._validate()
        vectors = np.asarray(vectors)
        if vectors.ndim != 2:
            raise ValueError(f"vectors must be a 2-D array (n, d), got shape {vectors.shape!r}")
        if vectors.dtype != np.float16:
            vectors = vectors.astype(np.float32, copy=False)
        if not all(np.isfinite(vectors[i : i + 8192]).all() for i in range(0, len(vectors), 8192)):
            raise ValueError("vectors contain NaN or infinite values")
        n = len(vectors)
        k = max(int(self.n_neighbors), int(self.min_samples))
        self.graph_ = knn_graph(
            vectors, k, method=self.knn_method, n_probe=self.n_probe, seed=self.seed, keep_index=self.keep_index
        )
        if n < max(self.min_cluster_size, self.min_samples):
            labels = np.full(n, NOISE, dtype=np.int64)
        elif self.method == "hdbscan":
            labels = _hdbscan_on_graph(self.graph_, self.min_cluster_size, self.min_samples)
        elif self.method == "dbscan":
            labels = _dbscan_on_graph(self.graph_, float(self.eps), self.min_samples)  # type: ignore[arg-type]
        else:
            eps = float(self.eps)  # type: ignore[arg-type]  # _validate: agglomerative needs eps
            labels = _agglomerative_on_graph(vectors.astype(np.float32, copy=False), self.graph_, eps, self.linkage)
        labels = relabel_by_size(labels, self.min_cluster_size)
        if self.eps is not None and self.min_links > 0:
            labels = drop_weak_members(labels, self.graph_, self.eps, self.min_links, self.min_cluster_size)
        self.labels_ = labels
        self.n_clusters_ = int(labels.max(initial=NOISE)) + 1
        return self

    def fit_predict(self, vectors: np.ndarray) -> np.ndarray:
        """`fit(vectors).labels_`: (n,) int64."""
        return self.fit(vectors).labels_


def cluster_unknown(
    vectors: np.ndarray,
    method: Method = "hdbscan",
    min_cluster_size: int = 3,
    eps: float | None = None,
    **params: object,
) -> np.ndarray:
    """Cluster labels (n,) int64 of `vectors` (n, d), NOISE = -1. See `UnknownFaceClusterer`.

    Unless given, a member needs min(2, min_cluster_size - 1) fellow members within eps (with groups of two
    allowed, its one fellow is all there is) and density counts min(3, min_cluster_size) faces.
    """
    return _clusterer(method, min_cluster_size, eps, params).fit_predict(vectors)


def cluster_unknown_indexed(
    vectors: np.ndarray,
    method: Method = "hdbscan",
    min_cluster_size: int = 3,
    eps: float | None = None,
    **params: object,
) -> tuple[np.ndarray, FaceIndex]:
    """`cluster_unknown`'s labels, and an index of the same faces (face i = entry i) for a later run to ask
    for the neighbours of new faces: the inverted file the k-NN graph was searched with where there was one
    (building it again would cost as much as the search: k-means training and assigning every face), else
    `FaceIndex.build(vectors, method="auto")`'s exhaustive one."""
    clusterer = _clusterer(method, min_cluster_size, eps, {**params, "keep_index": True}).fit(vectors)
    index = clusterer.graph_.index
    if index is None:
        index = FaceIndex.build(vectors, method="auto")
    return clusterer.labels_, index


def _clusterer(
    method: Method, min_cluster_size: int, eps: float | None, params: dict[str, object]
) -> UnknownFaceClusterer:
    params.setdefault("min_links", min(2, min_cluster_size - 1))
    params.setdefault("min_samples", min(3, min_cluster_size))
    return UnknownFaceClusterer(method, min_cluster_size=min_cluster_size, eps=eps, **params)  # type: ignore[arg-type]


def relabel_by_size(labels: np.ndarray, min_cluster_size: int = 1) -> np.ndarray:
    """Clusters smaller than `min_cluster_size` become NOISE; the rest are renumbered 0.. by decreasing size
    (ties by first face). labels: (n,) int, NOISE = -1. Returns (n,) int64.
    """
    labels = np.asarray(labels, dtype=np.int64)
    out = np.full(len(labels), NOISE, dtype=np.int64)
    clustered = labels != NOISE
    if not clustered.any():
        return out
    uniq, first, inverse, sizes = np.unique(
        labels[clustered], return_index=True, return_inverse=True, return_counts=True
    )
    keep = sizes >= min_cluster_size
    order = np.lexsort((first, -sizes))  # biggest first, then by first appearance
    order = order[keep[order]]
    new_number = np.full(len(uniq), NOISE, dtype=np.int64)
    new_number[order] = np.arange(len(order))
    out[clustered] = new_number[inverse]
    return out


def drop_weak_members(
    labels: np.ndarray, graph: NeighborGraph, eps: float, min_links: int = 2, min_cluster_size: int = 3
) -> np.ndarray:
    """Turn into noise every member with fewer than `min_links` fellow members within cosine distance `eps`
    among its graph neighbours, repeatedly; clusters that shrink below `min_cluster_size` dissolve.

    labels: (n,) int, NOISE = -1; graph: the k-NN graph of the same faces. Returns (n,) int64, renumbered
    by `relabel_by_size`.
    """
    edges = graph.to_sparse(1.0 - eps).tocoo()  # symmetric: a link counts for both faces
    rows, cols = edges.row, edges.col
    labels = np.asarray(labels, dtype=np.int64).copy()
    for _ in range(64):  # converges in a few rounds; the bound only guards against surprises
        same = (labels[rows] == labels[cols]) & (labels[rows] != NOISE)
        links = np.bincount(rows[same], minlength=len(labels))
        weak = (labels != NOISE) & (links < min_links)
        sizes = np.bincount(labels[labels != NOISE], minlength=int(labels.max(initial=0)) + 1)
        small = (labels != NOISE) & (sizes[np.maximum(labels, 0)] < min_cluster_size)
        if not (weak | small).any():
            break
        labels[weak | small] = NOISE
    return relabel_by_size(labels, min_cluster_size)


# --- incremental: new faces joining an existing grouping ----------------------------------------------------


@dataclass(frozen=True)
class ClusterExtension:
    """What adding new faces to a grouping changes.

    new_labels : (q,) int64, the group of each new face: an existing label, a fresh one, or NOISE
    changed_rows : (c,) int64, rows of the existing faces whose label changed (noise that found company,
        members of a group merged into another), ascending
    changed_labels : (c,) int64, their labels now
    """

    new_labels: np.ndarray
    changed_rows: np.ndarray
    changed_labels: np.ndarray


def extend_clusters(
    labels: np.ndarray,
    new_vectors: np.ndarray,
    neighbors: np.ndarray,
    similarities: np.ndarray,
    eps: float,
    *,
    min_cluster_size: int = 2,
    n_neighbors: int = 15,
) -> ClusterExtension:
    """Add new faces to the grouping `labels` of the existing faces by the link rule, touching only the new
    faces and what they link to.

    The link rule: faces closer than cosine distance `eps` are linked, and a group is a connected set of
    linked faces of at least `min_cluster_size`. That is `cluster_unknown(method='dbscan', min_samples=2)`
    (the ArcFace spaces' default grouping), so extending yesterday's groups gives what re-clustering
    everything would, up to the approximate neighbour search. A new face joins the group it links to; when
    it links two groups they merge into the larger one (its label stays); new faces linked only to each
    other or to faces left alone form a fresh group (labels.max() + 1 on). Other rules (HDBSCAN, core
    points of 3+) are not incremental: re-cluster everything with `cluster_unknown`.

    labels : (m,) int, the existing faces' groups, NOISE = -1
    new_vectors : (q, d) float, L2-normalised
    neighbors, similarities : (q, k) the new faces' nearest existing faces (rows of `labels`, MISSING where
        none) and their cosine similarities, e.g. from `neighbors.FaceIndex.search`
    n_neighbors : k of the new faces' graph among themselves
    """
    labels = np.asarray(labels, dtype=np.int64)
    neighbors = np.asarray(neighbors, dtype=np.int64)
    similarities = np.asarray(similarities, dtype=np.float32)
    q = len(new_vectors)
    if neighbors.shape != similarities.shape or len(neighbors) != q:
        raise ValueError(
            f"neighbors and similarities must both be (q, k) with q = {q} new faces, got "
            f"{neighbors.shape!r} and {similarities.shape!r}"
        )
    if not 0.0 < float(eps) <= 2.0:
        raise ValueError(f"eps must be a cosine distance in (0, 2], got {eps!r}")
    if not isinstance(min_cluster_size, (int, np.integer)) or min_cluster_size < 2:
        raise ValueError(f"min_cluster_size must be an integer >= 2, got {min_cluster_size!r}")
    # Links among the new faces (a small exact graph), then from new faces to existing faces.
    among_new = knn_graph(new_vectors, n_neighbors).to_sparse(1.0 - eps).tocoo() if q > 1 else sp.coo_matrix((q, q))
    linked = (neighbors != MISSING) & (similarities >= 1.0 - eps)
    new_rows, old_rows = np.nonzero(linked)[0], neighbors[linked]
    old_labels = labels[old_rows]
    # Nodes: the new faces, then each existing group they touch, then each lone existing face they touch.
    groups, group_node = np.unique(old_labels[old_labels != NOISE], return_inverse=True)
    loners, loner_node = np.unique(old_rows[old_labels == NOISE], return_inverse=True)
    node = np.empty(len(old_rows), dtype=np.int64)
    node[old_labels != NOISE] = q + group_node
    node[old_labels == NOISE] = q + len(groups) + loner_node
    n_nodes = q + len(groups) + len(loners)
    edges = sp.coo_matrix(
        (np.ones(len(node) + among_new.nnz), (np.r_[new_rows, among_new.row], np.r_[node, among_new.col])),
        shape=(n_nodes, n_nodes),
    )
    n_parts, part = csgraph.connected_components(edges, directed=False)
    # A part that holds existing groups takes the largest one's label; otherwise it is a fresh group if big enough.
    sizes = np.bincount(labels[labels != NOISE], minlength=int(labels.max(initial=NOISE)) + 1)
    group_part = part[q : q + len(groups)]
    by_size = np.lexsort((-sizes[groups], group_part))
    first = by_size[np.diff(group_part[by_size], prepend=-1) != 0]  # the largest group of each part
    part_label = np.full(n_parts, NOISE, dtype=np.int64)
    part_label[group_part[first]] = groups[first]
    fresh = part_label == NOISE
    faces = np.bincount(part[:q], minlength=n_parts) + np.bincount(part[q + len(groups) :], minlength=n_parts)
    fresh &= faces >= min_cluster_size
    part_label[fresh] = int(labels.max(initial=NOISE)) + 1 + np.arange(int(fresh.sum()))
    # Existing faces that change: lone faces that found a group, every member of a group merged away.
    loner_label = part_label[part[q + len(groups) :]]
    merged_from = groups[part_label[group_part] != groups]
    moved = np.flatnonzero(np.isin(labels, merged_from)) if merged_from.size else np.empty(0, np.int64)
    rows = np.r_[loners[loner_label != NOISE], moved]
    group_label = part_label[group_part]  # each touched group's label now
    new_of_row = np.r_[loner_label[loner_label != NOISE], group_label[np.searchsorted(groups, labels[moved])]]
    order = np.argsort(rows, kind="stable")
    return ClusterExtension(part_label[part[:q]], rows[order].astype(np.int64), new_of_row[order].astype(np.int64))


# --- methods on the graph ---------------------------------------------------------------------------


def _distance_graph(graph: NeighborGraph, max_distance: float | None = None) -> sp.csr_matrix:
    """Symmetric sparse cosine distances of the graph's edges (only those <= max_distance when given)."""
    min_similarity = -np.inf if max_distance is None else 1.0 - max_distance
    sims = graph.to_sparse(min_similarity)
    dist = sims.copy()
    dist.data = np.clip(1.0 - sims.data, _MIN_DISTANCE, 2.0).astype(np.float32)
    return dist


def _bridge_components(dist: sp.csr_matrix) -> sp.csr_matrix:
    """Join the graph's connected components in a chain of edges just longer than its longest edge.

    Parts of an approximate k-NN graph can lose touch (their lists never probed each other). They are at
    least as far apart as anything the search saw, and barely more: a huge bridge distance would make each
    part look like one very stable cluster to HDBSCAN (measured: lfw-dev F 0.57 with bridges at 4.0, 0.90
    at the longest edge).
    """
    n_parts, part = csgraph.connected_components(dist, directed=False)
    if n_parts == 1:
        return dist
    bridge = max(float(dist.data.max(initial=0.0)) * 1.01, 1e-3)
    first = np.unique(part, return_index=True)[1]
    a, b = first[:-1], first[1:]
    bridges = sp.csr_matrix((np.full(len(a), bridge, np.float32), (a, b)), shape=dist.shape)
    return (dist + bridges + bridges.T).tocsr()


def _hdbscan_on_graph(graph: NeighborGraph, min_cluster_size: int, min_samples: int) -> np.ndarray:
    from sklearn.cluster import HDBSCAN

    dist = _bridge_components(_distance_graph(graph))
    # A sparse precomputed matrix holds no diagonal, so sklearn's min_samples counts other faces only.
    model = HDBSCAN(
        min_cluster_size=min_cluster_size,
        min_samples=min_samples - 1,
        metric="precomputed",
        cluster_selection_method="eom",
        copy=False,
    )
    return model.fit_predict(dist).astype(np.int64)


def _dbscan_on_graph(graph: NeighborGraph, eps: float, min_samples: int) -> np.ndarray:
    dist = _distance_graph(graph, eps)
    if min_samples <= 2:
        # With pairs allowed every face with a neighbour within eps is a core face, so DBSCAN's groups are the
        # connected components of the eps-graph: scipy's, without loading scikit-learn (~130 MB, 1-1.5 s here).
        dist.data[dist.data > eps] = 0.0  # as DBSCAN's radius test (distance <= eps) on float32 rounding
        dist.eliminate_zeros()
        _, part = csgraph.connected_components(dist, directed=False)
        alone = np.bincount(part)[part] < 2
        return np.where(alone, NOISE, part).astype(np.int64)
    from sklearn.cluster import DBSCAN

    return DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(dist).astype(np.int64)


def _agglomerative_on_graph(vectors: np.ndarray, graph: NeighborGraph, eps: float, linkage: str) -> np.ndarray:
    from sklearn.cluster import AgglomerativeClustering

    connectivity = _bridge_components(_distance_graph(graph))
    connectivity.data[:] = 1.0
    model = AgglomerativeClustering(
        n_clusters=None,
        distance_threshold=eps,
        metric="cosine",
        linkage=linkage,
        connectivity=connectivity,
    )
    return model.fit_predict(vectors).astype(np.int64)
