"""Bulk reads and writes of face assignments: one query to read every face, executemany to write changes.

Automatic runs (supervised assignment, unknown clustering) describe their result as a `FaceChanges` set;
`apply_changes` writes only the faces whose person or cluster really changed, one audit event each,
and never touches a face a user confirmed or moves one to a person the user ruled out, even when the user
decided while the run was computing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.orm import Session

from face_pipeline.storage.models import FaceAssignmentEvent, FaceInstance, FaceRejection, utcnow
from face_pipeline.storage.vectors import VectorStore

_ID_CHUNK = 10_000  # ids per IN (...) list: under SQLite's 32,766 bound variables

# Core statements, not the ORM's bulk paths: at 50K changed faces the ORM's per-row bookkeeping cost more
# than SQLite's own work (benchmarks/cluster.py). On SQLite the rows go to the driver's executemany as
# tuples (`_execute_many`): SQLAlchemy's per-row parameter processing cost as much again as SQLite's writing.
_FACES = cast(Table, FaceInstance.__table__)
_EVENTS = cast(Table, FaceAssignmentEvent.__table__)
_ASSIGNMENT_PARAMS = ("person", "cluster", "source", "confidence", "now", "face")  # the order rows come in
_UPDATE_ASSIGNMENT = (
    update(_FACES)
    .where(_FACES.c.id == bindparam("face"))
    .values(
        person_id=bindparam("person"),
        cluster_id=bindparam("cluster"),
        assignment_source=bindparam("source"),
        confidence=bindparam("confidence"),
        updated_at=bindparam("now"),
    )
)
_EVENT_COLUMNS = (
    "face_id",
    "action",
    "source",
    "old_person_id",
    "new_person_id",
    "old_cluster_id",
    "new_cluster_id",
    "confidence",
    "run_id",
    "created_at",
)
_INSERT_EVENT = insert(_EVENTS).values({name: bindparam(name) for name in _EVENT_COLUMNS})


@dataclass
class FaceTable:
    """Every face of the library as parallel arrays, sorted by face id."""

    ids: np.ndarray  # (n,) int64
    image_ids: np.ndarray  # (n,) int64
    person_ids: np.ndarray  # (n,) object: str or None
    cluster_ids: np.ndarray  # (n,) object: str or None
    sources: np.ndarray  # (n,) object
    confirmed: np.ndarray  # (n,) bool

    def __len__(self) -> int:
        return len(self.ids)

    def positions(self, face_ids: np.ndarray) -> np.ndarray:
        """Row of each face id (all must exist)."""
        return np.searchsorted(self.ids, face_ids)


def read_faces(session: Session) -> FaceTable:
    # Core columns on the session's connection: the ORM's row handling doubled this read (200K faces: 2.3 s
    # against 1.1 s), the largest part of an incremental cluster-dual run.
    c = _FACES.c
    rows = (
        session.connection()
        .execute(
            select(c.id, c.image_id, c.person_id, c.cluster_id, c.assignment_source, c.user_confirmed).order_by(c.id)
        )
        .all()
    )
    columns = list(zip(*rows, strict=True)) if rows else [()] * 6
    return FaceTable(
        ids=np.array(columns[0], dtype=np.int64),
        image_ids=np.array(columns[1], dtype=np.int64),
        person_ids=np.array(columns[2], dtype=object),
        cluster_ids=np.array(columns[3], dtype=object),
        sources=np.array(columns[4], dtype=object),
        confirmed=np.array(columns[5], dtype=bool),
    )


def read_rejections(session: Session) -> list[tuple[int, str]]:
    return [(r.face_id, r.person_id) for r in session.execute(select(FaceRejection.face_id, FaceRejection.person_id))]


@dataclass
class FaceChanges:
    """New state for some faces (rows of a FaceTable)."""

    rows: np.ndarray  # (m,) int positions in the table
    person_ids: np.ndarray  # (m,) object
    cluster_ids: np.ndarray  # (m,) object
    sources: np.ndarray  # (m,) object
    confidences: np.ndarray  # (m,) float, NaN for none


def apply_changes(
    session: Session, table: FaceTable, changes: FaceChanges, *, action: str, run_id: str | None
) -> np.ndarray:
    """Write the faces whose person, cluster or source changed; returns their table rows.

    The table was read when the run began; a user may have named, rejected or moved some faces since. So the
    candidates are read again under the write lock (`_lock_current`), and a face a user confirmed or ignored,
    or a person the user ruled out for that face, is never written, whatever `changes` says: a user's decision
    made while the run computed wins. The audit events record the state the write replaced.
    """
    rows = changes.rows
    differs = (
        (table.person_ids[rows] != changes.person_ids)
        | (table.cluster_ids[rows] != changes.cluster_ids)
        | (table.sources[rows] != changes.sources)
    ) & ~table.confirmed[rows]
    picked = np.flatnonzero(differs)
    if picked.size == 0:
        return picked
    _refresh(table, rows[picked], _lock_current(session, table.ids[rows[picked]]))
    ruled_out = _rejected_pairs(session, table.ids[rows[picked]])
    still = (
        (table.person_ids[rows[picked]] != changes.person_ids[picked])
        | (table.cluster_ids[rows[picked]] != changes.cluster_ids[picked])
        | (table.sources[rows[picked]] != changes.sources[picked])
    ) & ~table.confirmed[rows[picked]]
    pairs = zip(table.ids[rows[picked]].tolist(), changes.person_ids[picked].tolist(), strict=True)
    still &= np.array([person is None or (face_id, person) not in ruled_out for face_id, person in pairs])
    picked = picked[still]
    if picked.size == 0:
        return picked
    now = utcnow()
    ids = table.ids[rows[picked]].tolist()
    people = changes.person_ids[picked].tolist()
    clusters = changes.cluster_ids[picked].tolist()
    sources = changes.sources[picked].tolist()
    confidences = [None if np.isnan(c) else round(float(c), 5) for c in changes.confidences[picked]]
    _execute_many(
        session,
        _UPDATE_ASSIGNMENT,
        _ASSIGNMENT_PARAMS,
        list(zip(people, clusters, sources, confidences, [now] * len(ids), ids, strict=True)),
    )
    old_people = table.person_ids[rows[picked]].tolist()
    old_clusters = table.cluster_ids[rows[picked]].tolist()
    n = len(ids)
    _execute_many(
        session,
        _INSERT_EVENT,
        _EVENT_COLUMNS,
        list(
            zip(
                ids,
                [action] * n,
                sources,
                old_people,
                people,
                old_clusters,
                clusters,
                confidences,
                [run_id] * n,
                [now] * n,
                strict=True,
            )
        ),
    )
    table.person_ids[rows[picked]] = changes.person_ids[picked]
    table.cluster_ids[rows[picked]] = changes.cluster_ids[picked]
    table.sources[rows[picked]] = changes.sources[picked]
    return rows[picked]


def _execute_many(session: Session, statement: Any, names: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    """Run `statement` once per row (values in the order of `names`, its bind parameters). On SQLite the
    driver gets the statement compiled for it and the rows as tuples, each value through its column type's
    own conversion (datetimes as SQLAlchemy stores them); elsewhere SQLAlchemy's executemany."""
    if not rows:
        return
    connection = session.connection()
    if connection.dialect.name != "sqlite":
        connection.execute(statement, [dict(zip(names, row, strict=True)) for row in rows])
        return
    compiled = statement.compile(dialect=connection.dialect)
    dialect = connection.dialect
    order = [names.index(name) for name in compiled.positiontup]
    as_given = list(zip(*rows, strict=True))
    columns: list[Sequence[Any]] = [as_given[i] for i in order]
    for position, name in enumerate(compiled.positiontup):
        processor = compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
        if processor is not None:  # e.g. datetimes as SQLAlchemy stores them; repeated values converted once
            done: dict[Any, Any] = {None: None}
            columns[position] = [done[v] if v in done else done.setdefault(v, processor(v)) for v in columns[position]]
    connection.exec_driver_sql(str(compiled), list(zip(*columns, strict=True)))


