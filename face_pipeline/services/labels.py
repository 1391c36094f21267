"""A user's decisions: naming clusters and faces, "not this person", unassigning, merging, renaming.

Every decision is stored on the face (person_id + user_confirmed, or a row in face_rejections), never on a
cluster string, so re-clustering or a new model cannot lose it; every change writes an audit event. SQL is the
source of truth; after each edit the faces' person_id / cluster_id are mirrored onto their vector-store
payloads (`user_edit`), so filtered searches see the edit before the next run.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from face_pipeline.domain.naming import PERSON_REF_PATTERN, noise_cluster_id, person_cluster_id
from face_pipeline.errors import Conflict, InvalidInput, NotFound
from face_pipeline.storage.models import (
    AssignmentSource,
    FaceAssignmentEvent,
    FaceInstance,
    FaceRejection,
    Person,
    PersonPrototype,
    PersonStatus,
    utcnow,
)
from face_pipeline.storage.vectors import VectorStoreError

if TYPE_CHECKING:
    from face_pipeline.services.library import Library

log = logging.getLogger(__name__)
MAX_NAME_LENGTH = 200
_PERSON_REF = re.compile(PERSON_REF_PATTERN)


@dataclass
class LabelResult:
    person_id: str
    person_name: str
    created_person: bool
    faces_labelled: int
    skipped_confirmed: list[int] = field(default_factory=list)  # confirmed as someone else: untouched
    skipped_rejected: list[int] = field(default_factory=list)  # the user said "not this person" before


@dataclass
class Naming:
    """What `name_faces` did: the faces it confirmed and the ones it left alone (by id)."""

    named: list[Any] = field(default_factory=list)
    skipped_confirmed: list[int] = field(default_factory=list)
    skipped_rejected: list[int] = field(default_factory=list)


def clean_name(name: str) -> str:
    """Trim and validate a person's name: 1..200 printable characters."""
    if not isinstance(name, str):
        raise InvalidInput("name must be text")
    cleaned = unicodedata.normalize("NFC", name).strip()
    if not cleaned:
        raise InvalidInput("name is empty")
    if len(cleaned) > MAX_NAME_LENGTH:
        raise InvalidInput(f"name is {len(cleaned)} characters long; at most {MAX_NAME_LENGTH} are allowed")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Zl", "Zp") for ch in cleaned):
        raise InvalidInput("name contains control characters")
    return cleaned


def find_person(session: Session, ref: str) -> Person:
    """A person by id (`<uuid>` or `person_<uuid>`) or by exact name (case-insensitive, must be unique)."""
    match = _PERSON_REF.match(ref.strip().lower())
    if match:
        person = session.get(Person, match.group(1))
        if person is not None:
            return _follow_merges(session, person)
    people = session.scalars(
        select(Person).where(func.lower(Person.name) == ref.strip().lower(), Person.status == PersonStatus.ACTIVE)
    ).all()
    if not people:
        raise NotFound("person", ref)
    if len(people) > 1:
        raise Conflict(f"{len(people)} people are named {ref!r}; use an id: " + ", ".join(p.id for p in people))
    return people[0]


def _follow_merges(session: Session, person: Person) -> Person:
    seen = {person.id}
    while person.status == PersonStatus.MERGED and person.merged_into and person.merged_into not in seen:
        person = session.get(Person, person.merged_into) or person
        seen.add(person.id)
    return person


def person_by_name(session: Session, name: str) -> tuple[Person, bool]:
    """The active person with this name (case-insensitive, oldest first), created when none exists."""
    existing = session.scalars(
        select(Person)
        .where(func.lower(Person.name) == name.lower(), Person.status == PersonStatus.ACTIVE)
        .order_by(Person.created_at)
    ).first()
    if existing is not None:
        return existing, False
    person = Person(name=name)
    session.add(person)
    session.flush()
    return person, True


def label_cluster(
    library: Library, cluster_id: str, name: str, *, expected_face_ids: Collection[int] | None = None
) -> LabelResult:
    """Name every face of a cluster: creates or reuses the person and confirms the faces.

    `expected_face_ids`: the faces the client saw; if the cluster holds others now (re-clustering ran),
    nothing changes and Conflict is raised, so a stale page never labels the wrong faces.
    """
    cleaned = clean_name(name)
    with user_edit(library) as session:
        faces = session.execute(
            select(FaceInstance.id, FaceInstance.person_id, FaceInstance.user_confirmed, FaceInstance.cluster_id)
            .where(FaceInstance.cluster_id == cluster_id)
            .order_by(FaceInstance.id)
        ).all()
        if not faces:
            raise gone_cluster(session, cluster_id)
        if expected_face_ids is not None and set(expected_face_ids) != {f.id for f in faces}:
            raise Conflict(f"cluster {cluster_id} changed since it was loaded; reload it and try again")
        person, created = person_by_name(session, cleaned)
        naming = name_faces(
            session, faces, person.id, explicit=False, action="label_cluster", details={"cluster_id": cluster_id}
        )
        return LabelResult(
            person.id,
            person.name,
            created,
            len(naming.named),
            skipped_confirmed=naming.skipped_confirmed,
            skipped_rejected=naming.skipped_rejected,
        )


