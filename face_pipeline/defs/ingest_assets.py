"""photo_catalog -> detected_faces: what is on disk, and the faces found in it."""

from typing import Any

import dagster as dg

from face_pipeline.defs.jobs import INGEST_GROUP
from face_pipeline.defs.resources import (
    VECTOR_STORE_POOL,
    DatabaseResource,
    FaceEmbedderResource,
    VectorStoreResource,
    library_of,
)
from face_pipeline.services.catalog import scan_photos
from face_pipeline.services.detection import DetectReport, detect_pending_faces, pending_photos
from face_pipeline.vision.embedders import describe_embedder

GROUP = INGEST_GROUP


@dg.asset(group_name=GROUP, kinds={"python", "sql"})
def photo_catalog(context: dg.AssetExecutionContext, database: DatabaseResource) -> dg.MaterializeResult:
    """Every photo under FACE_PHOTOS_DIR: new and changed files found by size+mtime, then content hash."""
    photos_dir = database.face_settings().photos_dir
    report = scan_photos(database.database(), photos_dir)
    return dg.MaterializeResult(metadata={**report.as_metadata(), "photos_dir": str(photos_dir.resolve())})


class DetectConfig(dg.Config):
    limit: int | None = None  # at most this many pending photos per run (None: all)


@dg.asset(deps=[photo_catalog], group_name=GROUP, pool=VECTOR_STORE_POOL, kinds={"python", "qdrant"})
def detected_faces(
    context: dg.AssetExecutionContext,
    config: DetectConfig,
    database: DatabaseResource,
    vector_store: VectorStoreResource,
    embedder: FaceEmbedderResource,
) -> dg.MaterializeResult:
    """Faces of pending photos: boxes and landmarks in SQL, embeddings in the raw space's collection."""
    if not pending_photos(database.database(), 1):  # nothing to do: load no face model, open no vector store
        return dg.MaterializeResult(metadata={**DetectReport().as_metadata(), "message": "no pending photos"})
    library = library_of(database, vector_store)
    face_model = embedder.for_library(library.db)
    model = describe_embedder(face_model)
    context.log.info(f"face model: {model}")

    def progress(report: DetectReport, total: int) -> None:
        context.log.info(
            f"{report.photos}/{total} photos, {report.faces} faces, {report.skipped} skipped, "
            f"{report.photos_per_second:.1f} photos/s"
        )

    with library.vectors() as vectors:
        report = detect_pending_faces(
            library.settings, library.db, vectors, limit=config.limit, embedder=face_model, progress=progress
        )
    metadata: dict[str, Any] = {**report.as_metadata(), **{f"model_{k}": str(v) for k, v in model.items()}}
    if report.skip_reasons:
        lines = "\n".join(f"| {path} | {reason} |" for path, reason in report.skip_reasons.items())
        metadata["skipped_photos"] = dg.MetadataValue.md("| photo | reason |\n|---|---|\n" + lines)
    return dg.MaterializeResult(metadata=metadata)


# The ingest job's assets (`faces backfill` runs the job from these alone: defs/runner.resolve_job).
INGEST_ASSETS = [photo_catalog, detected_faces]
