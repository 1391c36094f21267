"""Learning from labels where it pays: a matcher learned from the users' decisions, used only to match faces to
the named people, and the gate that decides whether it may.

Three matchers (services/learned_matcher.py picks one, FACE_LEARNED_MATCHER):
- `boundary_matching.BoundaryMatcher` ("boundaries"): raw cosine scores, with exemplars self-trained from the
  library's confidently matched faces and per-person logistic boundaries (confirmed faces against the other
  people's, the rejected faces and the library's far-off faces) that name a face just below the threshold;
  its scale is raw's, so raw's calibrated threshold and margin apply as they are;
- `LibraryScorer` ("library"): `neighbour_averaging.LibraryMatcher`, 0.2 x the adaptive score below in
  the raw space + 0.8 x prototype cosines in a space where every face is averaged with its 6 nearest library
  faces (labelled or not), so a blurred or small face is scored with the faces around it;
- `person_matching.PersonMatcher` ("adaptive"): adaptive score normalisation of the prototype cosines, the
  named people as the cohort and the faces users rejected as extra impostors.
Unknown faces keep being grouped in the raw space, so nothing unseen is distorted. All are refitted whenever
the labels change (seconds), so they always know every named person.

The gate (`judge_matcher`) compares like with like on the labels alone, cross-fitted: `repeats` draws of
`folds` folds, summed. In fold f the people of fold f are held out whole (strangers: they must stay unnamed;
one face each, their first photo, because a held-out person with many photos who looks like a named one
would otherwise count once per photo) and the other people's photos of fold f are held out (the faces the
matcher is meant to find); raw prototypes and the matcher are fitted on the rest. Raw matching decides at the
space's own threshold and margin, the matcher at the same threshold and margin mapped onto its scale
(`threshold_for` / `margin_for`), raised by the smallest offset (never lowered) at which it names no more of
one half of the held-out people than raw matching does; the other half and the held-out faces judge it.
Why anchored at the mapped threshold rather than matched to the raw stranger rate alone: at the product's
thresholds raw matching names almost no stranger, so a threshold matched to that rate sits on the highest of
a few hundred impostor scores; tried (out of fold, on held-out faces with their own person ruled out), it
swung from naming 3x raw's strangers to missing 79% more faces between label draws.
The matcher is used only if it makes at least `MIN_GAIN` and `MIN_FEWER_ERRORS` fewer known-people errors
(held-out faces left unnamed or given a wrong name), names no more strangers and loses no precision;
otherwise raw matching stays and the verdict says why (noise allowed: one more stranger named per 500, at
least one; precision lower by at most 0.002 or one name's worth). The threshold put in use is the mapped one
raised by the median offset the folds' held-out people asked for.

Shapes: n labelled faces, m faces to score, p people, d dimensions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from face_pipeline.domain.assignment import NO_PERSON, assign_to_known_people, build_prototypes
from face_pipeline.domain.boundary_matching import BoundaryMatcher
from face_pipeline.domain.neighbour_averaging import LibraryMatcher
from face_pipeline.domain.person_matching import PersonMatcher

__all__ = [
    "DEFAULT_FOLDS",
    "MIN_GAIN",
    "MIN_JUDGED_PEOPLE",
    "HeldOutFigures",
    "LibraryScorer",
    "MatcherFit",
    "MatcherVerdict",
    "boundary_matcher_fit",
    "fit_person_matcher",
    "isolated_face_offset",
    "judge_matcher",
    "library_matcher_fit",
]

DEFAULT_FOLDS = 3
DEFAULT_REPEATS = 3  # cross-fittings with different fold draws, summed: one draw's verdict swings (see above)
MIN_GAIN = 0.05  # the matcher must cut held-out known-people errors by at least this share ...
MIN_FEWER_ERRORS = 3  # ... and by at least this many faces (sharp buffalo_s: 1 -> 0 of 1,519 is no evidence)
MIN_JUDGED_PEOPLE = 6  # people with >= 2 labelled faces needed to judge anything
MIN_HELD_OUT_FACES = 20  # held-out faces of trained people (all folds) needed to judge
# Noise allowed: a few hundred held-out strangers tell apart one stranger named more only by chance.
STRANGER_SLACK = 500  # one more stranger named per this many strangers (at least one) ...
PRECISION_SLACK = 0.002  # ... and precision may fall by this, or by one name's worth when fewer are given

# (vectors (n, d), labels (n,) int with NO_PERSON, rejections (k, 2) (row, label), rows (n,): which of the
# judged faces these are) -> a fitted matcher: `people_`, `scores(vectors)`, `threshold_for`, `margin_for`
MatcherFit = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], Any]


def fit_person_matcher(
    vectors: np.ndarray, labels: np.ndarray, rejections: np.ndarray, rows: np.ndarray | None = None
) -> PersonMatcher:
    """The adaptive matcher (PersonMatcher's defaults: 5 exemplars, cohort 50, weight 1); `rows` unused."""
    return PersonMatcher().fit(vectors, labels, rejections)


@dataclass(frozen=True)
class HeldOutFigures:
    """One way of matching, summed over the gate's folds."""

    faces: int  # held-out faces of trained people
    errors: int  # of them: left unnamed or given a wrong name
    wrong: int  # of them: given a wrong name
    strangers: int  # faces of held-out people
    strangers_named: int
    named: int  # names given (held-out faces and strangers)
    right: int  # right names given

    @property
    def precision(self) -> float:
        return self.right / self.named if self.named else 1.0

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "precision": round(self.precision, 4)}


