"""/api/v1/faces: clusters to review and name, single faces to assign, reject or release, thumbnails."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Response

from face_pipeline.api.deps import (
    ClusterIdPath,
    ClusterTypeQuery,
    DatabaseDep,
    FaceIdPath,
    GuessesDep,
    LibraryDep,
    Limit,
    Offset,
    SettingsDep,
    WriteAccess,
)
from face_pipeline.api.errors import CONFLICT, NOT_FOUND, WRITE, Responses
from face_pipeline.api.schemas import (
    ClusterDetailPublic,
    ClusterIgnore,
    ClusterLabel,
    ClustersPublic,
    FaceAssign,
    FacePublic,
    FaceReject,
    FacesPublic,
    IgnoredPublic,
    LabelResultPublic,
    SingletonsPublic,
    SomeoneElse,
    StatsPublic,
)
from face_pipeline.errors import Conflict, NotFound
from face_pipeline.services import browse, labels, person_edits, singletons, undo
from face_pipeline.services.stats import library_stats
from face_pipeline.services.undo import DecisionKind as Kind

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
    faces = undo.faces_of_cluster(library.db, cluster_id)
    with undo.recorded(
        library, Kind.LABEL_CLUSTER, f"named a group of {len(faces)} as {body.name}", faces=faces
    ) as rec:
        result = labels.label_cluster(library, cluster_id, body.name, expected_face_ids=body.face_ids)
        rec.created_person = result.person_id if result.created_person else None
    return LabelResultPublic.of(result)


@router.post("/clusters/{cluster_id}/ignore", responses=NOT_FOUND | CONFLICT | WRITE)
def ignore_cluster(library: LibraryDep, cluster_id: ClusterIdPath, body: ClusterIgnore) -> IgnoredPublic:
    """Ignore every face of an unknown group (strangers, posters): out of every list and of automatic runs."""
    faces = undo.faces_of_cluster(library.db, cluster_id)
    if not faces:
        raise NotFound("cluster", cluster_id)
    if body.face_ids is not None and set(body.face_ids) != set(faces):
        raise Conflict(f"cluster {cluster_id} changed since it was loaded; reload it and try again")
    with undo.recorded(library, Kind.IGNORE, f"ignored a group of {len(faces)}", faces=faces):
        changed = person_edits.set_ignored(library, faces, True)
    return IgnoredPublic(faces=changed)


@router.get("/singletons")
def list_singletons(library: LibraryDep, cache: GuessesDep, limit: Limit = 24, offset: Offset = 0) -> SingletonsPublic:
    """Faces in no group, the best guesses first: the nearest named person and the score (at or above the
    floor), else "new person" (`guess` null). Ignored faces are not listed."""
    return SingletonsPublic.of(singletons.list_singletons(library, cache, limit=limit, offset=offset))


@router.get("/ignored")
def list_ignored(db: DatabaseDep, limit: Limit = 50, offset: Offset = 0) -> FacesPublic:
    """Faces marked "ignore", the latest first."""
    return FacesPublic.of(browse.list_ignored(db, limit=limit, offset=offset))


@router.get(
    "/{face_id}/thumbnail",
    response_class=Response,
    responses=JPEG | NOT_FOUND,
)
def get_thumbnail(db: DatabaseDep, settings: SettingsDep, face_id: FaceIdPath) -> Response:
    jpeg = browse.face_thumbnail_jpeg(settings, db, face_id)
    return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": THUMBNAIL_CACHE})


def _person_of(library: LibraryDep, face_id: int) -> list[str]:
    person = browse.get_face(library.db, face_id).person_id
    return [person] if person else []


@router.post("/{face_id}/assign", responses=NOT_FOUND | CONFLICT | WRITE)
def assign_face(library: LibraryDep, face_id: FaceIdPath, body: FaceAssign) -> LabelResultPublic:
    """Confirm one face as a person: an existing one by `person_id`, or by `name` (created when new)."""
    who = body.name or "a person"
    with undo.recorded(library, Kind.ASSIGN, f"named face {face_id} {who}", faces=[face_id]) as rec:
        if body.person_id is not None:
            result = labels.assign_face(library, face_id, body.person_id)
        else:
            assert body.name is not None  # FaceAssign guarantees exactly one of the two
            result = labels.label_face(library, face_id, body.name)
        rec.created_person = result.person_id if result.created_person else None
    return LabelResultPublic.of(result)


@router.post("/{face_id}/reject", responses=NOT_FOUND | CONFLICT | WRITE)
def reject_face(
    library: LibraryDep, face_id: FaceIdPath, body: Annotated[FaceReject | None, Body()] = None
) -> FacePublic:
    """ "Not this person": the face leaves the person (its own, or `person_id`) and is never matched to
    them again. A face nobody was assigned needs `person_id` (422 otherwise)."""
    persons = _person_of(library, face_id) + ([body.person_id[-32:]] if body and body.person_id else [])
    with undo.recorded(library, Kind.REJECT, f"face {face_id}: not this person", faces=[face_id], persons=persons):
        labels.reject_face(library, face_id, body.person_id if body else None)
    return FacePublic.of(browse.get_face(library.db, face_id))


@router.post("/{face_id}/someone-else", responses=NOT_FOUND | CONFLICT | WRITE)
def someone_else(library: LibraryDep, face_id: FaceIdPath, body: SomeoneElse) -> FacePublic:
    """ "This is someone else": the face is ruled out for its person for good and, given `name` or
    `person_id`, confirmed as that person (422 for a face nobody has)."""
    persons = _person_of(library, face_id)
    with undo.recorded(
        library, Kind.SOMEONE_ELSE, f"face {face_id} is someone else", faces=[face_id], persons=persons
    ) as rec:
        _, became = person_edits.someone_else(library, face_id, name=body.name, person_ref=body.person_id)
        rec.created_person = became.person_id if became and became.created_person else None
    return FacePublic.of(browse.get_face(library.db, face_id))


@router.post("/{face_id}/unassign", responses=NOT_FOUND | WRITE)
def unassign_face(library: LibraryDep, face_id: FaceIdPath) -> FacePublic:
    """Undo a face's naming; it stands alone until the next clustering run (422 if nobody had it)."""
    with undo.recorded(library, Kind.UNASSIGN, f"took face {face_id} from its person", faces=[face_id]):
        labels.unassign_face(library, face_id)
    return FacePublic.of(browse.get_face(library.db, face_id))


