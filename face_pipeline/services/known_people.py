"""Supervised half of dual-mode clustering: the known people's prototypes (asset person_centroids) and the
matching of every unconfirmed face to them (asset supervised_assignments).

Each step reads the active embedding space's vectors once, computes with the pure domain functions
(domain/assignment.py) and writes back only what changed (bulk, with audit events). A user-confirmed face is
never changed. The faces nobody is matched to are grouped by services/clustering.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from face_pipeline.domain.assignment import (
    NO_PERSON,
    Prototypes,
    assign_to_known_people,
    build_prototypes,
)
from face_pipeline.domain.naming import noise_cluster_id, person_cluster_id
from face_pipeline.faults import crash_point
from face_pipeline.services import incremental_clustering as incremental
from face_pipeline.services.face_table import (
    FaceChanges,
    FaceTable,
    apply_changes,
    read_faces,
    read_rejections,
    sync_payloads,
)
from face_pipeline.services.learned_matcher import RunMatcher, matcher_for_run, refresh_matcher
from face_pipeline.services.library import Library
from face_pipeline.services.run_params import SpaceParams, space_params
from face_pipeline.services.run_params import ignored_faces as _ignored
from face_pipeline.services.run_params import vectors_for as _vectors_for
from face_pipeline.storage.models import AssignmentSource, FaceInstance, PersonPrototype, utcnow
from face_pipeline.storage.vectors import VectorStore

RunMode = incremental.RunMode


@dataclass
class CentroidReport:
    space: str
    people: int = 0
    prototypes: int = 0
    labelled_faces: int = 0
    seconds: float = 0.0
    reused: bool = False  # the labels had not changed: the prototypes were kept
    matcher: str = ""  # the learned matcher's verdict (services/learned_matcher.py); "" when it is off
    matcher_figures: dict[str, Any] = field(default_factory=dict)


@dataclass
class AssignReport:
    space: str
    person_threshold: float
    person_margin: float
    candidates: int = 0
    assigned: int = 0
    unassigned_again: int = 0
    changed: int = 0
    seconds: float = 0.0
    mode: str = RunMode.FULL
    reason: str = ""
    matching: str = "raw matching"  # raw or the learned matcher, and why


# --- person_centroids ----------------------------------------------------------------------------------


def compute_person_centroids(library: Library, vectors: VectorStore) -> CentroidReport:
    """Prototypes (a centroid and a few exemplars) of every person, from user-confirmed faces only.

    Kept as they are when the confirmed labels are those they were built from (and nothing else touched
    them since): a vector never changes under its (space, face id), so they would come out the same."""
    started = time.perf_counter()
    with library.db.session() as session:
        params = space_params(library, session)
        rows = session.execute(
            select(FaceInstance.id, FaceInstance.person_id)
            .where(FaceInstance.user_confirmed.is_(True), FaceInstance.person_id.is_not(None))
            .order_by(FaceInstance.id)
        ).all()
        face_ids = np.array([r.id for r in rows], dtype=np.int64)
        person_ids = np.array([r.person_id for r in rows], dtype=object)
        report = CentroidReport(params.space, labelled_faces=len(rows))
        labels = incremental.labels_digest(face_ids, person_ids)
        built = incremental.prototype_state(session, params.space)
        if built is not None and built == {
            "space": params.space,
            "labels": labels,
            **_prototype_rows(session, params.space),
        }:
            report.people, report.prototypes = _prototype_counts(session, params.space)
            report.reused = True
            _refresh_matcher(library, session, vectors, params, report)
            report.seconds = time.perf_counter() - started
            return report
        session.execute(delete(PersonPrototype).where(PersonPrototype.embedding_space == params.space))
        if len(rows):
            matrix = vectors.fetch(params.space, face_ids)
            prototypes = build_prototypes(matrix, person_ids)
            _store_prototypes(session, params.space, prototypes, face_ids)
            report.people = len(prototypes.person_ids)
            report.prototypes = len(prototypes.vectors)
        incremental.record_prototypes(
            session, {"space": params.space, "labels": labels, **_prototype_rows(session, params.space)}
        )
        _refresh_matcher(library, session, vectors, params, report)
    report.seconds = time.perf_counter() - started
    return report


def _refresh_matcher(
    library: Library, session: Session, vectors: VectorStore, params: SpaceParams, report: CentroidReport
) -> None:
    """With FACE_LEARNED_MATCHING on: fit and gate the learned matcher when the labels changed (seconds)."""
    if not library.settings.learned_matching:
        return
    verdict = refresh_matcher(
        library, session, vectors, params.space, params.person_threshold, params.person_margin, params.cluster_eps
    )
    report.matcher = str(verdict["reason"])
    report.matcher_figures = {k: verdict.get(k) for k in ("use", "raw", "learned", "threshold", "seconds", "reused")}


def _prototype_rows(session: Session, space: str) -> dict[str, int]:
    """How many prototype rows the space has and the newest row id: any rewrite changes one of them."""
    count, newest = session.execute(
        select(func.count(), func.max(PersonPrototype.id)).where(PersonPrototype.embedding_space == space)
    ).one()
    return {"count": int(count), "max_id": int(newest or 0)}


def _prototype_counts(session: Session, space: str) -> tuple[int, int]:
    people, count = session.execute(
        select(func.count(func.distinct(PersonPrototype.person_id)), func.count()).where(
            PersonPrototype.embedding_space == space
        )
    ).one()
    return int(people), int(count)


def _store_prototypes(session: Session, space: str, prototypes: Prototypes, face_ids: np.ndarray) -> None:
    now = utcnow()
    owners = prototypes.owner.tolist()
    counts = prototypes.face_counts.tolist()
    session.execute(
        insert(PersonPrototype),
        [
            {
                "person_id": str(prototypes.person_ids[owner]),
                "embedding_space": space,
                "kind": str(kind),
                "face_id": None if source < 0 else int(face_ids[source]),
                "vector": vector.astype(np.float32).tobytes(),
                "face_count": int(counts[owner]),
                "created_at": now,
            }
            for owner, kind, source, vector in zip(
                owners, prototypes.kinds, prototypes.source_rows, prototypes.vectors, strict=True
            )
        ],
    )


def load_prototypes(session: Session, space: str) -> Prototypes | None:
    rows = session.execute(
        select(PersonPrototype.person_id, PersonPrototype.kind, PersonPrototype.vector, PersonPrototype.face_count)
        .where(PersonPrototype.embedding_space == space)
        .order_by(PersonPrototype.person_id, PersonPrototype.id)
    ).all()
    if not rows:
        return None
    person_ids, owner = np.unique(np.array([r.person_id for r in rows], dtype=object), return_inverse=True)
    counts = np.zeros(len(person_ids), dtype=np.int64)
    counts[owner] = [r.face_count for r in rows]
    return Prototypes(
        person_ids=person_ids,
        vectors=np.stack([np.frombuffer(r.vector, dtype=np.float32) for r in rows]),
        owner=owner.astype(np.int64),
        kinds=np.array([r.kind for r in rows], dtype=object),
        face_counts=counts,
        source_rows=np.full(len(rows), -1, dtype=np.int64),
    )


# --- supervised_assignments ----------------------------------------------------------------------------


def assign_known_faces(
    library: Library,
    vectors: VectorStore,
    *,
    person_threshold: float | None = None,
    person_margin: float | None = None,
    run_id: str | None = None,
    full: bool = False,
) -> AssignReport:
    """Match every face nobody confirmed to the known people (threshold, margin, one face per person per
    photo, never a rejected person). Faces that no longer match are released to the unknown pool.

    Incremental when safe (services/incremental_clustering.py): then only the faces new since the last run,
    the faces back in the unknown pool and the faces with a rejection are matched, and only their vectors
    are read; every other face would get what it has. `full` (or FACE_CLUSTER_MODE=full): all of them."""
    started = time.perf_counter()
    with library.db.session() as session:
        params = space_params(library, session, person_threshold, person_margin)
        report = AssignReport(params.space, params.person_threshold, params.person_margin)
        table = read_faces(session)
        prototypes = load_prototypes(session, params.space)
        explicit = person_threshold is not None or person_margin is not None
        matching = (
            RunMatcher(None, params.person_threshold, params.person_margin, "raw matching: thresholds given")
            if explicit
            else matcher_for_run(
                library, session, vectors, params.space, prototypes, params.person_threshold, params.person_margin
            )
        )
        report.matching = matching.reason
        # the matcher in use decides every old face too: a change of matcher makes the run a full one
        fingerprint = incremental.assignment_fingerprint(
            f"{params.space}|{matching.tag}" if matching.tag else params.space,
            params.person_threshold,
            params.person_margin,
            prototypes,
            table,
        )
        plan = incremental.plan_run(session, library.settings, params.space, _rule(params), fingerprint, full=full)
        ignored = _ignored(session, table)
        rejections = read_rejections(session)
        if plan.incremental:
            candidates = _incremental_candidates(session, plan, table, ignored, rejections)
        else:
            candidates = np.flatnonzero(~table.confirmed & ~ignored)
        report.mode, report.candidates = plan.mode, int(candidates.size)
        report.reason = f"incremental: {candidates.size:,} faces to match" if plan.incremental else plan.reason
        incremental.record_assignment(session, params.space, fingerprint, table)
        if candidates.size == 0:
            report.seconds = time.perf_counter() - started
            return report
        if plan.incremental:
            matrix, subset = vectors.fetch(params.space, table.ids[candidates]), None
        else:  # every face's vector, kept for the clustering step: the candidates are read from it, not copied
            matrix, subset = _vectors_for(library, vectors, params.space, table, keep=True), candidates
        people = np.full(candidates.size, None, dtype=object)
        scores = np.full(candidates.size, np.nan)
        if prototypes is not None:
            rejected = _rejections_as_rows(rejections, table, candidates, prototypes)
            result = assign_to_known_people(
                matrix,
                table.image_ids[candidates],
                prototypes,
                threshold=matching.threshold,
                margin=matching.margin,
                scorer=matching.scorer,
                subset=subset,
                rejected=rejected,
                # a person already in a photo (named by a user, or matched and not matched again now) is not
                # given a second face of it
                occupied=_occupied(table, candidates, include_matched=plan.incremental),
            )
            hit = result.person_index != NO_PERSON
            people[hit] = prototypes.person_ids[result.person_index[hit]]
            scores[hit] = result.best_score[hit]
        del matrix  # the incremental run's vectors (the full run's stay in the snapshot for clustering)
        changes = _assignment_changes(table, candidates, people, scores)
        report.assigned = int((people != None).sum())  # noqa: E711
        report.unassigned_again = int(
            ((people == None) & (table.sources[candidates] == AssignmentSource.SUPERVISED)).sum()  # noqa: E711
        )
        written = apply_changes(session, table, changes, action="assign", run_id=run_id)
        report.changed = int(written.size)
    crash_point("assign_before_payloads")
    sync_payloads(vectors, params.space, table, written)
    report.seconds = time.perf_counter() - started
    return report


def _rule(params: SpaceParams) -> incremental.GroupingRule:
    return incremental.GroupingRule(params.cluster_method, params.cluster_eps, params.min_cluster_size)


def _incremental_candidates(
    session: Session,
    plan: incremental.RunPlan,
    table: FaceTable,
    ignored: np.ndarray,
    rejections: list[tuple[int, str]],
) -> np.ndarray:
    """Rows of the faces an incremental run matches: new since the last assignment run, back in the
    unknown pool since the last clustering run, or with a rejection."""
    assert plan.kept is not None
    # ids of faces created since that run: a late commit, or an id SQLite gave again after a delete
    created = incremental.created_since(session, datetime.fromisoformat(plan.kept.read_at))
    recent = ~np.isin(table.ids, plan.kept.seen_ids) | np.isin(table.ids, created)
    pool = np.flatnonzero((table.person_ids == None) & ~ignored)  # noqa: E711
    released = incremental.released_faces(plan.kept, table, pool, reborn_ids=created)
    rejected = np.isin(table.ids, np.array([face for face, _ in rejections], dtype=np.int64))
    return np.flatnonzero(~table.confirmed & ~ignored & (recent | released | rejected))


def _occupied(table: FaceTable, candidates: np.ndarray, *, include_matched: bool) -> list[tuple[int, str]]:
    """(photo, person) pairs the candidates may not take: faces a user confirmed, and with include_matched
    faces matched by an earlier run that this run does not match again (an incremental run's old faces)."""
    matched = table.person_ids != None  # noqa: E711
    other = np.zeros(len(table), dtype=bool)
    if include_matched:
        other[:] = True
        other[candidates] = False
    holders = np.flatnonzero(matched & (table.confirmed | other))
    holders = holders[np.isin(table.image_ids[holders], table.image_ids[candidates])]
    return list(zip(table.image_ids[holders].tolist(), table.person_ids[holders].tolist(), strict=True))


def _rejections_as_rows(
    pairs: list[tuple[int, str]], table: FaceTable, candidates: np.ndarray, prototypes: Prototypes
) -> np.ndarray:
    """(k, 2) int array of (candidate index, person index) the users ruled out."""
    if not pairs:
        return np.empty((0, 2), dtype=np.int64)
    face_ids = np.array([p[0] for p in pairs], dtype=np.int64)
    person_index = {pid: i for i, pid in enumerate(prototypes.person_ids.tolist())}
    candidate_of_face = np.full(len(table), -1, dtype=np.int64)
    candidate_of_face[candidates] = np.arange(candidates.size)
    rows = candidate_of_face[table.positions(face_ids)]
    persons = np.array([person_index.get(p[1], -1) for p in pairs], dtype=np.int64)
    keep = (rows >= 0) & (persons >= 0)
    return np.stack([rows[keep], persons[keep]], axis=1)


def _assignment_changes(
    table: FaceTable, candidates: np.ndarray, people: np.ndarray, scores: np.ndarray
) -> FaceChanges:
    sources = table.sources[candidates].copy()
    clusters = table.cluster_ids[candidates].copy()
    current_people = table.person_ids[candidates].copy()
    assigned = people != None  # noqa: E711
    clusters[assigned] = [person_cluster_id(p) for p in people[assigned]]
    sources[assigned] = AssignmentSource.SUPERVISED
    current_people[assigned] = people[assigned]
    # A face the supervised step named before but no longer matches goes back to the unknown pool.
    released = ~assigned & (table.person_ids[candidates] != None)  # noqa: E711
    clusters[released] = [noise_cluster_id(int(f)) for f in table.ids[candidates[released]]]
    sources[released] = AssignmentSource.NOISE
    current_people[released] = None
    return FaceChanges(candidates, current_people, clusters, sources, np.where(assigned, scores, np.nan))
