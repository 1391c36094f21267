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

Measured (benchmarks/learning_options.py: lfw-dev, 3 labelling rounds x 3 splits, every option's threshold
calibrated on training-side strangers at the same rate; raw -> averaged -> `LibraryMatcher`):
- buffalo_s on photos degraded to 80 px / JPEG q40: known-people errors 575 -> 414 (-28%) -> 424 (-26%),
  precision 0.9929 -> 0.9932 -> 0.9932, strangers named 4.2 -> 4.1 -> 4.1 per 1,000 (PersonMatcher alone:
  593, no gain);
- dlib: 643 -> 304 (-53%) -> 257 (-60%), precision 0.9852 -> 0.9854 -> 0.9865, strangers 9.7 -> 10.3 -> 9.6
  (PersonMatcher alone: 317, -51%);
- buffalo_s on sharp photos: 44 -> 30 -> 31 (few errors left), strangers 20.8 -> 21.5 -> 21.0.
The missed degraded faces score 0.25-0.35 against their person's labelled faces, but 84% of them (split 0,
round 1) have a face of the same person as their nearest library face (mostly unlabelled: held-out photos,
faces not yet named).
Strangers named stay within calibration noise (on three other splits: degraded 5.4 -> 3.9, dlib 5.5 -> 5.9;
PersonMatcher 5.9 there too). Re-scoring with these neighbours instead (score diffusion, two-hop links,
neighbour votes, k-reciprocal re-ranking, cluster membership) helped little or harmed: see the benchmark.
PersonMatcher's t-norm must not run in the averaged space: averaging a lone stranger with a named person's
face gives it exactly the lead over other people that t-norm rewards (dlib errors 643 -> 2,953).

Shapes: m faces to average, n library faces (the pool their neighbours come from), k neighbours, d dims.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from face_pipeline.domain.person_matching import PersonMatcher

__all__ = [
    "DEFAULT_NEIGHBOURS",
    "LibraryMatcher",
    "average_with_neighbours",
    "baseline_cosine",
    "library_neighbour_average",
]

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


def _nearest(queries: np.ndarray, pool: np.ndarray, k: int, chunk: int = 4096) -> np.ndarray:
    """(m, k) indices of each query's k most similar pool faces, best first (exact; unit rows in)."""
    out = np.empty((len(queries), k), np.int64)
    for start in range(0, len(queries), chunk):
        sims = queries[start : start + chunk] @ pool.T
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, part, 1), axis=1)
        out[start : start + chunk] = np.take_along_axis(part, order, 1)
    return out


