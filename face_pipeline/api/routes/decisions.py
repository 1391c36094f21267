"""/api/v1/decisions: the latest decisions made through the API, and undo."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query

from face_pipeline.api.deps import DatabaseDep, LibraryDep, WriteAccess
from face_pipeline.api.errors import CONFLICT, NOT_FOUND, WRITE
from face_pipeline.api.schemas import DecisionPublic, DecisionsPublic, UndoPublic, UndoRequest
from face_pipeline.services import undo

router = APIRouter(prefix="/decisions", tags=["decisions"], dependencies=[WriteAccess])


@router.get("")
def list_decisions(db: DatabaseDep, limit: Annotated[int, Query(ge=1, le=100)] = 10) -> DecisionsPublic:
    """The latest decisions, newest first; the first one not `undone` is what "undo" takes back."""
    return DecisionsPublic(items=[DecisionPublic.of(d) for d in undo.recent_decisions(db, limit=limit)])


@router.post("/undo", responses=NOT_FOUND | CONFLICT | WRITE)
def undo_last(library: LibraryDep, body: Annotated[UndoRequest | None, Body()] = None) -> UndoPublic:
    """Undo the newest decision not undone yet, restoring the faces, "not this person" marks and names it
    changed exactly. 409 when `decision_id` is not that decision any more, or its faces changed since
    (a clustering run); 404 when nothing is left to undo. The undo is an audit event of its own."""
    result = undo.undo_last(library, expected=body.decision_id if body else None)
    return UndoPublic(undone=DecisionPublic.of(result.decision), faces_restored=result.faces_restored)
