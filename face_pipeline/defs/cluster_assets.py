"""person_centroids -> supervised_assignments -> unknown_clusters: dual-mode clustering as assets."""

import dagster as dg

from face_pipeline.defs.jobs import CLUSTERING_GROUP
from face_pipeline.defs.metadata import bar_chart_md, markdown_table
from face_pipeline.defs.resources import VECTOR_STORE_POOL, DatabaseResource, VectorStoreResource, library_of
from face_pipeline.defs.training_assets import FACE_LABELS, regenerated_embeddings
from face_pipeline.services.clustering import cluster_unknown_faces
from face_pipeline.services.known_people import assign_known_faces, compute_person_centroids
from face_pipeline.services.stats import library_stats

GROUP = CLUSTERING_GROUP


@dg.asset(deps=[regenerated_embeddings, FACE_LABELS], group_name=GROUP, pool=VECTOR_STORE_POOL, kinds={"python", "sql"})
def person_centroids(
    context: dg.AssetExecutionContext, database: DatabaseResource, vector_store: VectorStoreResource
) -> dg.MaterializeResult:
    """Prototypes of every named person (a centroid plus exemplars), from user-confirmed faces only."""
    library = library_of(database, vector_store)
    with library.vectors() as vectors:
        report = compute_person_centroids(library, vectors)
    return dg.MaterializeResult(
        metadata={
            "space": report.space,
            "people": report.people,
            "prototypes": report.prototypes,
            "labelled_faces": report.labelled_faces,
            "reused": report.reused,  # labels unchanged since the last build: prototypes kept
            "seconds": round(report.seconds, 3),
            # FACE_LEARNED_MATCHING: the learned matcher's gate verdict, in words, and its held-out figures
            "learned_matcher": report.matcher or "off (FACE_LEARNED_MATCHING=false)",
            **({"learned_matcher_figures": report.matcher_figures} if report.matcher_figures else {}),
        }
    )


class AssignConfig(dg.Config):
    person_threshold: float | None = None  # cosine; None = FACE_PERSON_MATCH_THRESHOLD or the space's default
    person_margin: float | None = None
    full: bool = False  # match every unconfirmed face, even when matching only the new ones would be safe


@dg.asset(deps=[person_centroids], group_name=GROUP, pool=VECTOR_STORE_POOL, kinds={"python", "sql"})
def supervised_assignments(
    context: dg.AssetExecutionContext,
    config: AssignConfig,
    database: DatabaseResource,
    vector_store: VectorStoreResource,
) -> dg.MaterializeResult:
    """Faces matched to known people (person_{uuid}): threshold and margin over the runner-up, one face per
    person per photo, never a person the user ruled out for that face."""
    library = library_of(database, vector_store)
    with library.vectors() as vectors:
        report = assign_known_faces(
            library,
            vectors,
            person_threshold=config.person_threshold,
            person_margin=config.person_margin,
            run_id=context.run.run_id,
            full=config.full,
        )
    context.log.info(f"supervised assignment: {report.reason or report.mode}; {report.matching}")
    return dg.MaterializeResult(metadata={k: _round(v) for k, v in vars(report).items()})


class ClusterConfig(dg.Config):
    method: str | None = None  # hdbscan | agglomerative | dbscan; None = FACE_UNKNOWN_CLUSTERING_METHOD
    min_cluster_size: int | None = None
    eps: float | None = None
    full: bool = False  # group the whole pool again, even when adding only the new faces would be safe


@dg.asset(deps=[supervised_assignments], group_name=GROUP, pool=VECTOR_STORE_POOL, kinds={"python", "sql"})
def unknown_clusters(
    context: dg.AssetExecutionContext,
    config: ClusterConfig,
    database: DatabaseResource,
    vector_store: VectorStoreResource,
) -> dg.MaterializeResult:
    """The faces nobody is named on, grouped (unknown_cluster_{N}, N stable across runs) or left alone
    (unknown_noise_{face_id}), so a user can name a whole group at once."""
    library = library_of(database, vector_store)
    with library.vectors() as vectors:
        report = cluster_unknown_faces(
            library,
            vectors,
            method=config.method,
            min_cluster_size=config.min_cluster_size,
            eps=config.eps,
            run_id=context.run.run_id,
            full=config.full,
        )
    context.log.info(f"unknown clusters: {report.reason or report.mode}")
    stats = library_stats(library.db)
    split = stats.faces_by_cluster_type
    histogram = report.size_histogram()
    return dg.MaterializeResult(
        metadata={
            "space": report.space,
            "method": report.method,
            "mode": report.mode,
            "reason": report.reason,
            "new_faces": report.new_faces,
            "touched": report.touched,
            "pool": report.pool,
            "clusters": report.clusters,
            "clustered_faces": report.clustered_faces,
            "noise": report.noise,
            "changed": report.changed,
            "largest_clusters": str(report.sizes[:10]),
            "seconds": round(report.seconds, 3),
            "faces_person": split.get("person", 0),
            "faces_unknown": split.get("unknown", 0),
            "faces_noise": split.get("noise", 0),
            "split": markdown_table(
                ["person", "unknown", "noise"], [[split.get(k, 0) for k in ("person", "unknown", "noise")]]
            ),
            "cluster_sizes": bar_chart_md("unknown clusters by size", histogram, xlabel="faces", ylabel="clusters"),
        }
    )


def _round(value: float | int | str) -> float | int | str:
    return round(value, 4) if isinstance(value, float) else value
