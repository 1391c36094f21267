"""Jobs: which assets run together, and the run tags that keep vector-store writers one at a time.

- daily_backfill_and_cluster: new photos in, faces detected (at most FACE_DAILY_LIMIT photos), new faces
  projected when a trained space is active, then prototypes, assignment and clustering (daily schedule).
- retrain: observe the labels, train a projection, regenerate and re-cluster (label-growth sensor, monthly).
- ingest: the first half on its own (`faces backfill`).
- cluster_dual: the second half: regenerated_embeddings (new faces projected when a trained space is active; its
  `mode` config switches between the raw and the trained space: `faces reassign`), then prototypes, assignment
  and clustering (`faces cluster-dual`; `faces cluster` and `faces assign` run parts of it).
- reembed: move the library to another face model (manual; `faces reembed`). No run-level vector-store tag:
  staging writes only its own collection, so the daily job may run beside it; the switch step takes the
  face_vector_store pool.

Jobs select assets by group (each asset's group_name): labels, ingest, training, embeddings, clustering,
reembed.
"""

from typing import Any

import dagster as dg

DAILY = "daily_backfill_and_cluster"
RETRAIN = "retrain"
INGEST = "ingest"
CLUSTER_DUAL = "cluster_dual"
REEMBED = "reembed"

# Asset groups (the assets' group_name); jobs select by them.
LABELS_GROUP = "labels"
INGEST_GROUP = "ingest"
TRAINING_GROUP = "training"
EMBEDDINGS_GROUP = "embeddings"
CLUSTERING_GROUP = "clustering"
REEMBED_GROUP = "reembed"

CLUSTERING = ("person_centroids", "supervised_assignments", "unknown_clusters")
REGENERATE = "regenerated_embeddings"
TRAIN = "trained_projection_checkpoint"
FACE_LABELS = "face_labels"

# Runs with this tag write the vector store; dagster.yaml lets one of them run at a time (the embedded
# store is single-process). Run-level, because the training op (pool "gpu") reads the store too.
VECTOR_STORE_TAG = "face_pipeline/vector_store"
WRITES_VECTORS = {VECTOR_STORE_TAG: "write"}
# Where a deployment sends retrain runs (a run queue or a GPU node pool); the training op runs on CPU
# when no GPU is there.
WORKER_TAG = "face_pipeline/worker"

# What define_asset_job returns (Dagster does not export its class by a public name).
AssetJob = Any

IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def detect_limit_config(limit: int | None) -> dict[str, Any]:
    return {"ops": {"detected_faces": {"config": {"limit": limit}}}}


def groups(*names: str) -> dg.AssetSelection:
    return dg.AssetSelection.groups(*names)


def build_jobs(*, daily_limit: int | None) -> list[AssetJob]:
    """The jobs; daily_limit (FACE_DAILY_LIMIT) is the daily job's default per-run detection limit."""
    return [
        dg.define_asset_job(
            DAILY,
            selection=groups(INGEST_GROUP, EMBEDDINGS_GROUP, CLUSTERING_GROUP),
            config=detect_limit_config(daily_limit) if daily_limit else None,
            run_tags=WRITES_VECTORS,
            description="New photos in, faces detected and embedded (projected when a trained space is active), "
            "then prototypes, assignment to known people and clustering of the rest.",
        ),
        dg.define_asset_job(
            RETRAIN,
            # face_labels first: the run records which labels it trained on (and, the only root, it is alone
            # when a brand-new database gets its tables).
            # (by key: a group selection leaves out source assets, and face_labels is one: the labels group)
            selection=dg.AssetSelection.assets(FACE_LABELS)
            | groups(TRAINING_GROUP, EMBEDDINGS_GROUP, CLUSTERING_GROUP),
            run_tags={**WRITES_VECTORS, WORKER_TAG: "gpu"},
            description="Train a projection head on the users' labels, switch to it when it beats the raw space "
            "(regenerating every face's embedding), then prototypes, assignment and clustering.",
        ),
        dg.define_asset_job(INGEST, selection=groups(INGEST_GROUP), run_tags=WRITES_VECTORS),
        dg.define_asset_job(
            CLUSTER_DUAL,
            # New faces projected first when a trained space is active, so clustering never meets an active
            # space missing some faces (a no-op while the raw space is active).
            selection=groups(EMBEDDINGS_GROUP, CLUSTERING_GROUP),
            run_tags=WRITES_VECTORS,
            description="Match faces to known people, then group the rest (`faces cluster-dual`; `faces cluster` "
            "and `faces assign` run parts of it).",
        ),
        dg.define_asset_job(
            REEMBED,
            selection=groups(REEMBED_GROUP),
            description="Detect and embed every photo again with another face model (config: model) into a "
            "staging area, then switch the library over in one transaction: faces keep their ids, names and "
            "rejections; decisions on faces the new model does not find are listed. Run cluster_dual after it.",
        ),
    ]


def runs_in_flight(instance: dg.DagsterInstance, job_name: str) -> list[dg.DagsterRun]:
    """Runs of the job that are queued or running (at most a few)."""
    return list(instance.get_runs(filters=dg.RunsFilter(job_name=job_name, statuses=IN_FLIGHT), limit=5))
