"""Engine, sessions and schema upgrades (Alembic) for SQLite and PostgreSQL.

Opening a database checks its schema cheaply (the alembic_version row against the newest revision named in
migrations/versions, read as text) and loads Alembic only when an upgrade is due: an everyday command that
opens the library pays a query, not Alembic's start-up (~0.3 s). A database that cannot be written (read-only
file or folder) is one `DatabaseNotWritable` line, not a traceback.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from face_pipeline.errors import UserFacingError

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)
MIGRATIONS_DIR = Path(__file__).parent / "migrations"
VERSIONS_DIR = MIGRATIONS_DIR / "versions"
# SQLite's words for a database it may not write (a read-only file, or a folder where it cannot make its
# journal files).
_READ_ONLY_MESSAGES = ("readonly database", "unable to open database file", "read-only file system")


class DatabaseNotWritable(UserFacingError):
    """The database (or the folder holding it) refuses writes: a read-only file, folder or file system."""


def _not_writable(where: str, why: str) -> DatabaseNotWritable:
    return DatabaseNotWritable(
        f"cannot write the database {where} ({why}); make FACE_DATA_DIR and the files in it writable by this "
        "user, or point FACE_DATA_DIR / FACE_DATABASE_URL elsewhere"
    )


def _first_line(exc: DBAPIError) -> str:
    return str(exc.orig if exc.orig is not None else exc).splitlines()[0]


def _is_read_only(exc: DBAPIError) -> bool:
    return any(words in _first_line(exc).lower() for words in _READ_ONLY_MESSAGES)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the API read while a run writes; busy_timeout waits instead of failing on a short lock.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        database = url.split("///", 1)[-1]
        if database and database != ":memory:":
            try:
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            except PermissionError as exc:
                raise _not_writable(database, f"cannot create {exc.filename}: permission denied") from None
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


def alembic_config(engine: Engine) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    return config


_SCHEMA_LOCK_ID = 0x66616365  # PostgreSQL advisory lock key ("face")


_REVISION = re.compile(r"^revision(?:\s*:\s*str)?\s*=\s*['\"]([^'\"]+)['\"]", re.MULTILINE)
_DOWN_REVISION = re.compile(r"^down_revision(?:\s*:[^=]+)?=\s*(.+)$", re.MULTILINE)


@cache
def head_revisions() -> frozenset[str]:
    """The newest revision(s) of migrations/versions, read from the files' text (no Alembic import): every
    revision that no other names as its down_revision."""
    revisions, parents = set(), set()
    for script in VERSIONS_DIR.glob("*.py"):
        source = script.read_text(encoding="utf-8")
        revision, down = _REVISION.search(source), _DOWN_REVISION.search(source)
        if revision is None or down is None:
            raise RuntimeError(f"{script} has no revision / down_revision line Alembic would read")
        revisions.add(revision.group(1))
        parents.update(re.findall(r"['\"]([^'\"]+)['\"]", down.group(1)))
    return frozenset(revisions - parents)


def schema_revisions(engine: Engine) -> frozenset[str] | None:
    """The revisions the database records (its alembic_version rows); None when it has no such table yet."""
    try:
        with engine.connect() as connection:
            return frozenset(connection.scalars(text("SELECT version_num FROM alembic_version")))
    except DBAPIError as exc:
        if _is_read_only(exc):
            raise
        return None  # no alembic_version table: a new database (any other fault shows again in the upgrade)


def upgrade_schema(engine: Engine) -> None:
    """Bring the schema to the newest revision; a no-op (one query, no Alembic) when it is already there.

    Two processes starting on a brand-new database (a run's steps, the API) must not both create the
    tables: PostgreSQL serialises them with an advisory lock, SQLite with a lock file beside the database.
    """
    if schema_revisions(engine) == head_revisions():
        return
    from alembic import command

    with _schema_lock(engine), engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_ID})
        config = alembic_config(engine)
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


@contextmanager
def _schema_lock(engine: Engine) -> Iterator[None]:
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:":
        yield
        return
    try:
        handle = open(f"{database}.schema-lock", "a+b")  # noqa: SIM115  (closed below)
    except PermissionError as exc:
        raise _not_writable(database, f"cannot open {exc.filename}: permission denied") from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Database:
    """One engine and session factory per database URL; the schema is upgraded on first use."""

    def __init__(self, url: str, *, upgrade: bool = True) -> None:
        self.url = url
        self.engine = make_engine(url)
        if upgrade:
            self._check_file_writable()
            with self._writable():
                upgrade_schema(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: commits on success, rolls back on any error."""
        with self._sessions() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def _check_file_writable(self) -> None:
        # SQLite opens a read-only file read-only without a word and fails at the first write, mid-command.
        database = self.engine.url.database if self.engine.dialect.name == "sqlite" else None
        if database and database != ":memory:" and os.path.exists(database) and not os.access(database, os.W_OK):
            raise _not_writable(database, "the file is read-only")

    @contextmanager
    def _writable(self) -> Iterator[None]:
        try:
            yield
        except OperationalError as exc:
            if not _is_read_only(exc):
                raise
            raise _not_writable(self.engine.url.database or self.url, _first_line(exc)) from exc

    def dispose(self) -> None:
        self.engine.dispose()
