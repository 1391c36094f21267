"""Vector store interface: one collection per embedding space, cosine similarity, face ids as point ids.

Back ends (see storage/vector_backends/): the embedded Qdrant engine (qdrant-edge-py, default, under
FACE_DATA_DIR/vectors) and a Qdrant server or in-memory instance through qdrant-client (FACE_QDRANT_URL).
Embedded stores are single-process: opening one that another process holds raises VectorStoreLocked.
Use ``open_vector_store`` to get one; close it when the job ends so the next process can open it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from face_pipeline.errors import UserFacingError

# Payload keys kept on every point (face_id is the point id and also in the payload).
PAYLOAD_KEYS = ("face_id", "image_id", "person_id", "cluster_id")


class VectorStoreError(UserFacingError, RuntimeError):
    pass


class VectorStoreFull(VectorStoreError):
    """The disk under the embedded store is (nearly) full: refused before writing (storage/disk_space.py)."""


class VectorStoreLocked(VectorStoreError):
    """Another process holds the embedded store (it is single-process)."""


PayloadGroup = tuple[np.ndarray, Mapping[str, Any]]  # (face ids, the payload fields they all get)


@dataclass(frozen=True)
class Hit:
    face_id: int
    score: float  # cosine similarity
    payload: Mapping[str, Any]


class VectorStore(Protocol):
    def ensure_collection(self, name: str, dim: int) -> None:
        """Create the collection if absent; raise VectorStoreError if it exists with another dim."""

    def has_collection(self, name: str) -> bool: ...

    def drop_collection(self, name: str) -> None:
        """Delete the collection and its points; a no-op when it does not exist."""

    def upsert(
        self, name: str, face_ids: np.ndarray, vectors: np.ndarray, payloads: Sequence[Mapping[str, Any]]
    ) -> None:
        """face_ids: (n,) int64 >= 0, unique; vectors: (n, dim) float32 (normalised by the store; zero or
        non-finite rows are an error); payloads: n dicts (face_id is filled in from the id; image_id int,
        person_id and cluster_id str or None, as in SQL)."""

    def set_payload(self, name: str, face_ids: np.ndarray, payload: Mapping[str, Any]) -> None:
        """Set the same payload fields on many points (e.g. one cluster_id for a whole cluster).
        Every id must exist: otherwise VectorStoreError naming the missing ids, and nothing changes."""

    def set_payloads(self, name: str, groups: Sequence[PayloadGroup]) -> None:
        """set_payload for many groups at once (a clustering run writes thousands of clusters): the ids of
        all groups are checked once, first; a missing one is a VectorStoreError and nothing changes."""

    def delete(self, name: str, face_ids: np.ndarray) -> None:
        """Delete points; ids that are not there are ignored."""

    def count(self, name: str) -> int: ...

    def fetch_all(self, name: str, dtype: type[np.floating] = np.float32) -> tuple[np.ndarray, np.ndarray]:
        """All points: ((n,) int64 ids sorted ascending, (n, dim) vectors as `dtype`: float32, or float16 for
        a whole-library working copy at half the memory)."""

    def fetch_payloads(self, name: str, keys: Sequence[str] = PAYLOAD_KEYS) -> dict[int, dict[str, Any]]:
        """Every point's payload (these keys only), by face id: for checking payloads against SQL."""

    def fetch(self, name: str, face_ids: np.ndarray) -> np.ndarray:
        """Vectors of these ids in the given order; VectorStoreError naming any missing id."""

    def search(
        self, name: str, vector: np.ndarray, limit: int, filter_payload: Mapping[str, Any] | None = None
    ) -> list[Hit]:
        """Nearest points by cosine, best first; vector: (dim,). filter_payload keeps points whose payload
        equals every given value (a None value means the key is null or absent; a list means any of its
        values)."""

    def search_batch(
        self, name: str, vectors: np.ndarray, limit: int, filter_payload: Mapping[str, Any] | None = None
    ) -> list[list[Hit]]:
        """search() for many queries at once; vectors: (m, dim) -> m hit lists in query order.
        Much cheaper per query than a loop of search() (one planned pass per batch; one request per
        batch on a server): use it for k-NN graphs and for matching many faces."""

    def optimize(self, name: str) -> bool:
        """Build the search index after a bulk load (blocking; the embedded engine only searches
        exactly until then). True if anything changed; a no-op returning False where the back end
        indexes by itself (server) or has no index (qdrant-client local mode)."""

    def close(self) -> None:
        """Flush and release everything (the embedded engine's folder lock included)."""


def open_vector_store(
    qdrant_url: str | None, vectors_dir: Path, api_key: str | None = None, *, lock_wait_s: float = 0.0
) -> VectorStore:
    """The configured store: None -> the embedded engine under vectors_dir; anything else -> qdrant-client
    (an http(s) server URL, ":memory:", or "path:/some/dir" for its local disk mode).

    lock_wait_s: how long the embedded engine retries a collection that another process holds before
    raising VectorStoreLocked (useful when jobs hand over to each other, e.g. Dagster step processes)."""
    # Imported here: the back ends import this module for Hit and the exceptions. qdrant-client only when a
    # URL asks for it (importing it costs ~3 s on 2 busy cores; the embedded store does not need it).
    if qdrant_url is None or not qdrant_url.strip():
        from face_pipeline.storage.vector_backends import EdgeVectorStore

        return EdgeVectorStore(vectors_dir, lock_wait_s=lock_wait_s)
    from face_pipeline.storage.vector_backends import QdrantClientVectorStore

    return QdrantClientVectorStore(qdrant_url.strip(), api_key=api_key)
