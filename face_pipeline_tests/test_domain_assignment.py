"""Supervised mode: prototypes, the assignment rules, and per-space thresholds."""

from __future__ import annotations

import numpy as np
import pytest

from face_pipeline.domain.assignment import (
    NO_PERSON,
    Outcome,
    PrototypeKind,
    SpaceThresholds,
    assign_to_known_people,
    build_prototypes,
    thresholds_for_space,
)
from face_pipeline.domain.metrics import assignment_precision, false_accepts_per_1000, person_recall
from face_pipeline_eval.synthetic import synthetic_faces
from face_pipeline_eval.thresholds import choose_threshold, rates_at

E1, E2, E3, E4 = np.eye(4, dtype=np.float32)  # people along e1..e3; e4 is nobody


def between(a: np.ndarray, b: np.ndarray, degrees: float) -> np.ndarray:
    """Unit vector `degrees` away from a, towards b (a, b orthonormal)."""
    t = np.radians(degrees)
    return (np.cos(t) * a + np.sin(t) * b).astype(np.float32)


@pytest.fixture()
def people():
    """Alice along e1, Bob along e2, Carol along e3, two confirmed faces each."""
    vectors = np.stack([E1, between(E1, E3, 2), E2, between(E2, E3, 2), E3, between(E3, E1, 2)])
    return build_prototypes(vectors, np.array(["alice", "alice", "bob", "bob", "carol", "carol"]))


def assign(prototypes, faces, image_ids=None, **kwargs):
    faces = np.stack(faces)
    image_ids = np.arange(len(faces)) if image_ids is None else np.asarray(image_ids)
    kwargs.setdefault("threshold", 0.6)
    kwargs.setdefault("margin", 0.05)
    return assign_to_known_people(faces, image_ids, prototypes, **kwargs)


# --- prototypes -----------------------------------------------------------------------------------------


def test_prototypes_hold_a_normalised_centroid_and_exemplars_per_person() -> None:
    vectors, identities = synthetic_faces(400, dim=64, seed=1, max_identity_size=60)
    protos = build_prototypes(vectors, identities, max_exemplars=5)
    assert protos.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(protos.vectors, axis=1), 1.0, atol=1e-5)
    assert list(protos.person_ids) == sorted(set(identities.tolist()))
    counts = np.bincount(protos.owner, minlength=protos.n_people)
    exemplars = np.bincount(protos.owner[protos.kinds == PrototypeKind.EXEMPLAR], minlength=protos.n_people)
    sizes = protos.face_counts
    assert (np.bincount(protos.owner[protos.kinds == PrototypeKind.CENTROID]) == 1).all()
    assert (exemplars[sizes == 1] == 0).all()  # one face: the centroid is that face
    small = (sizes >= 2) & (sizes <= 5)
    assert (exemplars[small] == sizes[small]).all()  # few faces: each is an exemplar
    assert (exemplars[sizes > 5] == 5).all()
    assert (counts == 1 + exemplars).all()
    # exemplars are faces of their own person
    rows = protos.source_rows[protos.kinds == PrototypeKind.EXEMPLAR]
    owners = protos.owner[protos.kinds == PrototypeKind.EXEMPLAR]
    assert (identities[rows] == protos.person_ids[owners].astype(identities.dtype)).all()
    assert (protos.source_rows[protos.kinds == PrototypeKind.CENTROID] == -1).all()


def test_exemplars_match_a_second_look_the_centroid_misses() -> None:
    # Dana as a child (near e1) and as an adult (near e2): many photos of each look.
    rng = np.random.default_rng(0)
    child = np.stack([between(E1, E3, a) for a in rng.uniform(-5, 5, 12)])
    adult = np.stack([between(E2, E3, a) for a in rng.uniform(-5, 5, 12)])
    faces = np.concatenate([child, adult])
    ids = np.array(["dana"] * 24)
    query = between(E2, E3, 3)[None]  # an adult photo
    centroid_only = build_prototypes(faces, ids, max_exemplars=0)
    with_exemplars = build_prototypes(faces, ids, max_exemplars=3)
    low = assign_to_known_people(query, [0], centroid_only, threshold=0.9).best_score[0]
    high = assign_to_known_people(query, [0], with_exemplars, threshold=0.9).best_score[0]
    assert low < 0.75 and high > 0.99


def test_build_prototypes_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="max_exemplars must be an integer >= 0, got -1"):
        build_prototypes(np.eye(3), np.array(["a", "b", "c"]), max_exemplars=-1)
    with pytest.raises(ValueError, match=r"person_ids must have shape \(3,\)"):
        build_prototypes(np.eye(3), np.array(["a", "b"]))
    with pytest.raises(ValueError, match="NaN"):
        build_prototypes(np.full((2, 3), np.nan), np.array(["a", "b"]))


