"""Figures for dual-mode clustering: how right the automatic names are, how clean the unknown clusters are.

These are the figures the pipeline itself uses (the promotion gate and training report them); BCubed and
pair-counting F, group counts and strangers in clusters serve only the evaluation and the benchmarks and
live in `face_pipeline_eval.cluster_metrics`.

Conventions for every function here:

- `truth` is the true identity of each face, shape (n,), any comparable dtype (int, str, object).
- Cluster labels (`labels`, shape (n,), int) use `NOISE` (-1) for a face left alone; a noise face counts as
  a cluster of its own (a singleton), so noise never earns or costs precision, only recall.
- Person assignments (`assigned`, shape (n,)) hold a person label comparable with `truth`, or
  `unassigned` (default `NO_PERSON`, -1) where the face was not given a name.

Everything is O(n log n) (sorting and counting); no n x n matrix is built, so 200K faces are fine.

Also here, because the registry and the integrity check read them without the gate's machinery: the promotion
gate's figures of one space (`PipelineFigures`), the rule that says whether one space's figures beat another's
(`pipeline_failures`), and `jsonable`, which writes figures as strict JSON.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from face_pipeline.domain.assignment import NO_PERSON
from face_pipeline.domain.naming import NOISE

__all__ = [
    "as_codes",
    "assignment_precision",
    "check_same_length",
    "cluster_purity",
    "false_accepts_per_1000",
    "person_recall",
]


def as_codes(values: np.ndarray, name: str) -> np.ndarray:
    """(n,) int64 codes 0..k-1 of a one-dimensional array of any comparable values."""
    values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {values.shape!r}")
    return np.unique(values, return_inverse=True)[1].astype(np.int64)


def check_same_length(**arrays: np.ndarray) -> None:
    """ValueError naming the lengths unless all `arrays` have the same length."""
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"arrays must have the same length, got {lengths!r}")


def cluster_purity(truth: np.ndarray, labels: np.ndarray) -> float:
    """Size-weighted purity of the multi-face clusters: sum over clusters of its largest identity's count,
    divided by the faces in those clusters. Noise and one-face clusters are left out (they are trivially
    pure). NaN when there is no multi-face cluster.
    """
    check_same_length(truth=truth, labels=labels)
    labels = np.asarray(labels)
    in_cluster = labels != NOISE
    if not in_cluster.any():
        return float("nan")
    c = np.unique(labels[in_cluster], return_inverse=True)[1]
    t = as_codes(np.asarray(truth)[in_cluster], "truth")
    sizes = np.bincount(c)
    multi = sizes[c] >= 2
    if not multi.any():
        return float("nan")
    cell, counts = np.unique(c[multi] * (int(t.max()) + 1) + t[multi], return_counts=True)
    largest = np.zeros(len(sizes), dtype=np.int64)
    np.maximum.at(largest, cell // (int(t.max()) + 1), counts)
    return float(largest.sum() / multi.sum())


def assignment_precision(assigned: np.ndarray, truth: np.ndarray, *, unassigned: object = NO_PERSON) -> float:
    """Share of the automatic assignments that name the right person.

    assigned: (m,) person label per face or `unassigned`; truth: (m,) true identity in the same label
    space (a face of an unnamed person has a truth no person carries, so naming it is wrong).
    NaN when nothing was assigned.
    """
    assigned, truth = np.asarray(assigned), np.asarray(truth)
    check_same_length(assigned=assigned, truth=truth)
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
    check_same_length(assigned=assigned, truth=truth)
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
    check_same_length(assigned=assigned, truth=truth)
    of_unknown = ~np.isin(truth, np.asarray(known_people))
    if not of_unknown.any():
        return float("nan")
    return float(1000.0 * (assigned[of_unknown] != unassigned).mean())


# --- the promotion gate's figures of one space, and the rule comparing two ---------------------------------


@dataclass(frozen=True)
class PipelineFigures:
    """What the pipeline does with one space at its thresholds (NaN where a figure has nothing to count)."""

    precision: float  # share of automatic names that are right (strangers named count as wrong)
    recall: float  # share of the queries named rightly
    false_accepts_per_1000: float  # strangers' faces given a name, per 1,000
    purity: float  # size-weighted purity of the groups made of the faces left unnamed
    grouped: float  # share of the faces left unnamed that were put in a group
    n_queries: int
    n_strangers: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _or_perfect(value: float) -> float:
    """NaN (nothing named, nothing grouped) counts as making no mistake."""
    return 1.0 if np.isnan(value) else value


def pipeline_failures(
    before: PipelineFigures, after: PipelineFigures, *, min_recall_gain: float = 0.005, tolerance: float = 0.005
) -> list[str]:
    """Why the projected space (`after`) does not beat the raw one (`before`); empty when it does: it must
    find more of the named people's faces (by `min_recall_gain`, and at least two faces) while naming no more
    strangers, keeping precision and keeping the groups of the unnamed as pure (each within `tolerance`)."""
    required = max(min_recall_gain, 2.0 / max(before.n_queries, 1))
    failures = []
    if not after.recall >= before.recall + required:
        failures.append(f"recall gain below {required:.3f}")
    if _or_perfect(after.precision) < _or_perfect(before.precision) - tolerance:
        failures.append("precision fell")
    if after.false_accepts_per_1000 > before.false_accepts_per_1000 + 1000 * tolerance:
        failures.append("more strangers named")
    if _or_perfect(after.purity) < _or_perfect(before.purity) - tolerance:
        failures.append("groups of the unnamed less pure")
    return failures


def jsonable(value: Any) -> Any:
    """Dataclass dicts to strict JSON: numpy scalars to Python, nan/inf to None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
