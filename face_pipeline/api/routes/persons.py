"""/api/v1/persons: the people of the library; create, rename, merge, and faces that may be them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from face_pipeline.api.deps import DatabaseDep, LibraryDep, Limit, Offset, PersonIdPath, WriteAccess
from face_pipeline.api.errors import BUSY, CONFLICT, NOT_FOUND, WRITE, Responses
from face_pipeline.api.schemas import (
    MergePublic,
    PersonCreate,
    PersonMerge,
    PersonPublic,
    PersonsPublic,
    PersonUpdate,
    SuggestionsPublic,
)
from face_pipeline.services import browse, labels

EXISTING: Responses = {200: {"model": PersonPublic, "description": "A person with that name exists already."}}

router = APIRouter(prefix="/persons", tags=["persons"], dependencies=[WriteAccess])


@router.get("")
def list_persons(db: DatabaseDep, limit: Limit = 100, offset: Offset = 0) -> PersonsPublic:
    """People by name, with their face counts (merged-away people are not listed)."""
    return PersonsPublic.of(browse.list_persons(db, limit=limit, offset=offset))


@router.post(
    "",
    status_code=201,
    responses=EXISTING | WRITE,
)
def create_person(library: LibraryDep, body: PersonCreate, response: Response) -> PersonPublic:
    """Create a person by name; an existing person of that name (any case) is returned with 200."""
    person, created = labels.create_person(library, body.name)
    response.status_code = 201 if created else 200
    return PersonPublic.of(browse.get_person(library.db, person.id))


@router.get("/{person_id}", responses=NOT_FOUND)
def get_person(db: DatabaseDep, person_id: PersonIdPath) -> PersonPublic:
    """One person; the id of a merged-away person leads to the person it was merged into."""
    return PersonPublic.of(browse.get_person(db, person_id))


@router.patch("/{person_id}", responses=NOT_FOUND | CONFLICT | WRITE)
def rename_person(library: LibraryDep, person_id: PersonIdPath, body: PersonUpdate) -> PersonPublic:
    person = labels.rename_person(library, person_id, body.name)
    return PersonPublic.of(browse.get_person(library.db, person.id))


@router.post("/{person_id}/merge", responses=NOT_FOUND | CONFLICT | WRITE)
def merge_person(library: LibraryDep, person_id: PersonIdPath, body: PersonMerge) -> MergePublic:
    """Merge this person into `into`: their faces and "not this person" decisions move over."""
    target, moved = labels.merge_persons(library, person_id, body.into)
    return MergePublic(person=PersonPublic.of(browse.get_person(library.db, target.id)), faces_moved=moved)


@router.get("/{person_id}/suggestions", responses=NOT_FOUND | BUSY)
def suggest_faces(
    library: LibraryDep, person_id: PersonIdPath, limit: Annotated[int, Query(ge=1, le=200)] = 20
) -> SuggestionsPublic:
    """Unnamed faces most similar to this person, best first (opens the vector store for this call only)."""
    return SuggestionsPublic.of(browse.suggest_faces(library, person_id, limit=limit))