class LibraryMatcher:
    """Scores faces against the named people with the library as context: a share `context_share` of the
    score comes from the neighbour-averaged space (raw prototype cosines there, on PersonMatcher's pooled
    impostor scale), the rest from the raw space's `PersonMatcher` (adaptive s-norm). The two help different
    faces: s-norm corrects people and faces that resemble everyone (dlib: -51% errors alone), averaging
    rescues weak faces through their unlabelled neighbours (small blurred ArcFace faces: -28% alone, where
    s-norm did nothing); together (share 0.8) dlib -60%, degraded buffalo_s -26%, no harm on sharp ArcFace.

    fit(library, person_labels, rejections): `library` is EVERY face of the library, labelled or not; the
    scores of its faces come from `scores(rows)`, those of faces outside it (a new photo) from
    `scores_of(vectors)`, their neighbours searched among the library's faces. Columns follow `people_`.
    Calibrate thresholds on these scores (e.g. on faces users rejected or on strangers): they are not cosines.
    """

    def __init__(
        self,
        *,
        context_share: float = 0.8,
        n_neighbors: int = DEFAULT_NEIGHBOURS,
        power: float = DEFAULT_POWER,
        self_weight: float = DEFAULT_SELF_WEIGHT,
        max_exemplars: int = 5,
        cohort_size: int = 50,
        weight: float = 1.0,
    ) -> None:
        if not 0.0 <= context_share <= 1.0:
            raise ValueError(f"context_share must lie in [0, 1], got {context_share!r}")
        if not isinstance(n_neighbors, (int, np.integer)) or n_neighbors < 1:
            raise ValueError(f"n_neighbors must be an integer >= 1, got {n_neighbors!r}")
        self.context_share = float(context_share)
        self.n_neighbors = int(n_neighbors)
        self.power = power
        self.self_weight = self_weight
        self._raw = PersonMatcher(max_exemplars=max_exemplars, cohort_size=cohort_size, weight=weight)
        self._context = PersonMatcher(max_exemplars=max_exemplars, cohort_size=cohort_size, weight=0.0)

    def fit(
        self,
        library: ArrayLike,
        person_labels: ArrayLike,
        rejections: ArrayLike | None = None,
        neighbours: ArrayLike | None = None,
    ) -> LibraryMatcher:
        """library: (n, d) every library face; person_labels: (n,) int, NO_PERSON (-1) for faces nobody
        labelled; rejections: (k, 2) (face row, person label) "not this person"; neighbours: (n, >= k) int,
        each face's nearest other library faces best first (-1: none), e.g. `knn_graph(...).indices` the
        clustering already built (default: searched here). Needs labelled faces of two people."""
        from face_pipeline.domain.neighbors import knn_graph

        x = _unit_rows(np.asarray(library))
        labels = np.asarray(person_labels)
        if x.ndim != 2 or len(x) < 2:
            raise ValueError(f"library must be an (n, d) array of at least two faces, got shape {x.shape!r}")
        if not np.isfinite(x).all():
            raise ValueError("library vectors contain NaN or infinite values")
        if labels.shape != (len(x),):
            raise ValueError(f"person_labels must have shape ({len(x)},), got {labels.shape!r}")
        self.library_ = x
        self.baseline_ = baseline_cosine(x)
        if neighbours is None:
            near = knn_graph(x, n_neighbors=min(self.n_neighbors, len(x) - 1)).indices
        else:
            near = np.asarray(neighbours)
            if near.ndim != 2 or len(near) != len(x):
                raise ValueError(f"neighbours must be ({len(x)}, k) indices, got shape {near.shape!r}")
            near = near[:, : self.n_neighbors]
        self.averaged_ = average_with_neighbours(
            x, x, near, baseline=self.baseline_, power=self.power, self_weight=self.self_weight
        )
        self._raw.fit(x, labels, rejections)
        self._context.fit(self.averaged_, labels, rejections)
        self.people_ = self._raw.people_
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "people_"):
            raise ValueError("this LibraryMatcher is not fitted: call fit(...) first")

    @property
    def parts(self) -> tuple[PersonMatcher, PersonMatcher]:
        """The fitted raw-space matcher and the neighbour-averaged space's one (for mapping thresholds)."""
        self._check_fitted()
        return self._raw, self._context

    def _mix(self, raw: np.ndarray, averaged: np.ndarray) -> np.ndarray:
        a = self.context_share
        return ((1 - a) * self._raw.scores(raw) + a * self._context.scores(averaged)).astype(np.float32)

    def scores(self, rows: ArrayLike | None = None) -> np.ndarray:
        """(m, p) float32 scores of the library faces `rows` (default: all), higher: more likely that person."""
        self._check_fitted()
        idx = np.arange(len(self.library_)) if rows is None else np.asarray(rows, np.int64)
        return self._mix(self.library_[idx], self.averaged_[idx])

    def scores_of(self, vectors: ArrayLike) -> np.ndarray:
        """(m, p) float32 scores of faces outside the library, averaged with their nearest library faces."""
        self._check_fitted()
        x = _unit_rows(np.asarray(vectors))
        if x.ndim != 2 or x.shape[1] != self.library_.shape[1]:
            raise ValueError(f"vectors must have shape (m, {self.library_.shape[1]}), got {x.shape!r}")
        k = min(self.n_neighbors, len(self.library_))
        near = _nearest(x, self.library_, k)
        averaged = average_with_neighbours(
            x, self.library_, near, baseline=self.baseline_, power=self.power, self_weight=self.self_weight
        )
        return self._mix(x, averaged)
