"""The one place service errors become HTTP statuses, and the error responses routes document."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from face_pipeline.api.schemas import ErrorPublic
from face_pipeline.errors import Conflict, NotFound, UserFacingError
from face_pipeline.storage.vectors import VectorStoreError, VectorStoreLocked

VECTORS_BUSY = "a pipeline run holds the vector store; try again shortly"
VECTORS_BROKEN = "the vector store could not answer; see the server log"
log = logging.getLogger(__name__)


def _status(exc: UserFacingError) -> int:
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, Conflict):
        return 409
    if isinstance(exc, VectorStoreError):
        return 503
    return 422  # InvalidInput and any other user-facing error: the request itself cannot be done


async def user_facing_error(request: Request, exc: Exception) -> JSONResponse:
    """The one handler: every error a user can fix derives from UserFacingError; the subclass picks the status."""
    if not isinstance(exc, UserFacingError):  # registered for UserFacingError only
        raise exc
    status = _status(exc)
    if isinstance(exc, VectorStoreLocked):
        return JSONResponse({"detail": VECTORS_BUSY}, status_code=503, headers={"Retry-After": "5"})
    if status == 503:
        # Not the client's fault, and the message names server paths: keep it in the log.
        log.error("vector store error on %s %s: %s", request.method, request.url.path, exc)
        return JSONResponse({"detail": VECTORS_BROKEN}, status_code=503)
    if status == 422:
        # The same shape as FastAPI's own validation errors, so clients read every 422 one way.
        body: Any = [{"loc": ["body"], "msg": str(exc), "type": "invalid_input"}]
        return JSONResponse({"detail": body}, status_code=422)
    return JSONResponse({"detail": str(exc)}, status_code=status)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(UserFacingError, user_facing_error)


Responses = dict[int | str, dict[str, Any]]  # FastAPI's `responses=` documentation of extra statuses


def _doc(description: str) -> dict[str, Any]:
    return {"model": ErrorPublic, "description": description}


NOT_FOUND: Responses = {404: _doc("No such face, cluster or person.")}
CONFLICT: Responses = {409: _doc("The state changed (stale cluster) or a name is ambiguous.")}
WRITE: Responses = {
    400: _doc("The body could not be read as JSON text (e.g. it is not UTF-8)."),
    401: _doc("FACE_API_TOKEN is set and the request has no valid 'Authorization: Bearer' header."),
    403: _doc("A browser page from another origin tried to write."),
}
BUSY: Responses = {503: _doc(f"{VECTORS_BUSY} (or: {VECTORS_BROKEN})")}
