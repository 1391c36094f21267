"""A photo library as the use cases see it: its settings, its SQL database and (opened on demand) its
vector store. Every service takes one; the CLI opens one per command (`open_library`), the API one per
server, and Dagster assets build one from their resources (`defs.resources.library_of`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field

from face_pipeline.settings import Settings, load_settings
from face_pipeline.storage.collection_snapshots import CollectionSnapshots
from face_pipeline.storage.db import Database
from face_pipeline.storage.disk_space import MB, require_free_space
from face_pipeline.storage.vectors import VectorStore, open_vector_store

LIBRARY_HEADROOM_BYTES = 8 * MB


@dataclass
class Library:
    """Settings, database and vector-store opener of one library (Dagster's own `context` is another thing)."""

    settings: Settings
    db: Database
    # Opens the vector store for one unit of work (a Dagster VectorStoreResource); None: from the settings.
    open_vectors: Callable[[], AbstractContextManager[VectorStore]] | None = None
    # Whole-collection reads reused within a run (Dagster shares one per run across the steps' Libraries).
    snapshots: CollectionSnapshots = field(default_factory=CollectionSnapshots)

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Library:
        settings = settings or load_settings()
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        # SQLite needs room for its write-ahead log even to read: a full disk is one line, not "disk I/O error".
        require_free_space(settings.data_dir, LIBRARY_HEADROOM_BYTES, "the library's database")
        return cls(settings, Database(settings.resolved_database_url))

    @contextmanager
    def vectors(self) -> Iterator[VectorStore]:
        """The vector store for one unit of work; the embedded one is single-process, so it is held
        only while needed and released at the end."""
        if self.open_vectors is not None:
            with self.open_vectors() as opened:
                yield opened
            return
        store = open_vector_store(self.settings.qdrant_url, self.settings.vectors_dir, self.settings.qdrant_api_key)
        try:
            yield store
        finally:
            store.close()

    def close(self) -> None:
        self.db.dispose()
