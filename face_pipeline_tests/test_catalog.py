"""The photo catalog: new, changed, moved, duplicated and vanished files, idempotent re-scans."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from sqlalchemy import select

from face_pipeline.services.catalog import PhotosDirNotFound, scan_photos
from face_pipeline.storage.db import Database
from face_pipeline.storage.models import Image, ImageStatus, utcnow


def _photos(lfw_mini: Path, count: int) -> list[Path]:
    return sorted(lfw_mini.glob("*/*.jpg"))[:count]


@pytest.fixture
def library(tmp_path: Path, lfw_mini: Path) -> Path:
    root = tmp_path / "photos"
    (root / "trip" / "day1").mkdir(parents=True)
    for i, source in enumerate(_photos(lfw_mini, 6)):
        suffix = [".jpg", ".JPG", ".jpeg"][i % 3]  # extension case must not matter
        shutil.copy(source, root / "trip" / ("day1" if i % 2 else "") / f"photo{i}{suffix}")
    (root / "notes.txt").write_text("not a photo")
    (root / ".hidden").mkdir()
    shutil.copy(_photos(lfw_mini, 1)[0], root / ".hidden" / "thumb.jpg")
    return root


def _statuses(db: Database) -> dict[str, str]:
    with db.session() as session:
        return {Path(r.path).name: r.status for r in session.execute(select(Image.path, Image.status))}


def test_first_scan_catalogues_every_photo_recursively_and_ignores_other_files(library: Path, database_url: str):
    db = Database(database_url)
    report = scan_photos(db, library)
    assert (report.files_seen, report.new) == (6, 6)
    assert set(_statuses(db).values()) == {ImageStatus.PENDING}
    assert "thumb.jpg" not in _statuses(db)  # hidden folders are not part of the library


def test_second_scan_is_a_no_op(library: Path, database_url: str):
    db = Database(database_url)
    scan_photos(db, library)
    with db.session() as session:
        before = session.execute(select(Image.id, Image.path, Image.updated_at)).all()
    report = scan_photos(db, library)
    assert (report.new, report.changed, report.moved, report.missing, report.unchanged) == (0, 0, 0, 0, 6)
    with db.session() as session:
        assert session.execute(select(Image.id, Image.path, Image.updated_at)).all() == before


def test_moved_file_keeps_its_row_and_copies_are_duplicates(library: Path, tmp_path: Path):
    db = Database(f"sqlite:///{tmp_path / 'f.db'}")
    scan_photos(db, library)
    with db.session() as session:
        original = session.execute(select(Image.id).where(Image.path.like("%photo0.jpg"))).scalar_one()
    (library / "archive").mkdir()
    os.replace(library / "trip" / "photo0.jpg", library / "archive" / "renamed.jpg")
    shutil.copy(library / "trip" / "day1" / "photo1.JPG", library / "copy-of-1.jpg")

    report = scan_photos(db, library)
    assert (report.moved, report.duplicates, report.missing) == (1, 1, 0)
    with db.session() as session:
        moved = session.execute(select(Image).where(Image.id == original)).scalar_one()
        copy = session.execute(select(Image).where(Image.path.like("%copy-of-1.jpg"))).scalar_one()
    assert moved.path.endswith("archive/renamed.jpg")
    assert copy.status == ImageStatus.DUPLICATE and copy.duplicate_of is not None


def test_changed_content_is_pending_again_and_deleted_files_are_missing(library: Path, tmp_path: Path, lfw_mini: Path):
    db = Database(f"sqlite:///{tmp_path / 'f.db'}")
    scan_photos(db, library)
    with db.session() as session:
        session.execute(Image.__table__.update().values(status=ImageStatus.DONE, processed_at=utcnow()))
    shutil.copy(_photos(lfw_mini, 20)[-1], library / "trip" / "photo2.jpeg")  # new content, same name
    (library / "trip" / "day1" / "photo3.jpg").unlink()

    report = scan_photos(db, library)
    assert (report.changed, report.missing) == (1, 1)
    statuses = _statuses(db)
    assert statuses["photo2.jpeg"] == ImageStatus.PENDING
    assert statuses["photo3.jpg"] == ImageStatus.MISSING

    shutil.copy(_photos(lfw_mini, 6)[3], library / "trip" / "day1" / "photo3.jpg")
    scan_photos(db, library)  # it came back: it was processed before, so it is done again
    assert _statuses(db)["photo3.jpg"] == ImageStatus.DONE


def test_missing_photos_folder_is_a_clear_error(tmp_path: Path):
    db = Database(f"sqlite:///{tmp_path / 'f.db'}")
    with pytest.raises(PhotosDirNotFound, match="FACE_PHOTOS_DIR"):
        scan_photos(db, tmp_path / "nope")


def test_a_library_moved_to_a_new_root_keeps_its_rows(library: Path, tmp_path: Path):
    db = Database(f"sqlite:///{tmp_path / 'f.db'}")
    scan_photos(db, library)
    with db.session() as session:
        before = dict(session.execute(select(Image.content_hash, Image.id)).all())
    moved_root = tmp_path / "new-disk" / "photos"
    shutil.move(library, moved_root)

    report = scan_photos(db, moved_root)
    assert (report.moved, report.new, report.duplicates) == (6, 0, 0)
    with db.session() as session:
        after = dict(session.execute(select(Image.content_hash, Image.id)).all())
        paths = session.scalars(select(Image.path)).all()
    assert after == before
    assert all(p.startswith(str(moved_root)) for p in paths)
