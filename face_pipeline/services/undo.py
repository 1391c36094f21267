"""Undo for the review page: each decision made through the API is recorded with the state it replaced, and the
latest ones can be taken back, newest first.

The audit log's per-face events say whose a face was before (old person and cluster), but not its source,
confidence, confirmed and ignored flags, nor the "not this person" rows and person names a decision changed;
undo must restore all of them exactly. So a decision is also one audit event (action "decision", no face)
whose details hold that prior state ("before") and the state it left ("after"). Undoing it restores "before"
and writes an audit event of its own (action "undo", naming the decision) plus one per face it moved back.
A decision whose faces changed again since (a clustering run, an edit from the CLI) is not undone: Conflict.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.orm import Session

from face_pipeline.errors import Conflict, NotFound
from face_pipeline.services.labels import note_moved, user_edit
from face_pipeline.services.library import Library
from face_pipeline.storage.db import Database
from face_pipeline.storage.models import (
    FaceAssignmentEvent,
    FaceInstance,
    FaceRejection,
    Person,
    PersonPrototype,
    utcnow,
)

DECISION_ACTION = "decision"
UNDO_ACTION = "undo"
_CHUNK = 10_000  # ids per IN (...): under SQLite's bound-variable limit
_RECENT = 200  # decisions looked at when finding the latest one not undone


class DecisionKind(StrEnum):
    LABEL_CLUSTER = "label_cluster"
    ASSIGN = "assign"
    REJECT = "reject"
    UNASSIGN = "unassign"
    REMOVE_FROM_CLUSTER = "remove_from_cluster"
    CREATE_PERSON = "create_person"
    RENAME = "rename"
    MERGE = "merge"
    SPLIT = "split"
    SOMEONE_ELSE = "someone_else"
    ACCEPT = "accept_suggestions"
    IGNORE = "ignore"
    UNIGNORE = "unignore"


_FACE_COLUMNS = ("person_id", "cluster_id", "assignment_source", "confidence", "user_confirmed", "ignored")


@dataclass
class Recording:
    """Filled in by the caller inside `recorded`: a person the decision created (removed again by undo)."""

    created_person: str | None = None


@dataclass(frozen=True)
class Decision:
    id: int
    kind: str
    summary: str
    faces: int
    created_at: datetime
    undone: bool


@dataclass(frozen=True)
class UndoResult:
    decision: Decision
    faces_restored: int


def _faces_state(session: Session, face_ids: Sequence[int]) -> list[list[Any]]:
    rows: list[list[Any]] = []
    ids = sorted(set(face_ids))
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        found = session.execute(
            select(FaceInstance.id, *(getattr(FaceInstance, c) for c in _FACE_COLUMNS))
            .where(FaceInstance.id.in_(chunk))
            .order_by(FaceInstance.id)
        ).all()
        rows += [[r[0], r[1], r[2], r[3], r[4], bool(r[5]), bool(r[6])] for r in found]
    return rows


def _rejections(session: Session, face_ids: Sequence[int], person_ids: Collection[str]) -> list[list[Any]]:
    return sorted(
        [r.face_id, r.person_id]
        for r in session.execute(
            select(FaceRejection.face_id, FaceRejection.person_id).where(_rejection_scope(face_ids, person_ids))
        )
    )


def _rejection_scope(face_ids: Sequence[int], person_ids: Collection[str]) -> Any:
    parts = [
        FaceRejection.face_id.in_(list(face_ids[start : start + _CHUNK])) for start in range(0, len(face_ids), _CHUNK)
    ]
    if person_ids:
        parts.append(FaceRejection.person_id.in_(sorted(person_ids)))
    return or_(*parts) if parts else FaceRejection.face_id == -1


def _persons(session: Session, person_ids: Collection[str]) -> list[list[Any]]:
    rows = session.execute(
        select(Person.id, Person.name, Person.status, Person.merged_into).where(Person.id.in_(sorted(person_ids)))
    ).all()
    return sorted([r.id, r.name, r.status, r.merged_into] for r in rows)


def _snapshot(session: Session, face_ids: Sequence[int], person_ids: Collection[str]) -> dict[str, Any]:
    return {
        "faces": _faces_state(session, face_ids),
        "rejections": _rejections(session, face_ids, person_ids),
        "persons": _persons(session, person_ids),
    }


@contextmanager
def recorded(
    library: Library,
    kind: DecisionKind,
    summary: str,
    *,
    faces: Sequence[int] = (),
    persons: Collection[str] = (),
) -> Iterator[Recording]:
    """Record the decision the block makes: the state of `faces` (and the rejections and rows of `persons`)
    before and after it. Nothing is recorded when the block raises."""
    with library.db.session() as session:
        before = _snapshot(session, faces, persons)
    recording = Recording()
    yield recording
    with library.db.session() as session:
        after = _faces_state(session, faces)
        session.add(
            FaceAssignmentEvent(
                action=DECISION_ACTION,
                source="user",
                new_person_id=recording.created_person,
                details={
                    "kind": str(kind),
                    "summary": summary,
                    "before": before,
                    "after": after,
                    "persons": sorted(persons),
                    "created_person": recording.created_person,
                },
            )
        )


def faces_of_cluster(db: Database, cluster_id: str) -> list[int]:
    with db.session() as session:
        return list(session.scalars(select(FaceInstance.id).where(FaceInstance.cluster_id == cluster_id)))


def faces_of_person(db: Database, person_id: str) -> list[int]:
    with db.session() as session:
        return list(session.scalars(select(FaceInstance.id).where(FaceInstance.person_id == person_id)))


# --- listing and undoing -------------------------------------------------------------------------------


def _undone_ids(session: Session, since: int) -> set[int]:
    rows = session.scalars(
        select(FaceAssignmentEvent.details).where(
            FaceAssignmentEvent.action == UNDO_ACTION,
            FaceAssignmentEvent.face_id.is_(None),
            FaceAssignmentEvent.id > since,
        )
    )
    return {int(d["decision"]) for d in rows if d and "decision" in d}


def _recent(session: Session, limit: int) -> list[tuple[FaceAssignmentEvent, bool]]:
    events = list(
        session.scalars(
            select(FaceAssignmentEvent)
            .where(FaceAssignmentEvent.action == DECISION_ACTION, FaceAssignmentEvent.face_id.is_(None))
            .order_by(FaceAssignmentEvent.id.desc())
            .limit(limit)
        )
    )
    undone = _undone_ids(session, min((e.id for e in events), default=0) - 1)
    return [(e, e.id in undone) for e in events]


def _decision(event: FaceAssignmentEvent, undone: bool) -> Decision:
    details = event.details or {}
    return Decision(
        id=event.id,
        kind=str(details.get("kind", "")),
        summary=str(details.get("summary", "")),
        faces=len(details.get("after", [])),
        created_at=event.created_at,
        undone=undone,
    )


def recent_decisions(db: Database, *, limit: int = 10) -> list[Decision]:
    """The latest decisions made through the API, newest first, each saying whether it was undone."""
    with db.session() as session:
        return [_decision(e, undone) for e, undone in _recent(session, limit)]


def undo_last(library: Library, *, expected: int | None = None) -> UndoResult:
    """Undo the newest decision not undone yet. `expected`: the decision the page shows as "undo"; if the newest
    is another one now (a second tab decided meanwhile), Conflict and nothing changes."""
    with user_edit(library) as session:
        session.execute(update(FaceInstance).where(FaceInstance.id == -1).values(id=FaceInstance.id))  # write lock
        pending = [e for e, undone in _recent(session, _RECENT) if not undone]
        if not pending:
            raise NotFound("decision", "to undo", "there is no decision left to undo")
        event = pending[0]
        if expected is not None and event.id != expected:
            raise Conflict(f"the latest decision is now #{event.id}, not #{expected}; reload the page")
        details = event.details or {}
        before = details["before"]
        after = {row[0]: row for row in details["after"]}
        current = {row[0]: row for row in _faces_state(session, list(after))}
        changed = sorted(f for f, row in after.items() if current.get(f) != row)
        if changed:
            raise Conflict(
                f"{len(changed)} of this decision's faces changed since (e.g. face {changed[0]}: a clustering run "
                "or another edit); it can no longer be undone exactly"
            )
        restored = _restore_faces(session, before["faces"], current)
        _restore_rejections(session, before, details.get("persons", []))
        _restore_persons(session, before["persons"])
        _remove_created_person(session, details.get("created_person"))
        session.add(
            FaceAssignmentEvent(
                action=UNDO_ACTION,
                source="user",
                details={"decision": event.id, "kind": details.get("kind"), "summary": details.get("summary")},
            )
        )
        decision = _decision(event, True)
    return UndoResult(decision, restored)


def _restore_faces(session: Session, rows: list[list[Any]], current: dict[int, list[Any]]) -> int:
    moved = [row for row in rows if current.get(row[0]) is not None and current[row[0]] != row]
    if not moved:
        return 0
    now = utcnow()
    session.execute(
        update(FaceInstance),
        [{"id": r[0], **dict(zip(_FACE_COLUMNS, r[1:], strict=True)), "updated_at": now} for r in moved],
    )
    session.execute(
        insert(FaceAssignmentEvent),
        [
            {
                "face_id": r[0],
                "action": UNDO_ACTION,
                "source": "user",
                "old_person_id": current[r[0]][1],
                "new_person_id": r[1],
                "old_cluster_id": current[r[0]][2],
                "new_cluster_id": r[2],
                "confidence": r[4],
                "created_at": now,
            }
            for r in moved
        ],
    )
    for r in moved:
        note_moved(session, [r[0]], r[1], r[2])
    return len(moved)


def _restore_rejections(session: Session, before: dict[str, Any], persons: list[str]) -> None:
    face_ids = [row[0] for row in before["faces"]]
    session.execute(delete(FaceRejection).where(_rejection_scope(face_ids, persons)))
    existing = set(session.scalars(select(Person.id).where(Person.id.in_({p for _, p in before["rejections"]}))))
    rows = [{"face_id": f, "person_id": p} for f, p in before["rejections"] if p in existing]
    if rows:
        session.execute(insert(FaceRejection), rows)


def _restore_persons(session: Session, rows: list[list[Any]]) -> None:
    for person_id, name, status, merged_into in rows:
        session.execute(
            update(Person).where(Person.id == person_id).values(name=name, status=status, merged_into=merged_into)
        )


def _remove_created_person(session: Session, person_id: str | None) -> None:
    """A person the decision created goes again, unless some face (or another decision since) uses them."""
    if not person_id:
        return
    used = session.scalar(select(FaceInstance.id).where(FaceInstance.person_id == person_id).limit(1))
    merged = session.scalar(select(Person.id).where(Person.merged_into == person_id).limit(1))
    if used is not None or merged is not None:
        return
    session.execute(delete(FaceRejection).where(FaceRejection.person_id == person_id))
    session.execute(delete(PersonPrototype).where(PersonPrototype.person_id == person_id))
    session.execute(delete(Person).where(Person.id == person_id))