@dataclass(frozen=True)
class MatcherVerdict:
    """The gate's decision; `threshold` / `margin` are on the matcher's scale (NaN when not judged)."""

    use: bool
    reason: str  # one line a person can read
    threshold: float
    margin: float
    raw: HeldOutFigures | None
    learned: HeldOutFigures | None
    folds: int
    matcher: Any = field(default=None, compare=False, repr=False)  # fitted on all the labels, when used

    def as_json(self) -> dict[str, Any]:
        return {
            "use": self.use,
            "reason": self.reason,
            "threshold": None if np.isnan(self.threshold) else self.threshold,
            "margin": None if np.isnan(self.margin) else self.margin,
            "raw": None if self.raw is None else self.raw.as_json(),
            "learned": None if self.learned is None else self.learned.as_json(),
            "folds": self.folds,
        }


def _refused(reason: str, folds: int) -> MatcherVerdict:
    return MatcherVerdict(False, reason, float("nan"), float("nan"), None, None, folds)


def judge_matcher(
    vectors: np.ndarray,
    labels: np.ndarray,
    image_ids: np.ndarray,
    rejections: np.ndarray,
    raw_threshold: float,
    raw_margin: float,
    *,
    fit: MatcherFit = fit_person_matcher,
    folds: int = DEFAULT_FOLDS,
    repeats: int = DEFAULT_REPEATS,
    seed: int = 0,
) -> MatcherVerdict:
    """Cross-fitted gate of a learned matcher against raw prototype matching (see the module docstring).

    vectors : (n, d) float, the labelled faces and the faces that only carry rejections
    labels : (n,) int, person label of each face, NO_PERSON (-1) for a face that only carries rejections
    image_ids : (n,) int, the photo of each face (photos are held out whole)
    rejections : (k, 2) int (row, person label): "that face is not that person"
    raw_threshold, raw_margin : the raw space's cosine threshold and margin in force
    fit : fits the candidate matcher on (vectors, labels, rejections); a matcher fitted on shuffled labels
        is refused
    """
    x = np.asarray(vectors, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    labels = np.asarray(labels, dtype=np.int64)
    image_ids = np.asarray(image_ids, dtype=np.int64)
    rej = np.asarray(rejections, dtype=np.int64).reshape(-1, 2)
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds!r}")
    if not (len(x) == len(labels) == len(image_ids)):
        raise ValueError(f"vectors, labels and image_ids differ in length: {len(x)}, {len(labels)}, {len(image_ids)}")
    people, counts = np.unique(labels[labels != NO_PERSON], return_counts=True)
    judged = int((counts >= 2).sum())
    if judged < MIN_JUDGED_PEOPLE:
        return _refused(
            f"kept raw matching: too few labels to judge a learned matcher ({judged} people with 2+ named "
            f"faces; needs {MIN_JUDGED_PEOPLE})",
            folds,
        )
    # Fold draws depend on the photos alone (a person by their first photo), never on ids a database draws
    # at random (person uuids) nor on unrelated faces (a rejection elsewhere leaves them as they were).
    first_photo = {int(p): int(image_ids[labels == p].min()) for p in people.tolist()}
    person_key = np.array([first_photo.get(int(v), -1) for v in labels.tolist()], dtype=np.int64)
    on_first = np.flatnonzero((image_ids == person_key) & (labels != NO_PERSON))
    first_face = np.zeros(len(labels), dtype=bool)
    first_face[on_first[np.unique(labels[on_first], return_index=True)[1]]] = True  # one face per person
    rounds: list[list[_FoldRun]] = []
    for repeat in range(repeats):
        draw = seed * 1009 + repeat
        person_fold = np.where(labels != NO_PERSON, _mix(person_key, 2 * draw) % folds, -1).astype(np.int64)
        photo_fold = (_mix(image_ids, 2 * draw + 1) % folds).astype(np.int64)
        calibration = (_mix(person_key, 7 * draw + 3) % 2 == 0) & (labels != NO_PERSON)
        maybe = [
            _fold_run(
                x,
                labels,
                image_ids,
                rej,
                person_fold,
                photo_fold,
                calibration,
                first_face,
                f,
                raw_threshold,
                raw_margin,
                fit,
            )
            for f in range(folds)
        ]
        rounds.append([r for r in maybe if r is not None])
    runs = [r for group in rounds for r in group]
    held_out = int(sum(len(r.query_truth) for r in runs)) // max(repeats, 1)
    if min(len(group) for group in rounds) < 2 or held_out < MIN_HELD_OUT_FACES:
        return _refused(
            f"kept raw matching: too few labels to judge a learned matcher ({held_out} held-out faces of "
            f"named people; needs {MIN_HELD_OUT_FACES})",
            folds,
        )
    raw = _sum_figures([r.raw for r in runs])
    learned = _sum_figures([r.learned for r in runs])
    verdict = _verdict(raw, learned, float("nan"), float("nan"), folds, repeats)
    if not verdict.use:
        return verdict
    matcher = fit(x, labels, rej, np.arange(len(x)))
    offset = float(np.median([r.offset for r in runs]))
    threshold, margin = matcher.threshold_for(raw_threshold) + offset, matcher.margin_for(raw_margin)
    return replace(verdict, threshold=threshold, margin=margin, matcher=matcher)


