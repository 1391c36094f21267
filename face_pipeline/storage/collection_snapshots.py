"""Whole-collection reads kept for the length of one run.

cluster-dual reads every vector of the active space twice (supervised assignment, then unknown clustering:
two Dagster steps); at 50K faces each read costs ~0.7 s and ~100 MB on 2 cores. A vector never changes
under its (space, face id): new photos give new face ids, a new model or checkpoint is a new space. So a
read can be reused as long as the collection still holds exactly the faces SQL lists, which `read` checks
before handing it out. One collection is kept at a time (memory); `forget` drops it.

The read is a float16 working copy (`WORKING_DTYPE`): half the memory of float32 (50K faces of 512-d: 50 MB
instead of 100 MB, the largest share of cluster-dual's peak), and the cosines of L2-normalised faces move by
~1e-5, far below any threshold's resolution (benchmarks/cluster.py: BCubed F 0.9914 -> 0.9912 on 50K synthetic
faces, where the k-means sample also changed, and 0.7911 -> 0.7907 on lfw-dev's dlib faces). Its readers
compute in float32 a block at a time.

Dagster's VectorStoreResource makes one per run and process (setup_for_execution), so it never outlives a
run; code outside Dagster gets a fresh one per Library.
"""

from __future__ import annotations

import numpy as np

from face_pipeline.storage.vectors import VectorStore

WORKING_DTYPE = np.float16


class CollectionSnapshots:
    def __init__(self) -> None:
        self._space: str | None = None
        self._ids = np.empty(0, dtype=np.int64)
        self._vectors: np.ndarray | None = None

    def read(
        self, store: VectorStore, space: str, expected_ids: np.ndarray, *, keep: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of the whole collection: the kept read when its ids equal `expected_ids` (the faces
        SQL lists now, sorted), else a fresh `fetch_all`. keep=False: the last reader of the run; nothing
        is kept after it, so the caller's copy is the only one (peak memory)."""
        if self._vectors is not None and self._space == space and np.array_equal(self._ids, expected_ids):
            ids, vectors = self._ids, self._vectors
        else:
            self.forget()  # the old read is released before the new one is made
            ids, vectors = store.fetch_all(space, WORKING_DTYPE)
        if keep:
            self._space, self._ids, self._vectors = space, ids, vectors
        else:
            self.forget()
        return ids, vectors

    def forget(self) -> None:
        self._space, self._ids, self._vectors = None, np.empty(0, dtype=np.int64), None
