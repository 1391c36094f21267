"""detected_faces split into photo partitions, for FACE_EXECUTOR=celery: one step per partition, on any worker.

    plan_photo_partitions --(one dynamic output per partition with pending photos)--> detect_partition[key]
        --(all of them)--> write_staged_vectors

`plan_photo_partitions` gives new photos partitions (services/partitions.py) and registers the model's space
once; each `detect_partition[photos_N]` step detects that partition's pending photos on whichever Celery
worker takes it; `write_staged_vectors` (the face_vector_store pool) moves what the steps staged into the
embedded vector store (services/vector_staging.py). With a Qdrant server (FACE_QDRANT_URL) the steps write
to it themselves and the last step finds nothing staged.

A step killed with its worker is delivered again (acks_late) or retried (RetryPolicy): it takes the
partition's lock and detects only the photos still pending, so no photo gets its faces twice.
It is the same asset key, group and config (`ops.detected_faces.config.limit`) as the in-process asset.
"""

from collections.abc import Iterator
from typing import Any, cast

import dagster as dg

from face_pipeline.defs.jobs import INGEST_GROUP
from face_pipeline.defs.resources import (
    VECTOR_STORE_POOL,
    DatabaseResource,
    FaceEmbedderResource,
    VectorStoreResource,
    library_of,
)
from face_pipeline.services.detection import DetectReport, detect_pending_faces
from face_pipeline.services.partitions import partition_lock, pending_in_partition, plan_partitions
from face_pipeline.services.space_registry import register_raw_space
from face_pipeline.services.vector_staging import StagedVectorStore, move_staged_vectors, staged_count
from face_pipeline.storage.vectors import VectorStore
from face_pipeline.vision.embedders import describe_embedder

PLAN_OP = "plan_photo_partitions"
DETECT_OP = "detect_partition"
WRITE_OP = "write_staged_vectors"
# A step whose worker died is retried (besides Celery delivering it again): twice, a few seconds apart.
DETECT_RETRY = dg.RetryPolicy(max_retries=2, delay=2)
_SUMMED = ("photos", "photos_with_faces", "faces", "skipped", "replaced_faces", "carried_decisions")


class PlanConfig(dg.Config):
    limit: int | None = None  # at most this many new photos get partitions per run (None: all)


@dg.op(
    name=PLAN_OP,
    ins={"after_catalog": dg.In(dg.Nothing)},
    out={"partitions": dg.DynamicOut(str), "planned": dg.Out(dict)},
)
def plan_photo_partitions(
    context: dg.OpExecutionContext, config: PlanConfig, database: DatabaseResource, embedder: FaceEmbedderResource
) -> Iterator[dg.DynamicOutput[str] | dg.Output[dict[str, Any]]]:
    """New photos into partitions; one output per partition that has pending photos."""
    settings, db = database.face_settings(), database.database()
    plan = plan_partitions(db, size=settings.partition_size, by=settings.partition_by, limit=config.limit)
    context.log.info(
        f"{plan.photos} pending photos in {len(plan.keys)} partitions ({len(plan.new)} new, "
        f"up to {settings.partition_size} photos each, by {settings.partition_by})"
    )
    if plan.keys:  # the space row is made here once, not raced for by the partition steps
        face_model = embedder.for_library(db)
        with db.session() as session:
            register_raw_space(session, face_model.space, model_facts=describe_embedder(face_model))
    yield dg.Output(plan.as_metadata(), "planned")
    for key in plan.keys:
        yield dg.DynamicOutput(key, mapping_key=key, output_name="partitions")


@dg.op(name=DETECT_OP, retry_policy=DETECT_RETRY)
def detect_partition(
    context: dg.OpExecutionContext,
    partition: str,
    database: DatabaseResource,
    vector_store: VectorStoreResource,
    embedder: FaceEmbedderResource,
) -> dict[str, Any]:
    """Detect and embed the partition's pending photos: faces in SQL, vectors staged (or, with a Qdrant
    server, written to it)."""
    library = library_of(database, vector_store)
    with partition_lock(library.db, partition):  # one live step per partition, even if Celery ran it twice
        image_ids = pending_in_partition(library.db, partition)
        if not image_ids:
            context.log.info(f"{partition}: no pending photos (done by an earlier attempt)")
            return {**DetectReport().as_metadata(), "partition": partition}
        face_model = embedder.for_library(library.db)
        settings = library.settings
        if settings.qdrant_url:  # a server takes many writers
            with library.vectors() as vectors:
                report = detect_pending_faces(settings, library.db, vectors, embedder=face_model, image_ids=image_ids)
        else:
            # detection writes through ensure_collection/has_collection/upsert/delete only: staged
            staged = cast(VectorStore, StagedVectorStore(library.db))
            report = detect_pending_faces(settings, library.db, staged, embedder=face_model, image_ids=image_ids)
    context.log.info(f"{partition}: {report.progress_line(len(image_ids))}")
    return {**report.as_metadata(), "partition": partition}


@dg.op(name=WRITE_OP, pool=VECTOR_STORE_POOL)
def write_staged_vectors(
    context: dg.OpExecutionContext,
    reports: list[dict[str, Any]],
    planned: dict[str, Any],
    database: DatabaseResource,
    vector_store: VectorStoreResource,
) -> None:
    """Move every staged vector into the store (this run's and any an earlier, failed run left)."""
    library = library_of(database, vector_store)
    metadata: dict[str, Any] = {**planned, **{k: sum(int(r.get(k, 0)) for r in reports) for k in _SUMMED}}
    if staged_count(library.db):
        with library.vectors() as store:
            moved = move_staged_vectors(library.db, store)
        metadata.update({f"staged_{k}": v for k, v in moved.as_metadata().items()})
        context.log.info(f"moved staged vectors into the store: {moved.as_metadata()}")
    context.add_output_metadata(metadata)


@dg.graph_asset(
    name="detected_faces",
    group_name=INGEST_GROUP,
    ins={"photo_catalog": dg.AssetIn(dagster_type=dg.Nothing)},
    config=dg.ConfigMapping(
        config_schema={"limit": dg.Field(dg.Noneable(int), default_value=None, is_required=False)},
        config_fn=lambda c: {PLAN_OP: {"config": {"limit": c.get("limit")}}},
    ),
    kinds={"python", "sql"},
    description="Faces of pending photos, detected one partition per step: boxes and landmarks in SQL, "
    "embeddings in the raw space's collection.",
)
def partitioned_detected_faces(photo_catalog: None) -> Any:
    partitions, planned = plan_photo_partitions(photo_catalog)
    reports = partitions.map(detect_partition)
    return write_staged_vectors(reports.collect(), planned)
