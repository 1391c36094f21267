"""The photo catalog: which files exist, which are new, changed, moved, duplicated, unusable or gone.

A file is unchanged when its size and mtime match the catalog; otherwise its content hash decides:
same hash at a vanished path = a move (faces and labels follow the file), same hash as a present
image = a duplicate (recorded, not detected twice). A catalogued photo whose bytes changed is decoded
and its pixel hash compared with the one stored at detection: equal pixels (a rating, keyword or comment
written into the file) keep its faces and names; anything else = pending detection.

Every path the scan cannot use is recorded as a skipped row with its reason (symbolic-link loops, broken
links, folders it may not list, names that are not UTF-8, formats it cannot decode, files it may not read)
and the scan goes on (the walk itself: services/library_walk.py). Files skipped because they could not be read
are tried again on every scan.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from face_pipeline.errors import UserFacingError
from face_pipeline.services.library_walk import (
    LibraryWalk,
    PhotoFile,
    UnusablePath,
    storable_path,
    walk_library,
)
from face_pipeline.settings import Settings
from face_pipeline.storage.db import Database
from face_pipeline.storage.models import Image, ImageStatus, utcnow
from face_pipeline.vision.images import ImageRejected, is_unreadable_reason, load_rgb, pixel_hash, unreadable_reason

log = logging.getLogger(__name__)

_HASH_CHUNK = 1 << 20
_WORKERS = 4
_EXAMPLES = 20  # paths kept per kind in ScanReport.examples
_DEFAULTS = Settings.model_fields
_MAX_PIXELS = int(_DEFAULTS["max_image_pixels"].default)
_MAX_BYTES = int(_DEFAULTS["max_file_bytes"].default)


class PhotosDirNotFound(UserFacingError, FileNotFoundError):
    pass


class CatalogNotWritable(UserFacingError):
    """The catalog's database refused the scan's writes (read-only folder, disk full, another writer)."""


@dataclass
class ScanReport:
    files_seen: int = 0  # photo files found (readable or not)
    new: int = 0
    changed: int = 0  # pixels changed (or unknown): detected again
    metadata_only: int = 0  # bytes changed, pixels did not: faces and names kept
    moved: int = 0
    duplicates: int = 0
    missing: int = 0
    unchanged: int = 0
    unreadable: int = 0  # photo files the system would not let us read: skipped now, tried again next scan
    retried: int = 0  # photos skipped as unreadable before, readable now
    unusable: int = 0  # other paths recorded with a reason: links, names, folders, formats
    seconds: float = 0.0
    examples: dict[str, list[str]] = field(default_factory=dict)

    def as_metadata(self) -> dict[str, float | int]:
        return {k: v for k, v in vars(self).items() if isinstance(v, int | float)}

    def note(self, kind: str, example: str) -> None:
        kept = self.examples.setdefault(kind, [])
        if len(kept) < _EXAMPLES:
            kept.append(example)


# --- hashing ------------------------------------------------------------------------------------------


def file_sha256(path: str) -> str | None:
    """Hex digest, or None when the file cannot be read."""
    return _read_digest(path)[0]


def _read_digest(path: str) -> tuple[str | None, str | None]:
    """(hex digest, None), or (None, the reason the file could not be read)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(_HASH_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        return None, unreadable_reason(os.path.basename(path), exc)
    return digest.hexdigest(), None


def hash_files(paths: list[str]) -> dict[str, str | None]:
    return {path: digest for path, (digest, _) in _read_digests(paths).items()}


def _read_digests(paths: list[str]) -> dict[str, tuple[str | None, str | None]]:
    # hashlib releases the GIL on large buffers, so threads overlap disk reads and hashing.
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        return dict(zip(paths, pool.map(_read_digest, paths), strict=True))


def _decoded_pixel_hash(path: str) -> str | None:
    """The pixel hash detection would store for this file now, or None when it does not decode."""
    try:
        return pixel_hash(load_rgb(path, max_pixels=_MAX_PIXELS, max_bytes=_MAX_BYTES))
    except ImageRejected:
        return None


# --- the scan -----------------------------------------------------------------------------------------


def scan_photos(db: Database, photos_dir: Path) -> ScanReport:
    """Bring the catalog in line with the folder; idempotent (a second scan reports all unchanged).

    Safe to run twice at once: rows another scan inserted meanwhile are left alone. A database that refuses
    writes (read-only data folder, full disk) gives one `CatalogNotWritable` line."""
    if not photos_dir.is_dir():
        raise PhotosDirNotFound(f"photos folder not found: {photos_dir} (set FACE_PHOTOS_DIR)")
    started = time.perf_counter()
    root = photos_dir.resolve()
    walk = walk_library(root)
    report = ScanReport(files_seen=len(walk.photos))
    try:
        with db.session() as session:
            _reconcile(session, root, walk, report)
    except IntegrityError as exc:
        raise CatalogNotWritable(
            "another scan changed the photo catalog at the same time; run `faces backfill` again"
        ) from exc
    except OperationalError as exc:
        message = str(exc.orig).splitlines()[0] if exc.orig is not None else str(exc).splitlines()[0]
        raise CatalogNotWritable(
            f"cannot write the photo catalog ({message}); check that FACE_DATA_DIR is writable and the disk is not full"
        ) from exc
    report.unchanged = (
        report.files_seen
        - report.new
        - report.changed
        - report.metadata_only
        - report.moved
        - report.duplicates
        - report.unreadable
        - report.retried
    )
    report.seconds = time.perf_counter() - started
    log.info(
        "catalog: %d files, %d new, %d changed, %d metadata only, %d moved, %d duplicates, %d missing, "
        "%d unreadable, %d unusable (%.1f s)",
        report.files_seen,
        report.new,
        report.changed,
        report.metadata_only,
        report.moved,
        report.duplicates,
        report.missing,
        report.unreadable,
        report.unusable,
        report.seconds,
    )
    for example in report.examples.get("newly_skipped", []):
        log.warning("skipped %s", example)
    return report


# The columns the scan decides with; one query of these for the rows it has to look at (see `_reconcile`).
_ROW_COLUMNS = (
    Image.id,
    Image.path,
    Image.size_bytes,
    Image.mtime,
    Image.content_hash,
    Image.pixel_hash,
    Image.status,
    Image.skip_reason,
    Image.embedding_space,
    # whether, not when: 100K datetimes parsed from SQLite text cost ~0.3 s of a no-op scan
    Image.processed_at.is_not(None).label("was_processed"),
)
# Statuses whose rows are looked at even when size and mtime match: skipped (an unreadable file is tried
# again) and missing (a file that is back gets its old state).
_RECHECKED = (ImageStatus.SKIPPED, ImageStatus.MISSING)
_IN_CHUNK = 500  # values per IN (...) list
_READ_ALL_ABOVE = 5_000  # more rows to look at than this: one read of the whole table beats chunked INs


def _reconcile(session: Session, root: Path, walk: LibraryWalk, report: ScanReport) -> None:
    """Compare the walk with the catalog: (path, size, mtime) of every row in one column-only read, set
    arithmetic for what differs, and whole rows only for the paths that differ (none when nothing changed)."""
    on_disk = {s.path: s for s in walk.photos}
    unusable = {u.path: u for u in walk.unusable}
    catalogued = _catalogued_files(session)
    rechecked = set(session.scalars(select(Image.path).where(Image.status.in_(_RECHECKED))))
    # A file whose (path, size, mtime) is a row's, and whose row is not rechecked, is unchanged: nothing to read.
    differs = {s.path for s in set(walk.photos).difference(catalogued)} | rechecked.intersection(on_disk)
    known_paths = {row[0] for row in catalogued}
    under_root = str(root) + os.sep
    unlisted = tuple(storable_path(folder) + os.sep for folder in walk.unlisted)
    gone = {
        p for p in known_paths.difference(on_disk, unusable) if p.startswith(under_root) and not p.startswith(unlisted)
    }
    known = _rows_where(session, Image.path, [*(differs & known_paths), *gone, *(unusable.keys() & known_paths)])
    vanished = {p: row for p, row in known.items() if p in gone}
    to_hash = [s for s in walk.photos if s.path in differs and _needs_hash(known.get(s.path), s)]
    hashes = _read_digests([s.path for s in to_hash]) if to_hash else {}
    same_pixels = _pixels_unchanged(known, to_hash, hashes)

    inserts: list[dict[str, Any]] = []
    if to_hash:
        _catalog_changes(session, to_hash, hashes, same_pixels, known, on_disk, vanished, under_root, inserts, report)
    inserts += _record_unusable(session, unusable, known, report)
    _resolve_same_scan_duplicates(inserts)
    _insert_new(session, inserts)
    _mark_missing(session, vanished, report)
    _restore_reappeared(session, known, on_disk)


def _catalogued_files(session: Session) -> list[tuple[str, int, float]]:
    """(path, size, mtime) of every catalogued row, as plain tuples straight from the driver's cursor: at 100K
    rows SQLAlchemy's Row objects cost ~0.2 s more and the ORM session's ~0.5 s more; nothing here needs them."""
    query = select(Image.path, Image.size_bytes, Image.mtime)
    cursor = session.connection().connection.cursor()
    try:
        cursor.execute(str(query.compile(dialect=session.get_bind().dialect)))
        return list(cursor.fetchall())
    finally:
        cursor.close()


def _rows_where(session: Session, column: Any, values: list[Any]) -> dict[str, Any]:
    """{path: row} (the `_ROW_COLUMNS`) of the rows whose `column` is one of `values`, in id order."""
    if not values:
        return {}
    if len(values) > _READ_ALL_ABOVE:
        wanted = set(values)
        rows = [
            r for r in session.execute(select(*_ROW_COLUMNS).order_by(Image.id)) if getattr(r, column.key) in wanted
        ]
    else:
        rows = [
            row
            for i in range(0, len(values), _IN_CHUNK)
            for row in session.execute(select(*_ROW_COLUMNS).where(column.in_(values[i : i + _IN_CHUNK])))
        ]
        rows.sort(key=lambda r: r.id)
    return {row.path: row for row in rows}


def _needs_hash(row: Any, stat: PhotoFile) -> bool:
    """A new file, a catalogued one whose size or mtime changed, or one skipped as unreadable (tried again)."""
    return row is None or _differs(row, stat) or _retry(row)


def _catalog_changes(
    session: Session,
    to_hash: list[PhotoFile],
    hashes: dict[str, tuple[str | None, str | None]],
    same_pixels: set[str],
    known: dict[str, Any],
    on_disk: dict[str, PhotoFile],
    vanished: dict[str, Any],
    under_root: str,
    inserts: list[dict[str, Any]],
    report: ScanReport,
) -> None:
    """Each new or changed file: an update of its row, a move of a vanished row, or a new row to insert."""
    # The catalogued rows that share a new file's content, by hash (indexed): at most a few per new file.
    digests = {hashes[s.path][0] for s in to_hash if s.path not in known} - {None}
    same_content = _rows_where(session, Image.content_hash, sorted(digests)).values()
    present_by_hash = {r.content_hash: r.id for r in same_content if r.path in on_disk}
    vanished_by_hash = {r.content_hash: r for r in same_content if r.path in vanished}
    # A library moved to a new root: rows outside it whose file is gone are moves too (checked lazily).
    elsewhere_by_hash = {r.content_hash: r for r in same_content if not r.path.startswith(under_root)}
    for stat in to_hash:
        digest, why = hashes[stat.path]
        row = known.get(stat.path)
        if row is not None:
            _update_known(session, row, stat, digest, why, stat.path in same_pixels, report)
        elif digest is None:
            inserts.append(_new_row(stat, None, None, skip_reason=why))
            report.unreadable += 1
            report.note("unreadable", f"{stat.path}: {why}")
            report.note("newly_skipped", f"{stat.path}: {why}")
        elif (moved := _moved_from(digest, vanished_by_hash, elsewhere_by_hash)) is not None:
            vanished.pop(moved.path, None)
            session.execute(
                update(Image)
                .where(Image.id == moved.id)
                .values(path=stat.path, size_bytes=stat.size, mtime=stat.mtime, status=_restored(moved))
            )
            report.moved += 1
            report.note("moved", stat.path)
        else:
            original = present_by_hash.get(digest)
            inserts.append(_new_row(stat, digest, original))
            if original is None:
                report.new += 1
                present_by_hash[digest] = -1  # a later copy in this same scan is a duplicate
            else:
                report.duplicates += 1


def _pixels_unchanged(
    known: dict[str, Any], to_hash: list[PhotoFile], hashes: dict[str, tuple[str | None, str | None]]
) -> set[str]:
    """Paths of detected photos whose bytes changed but whose decoded pixels are the ones detected."""
    candidates = [
        (s.path, row.pixel_hash)
        for s in to_hash
        if (row := known.get(s.path)) is not None
        and _has_faces_of(row)
        and hashes[s.path][0] is not None
        and hashes[s.path][0] != row.content_hash
    ]
    if not candidates:
        return set()
    # Decoding is the cost here (a few ms to ~0.1 s a photo); Pillow releases the GIL while it decodes.
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        now = list(pool.map(_decoded_pixel_hash, [path for path, _ in candidates]))
    return {path for (path, before), after in zip(candidates, now, strict=True) if after == before}


def _has_faces_of(row: Any) -> bool:
    """The row's faces were detected in the pixels its pixel hash describes (rows from before pixel hashes
    have none: their first change is detected again, as it always was)."""
    detected = row.pixel_hash is not None and row.embedding_space is not None
    return detected and row.status in (ImageStatus.DONE, ImageStatus.MISSING, ImageStatus.SKIPPED)


def _retry(row: Any) -> bool:
    """A row skipped because its file could not be read (or never could be) is looked at again every scan."""
    return row.status == ImageStatus.SKIPPED and (row.content_hash is None or is_unreadable_reason(row.skip_reason))


def _moved_from(digest: str, vanished: dict[str, Any], elsewhere: dict[str, Any]) -> Any:
    """The catalogued row this new file was moved from, if its old file is gone."""
    if digest in vanished:
        return vanished.pop(digest)
    row = elsewhere.get(digest)
    if row is not None and not os.path.exists(row.path):
        return elsewhere.pop(digest)
    return None


def _differs(row: Any, stat: PhotoFile) -> bool:
    return row.size_bytes != stat.size or abs(row.mtime - stat.mtime) > 1e-6


def _restored(row: Any) -> str:
    """The status a file gets back when it reappears: its faces were kept if it had been processed."""
    if row.status != ImageStatus.MISSING:
        return str(row.status)
    return ImageStatus.DONE if row.was_processed else ImageStatus.PENDING


def _new_row(
    stat: PhotoFile, digest: str | None, original: int | None, *, skip_reason: str | None = None
) -> dict[str, object]:
    now = utcnow()
    row: dict[str, object] = {
        "path": stat.path,
        "content_hash": digest,
        "size_bytes": stat.size,
        "mtime": stat.mtime,
        "status": ImageStatus.PENDING if skip_reason is None else ImageStatus.SKIPPED,
        "skip_reason": skip_reason,
        "duplicate_of": None,
        "created_at": now,
        "updated_at": now,
    }
    if original is not None:
        row.update(status=ImageStatus.DUPLICATE, duplicate_of=original if original > 0 else None)
    return row


def _resolve_same_scan_duplicates(inserts: list[dict[str, Any]]) -> None:
    """Copies found in one scan point at the first copy once it has an id; flag them by reason now."""
    first_path: dict[object, str] = {}
    for row in inserts:
        digest = row["content_hash"]
        if row["status"] == ImageStatus.DUPLICATE:
            row["skip_reason"] = "same content as " + first_path.get(digest, "another catalogued photo")
        elif digest:
            first_path.setdefault(digest, str(row["path"]))


def _insert_new(session: Session, rows: list[dict[str, Any]]) -> None:
    """Insert the scan's new rows; a path another scan inserted since this one read the catalog is left as
    that scan wrote it (two backfills at once must not fail on images.path being unique)."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        session.execute(sqlite_insert(Image).on_conflict_do_nothing(index_elements=["path"]), rows)
    elif dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as postgresql_insert

        session.execute(postgresql_insert(Image).on_conflict_do_nothing(index_elements=["path"]), rows)
    else:
        session.execute(insert(Image), rows)


def _update_known(
    session: Session,
    row: Any,
    stat: PhotoFile,
    digest: str | None,
    why: str | None,
    same_pixels: bool,
    report: ScanReport,
) -> None:
    """A catalogued path whose file changed on disk, or that was skipped as unreadable."""
    if digest is None:  # cannot be read now: skipped with the reason, faces kept, tried again next scan
        if row.status != ImageStatus.SKIPPED or row.skip_reason != why:
            session.execute(update(Image).where(Image.id == row.id).values(status=ImageStatus.SKIPPED, skip_reason=why))
            report.note("newly_skipped", f"{stat.path}: {why}")
        report.unreadable += 1
        report.note("unreadable", f"{stat.path}: {why}")
        return
    values: dict[str, object] = {"size_bytes": stat.size, "mtime": stat.mtime}
    kind = "retried" if _retry(row) else None
    if digest != row.content_hash:
        status = ImageStatus.DONE if same_pixels else ImageStatus.PENDING
        values.update(content_hash=digest, status=status, skip_reason=None)
        kind = kind or ("metadata_only" if same_pixels else "changed")
    elif kind == "retried":  # readable again, same bytes: its faces (if it had any) are still right
        faces_kept = row.embedding_space is not None and bool(row.was_processed)
        values.update(status=ImageStatus.DONE if faces_kept else ImageStatus.PENDING, skip_reason=None)
    elif row.status == ImageStatus.MISSING:
        values["status"] = _restored(row)
    if kind is not None:
        setattr(report, kind, getattr(report, kind) + 1)
        report.note(kind, stat.path)
    session.execute(update(Image).where(Image.id == row.id).values(**values))


def _record_unusable(
    session: Session, unusable: dict[str, UnusablePath], known: dict[str, Any], report: ScanReport
) -> list[dict[str, Any]]:
    """Skipped rows for the paths the scan cannot use; returns the ones to insert. A catalogued photo whose
    path became unusable (now a broken link, say) is missing, its faces kept, with the reason."""
    inserts: list[dict[str, Any]] = []
    now = utcnow()
    for path, problem in unusable.items():
        report.unusable += 1
        report.note("unusable", f"{path}: {problem.reason}")
        row = known.get(path)
        if row is None or row.skip_reason != problem.reason:
            report.note("newly_skipped", f"{path}: {problem.reason}")
        if row is None:
            inserts.append(
                {
                    "path": path,
                    "content_hash": None,
                    "size_bytes": 0,
                    "mtime": 0.0,
                    "status": ImageStatus.SKIPPED,
                    "skip_reason": problem.reason,
                    "duplicate_of": None,
                    "created_at": now,
                    "updated_at": now,
                }
            )
        elif row.skip_reason != problem.reason:
            status = ImageStatus.SKIPPED if _never_read(row) else ImageStatus.MISSING
            session.execute(update(Image).where(Image.id == row.id).values(status=status, skip_reason=problem.reason))
    return inserts


def _never_read(row: Any) -> bool:
    """A row with no content behind it (an unusable path, a file never readable): it has no faces."""
    return row.content_hash is None and row.status in (ImageStatus.SKIPPED, ImageStatus.PENDING)


def _mark_missing(session: Session, vanished: dict[str, Any], report: ScanReport) -> None:
    """Gone files are missing (faces and labels kept); gone unusable paths had nothing: their rows go."""
    gone = [r.id for r in vanished.values() if _never_read(r)]
    if gone:
        session.execute(delete(Image).where(Image.id.in_(gone)))
    ids = [r.id for r in vanished.values() if r.status != ImageStatus.MISSING and not _never_read(r)]
    if ids:
        session.execute(update(Image).where(Image.id.in_(ids)).values(status=ImageStatus.MISSING))
    report.missing = len(ids)


def _restore_reappeared(session: Session, known: dict[str, Any], on_disk: dict[str, PhotoFile]) -> None:
    """A file marked missing that is back unchanged gets its old state back (faces were kept)."""
    for path, row in known.items():
        if path in on_disk and row.status == ImageStatus.MISSING and not _differs(row, on_disk[path]):
            session.execute(update(Image).where(Image.id == row.id).values(status=_restored(row), skip_reason=None))
