"""Clustering figures for the evaluation, tests and benchmarks: BCubed and pair-counting F, group counts,
strangers put with others, and all of them at once (`evaluate_clustering`).

Same conventions as `face_pipeline.domain.metrics` (which keeps the figures the promotion gate uses: purity,
assignment precision, person recall, false accepts): `truth` (n,) identities, `labels` (n,) int clusters with
`NOISE` (-1) for a face left alone, counted as a singleton. O(n log n); no n x n matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from face_pipeline.domain.assignment import NO_PERSON
from face_pipeline.domain.clustering import NOISE
from face_pipeline.domain.metrics import as_codes, check_same_length, cluster_purity

__all__ = [
    "BCubed",
    "ClusteringReport",
    "PairCounts",
    "bcubed",
    "cluster_counts",
    "evaluate_clustering",
    "noise_as_singletons",
    "pairwise_scores",
    "strangers_in_clusters",
]


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
    check_same_length(truth=truth, labels=labels)
    t = as_codes(truth, "truth")
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
    t_sizes = np.bincount(as_codes(truth, "truth")).astype(np.float64)
    c_sizes = np.bincount(noise_as_singletons(labels)).astype(np.float64)
    true = int((t_sizes * (t_sizes - 1) / 2).sum())
    predicted = int((c_sizes * (c_sizes - 1) / 2).sum())
    p = agree / predicted if predicted else 1.0
    r = agree / true if true else 1.0
    return PairCounts(agree, predicted, true, p, r, _f1(p, r))


def cluster_counts(truth: np.ndarray, labels: np.ndarray) -> dict[str, int]:
    """How many groups were found against how many there are.

    Returns clusters (multi-face clusters), noise (faces left alone), identities (distinct truth values),
    identities_multi (identities with >= 2 faces: the most clusters one could hope for).
    """
    check_same_length(truth=truth, labels=labels)
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
    check_same_length(truth=truth, labels=labels)
    _, t_inverse, t_sizes = np.unique(truth, return_inverse=True, return_counts=True)
    one_off = t_sizes[t_inverse] == 1
    if not one_off.any():
        return float("nan")
    codes = noise_as_singletons(labels)
    grouped = np.bincount(codes)[codes] >= 2
    if assigned is not None:
        assigned = np.asarray(assigned)
        check_same_length(truth=truth, assigned=assigned)
        grouped |= assigned != unassigned
    return float(grouped[one_off].mean())


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
