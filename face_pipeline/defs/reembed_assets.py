"""staged_faces -> reembedded_faces: the library moved to another face model (`faces reembed`).

Staging takes no vector-store pool: it writes only its own staging collection, so backfill, clustering and
labelling go on in the old space while it runs. The switch is short and takes the pool like every writer.
"""

from typing import Any

import dagster as dg

from face_pipeline.defs.ingest_assets import detected_faces
from face_pipeline.defs.jobs import REEMBED_GROUP
from face_pipeline.defs.metadata import markdown_table
from face_pipeline.defs.resources import VECTOR_STORE_POOL, DatabaseResource, VectorStoreResource, library_of
from face_pipeline.services.detection import DetectReport
from face_pipeline.services.reembed import ReembedReport, reembed_library, stage_library

GROUP = REEMBED_GROUP
SHOWN = 200  # decisions not carried listed in the metadata (all of them are in the CSV)


class ReembedConfig(dg.Config):
    model: str = "buffalo_s"  # buffalo_s | buffalo_l | dlib | insightface (the FACE_MODEL_NAME pack)
    limit: int | None = None  # at most this many photos staged by this step (None: all)


def _progress(context: dg.AssetExecutionContext) -> Any:
    def progress(report: DetectReport, total: int) -> None:
        context.log.info(report.progress_line(total))

    return progress


@dg.asset(deps=[detected_faces], group_name=GROUP, kinds={"python", "qdrant"})
def staged_faces(
    context: dg.AssetExecutionContext,
    config: ReembedConfig,
    database: DatabaseResource,
    vector_store: VectorStoreResource,
) -> dg.MaterializeResult:
    """Every photo of the library detected and embedded again with another model, into a staging area the
    live faces never see; an interrupted run resumes where it stopped."""
    library = library_of(database, vector_store)
    with library.vectors() as vectors:
        report = stage_library(library, vectors, config.model, limit=config.limit, progress=_progress(context))
    context.log.info(report.message)
    return dg.MaterializeResult(metadata=report.as_metadata())


@dg.asset(deps=[staged_faces], group_name=GROUP, pool=VECTOR_STORE_POOL, kinds={"python", "sql", "qdrant"})
def reembedded_faces(
    context: dg.AssetExecutionContext,
    config: ReembedConfig,
    database: DatabaseResource,
    vector_store: VectorStoreResource,
) -> dg.MaterializeResult:
    """The switch: photos that arrived meanwhile staged, staged faces matched to the faces by box overlap (a
    matched face keeps its id, name and rejections), the new raw space active in one transaction."""
    library = library_of(database, vector_store)
    with library.vectors() as vectors:
        report = reembed_library(library, vectors, config.model, limit=config.limit, progress=_progress(context))
    context.log.info(report.message)
    return dg.MaterializeResult(metadata=_metadata(report))


def _metadata(report: ReembedReport) -> dict[str, Any]:
    metadata: dict[str, Any] = report.as_metadata()
    lost = report.not_carried[:SHOWN]
    metadata["not_carried"] = dg.MetadataValue.json([vars(d) for d in lost])
    if lost:
        metadata["not_carried_table"] = markdown_table(
            ["face", "photo", "name", "not this person", "reason"],
            [(d.face_id, d.photo, d.person_name or "", ", ".join(d.not_this_person), d.reason) for d in lost],
        )
    return metadata
