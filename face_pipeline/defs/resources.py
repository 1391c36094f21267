"""Dagster resources: the settings, the SQL database, the vector store and the face embedder, one each.

Each is a ConfigurableResource whose unset fields fall back to the FACE_* variables, so a deployment (or a
test) swaps one of them without touching the others:

    resources = pipeline_resources(SettingsResource(data_dir="/srv/faces"))
    resources["database"] = DatabaseResource(settings=resources["settings"], database_url=dg.EnvVar("FACE_DB"))

The database, vector-store and embedder resources share the SettingsResource they are given (by default a
fresh one reading FACE_*). Services take a Library; `library_of` builds it from the database and
the vector store, so the assets stay thin.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr

from face_pipeline.services.library import Library
from face_pipeline.settings import Settings, load_settings
from face_pipeline.storage.collection_snapshots import CollectionSnapshots
from face_pipeline.storage.db import Database
from face_pipeline.storage.vectors import VectorStore, open_vector_store
from face_pipeline.vision.types import FaceEmbedder

# Ops that write the embedded vector store take this pool; dagster.yaml limits it to one at a time.
VECTOR_STORE_POOL = "face_vector_store"


def _set(**values: Any) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


class SettingsResource(dg.ConfigurableResource):
    """The FACE_* settings; a field set here overrides its variable."""

    photos_dir: str | None = None  # FACE_PHOTOS_DIR
    data_dir: str | None = None  # FACE_DATA_DIR

    def load(self, **overrides: Any) -> Settings:
        """The settings, with this resource's fields and then `overrides` (None values ignored) on top."""
        return load_settings(**_set(photos_dir=self.photos_dir, data_dir=self.data_dir), **_set(**overrides))


class DatabaseResource(dg.ConfigurableResource):
    """The SQL database (faces, people, labels); opened on first use, disposed when the step ends."""

    settings: SettingsResource = Field(default_factory=SettingsResource)
    database_url: str | None = None  # FACE_DATABASE_URL; default: SQLite under the data folder

    _db: Database | None = PrivateAttr(default=None)

    def face_settings(self) -> Settings:
        return self.settings.load(database_url=self.database_url)

    def database(self) -> Database:
        if self._db is None:
            settings = self.face_settings()
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            self._db = Database(settings.resolved_database_url)
        return self._db

    @contextmanager
    def yield_for_execution(self, context: dg.InitResourceContext) -> Iterator[DatabaseResource]:
        try:
            yield self
        finally:
            if self._db is not None:
                self._db.dispose()
                self._db = None


class VectorStoreResource(dg.ConfigurableResource):
    """The vector store. The embedded one is single-process: `open()` holds it only for one unit of work."""

    settings: SettingsResource = Field(default_factory=SettingsResource)
    qdrant_url: str | None = None  # FACE_QDRANT_URL; default: the embedded store under the data folder
    qdrant_api_key: str | None = None  # FACE_QDRANT_API_KEY (e.g. dg.EnvVar("...") in a deployment)

    _snapshots: CollectionSnapshots | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._snapshots = CollectionSnapshots()  # once per run and process: reads never outlive the run

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self._snapshots = None

    def snapshots(self) -> CollectionSnapshots:
        """The run's whole-collection reads (storage/collection_snapshots.py); a fresh one outside a run."""
        return self._snapshots if self._snapshots is not None else CollectionSnapshots()

    @contextmanager
    def open(self) -> Iterator[VectorStore]:
        settings = self.settings.load(qdrant_url=self.qdrant_url, qdrant_api_key=self.qdrant_api_key)
        store = open_vector_store(settings.qdrant_url, settings.vectors_dir, settings.qdrant_api_key)
        try:
            yield store
        finally:
            store.close()


class FaceEmbedderResource(dg.ConfigurableResource):
    """The face model new photos go through, loaded on first use (slow) and kept for the step.

    An existing library keeps its own model under FACE_EMBEDDER=auto (services/space_registry.py).
    """

    settings: SettingsResource = Field(default_factory=SettingsResource)
    embedder: str | None = None  # FACE_EMBEDDER: auto | buffalo_l | buffalo_s | dlib | insightface
    model_dir: str | None = None  # FACE_MODEL_DIR
    model_name: str | None = None  # FACE_MODEL_NAME

    _embedder: FaceEmbedder | None = PrivateAttr(default=None)

    def for_library(self, db: Database) -> FaceEmbedder:
        if self._embedder is None:
            from face_pipeline.services.space_registry import embedder_for_library

            settings = self.settings.load(embedder=self.embedder, model_dir=self.model_dir, model_name=self.model_name)
            self._embedder = embedder_for_library(settings, db)
        return self._embedder


def library_of(database: DatabaseResource, vector_store: VectorStoreResource) -> Library:
    """What the services take (services/library.py): the database's settings, its open Database and the
    vector store's opener."""
    return Library(
        database.face_settings(),
        database.database(),
        open_vectors=vector_store.open,
        snapshots=vector_store.snapshots(),
    )


def pipeline_resources(
    settings: SettingsResource | None = None,
    *,
    database: DatabaseResource | None = None,
    vector_store: VectorStoreResource | None = None,
    embedder: FaceEmbedderResource | None = None,
) -> dict[str, Any]:
    """Every resource the definitions need, under its key; the ones not given read FACE_* through `settings`."""
    settings = settings or SettingsResource()
    database = database or DatabaseResource(settings=settings)
    vector_store = vector_store or VectorStoreResource(settings=settings)
    return {
        "settings": settings,
        "database": database,
        "vector_store": vector_store,
        "embedder": embedder or FaceEmbedderResource(settings=settings),
    }
