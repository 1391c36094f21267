"""One bad path never stops a scan: each kind is recorded with its reason, the scan goes on, and a path that
is fixed (a permission restored, a link repaired, a file renamed) is picked up by the next scan."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from face_pipeline.services.catalog import scan_photos
from face_pipeline.services.library_walk import BAD_NAME
from face_pipeline.storage.db import Database
from face_pipeline.storage.models import Image, ImageStatus

NOBODY = 65534
# The scan as a separate process, as an unprivileged user when the tests run as root (root reads whatever
# the mode says, so chmod 000 only blocks another user). Prints the report, or one line for a user's error.
_SCAN = """
import json, sys
from pathlib import Path
from face_pipeline.errors import UserFacingError
from face_pipeline.services.catalog import scan_photos
from face_pipeline.storage.db import Database
db = Database(sys.argv[1])
try:
    report = scan_photos(db, Path(sys.argv[2]))
except UserFacingError as exc:
    print(f"error: {exc}")
    sys.exit(2)
if len(sys.argv) > 3:  # then make the data folder read-only (as its owner) and scan once more
    db.dispose()
    for name in sorted(Path(sys.argv[3]).iterdir()):
        name.chmod(0o444)
    Path(sys.argv[3]).chmod(0o555)
    try:
        scan_photos(Database(sys.argv[1], upgrade=False), Path(sys.argv[2]))
    except UserFacingError as exc:
        print(f"error: {exc}")
        sys.exit(2)
print(json.dumps(report.as_metadata()))
"""


def _photos(lfw_mini: Path, count: int) -> list[Path]:
    return sorted(lfw_mini.glob("*/*.jpg"))[:count]


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder another user can write (pytest's tmp_path sits under a 0700 folder of this user)."""
    path = Path(tempfile.mkdtemp(prefix="fp_bad_paths_"))
    path.chmod(0o777)
    yield path
    for folder, dirs, _ in os.walk(path):
        for name in dirs:
            os.chmod(os.path.join(folder, name), 0o755)  # so a blocked folder can be removed
    os.chmod(path, 0o755)
    shutil.rmtree(path)


def scan_unprivileged(db_url: str, photos: Path, *extra: str) -> tuple[int, str]:
    as_user: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root, which reads any file whatever its mode, and setpriv is not installed")
        as_user = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    done = subprocess.run(
        [*as_user, sys.executable, "-c", _SCAN, db_url, str(photos), *extra],
        capture_output=True,
        text=True,
        cwd=photos.parent,
        timeout=300,
        check=False,
    )
    assert done.returncode in (0, 2), done.stderr
    return done.returncode, done.stdout.strip().splitlines()[-1]


def _rows(db: Database) -> dict[str, Image]:
    with db.session() as session:
        return {row.path: row for row in session.scalars(select(Image))}