# --- rules ----------------------------------------------------------------------------------------------


def test_threshold_rule(people) -> None:
    result = assign(people, [between(E1, E4, 10), between(E1, E4, 60)], threshold=0.8)
    assert result.person_index.tolist() == [0, NO_PERSON]
    assert result.outcome.tolist() == [Outcome.ASSIGNED, Outcome.BELOW_THRESHOLD]
    assert result.best_person.tolist() == [0, 0]  # the suggestion survives
    assert result.best_score[1] == pytest.approx(np.cos(np.radians(60)), abs=2e-3)


def test_margin_rule_leaves_look_alikes_to_a_human(people) -> None:
    result = assign(people, [between(E1, E2, 45), between(E1, E2, 35)], threshold=0.5, margin=0.05)
    assert result.outcome.tolist() == [Outcome.AMBIGUOUS, Outcome.ASSIGNED]
    assert result.person_index.tolist() == [NO_PERSON, 0]
    assert result.second_score[1] == pytest.approx(np.cos(np.radians(55)), abs=2e-3)


def test_rejected_person_is_never_assigned_and_next_best_must_pass_on_its_own(people) -> None:
    face = between(E1, E2, 40)  # alice 0.77, bob 0.64
    for rejected in ([(0, "alice")], {0: ["alice"]}, np.array([[0, 0]])):
        loose = assign(people, [face], threshold=0.6, rejected=rejected)
        assert loose.person_index.tolist() == [1]  # bob passes threshold and margin by himself
        strict = assign(people, [face], threshold=0.7, rejected=rejected)
        assert strict.person_index.tolist() == [NO_PERSON]
        assert strict.best_person.tolist() == [1]
    # a rejection of another face, or of an unknown person, changes nothing
    other = assign(people, [face, face], image_ids=[1, 2], rejected=[(1, "alice"), (0, "zoe")])
    assert other.person_index.tolist() == [0, 1]


def test_every_person_rejected_leaves_no_candidate(people) -> None:
    result = assign(people, [E1], rejected={0: ["alice", "bob", "carol"]})
    assert result.outcome.tolist() == [Outcome.NO_CANDIDATE]
    assert result.best_person.tolist() == [NO_PERSON]


def test_one_face_per_person_per_photo_keeps_the_best(people) -> None:
    faces = [between(E1, E2, 15), between(E1, E2, 5), between(E1, E2, 10), between(E2, E1, 5)]
    result = assign(people, faces, image_ids=["p1", "p1", "p2", "p1"])
    # in p1 two faces pick alice: the closer (face 1) wins; bob's face in p1 is not affected
    assert result.person_index.tolist() == [NO_PERSON, 0, 0, 1]
    assert result.outcome[0] == Outcome.PHOTO_CONFLICT


def test_a_person_confirmed_in_the_photo_is_not_given_to_another_face(people) -> None:
    result = assign(
        people, [between(E1, E2, 5), between(E1, E2, 5)], image_ids=["p1", "p2"], occupied=[("p1", "alice")]
    )
    assert result.person_index.tolist() == [NO_PERSON, 0]


def test_chunking_does_not_change_the_result() -> None:
    vectors, identities = synthetic_faces(1500, dim=64, seed=2)
    labelled = np.arange(len(vectors)) % 2 == 0
    protos = build_prototypes(vectors[labelled], identities[labelled])
    images = np.arange((~labelled).sum()) // 3
    whole = assign_to_known_people(vectors[~labelled], images, protos, threshold=0.45, margin=0.05)
    parts = assign_to_known_people(vectors[~labelled], images, protos, threshold=0.45, margin=0.05, chunk_size=7)
    np.testing.assert_array_equal(whole.person_index, parts.person_index)
    np.testing.assert_allclose(whole.best_score, parts.best_score, atol=1e-6)


def test_a_subset_is_assigned_as_a_copy_of_those_rows_would_be() -> None:
    # cluster-dual passes the whole library's vectors and the rows to assign instead of copying them
    vectors, identities = synthetic_faces(1500, dim=64, seed=2)
    labelled = np.arange(len(vectors)) % 2 == 0
    protos = build_prototypes(vectors[labelled], identities[labelled])
    rows = np.flatnonzero(~labelled)[::-1].copy()  # any order
    images = np.arange(rows.size) // 3
    rejected = np.array([[0, 0], [5, 3]])
    copied = assign_to_known_people(vectors[rows], images, protos, 0.45, 0.05, rejected, chunk_size=100)
    read = assign_to_known_people(vectors, images, protos, 0.45, 0.05, rejected, chunk_size=100, subset=rows)
    np.testing.assert_array_equal(copied.person_index, read.person_index)
    np.testing.assert_array_equal(copied.outcome, read.outcome)
    np.testing.assert_allclose(copied.best_score, read.best_score, atol=1e-6)
    assert (copied.person_index != -1).sum() > 100  # the comparison is about real assignments
    with pytest.raises(ValueError, match="outside"):
        assign_to_known_people(vectors, images[:1], protos, 0.45, subset=np.array([len(vectors)]))


