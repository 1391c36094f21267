"""scale-out: detection partitions and staged vectors (FACE_EXECUTOR=celery)

`photo_partitions` names groups of photos detected as one step (by folder or import batch, at most
FACE_PARTITION_SIZE photos each); `photo_partition_members` says which partition a photo belongs to (one at
most). `staged_vectors` is where Celery workers leave embeddings when the vector store is the embedded,
single-process one: the writer step moves them into the store (services/vector_staging.py). A row with no
vector asks the writer to delete that face's point.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "photo_partitions",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("grouped_by", sa.String(length=16), nullable=False),
        sa.Column("folder", sa.Text(), nullable=True),
        sa.Column("photos", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_table(
        "photo_partition_members",
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("partition_key", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["partition_key"], ["photo_partitions.key"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("image_id"),
    )
    with op.batch_alter_table("photo_partition_members", schema=None) as batch_op:
        batch_op.create_index("ix_photo_partition_members_key", ["partition_key"], unique=False)
    op.create_table(
        "staged_vectors",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("space", sa.String(length=128), nullable=False),
        sa.Column("face_id", sa.Integer(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("staged_vectors", schema=None) as batch_op:
        batch_op.create_index("ix_staged_vectors_space_face", ["space", "face_id"], unique=False)


def downgrade() -> None:
    op.drop_table("staged_vectors")
    op.drop_table("photo_partition_members")
    op.drop_table("photo_partitions")