def _offset(above_mapped: np.ndarray, raw_named: int) -> float:
    """The smallest offset >= 0 over the mapped threshold at which the matcher names no more of these
    strangers than raw matching did (each stranger's best allowed score minus the mapped threshold)."""
    above = np.sort(above_mapped[np.isfinite(above_mapped)])[::-1]
    if int((above >= 0).sum()) <= raw_named:
        return 0.0
    return float(np.nextafter(above[raw_named], np.inf))


def _verdict(
    raw: HeldOutFigures, learned: HeldOutFigures, threshold: float, margin: float, folds: int, repeats: int
) -> MatcherVerdict:
    change = (learned.errors - raw.errors) / raw.errors if raw.errors else 0.0
    figures = (
        f"held-out errors {raw.errors} -> {learned.errors} of {raw.faces} ({change:+.0%}), strangers named "
        f"{raw.strangers_named} -> {learned.strangers_named} of {raw.strangers}, precision "
        f"{raw.precision:.3f} -> {learned.precision:.3f} ({repeats} x {folds}-fold cross-fitting, summed)"
    )
    failures = []
    if not learned.errors <= (1 - MIN_GAIN) * raw.errors or raw.errors - learned.errors < MIN_FEWER_ERRORS:
        failures.append(f"fewer than {MIN_GAIN:.0%} or {MIN_FEWER_ERRORS} fewer errors")
    if learned.strangers_named > raw.strangers_named + max(1, raw.strangers // STRANGER_SLACK):
        failures.append("more strangers named")
    if learned.precision < raw.precision - max(PRECISION_SLACK, 1 / max(learned.named, 1)):
        failures.append("lower precision")
    if failures:
        return MatcherVerdict(
            False, f"kept raw matching ({', '.join(failures)}): {figures}", threshold, margin, raw, learned, folds
        )
    return MatcherVerdict(True, f"learned matcher in use: {figures}", threshold, margin, raw, learned, folds)


@dataclass
class _FoldRun:
    query_truth: np.ndarray  # (q,) person labels of the held-out faces
    raw: HeldOutFigures  # on the held-out faces and the judging half of the held-out people
    learned: HeldOutFigures  # the same faces, at the offset the calibration half asked for
    offset: float  # the offset all this fold's held-out people ask for (for the threshold put in use)


def _fold_run(
    x: np.ndarray,
    labels: np.ndarray,
    image_ids: np.ndarray,
    rej: np.ndarray,
    face_person_fold: np.ndarray,
    photo_fold: np.ndarray,
    calibration: np.ndarray,
    first_face: np.ndarray,
    fold: int,
    raw_threshold: float,
    raw_margin: float,
    fit: MatcherFit,
) -> _FoldRun | None:
    named = labels != NO_PERSON
    # One face per held-out person (their first photo): strangers are mostly people seen once, and a held-out
    # person with many photos who looks like a named one would otherwise count once per photo.
    strangers = np.flatnonzero(named & (face_person_fold == fold) & first_face)
    known = named & (face_person_fold != fold)
    train = np.flatnonzero((known & (photo_fold != fold)) | ~named)
    trained_people = np.unique(labels[train][labels[train] != NO_PERSON])
    queries = np.flatnonzero(known & (photo_fold == fold) & np.isin(labels, trained_people))
    if len(trained_people) < 2 or len(queries) == 0 or len(strangers) == 0:
        return None
    position = np.full(len(x), -1, dtype=np.int64)
    position[train] = np.arange(len(train))
    kept = rej[(position[rej[:, 0]] >= 0) & np.isin(rej[:, 1], trained_people)]
    train_rej = np.stack([position[kept[:, 0]], kept[:, 1]], axis=1) if len(kept) else np.zeros((0, 2), np.int64)
    matcher = fit(x[train], labels[train], train_rej, train)
    if not np.array_equal(matcher.people_, trained_people):
        raise ValueError("the matcher's people differ from the labels it was fitted on")
    names = train[labels[train] != NO_PERSON]
    prototypes = build_prototypes(x[names], labels[names])
    scored = np.concatenate([queries, strangers])
    column = {int(p): i for i, p in enumerate(trained_people.tolist())}
    positions = {int(r): i for i, r in enumerate(scored.tolist())}
    masked = np.array(
        [(positions[f], column[p]) for f, p in rej.tolist() if f in positions and p in column], dtype=np.int64
    ).reshape(-1, 2)

    def decide(threshold: float, margin: float, scorer: Callable[[np.ndarray], np.ndarray] | None) -> np.ndarray:
        result = assign_to_known_people(
            x[scored], image_ids[scored], prototypes, threshold, margin, masked, scorer=scorer
        )
        return np.where(result.person_index == NO_PERSON, NO_PERSON, trained_people[np.maximum(result.person_index, 0)])

    raw_pred = decide(raw_threshold, raw_margin, None)
    threshold, margin = matcher.threshold_for(raw_threshold), matcher.margin_for(raw_margin)
    stranger_scores = matcher.scores(x[strangers])
    local = masked[masked[:, 0] >= len(queries)]
    stranger_scores[local[:, 0] - len(queries), local[:, 1]] = -np.inf
    above = _best_with_margin(stranger_scores, margin) - threshold
    named_by_raw = raw_pred[len(queries) :] != NO_PERSON
    calib = calibration[strangers]
    offset = _offset(above[calib], int(named_by_raw[calib].sum()))
    learned_pred = decide(threshold + offset, margin, matcher.scores)
    judged = np.concatenate([np.arange(len(queries)), len(queries) + np.flatnonzero(~calib)])
    return _FoldRun(
        labels[queries],
        _figures(raw_pred[judged], labels[queries], int((~calib).sum())),
        _figures(learned_pred[judged], labels[queries], int((~calib).sum())),
        _offset(above, int(named_by_raw.sum())),
    )


def _mix(values: np.ndarray, seed: int) -> np.ndarray:
    """A fixed pseudo-random uint64 per value (splitmix64's finaliser): fold draws that do not move."""
    with np.errstate(over="ignore"):
        z = values.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15) * np.uint64(seed + 1)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _best_with_margin(scores: np.ndarray, margin: float) -> np.ndarray:
    """(m,) each row's best score where it leads the second by `margin`, -inf otherwise."""
    if scores.shape[1] < 2:
        return scores[:, 0].astype(np.float64)
    top = np.sort(scores, axis=1)[:, -2:].astype(np.float64)
    return np.where(top[:, 1] - top[:, 0] >= margin, top[:, 1], -np.inf)