def _bad_library(root: Path, lfw_mini: Path) -> dict[str, str]:
    """Good photos and one of each bad path; returns stored path -> a word its reason must contain."""
    photo, other, third = _photos(lfw_mini, 3)
    (root / "trip").mkdir(parents=True)
    shutil.copy(photo, root / "trip" / "good.jpg")
    shutil.copy(other, root / "trip" / "also-good.jpeg")
    (root / "loop.jpg").symlink_to("loop.jpg")
    (root / "ping.jpg").symlink_to("pong.jpg")
    (root / "pong.jpg").symlink_to("ping.jpg")
    (root / "gone.jpg").symlink_to("nowhere.jpg")
    (root / "trip-link").symlink_to("trip")
    os.mkfifo(root / "pipe.jpg")
    (root / "phone.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 64)
    (root / "camera.cr2").write_bytes(b"II*\x00\x10\x00\x00\x00CR" + b"\x00" * 64)
    raw_root = os.fsencode(root)
    with open(raw_root + b"/caf\xe9.jpg", "wb") as handle:
        handle.write(third.read_bytes())
    os.mkdir(raw_root + b"/d\xff")
    shutil.copy(other, os.fsdecode(raw_root + b"/d\xff/inside.jpg"))
    return {
        f"{root}/loop.jpg": "symbolic link loop",
        f"{root}/ping.jpg": "symbolic link loop",
        f"{root}/pong.jpg": "symbolic link loop",
        f"{root}/gone.jpg": "broken symbolic link",
        f"{root}/trip-link": "symbolic link to a folder",
        f"{root}/pipe.jpg": "not a regular file",
        f"{root}/phone.HEIC": "unsupported format (HEIC)",
        f"{root}/camera.cr2": "unsupported format (CR2)",
        f"{root}/caf\\xe9.jpg": BAD_NAME,
        f"{root}/d\\xff/inside.jpg": BAD_NAME,
    }


def test_every_bad_path_is_recorded_with_its_reason_and_the_scan_goes_on(
    tmp_path: Path, lfw_mini: Path, database_url: str
):
    root = tmp_path / "photos"
    expected = _bad_library(root, lfw_mini)
    db = Database(database_url)

    report = scan_photos(db, root)
    assert (report.files_seen, report.new, report.unusable) == (2, 2, len(expected))
    rows = _rows(db)
    assert rows[f"{root}/trip/good.jpg"].status == ImageStatus.PENDING
    assert rows[f"{root}/trip/also-good.jpeg"].status == ImageStatus.PENDING
    for path, words in expected.items():
        assert rows[path].status == ImageStatus.SKIPPED, path
        assert words in (rows[path].skip_reason or ""), (path, rows[path].skip_reason)
    assert len(rows) == 2 + len(expected)

    again = scan_photos(db, root)  # nothing changed: nothing written, the same reasons counted
    assert (again.new, again.changed, again.missing, again.unusable, again.unchanged) == (0, 0, 0, len(expected), 2)
    assert {p: (r.status, r.skip_reason, r.updated_at) for p, r in _rows(db).items()} == {
        p: (r.status, r.skip_reason, r.updated_at) for p, r in rows.items()
    }


def test_fixed_bad_paths_are_catalogued_and_their_reasons_go(tmp_path: Path, lfw_mini: Path):
    root = tmp_path / "photos"
    _bad_library(root, lfw_mini)
    db = Database(f"sqlite:///{tmp_path / 'f.db'}")
    scan_photos(db, root)

    (root / "loop.jpg").unlink()
    os.rename(os.fsencode(root) + b"/caf\xe9.jpg", root / "cafe.jpg")
    shutil.copy(_photos(lfw_mini, 4)[3], root / "nowhere.jpg")  # the broken link's target appears
    report = scan_photos(db, root)

    rows = _rows(db)
    assert f"{root}/loop.jpg" not in rows and f"{root}/caf\\xe9.jpg" not in rows  # no stale "missing" rows
    assert rows[f"{root}/cafe.jpg"].status == ImageStatus.PENDING
    assert (rows[f"{root}/gone.jpg"].status, rows[f"{root}/gone.jpg"].skip_reason) == (ImageStatus.PENDING, None)
    assert (report.retried, report.missing, report.unusable) == (1, 0, 7)


def test_unreadable_photo_is_retried_once_its_permission_is_fixed_and_a_blocked_folder_keeps_its_rows(
    shared_dir: Path, lfw_mini: Path
):
    root = shared_dir / "photos"
    (root / "private").mkdir(parents=True)
    photos = _photos(lfw_mini, 4)
    shutil.copy(photos[0], root / "open.jpg")
    shutil.copy(photos[1], root / "locked.jpg")
    for photo in photos[2:]:
        shutil.copy(photo, root / "private" / photo.name)
    url = f"sqlite:///{shared_dir / 'faces.db'}"
    assert scan_unprivileged(url, root)[0] == 0
    (root / "locked.jpg").chmod(0o000)
    (root / "private").chmod(0o000)
    os.utime(root / "locked.jpg", ns=(0, 10**18))  # a changed mtime, so the scan reads it again

    code, line = scan_unprivileged(url, root)
    assert code == 0, line
    report = json.loads(line)
    assert (report["unreadable"], report["unusable"], report["missing"]) == (1, 1, 0)
    rows = _rows(Database(url))
    assert rows[f"{root}/locked.jpg"].status == ImageStatus.SKIPPED
    assert rows[f"{root}/locked.jpg"].skip_reason == "cannot read locked.jpg: permission denied"
    assert rows[f"{root}/private"].skip_reason == (
        "cannot read folder private: permission denied; the photos in it were not scanned"
    )
    inside = [r for p, r in rows.items() if p.startswith(f"{root}/private/")]
    assert [r.status for r in inside] == [ImageStatus.PENDING] * 2  # not "missing": just not listable now

    (root / "locked.jpg").chmod(0o644)  # size and mtime stay as they were
    (root / "private").chmod(0o755)
    report = json.loads(scan_unprivileged(url, root)[1])
    assert (report["retried"], report["unreadable"], report["unusable"], report["missing"]) == (1, 0, 0, 0)
    rows = _rows(Database(url))
    assert (rows[f"{root}/locked.jpg"].status, rows[f"{root}/locked.jpg"].skip_reason) == (ImageStatus.PENDING, None)
    assert f"{root}/private" not in rows and len(rows) == 4


def test_an_unreadable_photos_folder_and_a_read_only_data_folder_are_one_line(shared_dir: Path, lfw_mini: Path):
    root = shared_dir / "photos"
    root.mkdir()
    shutil.copy(_photos(lfw_mini, 1)[0], root / "one.jpg")
    data = shared_dir / "data"  # made by the scan's own user: it may make it read-only below
    url = f"sqlite:///{data / 'faces.db'}"

    root.chmod(0o000)
    code, line = scan_unprivileged(url, root)
    assert (code, line) == (2, f"error: cannot read the photos folder {root}: permission denied")

    root.chmod(0o755)
    shutil.copy(_photos(lfw_mini, 2)[1], root / "two.jpg")
    code, line = scan_unprivileged(url, root, str(data))  # the scan's own user makes its data read-only
    assert code == 2
    assert line.startswith("error: cannot write the photo catalog (attempt to write a readonly database)"), line
    assert "FACE_DATA_DIR" in line


def test_two_scans_at_once_both_finish_and_catalogue_each_photo_once(tmp_path: Path, lfw_mini: Path):
    root = tmp_path / "photos"
    shutil.copytree(lfw_mini, root)
    for attempt in range(3):
        url = f"sqlite:///{tmp_path / f'race{attempt}.db'}"
        Database(url).dispose()  # the schema first, so both scans start at once
        start = threading.Barrier(2)
        errors: list[BaseException] = []

        def scan(url: str = url, start: threading.Barrier = start, errors: list[BaseException] = errors) -> None:
            db = Database(url)
            start.wait()
            try:
                scan_photos(db, root)
            except BaseException as exc:  # collected: the assertion below names it
                errors.append(exc)

        threads = [threading.Thread(target=scan) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        with Database(url).session() as session:
            count, distinct = session.execute(select(func.count(), func.count(func.distinct(Image.path)))).one()
        assert count == distinct == 120
