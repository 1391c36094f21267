"""Scoring an evaluation stage: the library's state (read from SQL) against the ground truth.

Only a photo's largest face carries the photo's identity (the dataset labels one subject per photo); the
other faces have an unknown identity and are left out of every figure, neither right nor wrong. They still
take part in clustering, so a stranger grouped with a background face counts as grouped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from sqlalchemy import select

from face_pipeline.domain.assignment import NO_PERSON
from face_pipeline.domain.clustering import NOISE
from face_pipeline.domain.metrics import assignment_precision, cluster_purity, false_accepts_per_1000, person_recall
from face_pipeline.domain.naming import PERSON_PREFIX, UNKNOWN_PREFIX
from face_pipeline.storage.db import Database
from face_pipeline.storage.models import AssignmentSource, FaceInstance, Image, Person
from face_pipeline_eval.baselines import immich_baseline, plain_hdbscan_baseline
from face_pipeline_eval.cluster_metrics import bcubed, cluster_counts
from face_pipeline_eval.main_face import main_faces_of_photos

UNKNOWN_IDENTITY = ""  # truth of a background face (or of a photo outside the dataset)
# Immich's max_distance is swept around the space's own link distance (dlib 0.055 -> 0.033..0.077, buffalo_s
# 0.6 -> 0.36..0.84, which holds Immich's ArcFace default 0.5); the best BCubed F is reported.
IMMICH_DISTANCE_FACTORS = (0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4)
PLAIN_HDBSCAN_MIN_CLUSTER_SIZE = 3


@dataclass
class LibraryState:
    """Every face of the library, sorted by face id, with what the pipeline decided and the truth."""

    face_ids: np.ndarray  # (n,) int64
    truth: np.ndarray  # (n,) object: identity, UNKNOWN_IDENTITY for faces that are not scored
    person_identity: np.ndarray  # (n,) object: identity the face's person was named after, or None
    cluster_codes: np.ndarray  # (n,) int64: one code per person_/unknown_cluster_ id, NOISE for singletons
    unknown: np.ndarray  # (n,) bool: in an unknown_cluster_
    supervised: np.ndarray  # (n,) bool: named by the automatic (supervised) step
    confirmed: np.ndarray  # (n,) bool: named by the user

    @property
    def scored(self) -> np.ndarray:
        return self.truth != UNKNOWN_IDENTITY

    def grouped(self) -> np.ndarray:
        """(n,) bool: named, or in a cluster with at least one other face."""
        codes = self.cluster_codes
        sizes = np.bincount(codes[codes != NOISE], minlength=int(codes.max(initial=0)) + 1)
        in_multi = (codes != NOISE) & (sizes[np.maximum(codes, 0)] >= 2)
        return in_multi | (self.person_identity != None)  # noqa: E711


def read_state(db: Database, identity_of_path: dict[str, str], identity_of_name: dict[str, str]) -> LibraryState:
    """The library's faces with their truth: `identity_of_path` maps image paths to identities (the
    evaluator's key), `identity_of_name` maps the names the simulated user gave back to identities."""
    with db.session() as session:
        rows = session.execute(
            select(
                FaceInstance.id,
                FaceInstance.image_id,
                FaceInstance.bbox_w,
                FaceInstance.bbox_h,
                FaceInstance.person_id,
                FaceInstance.cluster_id,
                FaceInstance.assignment_source,
                FaceInstance.user_confirmed,
                Image.path,
            )
            .join(Image, Image.id == FaceInstance.image_id)
            .order_by(FaceInstance.id)
        ).all()
        names = dict(session.execute(select(Person.id, Person.name)).tuples().all())
    main = set(
        main_faces_of_photos(
            (r.id for r in rows), (r.image_id for r in rows), (r.bbox_w * r.bbox_h for r in rows)
        ).values()
    )
    clusters = [r.cluster_id or "" for r in rows]
    grouped = [c if c.startswith((PERSON_PREFIX, UNKNOWN_PREFIX)) else None for c in clusters]
    codes = {c: i for i, c in enumerate(sorted({c for c in grouped if c}))}
    return LibraryState(
        face_ids=np.array([r.id for r in rows], dtype=np.int64),
        truth=np.array(
            [identity_of_path.get(r.path, UNKNOWN_IDENTITY) if r.id in main else UNKNOWN_IDENTITY for r in rows],
            dtype=object,
        ),
        person_identity=np.array(
            [None if r.person_id is None else identity_of_name.get(names.get(r.person_id, ""), "?") for r in rows],
            dtype=object,
        ),
        cluster_codes=np.array([NOISE if c is None else codes[c] for c in grouped], dtype=np.int64),
        unknown=np.array([c.startswith(UNKNOWN_PREFIX) for c in clusters], dtype=bool),
        supervised=np.array([r.assignment_source == AssignmentSource.SUPERVISED for r in rows]),
        confirmed=np.array([bool(r.user_confirmed) for r in rows]),
    )


