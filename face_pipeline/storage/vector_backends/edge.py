"""The embedded Qdrant engine (qdrant-edge-py): one shard folder per collection under a root folder.

Layout: ``root/<collection>/`` is one EdgeShard (cosine distance, unnamed dense vector, WAL enabled).
Its ``edge_config.json``, written by the engine at create time, records the dimension we check against.

Locking: the engine takes an exclusive lock on the shard's WAL for as long as a handle is open. A second
process gets an error (mapped to VectorStoreLocked), and so does a second ``EdgeShard.load`` of the same
path inside the *same* process. Every EdgeVectorStore in a process therefore shares one handle per shard
through a process-wide registry, and a shard is closed when the last store holding it closes.

Search is exact (a full scan of unindexed segments) until ``optimize()`` builds the HNSW index; call it
after bulk loads (see benchmarks/vectors.py for the figures).
"""

from __future__ import annotations

import ctypes
import itertools
import json
import logging
import os
import shutil
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from qdrant_edge import (
    CountRequest,
    Distance,
    EdgeConfig,
    EdgeShard,
    EdgeVectorParams,
    FieldCondition,
    Filter,
    IsEmptyCondition,
    MatchAny,
    MatchValue,
    Memory,
    PayloadSchemaType,
    Point,
    Query,
    QueryBatchRequest,
    QueryRequest,
    ScrollRequest,
    SearchRequest,
    UpdateOperation,
)

from face_pipeline.storage.disk_space import STORE_HEADROOM_BYTES, DiskFull, require_free_space
from face_pipeline.storage.vector_backends import _common as common
from face_pipeline.storage.vectors import (
    PAYLOAD_KEYS,
    Hit,
    PayloadGroup,
    VectorStoreError,
    VectorStoreFull,
    VectorStoreLocked,
)

log = logging.getLogger(__name__)

_ENGINE_CONFIG = "edge_config.json"  # written by EdgeShard.create; its presence marks a collection
SCROLL_PAGE = 4096  # points per scroll page in fetch_all (larger pages measured no faster)
_LOCK_POLL_S = 0.2


def locked_message(path: Path) -> str:
    return (
        f"the embedded vector store at {path} is in use by another process (one writer at a time: "
        "wait for the running job, or set FACE_QDRANT_URL to use a Qdrant server)"
    )


def _is_lock_error(exc: BaseException) -> bool:
    # The engine raises a bare Exception; a held WAL lock reads "Can't init WAL: Kind(WouldBlock)".
    text = str(exc)
    return "WouldBlock" in text or "Resource temporarily unavailable" in text


@contextmanager
def _engine_errors(action: str, path: Path) -> Iterator[None]:
    """Turn the engine's bare Exceptions into VectorStoreLocked / VectorStoreError naming the path."""
    try:
        yield
    except VectorStoreError:
        raise
    except Exception as exc:  # qdrant_edge raises plain Exception for every engine error
        if _is_lock_error(exc):
            raise VectorStoreLocked(locked_message(path)) from exc
        raise VectorStoreError(f"{action} failed on the embedded vector store at {path}: {exc}") from exc


@dataclass
class _OpenShard:
    shard: EdgeShard
    dim: int
    holders: set[int] = field(default_factory=set)


class _ShardRegistry:
    """Process-wide table of open shards keyed by resolved path (see the module docstring for why)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._open: dict[Path, _OpenShard] = {}

    def get(self, path: Path, holder: int, opener: Callable[[], _OpenShard] | None) -> _OpenShard | None:
        """The open shard at path, opened with opener when absent (None: do not open); holder is recorded."""
        with self._lock:
            entry = self._open.get(path)
            if entry is None:
                if opener is None:
                    return None
                entry = self._open[path] = opener()
            entry.holders.add(holder)
            return entry

    def release(self, path: Path, holder: int) -> None:
        """Forget holder; flush and close the shard when nobody else holds it."""
        with self._lock:
            entry = self._open.get(path)
            if entry is None:
                return
            entry.holders.discard(holder)
            if not entry.holders:
                del self._open[path]
                with _engine_errors("close", path):
                    entry.shard.flush()
                    entry.shard.close()
                _return_freed_heap()

    def discard(self, path: Path) -> None:
        """Close the shard for every holder (the collection is being dropped)."""
        with self._lock:
            entry = self._open.pop(path, None)
            if entry is not None:
                with _engine_errors("close", path):
                    entry.shard.close()

    def release_all(self, paths: set[Path], holder: int) -> None:
        for path in list(paths):
            self.release(path, holder)
        paths.clear()

    def forget_after_fork(self) -> None:
        # A forked child must not reuse its parent's handles (the engine's threads did not survive the
        # fork); it starts empty, and opening a shard the parent holds then fails as locked, as it should.
        self._lock = threading.RLock()
        self._open = {}


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:  # the symbols already loaded into the process: glibc's malloc_trim where the C library is glibc
        return getattr(ctypes.CDLL(None), "malloc_trim", None)
    except OSError:
        return None


_MALLOC_TRIM = _load_malloc_trim()


def _return_freed_heap() -> None:
    """Give the C heap's free pages back to the system. Opening a shard replays its write-ahead log, and
    after a backfill that is tens of MB of upserts read and freed again, left in the heap as holes that the
    process keeps counted in its RSS (50K faces: 56 MB after opening, 21 MB trimmed); closing one frees more.
    A few milliseconds; nothing where the C library has no malloc_trim."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


