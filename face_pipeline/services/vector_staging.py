"""Vector writes from many workers into a single-writer store.

The embedded vector store is one process at a time, and a Celery worker on another machine cannot reach it
at all. So a worker's detection step writes its embeddings to `staged_vectors`, a SQL table every worker
reaches (`StagedVectorStore`, the part of the VectorStore interface detection uses), and one writer step,
holding the face_vector_store pool, moves them into the store (`move_staged_vectors`).

Exactly one vector per face, whatever was retried or killed: for each staged face id the newest row wins;
a face that exists in SQL (in that space) gets that vector with its payload read from SQL now, a face that
does not is deleted from the store. Staged vectors of a face not (yet) in SQL are kept for GRACE (its
detection transaction may still be open; one killed before its commit leaves such rows, dropped after
GRACE). Rows leave the table only after the store has the change, so a writer killed half-way moves the
same rows again (upserts and deletes by id are idempotent).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
from sqlalchemy import delete, insert, select

from face_pipeline.storage.db import Database
from face_pipeline.storage.models import FaceInstance, utcnow
from face_pipeline.storage.scaleout_models import StagedVector
from face_pipeline.storage.vectors import VectorStore, VectorStoreError

log = logging.getLogger(__name__)

GRACE = timedelta(minutes=30)  # a staged vector whose face is not in SQL this long is an orphan
MOVE_BATCH = 5000
_IN_CHUNK = 5000


class StagedVectorStore:
    """Writes of the detection step (upsert, delete) as rows of `staged_vectors`; each call commits."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def ensure_collection(self, name: str, dim: int) -> None:
        """The writer creates the collection (it knows the dim from the vectors)."""

    def has_collection(self, name: str) -> bool:
        return True  # deletes are always staged: the writer ignores ids the store does not hold

    def upsert(
        self, name: str, face_ids: np.ndarray, vectors: np.ndarray, payloads: Sequence[Mapping[str, Any]]
    ) -> None:
        """Payloads are not staged: the writer reads them from SQL when it moves the vectors."""
        matrix = np.ascontiguousarray(vectors, dtype=np.float32)
        if matrix.ndim != 2 or matrix.shape[0] != len(face_ids):
            raise VectorStoreError(f"staging {len(face_ids)} faces with vectors of shape {matrix.shape}")
        now = utcnow()
        rows = [
            {"space": name, "face_id": int(f), "vector": row.tobytes(), "created_at": now}
            for f, row in zip(np.asarray(face_ids).tolist(), matrix, strict=True)
        ]
        if rows:
            with self.db.session() as session:
                session.execute(insert(StagedVector), rows)

    def delete(self, name: str, face_ids: np.ndarray) -> None:
        now = utcnow()
        rows = [{"space": name, "face_id": int(f), "vector": None, "created_at": now} for f in np.asarray(face_ids)]
        if rows:
            with self.db.session() as session:
                session.execute(insert(StagedVector), rows)

    def close(self) -> None:
        """Nothing held."""


@dataclass
class MoveReport:
    upserted: int = 0
    deleted: int = 0
    orphans_dropped: int = 0  # staged vectors of faces never committed (a killed step), older than GRACE
    waiting: int = 0  # staged vectors of faces not in SQL yet, left for a later move
    rows_moved: int = 0

    def as_metadata(self) -> dict[str, int]:
        return dict(vars(self))


def staged_count(db: Database) -> int:
    with db.session() as session:
        return len(session.scalars(select(StagedVector.id)).all())


def move_staged_vectors(db: Database, store: VectorStore, *, batch: int = MOVE_BATCH) -> MoveReport:
    """Move every staged vector into the store (see the module docstring); returns what was done."""
    report = MoveReport()
    after = 0
    while True:
        with db.session() as session:
            rows = session.execute(
                select(
                    StagedVector.id,
                    StagedVector.space,
                    StagedVector.face_id,
                    StagedVector.vector,
                    StagedVector.created_at,
                )
                .where(StagedVector.id > after)
                .order_by(StagedVector.id)
                .limit(batch)
            ).all()
        if not rows:
            return report
        after = rows[-1].id
        done = _move_rows(db, store, rows, report)
        with db.session() as session:
            for start in range(0, len(done), _IN_CHUNK):
                session.execute(delete(StagedVector).where(StagedVector.id.in_(done[start : start + _IN_CHUNK])))
        report.rows_moved += len(done)


def _move_rows(db: Database, store: VectorStore, rows: Sequence[Any], report: MoveReport) -> list[int]:
    """Apply one batch of staged rows; returns the ids of the rows that are done with."""
    newest: dict[tuple[str, int], Any] = {}
    for row in rows:  # ordered by id: the newest row of each face wins
        newest[(row.space, row.face_id)] = row
    done = [row.id for row in rows if newest[(row.space, row.face_id)].id != row.id]  # superseded
    by_space: dict[str, list[Any]] = {}
    for (space, _), row in newest.items():
        by_space.setdefault(space, []).append(row)
    cutoff = utcnow() - GRACE
    for space, latest in by_space.items():
        live = _live_faces(db, space, [row.face_id for row in latest])
        upserts = [row for row in latest if row.vector is not None and row.face_id in live]
        deletes = [row for row in latest if row.face_id not in live and (row.vector is None or _older(row, cutoff))]
        waiting = [row for row in latest if row.vector is not None and row.face_id not in live and row not in deletes]
        if upserts:
            vectors = np.stack([np.frombuffer(row.vector, dtype=np.float32) for row in upserts])
            store.ensure_collection(space, int(vectors.shape[1]))
            ids = np.array([row.face_id for row in upserts], dtype=np.int64)
            payloads = [live[row.face_id] for row in upserts]
            store.upsert(space, ids, vectors, payloads)
        if deletes and store.has_collection(space):
            store.delete(space, np.array([row.face_id for row in deletes], dtype=np.int64))
        report.upserted += len(upserts)
        report.deleted += sum(row.vector is None for row in deletes)
        report.orphans_dropped += sum(row.vector is not None for row in deletes)
        report.waiting += len(waiting)
        done += [row.id for row in upserts + deletes]
    return done


def _older(row: Any, cutoff: Any) -> bool:
    created = row.created_at
    if created.tzinfo is None:  # SQLite gives naive datetimes back
        cutoff = cutoff.replace(tzinfo=None)
    return bool(created < cutoff)


def _live_faces(db: Database, space: str, face_ids: list[int]) -> dict[int, dict[str, Any]]:
    """face id -> the point's payload from SQL, for the ids that are faces of this space."""
    found: dict[int, dict[str, Any]] = {}
    face = FaceInstance
    with db.session() as session:
        for start in range(0, len(face_ids), _IN_CHUNK):
            chunk = face_ids[start : start + _IN_CHUNK]
            query = select(face.id, face.image_id, face.person_id, face.cluster_id).where(
                face.id.in_(chunk), face.embedding_space == space
            )
            for row in session.execute(query):
                found[row.id] = {"image_id": row.image_id, "person_id": row.person_id, "cluster_id": row.cluster_id}
    return found
