"""Baseline clusterings the evaluation compares the pipeline with, on the same vectors.

- `plain_hdbscan_baseline`: the seed's clustering, the `hdbscan` package on the raw vectors (quadratic).
- `immich_baseline`: Immich's incremental facial-recognition job, replayed.

Evaluation, tests and benchmarks only: the pipeline clusters with `face_pipeline.domain.clustering`, and the
`hdbscan` package is installed with the `eval` extra for the first of these alone.
"""

from __future__ import annotations

import numpy as np

from face_pipeline.domain.clustering import NOISE
from face_pipeline.domain.neighbors import MISSING, knn_graph

__all__ = ["immich_baseline", "plain_hdbscan_baseline"]


def plain_hdbscan_baseline(vectors: np.ndarray, min_cluster_size: int = 3) -> np.ndarray:
    """The seed's clustering: the `hdbscan` package on the raw vectors, euclidean (on unit vectors that
    orders pairs as cosine does), default min_samples. Quadratic: 5K 512-d faces take ~20 s, 20K ~5 min.
    Returns (n,) int64 labels, NOISE = -1.
    """
    import hdbscan

    vectors = np.asarray(vectors, dtype=np.float64)  # the hdbscan package computes in float64
    if len(vectors) < min_cluster_size:
        return np.full(len(vectors), NOISE, dtype=np.int64)
    labels = hdbscan.HDBSCAN(min_cluster_size=min_cluster_size).fit_predict(vectors)
    return labels.astype(np.int64)


def immich_baseline(
    vectors: np.ndarray, max_distance: float = 0.06, min_faces: int = 3, *, max_neighbors: int = 200
) -> np.ndarray:
    """Immich's facial-recognition job (server/src/services/person.service.ts, `handleRecognizeFaces`),
    replayed over the faces in input order.

    For each face not yet in a person: `matches` = its `min_faces` nearest faces within cosine distance
    `max_distance`, itself included. If only itself matched, the face is skipped for good. It is "core"
    when len(matches) >= min_faces; a non-core face is deferred to a second pass after all others. The
    face joins the first match (nearest first) that has a person, else the nearest face with a person
    within `max_distance`; failing both, a core face founds a new person and a deferred face stays alone.

    max_distance 0.06 suits dlib_resnet_v1 vectors; Immich's own default, 0.5, is for its ArcFace models.
    Neighbours come from one k-NN search (exact up to `max_neighbors` per face); the replay itself is a
    loop over faces with constant work each, because every decision depends on the ones before it
    (evaluation only: ~0.1 s per 10K faces on top of the search).
    Returns (n,) int64 person labels 0.. in order of creation, NOISE (-1) for faces without a person.
    """
    if not 0.0 < max_distance <= 2.0:
        raise ValueError(f"max_distance must be a cosine distance in (0, 2], got {max_distance!r}")
    if min_faces < 1:
        raise ValueError(f"min_faces must be >= 1, got {min_faces!r}")
    vectors = np.asarray(vectors, dtype=np.float32)
    n = len(vectors)
    graph = knn_graph(vectors, max(1, min(max_neighbors, n - 1)), method="exact") if n > 1 else None
    person = np.full(n, NOISE, dtype=np.int64)
    if graph is None:
        return person
    within = (graph.similarities >= 1.0 - max_distance) & (graph.indices != MISSING)
    n_within = within.sum(1)
    near_lists = [row[:count].tolist() for row, count in zip(graph.indices, n_within, strict=True)]
    matches_count = np.minimum(n_within + 1, min_faces)  # + itself
    person_list = person.tolist()
    next_person = 0
    deferred: list[int] = []
    for deferred_pass, order in ((False, range(n)), (True, deferred)):
        for face in order:
            if person_list[face] != NOISE:
                continue
            if min_faces > 1 and matches_count[face] <= 1:
                continue
            is_core = matches_count[face] >= min_faces
            if not is_core and not deferred_pass:
                deferred.append(face)
                continue
            near = near_lists[face]
            chosen = NOISE
            for other in near:  # nearest face with a person (first min_faces - 1 are the "matches")
                if person_list[other] != NOISE:
                    chosen = person_list[other]
                    break
            if chosen == NOISE and is_core:
                chosen = next_person
                next_person += 1
            person_list[face] = chosen
    return np.asarray(person_list, dtype=np.int64)