def gone_cluster(session: Session, cluster_id: str) -> NotFound:
    """NotFound for a cluster with no faces; when users named its faces, the message says who they became."""
    named = session.execute(
        select(Person.id, Person.name)
        .join(FaceAssignmentEvent, FaceAssignmentEvent.new_person_id == Person.id)
        .where(FaceAssignmentEvent.old_cluster_id == cluster_id, FaceAssignmentEvent.source == "user")
        .order_by(FaceAssignmentEvent.id.desc())
        .limit(1)
    ).first()
    if named is None:
        return NotFound("cluster", cluster_id)
    why = f"{cluster_id} is gone: its faces were named {named.name!r} ({person_cluster_id(named.id)})"
    return NotFound("cluster", cluster_id, why)


def label_face(library: Library, face_id: int, name: str) -> LabelResult:
    """Name one face; an explicit choice replaces an earlier one and lifts a "not this person" for it."""
    cleaned = clean_name(name)
    with user_edit(library) as session:
        face = _face(session, face_id)
        person, created = person_by_name(session, cleaned)
        name_faces(session, [face], person.id, explicit=True, action="label_face")
        return LabelResult(person.id, person.name, created, 1)


def assign_face(library: Library, face_id: int, person_ref: str) -> LabelResult:
    """Confirm one face as an existing person (by id or unique name)."""
    with user_edit(library) as session:
        face = _face(session, face_id)
        person = find_person(session, person_ref)
        name_faces(session, [face], person.id, explicit=True, action="label_face")
        return LabelResult(person.id, person.name, False, 1)


def name_faces(
    session: Session,
    faces: Sequence[Any],
    person_id: str,
    *,
    explicit: bool,
    action: str,
    details: dict[str, Any] | None = None,
) -> Naming:
    """The one rule for "these faces are this person", used by every way of naming faces.

    explicit=True (label_face, assign_face: the user names this one face): the newest decision about that
    face wins. It is confirmed as the person even if it was confirmed as someone else, and a "not this
    person" the user gave it for this person is lifted.

    explicit=False (label_cluster, import_labels: a group of faces named at once): a group action never
    overturns a decision the user made about one face. Faces confirmed as someone else, and faces the user
    ruled out for this person, are left as they are and reported as skipped.

    `faces`: rows with id, person_id, user_confirmed and cluster_id.
    """
    naming = Naming()
    ids = [f.id for f in faces]
    if not ids:
        return naming
    if explicit:
        session.execute(
            delete(FaceRejection).where(FaceRejection.person_id == person_id, FaceRejection.face_id.in_(ids))
        )
        naming.named = list(faces)
    else:
        ruled_out = FaceRejection.person_id == person_id, FaceRejection.face_id.in_(ids)
        rejected = set(session.scalars(select(FaceRejection.face_id).where(*ruled_out)))
        for face in faces:
            if face.user_confirmed and face.person_id not in (None, person_id):
                naming.skipped_confirmed.append(face.id)
            elif face.id in rejected:
                naming.skipped_rejected.append(face.id)
            else:
                naming.named.append(face)
    confirm_faces(session, naming.named, person_id, action=action, details=details)
    return naming


def reject_face(library: Library, face_id: int, person_ref: str | None = None) -> str:
    """ "Not this person": the face leaves the person (its current one, or the one named) for good;
    automatic runs never assign it to that person again. Returns the person's id."""
    with user_edit(library) as session:
        face = _face(session, face_id)
        person = find_person(session, person_ref) if person_ref else None
        person_id = person.id if person else face.person_id
        if person_id is None:
            raise InvalidInput(
                f"face {face_id} belongs to nobody; say which person it is not (`faces reject {face_id} --person NAME`,"
                " or person_id in the API)"
            )
        exists = session.get(FaceRejection, (face.id, person_id))
        if exists is None:
            session.add(FaceRejection(face_id=face.id, person_id=person_id))
        if face.person_id == person_id:
            _release(session, [face], action="reject", source=AssignmentSource.NOISE, person_for_event=person_id)
        else:
            _event(
                session,
                face,
                action="reject",
                new_person_id=None,
                new_cluster_id=face.cluster_id,
                details={"rejected_person_id": person_id},
            )
        return person_id


