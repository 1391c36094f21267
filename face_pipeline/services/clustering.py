"""Dual-mode clustering use cases: person prototypes, supervised assignment, unknown clusters.

Each step reads the active embedding space's vectors once, computes with the pure domain functions and
writes back only what changed (bulk, with audit events). A user-confirmed face is never changed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from face_pipeline.domain.assignment import (
    NO_PERSON,
    Prototypes,
    assign_to_known_people,
    build_prototypes,
)
from face_pipeline.domain.clustering import NOISE, cluster_unknown
from face_pipeline.domain.naming import (
    ClusterKind,
    cluster_ids,
    kind_by_prefix,
    noise_cluster_id,
    parse_cluster_id,
    person_cluster_id,
    stable_cluster_numbers,
)
from face_pipeline.errors import InvalidInput
from face_pipeline.faults import crash_point
from face_pipeline.services.face_table import (
    FaceChanges,
    FaceTable,
    apply_changes,
    read_faces,
    read_rejections,
    sync_payloads,
)
from face_pipeline.services.library import Library
from face_pipeline.services.space_registry import active_space
from face_pipeline.storage.models import AssignmentSource, FaceInstance, PersonPrototype, PipelineState, utcnow
from face_pipeline.storage.vectors import VectorStore

log = logging.getLogger(__name__)
NEXT_CLUSTER_KEY = "next_unknown_cluster_number"


class NoActiveSpace(InvalidInput):
    def __init__(self) -> None:
        super().__init__("no faces yet: run `face-pipeline faces backfill` first")


@dataclass
class SpaceParams:
    """The thresholds in force for one run: settings override the space's own defaults."""

    space: str
    person_threshold: float
    person_margin: float
    cluster_eps: float | None
    cluster_method: str = "hdbscan"
    min_cluster_size: int = 3


@dataclass
class CentroidReport:
    space: str
    people: int = 0
    prototypes: int = 0
    labelled_faces: int = 0
    seconds: float = 0.0


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


@dataclass
class ClusterReport:
    space: str
    method: str
    pool: int = 0
    clusters: int = 0
    clustered_faces: int = 0
    noise: int = 0
    changed: int = 0
    sizes: list[int] = field(default_factory=list)  # descending
    seconds: float = 0.0

    def size_histogram(self) -> dict[str, int]:
        bins = {"2-3": (2, 3), "4-9": (4, 9), "10-19": (10, 19), "20-49": (20, 49), "50+": (50, 10**12)}
        sizes = np.array(self.sizes, dtype=np.int64)
        return {label: int(((sizes >= lo) & (sizes <= hi)).sum()) for label, (lo, hi) in bins.items()}


def space_params(
    library: Library,
    session: Session,
    person_threshold: float | None = None,
    person_margin: float | None = None,
) -> SpaceParams:
    space = active_space(session)
    if space is None:
        raise NoActiveSpace()
    settings = library.settings
    threshold = _first(person_threshold, settings.person_match_threshold, space.person_threshold)
    if threshold is None:
        raise InvalidInput(f"embedding space {space.name} has no person threshold; set FACE_PERSON_MATCH_THRESHOLD")
    margin = _first(person_margin, settings.person_match_margin, space.person_margin) or 0.0
    eps = _first(settings.unknown_eps, space.cluster_eps)
    grouping = space.thresholds()
    return SpaceParams(
        space.name,
        float(threshold),
        float(margin),
        None if eps is None else float(eps),
        settings.unknown_clustering_method or grouping.cluster_method,
        settings.unknown_min_cluster_size or grouping.min_cluster_size,
    )


def _first(*values: float | None) -> float | None:
    return next((v for v in values if v is not None), None)


def _ignored(session: Session, table: FaceTable) -> np.ndarray:
    """(n,) bool: the faces a user marked "ignore"; automatic assignment and clustering pass them by."""
    ids = session.scalars(select(FaceInstance.id).where(FaceInstance.ignored.is_(True))).all()
    return np.isin(table.ids, np.array(ids, dtype=np.int64))


def _vectors_for(library: Library, vectors: VectorStore, space: str, table: FaceTable, *, keep: bool) -> np.ndarray:
    """The vectors of every face in the table, in table order (the store holds exactly these faces); read
    once per run: the assignment step keeps its read for the clustering step (storage/collection_snapshots.py)."""
    ids, matrix = library.snapshots.read(vectors, space, table.ids, keep=keep)
    if not np.array_equal(ids, table.ids):
        missing = np.setdiff1d(table.ids, ids)[:10].tolist()
        extra = np.setdiff1d(ids, table.ids)[:10].tolist()
        raise InvalidInput(
            f"vector collection {space} is out of step with SQL (faces without vectors: {missing}, "
            f"vectors without faces: {extra}); re-run the backfill or regenerate embeddings"
        )
    return matrix


# --- person_centroids ----------------------------------------------------------------------------------


