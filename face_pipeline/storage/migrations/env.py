"""Alembic environment: run against the connection the caller hands over (see storage.db)."""

from alembic import context
from sqlalchemy import Connection

from face_pipeline.storage.models import Base

config = context.config


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    with config.attributes["engine"].begin() as fresh:
        run(fresh)
