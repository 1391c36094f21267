"""BoundaryMatcher (domain/boundary_matching.py) on real faces: the cached buffalo_s embeddings of lfw-dev's main
faces. A user has named two faces of each of 60 people with 4+ photos; every other face is the library."""

from __future__ import annotations

import numpy as np
import pytest

from face_pipeline.domain.assignment import NO_PERSON
from face_pipeline.domain.boundary_matching import BoundaryMatcher
from face_pipeline.domain.learned_matching import boundary_matcher_fit, judge_matcher
from face_pipeline.domain.person_matching import PersonMatcher

THRESHOLD, MARGIN = 0.45, 0.02  # buffalo_s's raw threshold and margin (domain/assignment.py)


@pytest.fixture
def named(lfw_dev_arcface: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unit vectors of every face, identity of each, the rows the user named: 2 of each of 60 people)."""
    vectors = lfw_dev_arcface["vectors"].astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    identities = np.unique(lfw_dev_arcface["identities"], return_inverse=True)[1]
    people, counts = np.unique(identities, return_counts=True)
    rng = np.random.default_rng(0)
    rows = [rng.permutation(np.flatnonzero(identities == p))[:2] for p in people[counts >= 4][:60]]
    return vectors, identities, np.sort(np.concatenate(rows))


def fit(
    vectors: np.ndarray, identities: np.ndarray, rows: np.ndarray, rejections: np.ndarray, **params: float
) -> BoundaryMatcher:
    """Fitted on the named rows, with the library's faces nobody named as its unconfirmed faces; rejections are
    (library row, identity) pairs of faces nobody named."""
    library = np.setdiff1d(np.arange(len(vectors)), rows)
    faces = np.concatenate([rows, rejections[:, 0]])
    labels = np.concatenate([identities[rows], np.full(len(rejections), NO_PERSON)])
    rej = np.stack([len(rows) + np.arange(len(rejections)), rejections[:, 1]], axis=1).reshape(-1, 2)
    on_library = np.stack([np.searchsorted(library, rejections[:, 0]), rejections[:, 1]], axis=1).reshape(-1, 2)
    return BoundaryMatcher(THRESHOLD, MARGIN, **params).fit(vectors[faces], labels, rej, vectors, library, on_library)


def test_scores_stay_raw_cosines_and_more_faces_of_named_people_pass_raws_own_threshold(named) -> None:
    vectors, identities, rows = named
    matcher = fit(vectors, identities, rows, np.zeros((0, 2), np.int64))
    assert matcher.threshold_for(THRESHOLD) == THRESHOLD and matcher.margin_for(MARGIN) == MARGIN
    others = np.setdiff1d(np.arange(len(vectors)), rows)
    of_named = others[np.isin(identities[others], matcher.people_)]
    learned = matcher.scores(vectors[of_named])
    raw = PersonMatcher().fit(vectors[rows], identities[rows]).cosine_scores(vectors[of_named])  # raw matching's
    column = np.searchsorted(matcher.people_, identities[of_named])
    found = (learned.argmax(axis=1) == column) & (learned.max(axis=1) >= THRESHOLD)
    found_raw = (raw.argmax(axis=1) == column) & (raw.max(axis=1) >= THRESHOLD)
    print(f"found {found_raw.sum()} -> {found.sum()} of {len(of_named)}; {matcher.summary()}")
    assert matcher.pseudo_labelled_ > 0
    assert found.sum() > found_raw.sum()
    assert np.isfinite(learned).all() and learned.max() <= 1.0 + 1e-5  # cosines, not another scale


def test_a_rejected_face_never_becomes_an_exemplar_of_that_person(named) -> None:
    vectors, identities, rows = named
    rows = rows[np.isin(identities[rows], np.unique(identities[rows])[:15])]  # 15 people: 15 boundaries a fit
    wide = {"extend_by": 100.0}  # every face in the band: every person's boundary is fitted
    matcher = fit(vectors, identities, rows, np.zeros((0, 2), np.int64), **wide)
    others = np.setdiff1d(np.arange(len(vectors)), rows)
    exemplar = matcher.exemplars_.cosine_scores(vectors[others]).max(axis=1) >= 1 - 1e-5  # the face itself
    picked = others[exemplar]
    assert len(picked) >= 3
    rejected = picked[:3]
    pairs = np.stack([rejected, identities[rejected]], axis=1)  # "not this person", each for its own person
    again = fit(vectors, identities, rows, pairs, **wide)
    scores = again.exemplars_.cosine_scores(vectors[rejected])
    own = scores[np.arange(3), np.searchsorted(again.people_, identities[rejected])]
    assert (own < 1 - 1e-5).all()  # no longer an exemplar of the person it was rejected for
    before = matcher.probabilities(vectors[rejected])
    after = again.probabilities(vectors[rejected])
    columns = np.searchsorted(matcher.people_, identities[rejected])
    assert np.isfinite(again.b_[columns]).all() and np.isfinite(matcher.b_[columns]).all()
    # the rejection, a hard negative of that person's boundary, lowers the face's probability
    assert (after[np.arange(3), columns] < before[np.arange(3), columns]).all(), (before, after)


def test_the_gate_lets_it_in_and_refuses_it_fitted_on_shuffled_labels(named) -> None:
    vectors, identities, rows = named
    honest_fit = boundary_matcher_fit(vectors, rows, THRESHOLD, MARGIN)
    rng = np.random.default_rng(1)

    def shuffled_fit(x: np.ndarray, labels: np.ndarray, rejections: np.ndarray, at: np.ndarray) -> BoundaryMatcher:
        labels = labels.copy()
        labels[labels >= 0] = rng.permutation(labels[labels >= 0])
        return honest_fit(x, labels, rejections, at)

    args = (vectors[rows], identities[rows], rows, np.zeros((0, 2), np.int64), THRESHOLD, MARGIN)
    honest = judge_matcher(*args, fit=honest_fit)
    refused = judge_matcher(*args, fit=shuffled_fit, repeats=1)  # one draw refuses it by far (6 -> 52 of 52 errors)
    print(honest.reason, refused.reason, sep="\n")
    assert honest.use, honest.reason
    assert not refused.use and refused.reason.startswith("kept raw matching ("), refused.reason
