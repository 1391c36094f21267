"""VectorStore through qdrant-client: a Qdrant server (http/https URL), its in-process local mode
(":memory:"), or local mode on disk ("path:/some/dir").

Local mode speaks the same API as a server, so ":memory:" exercises this module's code in tests. It is
pure Python, though: at 50K x 512 it upserts ~90x and searches ~15x slower than the embedded engine,
filters in Python (~0.5 s per filtered search), keeps every vector in RAM and ignores payload indexes
(benchmarks/vectors.py), so use it for tests and small stores only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from qdrant_client import QdrantClient
from qdrant_client import models as qm
from qdrant_client.http.exceptions import ApiException

from face_pipeline.storage.vector_backends import _common as common
from face_pipeline.storage.vectors import PAYLOAD_KEYS, Hit, PayloadGroup, VectorStoreError, VectorStoreLocked

log = logging.getLogger(__name__)

MEMORY_URL = ":memory:"
PATH_PREFIX = "path:"
SCROLL_PAGE = 2000  # points per scroll page: ~4 MB of JSON at 512-d from a server
_OPERATIONS_PER_REQUEST = 500  # set-payload operations per batch request (one per cluster, mostly small)


def _to_filter(conditions: list[common.Condition]) -> qm.Filter | None:
    if not conditions:
        return None
    must: list[qm.Condition] = []
    for c in conditions:
        if c.kind == "empty":  # null or absent, as in the edge back end (IsNull would miss absent keys)
            must.append(qm.IsEmptyCondition(is_empty=qm.PayloadField(key=c.key)))
        elif c.kind == "any":
            must.append(qm.FieldCondition(key=c.key, match=qm.MatchAny(any=c.value)))
        else:
            must.append(qm.FieldCondition(key=c.key, match=qm.MatchValue(value=c.value)))
    return qm.Filter(must=must)


class QdrantClientVectorStore:
    """VectorStore on qdrant-client.

    url: "http(s)://host:6333" (a server; api_key optional), ":memory:" (in-process, lost on close) or
    "path:/some/dir" (local mode on disk; one process at a time).
    """

    def __init__(self, url: str, api_key: str | None = None) -> None:
        self.url = url
        self.is_local = url == MEMORY_URL or url.startswith(PATH_PREFIX)
        # Vector size per collection, so that a search costs one request, not three.
        self._dims: dict[str, int] = {}
        try:
            if url == MEMORY_URL:
                self._client = QdrantClient(location=MEMORY_URL)
            elif url.startswith(PATH_PREFIX):
                self._client = QdrantClient(path=url.removeprefix(PATH_PREFIX))
            elif url.startswith(("http://", "https://")):
                self._client = QdrantClient(url=url, api_key=api_key)
            else:
                raise VectorStoreError(
                    f"unsupported Qdrant URL {url!r}: use http(s)://host:port for a server, "
                    f"{MEMORY_URL!r} for an in-memory store, or 'path:/some/dir' for local disk mode"
                )
        except RuntimeError as exc:
            # Local disk mode locks its folder: "Storage folder ... is already accessed by another instance".
            if "already accessed" in str(exc):
                raise VectorStoreLocked(
                    f"the local Qdrant store at {url.removeprefix(PATH_PREFIX)} is in use by another "
                    "process or client (one at a time: wait for the running job, or use a Qdrant server)"
                ) from exc
            raise

    @contextmanager
    def _errors(self, action: str, name: str) -> Iterator[None]:
        """Client, HTTP and local-mode errors -> VectorStoreError naming the collection and URL."""
        try:
            yield
        except VectorStoreError:
            raise
        except (ApiException, ValueError, KeyError, RuntimeError, OSError) as exc:
            raise VectorStoreError(f"{action} failed on vector collection {name!r} at {self.url}: {exc}") from exc

    def _dim(self, name: str) -> int:
        """The collection's vector size (cached); VectorStoreError when it does not exist."""
        if name in self._dims:
            return self._dims[name]
        common.check_collection_name(name)
        with self._errors("read collection info", name):
            if not self._client.collection_exists(name):
                raise VectorStoreError(
                    f"vector collection {name!r} does not exist at {self.url}; "
                    "create it with ensure_collection (the embedding step does)"
                )
            params = self._client.get_collection(name).config.params.vectors
        if not isinstance(params, qm.VectorParams):
            raise VectorStoreError(f"vector collection {name!r} uses named vectors; it was not made by us")
        self._dims[name] = int(params.size)
        return self._dims[name]

    # --- VectorStore -----------------------------------------------------------------------------------
    def ensure_collection(self, name: str, dim: int) -> None:
        dim = common.check_dim(dim)
        if self.has_collection(name):
            existing = self._dim(name)
            if existing != dim:
                raise VectorStoreError(
                    f"vector collection {name!r} holds {existing}-dimensional vectors, not {dim}: "
                    f"use a new collection for a new embedding space, or drop {name!r} and re-embed"
                )
            return
        with self._errors("create collection", name):
            self._client.create_collection(name, vectors_config=qm.VectorParams(size=dim, distance=qm.Distance.COSINE))
            if not self.is_local:  # local mode ignores payload indexes (and warns): skip them there
                for key in common.INDEXED_KEYWORD_KEYS:
                    self._client.create_payload_index(name, key, qm.PayloadSchemaType.KEYWORD)
        self._dims[name] = dim
        log.info("created vector collection %s at %s (dim %d, cosine)", name, self.url, dim)

    def has_collection(self, name: str) -> bool:
        common.check_collection_name(name)
        with self._errors("check collection", name):
            return bool(self._client.collection_exists(name))

    def drop_collection(self, name: str) -> None:
        common.check_collection_name(name)
        self._dims.pop(name, None)
        with self._errors("drop collection", name):
            if self._client.collection_exists(name):
                self._client.delete_collection(name)
                log.info("dropped vector collection %s at %s", name, self.url)

    def upsert(
        self, name: str, face_ids: np.ndarray, vectors: np.ndarray, payloads: Sequence[Mapping[str, Any]]
    ) -> None:
        chunks = common.prepare_upsert(face_ids, vectors, payloads, self._dim(name))  # validates before any write
        with self._errors("upsert", name):
            for ids, rows, clean in chunks:
                point_ids: list[qm.ExtendedPointId] = list(ids)
                batch = qm.Batch(ids=point_ids, vectors=rows, payloads=clean)
                self._client.upsert(name, points=batch, wait=True)
        log.debug("upserted %d points into %s", len(face_ids), name)

    def set_payload(self, name: str, face_ids: np.ndarray, payload: Mapping[str, Any]) -> None:
        self.set_payloads(name, [(face_ids, payload)])

    def set_payloads(self, name: str, groups: Sequence[PayloadGroup]) -> None:
        self._dim(name)
        prepared = common.payload_groups(groups)
        if not prepared:
            return
        operations = [
            qm.SetPayloadOperation(set_payload=qm.SetPayload(payload=values, points=ids.tolist()[part]))
            for ids, values in prepared
            for part in common.batches(len(ids), common.READ_BATCH)
        ]
        with self._errors("set payload", name):
            # A missing id fails midway after changing the earlier ones: check them all first.
            self._require_ids(name, np.concatenate([ids for ids, _ in prepared]).tolist())
            for start in range(0, len(operations), _OPERATIONS_PER_REQUEST):
                self._client.batch_update_points(
                    name, update_operations=operations[start : start + _OPERATIONS_PER_REQUEST], wait=True
                )

    def delete(self, name: str, face_ids: np.ndarray) -> None:
        """Delete points; ids that are not there are ignored."""
        id_list = common.as_ids(face_ids).tolist()
        self._dim(name)
        with self._errors("delete", name):
            for part in common.batches(len(id_list), common.READ_BATCH):
                selector = qm.PointIdsList(points=list[qm.ExtendedPointId](id_list[part]))
                self._client.delete(name, points_selector=selector, wait=True)

    def count(self, name: str) -> int:
        self._dim(name)
        with self._errors("count", name):
            return int(self._client.count(name, exact=True).count)

    def fetch_all(self, name: str, dtype: type[np.floating] = np.float32) -> tuple[np.ndarray, np.ndarray]:
        dim = self._dim(name)
        offset: Any = None
        with self._errors("scroll", name):
            pages = common.RecordArrays(dim, int(self._client.count(name, exact=True).count), dtype)
            while True:
                records, offset = self._client.scroll(
                    name, limit=SCROLL_PAGE, offset=offset, with_payload=False, with_vectors=True
                )
                pages.add(records)
                if offset is None:
                    break
        return pages.sorted()

    def fetch_payloads(self, name: str, keys: Sequence[str] = PAYLOAD_KEYS) -> dict[int, dict[str, Any]]:
        self._dim(name)
        found: dict[int, dict[str, Any]] = {}
        offset: Any = None
        with self._errors("scroll", name):
            while True:
                records, offset = self._client.scroll(
                    name, limit=SCROLL_PAGE, offset=offset, with_payload=list(keys), with_vectors=False
                )
                found.update(common.payloads_by_id(records, keys))
                if offset is None:
                    return found

    def fetch(self, name: str, face_ids: np.ndarray) -> np.ndarray:
        dim = self._dim(name)
        wanted = common.as_ids(face_ids)
        id_list = wanted.tolist()
        pages = common.RecordArrays(dim, len(id_list))
        with self._errors("retrieve", name):
            for part in common.batches(len(id_list), common.READ_BATCH):
                pages.add(self._client.retrieve(name, ids=id_list[part], with_payload=False, with_vectors=True))
        found, vectors = pages.sorted()
        return common.order_fetched(wanted, found, vectors, name)

    def search(
        self, name: str, vector: np.ndarray, limit: int, filter_payload: Mapping[str, Any] | None = None
    ) -> list[Hit]:
        query = common.normalise_query(vector, self._dim(name))
        query_filter = _to_filter(common.filter_conditions(filter_payload))
        with self._errors("search", name):
            response = self._client.query_points(
                name, query=query.tolist(), limit=int(limit), query_filter=query_filter, with_payload=True
            )
        return [Hit(int(p.id), float(p.score), common.complete_payload(p.payload)) for p in response.points]

    def search_batch(
        self, name: str, vectors: np.ndarray, limit: int, filter_payload: Mapping[str, Any] | None = None
    ) -> list[list[Hit]]:
        queries = common.normalise_rows(vectors, self._dim(name)).tolist()
        query_filter = _to_filter(common.filter_conditions(filter_payload))
        results: list[list[Hit]] = []
        with self._errors("search", name):
            for part in common.batches(len(queries), common.SEARCH_BATCH):
                requests = [
                    qm.QueryRequest(query=q, limit=int(limit), filter=query_filter, with_payload=True)
                    for q in queries[part]
                ]
                for response in self._client.query_batch_points(name, requests=requests):
                    results.append(
                        [Hit(int(p.id), float(p.score), common.complete_payload(p.payload)) for p in response.points]
                    )
        return results

    def optimize(self, name: str) -> bool:
        """No-op: a server optimises in the background; local mode has no index. Returns False."""
        self._dim(name)
        return False

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> QdrantClientVectorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- helpers ---------------------------------------------------------------------------------------
    def _require_ids(self, name: str, id_list: list[int]) -> None:
        found: set[int] = set()
        for part in common.batches(len(id_list), common.READ_BATCH):
            records = self._client.retrieve(name, ids=id_list[part], with_payload=False, with_vectors=False)
            found.update(int(r.id) for r in records)
        missing = [i for i in dict.fromkeys(id_list) if i not in found]
        if missing:
            raise VectorStoreError(f"collection {name!r} has no points for face ids {common.format_ids(missing)}")
