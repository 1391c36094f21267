"""photo_catalog -> detected_faces: what is on disk, and the faces found in it."""

from typing import Any

import dagster as dg

from face_pipeline.defs.resources import VECTOR_STORE_POOL, FacePipelineResource
from face_pipeline.services.catalog import scan_photos
from face_pipeline.services.detection import DetectReport, detect_pending_faces
from face_pipeline.services.space_registry import embedder_for_library
from face_pipeline.vision.embedders import describe_embedder

GROUP = "ingest"


@dg.asset(group_name=GROUP, kinds={"python", "sql"})
def photo_catalog(context: dg.AssetExecutionContext, face_pipeline: FacePipelineResource) -> dg.MaterializeResult:
    """Every photo under FACE_PHOTOS_DIR: new and changed files found by size+mtime, then content hash."""
    services = face_pipeline.context()
    report = scan_photos(services.db, services.settings.photos_dir)
    return dg.MaterializeResult(
        metadata={**report.as_metadata(), "photos_dir": str(services.settings.photos_dir.resolve())}
    )


class DetectConfig(dg.Config):
    limit: int | None = None  # at most this many pending photos per run (None: all)


@dg.asset(deps=[photo_catalog], group_name=GROUP, pool=VECTOR_STORE_POOL, kinds={"python", "qdrant"})
def detected_faces(
    context: dg.AssetExecutionContext, config: DetectConfig, face_pipeline: FacePipelineResource
) -> dg.MaterializeResult:
    """Faces of pending photos: boxes and landmarks in SQL, embeddings in the raw space's collection."""
    services = face_pipeline.context()
    embedder = embedder_for_library(services.settings, services.db)
    model = describe_embedder(embedder)
    context.log.info(f"face model: {model}")

    def progress(report: DetectReport, total: int) -> None:
        context.log.info(
            f"{report.photos}/{total} photos, {report.faces} faces, {report.skipped} skipped, "
            f"{report.photos_per_second:.1f} photos/s"
        )

    with services.vectors() as vectors:
        report = detect_pending_faces(
            services.settings, services.db, vectors, limit=config.limit, embedder=embedder, progress=progress
        )
    metadata: dict[str, Any] = {**report.as_metadata(), **{f"model_{k}": str(v) for k, v in model.items()}}
    if report.skip_reasons:
        lines = "\n".join(f"| {path} | {reason} |" for path, reason in report.skip_reasons.items())
        metadata["skipped_photos"] = dg.MetadataValue.md("| photo | reason |\n|---|---|\n" + lines)
    return dg.MaterializeResult(metadata=metadata)
