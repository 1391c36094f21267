"""The pipeline's own figures on held-out labels, and the thresholds that make two spaces comparable.

TAR at a fixed FAR says whether a space separates people on pairs. It does not say what the pipeline does
with the space: prototypes of the named people, a threshold and margin against them, then the rest grouped
at a cluster eps. A projection trained on a few dozen people can raise pair TAR and still pull strangers
towards the named people's prototypes (measured on lfw-dev: TAR@1e-3 0.854 -> 0.911, yet assignment
precision 100% -> 28% in the reassigned library). So the gate also plays the pipeline on faces it never
trained on (`pipeline_figures`), in each space at that space's own thresholds.

Roles (`PipelineRoles.from_split`): the training people's training faces and half of the validation
people's gallery faces are the user's names (prototypes); the training people's held-out faces and those
validation people's other faces must be found; the other half of the validation people are never named
(strangers: any name given to them is a false accept, and they are what the unknown clusters must keep
apart).

Thresholds of a trained space: in a library, `match_thresholds_on_library` calibrates them on the unnamed
faces (the same share named, the same share linked as in the raw space), because held-out labels hold a
handful of strangers where a library holds hundreds of look-alikes: matched on held-out faces alone, a
lfw-dev checkpoint passed this gate and then named 28 library faces where raw named 15. Without enough
unnamed faces, `match_thresholds` keeps the raw space's error rates on the held-out faces: the same share of
faces whose best *other* person scores above the threshold, the same share linked to a face of another
person at the cluster eps.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from face_pipeline.domain.assignment import NO_PERSON, SpaceThresholds, assign_to_known_people, build_prototypes
from face_pipeline.domain.clustering import NOISE, cluster_unknown
from face_pipeline.domain.metrics import (
    PipelineFigures,
    assignment_precision,
    cluster_purity,
    false_accepts_per_1000,
    person_recall,
    pipeline_failures,
)
from face_pipeline.domain.verification import IdentitySplit

MIN_TAIL = 5  # faces above a raw threshold needed to match its rate; fewer: the strictest value is taken


@dataclass(frozen=True)
class PipelineRoles:
    """Indices into the caller's arrays: named faces (prototypes), faces to find, faces of strangers."""

    gallery: np.ndarray
    queries: np.ndarray
    strangers: np.ndarray

    @property
    def probes(self) -> np.ndarray:
        """The faces assignment sees: queries first, then strangers."""
        return np.concatenate([self.queries, self.strangers])

    @classmethod
    def from_split(cls, split: IdentitySplit, labels: np.ndarray) -> PipelineRoles:
        """Every other validation person (in label order) is named from their gallery; the rest never are."""
        labels = np.asarray(labels)
        never = split.val_people[1::2]
        stranger = np.isin(labels, never)
        gallery = np.concatenate([split.train, split.unseen_gallery[~stranger[split.unseen_gallery]]])
        queries = np.concatenate([split.holdout, split.unseen_query[~stranger[split.unseen_query]]])
        strangers = np.sort(split.unseen[stranger[split.unseen]])
        return cls(np.sort(gallery), np.sort(queries), strangers)


def pipeline_figures(
    vectors: np.ndarray,
    labels: np.ndarray,
    roles: PipelineRoles,
    thresholds: SpaceThresholds,
    *,
    min_cluster_size: int | None = None,
) -> PipelineFigures:
    """Prototypes from the gallery, assignment of the probes at `thresholds`, grouping of what is left.

    vectors: (n, d) unit rows; labels: (n,) int person labels; every face is its own photo.
    """
    labels = np.asarray(labels)
    prototypes = build_prototypes(vectors[roles.gallery], labels[roles.gallery])
    probes = roles.probes
    result = assign_to_known_people(
        vectors[probes], np.arange(probes.size), prototypes, thresholds.threshold, thresholds.margin
    )
    people = prototypes.person_ids.astype(np.int64)
    named = np.where(result.person_index != NO_PERSON, people[np.maximum(result.person_index, 0)], NO_PERSON)
    truth = labels[probes]
    left = probes[named == NO_PERSON]
    groups = np.full(left.size, NOISE, dtype=np.int64)
    min_size = min_cluster_size or thresholds.min_cluster_size
    if left.size >= min_size:
        groups = cluster_unknown(
            vectors[left],
            method=thresholds.cluster_method,  # type: ignore[arg-type]
            min_cluster_size=min_size,
            eps=thresholds.cluster_eps,
        )
    return PipelineFigures(
        precision=assignment_precision(named, truth),
        recall=person_recall(named, truth, people),
        false_accepts_per_1000=false_accepts_per_1000(named, truth, people),
        purity=cluster_purity(labels[left], groups) if left.size else float("nan"),
        grouped=float((groups != NOISE).mean()) if left.size else float("nan"),
        n_queries=int(roles.queries.size),
        n_strangers=int(roles.strangers.size),
    )


