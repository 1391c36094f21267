"""Supervised mode: match faces to the people users have named.

A person is described by prototypes built from their user-confirmed faces: a normalised centroid plus up
to a few exemplars (medoids of the person's looks: ages, poses, glasses), so someone photographed as a child
and as an adult still matches. A face's score for a person is the best cosine over that person's
prototypes. A face is assigned to its best person when

1. the score reaches the embedding space's `threshold`,
2. it beats the second-best person by `margin` (look-alikes stay for a human to decide),
3. the user never rejected that person for that face (a rejected person is masked out; the next best
   person may win only on rules 1-2 by itself), and
4. no other face of the same photo takes that person with a higher score (one face per person per photo;
   a person already confirmed in the photo can be passed as `occupied`).

Thresholds belong to an embedding space (`SpaceThresholds`, `thresholds_for_space`): cosine scales differ
wildly between models (dlib: strangers at 0.84; ArcFace: strangers at 0.1).

A learned matcher (`domain/learned_matching.py`) may replace the score: `assign_to_known_people(...,
scorer=...)` takes each face's (m, p) scores from it instead of the best prototype cosines, with a threshold and
margin on the scorer's own scale; rules 2-4 (margin, rejected people, one face per person per photo) stay.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from enum import IntEnum, StrEnum

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "NO_PERSON",
    "Assignment",
    "Outcome",
    "PersonScorer",
    "PrototypeKind",
    "Prototypes",
    "SpaceThresholds",
    "assign_to_known_people",
    "build_prototypes",
    "thresholds_for_space",
]

NO_PERSON = -1  # person index of a face that was not assigned

# (r, d) face vectors -> (r, p) float32 scores, column j for Prototypes.person_ids[j] (higher: more likely that
# person; -inf: never that person). Threshold and margin are then on the scorer's scale.
PersonScorer = Callable[[np.ndarray], np.ndarray]

_SCORE_BLOCK = 1 << 24  # float32 scores per chunk (64 MB) when the chunk size is automatic


class PrototypeKind(StrEnum):
    CENTROID = "centroid"
    EXEMPLAR = "exemplar"


class Outcome(IntEnum):
    """Why a face ended where it did (`Assignment.outcome`)."""

    ASSIGNED = 0
    BELOW_THRESHOLD = 1  # best person scored under the threshold
    AMBIGUOUS = 2  # best and second-best person closer than the margin
    PHOTO_CONFLICT = 3  # another face of the same photo took the person with a higher score
    NO_CANDIDATE = 4  # no prototypes, or every person ruled out for this face


# --- thresholds ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpaceThresholds:
    """Decision thresholds of one embedding space, all on cosine similarity / cosine distance.

    threshold : minimum best-person score for an automatic assignment
    margin : minimum lead of the best person over the second-best person
    cluster_eps : cosine distance at which two unknown faces are linked when clustering
    cluster_method : how the unknown faces are grouped (domain.clustering.METHODS)
    min_cluster_size : smallest group of unknown faces offered for naming
    """

    threshold: float
    margin: float
    cluster_eps: float
    cluster_method: str = "hdbscan"
    min_cluster_size: int = 3

    def __post_init__(self) -> None:
        if not -1.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be a cosine in [-1, 1], got {self.threshold!r}")
        if not 0.0 <= self.margin <= 2.0:
            raise ValueError(f"margin must be in [0, 2], got {self.margin!r}")
        if not 0.0 < self.cluster_eps <= 2.0:
            raise ValueError(f"cluster_eps must be a cosine distance in (0, 2], got {self.cluster_eps!r}")
        if self.min_cluster_size < 2:
            raise ValueError(f"min_cluster_size must be >= 2, got {self.min_cluster_size!r}")


# Raw model spaces. dlib (lfw-dev, measured): same person median 0.953 (1st percentile 0.908), strangers
# median 0.836 (99th percentile 0.908). Against prototypes, 0.95 / 0.02 gave 99.3% precision, 92% recall
# and 4.6 false accepts per 1,000 faces of unnamed people (people with 4+ photos named from half of them;
# benchmarks/cluster_domain.py). Cluster eps 0.055 kept purity >= 0.98 and strangers in clusters <= 3%
# whether many, few or no people were named (0.06: F +0.01, but 5% strangers with many people named).
# Threshold 0.955 rather than 0.95: chosen on the evaluation's phase A only (faces evaluate, lfw-dev), it
# raised phase-B precision from 95.6% to 97.4% at 92.8% recall; the errors left are unnamed look-alikes.
# InsightFace ArcFace (buffalo_s, measured on lfw-dev: same person median 0.61, strangers 0.006; `faces
# evaluate` with phase B scored, benchmarks/accuracy.py). Threshold, phase-B precision / recall of named
# people: 0.35 97.5% / 98.5% (look-alikes of unnamed people), 0.40 99.6% / 98.3%, 0.45 99.8% / 98.1%,
# 0.50 99.8% / 96.9%: 0.45 names no stranger and misses the fewest faces at that precision. Groups: on the
# exact k-NN graph DBSCAN at eps 0.6 (cosine 0.4, past which strangers' pairs start: 70 of 12.6M stranger
# pairs above 0.4) in groups of 2 gave BCubed F 0.991 where HDBSCAN (groups of 3) gave 0.935: a third of
# LFW's people have two photos, and ArcFace links such a pair reliably. buffalo_l and other ArcFace packs
# share the recipe and its cosine scale; their defaults are buffalo_s's (not measured here: no files).
_DLIB = SpaceThresholds(threshold=0.955, margin=0.02, cluster_eps=0.055)
_ARCFACE = SpaceThresholds(threshold=0.45, margin=0.02, cluster_eps=0.6, cluster_method="dbscan", min_cluster_size=2)
DEFAULT_THRESHOLDS: Mapping[str, SpaceThresholds] = {
    "dlib_resnet_v1": _DLIB,
    "insightface_buffalo_s": _ARCFACE,
    "insightface_buffalo_l": _ARCFACE,
    "insightface_antelopev2": _ARCFACE,
    "arcface": _ARCFACE,
}


def thresholds_for_space(
    space: str,
    *,
    threshold: float | None = None,
    margin: float | None = None,
    cluster_eps: float | None = None,
    known: Mapping[str, SpaceThresholds] | None = None,
) -> SpaceThresholds:
    """The thresholds of embedding space `space`, each overridable.

    Raw model spaces have defaults (`DEFAULT_THRESHOLDS`; names starting with 'insightface' or 'arcface' fall
    back to the ArcFace ones). A trained projection space has its own scale, chosen when it is trained
    (`promotion_gate.match_thresholds`): pass its figures in `known` (space -> SpaceThresholds) or as
    the three overrides; otherwise this raises ValueError naming the space.
    """
    table = {**DEFAULT_THRESHOLDS, **(known or {})}
    base = table.get(space)
    if base is None and space.lower().startswith(("insightface", "arcface")):
        base = _ARCFACE
    if base is None:
        if threshold is None or margin is None or cluster_eps is None:
            raise ValueError(
                f"no default thresholds for embedding space {space!r} (known: {sorted(table)}); a trained "
                "space's thresholds are chosen when it is trained: pass them in "
                "`known` or give threshold, margin and cluster_eps"
            )
        return SpaceThresholds(threshold, margin, cluster_eps)
    overrides: dict[str, float] = {
        name: value
        for name, value in (("threshold", threshold), ("margin", margin), ("cluster_eps", cluster_eps))
        if value is not None
    }
    return replace(base, **overrides)  # type: ignore[arg-type]


# --- prototypes ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prototypes:
    """Every known person's prototype vectors.

    person_ids : (p,) object, the people, as given to `build_prototypes` (sorted)
    vectors : (q, d) float32, L2-normalised prototype vectors
    owner : (q,) int64, index into person_ids of each prototype
    kinds : (q,) object, `PrototypeKind` value of each prototype ('centroid' / 'exemplar')
    face_counts : (p,) int64, confirmed faces per person
    source_rows : (q,) int64, row of `build_prototypes`' input an exemplar is; -1 for centroids (and when
        unknown, e.g. loaded from storage)
    """

    person_ids: np.ndarray
    vectors: np.ndarray
    owner: np.ndarray
    kinds: np.ndarray
    face_counts: np.ndarray
    source_rows: np.ndarray

    def __post_init__(self) -> None:
        q = len(self.vectors)
        if np.asarray(self.vectors).ndim != 2:
            raise ValueError(f"vectors must be 2-D (q, d), got shape {np.shape(self.vectors)!r}")
        for name in ("owner", "kinds", "source_rows"):
            if len(getattr(self, name)) != q:
                raise ValueError(f"{name} must have one entry per prototype ({q}), got {len(getattr(self, name))}")
        if len(self.face_counts) != len(self.person_ids):
            raise ValueError(
                f"face_counts must have one entry per person ({len(self.person_ids)}), got {len(self.face_counts)}"
            )
        owner = np.asarray(self.owner)
        if q and (owner.min() < 0 or owner.max() >= len(self.person_ids)):
            raise ValueError(f"owner indices must lie in [0, {len(self.person_ids)}), got {owner.min()}..{owner.max()}")

    @property
    def n_people(self) -> int:
        return len(self.person_ids)

    def index_of(self, person_ids: Iterable[object]) -> np.ndarray:
        """Indices (k,) int64 of the given person ids in `person_ids`; NO_PERSON for unknown ones."""
        wanted = np.asarray(list(person_ids), dtype=object)
        lookup = {pid: i for i, pid in enumerate(self.person_ids.tolist())}
        return np.fromiter((lookup.get(p, NO_PERSON) for p in wanted.tolist()), dtype=np.int64, count=len(wanted))


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def _exemplar_rows(faces: np.ndarray, centroid: np.ndarray, k: int, n_iter: int = 5) -> np.ndarray:
    """Rows of `faces` (f, d) chosen as exemplars: medoids of k groups (spherical k-means, farthest-point
    seeds starting from the centroid). Deterministic. Returns (<= k,) int64.
    """
    f = len(faces)
    if f <= k:
        return np.arange(f, dtype=np.int64)
    # farthest-point seeding: each next seed is the face least similar to the centroid and the seeds so far
    closest = faces @ centroid
    seeds = []
    for _ in range(k):
        pick = int(np.argmin(closest))
        seeds.append(pick)
        closest = np.maximum(closest, faces @ faces[pick])
    centres = faces[seeds]
    for _ in range(n_iter):
        group = np.argmax(faces @ centres.T, axis=1)
        sums = np.zeros_like(centres)
        np.add.at(sums, group, faces)
        filled = np.bincount(group, minlength=k) > 0
        centres = np.where(filled[:, None], _unit_rows(sums), centres)
    group = np.argmax(faces @ centres.T, axis=1)
    medoids = []
    for g in np.unique(group):
        members = np.flatnonzero(group == g)
        medoids.append(members[np.argmax(faces[members] @ centres[g])])
    return np.asarray(medoids, dtype=np.int64)


def build_prototypes(vectors: np.ndarray, person_ids: np.ndarray, max_exemplars: int = 5) -> Prototypes:
    """Prototypes from user-confirmed faces only (the caller passes only those).

    vectors : (n, d) float, L2-normalised
    person_ids : (n,) the person of each face (str, int or object)
    max_exemplars : exemplars per person besides the centroid (0: centroids only). A person with at most
        this many faces gets every face as an exemplar; a person with one face gets only the centroid
        (which is that face).

    Returns `Prototypes`, people in sorted order, each person's centroid first.
    """
    vectors = np.asarray(vectors)
    person_ids = np.asarray(person_ids, dtype=object)
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be a 2-D array (n, d), got shape {vectors.shape!r}")
    if person_ids.shape != (len(vectors),):
        raise ValueError(f"person_ids must have shape ({len(vectors)},), got {person_ids.shape!r}")
    if not isinstance(max_exemplars, (int, np.integer)) or max_exemplars < 0:
        raise ValueError(f"max_exemplars must be an integer >= 0, got {max_exemplars!r}")
    if len(vectors) and not np.isfinite(vectors).all():
        raise ValueError("vectors contain NaN or infinite values")
    vectors = vectors.astype(np.float32, copy=False)
    people, owner_of_face, counts = np.unique(person_ids, return_inverse=True, return_counts=True)
    d = vectors.shape[1]
    sums = np.zeros((len(people), d), dtype=np.float32)
    np.add.at(sums, owner_of_face, vectors)
    centroids = _unit_rows(sums)

    order = np.argsort(owner_of_face, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)])
    proto_vectors, owners, kinds, sources = [], [], [], []
    for p in range(len(people)):  # a loop over people, not faces
        rows = order[starts[p] : starts[p + 1]]
        proto_vectors.append(centroids[p : p + 1])
        owners.append(p)
        kinds.append(PrototypeKind.CENTROID.value)
        sources.append(-1)
        if len(rows) < 2 or max_exemplars == 0:
            continue
        picks = rows[_exemplar_rows(vectors[rows], centroids[p], max_exemplars)]
        proto_vectors.append(_unit_rows(vectors[picks]))
        owners.extend([p] * len(picks))
        kinds.extend([PrototypeKind.EXEMPLAR.value] * len(picks))
        sources.extend(picks.tolist())
    return Prototypes(
        person_ids=people,
        vectors=np.concatenate(proto_vectors) if proto_vectors else np.empty((0, d), np.float32),
        owner=np.asarray(owners, dtype=np.int64),
        kinds=np.asarray(kinds, dtype=object),
        face_counts=counts.astype(np.int64),
        source_rows=np.asarray(sources, dtype=np.int64),
    )


# --- assignment ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Assignment:
    """Result of `assign_to_known_people`, one entry per face (m faces).

    person_index : (m,) int64, index into `Prototypes.person_ids`, NO_PERSON (-1) when not assigned
    best_person : (m,) int64, the best-scoring allowed person whether assigned or not (NO_PERSON if none):
        a suggestion to show a user
    best_score : (m,) float32, that person's score (-inf when no person was allowed)
    second_score : (m,) float32, the second-best person's score (-inf when there is none)
    outcome : (m,) int8, `Outcome` code
    """

    person_index: np.ndarray
    best_person: np.ndarray
    best_score: np.ndarray
    second_score: np.ndarray
    outcome: np.ndarray


def _pairs_to_indices(
    pairs: np.ndarray | Mapping[int, Iterable[object]] | Iterable[tuple[int, object]] | None,
    prototypes: Prototypes,
    name: str,
) -> np.ndarray:
    """(k, 2) int64 (row, person index) from the accepted forms; rows naming unknown people are dropped."""
    if pairs is None:
        return np.empty((0, 2), dtype=np.int64)
    if isinstance(pairs, np.ndarray) and pairs.dtype.kind in "iu":
        if pairs.size == 0:
            return np.empty((0, 2), dtype=np.int64)
        if pairs.ndim != 2 or pairs.shape[1] != 2:
            raise ValueError(f"{name} as an integer array must have shape (k, 2), got {pairs.shape!r}")
        out = pairs.astype(np.int64)
    else:
        if isinstance(pairs, Mapping):
            flat = [(row, pid) for row, pids in pairs.items() for pid in pids]
        else:
            flat = [tuple(pair) for pair in pairs]
        if not flat:
            return np.empty((0, 2), dtype=np.int64)
        if any(len(pair) != 2 for pair in flat):
            raise ValueError(f"{name} must hold (index, person id) pairs, got {flat[:3]!r}...")
        rows = np.fromiter((pair[0] for pair in flat), dtype=np.int64, count=len(flat))
        out = np.stack([rows, prototypes.index_of(pair[1] for pair in flat)], axis=1)
    return out[(out[:, 0] >= 0) & (out[:, 1] >= 0) & (out[:, 1] < prototypes.n_people)]


def _occupied_to_pairs(
    occupied: Iterable[tuple[object, object]] | None, image_ids: np.ndarray, prototypes: Prototypes
) -> np.ndarray:
    """(k, 2) (face row, person index) for every face in a photo where the person is already confirmed."""
    if occupied is None:
        return np.empty((0, 2), dtype=np.int64)
    occupied = list(occupied)
    if not occupied:
        return np.empty((0, 2), dtype=np.int64)
    occ_images = np.asarray([pair[0] for pair in occupied], dtype=object)
    occ_people = prototypes.index_of(pair[1] for pair in occupied)
    known = occ_people != NO_PERSON
    occ_images, occ_people = occ_images[known], occ_people[known]
    codes = np.unique(np.concatenate([image_ids.astype(object), occ_images]), return_inverse=True)[1]
    face_codes, occ_codes = codes[: len(image_ids)], codes[len(image_ids) :]
    by_image = np.argsort(face_codes, kind="stable")
    lo = np.searchsorted(face_codes[by_image], occ_codes, side="left")
    hi = np.searchsorted(face_codes[by_image], occ_codes, side="right")
    counts = hi - lo
    starts = np.repeat(lo - np.cumsum(counts) + counts, counts)
    rows = by_image[starts + np.arange(counts.sum())]
    return np.stack([rows, np.repeat(occ_people, counts)], axis=1).astype(np.int64)


def assign_to_known_people(
    vectors: ArrayLike,
    image_ids: ArrayLike,
    prototypes: Prototypes,
    threshold: float,
    margin: float = 0.0,
    rejected: np.ndarray | Mapping[int, Iterable[object]] | Iterable[tuple[int, object]] | None = None,
    *,
    occupied: Iterable[tuple[object, object]] | None = None,
    chunk_size: int | None = None,
    scorer: PersonScorer | None = None,
    subset: np.ndarray | None = None,
) -> Assignment:
    """Assign each face to a known person, or to nobody (see the module docstring for the rules).

    vectors : (m, d) float, L2-normalised faces to assign (never the user-confirmed ones); with `subset`,
        (n, d) of which the faces to assign are vectors[subset]
    image_ids : (m,) the photo of each face (any comparable values)
    prototypes : from `build_prototypes` (same embedding space as `vectors`)
    threshold, margin : cosine; see `SpaceThresholds`
    rejected : faces' ruled-out people, as a (k, 2) int array of (face row, person index), or pairs
        (face row, person id), or a mapping face row -> person ids. Unknown people are ignored.
    occupied : pairs (image id, person id) of people already confirmed in a photo: no other face of that
        photo is given the person.
    chunk_size : faces scored at a time; default keeps each block of scores near 64 MB.
    scorer : a learned matcher's scores (`PersonScorer`) instead of the best prototype cosine; `threshold` and
        `margin` are then on its scale (any finite threshold, margin >= 0). Columns follow
        `prototypes.person_ids`; rejected people, occupied pairs and photo conflicts are applied as always.
    subset : (m,) int rows of `vectors`: the faces to assign, gathered a chunk at a time, so a caller holding
        the whole library's vectors need not copy most of them (face i of the result is vectors[subset[i]];
        image_ids, rejected rows and the result follow subset's order)

    Scores are computed in chunks of faces x prototypes, so memory stays bounded for any m.
    """
    vectors = np.asarray(vectors)
    image_ids = np.asarray(image_ids)
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be a 2-D array (m, d), got shape {vectors.shape!r}")
    if subset is not None:
        subset = np.asarray(subset)
        if subset.ndim != 1 or not np.issubdtype(subset.dtype, np.integer):
            raise ValueError(f"subset must be a 1-D integer array of rows, got {subset.dtype} {subset.shape!r}")
        if subset.size and (subset.min() < 0 or subset.max() >= len(vectors)):
            raise ValueError(f"subset names rows outside 0..{len(vectors) - 1}")
    m = len(vectors) if subset is None else len(subset)
    if image_ids.shape != (m,):
        raise ValueError(f"image_ids must have shape ({m},), got {image_ids.shape!r}")
    if scorer is None and not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a cosine in [-1, 1], got {threshold!r}")
    if scorer is None and not 0.0 <= margin <= 2.0:
        raise ValueError(f"margin must be in [0, 2], got {margin!r}")
    if scorer is not None and not (np.isfinite(threshold) and 0.0 <= margin < np.inf):
        raise ValueError(f"a scorer's threshold must be finite and its margin >= 0, got {threshold!r}, {margin!r}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size!r}")
    if len(prototypes.vectors) and vectors.shape[1] != prototypes.vectors.shape[1]:
        raise ValueError(
            f"vectors have dimension {vectors.shape[1]} but prototypes {prototypes.vectors.shape[1]}: "
            "they come from different embedding spaces"
        )
    masked = np.concatenate(
        [_pairs_to_indices(rejected, prototypes, "rejected"), _occupied_to_pairs(occupied, image_ids, prototypes)]
    )
    masked = masked[masked[:, 0] < m]
    best_person, best, second = _top_two_people(vectors, subset, prototypes, masked, chunk_size, scorer)

    outcome = np.full(m, Outcome.ASSIGNED, dtype=np.int8)
    with np.errstate(invalid="ignore"):  # -inf - -inf: no person at all, caught as NO_CANDIDATE below
        lead = best.astype(np.float64) - second  # +inf when there is no second person
    outcome[lead < margin] = Outcome.AMBIGUOUS
    outcome[best < threshold] = Outcome.BELOW_THRESHOLD
    outcome[best_person == NO_PERSON] = Outcome.NO_CANDIDATE
    passing = np.flatnonzero(outcome == Outcome.ASSIGNED)
    losers = _photo_conflicts(passing, image_ids, best_person, best)
    outcome[losers] = Outcome.PHOTO_CONFLICT
    person_index = np.where(outcome == Outcome.ASSIGNED, best_person, NO_PERSON).astype(np.int64)
    return Assignment(person_index, best_person, best, second, outcome)


def _top_two_people(
    vectors: np.ndarray,
    subset: np.ndarray | None,
    prototypes: Prototypes,
    masked: np.ndarray,
    chunk_size: int | None,
    scorer: PersonScorer | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per face: best allowed person, their score, and the second-best person's score."""
    m, p = len(vectors) if subset is None else len(subset), prototypes.n_people
    best_person = np.full(m, NO_PERSON, dtype=np.int64)
    best = np.full(m, -np.inf, dtype=np.float32)
    second = np.full(m, -np.inf, dtype=np.float32)
    if p == 0 or len(prototypes.vectors) == 0 or m == 0:
        return best_person, best, second
    by_owner = np.argsort(prototypes.owner, kind="stable")
    owners = prototypes.owner[by_owner]
    present = np.unique(owners)  # people with at least one prototype, ascending
    segment_starts = np.searchsorted(owners, present)
    # float32 throughout: numpy's float64 product of this size crashes OpenBLAS on some CPUs (STACK_NOTES).
    protos = np.ascontiguousarray(prototypes.vectors[by_owner], dtype=np.float32)
    masked = masked[np.argsort(masked[:, 0], kind="stable")]
    rows = chunk_size or max(1, min(4096, _SCORE_BLOCK // max(1, len(protos))))
    for start in range(0, m, rows):
        stop = min(start + rows, m)
        faces = vectors[start:stop] if subset is None else vectors[subset[start:stop]]
        chunk = np.ascontiguousarray(faces, dtype=np.float32)
        if scorer is not None:
            scores = np.array(scorer(chunk), dtype=np.float32)  # a copy: masked entries are overwritten
            if scores.shape != (stop - start, p):
                raise ValueError(f"the scorer returned shape {scores.shape!r}, expected {(stop - start, p)!r}")
        else:
            proto_scores = chunk @ protos.T
            scores = np.full((stop - start, p), -np.inf, dtype=np.float32)
            scores[:, present] = np.maximum.reduceat(proto_scores, segment_starts, axis=1)  # max per person
        lo, hi = np.searchsorted(masked[:, 0], [start, stop])
        scores[masked[lo:hi, 0] - start, masked[lo:hi, 1]] = -np.inf
        if p == 1:
            top = np.zeros((stop - start, 1), dtype=np.int64)
        else:
            top = np.argpartition(-scores, 1, axis=1)[:, :2]
            swap = np.take_along_axis(scores, top[:, 1:2], 1) > np.take_along_axis(scores, top[:, 0:1], 1)
            top = np.where(swap, top[:, ::-1], top)
        top_scores = np.take_along_axis(scores, top, 1)
        best[start:stop] = top_scores[:, 0]
        best_person[start:stop] = np.where(np.isfinite(top_scores[:, 0]), top[:, 0], NO_PERSON)
        if p > 1:
            second[start:stop] = top_scores[:, 1]
    return best_person, best, second


def _photo_conflicts(passing: np.ndarray, image_ids: np.ndarray, person: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Rows of `passing` that lose their person to a better face of the same photo."""
    if passing.size < 2:
        return np.empty(0, dtype=np.int64)
    image_codes = np.unique(image_ids[passing].astype(object), return_inverse=True)[1]
    people = person[passing]
    # sort by photo, then person, then best score first (ties: lowest row first)
    order = np.lexsort((passing, -score[passing], people, image_codes))
    same_group = (image_codes[order][1:] == image_codes[order][:-1]) & (people[order][1:] == people[order][:-1])
    return passing[order[1:][same_group]]