def _lock_current(session: Session, face_ids: np.ndarray) -> list[Any]:
    """The faces' person, cluster, source and confirmed flag as of now, with the write lock taken first: a
    no-op write takes SQLite's database lock, FOR UPDATE PostgreSQL's row locks. A user's edit committed
    since the run read the table shows here; one made later waits for this transaction to end."""
    session.execute(update(FaceInstance).where(FaceInstance.id == -1).values(id=FaceInstance.id))
    found: list[Any] = []
    for start in range(0, face_ids.size, _ID_CHUNK):
        chunk = face_ids[start : start + _ID_CHUNK].tolist()
        found += session.execute(
            select(
                FaceInstance.id,
                FaceInstance.person_id,
                FaceInstance.cluster_id,
                FaceInstance.assignment_source,
                FaceInstance.user_confirmed,
                FaceInstance.ignored,
            )
            .where(FaceInstance.id.in_(chunk))
            .with_for_update()
        ).all()
    return found


def _refresh(table: FaceTable, rows: np.ndarray, current: list[Any]) -> None:
    """Bring these table rows up to `current` (faces deleted or ignored meanwhile count as confirmed: never
    written)."""
    now = {r.id: r for r in current}
    for row in rows.tolist():
        face = now.get(int(table.ids[row]))
        if face is None:
            table.confirmed[row] = True
            continue
        table.person_ids[row], table.cluster_ids[row] = face.person_id, face.cluster_id
        # A face a user ignored meanwhile is as settled as one a user confirmed: not written.
        table.sources[row], table.confirmed[row] = face.assignment_source, bool(face.user_confirmed or face.ignored)


def _rejected_pairs(session: Session, face_ids: np.ndarray) -> set[tuple[int, str]]:
    pairs: set[tuple[int, str]] = set()
    for start in range(0, face_ids.size, _ID_CHUNK):
        chunk = face_ids[start : start + _ID_CHUNK].tolist()
        pairs |= {
            (r.face_id, r.person_id)
            for r in session.execute(
                select(FaceRejection.face_id, FaceRejection.person_id).where(FaceRejection.face_id.in_(chunk))
            )
        }
    return pairs


def sync_payloads(vectors: VectorStore, space: str, table: FaceTable, rows: np.ndarray) -> None:
    """Mirror person_id / cluster_id of these faces onto their vector-store points (one call per group)."""
    groups: dict[tuple[Any, Any], list[int]] = defaultdict(list)
    for row in rows.tolist():
        groups[(table.person_ids[row], table.cluster_ids[row])].append(int(table.ids[row]))
    vectors.set_payloads(
        space,
        [
            (np.array(face_ids, dtype=np.int64), {"person_id": person_id, "cluster_id": cluster_id})
            for (person_id, cluster_id), face_ids in groups.items()
        ],
    )
