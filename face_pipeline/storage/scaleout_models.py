"""Tables of the scale-out path (migration 0005): detection partitions and vectors staged by workers."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from face_pipeline.storage.models import Base, utcnow


class PhotoPartition(Base):
    """A group of photos detected as one step (services/partitions.py)."""

    __tablename__ = "photo_partitions"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    grouped_by: Mapped[str] = mapped_column(String(16))  # folder | batch
    folder: Mapped[str | None] = mapped_column(Text)
    photos: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class PhotoPartitionMember(Base):
    """The partition a photo belongs to (at most one; kept when the photo is detected again)."""

    __tablename__ = "photo_partition_members"
    __table_args__ = (Index("ix_photo_partition_members_key", "partition_key"),)

    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    partition_key: Mapped[str] = mapped_column(ForeignKey("photo_partitions.key", ondelete="CASCADE"))


class StagedVector(Base):
    """An embedding a worker could not write to the embedded store itself; vector None: delete the point."""

    __tablename__ = "staged_vectors"
    __table_args__ = (Index("ix_staged_vectors_space_face", "space", "face_id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True)
    space: Mapped[str] = mapped_column(String(128))
    face_id: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
