"""/api/v1/persons: the people of the library; create, rename, merge, and faces that may be them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from face_pipeline.api.deps import DatabaseDep, LibraryDep, Limit, Offset, PersonIdPath, VectorsDep, WriteAccess
from face_pipeline.api.errors import BUSY, CONFLICT, NOT_FOUND, WRITE, Responses
from face_pipeline.api.schemas import (
    AcceptPublic,
    LabelResultPublic,
    MergePublic,
    PersonCreate,
    PersonMerge,
    PersonPublic,
    PersonSplit,
    PersonsPublic,
    PersonUpdate,
    SuggestionsAccept,
    SuggestionsPublic,
)
from face_pipeline.services import browse, labels, person_edits, suggestions, undo
from face_pipeline.services.undo import DecisionKind as Kind

EXISTING: Responses = {200: {"model": PersonPublic, "description": "A person with that name exists already."}}

router = APIRouter(prefix="/persons", tags=["persons"], dependencies=[WriteAccess])


@router.get("")
def list_persons(
    db: DatabaseDep,
    limit: Limit = 100,
    offset: Offset = 0,
    q: Annotated[str | None, Query(max_length=200, description="Only names containing this (any case).")] = None,
) -> PersonsPublic:
    """People by name, with their face counts (merged-away people are not listed)."""
    return PersonsPublic.of(browse.list_persons(db, limit=limit, offset=offset, query=q))


@router.post(
    "",
    status_code=201,
    responses=EXISTING | WRITE,
)
def create_person(library: LibraryDep, body: PersonCreate, response: Response) -> PersonPublic:
    """Create a person by name; an existing person of that name (any case) is returned with 200."""
    with undo.recorded(library, Kind.CREATE_PERSON, f"added {body.name}") as rec:
        person, created = labels.create_person(library, body.name)
        rec.created_person = person.id if created else None
    response.status_code = 201 if created else 200
    return PersonPublic.of(browse.get_person(library.db, person.id))


@router.get("/{person_id}", responses=NOT_FOUND)
def get_person(db: DatabaseDep, person_id: PersonIdPath) -> PersonPublic:
    """One person; the id of a merged-away person leads to the person it was merged into."""
    return PersonPublic.of(browse.get_person(db, person_id))


@router.patch("/{person_id}", responses=NOT_FOUND | CONFLICT | WRITE)
def rename_person(library: LibraryDep, person_id: PersonIdPath, body: PersonUpdate) -> PersonPublic:
    current = browse.get_person(library.db, person_id)
    summary = f"renamed {current.name} to {body.name}"
    with undo.recorded(library, Kind.RENAME, summary, persons=[current.person_id]):
        person = labels.rename_person(library, person_id, body.name)
    return PersonPublic.of(browse.get_person(library.db, person.id))


@router.post("/{person_id}/merge", responses=NOT_FOUND | CONFLICT | WRITE)
def merge_person(library: LibraryDep, person_id: PersonIdPath, body: PersonMerge) -> MergePublic:
    """Merge this person into `into`: their faces and "not this person" decisions move over."""
    source, target_now = browse.get_person(library.db, person_id), browse.get_person(library.db, body.into)
    faces = undo.faces_of_person(library.db, source.person_id)
    summary = f"merged {source.name} into {target_now.name}"
    with undo.recorded(library, Kind.MERGE, summary, faces=faces, persons=[source.person_id, target_now.person_id]):
        target, moved = labels.merge_persons(library, person_id, body.into)
    return MergePublic(person=PersonPublic.of(browse.get_person(library.db, target.id)), faces_moved=moved)


@router.get("/{person_id}/suggestions", responses=NOT_FOUND | BUSY)
def suggest_faces(
    library: LibraryDep,
    vectors: VectorsDep,
    person_id: PersonIdPath,
    limit: Annotated[int, Query(ge=1, le=200)] = 24,
    offset: Annotated[int, Query(ge=0, le=10_000)] = 0,
    min_score: Annotated[float | None, Query(ge=-1.0, le=1.0, description="A cut above the floor.")] = None,
) -> SuggestionsPublic:
    """Unnamed faces most similar to this person, best first, none under the space's floor (its threshold);
    `total` counts those at or above the cut, for "accept all above X". Scored from the server's in-memory
    vectors; the vector store is opened only for faces new since (503 while a run holds it then)."""
    found, floor = suggestions.suggestions_for(
        library, person_id, limit=limit, offset=offset, min_score=min_score, cache=vectors
    )
    return SuggestionsPublic.of(found, floor, limit, offset)


@router.post("/{person_id}/suggestions/accept", responses=NOT_FOUND | BUSY | WRITE)
def accept_suggestions(
    library: LibraryDep, vectors: VectorsDep, person_id: PersonIdPath, body: SuggestionsAccept
) -> AcceptPublic:
    """Yes to each face shown that still scores at least `min_score` (and the floor) for this person now."""
    person = browse.get_person(library.db, person_id)
    summary = f"accepted suggestions for {person.name} above {body.min_score:.2f}"
    with undo.recorded(library, Kind.ACCEPT, summary, faces=body.face_ids):
        result = suggestions.accept_suggestions(library, person.person_id, body.face_ids, body.min_score, cache=vectors)
    return AcceptPublic.of(result)


@router.post("/{person_id}/split", responses=NOT_FOUND | CONFLICT | WRITE)
def split_person(library: LibraryDep, person_id: PersonIdPath, body: PersonSplit) -> LabelResultPublic:
    """Move a selection of this person's faces to the person called `name` (created when new)."""
    summary = f"split {len(body.face_ids)} faces off into {body.name}"
    with undo.recorded(library, Kind.SPLIT, summary, faces=body.face_ids) as rec:
        result = person_edits.split_person(library, person_id, body.face_ids, body.name)
        rec.created_person = result.person_id if result.created_person else None
    return LabelResultPublic.of(result)
