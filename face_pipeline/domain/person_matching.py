"""Matching faces to the named people with scores that learn from the labels: adaptive score normalisation.

The product's raw score of a face for a person is the best cosine over the person's prototypes (centroid and
up to `max_exemplars` exemplars, `assignment.build_prototypes`), compared with one threshold for everybody.
But a cosine of 0.93 means different things for different people and faces: some people resemble many
others (every stranger scores high against them), and some faces resemble everyone (a blurred or generic face
scores high against every person). The labels say how much: the faces users confirmed for *other* people,
and the faces they rejected, are impostors whose scores show each person's own impostor level.

`PersonMatcher.scores` therefore normalises each raw score three ways (speaker verification's adaptive
S-norm, Cumani et al. 2011 / Matějka et al. 2017, with the named people as the cohort):

- g: (s - mean) / std of every person's `cohort_size` highest impostor scores, pooled: a change of scale
  only, so this alone decides exactly as the raw space does (`threshold_for` maps a raw threshold onto it);
- z (per person): (s - mean_p) / std_p of person p's own `cohort_size` highest impostor scores, learned from
  the labelled faces of the other people and the faces rejected from p;
- t (per face): (s - mean_f) / std_f of the face's own scores for its `cohort_size` best *other* people.

score = (g + weight * (z + t) / 2) / (1 + weight). Only matching changes: prototypes stay in the raw space
and unknown faces keep being grouped there, so nothing unseen is distorted.

Measured (benchmarks/learning_options.py: lfw-dev, 3 labelling rounds x 3 splits, every option's threshold
calibrated on training-side strangers at the same rate): dlib, known-people errors 643 -> 317 (-51%),
precision 0.985 -> 0.989, strangers named 9.7 -> 8.0 per 1,000. buffalo_s, sharp photos: 42 -> 40 (no harm;
too few errors left to tell more). buffalo_s, photos degraded to 80 px / JPEG q40: 577 -> 580, no gain: there
the strangers that pass are look-alikes that lead every other person by as much as the missed faces do, which
no re-scoring of the same cosines separates. So it does not reach issue 12's goal in that case; using the
library's unlabelled faces does: `neighbour_averaging.LibraryMatcher` (this matcher in the raw space plus
cosines in a space where each face is averaged with its nearest library faces): degraded 575 -> 424 (-26%),
dlib 643 -> 257 (-60%).

Shapes: n faces to fit on, m faces to score, p people, q prototypes, d dimensions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from face_pipeline.domain.assignment import build_prototypes

__all__ = ["NO_PERSON", "PersonMatcher"]

NO_PERSON = -1  # label of a face that is nobody's (yet): it only carries rejections
_STD_FLOOR = 1e-3  # a cohort whose scores are all alike would otherwise divide by ~0
_CHUNK_ROWS = 4096  # faces scored at a time


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class PersonMatcher:
    """Scores faces against the named people (see the module docstring).

    Parameters
    ----------
    max_exemplars : exemplars per person besides the centroid, as in `build_prototypes` (default 5).
    cohort_size : impostor scores per person (z) and other people per face (t) the statistics use (50).
    weight : share of the adaptive z / t normalisation against the global one (1.0; 0 gives the raw
        space's decisions exactly).

    Fitted attributes
    -----------------
    people_ : (p,) int64, the person labels, sorted; column j of `scores` is person people_[j]
    prototypes_ : (q, d) float32 unit prototype vectors; prototype_owner_ : (q,) int64 column of each
    z_mean_, z_std_ : (p,) float32, each person's impostor statistics
    g_mean_, g_std_ : float, the pooled impostor statistics
    """

    def __init__(self, *, max_exemplars: int = 5, cohort_size: int = 50, weight: float = 1.0) -> None:
        self.max_exemplars = max_exemplars
        self.cohort_size = cohort_size
        self.weight = weight

    def _check_params(self) -> None:
        if not isinstance(self.max_exemplars, (int, np.integer)) or self.max_exemplars < 0:
            raise ValueError(f"max_exemplars must be an integer >= 0, got {self.max_exemplars!r}")
        if not isinstance(self.cohort_size, (int, np.integer)) or self.cohort_size < 2:
            raise ValueError(f"cohort_size must be an integer >= 2, got {self.cohort_size!r}")
        if not 0.0 <= self.weight < float("inf"):
            raise ValueError(f"weight must be a finite number >= 0, got {self.weight!r}")

    # --- fitting ----------------------------------------------------------------------------------------

    def fit(self, vectors: ArrayLike, person_labels: ArrayLike, rejections: ArrayLike | None = None) -> PersonMatcher:
        """Learn prototypes and impostor statistics from the users' decisions.

        vectors : (n, d) float, raw embeddings (normalised here) of the confirmed faces and of rejected faces
        person_labels : (n,) int, the person of each confirmed face; NO_PERSON (-1) for a face that only
            carries rejections
        rejections : (k, 2) int rows (face row, person label): "face row is not that person". The face
            becomes an impostor of that person (faces of other named people are impostors of everyone else).

        Needs at least two people. Returns self.
        """
        self._check_params()
        x = np.asarray(vectors)
        labels = np.asarray(person_labels)
        if x.ndim != 2 or len(x) == 0:
            raise ValueError(f"vectors must be a non-empty (n, d) array, got shape {x.shape!r}")
        if not np.isfinite(x).all():
            raise ValueError("vectors contain NaN or infinite values")
        if labels.shape != (len(x),) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"person_labels must be ({len(x)},) integers (-1: no person), got {labels.dtype} {labels.shape}"
            )
        if (labels < NO_PERSON).any():
            raise ValueError(f"person labels must be >= 0, or {NO_PERSON} for a face without a person")
        rej = np.zeros((0, 2), np.int64) if rejections is None else np.asarray(rejections, np.int64).reshape(-1, 2)
        if rej.size and (rej[:, 0].min() < 0 or rej[:, 0].max() >= len(x)):
            raise ValueError(f"a rejection names a face row outside 0..{len(x) - 1}")
        x = _unit_rows(x)
        named = labels != NO_PERSON
        people = np.unique(labels[named])
        if len(people) < 2:
            raise ValueError(f"need confirmed faces of at least two people to learn from, got {len(people)}")

        protos = build_prototypes(x[named], labels[named], max_exemplars=int(self.max_exemplars))
        self.people_ = protos.person_ids.astype(np.int64)
        self.prototypes_ = protos.vectors.astype(np.float32)
        self.prototype_owner_ = protos.owner.astype(np.int64)

        # Impostor scores: every confirmed face against every other person, each rejected face against the
        # person it was rejected from (a label wins over a contradicting rejection).
        column = np.searchsorted(self.people_, labels)
        own = np.where(named, column, NO_PERSON)
        rej = rej[np.isin(rej[:, 1], self.people_)]
        rej_col = np.searchsorted(self.people_, rej[:, 1])
        rej = rej[own[rej[:, 0]] != rej_col]
        rej_col = np.searchsorted(self.people_, rej[:, 1])
        k = min(int(self.cohort_size), max(int(np.count_nonzero(named)) - 1, 1))
        top = np.full((0, len(self.people_)), -np.inf, np.float32)
        faces = np.flatnonzero(named)
        for start in range(0, len(faces), _CHUNK_ROWS):
            rows = faces[start : start + _CHUNK_ROWS]
            scores = self.cosine_scores(x[rows])
            scores[np.arange(len(rows)), own[rows]] = -np.inf  # a person's own faces are no impostors
            top = _top_rows(np.concatenate([top, scores]), k)
        rejected = np.full((len(rej), len(self.people_)), -np.inf, np.float32)
        if len(rej):
            rejected[np.arange(len(rej)), rej_col] = self.cosine_scores(x[rej[:, 0]])[np.arange(len(rej)), rej_col]
            top = _top_rows(np.concatenate([top, rejected]), k)
        finite = np.isfinite(top)
        counts = finite.sum(axis=0)
        filled = np.where(finite, top, 0.0)
        mean = filled.sum(axis=0) / np.maximum(counts, 1)
        var = (np.where(finite, top - mean, 0.0) ** 2).sum(axis=0) / np.maximum(counts, 1)
        self.g_mean_ = float(filled.sum() / max(counts.sum(), 1))
        self.g_std_ = float(np.sqrt((np.where(finite, top - self.g_mean_, 0.0) ** 2).sum() / max(counts.sum(), 1)))
        self.g_std_ = max(self.g_std_, _STD_FLOOR)
        # A person nobody was compared with (no impostor at all) falls back on the pooled statistics.
        self.z_mean_ = np.where(counts > 0, mean, self.g_mean_).astype(np.float32)
        self.z_std_ = np.where(counts > 1, np.sqrt(var) + _STD_FLOOR, self.g_std_).astype(np.float32)
        return self

    # --- scoring ----------------------------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if not hasattr(self, "people_"):
            raise ValueError("this PersonMatcher is not fitted: call fit(...) or from_dict(...) first")

    def cosine_scores(self, vectors: ArrayLike) -> np.ndarray:
        """(m, p) float32: each face's best cosine over each person's prototypes (the raw space's score)."""
        self._check_fitted()
        x = np.asarray(vectors)
        if x.ndim != 2 or x.shape[1] != self.prototypes_.shape[1]:
            raise ValueError(
                f"vectors must have shape (m, {self.prototypes_.shape[1]}) (the space fitted on), got {x.shape!r}"
            )
        order = np.argsort(self.prototype_owner_, kind="stable")
        protos = np.ascontiguousarray(self.prototypes_[order])
        starts = np.searchsorted(self.prototype_owner_[order], np.arange(len(self.people_)))
        out = np.empty((len(x), len(self.people_)), np.float32)
        for start in range(0, len(x), _CHUNK_ROWS):
            chunk = _unit_rows(x[start : start + _CHUNK_ROWS])
            out[start : start + len(chunk)] = np.maximum.reduceat(chunk @ protos.T, starts, axis=1)
        return out

    def scores(self, vectors: ArrayLike) -> np.ndarray:
        """(m, p) float32 normalised scores (higher: more likely that person); columns follow `people_`.

        Use them where assignment uses prototype cosines: best person, threshold (`threshold_for`), margin
        (`margin_for`), rejected people masked out."""
        raw = self.cosine_scores(vectors)
        p = raw.shape[1]
        k = int(min(self.cohort_size, p - 1))
        g = (raw - self.g_mean_) / self.g_std_
        if self.weight == 0 or k < 1:
            return g.astype(np.float32)
        z = (raw - self.z_mean_) / self.z_std_
        out = np.empty_like(raw)
        for start in range(0, len(raw), _CHUNK_ROWS):
            block = raw[start : start + _CHUNK_ROWS]
            # the face's k best other people: its k + 1 best scores without the very best
            best = -np.partition(-block, k, axis=1)[:, : k + 1]
            best = np.sort(best, axis=1)[:, :k]
            t = (block - best.mean(axis=1, keepdims=True)) / (best.std(axis=1, keepdims=True) + _STD_FLOOR)
            out[start : start + len(block)] = t
        return ((g + self.weight * (z + out) / 2) / (1 + self.weight)).astype(np.float32)

    def threshold_for(self, raw_threshold: float) -> float:
        """The raw-space cosine threshold on this matcher's scale (exact for weight 0; for an average face
        and person otherwise). A starting point: calibrate on the library where it can be."""
        self._check_fitted()
        return float((raw_threshold - self.g_mean_) / self.g_std_)

    def margin_for(self, raw_margin: float) -> float:
        """The raw-space cosine margin on this matcher's scale."""
        self._check_fitted()
        return float(raw_margin / self.g_std_)

    # --- saving -----------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, np.ndarray]:
        """The fitted matcher as plain numpy arrays (np.savez-ready); `from_dict` restores it."""
        self._check_fitted()
        return {
            "people": self.people_.copy(),
            "prototypes": self.prototypes_.copy(),
            "prototype_owner": self.prototype_owner_.copy(),
            "z_mean": self.z_mean_.copy(),
            "z_std": self.z_std_.copy(),
            "global_stats": np.asarray([self.g_mean_, self.g_std_], np.float64),
            "params": np.asarray([self.max_exemplars, self.cohort_size, self.weight], np.float64),
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> PersonMatcher:
        """A matcher from `to_dict`'s arrays (e.g. a loaded .npz)."""
        missing = {"people", "prototypes", "prototype_owner", "z_mean", "z_std", "global_stats", "params"} - set(state)
        if missing:
            raise ValueError(f"not a PersonMatcher state: missing {sorted(missing)}")
        max_exemplars, cohort_size, weight = np.asarray(state["params"], np.float64).tolist()
        matcher = cls(max_exemplars=int(max_exemplars), cohort_size=int(cohort_size), weight=float(weight))
        matcher._check_params()
        matcher.people_ = np.asarray(state["people"], np.int64)
        matcher.prototypes_ = np.asarray(state["prototypes"], np.float32)
        matcher.prototype_owner_ = np.asarray(state["prototype_owner"], np.int64)
        matcher.z_mean_ = np.asarray(state["z_mean"], np.float32)
        matcher.z_std_ = np.asarray(state["z_std"], np.float32)
        matcher.g_mean_, matcher.g_std_ = (float(v) for v in np.asarray(state["global_stats"], np.float64))
        p = len(matcher.people_)
        if (
            matcher.z_mean_.shape != (p,)
            or matcher.z_std_.shape != (p,)
            or len(matcher.prototype_owner_) != len(matcher.prototypes_)
        ):
            raise ValueError("inconsistent PersonMatcher state: array lengths do not match the people")
        return matcher


def _top_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """(min(k, rows), p): the k highest values of each column, unordered."""
    if len(scores) <= k:
        return scores
    return -np.partition(-scores, k - 1, axis=0)[:k]
