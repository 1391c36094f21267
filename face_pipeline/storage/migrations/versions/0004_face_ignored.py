"""face ignored: a face the user marked "ignore" (a stranger in the background, a poster, a statue)

`face_instances.ignored` is true for such a face: it is left out of the review page's lists and suggestions
and out of automatic assignment and clustering, until the user takes the mark back. Existing faces: false.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("face_instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ignored", sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("face_instances", schema=None) as batch_op:
        batch_op.drop_column("ignored")