# --- thresholds of a trained space ----------------------------------------------------------------------


def best_other_person(vectors: np.ndarray, labels: np.ndarray, roles: PipelineRoles) -> np.ndarray:
    """(probes,) each probe's best score over the prototypes of people other than its own."""
    labels = np.asarray(labels)
    prototypes = build_prototypes(vectors[roles.gallery], labels[roles.gallery])
    probes = roles.probes
    scores = vectors[probes] @ prototypes.vectors.T  # (probes, prototypes): a few hundred x a few hundred
    own = prototypes.person_ids.astype(np.int64)[prototypes.owner][None, :] == labels[probes][:, None]
    scores[own] = -np.inf
    return scores.max(axis=1)


def nearest_other_face(vectors: np.ndarray, labels: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(faces,) each face's highest cosine to a face of another person among `faces`."""
    labels = np.asarray(labels)[faces]
    best = np.empty(faces.size, dtype=np.float32)
    for start in range(0, faces.size, 2048):  # (chunk, faces) at a time
        block = vectors[faces[start : start + 2048]] @ vectors[faces].T
        block[labels[start : start + 2048][:, None] == labels[None, :]] = -np.inf
        best[start : start + 2048] = block.max(axis=1)
    return best


def _same_rate(raw_scores: np.ndarray, raw_value: float, projected_scores: np.ndarray) -> tuple[float, int]:
    """The projected value passing the same share of scores as `raw_value` does in the raw space, and how
    many raw scores passed. Too few to measure a rate: just above the highest projected score."""
    passed = int((raw_scores >= raw_value).sum())
    if passed < MIN_TAIL:
        return float(np.nextafter(np.float32(projected_scores.max()), np.float32(np.inf))), passed
    kth = projected_scores.size - passed  # the `passed` highest projected scores pass
    return float(np.partition(projected_scores, kth)[kth]), passed


@dataclass(frozen=True)
class MatchedThresholds:
    projected: SpaceThresholds
    facts: dict[str, Any]  # JSON: how each value was chosen and on how many faces


def _matched(
    raw: SpaceThresholds,
    person_scores: tuple[np.ndarray, np.ndarray],
    link_scores: tuple[np.ndarray, np.ndarray],
    facts: dict[str, Any],
) -> MatchedThresholds:
    """Thresholds passing the same share of (raw, projected) person scores and link scores as the raw
    values do; the margin scaled by the spread of the person scores."""
    raw_best, projected_best = person_scores
    raw_link, projected_link = link_scores
    threshold, named = _same_rate(raw_best, raw.threshold, projected_best)
    link, linked = _same_rate(raw_link, 1.0 - raw.cluster_eps, projected_link)
    spread_raw, spread_projected = float(raw_best.std()), float(projected_best.std())
    scale = spread_projected / spread_raw if spread_raw > 0 else 1.0
    projected = replace(  # grouped as the raw space groups (method, smallest group), at its own scale
        raw,
        threshold=round(float(np.clip(threshold, -1.0, 1.0)), 6),
        margin=round(float(np.clip(raw.margin * scale, 0.0, 2.0)), 4),
        cluster_eps=round(float(np.clip(1.0 - link, 1e-3, 2.0)), 6),
    )
    rates = {
        "raw_rates": {"threshold": named / max(raw_best.size, 1), "cluster_eps": linked / max(raw_link.size, 1)},
        "strictest_value_taken": {"threshold": named < MIN_TAIL, "cluster_eps": linked < MIN_TAIL},
    }
    return MatchedThresholds(projected, {**facts, **rates})


def match_thresholds(
    raw_vectors: np.ndarray,
    projected_vectors: np.ndarray,
    labels: np.ndarray,
    roles: PipelineRoles,
    raw: SpaceThresholds,
) -> MatchedThresholds:
    """The projected space's thresholds with the raw space's error rates (see the module doc)."""
    faces = np.concatenate([roles.gallery, roles.probes])
    return _matched(
        raw,
        (best_other_person(raw_vectors, labels, roles), best_other_person(projected_vectors, labels, roles)),
        (nearest_other_face(raw_vectors, labels, faces), nearest_other_face(projected_vectors, labels, faces)),
        {
            "threshold_rule": "same share of faces whose best other person scores above it",
            "cluster_eps_rule": "same share of faces linked to a face of another person",
            "margin_rule": "scaled by the spread of best-other-person scores",
            "faces": {"probes": int(roles.probes.size), "linked": int(faces.size)},
        },
    )


def best_person_scores(vectors: np.ndarray, gallery: np.ndarray, gallery_labels: np.ndarray) -> np.ndarray:
    """(n,) each face's best score over the prototypes built from `gallery` (g, d) with `gallery_labels`."""
    prototypes = build_prototypes(gallery, gallery_labels)
    best = np.empty(vectors.shape[0], dtype=np.float32)
    for start in range(0, vectors.shape[0], 4096):
        best[start : start + 4096] = (vectors[start : start + 4096] @ prototypes.vectors.T).max(axis=1)
    return best


def match_thresholds_on_library(
    raw_library: np.ndarray,
    projected_library: np.ndarray,
    raw_gallery: np.ndarray,
    projected_gallery: np.ndarray,
    gallery_labels: np.ndarray,
    raw: SpaceThresholds,
) -> MatchedThresholds:
    """The projected space's thresholds calibrated on the library's own unnamed faces (a sample of them).

    Most unnamed faces belong to people nobody named, so the raw space's thresholds fix a budget: the share of
    unnamed faces whose best person reaches the threshold, and the share linked to another unnamed face
    within the cluster eps. The projected space gets the values that spend the same budgets; it can only do
    better by ranking the right faces first. Held-out labels alone cannot set this: they hold a handful of
    strangers where a library holds hundreds of look-alikes (lfw-dev: a checkpoint matched on held-out
    people named 28 faces where raw named 15, 29% of them rightly).

    *_library: (m, d) / (m, o) unit rows of unnamed faces; *_gallery: unit rows of the named faces.
    """
    everyone = np.arange(raw_library.shape[0])  # each unnamed face its own "person": links to any other face
    return _matched(
        raw,
        (
            best_person_scores(raw_library, raw_gallery, gallery_labels),
            best_person_scores(projected_library, projected_gallery, gallery_labels),
        ),
        (
            nearest_other_face(raw_library, everyone, everyone),
            nearest_other_face(projected_library, everyone, everyone),
        ),
        {
            "threshold_rule": "same share of the library's unnamed faces reaching a named person",
            "cluster_eps_rule": "same share of the library's unnamed faces linked to another",
            "margin_rule": "scaled by the spread of best-person scores",
            "faces": {"library_sample": int(raw_library.shape[0]), "named": int(raw_gallery.shape[0])},
        },
    )


# --- the gate -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PipelineVerdict:
    promote: bool
    reason: str
    projected: SpaceThresholds  # the trained space's thresholds (matched rates)
    raw_figures: PipelineFigures
    projected_figures: PipelineFigures
    threshold_facts: dict[str, Any]


def pipeline_gate(
    raw_vectors: np.ndarray,
    projected_vectors: np.ndarray,
    labels: np.ndarray,
    split: IdentitySplit,
    raw: SpaceThresholds,
    *,
    min_cluster_size: int | None = None,
    min_recall_gain: float = 0.005,
    tolerance: float = 0.005,
    matched: MatchedThresholds | None = None,
) -> PipelineVerdict:
    """Play the pipeline on the held-out faces in both spaces; promote only when `pipeline_failures` finds
    none.

    raw_vectors, projected_vectors: (n, d) and (n, o) unit rows of the same faces; labels: (n,) int.
    matched: the projected space's thresholds when the caller calibrated them (`match_thresholds_on_library`);
    otherwise they are matched on the held-out faces (`match_thresholds`).
    """
    roles = PipelineRoles.from_split(split, labels)
    if matched is None:
        matched = match_thresholds(raw_vectors, projected_vectors, labels, roles, raw)
    before = pipeline_figures(raw_vectors, labels, roles, raw, min_cluster_size=min_cluster_size)
    after = pipeline_figures(projected_vectors, labels, roles, matched.projected, min_cluster_size=min_cluster_size)
    failures = pipeline_failures(before, after, min_recall_gain=min_recall_gain, tolerance=tolerance)
    figures = (
        f"held-out pipeline: precision {before.precision:.3f} -> {after.precision:.3f}, recall "
        f"{before.recall:.3f} -> {after.recall:.3f}, strangers named/1000 {before.false_accepts_per_1000:.1f} -> "
        f"{after.false_accepts_per_1000:.1f}, group purity {before.purity:.3f} -> {after.purity:.3f}"
    )
    if failures:
        reason = "kept raw space: " + "; ".join(failures) + f" ({figures})"
    else:
        reason = f"projection helps the pipeline ({figures})"
    return PipelineVerdict(not failures, reason, matched.projected, before, after, matched.facts)
