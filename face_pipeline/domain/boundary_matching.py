"""Learning from labels on raw scores: more exemplars from the library, and per-person decision boundaries.

`BoundaryMatcher` keeps the raw space's own score (a face's best cosine over a person's prototypes), so raw
matching's calibrated threshold and margin keep their meaning; the learned scales of `person_matching` and
`neighbour_averaging` needed a threshold mapped onto them, and on the evaluation's libraries no mapping from
the labels found a safe one (README, issue 12). It learns two things:

1. **Self-training (more exemplars).** Raw matching names the library's unconfirmed faces; those it names with
   a lead (best score >= threshold + `self_training_lead` impostor stds, the raw margin, never a person the
   face was rejected for) become exemplars of that person, and matching runs again, `passes` times. People
   photographed in many ways gain exemplars of the ways the labels missed, reached through confident steps.
2. **Per-person boundaries.** One logistic regression per person on standardised unit vectors: the person's
   confirmed faces against the other people's confirmed faces, the faces users rejected for that person
   ("not this person": hard negatives), and up to `max_background` unconfirmed library faces that match
   nobody (best score < threshold - `background_below` stds: the library's other people). A face left just
   below the threshold (within `extend_by` stds, leading the runner-up by the margin) is lifted to the
   threshold when its best person's boundary gives probability >= `min_probability`.

The boundaries only ever lift a score, never veto one; rejections, the margin and photo conflicts still apply
downstream (`assignment.assign_to_known_people`). Unit of "std": the pooled impostor spread of the raw
prototype scores (`PersonMatcher.g_std_`), so the settings are scale-free across embedders.

Measured through the product (`faces evaluate --train`, phase B, 2026-11-27; known-people errors, raw ->
this matcher, precision, purity and strangers named no worse): dlib 41 -> 29 (-29%), buffalo_s on photos
degraded to 80 px / q40 72 -> 49 (-32%); on sharp buffalo_s photos the gate finds nothing to gain and keeps raw
matching. Both parts are needed (`benchmarks/learning_replay.py --sweep`: without self-training dlib -17%,
without the background negatives its false accepts 13 -> 23). README "Learning from labels" has the tables.

Shapes: n labelled faces, u unconfirmed library faces, m faces to score, p people, d dimensions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from face_pipeline.domain.person_matching import NO_PERSON, PersonMatcher
from face_pipeline.domain.verification import l2_normalise

__all__ = ["BoundaryMatcher"]

_CHUNK_ROWS = 4096


def _lead_ok(scores: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(best column, best score, whether it leads the runner-up by `margin`) of each row."""
    column = scores.argmax(axis=1)
    best = scores[np.arange(len(scores)), column]
    if scores.shape[1] < 2:
        return column, best, np.ones(len(scores), dtype=bool)
    top2 = np.partition(scores, scores.shape[1] - 2, axis=1)[:, -2:]
    with np.errstate(invalid="ignore"):
        return column, best, (top2[:, 1] - top2[:, 0]) >= margin


