"""Figures for dual-mode clustering: how right the automatic names are, how clean the unknown clusters are.

Conventions for every function here:

- `truth` is the true identity of each face, shape (n,), any comparable dtype (int, str, object).
- Cluster labels (`labels`, shape (n,), int) use `NOISE` (-1) for a face left alone; a noise face counts as
  a cluster of its own (a singleton), so noise never earns or costs precision, only recall.
- Person assignments (`assigned`, shape (n,)) hold a person label comparable with `truth`, or
  `unassigned` (default `NO_PERSON`, -1) where the face was not given a name.

Everything is O(n log n) (sorting and counting); no n x n matrix is built, so 200K faces are fine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from face_pipeline.domain.assignment import NO_PERSON
from face_pipeline.domain.clustering import NOISE

__all__ = [
    "BCubed",
    "ClusteringReport",
    "PairCounts",
    "assignment_precision",
    "bcubed",
    "cluster_counts",
    "cluster_purity",
    "evaluate_clustering",
    "false_accepts_per_1000",
    "noise_as_singletons",
    "pairwise_scores",
    "person_recall",
    "strangers_in_clusters",
]


def _as_codes(values: np.ndarray, name: str) -> np.ndarray:
    values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {values.shape!r}")
    return np.unique(values, return_inverse=True)[1].astype(np.int64)


def _check_same_length(**arrays: np.ndarray) -> None:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"arrays must have the same length, got {lengths!r}")


def noise_as_singletons(labels: np.ndarray) -> np.ndarray:
    """Cluster labels with every `NOISE` face given a fresh label of its own.

    labels: (n,) int, NOISE = -1. Returns (n,) int64 codes 0..k-1 (clusters first, then the noise faces).
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {labels.shape!r}")
    noise = labels == NOISE
    codes = np.empty(len(labels), dtype=np.int64)
    clustered = np.unique(labels[~noise], return_inverse=True)[1]
    codes[~noise] = clustered
    n_clusters = int(clustered.max()) + 1 if clustered.size else 0
    codes[noise] = n_clusters + np.arange(int(noise.sum()))
    return codes


