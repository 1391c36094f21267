"""The registry of embedding spaces: which raw model embedded the faces, which space is active."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from face_pipeline.domain.assignment import thresholds_for_space
from face_pipeline.errors import UserFacingError
from face_pipeline.settings import Settings
from face_pipeline.storage.db import Database
from face_pipeline.storage.models import EmbeddingSpaceRow, FaceInstance, SpaceStatus, utcnow
from face_pipeline.vision.model_packs import ModelChoice, choice_for_space
from face_pipeline.vision.types import EmbeddingSpaceInfo, FaceEmbedder

log = logging.getLogger(__name__)


class EmbeddingSpaceMismatch(UserFacingError, RuntimeError):
    """The library's faces were embedded by another model than the one configured now."""


def register_raw_space(
    session: Session, info: EmbeddingSpaceInfo, *, model_facts: dict[str, Any] | None = None
) -> EmbeddingSpaceRow:
    """Record the detection model's space; it becomes active when no space is active yet.

    Faces of two raw spaces never share a library: their vectors are not comparable. `model_facts`
    (vision.embedders.describe_embedder: model, providers, licence, ...) are kept on the row for `faces stats`.
    """
    other = session.execute(
        select(FaceInstance.embedding_space, func.count())
        .where(FaceInstance.embedding_space != info.name)
        .group_by(FaceInstance.embedding_space)
    ).first()
    if other is not None:
        raise EmbeddingSpaceMismatch(
            f"the library's {other[1]} faces were embedded with '{other[0]}', but the configured model gives "
            f"'{info.name}'; leave FACE_EMBEDDER=auto (it keeps the library's model), or move the library "
            f"to the new model with `faces reembed --model {choice_for_space(info.name)}`"
        )
    row = session.scalar(select(EmbeddingSpaceRow).where(EmbeddingSpaceRow.name == info.name))
    if row is None:
        defaults = thresholds_for_space(info.name)
        row = EmbeddingSpaceRow(
            name=info.name,
            kind="raw",
            model_name=info.model_name,
            dim=info.dim,
            person_threshold=defaults.threshold,
            person_margin=defaults.margin,
            cluster_eps=defaults.cluster_eps,
            status=SpaceStatus.CANDIDATE,
        )
        session.add(row)
        session.flush()
    if model_facts is not None:
        row.metrics = {**(row.metrics or {}), "model": model_facts}
    if active_space(session) is None:
        row.status = SpaceStatus.ACTIVE
        row.activated_at = utcnow()
    return row


def active_space(session: Session) -> EmbeddingSpaceRow | None:
    return session.scalar(select(EmbeddingSpaceRow).where(EmbeddingSpaceRow.status == SpaceStatus.ACTIVE))


def library_raw_space(session: Session) -> str | None:
    """The raw model space the library's faces are in (the active one, or the base of an active projection)."""
    row = active_space(session)
    if row is not None:
        return row.name if row.kind == "raw" else row.base_space
    return session.scalar(select(FaceInstance.embedding_space).limit(1))


def embedder_for_library(settings: Settings, db: Database) -> FaceEmbedder:
    """The face model new photos must go through: the library's own, so every vector stays comparable.

    FACE_EMBEDDER=auto on an existing library keeps its model (and says so when a better one is installed);
    an explicit FACE_EMBEDDER naming another model is refused by `register_raw_space` with the command that
    moves the library over (`faces reembed`). A new library gets whatever FACE_EMBEDDER picks.
    """
    from face_pipeline.vision.embedders import create_embedder

    with db.session() as session:
        space = library_raw_space(session)
    if space is None or settings.embedder != ModelChoice.AUTO:
        return create_embedder(settings)
    library_model = choice_for_space(space)
    embedder = create_embedder(settings, library_model)
    if library_model is ModelChoice.DLIB:
        log.info(
            "the library's faces are in %s: FACE_EMBEDDER=auto keeps dlib; `faces reembed --model buffalo_s` "
            "moves the library (and every name on it) to InsightFace",
            space,
        )
    return embedder
