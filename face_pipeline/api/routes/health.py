"""/healthz: is the service up and does its database answer."""

from __future__ import annotations

import logging

from fastapi import APIRouter, HTTPException
from sqlalchemy.exc import SQLAlchemyError

from face_pipeline.api.deps import DatabaseDep
from face_pipeline.api.schemas import ErrorPublic, HealthPublic
from face_pipeline.services import browse

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)


@router.get("/healthz", responses={503: {"model": ErrorPublic, "description": "The database does not answer."}})
def healthz(db: DatabaseDep) -> HealthPublic:
    try:
        browse.ping(db)
    except SQLAlchemyError as exc:
        log.warning("health check: database unavailable: %s", exc)
        raise HTTPException(503, "database unavailable") from None
    return HealthPublic(status="ok", database="ok")