def _contingency(truth: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Non-zero cells of the truth x cluster table: (count, truth size, cluster size) per cell, (c,) each."""
    _check_same_length(truth=truth, labels=labels)
    t = _as_codes(truth, "truth")
    c = noise_as_singletons(labels)
    cell, counts = np.unique(t * (int(c.max(initial=0)) + 1) + c, return_counts=True)
    cell_t, cell_c = np.divmod(cell, int(c.max(initial=0)) + 1)
    truth_size = np.bincount(t)[cell_t]
    cluster_size = np.bincount(c)[cell_c]
    return counts.astype(np.float64), truth_size.astype(np.float64), cluster_size.astype(np.float64)


@dataclass(frozen=True)
class BCubed:
    precision: float
    recall: float
    f1: float


def _f1(p: float, r: float) -> float:
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def bcubed(truth: np.ndarray, labels: np.ndarray) -> BCubed:
    """BCubed precision, recall and F1 (Amigo et al. 2009), noise as singletons.

    Per face: precision = share of its cluster that is its identity, recall = share of its identity that
    is in its cluster; both averaged over faces. From the contingency table:
    P = sum(n_ij^2 / |C_j|) / n, R = sum(n_ij^2 / |T_i|) / n.
    """
    n_ij, t_size, c_size = _contingency(truth, labels)
    n = n_ij.sum()
    if n == 0:
        raise ValueError("bcubed needs at least one face, got 0")
    p = float((n_ij**2 / c_size).sum() / n)
    r = float((n_ij**2 / t_size).sum() / n)
    return BCubed(p, r, _f1(p, r))


@dataclass(frozen=True)
class PairCounts:
    """Pairs of faces put together (predicted), truly together (true) and both (agree); with P, R, F1."""

    agree: int
    predicted: int
    true: int
    precision: float
    recall: float
    f1: float


def pairwise_scores(truth: np.ndarray, labels: np.ndarray) -> PairCounts:
    """Pair-counting precision/recall/F1: over unordered pairs of faces in one cluster / one identity.

    Precision is 1.0 when no pair is predicted (nothing claimed), recall 1.0 when no true pair exists.
    """
    n_ij, _, _ = _contingency(truth, labels)
    agree = int((n_ij * (n_ij - 1) / 2).sum())
    t_sizes = np.bincount(_as_codes(truth, "truth")).astype(np.float64)
    c_sizes = np.bincount(noise_as_singletons(labels)).astype(np.float64)
    true = int((t_sizes * (t_sizes - 1) / 2).sum())
    predicted = int((c_sizes * (c_sizes - 1) / 2).sum())
    p = agree / predicted if predicted else 1.0
    r = agree / true if true else 1.0
    return PairCounts(agree, predicted, true, p, r, _f1(p, r))


def cluster_purity(truth: np.ndarray, labels: np.ndarray) -> float:
    """Size-weighted purity of the multi-face clusters: sum over clusters of its largest identity's count,
    divided by the faces in those clusters. Noise and one-face clusters are left out (they are trivially
    pure). NaN when there is no multi-face cluster.
    """
    _check_same_length(truth=truth, labels=labels)
    labels = np.asarray(labels)
    in_cluster = labels != NOISE
    if not in_cluster.any():
        return float("nan")
    c = np.unique(labels[in_cluster], return_inverse=True)[1]
    t = _as_codes(np.asarray(truth)[in_cluster], "truth")
    sizes = np.bincount(c)
    multi = sizes[c] >= 2
    if not multi.any():
        return float("nan")
    cell, counts = np.unique(c[multi] * (int(t.max()) + 1) + t[multi], return_counts=True)
    largest = np.zeros(len(sizes), dtype=np.int64)
    np.maximum.at(largest, cell // (int(t.max()) + 1), counts)
    return float(largest.sum() / multi.sum())


def cluster_counts(truth: np.ndarray, labels: np.ndarray) -> dict[str, int]:
    """How many groups were found against how many there are.

    Returns clusters (multi-face clusters), noise (faces left alone), identities (distinct truth values),
    identities_multi (identities with >= 2 faces: the most clusters one could hope for).
    """
    _check_same_length(truth=truth, labels=labels)
    labels = np.asarray(labels)
    clustered = labels[labels != NOISE]
    _, sizes = np.unique(clustered, return_counts=True)
    _, t_sizes = np.unique(np.asarray(truth), return_counts=True)
    return {
        "clusters": int((sizes >= 2).sum()),
        "noise": int((labels == NOISE).sum()),
        "identities": len(t_sizes),
        "identities_multi": int((t_sizes >= 2).sum()),
    }


def strangers_in_clusters(
    truth: np.ndarray, labels: np.ndarray, assigned: np.ndarray | None = None, *, unassigned: object = NO_PERSON
) -> float:
    """Share of one-off strangers (identities with exactly one face in `truth`) that were put with others:
    in a multi-face cluster of `labels`, or given a person's name in `assigned` (optional, (n,)).
    A one-off stranger should stay alone; 0.0 is best. NaN when there is no one-off face.
    """
    truth = np.asarray(truth)
    labels = np.asarray(labels)
    _check_same_length(truth=truth, labels=labels)
    _, t_inverse, t_sizes = np.unique(truth, return_inverse=True, return_counts=True)
    one_off = t_sizes[t_inverse] == 1
    if not one_off.any():
        return float("nan")
    codes = noise_as_singletons(labels)
    grouped = np.bincount(codes)[codes] >= 2
    if assigned is not None:
        assigned = np.asarray(assigned)
        _check_same_length(truth=truth, assigned=assigned)
        grouped |= assigned != unassigned
    return float(grouped[one_off].mean())


def assignment_precision(assigned: np.ndarray, truth: np.ndarray, *, unassigned: object = NO_PERSON) -> float:
    """Share of the automatic assignments that name the right person.

    assigned: (m,) person label per face or `unassigned`; truth: (m,) true identity in the same label
    space (a face of an unnamed person has a truth no person carries, so naming it is wrong).
    NaN when nothing was assigned.
    """
    assigned, truth = np.asarray(assigned), np.asarray(truth)
    _check_same_length(assigned=assigned, truth=truth)
    made = assigned != unassigned
    if not made.any():
        return float("nan")
    return float((assigned[made] == truth[made]).mean())


def person_recall(
    assigned: np.ndarray, truth: np.ndarray, known_people: np.ndarray, *, unassigned: object = NO_PERSON
) -> float:
    """Share of the faces of named people that were assigned to the right person.

    Pass only faces the user did not label themselves (the ones automatic assignment had to find).
    known_people: (p,) the person labels that exist (have prototypes). NaN when no face is of a known person.
    """
    assigned, truth = np.asarray(assigned), np.asarray(truth)
    _check_same_length(assigned=assigned, truth=truth)
    of_known = np.isin(truth, np.asarray(known_people))
    if not of_known.any():
        return float("nan")
    return float((assigned[of_known] == truth[of_known]).mean())


def false_accepts_per_1000(
    assigned: np.ndarray, truth: np.ndarray, known_people: np.ndarray, *, unassigned: object = NO_PERSON
) -> float:
    """Faces of unnamed people (truth not in `known_people`) given a name, per 1,000 such faces.

    NaN when every face belongs to a known person.
    """
    assigned, truth = np.asarray(assigned), np.asarray(truth)
    _check_same_length(assigned=assigned, truth=truth)
    of_unknown = ~np.isin(truth, np.asarray(known_people))
    if not of_unknown.any():
        return float("nan")
    return float(1000.0 * (assigned[of_unknown] != unassigned).mean())


@dataclass(frozen=True)
class ClusteringReport:
    """Every clustering figure at once, for benchmarks and asset metadata."""

    bcubed_precision: float
    bcubed_recall: float
    bcubed_f1: float
    pairwise_f1: float
    purity: float
    strangers_in_clusters: float
    clusters: int
    noise: int
    identities: int
    identities_multi: int


def evaluate_clustering(truth: np.ndarray, labels: np.ndarray) -> ClusteringReport:
    """All clustering figures of `labels` (NOISE = -1) against `truth`, both (n,)."""
    b = bcubed(truth, labels)
    counts = cluster_counts(truth, labels)
    return ClusteringReport(
        bcubed_precision=b.precision,
        bcubed_recall=b.recall,
        bcubed_f1=b.f1,
        pairwise_f1=pairwise_scores(truth, labels).f1,
        purity=cluster_purity(truth, labels),
        strangers_in_clusters=strangers_in_clusters(truth, labels),
        **counts,
    )
