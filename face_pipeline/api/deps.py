"""Dependencies as `Annotated` aliases: the library (settings, database, vector store), typed path and query
parameters, write access."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Query, Request

from face_pipeline.api.schemas import PERSON_ID_PATTERN
from face_pipeline.domain.naming import CLUSTER_ID_FORMS, CLUSTER_ID_PATTERN, PERSON_PREFIX, unknown_cluster_id
from face_pipeline.services.browse import MAX_FACE_ID, ClusterType
from face_pipeline.services.library import Library
from face_pipeline.services.singletons import GuessCache
from face_pipeline.services.vector_cache import FaceVectors
from face_pipeline.settings import Settings
from face_pipeline.storage.db import Database

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def get_library(request: Request) -> Library:
    library: Library = request.app.state.library
    return library


def get_vectors(request: Request) -> FaceVectors:
    """The server's in-memory face vectors (services/vector_cache.py), shared by suggestions and singletons."""
    guesses: GuessCache = request.app.state.guesses
    return guesses.vectors


def get_guesses(request: Request) -> GuessCache:
    guesses: GuessCache = request.app.state.guesses
    return guesses


def get_db(library: Annotated[Library, Depends(get_library)]) -> Database:
    return library.db


def get_settings(library: Annotated[Library, Depends(get_library)]) -> Settings:
    return library.settings


LibraryDep = Annotated[Library, Depends(get_library)]
DatabaseDep = Annotated[Database, Depends(get_db)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
VectorsDep = Annotated[FaceVectors, Depends(get_vectors)]
GuessesDep = Annotated[GuessCache, Depends(get_guesses)]

# Bounded ids: a face id past the 32-bit column (or an int64) is a 422 here, never an overflow in SQL.
FaceIdPath = Annotated[int, Path(ge=1, le=MAX_FACE_ID, description="A face id.")]
ClusterIdPath = Annotated[
    str,
    Path(
        pattern=CLUSTER_ID_PATTERN,
        max_length=80,
        description=f"{CLUSTER_ID_FORMS}.",
        examples=[unknown_cluster_id(5)],
    ),
]
PersonIdPath = Annotated[
    str, Path(pattern=PERSON_ID_PATTERN, description=f"`<uuid hex>` or `{PERSON_PREFIX}<uuid hex>`.")
]
Limit = Annotated[int, Query(ge=1, le=500, description="Page size.")]
Offset = Annotated[int, Query(ge=0, le=MAX_FACE_ID, description="Items to skip.")]
ClusterTypeQuery = Annotated[ClusterType | None, Query(alias="type", description="Only clusters of this type.")]


def check_write_access(request: Request, settings: SettingsDep) -> None:
    """Guard every write: a bearer token when FACE_API_TOKEN is set, and no cross-origin browser writes.

    The origin check matters even without a token: any web page can make the browser POST a form to
    127.0.0.1, and a form post carries no JSON content type that would force a CORS preflight.
    """
    if request.method not in WRITE_METHODS:
        return
    origin = request.headers.get("origin")
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    if origin is not None and origin != own and origin not in settings.api_cors_origins:
        raise HTTPException(403, f"writes from the origin {origin!r} are not allowed (FACE_API_CORS_ORIGINS)")
    if settings.api_token is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    expected = settings.api_token.get_secret_value()
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise HTTPException(
            401, "this API needs 'Authorization: Bearer <FACE_API_TOKEN>' to write", {"WWW-Authenticate": "Bearer"}
        )


WriteAccess = Depends(check_write_access)
