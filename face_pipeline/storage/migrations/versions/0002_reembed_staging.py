"""reembed staging: the tables `faces reembed` stages a new face model's detections in

Staged photos (the resume point) and staged faces live beside the live faces until the one-transaction
switch; nothing reads them but services/reembed.py.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 13:39:06.438426
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "reembed_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source_space", sa.String(length=128), nullable=False),
        sa.Column("target_space", sa.String(length=128), nullable=False),
        sa.Column("target_model", sa.String(length=32), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("report", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("switched_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("reembed_runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_reembed_runs_status"), ["status"], unique=False)

    op.create_table(
        "reembed_staged_faces",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("bbox_x", sa.Integer(), nullable=False),
        sa.Column("bbox_y", sa.Integer(), nullable=False),
        sa.Column("bbox_w", sa.Integer(), nullable=False),
        sa.Column("bbox_h", sa.Integer(), nullable=False),
        sa.Column("landmarks", sa.JSON(), nullable=True),
        sa.Column("detection_score", sa.Float(), nullable=False),
        sa.Column("quality", sa.Float(), nullable=True),
        sa.Column("face_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["run_id"], ["reembed_runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("reembed_staged_faces", schema=None) as batch_op:
        batch_op.create_index("ix_reembed_staged_faces_run_image", ["run_id", "image_id"], unique=False)

    op.create_table(
        "reembed_staged_images",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=True),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("face_count", sa.Integer(), nullable=False),
        sa.Column("skip_reason", sa.Text(), nullable=True),
        sa.Column("staged_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["run_id"], ["reembed_runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id", "image_id"),
    )


def downgrade() -> None:
    op.drop_table("reembed_staged_images")
    with op.batch_alter_table("reembed_staged_faces", schema=None) as batch_op:
        batch_op.drop_index("ix_reembed_staged_faces_run_image")

    op.drop_table("reembed_staged_faces")
    with op.batch_alter_table("reembed_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_reembed_runs_status"))

    op.drop_table("reembed_runs")
