"""The registry of embedding spaces: which raw model embedded the faces, which space is active."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from face_pipeline.domain.assignment import thresholds_for_space
from face_pipeline.storage.models import EmbeddingSpaceRow, FaceInstance, SpaceStatus, utcnow
from face_pipeline.vision.types import EmbeddingSpaceInfo


class EmbeddingSpaceMismatch(RuntimeError):
    """The library's faces were embedded by another model than the one configured now."""


def register_raw_space(session: Session, info: EmbeddingSpaceInfo) -> EmbeddingSpaceRow:
    """Record the detection model's space; it becomes active when no space is active yet.

    Faces of two raw spaces never share a library: their vectors are not comparable.
    """
    other = session.execute(
        select(FaceInstance.embedding_space, func.count())
        .where(FaceInstance.embedding_space != info.name)
        .group_by(FaceInstance.embedding_space)
    ).first()
    if other is not None:
        raise EmbeddingSpaceMismatch(
            f"the library's {other[1]} faces were embedded with '{other[0]}', but the configured model gives "
            f"'{info.name}'; set FACE_EMBEDDER to the original model, or start a new FACE_DATA_DIR"
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
    if active_space(session) is None:
        row.status = SpaceStatus.ACTIVE
        row.activated_at = utcnow()
    return row


def active_space(session: Session) -> EmbeddingSpaceRow | None:
    return session.scalar(select(EmbeddingSpaceRow).where(EmbeddingSpaceRow.status == SpaceStatus.ACTIVE))