def unassign_face(library: Library, face_id: int) -> None:
    """Undo a face's naming (a user's or an automatic one); it becomes a singleton until re-clustered."""
    with user_edit(library) as session:
        face = _face(session, face_id)
        if face.person_id is None and not face.user_confirmed:
            raise InvalidInput(f"face {face_id} is not assigned to anyone")
        _release(session, [face], action="unassign", source=AssignmentSource.NOISE, person_for_event=face.person_id)


def rename_person(library: Library, person_ref: str, new_name: str) -> Person:
    cleaned = clean_name(new_name)
    with library.db.session() as session:
        person = find_person(session, person_ref)
        old = person.name
        person.name = cleaned
        session.add(
            FaceAssignmentEvent(
                action="rename",
                source="user",
                new_person_id=person.id,
                details={"old_name": old, "new_name": cleaned},
            )
        )
        return person


def create_person(library: Library, name: str) -> tuple[Person, bool]:
    cleaned = clean_name(name)
    with library.db.session() as session:
        person, created = person_by_name(session, cleaned)
        if created:  # a person with no faces yet still leaves a trace in the audit log
            session.add(
                FaceAssignmentEvent(
                    action="create_person", source="user", new_person_id=person.id, details={"name": person.name}
                )
            )
        return person, created


def merge_persons(library: Library, source_ref: str, target_ref: str) -> tuple[Person, int]:
    """Merge source into target: its faces, rejections and name history move; source is marked merged."""
    with user_edit(library) as session:
        source = find_person(session, source_ref)
        target = find_person(session, target_ref)
        if source.id == target.id:
            raise InvalidInput(f"cannot merge {source.name!r} into itself")
        faces = session.execute(
            select(FaceInstance.id, FaceInstance.person_id, FaceInstance.cluster_id).where(
                FaceInstance.person_id == source.id
            )
        ).all()
        session.execute(
            update(FaceInstance)
            .where(FaceInstance.person_id == source.id)
            .values(person_id=target.id, cluster_id=person_cluster_id(target.id), updated_at=utcnow())
        )
        _changed(session, [f.id for f in faces], target.id, person_cluster_id(target.id))
        _bulk_events(
            session,
            faces,
            action="merge",
            source="user",
            new_person_id=target.id,
            new_cluster_id=person_cluster_id(target.id),
        )
        already = set(session.scalars(select(FaceRejection.face_id).where(FaceRejection.person_id == target.id)))
        session.execute(
            update(FaceRejection)
            .where(FaceRejection.person_id == source.id, FaceRejection.face_id.not_in(already or {-1}))
            .values(person_id=target.id)
        )
        session.execute(delete(FaceRejection).where(FaceRejection.person_id == source.id))
        session.execute(delete(PersonPrototype).where(PersonPrototype.person_id.in_([source.id, target.id])))
        source.status, source.merged_into = PersonStatus.MERGED, target.id
        # One person-level event as well: a merge of someone with no faces would otherwise leave no trace.
        session.add(
            FaceAssignmentEvent(
                action="merge_person",
                source="user",
                old_person_id=source.id,
                new_person_id=target.id,
                details={"source_name": source.name, "target_name": target.name, "faces": len(faces)},
            )
        )
        return target, len(faces)


def remove_from_cluster(library: Library, face_id: int) -> str:
    """ "Not part of this group" for a face nobody named: it leaves its unknown cluster and stands alone.

    Unlike a rejection this is not remembered: the next clustering run may group the face again. Returns
    the face's new (singleton) cluster id; Conflict when the face belongs to a person or is alone already.
    """
    with user_edit(library) as session:
        face = _face(session, face_id)
        if face.person_id is not None:
            raise Conflict(f"face {face_id} belongs to a person; reject or unassign it instead")
        alone = noise_cluster_id(face.id)
        if face.cluster_id == alone:
            raise Conflict(f"face {face_id} is not in a group")
        _release(session, [face], action="remove_from_cluster", source=AssignmentSource.NOISE, person_for_event=None)
        return alone


# --- shared steps ---------------------------------------------------------------------------------------

_EDITED = "face_pipeline.labels.edited"  # session.info key: the faces an edit moved
EditedFaces = dict[int, tuple[str | None, str]]  # face id -> (person_id, cluster_id) after a user's edit


@contextmanager
def user_edit(library: Library) -> Iterator[Session]:
    """A session for one user edit; after its commit, the faces it moved get their new person_id / cluster_id
    in the vector-store payloads too (`_write_payloads`)."""
    with library.db.session() as session:
        yield session
        edited: EditedFaces = dict(session.info.pop(_EDITED, {}))
    if edited:
        _write_payloads(library, edited)