def _figures(predicted: np.ndarray, query_truth: np.ndarray, n_strangers: int) -> HeldOutFigures:
    q = len(query_truth)
    on_queries, on_strangers = predicted[:q], predicted[q:]
    right = int((on_queries == query_truth).sum())
    wrong = int(((on_queries != NO_PERSON) & (on_queries != query_truth)).sum())
    strangers_named = int((on_strangers != NO_PERSON).sum())
    return HeldOutFigures(
        faces=q,
        errors=q - right,
        wrong=wrong,
        strangers=n_strangers,
        strangers_named=strangers_named,
        named=right + wrong + strangers_named,
        right=right,
    )


def _sum_figures(parts: list[HeldOutFigures]) -> HeldOutFigures:
    return HeldOutFigures(
        **{name: sum(getattr(p, name) for p in parts) for name in HeldOutFigures.__dataclass_fields__}
    )


class LibraryScorer:
    """`neighbour_averaging.LibraryMatcher` behind the matcher interface the gate and the pipeline use:
    `scores(vectors)` scores faces with their nearest library faces (`scores_of`), and the raw threshold and
    margin are mapped onto its score as its two parts' mappings mixed by `context_share`."""

    def __init__(self, matcher: LibraryMatcher) -> None:
        self.matcher = matcher
        self.people_ = matcher.people_

    def scores(self, vectors: np.ndarray) -> np.ndarray:
        return self.matcher.scores_of(vectors)

    def threshold_for(self, raw_threshold: float) -> float:
        share = self.matcher.context_share
        raw, context = self.matcher.parts
        return (1 - share) * raw.threshold_for(raw_threshold) + share * context.threshold_for(raw_threshold)

    def margin_for(self, raw_margin: float) -> float:
        share = self.matcher.context_share
        raw, context = self.matcher.parts
        return (1 - share) * raw.margin_for(raw_margin) + share * context.margin_for(raw_margin)


