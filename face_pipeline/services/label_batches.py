"""Many decisions in one transaction: `faces label --from-csv FILE` and `faces reject ID ID ...`.

All or nothing: a row that cannot be applied names its line and nothing changes. Each face keeps the rules of
the one-at-a-time edits in services/labels.py (the one-face or whole-cluster rule of `name_faces`, a rejection
as `reject_face`), and each gets one audit event, written with one executemany per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from face_pipeline.domain.naming import noise_cluster_id
from face_pipeline.errors import InvalidInput, NotFound
from face_pipeline.services.labels import (
    clean_name,
    find_person,
    gone_cluster,
    name_faces,
    note_moved,
    person_by_name,
    user_edit,
)
from face_pipeline.storage.models import (
    AssignmentSource,
    FaceAssignmentEvent,
    FaceInstance,
    FaceRejection,
    Person,
    utcnow,
)

if TYPE_CHECKING:
    from face_pipeline.services.library import Library


@dataclass(frozen=True)
class LabelRow:
    """One row of a batch: name the faces of a cluster (cluster_id) or one face (face_id), as `faces label`
    and `faces label-face` would. `line`: where the row came from, named in errors."""

    line: int
    name: str
    cluster_id: str | None = None
    face_id: int | None = None


@dataclass
class BatchLabelResult:
    rows: int = 0
    faces_labelled: int = 0
    people: set[str] = field(default_factory=set)  # ids of the people named
    people_created: int = 0
    skipped_confirmed: list[int] = field(default_factory=list)
    skipped_rejected: list[int] = field(default_factory=list)


def label_rows(library: Library, rows: Sequence[LabelRow]) -> BatchLabelResult:
    """Apply every row in one transaction: all or nothing. A row that cannot be applied (an unknown face or
    cluster, a bad name, a face already named by an earlier row) raises InvalidInput/NotFound naming its line,
    and nothing changes. Each row follows the one-face or the whole-cluster rule of `name_faces`; every face
    named gets one audit event."""
    result = BatchLabelResult(rows=len(rows))
    claimed: dict[int, int] = {}  # face id -> the line that named it
    with user_edit(library) as session:
        for row in rows:
            try:
                _label_row(session, row, claimed, result)
            except NotFound as exc:
                raise NotFound(exc.kind, exc.ref, f"line {row.line}: {exc}") from None
            except InvalidInput as exc:
                raise InvalidInput(f"line {row.line}: {exc}") from None
    return result


def _label_row(session: Session, row: LabelRow, claimed: dict[int, int], result: BatchLabelResult) -> None:
    cleaned = clean_name(row.name)
    columns = (FaceInstance.id, FaceInstance.person_id, FaceInstance.user_confirmed, FaceInstance.cluster_id)
    if row.face_id is not None:
        faces = session.execute(select(*columns).where(FaceInstance.id == row.face_id)).all()
        if not faces:
            raise NotFound("face", row.face_id)
    elif row.cluster_id is not None:
        faces = session.execute(
            select(*columns).where(FaceInstance.cluster_id == row.cluster_id).order_by(FaceInstance.id)
        ).all()
        if not faces:
            raise gone_cluster(session, row.cluster_id)
    else:
        raise InvalidInput("give a cluster id or a face id")
    for face in faces:
        if face.id in claimed:
            raise InvalidInput(f"face {face.id} was already named on line {claimed[face.id]}; name each face once")
        claimed[face.id] = row.line
    person, created = person_by_name(session, cleaned)
    if row.face_id is not None:
        naming = name_faces(session, faces, person.id, explicit=True, action="label_face")
    else:
        details = {"cluster_id": row.cluster_id}
        naming = name_faces(session, faces, person.id, explicit=False, action="label_cluster", details=details)
    result.faces_labelled += len(naming.named)
    result.people.add(person.id)
    result.people_created += int(created)
    result.skipped_confirmed += naming.skipped_confirmed
    result.skipped_rejected += naming.skipped_rejected


@dataclass(frozen=True)
class Rejection:
    face_id: int
    person_id: str
    person_name: str


def reject_faces(library: Library, face_ids: Sequence[int], person_ref: str | None = None) -> list[Rejection]:
    """ "Not this person" for many faces in one transaction (each as `reject_face`): all or nothing, one audit
    event per face. Without person_ref each face is ruled out for its current person."""
    ids = list(dict.fromkeys(int(i) for i in face_ids))
    with user_edit(library) as session:
        found = {f.id: f for f in session.scalars(select(FaceInstance).where(FaceInstance.id.in_(ids)))}
        if missing := [i for i in ids if i not in found]:
            raise NotFound("face", ", ".join(map(str, missing)))
        person = find_person(session, person_ref) if person_ref else None
        if person is None and (nobody := [i for i in ids if found[i].person_id is None]):
            raise InvalidInput(
                f"face {nobody[0]} belongs to nobody; say which person it is not "
                f"(`faces reject {' '.join(map(str, ids))} --person NAME`)"
            )
        faces = [found[i] for i in ids]
        pairs = {(f.id, person.id if person else str(f.person_id)) for f in faces}
        existing = set(
            session.execute(
                select(FaceRejection.face_id, FaceRejection.person_id).where(FaceRejection.face_id.in_(ids))
            ).tuples()
        )
        new = sorted(pairs - existing)
        if new:
            session.execute(insert(FaceRejection), [{"face_id": f, "person_id": p} for f, p in new])
        rejections: list[Rejection] = []
        leaving: list[FaceInstance] = []
        staying: list[FaceInstance] = []
        names: dict[str, str] = {}
        for face in faces:
            person_id = person.id if person else str(face.person_id)
            if person_id not in names:
                names[person_id] = person.name if person else _person_name(session, person_id)
            rejections.append(Rejection(face.id, person_id, names[person_id]))
            (leaving if face.person_id == person_id else staying).append(face)
        _release_many(session, leaving, action="reject")
        if staying and person is not None:  # faces of someone else (or nobody): the rejection alone, as an event
            _events(
                session,
                [(face, face.cluster_id, {"rejected_person_id": person.id}) for face in staying],
                action="reject",
            )
        return rejections


def _person_name(session: Session, person_id: str) -> str:
    person = session.get(Person, person_id)
    return person.name if person is not None else person_id


def _release_many(session: Session, faces: Sequence[FaceInstance], *, action: str) -> None:
    """`_release` for many faces: one executemany of events and one of updates (each face leaves its person)."""
    if not faces:
        return
    rows = [(face, noise_cluster_id(face.id), {"person_id": face.person_id}) for face in faces]
    for face, cluster, _ in rows:
        note_moved(session, [face.id], None, cluster)
    _events(session, rows, action=action)
    now = utcnow()
    session.execute(
        update(FaceInstance),
        [
            {
                "id": face.id,
                "person_id": None,
                "cluster_id": cluster,
                "assignment_source": AssignmentSource.NOISE,
                "confidence": None,
                "user_confirmed": False,
                "updated_at": now,
            }
            for face, cluster, _ in rows
        ],
    )


def _events(session: Session, rows: Sequence[tuple[FaceInstance, str | None, dict[str, Any]]], *, action: str) -> None:
    """One user event per (face, its new cluster, details), the face leaving any person: one executemany."""
    now = utcnow()
    session.execute(
        insert(FaceAssignmentEvent),
        [
            {
                "face_id": face.id,
                "action": action,
                "source": "user",
                "old_person_id": face.person_id,
                "new_person_id": None,
                "old_cluster_id": face.cluster_id,
                "new_cluster_id": cluster,
                "confidence": None,
                "details": details,
                "created_at": now,
            }
            for face, cluster, details in rows
        ],
    )
