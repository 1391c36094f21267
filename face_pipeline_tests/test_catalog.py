"""The photo catalog: new, changed, moved, duplicated and vanished files, idempotent re-scans."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import select

from face_pipeline.services.catalog import PhotosDirNotFound, scan_photos
from face_pipeline.storage.db import Database
from face_pipeline.storage.models import Image, ImageStatus, utcnow
from face_pipeline.vision.images import load_rgb, pixel_hash


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


def _as_detected(db: Database) -> None:
    """Mark every photo detected, with the pixel hash detection stores (from the real decoded pixels)."""
    with db.session() as session:
        for image_id, path in session.execute(select(Image.id, Image.path)).all():
            pixels = pixel_hash(load_rgb(path, max_pixels=10**8, max_bytes=10**9))
            session.execute(
                Image.__table__.update()
                .where(Image.id == image_id)
                .values(status=ImageStatus.DONE, processed_at=utcnow(), embedding_space="s", pixel_hash=pixels)
            )


def test_new_bytes_with_the_same_pixels_are_a_metadata_edit_and_new_pixels_a_change(library: Path, tmp_path: Path):
    db = Database(f"sqlite:///{tmp_path / 'f.db'}")
    scan_photos(db, library)
    _as_detected(db)
    commented = library / "trip" / "photo0.jpg"
    data = commented.read_bytes()  # a COM segment after SOI: new bytes, the same coded pixels
    commented.write_bytes(data[:2] + b"\xff\xfe\x00\x07rated" + data[2:])
    with PILImage.open(library / "trip" / "photo2.jpeg") as im:
        PILImage.fromarray(np.asarray(im)[:, ::-1]).save(library / "trip" / "photo2.jpeg")  # mirrored

    report = scan_photos(db, library)
    assert (report.metadata_only, report.changed, report.unchanged) == (1, 1, 4)
    statuses = _statuses(db)
    assert (statuses["photo0.jpg"], statuses["photo2.jpeg"]) == (ImageStatus.DONE, ImageStatus.PENDING)


def test_gif_is_catalogued_and_heic_is_recorded_as_unsupported(library: Path, tmp_path: Path):
    with PILImage.open(library / "trip" / "photo0.jpg") as im:
        im.save(library / "animated.gif")
    (library / "phone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 32)
    db = Database(f"sqlite:///{tmp_path / 'f.db'}")
    report = scan_photos(db, library)
    assert (report.new, report.unusable) == (7, 1)
    with db.session() as session:
        rows = {Path(r.path).name: r for r in session.execute(select(Image.path, Image.status, Image.skip_reason))}
    assert rows["animated.gif"].status == ImageStatus.PENDING
    assert (
        rows["phone.heic"].skip_reason == "unsupported format (HEIC): convert phone.heic to JPEG or PNG to include it"
    )


def _all_rows(db: Database) -> list[tuple[object, ...]]:
    with db.session() as session:
        return [tuple(row) for row in session.execute(select(Image.__table__).order_by(Image.id))]


def test_a_scan_with_nothing_changed_writes_nothing_whatever_the_rows_hold(
    library: Path, database_url: str, lfw_mini: Path
):
    """Rows of every kind (detected, duplicate, missing, unsupported, a broken link) and a file whose mtime
    differs from its row by less than a microsecond: the second scan finds them all as they were."""
    shutil.copy(library / "trip" / "photo0.jpg", library / "copy-of-0.jpg")
    (library / "phone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 32)
    (library / "gone.jpg").symlink_to(library / "nowhere.jpg")
    shutil.copy(_photos(lfw_mini, 7)[-1], library / "deleted-later.jpg")
    db = Database(database_url)
    scan_photos(db, library)
    with db.session() as session:
        session.execute(Image.__table__.update().values(processed_at=utcnow()).where(Image.content_hash.is_not(None)))
        session.execute(  # as a database that rounds floats would store it
            Image.__table__.update().where(Image.path.like("%photo1.JPG")).values(mtime=Image.mtime + 1e-7)
        )
    (library / "deleted-later.jpg").unlink()
    scan_photos(db, library)  # marks it missing
    before = _all_rows(db)

    report = scan_photos(db, library)
    assert (report.new, report.changed, report.moved, report.duplicates, report.missing) == (0, 0, 0, 0, 0)
    assert (report.files_seen, report.unchanged, report.unusable) == (7, 7, 2)
    assert _all_rows(db) == before
    statuses = _statuses(db)
    assert {statuses["copy-of-0.jpg"], statuses["photo0.jpg"]} == {ImageStatus.PENDING, ImageStatus.DUPLICATE}
    assert statuses["deleted-later.jpg"] == ImageStatus.MISSING
    assert statuses["gone.jpg"] == statuses["phone.heic"] == ImageStatus.SKIPPED


@pytest.mark.parametrize("whole_table", [False, True], ids=["rows-by-path", "whole-table"])
def test_moves_copies_changes_and_returns_are_found_whichever_way_the_rows_are_read(
    library: Path, tmp_path: Path, lfw_mini: Path, monkeypatch: pytest.MonkeyPatch, whole_table: bool
):
    """The scan reads whole rows only for the paths that differ: by path in small IN lists, or the whole
    table when many differ. Both give the same catalog."""
    from face_pipeline.services import catalog

    monkeypatch.setattr(catalog, "_IN_CHUNK", 2)  # several IN lists even for a handful of paths
    monkeypatch.setattr(catalog, "_READ_ALL_ABOVE", 0 if whole_table else 10**9)
    db = Database(f"sqlite:///{tmp_path / 'f.db'}")
    scan_photos(db, library)
    with db.session() as session:
        session.execute(Image.__table__.update().values(status=ImageStatus.DONE, processed_at=utcnow()))
        ids = dict(session.execute(select(Image.path, Image.id)).tuples().all())
    trip = library / "trip"
    os.replace(trip / "photo0.jpg", library / "renamed.jpg")  # moved
    shutil.copy(trip / "day1" / "photo1.JPG", library / "copy-of-1.jpg")  # a copy
    shutil.copy(_photos(lfw_mini, 20)[-1], trip / "photo2.jpeg")  # new content, same name
    os.replace(trip / "day1" / "photo3.jpg", tmp_path / "away.jpg")  # deleted
    shutil.copy(_photos(lfw_mini, 21)[-1], library / "new.jpg")  # new

    report = scan_photos(db, library)
    assert (report.moved, report.duplicates, report.changed, report.missing, report.new) == (1, 1, 1, 1, 1)
    with db.session() as session:
        now = {r.path: r for r in session.execute(select(Image.id, Image.path, Image.status, Image.duplicate_of))}
    assert now[str(library / "renamed.jpg")].id == ids[str(trip / "photo0.jpg")]
    assert now[str(library / "copy-of-1.jpg")].duplicate_of == ids[str(trip / "day1" / "photo1.JPG")]
    assert now[str(trip / "photo2.jpeg")].status == ImageStatus.PENDING
    assert now[str(trip / "day1" / "photo3.jpg")].status == ImageStatus.MISSING
    assert now[str(library / "new.jpg")].status == ImageStatus.PENDING

    os.replace(tmp_path / "away.jpg", trip / "day1" / "photo3.jpg")  # back as it was: done again
    assert scan_photos(db, library).unchanged == 8
    assert _statuses(db)["photo3.jpg"] == ImageStatus.DONE
