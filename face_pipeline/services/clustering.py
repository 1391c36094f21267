"""Dual-mode clustering use cases: person prototypes, supervised assignment, unknown clusters.

Each step reads the active embedding space's vectors once, computes with the pure domain functions and
writes back only what changed (bulk, with audit events). A user-confirmed face is never changed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from datetime import datetime

import numpy as np
from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from face_pipeline.domain.assignment import (
    NO_PERSON,
    Prototypes,
    assign_to_known_people,
    build_prototypes,
)
from face_pipeline.domain.clustering import NOISE, cluster_unknown, extend_clusters
from face_pipeline.domain.naming import (
    ClusterKind,
    cluster_ids,
    kind_by_prefix,
    noise_cluster_id,
    parse_cluster_id,
    person_cluster_id,
    stable_cluster_numbers,
    unknown_cluster_id,
)
from face_pipeline.domain.neighbors import MISSING, FaceIndex
from face_pipeline.errors import InvalidInput
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
from face_pipeline.services.library import Library
from face_pipeline.services.space_registry import active_space
from face_pipeline.storage.cluster_index import KeptIndex
from face_pipeline.storage.models import AssignmentSource, FaceInstance, PersonPrototype, PipelineState, utcnow
from face_pipeline.storage.vectors import VectorStore

RunMode = incremental.RunMode

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
    reused: bool = False  # the labels had not changed: the prototypes were kept


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
    mode: str = RunMode.FULL
    reason: str = ""
    new_faces: int = 0  # incremental: pool faces no kept index row stood for
    touched: int = 0  # incremental: known faces the new ones link to

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
    report.seconds = time.perf_counter() - started
    return report


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
        fingerprint = incremental.assignment_fingerprint(
            params.space, params.person_threshold, params.person_margin, prototypes, table
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
            matrix = vectors.fetch(params.space, table.ids[candidates])
        else:
            matrix = _vectors_for(library, vectors, params.space, table, keep=True)[candidates]
        people = np.full(candidates.size, None, dtype=object)
        scores = np.full(candidates.size, np.nan)
        if prototypes is not None:
            rejected = _rejections_as_rows(rejections, table, candidates, prototypes)
            result = assign_to_known_people(
                matrix,
                table.image_ids[candidates],
                prototypes,
                threshold=params.person_threshold,
                margin=params.person_margin,
                rejected=rejected,
                # a person already in a photo (named by a user, or matched and not matched again now) is not
                # given a second face of it
                occupied=_occupied(table, candidates, include_matched=plan.incremental),
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


# --- unknown_clusters ----------------------------------------------------------------------------------


def cluster_unknown_faces(
    library: Library,
    vectors: VectorStore,
    *,
    method: str | None = None,
    min_cluster_size: int | None = None,
    eps: float | None = None,
    run_id: str | None = None,
    full: bool = False,
) -> ClusterReport:
    """Group the faces that belong to nobody; keep unknown_cluster_{N} numbers across runs.

    Under the link rule the run keeps an index of the unknown pool (storage/cluster_index.py), and a later
    run, when safe (services/incremental_clustering.py), adds only the faces new to the pool to yesterday's
    groups: it reads their vectors only, asks the index for their neighbours and joins, merges (the larger
    group keeps its number) or founds groups. `full` (or FACE_CLUSTER_MODE=full): everything again."""
    started = time.perf_counter()
    with library.db.session() as session:
        params = space_params(library, session)
        method = method or params.cluster_method
        min_size = min_cluster_size or params.min_cluster_size
        eps = eps if eps is not None else params.cluster_eps
        rule = incremental.GroupingRule(method, eps, min_size)
        report = ClusterReport(params.space, method)
        read_at = incremental.now()
        table = read_faces(session)
        pool = np.flatnonzero((table.person_ids == None) & ~_ignored(session, table))  # noqa: E711
        report.pool = int(pool.size)
        plan = incremental.plan_run(session, library.settings, params.space, rule, None, full=full)
        kept = incremental.index_store(library.settings).load(params.space) if plan.incremental else None
        if plan.incremental and kept is None:  # the header was there a moment ago: read failed
            plan = incremental.RunPlan(RunMode.FULL, "full: the kept index could not be read")
        report.mode, report.reason = plan.mode, plan.reason
        token = incremental.record_clustering(session, params.space, rule)
        to_index: np.ndarray | None = None  # a full run's pool vectors, for a new kept index
        fingerprint = ""
        if kept is not None:
            library.snapshots.forget()  # no whole-collection read in this run
            labels, written, kept = _extend_groups(
                session, vectors, params.space, table, pool, kept, rule, report, run_id
            )
        elif pool.size:
            matrix = _vectors_for(library, vectors, params.space, table, keep=False)[pool]
            labels = cluster_unknown(matrix, method=method, min_cluster_size=min_size, eps=eps)  # type: ignore[arg-type]
            cluster_ids = _stable_names(session, table, pool, labels)
            changes = _grouping_changes(pool, cluster_ids, labels)
            written = apply_changes(session, table, changes, action="cluster", run_id=run_id)
            if rule.is_link_rule:  # indexed after the commit: the build must not hold the database's write lock
                to_index = matrix
                fingerprint = incremental.last_assignment_fingerprint(session, params.space) or ""
            del matrix
        else:
            library.snapshots.forget()  # the assignment step's read has no later reader in this run
            labels, written = np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        report.changed = int(written.size)
        _count_groups(report, labels)
        seen = incremental.seen_by_assignment(session, table)
    crash_point("cluster_before_payloads")
    sync_payloads(vectors, params.space, table, written)
    store = incremental.index_store(library.settings)
    if to_index is not None:
        kept = _fresh_index(params.space, rule, fingerprint, to_index, table.ids[pool], read_at)
        del to_index
    if kept is not None:
        store.save(replace(kept, run_token=token, read_at=read_at.isoformat(), seen_ids=seen))
    else:
        store.drop(params.space)  # grouped by another rule (or nothing to group): a kept index would be stale
    report.seconds = time.perf_counter() - started
    return report


def _count_groups(report: ClusterReport, labels: np.ndarray) -> None:
    """Fill the report's group figures from the pool's labels (any non-negative numbers, NOISE = -1)."""
    sizes = np.unique(labels[labels != NOISE], return_counts=True)[1]
    report.sizes = sorted(sizes.tolist(), reverse=True)
    report.clusters = len(report.sizes)
    report.clustered_faces = int((labels != NOISE).sum())
    report.noise = int((labels == NOISE).sum())


def _fresh_index(
    space: str,
    rule: incremental.GroupingRule,
    fingerprint: str,
    matrix: np.ndarray,
    face_ids: np.ndarray,
    read_at: datetime,
) -> KeptIndex:
    """The index of the pool a full run grouped (exhaustive for a small pool, FAISS IVF above)."""
    index = FaceIndex.build(matrix, method="auto")
    no_ids = np.empty(0, dtype=np.int64)  # the run fills in its token and what it saw when it saves
    return KeptIndex(
        space, rule.as_dict(), "", fingerprint, read_at.isoformat(), len(face_ids), face_ids.copy(), no_ids, index
    )


def _extend_groups(
    session: Session,
    vectors: VectorStore,
    space: str,
    table: FaceTable,
    pool: np.ndarray,
    kept: KeptIndex,
    rule: incremental.GroupingRule,
    report: ClusterReport,
    run_id: str | None,
) -> tuple[np.ndarray, np.ndarray, KeptIndex]:
    """The incremental run: the pool faces no live index row stands for join yesterday's groups by the link
    rule. Returns the pool's labels (unknown cluster numbers, NOISE), the written rows and the grown index."""
    assert kept.index is not None and rule.eps is not None
    reborn = incremental.created_since(session, datetime.fromisoformat(kept.read_at))
    live = incremental.live_rows(kept, table.ids[pool], reborn)
    adding = np.flatnonzero(incremental.released_faces(kept, table, pool, reborn))
    row_numbers = np.full(kept.rows, NOISE, dtype=np.int64)
    row_numbers[live] = incremental.unknown_numbers(table.cluster_ids[table.positions(kept.row_face_ids[live])])
    report.new_faces = int(adding.size)
    if adding.size == 0:
        report.reason = "incremental: no new faces"
        return row_numbers[live], np.empty(0, dtype=np.int64), kept
    new_vectors = vectors.fetch(space, table.ids[adding])
    found, sims = _live_neighbours(kept.index, new_vectors, live)
    extension = extend_clusters(
        row_numbers, new_vectors, found, sims, rule.eps, min_cluster_size=2, n_neighbors=incremental.N_NEIGHBORS
    )
    linked = (found != MISSING) & (sims >= 1.0 - rule.eps)
    report.touched = int(np.unique(found[linked]).size)
    report.reason = f"incremental: {adding.size:,} new faces, {report.touched:,} neighbours touched"
    # Fresh groups are numbered on from the largest number in the rows; they take never-used numbers instead.
    fresh_from = int(row_numbers.max(initial=NOISE)) + 1  # as extend_clusters numbers them
    numbers = _renumber_fresh(session, np.r_[extension.new_labels, extension.changed_labels], fresh_from)
    new_numbers, changed_numbers = numbers[: adding.size], numbers[adding.size :]
    row_numbers[extension.changed_rows] = changed_numbers
    rows = np.r_[adding, table.positions(kept.row_face_ids[extension.changed_rows])]
    face_ids = table.ids[rows]
    cluster_ids = np.array(
        [
            unknown_cluster_id(n) if n != NOISE else noise_cluster_id(f)
            for n, f in zip(numbers.tolist(), face_ids.tolist(), strict=True)
        ],
        dtype=object,
    )
    changes = _grouping_changes(rows, cluster_ids, numbers)
    written = apply_changes(session, table, changes, action="cluster", run_id=run_id)
    kept.index.add(new_vectors)
    grown = replace(kept, row_face_ids=np.r_[kept.row_face_ids, table.ids[adding]])
    return np.r_[row_numbers[live], new_numbers], written, grown