def test_synthetic_library_quality_with_arcface_defaults() -> None:
    vectors, identities = synthetic_faces(6000, dim=512, seed=4)
    ids, counts = np.unique(identities, return_counts=True)
    named = ids[counts >= 4][::2]  # half the people with 4+ photos have a name
    rng = np.random.default_rng(0)
    labelled = np.isin(identities, named) & (rng.random(len(identities)) < 0.3)
    protos = build_prototypes(vectors[labelled], identities[labelled])
    limits = thresholds_for_space("insightface_buffalo_l")
    query = ~labelled
    result = assign_to_known_people(vectors[query], np.arange(query.sum()), protos, limits.threshold, limits.margin)
    predicted = np.where(result.person_index >= 0, protos.person_ids[np.maximum(result.person_index, 0)], -1)
    truth = identities[query]
    known = protos.person_ids.astype(truth.dtype)
    assert assignment_precision(predicted.astype(np.int64), truth) >= 0.99
    assert person_recall(predicted.astype(np.int64), truth, known) >= 0.95
    assert false_accepts_per_1000(predicted.astype(np.int64), truth, known) <= 2.0


def test_assignment_validates_its_inputs(people) -> None:
    with pytest.raises(ValueError, match="threshold must be a cosine in"):
        assign(people, [E1], threshold=1.5)
    with pytest.raises(ValueError, match="margin must be in"):
        assign(people, [E1], margin=-0.1)
    with pytest.raises(ValueError, match=r"image_ids must have shape \(1,\)"):
        assign(people, [E1], image_ids=[1, 2])
    with pytest.raises(ValueError, match="different embedding spaces"):
        assign_to_known_people(np.ones((1, 5), np.float32), [0], people, threshold=0.5)
    with pytest.raises(ValueError, match=r"shape \(k, 2\)"):
        assign(people, [E1], rejected=np.array([0, 1, 2]))


# --- thresholds -----------------------------------------------------------------------------------------


def test_thresholds_belong_to_a_space_and_can_be_overridden() -> None:
    dlib = thresholds_for_space("dlib_resnet_v1")
    assert (dlib.threshold, dlib.margin, dlib.cluster_eps) == (0.955, 0.02, 0.055)
    assert thresholds_for_space("insightface_buffalo_l").threshold == pytest.approx(0.45)
    assert thresholds_for_space("insightface_r100_custom").threshold == pytest.approx(0.45)
    assert thresholds_for_space("dlib_resnet_v1", threshold=0.97).threshold == 0.97
    trained = SpaceThresholds(0.62, 0.04, 0.3)
    assert thresholds_for_space("projection_7", known={"projection_7": trained}) == trained
    assert thresholds_for_space("projection_7", threshold=0.6, margin=0.0, cluster_eps=0.3).threshold == 0.6
    with pytest.raises(ValueError, match="no default thresholds for embedding space 'projection_7'"):
        thresholds_for_space("projection_7")
    with pytest.raises(ValueError, match="cluster_eps must be a cosine distance in"):
        SpaceThresholds(0.5, 0.0, 0.0)


def test_choose_threshold_meets_the_false_accept_target() -> None:
    same = np.array([0.55, 0.7, 0.8, 0.9])
    diff = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    # no stranger may pass: above 0.6, halfway to the next same-person score 0.7
    assert choose_threshold(same, diff, target_far=0.0) == pytest.approx(0.65)
    # one in six may pass: above 0.5, halfway to min(0.55, 0.6)
    t = choose_threshold(same, diff, target_far=1 / 6)
    assert t == pytest.approx(0.525)
    assert rates_at(t, same, diff) == (pytest.approx(1 / 6), pytest.approx(0.0))
    rng = np.random.default_rng(0)
    diff_big = rng.normal(0.05, 0.1, 100_000)
    t = choose_threshold(rng.normal(0.7, 0.1, 1000), diff_big, target_far=1e-3)
    assert rates_at(t, [0.7], diff_big)[0] <= 1e-3
    with pytest.raises(ValueError, match="target_far must be in"):
        choose_threshold(same, diff, target_far=1.0)
    with pytest.raises(ValueError, match="diff_scores is empty"):
        choose_threshold(same, [], target_far=0.01)