def library_matcher_fit(
    library: np.ndarray, library_rows: np.ndarray, neighbours: np.ndarray | None = None, **matcher_params: Any
) -> MatcherFit:
    """A MatcherFit for `LibraryMatcher`: the judged faces are rows `library_rows` ((n,) int) of `library`
    ((N, d), every face of the library, labelled or not); each fit labels only the faces it is given (the
    held-out ones stay in the library, unlabelled, as they are in a real library). `neighbours`: the
    library's k-NN graph ((N, >= k) int), computed once; `matcher_params`: LibraryMatcher's (its defaults
    otherwise)."""
    library_rows = np.asarray(library_rows, dtype=np.int64)

    def fit(x: np.ndarray, labels: np.ndarray, rejections: np.ndarray, rows: np.ndarray) -> LibraryScorer:
        at = library_rows[rows]
        everyone = np.full(len(library), NO_PERSON, dtype=np.int64)
        everyone[at] = labels
        rej = np.stack([at[rejections[:, 0]], rejections[:, 1]], axis=1) if len(rejections) else rejections
        return LibraryScorer(LibraryMatcher(**matcher_params).fit(library, everyone, rej, neighbours=neighbours))

    return fit


def boundary_matcher_fit(
    library: np.ndarray, library_rows: np.ndarray, threshold: float, margin: float, **matcher_params: Any
) -> MatcherFit:
    """A MatcherFit for `BoundaryMatcher` at the raw `threshold` and `margin`: the judged faces are rows
    `library_rows` ((n,) int) of `library` ((N, d), every face of the library); each fit self-trains on, and
    takes its background from, the library faces it was not given as confirmed (held-out faces stay in the
    library, unconfirmed, as they are in a real library)."""
    library_rows = np.asarray(library_rows, dtype=np.int64)

    def fit(x: np.ndarray, labels: np.ndarray, rejections: np.ndarray, rows: np.ndarray) -> BoundaryMatcher:
        at = library_rows[rows]
        confirmed = np.zeros(len(library), dtype=bool)
        confirmed[at[labels != NO_PERSON]] = True
        unconfirmed = np.flatnonzero(~confirmed)
        position = np.full(len(library), -1, dtype=np.int64)
        position[unconfirmed] = np.arange(len(unconfirmed))
        rej = np.asarray(rejections, dtype=np.int64).reshape(-1, 2)
        where = position[at[rej[:, 0]]]
        on_library = np.stack([where, rej[:, 1]], axis=1)[where >= 0]
        return BoundaryMatcher(threshold, margin, **matcher_params).fit(
            x, labels, rej, library, unconfirmed, on_library
        )

    return fit


def isolated_face_offset(matcher_scores: np.ndarray, threshold: float, margin: float, raw_named: int) -> float:
    """How far to raise a matcher's `threshold` so that it names at most `raw_named` of these faces.

    matcher_scores : (m, p) the matcher's scores of the library's *isolated* unnamed faces (no other library
        face within the space's grouping distance): mostly people seen once, whom no label covers, so the
        gate's held-out people (all photographed several times) do not stand for them
    raw_named : how many of them raw matching names at its own threshold and margin
    Returns an offset >= 0 (0: the threshold names no more of them than raw matching does).
    """
    return _offset(_best_with_margin(np.asarray(matcher_scores, dtype=np.float32), margin) - threshold, raw_named)
