"""image pixel hash: decide "changed" by decoded pixels, not file bytes

`images.pixel_hash` is the SHA-256 of a photo's decoded RGB pixels (EXIF orientation applied), filled when
its faces are detected. A file whose bytes change but whose pixels do not (a rating, keyword or comment
written into it) keeps its faces and names. Rows from before this revision have none: their first change
is handled as before (detected again), and they get one then.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pixel_hash", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_column("pixel_hash")
