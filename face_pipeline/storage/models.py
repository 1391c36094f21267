"""SQL tables: the source of truth for photos, faces, people, labels, assignments and model versions.

Vectors live in the vector store (one collection per embedding space) and can be rebuilt from these
rows plus the model; only person prototypes keep their vectors here, since they are few and derived.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_uuid() -> str:
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class ImageStatus(StrEnum):
    PENDING = "pending"  # new or changed: waiting for detection
    DONE = "done"  # faces detected (possibly zero)
    SKIPPED = "skipped"  # could not be read; skip_reason says why
    DUPLICATE = "duplicate"  # same content as another image (duplicate_of)
    MISSING = "missing"  # was catalogued, no longer on disk; faces and labels kept


class AssignmentSource(StrEnum):
    USER = "user"
    SUPERVISED = "supervised"
    UNSUPERVISED = "unsupervised"
    NOISE = "noise"


class SpaceKind(StrEnum):
    RAW = "raw"  # a face model's own output
    PROJECTION = "projection"  # a trained head applied to a raw space's vectors


class SpaceStatus(StrEnum):
    ACTIVE = "active"  # the space assignment and clustering read
    CANDIDATE = "candidate"  # trained, being regenerated or awaiting switch
    REJECTED = "rejected"  # did not beat the raw space on validation
    RETIRED = "retired"  # was active once


class Image(Base):
    __tablename__ = "images"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(Text, unique=True)
    content_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    pixel_hash: Mapped[str | None] = mapped_column(String(64))  # of the decoded pixels, set at detection
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    mtime: Mapped[float] = mapped_column(Float)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default=ImageStatus.PENDING, index=True)
    skip_reason: Mapped[str | None] = mapped_column(Text)
    duplicate_of: Mapped[int | None] = mapped_column(ForeignKey("images.id", ondelete="SET NULL"))
    face_count: Mapped[int | None] = mapped_column(Integer)
    embedding_space: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    processed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class PersonStatus(StrEnum):
    ACTIVE = "active"
    MERGED = "merged"  # merged into another person (merged_into); their faces moved there


class Person(Base):
    __tablename__ = "persons"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_uuid)
    name: Mapped[str] = mapped_column(String(200), index=True)
    status: Mapped[str] = mapped_column(String(16), default=PersonStatus.ACTIVE)
    merged_into: Mapped[str | None] = mapped_column(ForeignKey("persons.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class FaceInstance(Base):
    __tablename__ = "face_instances"
    __table_args__ = (
        Index("ix_face_instances_person_confirmed", "person_id", "user_confirmed"),
        Index("ix_face_instances_space", "embedding_space"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    bbox_x: Mapped[int] = mapped_column(Integer)
    bbox_y: Mapped[int] = mapped_column(Integer)
    bbox_w: Mapped[int] = mapped_column(Integer)
    bbox_h: Mapped[int] = mapped_column(Integer)
    landmarks: Mapped[list[Any] | None] = mapped_column(JSON)
    detection_score: Mapped[float] = mapped_column(Float)
    quality: Mapped[float | None] = mapped_column(Float)
    embedding_space: Mapped[str] = mapped_column(String(128))
    person_id: Mapped[str | None] = mapped_column(ForeignKey("persons.id", ondelete="SET NULL"))
    cluster_id: Mapped[str | None] = mapped_column(String(80), index=True)
    assignment_source: Mapped[str | None] = mapped_column(String(16))
    confidence: Mapped[float | None] = mapped_column(Float)
    user_confirmed: Mapped[bool] = mapped_column(Boolean, default=False)
    # "ignore" (a stranger, a poster): out of the review lists and of automatic assignment and clustering
    ignored: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class FaceRejection(Base):
    """A user's "not this person": the face is never assigned to that person again."""

    __tablename__ = "face_rejections"

    face_id: Mapped[int] = mapped_column(ForeignKey("face_instances.id", ondelete="CASCADE"), primary_key=True)
    person_id: Mapped[str] = mapped_column(ForeignKey("persons.id", ondelete="CASCADE"), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class PersonPrototype(Base):
    __tablename__ = "person_prototypes"
    __table_args__ = (Index("ix_person_prototypes_space_person", "embedding_space", "person_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    person_id: Mapped[str] = mapped_column(ForeignKey("persons.id", ondelete="CASCADE"))
    embedding_space: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))  # centroid | exemplar
    face_id: Mapped[int | None] = mapped_column(ForeignKey("face_instances.id", ondelete="SET NULL"))
    vector: Mapped[bytes] = mapped_column(LargeBinary)  # float32, L2-normalised
    face_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class FaceAssignmentEvent(Base):
    """Audit log: one row per change of a face's person or cluster, by a user or an automatic run."""

    __tablename__ = "face_assignment_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    face_id: Mapped[int | None] = mapped_column(ForeignKey("face_instances.id", ondelete="SET NULL"), index=True)
    action: Mapped[str] = mapped_column(String(32))  # label | reject | unassign | merge | assign | cluster ...
    source: Mapped[str] = mapped_column(String(16))  # user | supervised | unsupervised | noise | system
    old_person_id: Mapped[str | None] = mapped_column(String(32))
    new_person_id: Mapped[str | None] = mapped_column(String(32))
    old_cluster_id: Mapped[str | None] = mapped_column(String(80))
    new_cluster_id: Mapped[str | None] = mapped_column(String(80))
    confidence: Mapped[float | None] = mapped_column(Float)
    run_id: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


class EmbeddingSpaceRow(Base):
    """Registry of embedding spaces: raw model outputs and trained projections of them."""

    __tablename__ = "embedding_spaces"
    __table_args__ = (UniqueConstraint("name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))  # also the vector-store collection name
    kind: Mapped[str] = mapped_column(String(16))  # SpaceKind
    model_name: Mapped[str] = mapped_column(String(128))
    dim: Mapped[int] = mapped_column(Integer)
    base_space: Mapped[str | None] = mapped_column(String(128))
    checkpoint_path: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default=SpaceStatus.CANDIDATE)
    person_threshold: Mapped[float | None] = mapped_column(Float)
    person_margin: Mapped[float | None] = mapped_column(Float)
    cluster_eps: Mapped[float | None] = mapped_column(Float)  # cosine distance that links two faces
    label_count: Mapped[int | None] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    activated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class PipelineState(Base):
    """Small durable counters and cursors (e.g. the next never-used unknown cluster number)."""

    __tablename__ = "pipeline_state"

    key: Mapped[str] = mapped_column(String(80), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class ReembedStatus(StrEnum):
    STAGING = "staging"  # photos are being detected and embedded with the new model; the old space serves
    SWITCHED = "switched"  # the library moved over in one transaction; staging data may still need removing
    FINISHED = "finished"  # switched and cleaned up
    ABANDONED = "abandoned"  # replaced by a run to another model before it switched; its staging data is gone


class ReembedRun(Base):
    """One move of the library to another face model (`faces reembed`): staging, then one switch."""

    __tablename__ = "reembed_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source_space: Mapped[str] = mapped_column(String(128))
    target_space: Mapped[str] = mapped_column(String(128))
    target_model: Mapped[str] = mapped_column(String(32))  # the ModelChoice that produces target_space
    dim: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default=ReembedStatus.STAGING, index=True)
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # the switch's figures and the decisions it lost
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    switched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ReembedStagedImage(Base):
    """A photo detected again by a re-embedding run: the resume point. Stale once the photo's content changes."""

    __tablename__ = "reembed_staged_images"

    run_id: Mapped[int] = mapped_column(ForeignKey("reembed_runs.id", ondelete="CASCADE"), primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    content_hash: Mapped[str | None] = mapped_column(String(64))  # the image's hash when it was staged
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    face_count: Mapped[int] = mapped_column(Integer, default=0)
    skip_reason: Mapped[str | None] = mapped_column(Text)  # could not be detected again (file gone, unreadable)
    staged_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ReembedStagedFace(Base):
    """A face the new model found; its vector sits in the run's staging collection under this row's id."""

    __tablename__ = "reembed_staged_faces"
    __table_args__ = (Index("ix_reembed_staged_faces_run_image", "run_id", "image_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("reembed_runs.id", ondelete="CASCADE"))
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    bbox_x: Mapped[int] = mapped_column(Integer)
    bbox_y: Mapped[int] = mapped_column(Integer)
    bbox_w: Mapped[int] = mapped_column(Integer)
    bbox_h: Mapped[int] = mapped_column(Integer)
    landmarks: Mapped[list[Any] | None] = mapped_column(JSON)
    detection_score: Mapped[float] = mapped_column(Float)
    quality: Mapped[float | None] = mapped_column(Float)
    face_id: Mapped[int | None] = mapped_column(Integer)  # the face_instances row it became at the switch
