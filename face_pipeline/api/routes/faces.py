"""/api/v1/faces: clusters to review and name, single faces to assign, reject or release, thumbnails."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Response

from face_pipeline.api.deps import (
    ClusterIdPath,
    ClusterTypeQuery,
    DatabaseDep,
    FaceIdPath,
    LibraryDep,
    Limit,
    Offset,
    SettingsDep,
    WriteAccess,
)
from face_pipeline.api.errors import CONFLICT, NOT_FOUND, WRITE, Responses
from face_pipeline.api.schemas import (
    ClusterDetailPublic,
    ClusterLabel,
    ClustersPublic,
    FaceAssign,
    FacePublic,
    FaceReject,
    LabelResultPublic,
    StatsPublic,
)
from face_pipeline.services import browse, labels
from face_pipeline.services.stats import library_stats

router = APIRouter(prefix="/faces", tags=["faces"], dependencies=[WriteAccess])

JPEG: Responses = {200: {"content": {"image/jpeg": {}}, "description": "A square JPEG around the face."}}
# A thumbnail never changes for its face id (a changed photo gets new face ids): let browsers keep it.
THUMBNAIL_CACHE = "private, max-age=86400"


@router.get("/stats")
def get_stats(db: DatabaseDep, settings: SettingsDep) -> StatsPublic:
    """Photos by status, faces, people, clusters by type, the active embedding space."""
    return StatsPublic.of(library_stats(db), settings.photos_dir)


@router.get("/clusters")
def list_clusters(
    db: DatabaseDep, kind: ClusterTypeQuery = None, limit: Limit = 50, offset: Offset = 0
) -> ClustersPublic:
    """Clusters largest first, each with its size and a cover face (its best-quality face)."""
    return ClustersPublic.of(browse.list_clusters(db, kind=kind, limit=limit, offset=offset))


@router.get("/clusters/{cluster_id}", responses=NOT_FOUND)
def get_cluster(
    db: DatabaseDep, cluster_id: ClusterIdPath, limit: Limit = 100, offset: Offset = 0
) -> ClusterDetailPublic:
    """One cluster and a page of its faces, best quality first."""
    return ClusterDetailPublic.of_detail(browse.cluster_detail(db, cluster_id, limit=limit, offset=offset))


@router.post("/clusters/{cluster_id}/label", responses=NOT_FOUND | CONFLICT | WRITE)
def label_cluster(library: LibraryDep, cluster_id: ClusterIdPath, body: ClusterLabel) -> LabelResultPublic:
    """Name every face of a cluster (creating the person, or reusing one with that name).

    Send `face_ids` (the faces you showed) to get a 409 instead of a wrong label when the cluster changed.
    """
    result = labels.label_cluster(library, cluster_id, body.name, expected_face_ids=body.face_ids)
    return LabelResultPublic.of(result)


@router.get(
    "/{face_id}/thumbnail",
    response_class=Response,
    responses=JPEG | NOT_FOUND,
)
def get_thumbnail(db: DatabaseDep, settings: SettingsDep, face_id: FaceIdPath) -> Response:
    jpeg = browse.face_thumbnail_jpeg(settings, db, face_id)
    return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": THUMBNAIL_CACHE})


@router.post("/{face_id}/assign", responses=NOT_FOUND | CONFLICT | WRITE)
def assign_face(library: LibraryDep, face_id: FaceIdPath, body: FaceAssign) -> LabelResultPublic:
    """Confirm one face as a person: an existing one by `person_id`, or by `name` (created when new)."""
    if body.person_id is not None:
        return LabelResultPublic.of(labels.assign_face(library, face_id, body.person_id))
    assert body.name is not None  # FaceAssign guarantees exactly one of the two
    return LabelResultPublic.of(labels.label_face(library, face_id, body.name))


@router.post("/{face_id}/reject", responses=NOT_FOUND | CONFLICT | WRITE)
def reject_face(
    library: LibraryDep, face_id: FaceIdPath, body: Annotated[FaceReject | None, Body()] = None
) -> FacePublic:
    """ "Not this person": the face leaves the person (its own, or `person_id`) and is never matched to
    them again. A face nobody was assigned needs `person_id` (422 otherwise)."""
    labels.reject_face(library, face_id, body.person_id if body else None)
    return FacePublic.of(browse.get_face(library.db, face_id))


@router.post("/{face_id}/unassign", responses=NOT_FOUND | WRITE)
def unassign_face(library: LibraryDep, face_id: FaceIdPath) -> FacePublic:
    """Undo a face's naming; it stands alone until the next clustering run (422 if nobody had it)."""
    labels.unassign_face(library, face_id)
    return FacePublic.of(browse.get_face(library.db, face_id))


@router.post("/{face_id}/remove-from-cluster", responses=NOT_FOUND | CONFLICT | WRITE)
def remove_from_cluster(library: LibraryDep, face_id: FaceIdPath) -> FacePublic:
    """Take an unnamed face out of its unknown group (409 if it belongs to a person or is alone already)."""
    labels.remove_from_cluster(library, face_id)
    return FacePublic.of(browse.get_face(library.db, face_id))
