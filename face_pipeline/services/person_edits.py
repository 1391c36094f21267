"""Edits from a person's page and the review lists that the CLI has no command for: split faces off into a new
person, "this is someone else", and "ignore" (a stranger in the background, a poster, a statue).

Each builds on the labels service's one rule for naming faces (`name_faces`) and its `user_edit` session, so
the audit events and vector-store payloads follow as for every other decision.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import insert, select, update

from face_pipeline.domain.naming import noise_cluster_id
from face_pipeline.errors import Conflict, InvalidInput, NotFound
from face_pipeline.services.labels import (
    LabelResult,
    clean_name,
    find_person,
    name_faces,
    note_moved,
    person_by_name,
    user_edit,
)
from face_pipeline.services.library import Library
from face_pipeline.storage.models import AssignmentSource, FaceAssignmentEvent, FaceInstance, FaceRejection, utcnow

MAX_FACES_PER_EDIT = 10_000


def _face_rows(session: Any, face_ids: Collection[int]) -> list[Any]:
    ids = sorted(set(face_ids))
    if not ids:
        raise InvalidInput("no faces given")
    if len(ids) > MAX_FACES_PER_EDIT:
        raise InvalidInput(f"{len(ids)} faces at once; at most {MAX_FACES_PER_EDIT} per edit")
    rows = session.execute(
        select(
            FaceInstance.id,
            FaceInstance.person_id,
            FaceInstance.user_confirmed,
            FaceInstance.cluster_id,
            FaceInstance.ignored,
        )
        .where(FaceInstance.id.in_(ids))
        .order_by(FaceInstance.id)
    ).all()
    missing = sorted(set(ids) - {r.id for r in rows})
    if missing:
        raise NotFound("face", missing[0])
    return list(rows)


def split_person(library: Library, person_ref: str, face_ids: Sequence[int], name: str) -> LabelResult:
    """Move a selection of this person's faces to the person called `name` (created when new): "these are
    somebody else". Every face must be this person's now (Conflict otherwise: the page is stale)."""
    cleaned = clean_name(name)
    with user_edit(library) as session:
        source = find_person(session, person_ref)
        faces = _face_rows(session, face_ids)
        strangers = [f.id for f in faces if f.person_id != source.id]
        if strangers:
            raise Conflict(f"face {strangers[0]} is not {source.name}'s (any more); reload the page")
        target, created = person_by_name(session, cleaned)
        if target.id == source.id:
            raise InvalidInput(f"these faces are {source.name}'s already; give the other person's name")
        name_faces(session, faces, target.id, explicit=True, action="split", details={"from_person_id": source.id})
        return LabelResult(target.id, target.name, created, len(faces))


def someone_else(
    library: Library, face_id: int, *, name: str | None = None, person_ref: str | None = None
) -> tuple[str, LabelResult | None]:
    """ "This is someone else": the face is ruled out for its person for good and, given a name or a person,
    confirmed as them. Returns the id of the person it was taken from, and whom it became (if said)."""
    with user_edit(library) as session:
        (face,) = _face_rows(session, [face_id])
        if face.person_id is None:
            raise InvalidInput(f"face {face_id} belongs to nobody; name it instead")
        old = face.person_id
        if session.get(FaceRejection, (face.id, old)) is None:
            session.add(FaceRejection(face_id=face.id, person_id=old))
        result = None
        if name is not None or person_ref is not None:
            if person_ref:
                target, created = find_person(session, person_ref), False
            else:
                target, created = person_by_name(session, clean_name(name or ""))
            if target.id == old:
                raise InvalidInput("that is the same person; say who else it is")
            name_faces(
                session, [face], target.id, explicit=True, action="someone_else", details={"from_person_id": old}
            )
            result = LabelResult(target.id, target.name, created, 1)
        else:
            _set(session, [face], ignored=False, action="reject", details={"rejected_person_id": old})
        return old, result


def set_ignored(library: Library, face_ids: Collection[int], ignored: bool) -> list[int]:
    """Mark faces "ignore" (True) or take the mark back (False); returns the faces that changed.

    An ignored face belongs to nobody and stands alone (its own unknown_noise id), is left out of the review
    lists and suggestions, and automatic assignment and clustering pass it by. Taking the mark back leaves it
    alone, for the next clustering run to group.
    """
    with user_edit(library) as session:
        faces = [f for f in _face_rows(session, face_ids) if bool(f.ignored) != ignored]
        _set(session, faces, ignored=ignored, action="ignore" if ignored else "unignore")
        return [f.id for f in faces]


def _set(
    session: Any, faces: Sequence[Any], *, ignored: bool, action: str, details: dict[str, Any] | None = None
) -> None:
    if not faces:
        return
    now = utcnow()
    session.execute(
        update(FaceInstance),
        [
            {
                "id": f.id,
                "person_id": None,
                "cluster_id": noise_cluster_id(f.id),
                "assignment_source": AssignmentSource.NOISE,
                "confidence": None,
                "user_confirmed": False,
                "ignored": ignored,
                "updated_at": now,
            }
            for f in faces
        ],
    )
    session.execute(
        insert(FaceAssignmentEvent),
        [
            {
                "face_id": f.id,
                "action": action,
                "source": "user",
                "old_person_id": f.person_id,
                "new_person_id": None,
                "old_cluster_id": f.cluster_id,
                "new_cluster_id": noise_cluster_id(f.id),
                "details": details,
                "created_at": now,
            }
            for f in faces
        ],
    )
    for f in faces:
        note_moved(session, [f.id], None, noise_cluster_id(f.id))
