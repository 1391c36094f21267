"""The cluster-dual sequence, defined once: keep the active space current, rebuild the known people's
prototypes, match faces to them, group the rest.

Dagster runs the same four steps as the assets regenerated_embeddings -> person_centroids ->
supervised_assignments -> unknown_clusters (job `cluster_dual`, which `faces cluster-dual` launches);
code that runs without Dagster (evaluation, in-process training stages, tests) calls `run_cluster_dual`.
"""

from __future__ import annotations

from dataclasses import dataclass

from face_pipeline.services.clustering import ClusterReport, cluster_unknown_faces
from face_pipeline.services.known_people import (
    AssignReport,
    CentroidReport,
    assign_known_faces,
    compute_person_centroids,
)
from face_pipeline.services.library import Library
from face_pipeline.services.space_switch import RegenerateReport, regenerate_embeddings
from face_pipeline.storage.vectors import VectorStore

# The asset of each step, in order: the job that runs the sequence in Dagster selects these.
CLUSTER_DUAL_ASSETS = ("regenerated_embeddings", "person_centroids", "supervised_assignments", "unknown_clusters")


@dataclass(frozen=True)
class ClusterDualReport:
    regenerate: RegenerateReport
    centroids: CentroidReport
    assignments: AssignReport
    clusters: ClusterReport


def run_cluster_dual(
    library: Library,
    vectors: VectorStore,
    *,
    space_mode: str = "auto",
    person_threshold: float | None = None,
    person_margin: float | None = None,
    unknown_method: str | None = None,
    min_cluster_size: int | None = None,
    eps: float | None = None,
) -> ClusterDualReport:
    """The four steps on one open vector store. `space_mode` is regenerate_embeddings' mode: "auto" keeps
    the active space (switching only to a newly promoted checkpoint), "trained" / "raw" choose one."""
    regenerate = regenerate_embeddings(library, vectors, mode=space_mode)
    centroids = compute_person_centroids(library, vectors)
    assignments = assign_known_faces(library, vectors, person_threshold=person_threshold, person_margin=person_margin)
    clusters = cluster_unknown_faces(
        library, vectors, method=unknown_method, min_cluster_size=min_cluster_size, eps=eps
    )
    return ClusterDualReport(regenerate, centroids, assignments, clusters)
