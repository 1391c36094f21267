"""Clustering and assignment figures, checked against small examples computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from face_pipeline.domain.clustering import NOISE
from face_pipeline.domain.metrics import (
    assignment_precision,
    cluster_purity,
    false_accepts_per_1000,
    person_recall,
)
from face_pipeline_eval.cluster_metrics import (
    bcubed,
    cluster_counts,
    evaluate_clustering,
    noise_as_singletons,
    pairwise_scores,
    strangers_in_clusters,
)

# Six faces: a, a, a, b, b, c. Clusters {0,1} (a a), {2,3,4} (a b b), face 5 is noise.
TRUTH = np.array(["a", "a", "a", "b", "b", "c"])
LABELS = np.array([0, 0, 1, 1, 1, NOISE])


def test_noise_becomes_singletons_after_the_clusters() -> None:
    codes = noise_as_singletons(np.array([5, NOISE, 5, 7, NOISE]))
    assert codes.tolist() == [0, 2, 0, 1, 3]


def test_bcubed_matches_the_hand_computation() -> None:
    # precision per face: 1, 1, 1/3, 2/3, 2/3, 1 -> 14/18; recall: 2/3, 2/3, 1/3, 1, 1, 1 -> 14/18
    scores = bcubed(TRUTH, LABELS)
    assert scores.precision == pytest.approx(14 / 18)
    assert scores.recall == pytest.approx(14 / 18)
    assert scores.f1 == pytest.approx(14 / 18)


def test_bcubed_is_perfect_for_the_truth_and_noise_costs_only_recall() -> None:
    assert bcubed(TRUTH, np.array([0, 0, 0, 1, 1, 2])).f1 == pytest.approx(1.0)
    all_noise = bcubed(TRUTH, np.full(6, NOISE))
    assert all_noise.precision == pytest.approx(1.0)
    assert all_noise.recall == pytest.approx((3 * (1 / 3) + 2 * (1 / 2) + 1) / 6)


def test_pairwise_scores_count_pairs() -> None:
    # true pairs: 3 (a) + 1 (b); predicted: 1 + 3; agreeing: (0,1) and (3,4)
    pairs = pairwise_scores(TRUTH, LABELS)
    assert (pairs.agree, pairs.predicted, pairs.true) == (2, 4, 4)
    assert pairs.precision == pytest.approx(0.5) and pairs.recall == pytest.approx(0.5)
    assert pairs.f1 == pytest.approx(0.5)


def test_purity_weights_multi_face_clusters_by_size() -> None:
    assert cluster_purity(TRUTH, LABELS) == pytest.approx((2 + 2) / 5)
    assert np.isnan(cluster_purity(TRUTH, np.full(6, NOISE)))
    # a one-face cluster is left out like noise
    assert cluster_purity(TRUTH, np.array([0, 0, 1, 2, 2, 3])) == pytest.approx(1.0)


def test_cluster_counts() -> None:
    assert cluster_counts(TRUTH, LABELS) == {"clusters": 2, "noise": 1, "identities": 3, "identities_multi": 2}


def test_strangers_in_clusters_counts_one_off_faces_put_with_others() -> None:
    assert strangers_in_clusters(TRUTH, LABELS) == 0.0
    assert strangers_in_clusters(TRUTH, np.array([0, 0, 1, 1, 1, 1])) == 1.0
    # a name given by supervised mode counts too
    assigned = np.array(["a", -1, -1, -1, -1, "b"], dtype=object)
    assert strangers_in_clusters(TRUTH, LABELS, assigned) == 1.0
    assert np.isnan(strangers_in_clusters(np.array(["a", "a"]), np.array([0, 0])))


def test_assignment_figures() -> None:
    assigned = np.array(["A", "A", -1, "B", "A"], dtype=object)
    truth = np.array(["A", "B", "A", "B", "X"], dtype=object)
    known = np.array(["A", "B"], dtype=object)
    assert assignment_precision(assigned, truth) == pytest.approx(2 / 4)
    assert person_recall(assigned, truth, known) == pytest.approx(2 / 4)
    assert false_accepts_per_1000(assigned, truth, known) == pytest.approx(1000.0)
    nobody = np.full(5, -1, dtype=object)
    assert np.isnan(assignment_precision(nobody, truth))
    assert false_accepts_per_1000(nobody, truth, known) == 0.0


def test_evaluate_clustering_bundles_the_figures() -> None:
    report = evaluate_clustering(TRUTH, LABELS)
    assert report.bcubed_f1 == pytest.approx(14 / 18)
    assert report.pairwise_f1 == pytest.approx(0.5)
    assert (report.clusters, report.noise, report.identities) == (2, 1, 3)


def test_metrics_are_linear_in_time_on_large_inputs() -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 50_000, size=200_000)
    labels = np.where(rng.random(200_000) < 0.3, NOISE, truth)
    report = evaluate_clustering(truth, labels)  # would need 320 GB as an n x n matrix
    assert report.bcubed_precision == pytest.approx(1.0)


def test_mismatched_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="same length"):
        bcubed(TRUTH, LABELS[:-1])
    with pytest.raises(ValueError, match="one-dimensional"):
        noise_as_singletons(np.zeros((2, 2), dtype=int))