@router.post("/{face_id}/remove-from-cluster", responses=NOT_FOUND | CONFLICT | WRITE)
def remove_from_cluster(library: LibraryDep, face_id: FaceIdPath) -> FacePublic:
    """Take an unnamed face out of its unknown group (409 if it belongs to a person or is alone already)."""
    with undo.recorded(library, Kind.REMOVE_FROM_CLUSTER, f"took face {face_id} out of its group", faces=[face_id]):
        labels.remove_from_cluster(library, face_id)
    return FacePublic.of(browse.get_face(library.db, face_id))


@router.post("/{face_id}/ignore", responses=NOT_FOUND | WRITE)
def ignore_face(library: LibraryDep, face_id: FaceIdPath) -> FacePublic:
    """Ignore this face (a stranger, a poster): it leaves its person or group and every list, and automatic
    assignment and clustering pass it by."""
    with undo.recorded(library, Kind.IGNORE, f"ignored face {face_id}", faces=[face_id]):
        person_edits.set_ignored(library, [face_id], True)
    return FacePublic.of(browse.get_face(library.db, face_id))


@router.post("/{face_id}/unignore", responses=NOT_FOUND | WRITE)
def unignore_face(library: LibraryDep, face_id: FaceIdPath) -> FacePublic:
    """Take the "ignore" mark back; the face stands alone until the next clustering run groups it."""
    with undo.recorded(library, Kind.UNIGNORE, f"stopped ignoring face {face_id}", faces=[face_id]):
        person_edits.set_ignored(library, [face_id], False)
    return FacePublic.of(browse.get_face(library.db, face_id))
