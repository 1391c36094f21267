"""Held-out figures for an embedding space: verification TAR at a fixed FAR, and prototype identification.

Everything here is numpy on L2-normalised float32 vectors, so the raw space and a trained projection are
measured by the same code on the same faces. The split is by identity: the projection is judged mostly on
people it never saw (most people in a library are never labelled), plus unseen photos of people it did see.

Pairs are sampled once (`EvaluationPlan`) and reused for every epoch and for both spaces, so differences
between figures come from the vectors, never from a different draw of pairs. No N x N matrix is built on
large sets: all pairs only while they fit in `max_pairs`, sampled pairs otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

UNLABELLED = -1  # person label of a face nobody has named


@dataclass(frozen=True)
class IdentitySplit:
    """Face indices (into the caller's arrays) for training and validation.

    `train` and `holdout` hold faces of the training people; `unseen_gallery` and `unseen_query` hold the
    faces of validation people, who are never trained on. A validation person's gallery is a few faces
    whose mean is their prototype (as when a user names a new person from a handful of photos).
    """

    train: np.ndarray  # (t,) int64
    holdout: np.ndarray  # (h,) int64, seen people, photos kept out of training
    unseen_gallery: np.ndarray  # (g,) int64
    unseen_query: np.ndarray  # (q,) int64
    train_people: np.ndarray  # (P_train,) person labels
    val_people: np.ndarray  # (P_val,) person labels

    @property
    def unseen(self) -> np.ndarray:
        return np.concatenate([self.unseen_gallery, self.unseen_query])

    @property
    def evaluation(self) -> np.ndarray:
        """Every face the figures are computed on: never trained on."""
        return np.concatenate([self.holdout, self.unseen_gallery, self.unseen_query])


def split_by_identity(
    person_labels: np.ndarray,
    val_fraction: float = 0.25,
    seed: int = 0,
    *,
    holdout_fraction: float = 0.2,
    gallery_size: int = 3,
    min_faces: int = 2,
) -> IdentitySplit:
    """Split labelled faces into training people and validation people, and hold out photos of the former.

    person_labels: (n,) int, `UNLABELLED` (-1) for faces without a name (they go nowhere).
    People with fewer than `min_faces` faces give no same-person pair and are left out entirely.
    At least two people stay on each side so both sides have different-person pairs. Each training
    person keeps at least two training faces; `holdout_fraction` of the rest are held out.
    A validation person's gallery is `gallery_size` faces, fewer when needed to leave one query.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if not 0.0 <= holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
    labels = np.asarray(person_labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    people, counts = np.unique(labels[labels != UNLABELLED], return_counts=True)
    people = people[counts >= min_faces]
    if people.size < 4:
        raise ValueError(f"need at least 4 people with {min_faces}+ faces to split, have {people.size}")
    n_val = int(np.clip(round(val_fraction * people.size), 2, people.size - 2))
    shuffled = rng.permutation(people)
    val_people, train_people = np.sort(shuffled[:n_val]), np.sort(shuffled[n_val:])

    # A random rank of each face within its person decides holdout / gallery membership without a loop.
    candidates = np.flatnonzero(np.isin(labels, people))
    candidates = candidates[rng.permutation(candidates.size)]
    candidates = candidates[np.argsort(labels[candidates], kind="stable")]
    cand_labels = labels[candidates]
    _, first, cand_counts = np.unique(cand_labels, return_index=True, return_counts=True)
    rank = np.arange(candidates.size) - np.repeat(first, cand_counts)
    count = np.repeat(cand_counts, cand_counts)

    is_val = np.isin(cand_labels, val_people)
    n_hold = np.minimum(np.floor(count * holdout_fraction), count - 2)
    n_gallery = np.minimum(gallery_size, count - 1)
    return IdentitySplit(
        train=np.sort(candidates[~is_val & (rank >= n_hold)]),
        holdout=np.sort(candidates[~is_val & (rank < n_hold)]),
        unseen_gallery=np.sort(candidates[is_val & (rank < n_gallery)]),
        unseen_query=np.sort(candidates[is_val & (rank >= n_gallery)]),
        train_people=train_people,
        val_people=val_people,
    )


# --- verification ---------------------------------------------------------------------------------------


def sample_pairs(
    labels: np.ndarray, max_pairs: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i, j), i != j, of positions into `labels`, and whether they are the same person.

    All n(n-1)/2 pairs while that is <= `max_pairs`; otherwise every same-person pair (up to half the
    budget, sampled beyond) and random different-person pairs for the rest. Returns (i, j, same), each (m,).
    """
    labels = np.asarray(labels)
    n = labels.size
    if n * (n - 1) // 2 <= max_pairs:
        i, j = np.triu_indices(n, k=1)
        return i, j, labels[i] == labels[j]

    # Same-person pairs, by position inside each person's block of a label-sorted order.
    order = np.argsort(labels, kind="stable")
    _, first, counts = np.unique(labels[order], return_index=True, return_counts=True)
    n_same = int((counts * (counts - 1) // 2).sum())
    budget = max_pairs // 2
    if n_same <= budget:  # enumerate them all: sum(c^2) = 2 * n_same + n stays within the budget
        cells = counts * counts
        block = np.repeat(np.arange(counts.size), cells)
        local = np.arange(block.size) - np.repeat(np.cumsum(cells) - cells, cells)
        a, b = local // counts[block], local % counts[block]
        keep = a < b
        block, a, b = block[keep], a[keep], b[keep]
    else:  # draw: a face with probability ~ (count - 1), then another face of the same person
        weights = np.repeat(counts - 1, counts).astype(np.float64)
        position = rng.choice(n, size=budget, p=weights / weights.sum())
        block = np.repeat(np.arange(counts.size), counts)[position]
        a = position - first[block]
        b = rng.integers(0, counts[block] - 1)
        b += b >= a
    si, sj = order[first[block] + a], order[first[block] + b]

    # Different-person pairs: uniform draws, rejecting same-person and self pairs (rare when many people).
    n_diff = max_pairs - si.size
    di, dj = rng.integers(0, n, size=(2, int(n_diff * 1.2) + 16))
    keep = labels[di] != labels[dj]
    di, dj = di[keep][:n_diff], dj[keep][:n_diff]
    i = np.concatenate([si, di])
    j = np.concatenate([sj, dj])
    return i, j, np.concatenate([np.ones(si.size, bool), np.zeros(di.size, bool)])


def pair_scores(vectors: np.ndarray, i: np.ndarray, j: np.ndarray, *, gram_limit: int = 4096) -> np.ndarray:
    """Cosine similarity of each pair of unit rows: (m,) float32.

    Up to `gram_limit` rows one matrix product and a lookup is fastest (64 MB at the limit); beyond
    it the pairs are gathered in chunks, so memory stays bounded whatever the number of faces.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.shape[0] <= gram_limit:
        return (vectors @ vectors.T)[i, j]
    out = np.empty(i.size, dtype=np.float32)
    chunk = 32_768
    for start in range(0, i.size, chunk):
        stop = start + chunk
        out[start:stop] = np.einsum("ij,ij->i", vectors[i[start:stop]], vectors[j[start:stop]])
    return out


@dataclass(frozen=True)
class VerificationFigures:
    """True accept rate at the threshold where at most `far` of different-person pairs are accepted."""

    tar: float
    far: float  # the requested false accept rate
    threshold: float  # cosine; a pair is accepted when its score is above it
    n_genuine: int
    n_impostor: int


def tar_at_far(scores: np.ndarray, same: np.ndarray, far: float = 1e-3) -> VerificationFigures:
    """TAR at FAR from pair scores (m,) and same-person flags (m,).

    With fewer than 1/far impostor pairs the threshold is the highest impostor score (FAR 0): the figure
    is then stricter than asked, never looser.
    """
    genuine, impostor = scores[same], scores[~same]
    if genuine.size == 0 or impostor.size == 0:
        return VerificationFigures(float("nan"), far, float("nan"), int(genuine.size), int(impostor.size))
    allowed = int(np.floor(far * impostor.size))  # impostors that may score above the threshold
    kth = max(impostor.size - 1 - allowed, 0)
    threshold = float(np.partition(impostor, kth)[kth])
    return VerificationFigures(
        tar=float(np.mean(genuine > threshold)),
        far=far,
        threshold=threshold,
        n_genuine=int(genuine.size),
        n_impostor=int(impostor.size),
    )


# --- identification against prototypes ------------------------------------------------------------------


def prototypes(vectors: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit-length mean vector per person: (people (P,), prototypes (P, d) float32)."""
    people, inverse = np.unique(labels, return_inverse=True)
    sums = np.zeros((people.size, vectors.shape[1]), dtype=np.float64)
    np.add.at(sums, inverse, vectors)
    sums /= np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    return people, sums.astype(np.float32)


@dataclass(frozen=True)
class IdentificationFigures:
    """Nearest-prototype identification of query faces.

    accuracy: closed set, the nearest prototype is the right person.
    open_set_rate: right person AND similarity above the threshold that lets only `open_set_far` of
    strangers in; a stranger is simulated by scoring each query against everyone but its own person.
    """

    accuracy: float
    accuracy_seen: float  # queries of training people (their prototypes come from training faces)
    accuracy_unseen: float  # queries of validation people (prototypes from a few gallery faces)
    open_set_rate: float
    open_set_far: float
    threshold: float
    n_queries: int
    n_people: int


def identify(
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    queries: np.ndarray,
    query_labels: np.ndarray,
    query_seen: np.ndarray,
    open_set_far: float = 0.01,
    chunk: int = 8192,
) -> IdentificationFigures:
    """Classify unit-vector queries (q, d) by the nearest prototype of the gallery (g, d)."""
    people, protos = prototypes(gallery, gallery_labels)
    own = np.searchsorted(people, query_labels)
    if queries.shape[0] == 0 or people.size < 2 or not np.all(people[np.minimum(own, people.size - 1)] == query_labels):
        raise ValueError("every query's person needs a prototype, and there must be at least two people")
    best, best_other = np.empty(queries.shape[0], np.float32), np.empty(queries.shape[0], np.float32)
    correct = np.empty(queries.shape[0], bool)
    for start in range(0, queries.shape[0], chunk):  # (chunk, P) similarities at a time
        sims = queries[start : start + chunk] @ protos.T
        rows = np.arange(sims.shape[0])
        own_chunk = own[start : start + chunk]
        best[start : start + chunk] = sims.max(axis=1)
        correct[start : start + chunk] = sims.argmax(axis=1) == own_chunk
        sims[rows, own_chunk] = -np.inf
        best_other[start : start + chunk] = sims.max(axis=1)
    threshold = float(np.quantile(best_other, 1.0 - open_set_far, method="higher"))
    seen = np.asarray(query_seen, bool)
    return IdentificationFigures(
        accuracy=float(correct.mean()),
        accuracy_seen=float(correct[seen].mean()) if seen.any() else float("nan"),
        accuracy_unseen=float(correct[~seen].mean()) if (~seen).any() else float("nan"),
        open_set_rate=float(np.mean(correct & (best > threshold))),
        open_set_far=open_set_far,
        threshold=threshold,
        n_queries=int(queries.shape[0]),
        n_people=int(people.size),
    )


# --- one plan, any space --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpaceFigures:
    """Validation figures of one embedding space (raw or projected)."""

    verification: VerificationFigures  # pairs among all evaluation faces (seen and unseen people)
    verification_unseen: VerificationFigures  # pairs among validation people only: never-labelled people
    identification: IdentificationFigures


@dataclass(frozen=True)
class EvaluationPlan:
    """Which faces and pairs are measured; fixed once so every space is measured on the same draw."""

    split: IdentitySplit
    pair_i: np.ndarray  # (m,) indices into split.evaluation
    pair_j: np.ndarray
    pair_same: np.ndarray  # (m,) bool
    pair_unseen: np.ndarray  # (m,) bool, both faces belong to validation people
    far: float
    open_set_far: float

    @classmethod
    def build(
        cls,
        split: IdentitySplit,
        person_labels: np.ndarray,
        *,
        far: float = 1e-3,
        open_set_far: float = 0.01,
        max_pairs: int = 1_000_000,
        seed: int = 0,
    ) -> EvaluationPlan:
        evaluation = split.evaluation
        labels = np.asarray(person_labels)[evaluation]
        i, j, same = sample_pairs(labels, max_pairs, np.random.default_rng(seed))
        n_holdout = split.holdout.size  # evaluation = holdout first, then validation people's faces
        return cls(split, i, j, same, (i >= n_holdout) & (j >= n_holdout), far, open_set_far)

    def verification(self, evaluation_vectors: np.ndarray) -> VerificationFigures:
        """Pooled TAR@FAR from unit vectors of the evaluation faces only, in `split.evaluation` order."""
        scores = pair_scores(evaluation_vectors, self.pair_i, self.pair_j)
        return tar_at_far(scores, self.pair_same, self.far)

    def evaluate(self, vectors: np.ndarray, person_labels: np.ndarray) -> SpaceFigures:
        """All figures for one space. vectors: (n, d) unit rows indexed like `person_labels` (n,)."""
        split = self.split
        evaluation = vectors[split.evaluation]
        scores = pair_scores(evaluation, self.pair_i, self.pair_j)
        gallery_idx = np.concatenate([split.train, split.unseen_gallery])
        query_idx = np.concatenate([split.holdout, split.unseen_query])
        seen = np.arange(query_idx.size) < split.holdout.size
        return SpaceFigures(
            verification=tar_at_far(scores, self.pair_same, self.far),
            verification_unseen=tar_at_far(scores[self.pair_unseen], self.pair_same[self.pair_unseen], self.far),
            identification=identify(
                vectors[gallery_idx],
                person_labels[gallery_idx],
                vectors[query_idx],
                person_labels[query_idx],
                seen,
                self.open_set_far,
            ),
        )


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, float32; zero rows stay zero."""
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