class BoundaryMatcher:
    """Raw-scale matcher with self-trained exemplars and per-person boundaries (see the module docstring).

    Fitted attributes: people_ (p,) int64 person labels, column j of `scores` is people_[j]; unit_ (the
    impostor std, raw cosine); pseudo_labelled_ (how many library faces became exemplars); exemplars_ (the
    PersonMatcher holding the final prototypes); boundary weights W_ (d, p), b_ (p,), mean_ / scale_ (d,).
    """

    def __init__(
        self,
        threshold: float,
        margin: float,
        *,
        self_training_lead: float = 1.0,
        passes: int = 3,
        max_exemplars: int = 100_000,
        c: float = 10.0,
        background_below: float = 2.0,
        max_background: int = 5_000,
        extend_by: float = 1.0,
        min_probability: float = 0.9,
        seed: int = 0,
    ) -> None:
        if not np.isfinite(threshold) or not 0.0 <= margin < np.inf:
            raise ValueError(f"threshold must be finite and margin >= 0, got {threshold!r}, {margin!r}")
        if passes < 0 or max_exemplars < 0 or max_background < 0 or c <= 0 or not 0.0 < min_probability < 1.0:
            raise ValueError("passes, max_exemplars, max_background >= 0, c > 0 and 0 < min_probability < 1 needed")
        self.threshold, self.margin = float(threshold), float(margin)
        self.self_training_lead, self.passes, self.max_exemplars = self_training_lead, passes, max_exemplars
        self.c, self.background_below, self.max_background = c, background_below, max_background
        self.extend_by, self.min_probability, self.seed = extend_by, min_probability, seed

    # --- fitting ----------------------------------------------------------------------------------------

    def fit(
        self,
        vectors: np.ndarray,
        labels: np.ndarray,
        rejections: np.ndarray,
        library: np.ndarray,
        library_rows: np.ndarray,
        library_rejections: np.ndarray | None = None,
    ) -> BoundaryMatcher:
        """Learn from the labels and the library's unconfirmed faces.

        vectors : (n, d) the labelled faces and the faces that only carry rejections (label NO_PERSON)
        labels : (n,) int person label or NO_PERSON; rejections : (k, 2) (row of `vectors`, person label)
        library : (N, d) every face of the library (or any array holding the unconfirmed faces)
        library_rows : (u,) int rows of `library` that nobody confirmed (read a chunk at a time, no copy)
        library_rejections : (r, 2) (position in library_rows, person label): masked in self-training
        """
        x = l2_normalise(vectors)
        labels = np.asarray(labels, dtype=np.int64)
        rej = np.asarray(rejections, dtype=np.int64).reshape(-1, 2)
        rows = np.asarray(library_rows, dtype=np.int64)
        raw = PersonMatcher().fit(x, labels, rej)  # raw matching's prototypes and its impostor spread
        self.people_ = raw.people_
        self.unit_ = float(raw.g_std_)
        pairs = np.zeros((0, 2), np.int64) if library_rejections is None else np.asarray(library_rejections)
        pairs = pairs.astype(np.int64).reshape(-1, 2)
        pairs = pairs[np.isin(pairs[:, 1], self.people_)]
        ruled_out = np.stack([pairs[:, 0], np.searchsorted(self.people_, pairs[:, 1])], axis=1)  # (row, column)
        scored = self._masked_best(raw, library, rows, ruled_out)
        raw_best = scored[1]
        matcher = raw
        picked = np.zeros(0, np.int64)
        for step in range(self.passes):
            if step:
                scored = self._masked_best(matcher, library, rows, ruled_out)
            column, best, leads = scored
            confident = np.flatnonzero((best >= self.threshold + self.self_training_lead * self.unit_) & leads)
            picked = confident
            extra = l2_normalise(library[rows[confident]]) if len(confident) else np.zeros((0, x.shape[1]), np.float32)
            matcher = PersonMatcher(max_exemplars=self.max_exemplars).fit(
                np.concatenate([x, extra]), np.concatenate([labels, self.people_[column[confident]]]), rej
            )
        self.exemplars_ = matcher
        self.pseudo_labelled_ = len(picked)
        far = np.flatnonzero(raw_best < self.threshold - self.background_below * self.unit_)
        if len(far) > self.max_background:
            far = np.sort(np.random.default_rng(self.seed).choice(far, self.max_background, replace=False))
        background = l2_normalise(library[rows[far]]) if len(far) else np.zeros((0, x.shape[1]), np.float32)
        # A boundary can only act on a face in the band below the threshold, for the person it scores best: only
        # those people's boundaries are fitted (the problems are separable, so the others' would not change
        # them). The pipeline refits on the library it then matches, so every face it scores is counted here.
        acting = np.zeros(len(self.people_), dtype=bool)
        for start in range(0, len(rows), _CHUNK_ROWS):
            band, column = self._band(self.exemplars_.cosine_scores(library[rows[start : start + _CHUNK_ROWS]]))
            acting[column[band]] = True
        self._fit_boundaries(x, labels, rej, background, np.flatnonzero(acting))
        return self

    def _band(self, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows whose best score lies within `extend_by` stds below the threshold and leads the runner-up by
        the margin, each row's best column)."""
        column, best, leads = _lead_ok(scores, self.margin)
        below = (best < self.threshold) & (best >= self.threshold - self.extend_by * self.unit_)
        return np.flatnonzero(below & leads), column

    def _masked_best(
        self, matcher: PersonMatcher, library: np.ndarray, rows: np.ndarray, ruled_out: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Best column, score and margin test of the unconfirmed faces, rejected people masked (`ruled_out`:
        (k, 2) (position in rows, column))."""
        column = np.zeros(len(rows), np.int64)
        best = np.full(len(rows), -np.inf, np.float32)
        leads = np.zeros(len(rows), dtype=bool)
        for start in range(0, len(rows), _CHUNK_ROWS):
            part = slice(start, start + _CHUNK_ROWS)
            scores = matcher.cosine_scores(library[rows[part]])
            here = ruled_out[(ruled_out[:, 0] >= start) & (ruled_out[:, 0] < start + _CHUNK_ROWS)]
            scores[here[:, 0] - start, here[:, 1]] = -np.inf
            column[part], best[part], leads[part] = _lead_ok(scores, self.margin)
        return column, best, leads

    def _fit_boundaries(
        self, x: np.ndarray, labels: np.ndarray, rej: np.ndarray, background: np.ndarray, acting: np.ndarray
    ) -> None:
        """One scikit-learn LogisticRegression per acting person (C = `c`, balanced classes, its default solver
        and tolerance: the setting picked with `benchmarks/learning_replay.py --sweep`). Solved to convergence
        instead (one joint L-BFGS problem, tried), the boundaries differ: scikit-learn stops at a tolerance on
        the mean loss, which regularises beyond C, and converged boundaries at any C from 0.3 to 10 left 2-3
        more known-people errors on the evaluations' dlib libraries (or named one more stranger)."""
        from sklearn.linear_model import LogisticRegression  # imported when fitted: not on everyday paths

        named = labels != NO_PERSON
        self.mean_ = x[named].mean(axis=0)
        std = x[named].std(axis=0)
        self.scale_ = np.where(std > 0, std, 1.0).astype(np.float32)
        z = ((np.concatenate([x, background]) - self.mean_) / self.scale_).astype(np.float32)
        padded = np.concatenate([labels, np.full(len(background), NO_PERSON)])
        others = (padded != NO_PERSON) | (np.arange(len(z)) >= len(x))  # confirmed faces and the background
        self.W_ = np.zeros((z.shape[1], len(self.people_)), np.float32)
        self.b_ = np.full(len(self.people_), -np.inf, np.float32)  # no boundary: never lifts
        for j in acting.tolist():
            person = self.people_[j]
            positive = padded == person
            negative = others.copy()
            negative[rej[rej[:, 1] == person, 0]] = True  # "not this person"
            negative &= ~positive
            rows = positive | negative
            model = LogisticRegression(C=self.c, class_weight="balanced", max_iter=2000).fit(z[rows], positive[rows])
            self.W_[:, j] = model.coef_[0]
            self.b_[j] = model.intercept_[0]

    # --- scoring ----------------------------------------------------------------------------------------

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        """(m, p) each person's boundary probability."""
        z = (l2_normalise(vectors) - self.mean_) / self.scale_
        return (1.0 / (1.0 + np.exp(-(z @ self.W_ + self.b_)))).astype(np.float32)

    def scores(self, vectors: np.ndarray) -> np.ndarray:
        """(m, p) float32 raw-scale scores: best cosine over the self-trained prototypes, a face just below
        the threshold lifted to it where its best person's boundary accepts it."""
        out = np.empty((len(vectors), len(self.people_)), np.float32)
        lifted = np.float32(self.threshold)
        if float(lifted) < self.threshold:  # compared as float32 otherwise (NEP 50), which hides the rounding
            lifted = np.nextafter(lifted, np.float32(np.inf))
        for start in range(0, len(vectors), _CHUNK_ROWS):
            chunk = np.asarray(vectors[start : start + _CHUNK_ROWS])
            scores = self.exemplars_.cosine_scores(chunk)
            band, column = self._band(scores)
            if len(band):
                z = (l2_normalise(chunk[band]) - self.mean_) / self.scale_
                logit = np.einsum("md,dm->m", z, self.W_[:, column[band]]) + self.b_[column[band]]
                accept = band[logit >= np.log(self.min_probability / (1 - self.min_probability))]
                scores[accept, column[accept]] = lifted
            out[start : start + len(chunk)] = scores
        return out

    def threshold_for(self, raw_threshold: float) -> float:
        """Raw scale: the raw threshold itself."""
        return float(raw_threshold)

    def margin_for(self, raw_margin: float) -> float:
        return float(raw_margin)

    def summary(self) -> dict[str, Any]:
        return {
            "pseudo_labelled": self.pseudo_labelled_,
            "boundaries": int(np.isfinite(self.b_).sum()),
        }