def _live_neighbours(index: FaceIndex, queries: np.ndarray, live: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The N_NEIGHBORS most similar live index rows of each query (q, k), MISSING / -inf where fewer: rows
    of faces that left the pool are skipped (the search asks for up to k more to make up for them)."""
    k = incremental.N_NEIGHBORS
    dead = int((~live).sum())
    found, sims = index.search(queries, k + min(dead, k))
    ok = found != MISSING
    ok[ok] = live[found[ok]]
    order = np.argsort(~ok, axis=1, kind="stable")[:, :k]  # live first, each side still best first
    ok = np.take_along_axis(ok, order, 1)
    found = np.where(ok, np.take_along_axis(found, order, 1), MISSING)
    sims = np.where(ok, np.take_along_axis(sims, order, 1), -np.inf).astype(np.float32)
    return found, sims


def _renumber_fresh(session: Session, labels: np.ndarray, fresh_from: int) -> np.ndarray:
    """Labels as unknown cluster numbers: existing numbers stay, fresh groups (labels >= fresh_from, as
    extend_clusters numbers them) take never-used numbers (PipelineState NEXT_CLUSTER_KEY)."""
    state = session.get(PipelineState, NEXT_CLUSTER_KEY)
    next_free = max(int(state.value["next"]) if state else 1, fresh_from, 1)
    fresh = labels >= fresh_from
    out = labels.copy()
    if fresh.any():
        uniq, inverse = np.unique(labels[fresh], return_inverse=True)
        out[fresh] = next_free + inverse
        next_free += len(uniq)
    if state is None:
        session.add(PipelineState(key=NEXT_CLUSTER_KEY, value={"next": int(next_free)}))
    else:
        state.value = {"next": int(next_free)}
    return out


def _grouping_changes(rows: np.ndarray, cluster_ids: np.ndarray, labels: np.ndarray) -> FaceChanges:
    """The unknown pool's grouping as face changes: nobody's, in a group, or alone (NOISE labels)."""
    return FaceChanges(
        rows,
        np.full(rows.size, None, dtype=object),
        cluster_ids,
        np.where(labels == NOISE, AssignmentSource.NOISE, AssignmentSource.UNSUPERVISED).astype(object),
        np.full(rows.size, np.nan),
    )


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