_REGISTRY = _ShardRegistry()
_HOLDER_IDS = itertools.count(1)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_REGISTRY.forget_after_fork)


def _read_dim(path: Path) -> int:
    config_path = path / _ENGINE_CONFIG
    try:
        return int(json.loads(config_path.read_text())["vectors"][""]["size"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise VectorStoreError(
            f"cannot read the vector dimension from {config_path} ({exc}); the folder is not a "
            "face_pipeline collection or is damaged: drop it and re-embed"
        ) from exc


def _to_filter(conditions: list[common.Condition]) -> Filter | None:
    if not conditions:
        return None
    must: list[Any] = []
    for c in conditions:
        if c.kind == "empty":
            must.append(IsEmptyCondition(c.key))
        elif c.kind == "any":
            must.append(FieldCondition(c.key, match=MatchAny(c.value)))
        else:
            must.append(FieldCondition(c.key, match=MatchValue(c.value)))
    return Filter(must=must)


class EdgeVectorStore:
    """VectorStore on the embedded Qdrant engine; collections are folders ``root/<name>``.

    Shards open lazily on first use and stay open until ``close()`` (or until the store is garbage
    collected); a closed store may be used again and reopens shards as needed. ``lock_wait_s`` > 0 makes
    opening a shard that another process holds retry for that long before raising VectorStoreLocked.
    """

    def __init__(self, root: Path, *, lock_wait_s: float = 0.0) -> None:
        self.root = Path(root).resolve()
        self.lock_wait_s = lock_wait_s
        self._holder = next(_HOLDER_IDS)
        self._held: set[Path] = set()
        # Release the shards even when a caller forgets close(): later stores in this process can open them.
        weakref.finalize(self, _REGISTRY.release_all, self._held, self._holder)

    # --- shard handles ---------------------------------------------------------------------------------
    def _path(self, name: str) -> Path:
        return self.root / common.check_collection_name(name)

    def _room(self, extra_bytes: int = 0) -> None:
        try:
            require_free_space(self.root, STORE_HEADROOM_BYTES + extra_bytes, "the embedded vector store")
        except DiskFull as exc:
            raise VectorStoreFull(str(exc)) from None

    def _load(self, path: Path) -> _OpenShard:
        dim = _read_dim(path)
        self._room()  # opening replays and reopens the engine's write-ahead log: it writes
        deadline = time.monotonic() + self.lock_wait_s
        while True:
            try:
                with _engine_errors("open", path):
                    shard = EdgeShard.load(str(path))
                break
            except VectorStoreLocked:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(_LOCK_POLL_S)
        with _engine_errors("create payload indexes", path):
            _ensure_indexes(shard)
        _return_freed_heap()
        log.debug("opened vector collection %s (dim %d)", path, dim)
        return _OpenShard(shard, dim)

    def _create(self, path: Path, dim: int) -> _OpenShard:
        self._room()
        path.parent.mkdir(parents=True, exist_ok=True)
        # Vectors "cold": mapped, read from the page cache when touched, not loaded whole when the collection
        # opens. Every edit and run opens it, and most touch few vectors: at 200K faces opening took 0.48 s
        # and 485 MB of RSS "cached", 0.18 s and 94 MB cold; the price is ~0.1 ms per vector on its first read
        # after opening (5,000 random vectors: 0.05 -> 0.5 s). Set at creation; older collections keep theirs.
        vectors = EdgeVectorParams(size=dim, distance=Distance.Cosine, memory=Memory.Cold)
        config = EdgeConfig(vectors=vectors)
        with _engine_errors("create collection", path):
            shard = EdgeShard.create(str(path), config)
            _ensure_indexes(shard)
        log.info("created vector collection %s (dim %d, cosine)", path, dim)
        return _OpenShard(shard, dim)

    def _entry(self, name: str) -> _OpenShard:
        """The open shard of an existing collection; VectorStoreError when it does not exist."""
        path = self._path(name)
        entry = _REGISTRY.get(path, self._holder, None)
        if entry is None:
            if not (path / _ENGINE_CONFIG).is_file():
                raise VectorStoreError(
                    f"vector collection {name!r} does not exist under {self.root}; "
                    "create it with ensure_collection (the embedding step does)"
                )
            entry = _REGISTRY.get(path, self._holder, lambda: self._load(path))
            assert entry is not None
        self._held.add(path)
        return entry

    # --- VectorStore -----------------------------------------------------------------------------------
    def ensure_collection(self, name: str, dim: int) -> None:
        dim = common.check_dim(dim)
        path = self._path(name)
        if self.has_collection(name):
            entry = self._entry(name)
            if entry.dim != dim:
                raise VectorStoreError(
                    f"vector collection {name!r} holds {entry.dim}-dimensional vectors, not {dim}: "
                    f"use a new collection for a new embedding space, or drop {name!r} and re-embed"
                )
            return
        _REGISTRY.get(path, self._holder, lambda: self._create(path, dim))
        self._held.add(path)

    def has_collection(self, name: str) -> bool:
        return (self._path(name) / _ENGINE_CONFIG).is_file()

    def drop_collection(self, name: str) -> None:
        """Delete the collection folder (no-op when absent); VectorStoreLocked if another process has it."""
        path = self._path(name)
        if not path.exists():
            return
        if (path / _ENGINE_CONFIG).is_file():
            # Take the shard's lock first, so we never delete files under another process.
            self._entry(name)
        _REGISTRY.discard(path)
        self._held.discard(path)
        shutil.rmtree(path)
        log.info("dropped vector collection %s", path)

    def upsert(
        self, name: str, face_ids: np.ndarray, vectors: np.ndarray, payloads: Sequence[Mapping[str, Any]]
    ) -> None:
        entry = self._entry(name)
        chunks = common.prepare_upsert(face_ids, vectors, payloads, entry.dim)  # validates before any write
        self._room(extra_bytes=2 * len(face_ids) * entry.dim * 4)  # the vectors, in the log and the segment
        with _engine_errors("upsert", self._path(name)):
            for ids, rows, clean in chunks:
                points = [Point(i, v, p) for i, v, p in zip(ids, rows, clean, strict=True)]
                entry.shard.update(UpdateOperation.upsert_points(points))
        log.debug("upserted %d points into %s", len(face_ids), name)

    def set_payload(self, name: str, face_ids: np.ndarray, payload: Mapping[str, Any]) -> None:
        self.set_payloads(name, [(face_ids, payload)])

    def set_payloads(self, name: str, groups: Sequence[PayloadGroup]) -> None:
        entry = self._entry(name)
        prepared = common.payload_groups(groups)
        if not prepared:
            return
        path = self._path(name)
        self._room()
        with _engine_errors("set payload", path):
            # The engine stops at the first missing id after changing the earlier ones: check all first.
            self._require_ids(entry, name, np.concatenate([ids for ids, _ in prepared]))
            for ids, values in prepared:
                id_list = ids.tolist()
                for part in common.batches(len(id_list), common.READ_BATCH):
                    entry.shard.update(UpdateOperation.set_payload(id_list[part], values))

    def delete(self, name: str, face_ids: np.ndarray) -> None:
        """Delete points; ids that are not there are ignored."""
        entry = self._entry(name)
        id_list = common.as_ids(face_ids).tolist()
        self._room()
        with _engine_errors("delete", self._path(name)):
            for part in common.batches(len(id_list), common.READ_BATCH):
                entry.shard.update(UpdateOperation.delete_points(id_list[part]))

    def count(self, name: str) -> int:
        entry = self._entry(name)
        with _engine_errors("count", self._path(name)):
            return int(entry.shard.count(CountRequest(exact=True)))

    def fetch_all(self, name: str, dtype: type[np.floating] = np.float32) -> tuple[np.ndarray, np.ndarray]:
        entry = self._entry(name)
        offset: Any = None
        with _engine_errors("scroll", self._path(name)):
            pages = common.RecordArrays(entry.dim, int(entry.shard.count(CountRequest(exact=True))), dtype)
            while True:
                request = ScrollRequest(offset=offset, limit=SCROLL_PAGE, with_payload=False, with_vector=True)
                records, offset = entry.shard.scroll(request)
                pages.add(records)
                if offset is None:
                    break
        # The scroll mapped every page of the vectors into this process, and they stay counted in its RSS
        # until the shard closes (at 50K faces ~100 MB on top of the ~100 MB array returned). Close it now
        # when nobody else in the process holds it; the next call reopens it (~0.1 s).
        self._release(name)
        return pages.sorted()

    def fetch_payloads(self, name: str, keys: Sequence[str] = PAYLOAD_KEYS) -> dict[int, dict[str, Any]]:
        entry = self._entry(name)
        found: dict[int, dict[str, Any]] = {}
        offset: Any = None
        with _engine_errors("scroll", self._path(name)):
            while True:
                request = ScrollRequest(offset=offset, limit=SCROLL_PAGE, with_payload=True, with_vector=False)
                records, offset = entry.shard.scroll(request)
                found.update(common.payloads_by_id(records, keys))
                if offset is None:
                    return found

    def fetch(self, name: str, face_ids: np.ndarray) -> np.ndarray:
        entry = self._entry(name)
        wanted = common.as_ids(face_ids)
        id_list = wanted.tolist()
        pages = common.RecordArrays(entry.dim, len(id_list))
        with _engine_errors("retrieve", self._path(name)):
            for part in common.batches(len(id_list), common.READ_BATCH):
                pages.add(entry.shard.retrieve(id_list[part], False, True))
        found, vectors = pages.sorted()
        return common.order_fetched(wanted, found, vectors, name)

    def search(
        self, name: str, vector: np.ndarray, limit: int, filter_payload: Mapping[str, Any] | None = None
    ) -> list[Hit]:
        entry = self._entry(name)
        query = common.normalise_query(vector, entry.dim)
        request = SearchRequest(
            query=Query.Nearest(query.tolist()),
            limit=int(limit),
            filter=_to_filter(common.filter_conditions(filter_payload)),
            with_payload=True,
        )
        with _engine_errors("search", self._path(name)):
            points = entry.shard.search(request)
        return [Hit(int(p.id), float(p.score), common.complete_payload(p.payload)) for p in points]

    def search_batch(
        self, name: str, vectors: np.ndarray, limit: int, filter_payload: Mapping[str, Any] | None = None
    ) -> list[list[Hit]]:
        entry = self._entry(name)
        queries = common.normalise_rows(vectors, entry.dim).tolist()
        query_filter = _to_filter(common.filter_conditions(filter_payload))
        results: list[list[Hit]] = []
        with _engine_errors("search", self._path(name)):
            for part in common.batches(len(queries), common.SEARCH_BATCH):
                requests = [
                    QueryRequest(int(limit), query=Query.Nearest(q), filter=query_filter, with_payload=True)
                    for q in queries[part]
                ]
                for points in entry.shard.query_batch(QueryBatchRequest(requests)):
                    results.append([Hit(int(p.id), float(p.score), common.complete_payload(p.payload)) for p in points])
        return results

    def optimize(self, name: str) -> bool:
        """Merge segments and build the HNSW index (blocking). True if anything changed.

        Until this runs, search scans every vector exactly; after it, search uses HNSW (approximate,
        several times faster at 50K points). Worth calling once after a bulk upsert, not after each batch.
        """
        entry = self._entry(name)
        started = time.perf_counter()
        with _engine_errors("optimize", self._path(name)):
            changed = bool(entry.shard.optimize())
        log.info(
            "optimized vector collection %s in %.1f s (changed: %s)",
            name,
            time.perf_counter() - started,
            changed,
        )
        return changed

    def close(self) -> None:
        """Flush and close every shard this store opened (shared shards stay open for other stores)."""
        _REGISTRY.release_all(self._held, self._holder)

    def _release(self, name: str) -> None:
        """Let go of one collection's shard: flushed and closed unless another store holds it."""
        path = self._path(name)
        self._held.discard(path)
        _REGISTRY.release(path, self._holder)

    def __enter__(self) -> EdgeVectorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- helpers ---------------------------------------------------------------------------------------
    def _require_ids(self, entry: _OpenShard, name: str, ids: np.ndarray) -> None:
        id_list = ids.tolist()
        found: set[int] = set()
        for part in common.batches(len(id_list), common.READ_BATCH):
            found.update(int(r.id) for r in entry.shard.retrieve(id_list[part], False, False))
        if len(found) != len(set(id_list)):
            missing = [i for i in id_list if i not in found]
            raise VectorStoreError(f"collection {name!r} has no points for face ids {common.format_ids(missing)}")


def _ensure_indexes(shard: EdgeShard) -> None:
    present = shard.info().payload_schema
    for key in common.INDEXED_KEYWORD_KEYS:
        if key not in present:
            shard.update(UpdateOperation.create_field_index(key, PayloadSchemaType.Keyword))
