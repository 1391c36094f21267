"""Faces seen with their neighbours: each face's vector averaged with its nearest faces of the library.

Matching a face to the named people compares it with their labelled faces only. But the library holds many
more faces of those people, unlabelled: the other photos of the same evening, the faces not yet named. A
blurred or tiny face (a person in the background of a group photo) lies far from everything, but its nearest
library faces are still mostly its own person's. Replacing every face by a weighted mean of itself and its k
nearest library faces (database-side augmentation / alpha query expansion, Radenović et al. 2018) pulls such
a face towards its person, while a stranger seen once is averaged with unrelated faces and falls back.

    v'_i = unit(self_weight * v_i + sum_j w_ij v_j),  j in the k nearest library faces of i,
    w_ij = max((cos_ij - c) / (1 - c), 0) ** power,

c being the space's median cosine between two random faces (about 0.02 for ArcFace, 0.8 for dlib), so the
weights mean the same in every embedding space. It is transductive: it uses the unlabelled faces, never
their identities. Labelled faces, prototypes and the faces to name must all be averaged the same way; then
match as usual (raw prototypes, `person_matching.PersonMatcher`), with thresholds calibrated in the averaged
space (its cosines are higher than raw ones).

Measured (benchmarks/learning_options.py, lfw-dev, 3 labelling rounds x 3 splits, thresholds calibrated on
training-side strangers; see that file's docstring): see `DEFAULT_*` below and the benchmark's rows
"neighbour average ...".

Shapes: m faces to average, n library faces (the pool their neighbours come from), k neighbours, d dims.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["DEFAULT_NEIGHBOURS", "average_with_neighbours", "baseline_cosine", "library_neighbour_average"]

DEFAULT_NEIGHBOURS = 6  # about a named person's faces (>= 5), more than most strangers'
DEFAULT_POWER = 2.0  # near neighbours count, borderline ones hardly
DEFAULT_SELF_WEIGHT = 2.0  # the face itself stays the largest part
_MISSING = -1  # neighbour index where fewer than k neighbours were found (neighbors.MISSING)
_SAMPLE = 2000  # faces sampled for the baseline cosine


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def baseline_cosine(vectors: ArrayLike, sample: int = _SAMPLE, seed: int = 0) -> float:
    """Median cosine between two different faces of `vectors` ((n, d), n >= 2), on at most `sample` of them
    (a fixed-seed sample: deterministic). Label-free: how similar unrelated faces are in this space."""
    x = np.asarray(vectors)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need an (n, d) array of at least two faces, got shape {x.shape!r}")
    rng = np.random.default_rng(seed)
    chosen = _unit_rows(x[np.sort(rng.choice(len(x), min(sample, len(x)), replace=False))])
    cos = chosen @ chosen.T
    return float(np.median(cos[np.triu_indices(len(chosen), 1)]))


def average_with_neighbours(
    vectors: ArrayLike,
    pool: ArrayLike,
    neighbours: ArrayLike,
    *,
    baseline: float,
    power: float = DEFAULT_POWER,
    self_weight: float = DEFAULT_SELF_WEIGHT,
) -> np.ndarray:
    """(m, d) float32 unit vectors: each of `vectors` averaged with its neighbours among `pool`.

    vectors : (m, d) faces to average (raw embeddings; normalised here)
    pool : (n, d) library faces the neighbours index into (the library itself for the library's faces)
    neighbours : (m, k) int indices into `pool`, a face's k most similar pool faces, itself excluded;
        -1 (neighbors.MISSING) where there are fewer
    baseline : the space's cosine between unrelated faces (`baseline_cosine` of the library); neighbours at
        or below it get no weight
    power, self_weight : see the module docstring (a neighbour as similar as the face itself weighs 1)
    """
    x, p = _unit_rows(np.asarray(vectors)), _unit_rows(np.asarray(pool))
    idx = np.asarray(neighbours)
    if x.ndim != 2 or p.ndim != 2 or x.shape[1] != p.shape[1]:
        raise ValueError(f"vectors and pool must be (m, d) and (n, d) arrays, got {x.shape!r} and {p.shape!r}")
    if idx.ndim != 2 or len(idx) != len(x) or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"neighbours must be ({len(x)}, k) integers, got {idx.dtype} {idx.shape!r}")
    if idx.size and (idx.max() >= len(p) or idx.min() < _MISSING):
        raise ValueError(f"a neighbour index lies outside 0..{len(p) - 1} (or -1 for none)")
    if not -1.0 <= baseline < 1.0:
        raise ValueError(f"baseline must be a cosine in [-1, 1), got {baseline!r}")
    if not (0.0 < power < float("inf") and 0.0 < self_weight < float("inf")):
        raise ValueError(f"power and self_weight must be finite numbers > 0, got {power!r} and {self_weight!r}")
    present = idx != _MISSING
    safe = np.where(present, idx, 0)
    out = self_weight * x
    for j in range(idx.shape[1]):  # k passes of (m, d): no (m, k, d) array
        near = p[safe[:, j]]
        cos = np.einsum("ij,ij->i", x, near)
        weight = np.where(present[:, j], np.clip((cos - baseline) / (1.0 - baseline), 0.0, None) ** power, 0.0)
        out += weight[:, None].astype(np.float32) * near
    return _unit_rows(out)


def library_neighbour_average(
    vectors: ArrayLike,
    n_neighbors: int = DEFAULT_NEIGHBOURS,
    *,
    power: float = DEFAULT_POWER,
    self_weight: float = DEFAULT_SELF_WEIGHT,
) -> np.ndarray:
    """Every library face averaged with its `n_neighbors` nearest library faces ((n, d) in, (n, d) float32
    unit out); the neighbours come from `neighbors.knn_graph` (exact for a few thousand faces)."""
    from face_pipeline.domain.neighbors import knn_graph

    x = _unit_rows(np.asarray(vectors))
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need an (n, d) array of at least two faces, got shape {x.shape!r}")
    graph = knn_graph(x, n_neighbors=min(int(n_neighbors), len(x) - 1))
    return average_with_neighbours(
        x, x, graph.indices, baseline=baseline_cosine(x), power=power, self_weight=self_weight
    )