@dataclass
class StageFigures:
    """One row of the evaluation table: the library after one stage."""

    stage: str
    faces: int  # scored faces (each photo's main face)
    named_people: int
    user_labelled: int  # scored faces a user named
    automatic: int  # scored faces the supervised step named
    precision: float  # of the automatic assignments
    unknown_purity: float  # of the unknown clusters (multi-face)
    recall: float  # faces of named people the user did not label: share assigned to the right person
    recall_faces: int  # how many such faces there are
    known_errors: int  # of them: left unnamed or given a wrong name (issue 12's known-people errors)
    bcubed_f: float  # over all scored faces: people, unknown clusters, singletons
    bcubed_p: float
    bcubed_r: float
    clusters: int  # people + unknown clusters holding >= 2 scored faces
    identities: int  # identities with >= 2 scored faces
    false_accepts_per_1000: float  # faces of people nobody named that were given a name
    strangers_named: float  # one-off strangers given a person's name
    strangers_grouped: float  # ... or put in a multi-face cluster
    seconds: float = 0.0  # cluster-dual (the pipeline) or the baseline's clustering

    def as_json(self) -> dict[str, Any]:
        return {f.name: _rounded(getattr(self, f.name)) for f in fields(self)}


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return None if np.isnan(value) else round(value, 4)
    return value


def score_pipeline(stage: str, state: LibraryState, strangers: frozenset[str], seconds: float) -> StageFigures:
    scored = state.scored
    truth = state.truth[scored]
    named = np.array(sorted({p for p in state.person_identity if p is not None}), dtype=object)
    person = np.where(state.person_identity == None, NO_PERSON, state.person_identity)[scored]  # noqa: E711
    automatic = state.supervised[scored]
    by_user = state.confirmed[scored]
    unknown = state.unknown[scored]
    grouped = state.grouped()[scored]
    stranger = np.isin(truth, list(strangers))
    labels = state.cluster_codes[scored]
    b = bcubed(truth, labels) if truth.size else None
    counts = cluster_counts(truth, labels)
    return StageFigures(
        stage=stage,
        faces=int(scored.sum()),
        named_people=len(named),
        user_labelled=int(by_user.sum()),
        automatic=int(automatic.sum()),
        precision=assignment_precision(np.where(automatic, person, NO_PERSON), truth),
        unknown_purity=cluster_purity(truth[unknown], labels[unknown]) if unknown.any() else float("nan"),
        recall=person_recall(person[~by_user], truth[~by_user], named) if named.size else float("nan"),
        recall_faces=int((np.isin(truth, named) & ~by_user).sum()) if named.size else 0,
        known_errors=int((np.isin(truth, named) & ~by_user & (person != truth)).sum()) if named.size else 0,
        bcubed_f=b.f1 if b else float("nan"),
        bcubed_p=b.precision if b else float("nan"),
        bcubed_r=b.recall if b else float("nan"),
        clusters=counts["clusters"],
        identities=counts["identities_multi"],
        false_accepts_per_1000=false_accepts_per_1000(person, truth, named),
        strangers_named=float((person[stranger] != NO_PERSON).mean()) if stranger.any() else float("nan"),
        strangers_grouped=float(grouped[stranger].mean()) if stranger.any() else float("nan"),
        seconds=seconds,
    )


@dataclass
class BaselineFigures:
    """A baseline's clusters of the same faces (all of them, scored on the main faces)."""

    method: str
    stage: str
    params: str
    bcubed_f: float
    bcubed_p: float
    bcubed_r: float
    unknown_purity: float
    clusters: int
    identities: int
    strangers_grouped: float
    seconds: float

    def as_json(self) -> dict[str, Any]:
        return {f.name: _rounded(getattr(self, f.name)) for f in fields(self)}


def score_baselines(
    stage: str, state: LibraryState, matrix: np.ndarray, strangers: frozenset[str], space_eps: float
) -> list[BaselineFigures]:
    """The seed's plain HDBSCAN and Immich's algorithm (at its best distance) on the same vectors."""
    started = time.perf_counter()
    plain = plain_hdbscan_baseline(matrix, min_cluster_size=PLAIN_HDBSCAN_MIN_CLUSTER_SIZE)
    rows = [
        _baseline("plain HDBSCAN", stage, f"min_cluster_size={PLAIN_HDBSCAN_MIN_CLUSTER_SIZE}", state, plain, strangers)
    ]
    rows[0].seconds = time.perf_counter() - started
    best: BaselineFigures | None = None
    for distance in sorted({round(space_eps * factor, 3) for factor in IMMICH_DISTANCE_FACTORS}):
        started = time.perf_counter()
        labels = immich_baseline(matrix, max_distance=distance)
        row = _baseline("Immich", stage, f"max_distance={distance:g} (best of sweep)", state, labels, strangers)
        row.seconds = time.perf_counter() - started
        if best is None or row.bcubed_f > best.bcubed_f:
            best = row
    assert best is not None
    return rows + [best]


def _baseline(
    method: str, stage: str, params: str, state: LibraryState, labels: np.ndarray, strangers: frozenset[str]
) -> BaselineFigures:
    scored = state.scored
    truth = state.truth[scored]
    codes = labels[scored]
    sizes = np.bincount(labels[labels != NOISE], minlength=int(labels.max(initial=0)) + 1)
    grouped = ((labels != NOISE) & (sizes[np.maximum(labels, 0)] >= 2))[scored]
    stranger = np.isin(truth, list(strangers))
    b = bcubed(truth, codes)
    counts = cluster_counts(truth, codes)
    return BaselineFigures(
        method=method,
        stage=stage,
        params=params,
        bcubed_f=b.f1,
        bcubed_p=b.precision,
        bcubed_r=b.recall,
        unknown_purity=cluster_purity(truth, codes),
        clusters=counts["clusters"],
        identities=counts["identities_multi"],
        strangers_grouped=float(grouped[stranger].mean()) if stranger.any() else float("nan"),
        seconds=0.0,
    )