def note_moved(session: Session, face_ids: Sequence[int], person_id: str | None, cluster_id: str) -> None:
    """For an edit made in a `user_edit` session outside this module (undo, ignore): after the commit, these
    faces' payloads get this person and cluster too."""
    _changed(session, face_ids, person_id, cluster_id)


def _changed(session: Session, face_ids: Sequence[int], person_id: str | None, cluster_id: str) -> None:
    changed = session.info.setdefault(_EDITED, {})
    for face_id in face_ids:
        changed[int(face_id)] = (person_id, cluster_id)


def _write_payloads(library: Library, changes: EditedFaces) -> None:
    """Mirror an edit onto the payloads of the active space's collection and its raw space's (filtered
    searches, e.g. suggestions for big pools, read them). SQL stays the source of truth: when the store cannot
    be written (a pipeline run holds it), the edit still stands, a warning is logged, and the next run's
    clustering rewrites the payloads."""
    from face_pipeline.services.space_registry import active_space, raw_space_of

    with library.db.session() as session:
        space = active_space(session)
        names = [] if space is None else sorted({space.name, raw_space_of(session, space).name})
    if not names:
        return
    groups: dict[tuple[str | None, str], list[int]] = {}
    for face_id, values in changes.items():
        groups.setdefault(values, []).append(face_id)
    try:
        with library.vectors() as store:
            for name in names:
                if not store.has_collection(name):
                    continue
                store.set_payloads(
                    name,
                    [
                        (np.array(sorted(face_ids), dtype=np.int64), {"person_id": person, "cluster_id": cluster})
                        for (person, cluster), face_ids in groups.items()
                    ],
                )
    except VectorStoreError as exc:
        log.warning(
            "saved the edit of %d face(s), but could not update their vector-store payloads (%s); the next "
            "cluster-dual or daily run (regenerated_embeddings) rewrites stale payloads, as does `faces doctor "
            "--repair`",
            len(changes),
            exc,
        )


def _face(session: Session, face_id: int) -> FaceInstance:
    face = session.get(FaceInstance, face_id)
    if face is None:
        raise NotFound("face", face_id)
    return face


def confirm_faces(
    session: Session,
    faces: Sequence[Any],
    person_id: str,
    *,
    action: str,
    details: dict[str, Any] | None = None,
) -> None:
    if not faces:
        return
    cluster = person_cluster_id(person_id)
    _changed(session, [f.id for f in faces], person_id, cluster)
    session.execute(
        update(FaceInstance)
        .where(FaceInstance.id.in_([f.id for f in faces]))
        .values(
            person_id=person_id,
            cluster_id=cluster,
            assignment_source=AssignmentSource.USER,
            confidence=1.0,
            user_confirmed=True,
            updated_at=utcnow(),
        )
    )
    _bulk_events(
        session, faces, action=action, source="user", new_person_id=person_id, new_cluster_id=cluster, details=details
    )


def _release(session: Session, faces: Sequence[Any], *, action: str, source: str, person_for_event: str | None) -> None:
    for face in faces:  # few faces: a user acts on one at a time
        new_cluster = noise_cluster_id(face.id)
        _changed(session, [face.id], None, new_cluster)
        _event(
            session,
            face,
            action=action,
            new_person_id=None,
            new_cluster_id=new_cluster,
            details={"person_id": person_for_event},
        )
        session.execute(
            update(FaceInstance)
            .where(FaceInstance.id == face.id)
            .values(
                person_id=None,
                cluster_id=new_cluster,
                assignment_source=source,
                confidence=None,
                user_confirmed=False,
                updated_at=utcnow(),
            )
        )


def _event(session: Session, face: Any, **values: Any) -> None:
    _bulk_events(session, [face], source="user", **values)


def _bulk_events(
    session: Session,
    faces: Sequence[Any],
    *,
    action: str,
    source: str,
    new_person_id: str | None,
    new_cluster_id: str | None,
    details: dict[str, Any] | None = None,
) -> None:
    if not faces:  # an executemany of no rows would insert one empty row (and fail on NOT NULL)
        return
    now = utcnow()
    session.execute(
        insert(FaceAssignmentEvent),
        [
            {
                "face_id": face.id,
                "action": action,
                "source": source,
                "old_person_id": face.person_id,
                "new_person_id": new_person_id,
                "old_cluster_id": face.cluster_id,
                "new_cluster_id": new_cluster_id,
                "confidence": 1.0 if new_person_id else None,
                "details": details,
                "created_at": now,
            }
            for face in faces
        ],
    )
