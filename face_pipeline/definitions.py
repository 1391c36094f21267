"""The definitions that workspace.yaml (and `dagster dev -m face_pipeline.definitions`) load: `defs`, a
`@dg.definitions` function Dagster calls when it loads the code location, so importing this module reads no
settings (the daily limit and the schedules' hour and zone are read then). Code that needs them calls `defs()`.

Lineage (acyclic; each asset's decorator names its upstream):
    photo_catalog -> detected_faces -> regenerated_embeddings -> person_centroids -> supervised_assignments
        -> unknown_clusters
    face_labels (observed) -> trained_projection_checkpoint -> regenerated_embeddings
    face_labels -> person_centroids
    detected_faces -> staged_faces -> reembedded_faces (manual: `faces reembed`, another face model)
"""

import dagster as dg

from face_pipeline.defs.checks import ALL_CHECKS
from face_pipeline.defs.cluster_assets import person_centroids, supervised_assignments, unknown_clusters
from face_pipeline.defs.ingest_assets import detected_faces, photo_catalog
from face_pipeline.defs.jobs import build_jobs
from face_pipeline.defs.labels_source import face_labels, face_labels_observer
from face_pipeline.defs.reembed_assets import reembedded_faces, staged_faces
from face_pipeline.defs.resources import pipeline_resources
from face_pipeline.defs.schedules import build_schedules
from face_pipeline.defs.sensors import dead_run_sensor, label_growth_sensor
from face_pipeline.defs.training_assets import regenerated_embeddings, trained_projection_checkpoint
from face_pipeline.settings import Settings, load_settings

ASSETS: list[dg.AssetsDefinition | dg.SourceAsset] = [
    face_labels,
    photo_catalog,
    detected_faces,
    trained_projection_checkpoint,
    regenerated_embeddings,
    person_centroids,
    supervised_assignments,
    unknown_clusters,
    staged_faces,
    reembedded_faces,
]


EXECUTORS = {"in_process": dg.in_process_executor, "multiprocess": dg.multiprocess_executor}


def _scale_out(settings: Settings) -> tuple[list[dg.AssetsDefinition | dg.SourceAsset], dg.ExecutorDefinition]:
    """FACE_EXECUTOR=celery: steps on Celery workers, detection one step per photo partition
    (defs/partitions.py, the same asset key); other executors: the assets as they are."""
    if settings.executor != "celery":
        return ASSETS, EXECUTORS[settings.executor]
    from face_pipeline.defs.celery_executor import build_celery_executor
    from face_pipeline.defs.partitions import partitioned_detected_faces

    assets = [partitioned_detected_faces if a is detected_faces else a for a in ASSETS]
    return assets, build_celery_executor(settings)


@dg.definitions
def defs() -> dg.Definitions:
    settings = load_settings()  # schedule hour and zone, daily limit, executor: read when the code location loads
    assets, executor = _scale_out(settings)
    return dg.Definitions(
        assets=assets,
        asset_checks=ALL_CHECKS,
        jobs=build_jobs(daily_limit=settings.daily_limit),
        schedules=build_schedules(settings),
        sensors=[label_growth_sensor, dead_run_sensor, face_labels_observer],
        resources=pipeline_resources(),
        # FACE_EXECUTOR: in_process (default: one Python per run), multiprocess (one per step) or celery
        # (steps on Celery workers; README "Scaling out").
        executor=executor,
    )
