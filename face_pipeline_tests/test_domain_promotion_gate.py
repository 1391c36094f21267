"""The pipeline gate on real faces of the default model (buffalo_s, lfw-dev): roles, thresholds with matched
error rates, and the verdict both ways.

The "trained" spaces here are built from the real vectors with a known effect, so the right verdict is
known: a space that pulls every face towards the nearest named person (what an over-fitted head does to
strangers) must be refused; a space that removes a nuisance added to the raw one must be promoted.
"""

from __future__ import annotations

import numpy as np
import pytest

from face_pipeline.domain.assignment import SpaceThresholds, thresholds_for_space
from face_pipeline.domain.promotion_gate import (
    MIN_TAIL,
    PipelineRoles,
    best_other_person,
    best_person_scores,
    match_thresholds,
    match_thresholds_on_library,
    nearest_other_face,
    pipeline_figures,
    pipeline_gate,
)
from face_pipeline.domain.verification import UNLABELLED, l2_normalise, prototypes, split_by_identity

RAW = thresholds_for_space("insightface_buffalo_s")


@pytest.fixture(scope="module")
def labelled(lfw_dev_arcface: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(unit vectors, labels) of the lfw-dev faces of people with 5+ photos: what a user named."""
    _, person, counts = np.unique(lfw_dev_arcface["identities"], return_inverse=True, return_counts=True)
    keep = counts[person] >= 5
    return l2_normalise(lfw_dev_arcface["vectors"][keep]), person[keep].astype(np.int64)


def split_of(labels: np.ndarray, seed: int = 0):  # type: ignore[no-untyped-def]
    return split_by_identity(labels, 0.25, seed, holdout_fraction=0.2, gallery_size=3)


def test_roles_keep_strangers_out_of_the_gallery_and_use_every_held_out_face(labelled):  # type: ignore[no-untyped-def]
    vectors, labels = labelled
    split = split_of(labels)
    roles = PipelineRoles.from_split(split, labels)
    assert np.intersect1d(roles.gallery, roles.probes).size == 0
    every = np.sort(np.concatenate([split.train, split.evaluation]))
    assert np.array_equal(np.sort(np.concatenate([roles.gallery, roles.probes])), every)
    stranger_people = np.unique(labels[roles.strangers])
    assert stranger_people.size >= 10 and not np.isin(stranger_people, labels[roles.gallery]).any()
    assert np.isin(labels[roles.queries], labels[roles.gallery]).all()  # every query's person has a name


def test_matching_a_space_onto_itself_keeps_its_thresholds(labelled):  # type: ignore[no-untyped-def]
    """At 0.30 the rate is measurable (measured: 76 of 831 held-out faces have another person at 0.30+)."""
    vectors, labels = labelled
    roles = PipelineRoles.from_split(split_of(labels), labels)
    raw = SpaceThresholds(0.30, RAW.margin, RAW.cluster_eps)
    matched = match_thresholds(vectors, vectors, labels, roles, raw)
    other = best_other_person(vectors, labels, roles)
    # The smallest score at or above the raw threshold lets exactly the same faces through.
    assert matched.projected.threshold == pytest.approx(other[other >= raw.threshold].min(), abs=1e-4)
    assert matched.projected.margin == pytest.approx(raw.margin)
    assert matched.projected.cluster_eps == pytest.approx(raw.cluster_eps, abs=0.01)
    assert not matched.facts["strictest_value_taken"]["threshold"]  # the rate was measurable
    assert 0.05 < matched.facts["raw_rates"]["threshold"] < 0.15  # measured 0.091


def test_a_threshold_too_strict_to_measure_a_rate_gets_the_strictest_value(labelled):  # type: ignore[no-untyped-def]
    """ArcFace rarely scores another person high: at the space's default threshold (0.45: 1 of 831
    held-out faces) fewer than MIN_TAIL faces may pass, and then nothing passes in the matched space either."""
    vectors, labels = labelled
    roles = PipelineRoles.from_split(split_of(labels), labels)
    other = best_other_person(vectors, labels, roles)
    too_strict = SpaceThresholds(float(np.sort(other)[-(MIN_TAIL - 1)]), RAW.margin, RAW.cluster_eps)
    matched = match_thresholds(vectors, vectors, labels, roles, too_strict)
    assert matched.facts["strictest_value_taken"]["threshold"]
    assert matched.projected.threshold > other.max() and (other >= matched.projected.threshold).sum() == 0
    default = match_thresholds(vectors, vectors, labels, roles, RAW).facts
    assert default["strictest_value_taken"]["threshold"] == (int((other >= RAW.threshold).sum()) < MIN_TAIL)


def test_gate_refuses_a_space_that_drags_faces_towards_the_named_people(labelled):  # type: ignore[no-untyped-def]
    vectors, labels = labelled
    split = split_of(labels)
    # An over-fitted head: every face moves halfway to the nearest training person's centroid.
    people, centroids = prototypes(vectors[split.train], labels[split.train])
    nearest = centroids[np.argmax(vectors @ centroids.T, axis=1)]
    dragged = l2_normalise(vectors + 1.0 * nearest)
    verdict = pipeline_gate(vectors, dragged, labels, split, RAW)
    assert not verdict.promote and verdict.reason.startswith("kept raw space")
    # The matched threshold keeps strangers out as well as the raw one does, so the damage shows as faces
    # of named people no longer found: the gate sees it and refuses.
    before, after = verdict.raw_figures, verdict.projected_figures
    assert after.false_accepts_per_1000 <= before.false_accepts_per_1000 + 5.0
    assert after.recall < before.recall - 0.1 and "recall gain below" in verdict.reason


def test_gate_promotes_a_space_that_removes_a_nuisance(labelled):  # type: ignore[no-untyped-def]
    vectors, labels = labelled
    rng = np.random.default_rng(0)
    # The raw space carries a shared nuisance (a random 4-d component, like lighting); the "trained" space is
    # the real space without it, which is what a head that learned to drop it would give.
    basis = np.linalg.qr(rng.normal(size=(vectors.shape[1], 4)))[0]
    noisy = l2_normalise(vectors + 0.35 * rng.normal(size=(vectors.shape[0], 4)) @ basis.T)
    split = split_of(labels)
    raw_here = match_thresholds(vectors, noisy, labels, PipelineRoles.from_split(split, labels), RAW).projected
    verdict = pipeline_gate(noisy, vectors, labels, split, raw_here)
    assert verdict.promote, verdict.reason
    before, after = verdict.raw_figures, verdict.projected_figures
    assert after.recall > before.recall and after.precision >= before.precision - 0.005
    assert after.n_strangers == before.n_strangers > 100


def test_pipeline_figures_count_strangers_named_as_false_accepts(labelled):  # type: ignore[no-untyped-def]
    vectors, labels = labelled
    roles = PipelineRoles.from_split(split_of(labels), labels)
    strict = pipeline_figures(vectors, labels, roles, RAW)
    loose = pipeline_figures(vectors, labels, roles, SpaceThresholds(0.1, 0.0, RAW.cluster_eps))
    assert loose.false_accepts_per_1000 == pytest.approx(1000.0)  # at 0.1 every stranger gets a name (best: 0.15+)
    assert loose.recall >= strict.recall and loose.precision < strict.precision
    assert strict.precision >= 0.99 and labels[roles.strangers].size == strict.n_strangers  # measured 0.998
    assert UNLABELLED not in labels


def test_pipeline_figures_group_at_the_spaces_own_minimum_size(labelled):  # type: ignore[no-untyped-def]
    """buffalo_s groups unknown faces in pairs (thresholds_for_space: min_cluster_size 2), and the training
    gate plays the pipeline at that size (services.training.train_checkpoint)."""
    vectors, labels = labelled
    roles = PipelineRoles.from_split(split_of(labels), labels)
    figures = pipeline_figures(vectors, labels, roles, RAW)  # the space's own grouping: DBSCAN, pairs
    assert RAW.min_cluster_size == 2 and figures.purity >= 0.95 and figures.n_strangers > 0


def test_library_calibration_keeps_the_raw_spaces_budget_of_names_and_links(lfw_dev_arcface):  # type: ignore[no-untyped-def]
    """Named: the first 60% of each 5+ photo person's faces; the library's unnamed faces: everything else."""
    _, person, counts = np.unique(lfw_dev_arcface["identities"], return_inverse=True, return_counts=True)
    vectors = l2_normalise(lfw_dev_arcface["vectors"])
    rank = np.zeros(person.size, np.int64)
    for p in np.unique(person):
        rank[person == p] = np.arange(int((person == p).sum()))
    named = (counts[person] >= 5) & (rank < 0.6 * counts[person])
    gallery, library, gallery_labels = vectors[named], vectors[~named], person[named]

    same = match_thresholds_on_library(library, library, gallery, gallery, gallery_labels, RAW)
    # Onto itself: the smallest score at or above each raw value (ArcFace's scores are sparse up there).
    best = best_person_scores(library, gallery, gallery_labels)
    everyone = np.arange(library.shape[0])
    links = nearest_other_face(library, everyone, everyone)
    assert (best >= RAW.threshold).sum() >= MIN_TAIL and (links >= 1 - RAW.cluster_eps).sum() >= MIN_TAIL
    assert same.projected.threshold == pytest.approx(best[best >= RAW.threshold].min(), abs=1e-6)
    assert same.projected.cluster_eps == pytest.approx(1 - links[links >= 1 - RAW.cluster_eps].min(), abs=1e-6)

    # A space that drags every face towards the nearest named person: the same raw threshold would name far
    # more unnamed faces there; the calibrated one names as many as raw does.
    _, centroids = prototypes(gallery, gallery_labels)

    def drag(x: np.ndarray) -> np.ndarray:
        return l2_normalise(x + centroids[np.argmax(x @ centroids.T, axis=1)])

    dragged = match_thresholds_on_library(library, drag(library), gallery, drag(gallery), gallery_labels, RAW)
    raw_named = (best_person_scores(library, gallery, gallery_labels) >= RAW.threshold).sum()
    dragged_best = best_person_scores(drag(library), drag(gallery), gallery_labels)
    assert (dragged_best >= RAW.threshold).sum() > 2 * raw_named  # the unmatched value would flood
    assert abs(int((dragged_best >= dragged.projected.threshold).sum()) - int(raw_named)) <= 0.01 * raw_named
    assert dragged.facts["faces"]["library_sample"] == library.shape[0]


def test_gate_with_library_calibration_promotes_a_space_that_removes_a_nuisance(lfw_dev_arcface):  # type: ignore[no-untyped-def]
    """As above, with the thresholds calibrated on the unnamed faces (people with fewer than 5 photos) the
    way training calibrates them in a library."""
    _, person, counts = np.unique(lfw_dev_arcface["identities"], return_inverse=True, return_counts=True)
    clean = l2_normalise(lfw_dev_arcface["vectors"])
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(clean.shape[1], 4)))[0]
    noisy = l2_normalise(clean + 0.35 * rng.normal(size=(clean.shape[0], 4)) @ basis.T)
    named = counts[person] >= 5
    labels = person[named].astype(np.int64)
    split = split_of(labels)
    roles = PipelineRoles.from_split(split, labels)
    raw_here = match_thresholds(clean[named], noisy[named], labels, roles, RAW).projected
    matched = match_thresholds_on_library(noisy[~named], clean[~named], noisy[named], clean[named], labels, raw_here)
    verdict = pipeline_gate(noisy[named], clean[named], labels, split, raw_here, matched=matched)
    assert verdict.promote, verdict.reason
    assert verdict.threshold_facts["faces"]["library_sample"] == int((~named).sum())
