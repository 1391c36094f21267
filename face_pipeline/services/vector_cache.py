"""Face vectors of the active space kept in memory by a long-lived process (the API server), so that ranking
suggestions and guessing who the faces on their own are costs a matrix product, not a vector-store visit.

Opening the embedded store, reading 20,000 vectors out of it and closing it costs over a second; scoring
them in memory, a few milliseconds. The store is opened only to read vectors the cache does not hold yet
(faces detected since, or a first request), for the length of that read: the embedded store is
single-process, and pipeline commands need it whenever the server is idle. While a run holds it, what is
cached still answers.

A face's vector never changes under its id within a space (new pixels get new face ids, a new model a new
space), with one exception this cache guards against: SQLite may hand the id of deleted faces with the
highest ids to the next face inserted. Each `refresh` drops cached rows of faces created since the previous
one (their `created_at` is newer than the newest seen then), so such a face is read again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from face_pipeline.services.library import Library
from face_pipeline.storage.models import FaceInstance
from face_pipeline.storage.vectors import VectorStoreError, VectorStoreLocked

log = logging.getLogger(__name__)

# Above this many faces to score, suggestions use the store's filtered search instead (memory: 2 KiB a face).
MAX_CACHED_POOL = 200_000


@dataclass
class FaceVectors:
    """Vectors by face id for one space; every method expects `lock` held (an RLock: callers hold it across
    a refresh, their lookups and their use of `vectors`). Rows are appended and never move, except when
    `compact` renumbers them, which bumps `epoch` (row-aligned caches built on it then start over)."""

    lock: threading.RLock = field(default_factory=threading.RLock)
    space: str | None = None
    ids: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))  # row -> face id, -1: dropped
    vectors: np.ndarray = field(default_factory=lambda: np.empty((0, 0), dtype=np.float32))
    epoch: int = 0
    absent: set[int] = field(default_factory=set)  # ids the store has no vector for (not asked again)
    newest: datetime | None = None  # the newest face creation time seen at the last refresh
    _sorted: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))  # live ids, sorted
    _rows: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))  # their rows

    @property
    def size(self) -> int:
        return int(self.ids.size)

    def use_space(self, space: str) -> None:
        """Start over when the active space is another one."""
        if self.space != space:
            self.space = space
            self.ids = np.empty(0, dtype=np.int64)
            self.vectors = np.empty((0, 0), dtype=np.float32)
            self.absent = set()
            self.newest = None
            self._index()
            self.epoch += 1

    def refresh(self, session: Session) -> None:
        """Forget the rows of faces created since the last refresh (a reused id may carry another vector)."""
        if self.newest is None:
            self.newest = session.scalar(select(func.max(FaceInstance.created_at)))
            return
        rows = session.connection().execute(
            select(FaceInstance.id, FaceInstance.created_at).where(FaceInstance.created_at > self.newest)
        )
        new = rows.all()
        if not new:
            return
        self.newest = max(created for _, created in new)
        fresh = np.array([face_id for face_id, _ in new], dtype=np.int64)
        self.absent.difference_update(fresh.tolist())
        stale = self.rows_of(fresh)
        stale = stale[stale >= 0]
        if stale.size:
            self.ids[stale] = -1
            self._index()
            if self.ids.size > 1000 and np.count_nonzero(self.ids < 0) * 2 > self.ids.size:
                self.compact()

    def rows_of(self, face_ids: np.ndarray) -> np.ndarray:
        """The row of each face id, -1 where it is not cached."""
        face_ids = np.asarray(face_ids, dtype=np.int64)
        if self._sorted.size == 0 or face_ids.size == 0:
            return np.full(face_ids.size, -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self._sorted, face_ids), self._sorted.size - 1)
        return np.where(self._sorted[at] == face_ids, self._rows[at], -1)

    def ensure(self, library: Library, face_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Rows of these faces, reading the ones not cached from the store (opened once, closed at once);
        -1 for faces the store has no vector for. Raises VectorStoreLocked when some are not cached and a
        run holds the store."""
        assert self.space is not None, "use_space first"
        wanted = np.asarray(face_ids, dtype=np.int64)
        rows = self.rows_of(wanted)
        missing = np.unique(wanted[rows < 0])
        if self.absent and missing.size:
            missing = missing[~np.isin(missing, np.fromiter(self.absent, dtype=np.int64, count=len(self.absent)))]
        if missing.size:
            self._read(library, missing)
            rows = self.rows_of(wanted)
        return rows

    def compact(self) -> None:
        """Drop the forgotten rows (renumbers rows: bumps epoch)."""
        keep = self.ids >= 0
        self.ids, self.vectors = self.ids[keep], self.vectors[keep]
        self._index()
        self.epoch += 1

    def _read(self, library: Library, missing: np.ndarray) -> None:
        space = self.space
        assert space is not None
        with library.vectors() as store:
            try:
                found, vectors = missing, store.fetch(space, missing)
            except VectorStoreLocked:
                raise
            except VectorStoreError as exc:
                # Some face has no vector (or the collection is gone): read what there is, remember the rest.
                log.warning("reading face vectors one by one is not possible (%s); scanning the collection", exc)
                try:
                    all_ids, all_vectors = store.fetch_all(space)
                except VectorStoreLocked:
                    raise
                except VectorStoreError:
                    all_ids, all_vectors = np.empty(0, dtype=np.int64), np.empty((0, 0), dtype=np.float32)
                keep = np.isin(all_ids, missing)
                found, vectors = all_ids[keep], all_vectors[keep]
                self.absent.update(np.setdiff1d(missing, found).tolist())
        if found.size == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.ids = np.concatenate([self.ids, found])
        self.vectors = vectors if self.vectors.size == 0 else np.concatenate([self.vectors, vectors])
        self._index()

    def _index(self) -> None:
        live = np.flatnonzero(self.ids >= 0)
        order = np.argsort(self.ids[live], kind="stable")
        self._rows = live[order]
        self._sorted = self.ids[self._rows]
