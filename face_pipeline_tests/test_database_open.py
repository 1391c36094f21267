"""Opening the database: the cheap schema check agrees with Alembic, an old schema is still upgraded, and a
database that cannot be written is one line (storage/db.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from sqlalchemy import text

from face_pipeline.storage.db import Database, alembic_config, head_revisions, schema_revisions

NOBODY = 65534


def test_head_read_from_the_files_is_alembics_head(tmp_path: Path):
    from alembic.script import ScriptDirectory

    db = Database(f"sqlite:///{tmp_path / 'f.db'}")
    assert head_revisions() == frozenset(ScriptDirectory.from_config(alembic_config(db.engine)).get_heads())
    assert schema_revisions(db.engine) == head_revisions()
    db.dispose()


def test_an_old_schema_is_upgraded_on_open_and_a_current_one_loads_no_alembic(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'f.db'}"
    Database(url).dispose()
    db = Database(url, upgrade=False)
    with db.engine.begin() as connection:  # as a database left at revision 0003 would be
        for table in ("photo_partition_members", "photo_partitions", "staged_vectors"):  # 0005's
            connection.execute(text(f"DROP TABLE {table}"))
        connection.execute(text("ALTER TABLE face_instances DROP COLUMN ignored"))  # 0004's
        connection.execute(text("UPDATE alembic_version SET version_num = '0003'"))
    assert schema_revisions(db.engine) == frozenset({"0003"})
    db.dispose()

    reopened = Database(url)
    assert schema_revisions(reopened.engine) == head_revisions()
    with reopened.engine.connect() as connection:
        columns = {row[1] for row in connection.execute(text("PRAGMA table_info(face_instances)"))}
    assert "ignored" in columns
    reopened.dispose()

    probe = "import sys; from face_pipeline.storage.db import Database; Database(sys.argv[1]).dispose(); " + (
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic'))"
    )
    done = subprocess.run([sys.executable, "-c", probe, url], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"


_OPEN = """
import sys
from face_pipeline.errors import UserFacingError
from face_pipeline.storage.db import Database
try:
    Database(sys.argv[1]).dispose()
except UserFacingError as exc:
    print(f"error: {exc}")
    sys.exit(2)
print("opened")
"""


@pytest.mark.parametrize("what", ["folder", "file"])
def test_a_read_only_database_is_one_line(what: str):
    """A data folder (or database file) the user may not write: one line naming it, not a traceback from the
    schema lock file or from SQLite's PRAGMA journal_mode=WAL. Run as an unprivileged user: root writes anyway."""
    as_user: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root, which writes whatever the mode says, and setpriv is not installed")
        as_user = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    root = Path(tempfile.mkdtemp(prefix="fp_read_only_"))
    try:
        root.chmod(0o777)
        data = root / "data"
        data.mkdir()
        database = data / "face_pipeline.db"
        url = f"sqlite:///{database}"
        run = [*as_user, sys.executable, "-c", _OPEN, url]
        if as_user:
            os.chown(data, NOBODY, NOBODY)
        first = subprocess.run(run, capture_output=True, text=True, timeout=120)
        assert first.stdout.strip() == "opened", first.stderr
        if what == "folder":
            for name in data.glob("face_pipeline.db-*"):
                name.unlink()  # none after a clean close; SQLite must create its -wal and -shm files again
            data.chmod(0o555)
        else:
            for name in data.iterdir():
                name.chmod(0o444)
        done = subprocess.run(run, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stdout + done.stderr
        assert done.stderr == "" and done.stdout.count("\n") == 1, done.stdout + done.stderr
        assert done.stdout.startswith(f"error: cannot write the database {database} ("), done.stdout
        assert "FACE_DATA_DIR" in done.stdout
    finally:
        for folder in (root, root / "data"):
            if folder.exists():
                folder.chmod(0o755)
        shutil.rmtree(root)
