"""Dual-mode clustering, unknown half: group the faces no known person was matched to (asset unknown_clusters).

The supervised half (person prototypes, supervised assignment) lives in services/known_people.py, what both
halves read (the space's thresholds, the vectors of a run) in services/run_params.py.

Each step reads the active embedding space's vectors once, computes with the pure domain functions and
writes back only what changed (bulk, with audit events). A user-confirmed face is never changed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from datetime import datetime

import numpy as np
from sqlalchemy.orm import Session

from face_pipeline.domain.clustering import NOISE, cluster_unknown, cluster_unknown_indexed, extend_clusters
from face_pipeline.domain.naming import (
    ClusterKind,
    cluster_ids,
    kind_by_prefix,
    noise_cluster_id,
    parse_cluster_id,
    stable_cluster_numbers,
    unknown_cluster_id,
)
from face_pipeline.domain.neighbors import MISSING, FaceIndex
from face_pipeline.faults import crash_point
from face_pipeline.services import incremental_clustering as incremental
from face_pipeline.services.face_table import (
    FaceChanges,
    FaceTable,
    apply_changes,
    read_faces,
    sync_payloads,
)
from face_pipeline.services.library import Library
from face_pipeline.services.run_params import ignored_faces as _ignored
from face_pipeline.services.run_params import space_params
from face_pipeline.services.run_params import vectors_for as _vectors_for
from face_pipeline.storage.cluster_index import KeptIndex
from face_pipeline.storage.models import AssignmentSource, PipelineState
from face_pipeline.storage.vectors import VectorStore

RunMode = incremental.RunMode

log = logging.getLogger(__name__)
NEXT_CLUSTER_KEY = "next_unknown_cluster_number"


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
        if kept is not None:
            library.snapshots.forget()  # no whole-collection read in this run
            labels, written, kept = _extend_groups(
                session, vectors, params.space, table, pool, kept, rule, report, run_id
            )
        elif pool.size:
            matrix = _vectors_for(library, vectors, params.space, table, keep=False, rows=pool)
            if rule.is_link_rule:  # a later run extends these groups through the index of this pool
                labels, index = cluster_unknown_indexed(matrix, method=method, min_cluster_size=min_size, eps=eps)  # type: ignore[arg-type]
                fingerprint = incremental.last_assignment_fingerprint(session, params.space) or ""
                kept = _kept_index(params.space, rule, fingerprint, index, table.ids[pool], read_at)
            else:
                labels = cluster_unknown(matrix, method=method, min_cluster_size=min_size, eps=eps)  # type: ignore[arg-type]
            del matrix
            cluster_ids = _stable_names(session, table, pool, labels)
            changes = _grouping_changes(pool, cluster_ids, labels)
            written = apply_changes(session, table, changes, action="cluster", run_id=run_id)
        else:
            library.snapshots.forget()  # the assignment step's read has no later reader in this run
            labels, written = np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        report.changed = int(written.size)
        _count_groups(report, labels)
        seen = incremental.seen_by_assignment(session, table)
    crash_point("cluster_before_payloads")
    sync_payloads(vectors, params.space, table, written)
    store = incremental.index_store(library.settings)
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


def _kept_index(
    space: str,
    rule: incremental.GroupingRule,
    fingerprint: str,
    index: FaceIndex,
    face_ids: np.ndarray,
    read_at: datetime,
) -> KeptIndex:
    """What a full run keeps of the pool it grouped: its index (exhaustive for a small pool, FAISS IVF above,
    from `cluster_unknown_indexed`), face ids in index order, the rule and the assignment it followed."""
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