def compute_person_centroids(library: Library, vectors: VectorStore) -> CentroidReport:
    """Prototypes (a centroid and a few exemplars) of every person, from user-confirmed faces only."""
    started = time.perf_counter()
    with library.db.session() as session:
        params = space_params(library, session)
        table = read_faces(session)
        labelled = np.flatnonzero(table.confirmed & (table.person_ids != None))  # noqa: E711
        report = CentroidReport(params.space, labelled_faces=int(labelled.size))
        session.execute(delete(PersonPrototype).where(PersonPrototype.embedding_space == params.space))
        if labelled.size:
            matrix = vectors.fetch(params.space, table.ids[labelled])
            prototypes = build_prototypes(matrix, table.person_ids[labelled])
            _store_prototypes(session, params.space, prototypes, table.ids[labelled])
            report.people = len(prototypes.person_ids)
            report.prototypes = len(prototypes.vectors)
    report.seconds = time.perf_counter() - started
    return report


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
) -> AssignReport:
    """Match every face nobody confirmed to the known people (threshold, margin, one face per person per
    photo, never a rejected person). Faces that no longer match are released to the unknown pool."""
    started = time.perf_counter()
    with library.db.session() as session:
        params = space_params(library, session, person_threshold, person_margin)
        report = AssignReport(params.space, params.person_threshold, params.person_margin)
        table = read_faces(session)
        prototypes = load_prototypes(session, params.space)
        candidates = np.flatnonzero(~table.confirmed & ~_ignored(session, table))
        report.candidates = int(candidates.size)
        if candidates.size == 0:
            return report
        matrix = _vectors_for(library, vectors, params.space, table, keep=True)[candidates]
        people = np.full(candidates.size, None, dtype=object)
        scores = np.full(candidates.size, np.nan)
        if prototypes is not None:
            rejected = _rejections_as_rows(read_rejections(session), table, candidates, prototypes)
            confirmed = np.flatnonzero(table.confirmed & (table.person_ids != None))  # noqa: E711
            result = assign_to_known_people(
                matrix,
                table.image_ids[candidates],
                prototypes,
                threshold=params.person_threshold,
                margin=params.person_margin,
                rejected=rejected,
                # a person a user already named in a photo is not given a second face of it
                occupied=zip(table.image_ids[confirmed].tolist(), table.person_ids[confirmed].tolist(), strict=True),
            )
            hit = result.person_index != NO_PERSON
            people[hit] = prototypes.person_ids[result.person_index[hit]]
            scores[hit] = result.best_score[hit]
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


# --- unknown_clusters ----------------------------------------------------------------------------------


def cluster_unknown_faces(
    library: Library,
    vectors: VectorStore,
    *,
    method: str | None = None,
    min_cluster_size: int | None = None,
    eps: float | None = None,
    run_id: str | None = None,
) -> ClusterReport:
    """Group the faces that belong to nobody; keep unknown_cluster_{N} numbers across runs."""
    started = time.perf_counter()
    with library.db.session() as session:
        params = space_params(library, session)
        method = method or params.cluster_method
        min_size = min_cluster_size or params.min_cluster_size
        eps = eps if eps is not None else params.cluster_eps
        report = ClusterReport(params.space, method)
        table = read_faces(session)
        pool = np.flatnonzero((table.person_ids == None) & ~_ignored(session, table))  # noqa: E711
        report.pool = int(pool.size)
        if pool.size:
            matrix = _vectors_for(library, vectors, params.space, table, keep=False)[pool]
            labels = cluster_unknown(matrix, method=method, min_cluster_size=min_size, eps=eps)  # type: ignore[arg-type]
            cluster_ids = _stable_names(session, table, pool, labels)
            changes = FaceChanges(
                pool,
                np.full(pool.size, None, dtype=object),
                cluster_ids,
                np.where(labels == NOISE, AssignmentSource.NOISE, AssignmentSource.UNSUPERVISED).astype(object),
                np.full(pool.size, np.nan),
            )
            written = apply_changes(session, table, changes, action="cluster", run_id=run_id)
            report.changed = int(written.size)
            sizes = np.bincount(labels[labels != NOISE])
            report.sizes = sorted(sizes[sizes > 0].tolist(), reverse=True)
            report.clusters = len(report.sizes)
            report.clustered_faces = int((labels != NOISE).sum())
            report.noise = int((labels == NOISE).sum())
        else:
            library.snapshots.forget()  # the assignment step's read has no later reader in this run
            written = np.empty(0, dtype=np.int64)
    crash_point("cluster_before_payloads")
    sync_payloads(vectors, params.space, table, written)
    report.seconds = time.perf_counter() - started
    return report


def _stable_names(session: Session, table: FaceTable, pool: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """cluster ids for the pool: unknown_cluster_{N} keeping last run's N for the same group."""
    previous: dict[object, int] = {}
    for row in pool.tolist():
        current = table.cluster_ids[row]
        if current and kind_by_prefix(current) is ClusterKind.UNKNOWN:
            previous[int(table.ids[row])] = int(parse_cluster_id(current)[1])
    state = session.get(PipelineState, NEXT_CLUSTER_KEY)
    next_free = max(int(state.value["next"]) if state else 1, max(previous.values(), default=0) + 1)
    numbers, next_free = stable_cluster_numbers(labels, table.ids[pool], previous, next_free)
    if state is None:
        session.add(PipelineState(key=NEXT_CLUSTER_KEY, value={"next": int(next_free)}))
    else:
        state.value = {"next": int(next_free)}
    return cluster_ids(labels, table.ids[pool], numbers)
