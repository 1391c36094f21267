"""The photo catalog: which files exist, which are new, changed, moved, duplicated, unusable or gone.

A file is unchanged when its size and mtime match the catalog; otherwise its content hash decides:
same hash at a vanished path = a move (faces and labels follow the file), same hash as a present
image = a duplicate (recorded, not detected twice). A catalogued photo whose bytes changed is decoded
and its pixel hash compared with the one stored at detection: equal pixels (a rating, keyword or comment
written into the file) keep its faces and names; anything else = pending detection.

Every path the scan cannot use is recorded as a skipped row with its reason (symbolic-link loops, broken
links, folders it may not list, names that are not UTF-8, formats it cannot decode, files it may not read)
and the scan goes on. Files skipped because they could not be read are tried again on every scan.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat as stat_mode
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from PIL import features
from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from face_pipeline.errors import UserFacingError
from face_pipeline.settings import Settings
from face_pipeline.storage.db import Database
from face_pipeline.storage.models import Image, ImageStatus, utcnow
from face_pipeline.vision.images import ImageRejected, is_unreadable_reason, load_rgb, pixel_hash, unreadable_reason

log = logging.getLogger(__name__)

_AVIF = frozenset({".avif"}) if features.check("avif") else frozenset()
PHOTO_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}) | _AVIF
# Image formats a library holds that Pillow cannot decode here: recorded as "unsupported format", not ignored.
UNSUPPORTED_EXTENSIONS = (
    frozenset({".heic", ".heif", ".avif", ".jxl", ".jp2", ".j2k", ".svg", ".psd", ".xcf"})
    | frozenset({".dng", ".cr2", ".cr3", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".orf", ".rw2", ".raf", ".pef"})
    | frozenset({".srw", ".x3f", ".3fr", ".erf", ".kdc", ".mrw", ".raw", ".rwl", ".iiq"})
) - PHOTO_EXTENSIONS
_HASH_CHUNK = 1 << 20
_WORKERS = 4
_EXAMPLES = 20  # paths kept per kind in ScanReport.examples
_DEFAULTS = Settings.model_fields
_MAX_PIXELS = int(_DEFAULTS["max_image_pixels"].default)
_MAX_BYTES = int(_DEFAULTS["max_file_bytes"].default)

BAD_NAME = "file name is not valid UTF-8 (shown with \\x escapes); rename the file to include it"


class PhotosDirNotFound(UserFacingError, FileNotFoundError):
    pass


class PhotosDirUnreadable(UserFacingError, PermissionError):
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


class _FileStat(NamedTuple):  # a tuple: one per photo, 100K+ per scan
    path: str
    size: int
    mtime: float


@dataclass(frozen=True)
class UnusablePath:
    """A path under the photos folder the scan could not use; `path` is safe to store (see `storable_path`)."""

    path: str
    reason: str


@dataclass
class LibraryWalk:
    photos: list[_FileStat] = field(default_factory=list)
    unusable: list[UnusablePath] = field(default_factory=list)
    unlisted: list[str] = field(default_factory=list)  # folders that could not be listed: their rows are kept


# --- the walk -----------------------------------------------------------------------------------------


def storable_path(path: str) -> str:
    """The path as valid UTF-8 text: itself, or for a name that is not UTF-8 its bytes with \\x escapes
    (os.fsencode undoes Python's surrogate escapes); SQLite and PostgreSQL both store that."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(path).decode("utf-8", "backslashreplace")
    return path


def walk_library(root: Path) -> LibraryWalk:
    """Every photo file under root (recursive, any extension case, hidden folders skipped), and every path
    that looks like a photo or a folder but cannot be used, with its reason. Never raises for one path."""
    walk = LibraryWalk()
    root = root.resolve()  # absolute and normal: every path the walk builds from it is too
    stack = [str(root)]
    photos = walk.photos
    as_stat = tuple.__new__  # builds a _FileStat without NamedTuple's Python-level __new__ (~0.1 s per 100K)
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as listing:
                entries = list(listing)
        except OSError as exc:
            if folder == str(root):
                raise PhotosDirUnreadable(f"cannot read the photos folder {root}: {_why(exc)}") from exc
            walk.unlisted.append(folder)
            reason = f"cannot read folder {os.path.basename(folder)}: {_why(exc)}; the photos in it were not scanned"
            walk.unusable.append(UnusablePath(storable_path(folder), reason))
            continue
        storable_folder = storable_path(folder) == folder
        for entry in entries:
            name = entry.name
            if name[0] == ".":
                continue
            try:
                # The common case in line (it runs once per file): a regular file, not a link; a photo with an
                # ASCII name is one stat, another file none. The rest (links, folders, unusual names,
                # unsupported formats) is looked at by `_classify`.
                if storable_folder and entry.is_file(follow_symlinks=False):
                    dot = name.rfind(".")
                    ext = name[dot:].lower() if dot > 0 else ""
                    if ext in PHOTO_EXTENSIONS and name.isascii():
                        info = entry.stat(follow_symlinks=False)
                        photos.append(as_stat(_FileStat, (entry.path, info.st_size, info.st_mtime)))
                        continue
                    if ext not in UNSUPPORTED_EXTENSIONS and ext not in PHOTO_EXTENSIONS:
                        continue  # not a photo
                _classify(entry, stack, walk)
            except OSError as exc:  # a failure no rule foresaw: this path is recorded, the scan goes on
                walk.unusable.append(UnusablePath(storable_path(entry.path), unreadable_reason(name, exc)))
    return walk


def iter_photos(root: Path) -> Iterator[_FileStat]:
    """Every usable photo file under root (see `walk_library`)."""
    yield from walk_library(root).photos


def _classify(entry: os.DirEntry[str], stack: list[str], walk: LibraryWalk) -> None:
    if entry.is_dir(follow_symlinks=False):
        stack.append(entry.path)
        return
    ext = os.path.splitext(entry.name)[1].lower()
    link = entry.is_symlink()
    looks_like_photo = ext in PHOTO_EXTENSIONS or ext in UNSUPPORTED_EXTENSIONS
    if not looks_like_photo and not (link and ext == ""):
        return  # not a photo (a link without an extension may be a link to a folder: looked at below)
    path = entry.path  # the walk starts from the resolved root, so this is already absolute and normal
    stored = storable_path(path)
    if stored != path:
        walk.unusable.append(UnusablePath(stored, BAD_NAME))
        return
    reason = _unusable_reason(entry, ext, link)
    if reason is not None:
        walk.unusable.append(UnusablePath(stored, reason))
    elif looks_like_photo:
        info = entry.stat()
        walk.photos.append(_FileStat(path, info.st_size, info.st_mtime))


def _unusable_reason(entry: os.DirEntry[str], ext: str, link: bool) -> str | None:
    """Why this photo-like path cannot be catalogued, or None when it is a regular photo file."""
    try:
        info = entry.stat()  # follows a symbolic link
    except FileNotFoundError:
        target = os.readlink(entry.path) if link else "?"
        return f"broken symbolic link: {entry.name} points to {storable_path(target)}, which does not exist"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"symbolic link loop: {entry.name} (too many levels of symbolic links)"
        return unreadable_reason(entry.name, exc)
    if stat_mode.S_ISDIR(info.st_mode):
        return f"symbolic link to a folder: {entry.name} is not followed (add the folder itself to the library)"
    if not stat_mode.S_ISREG(info.st_mode):
        return f"{entry.name} is not a regular file"
    if ext in UNSUPPORTED_EXTENSIONS:
        return f"unsupported format ({ext[1:].upper()}): convert {entry.name} to JPEG or PNG to include it"
    return None


def _why(exc: OSError) -> str:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    text = exc.strerror or str(exc)
    return text[:1].lower() + text[1:]


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


def _needs_hash(row: Any, stat: _FileStat) -> bool:
    """A new file, a catalogued one whose size or mtime changed, or one skipped as unreadable (tried again)."""
    return row is None or _differs(row, stat) or _retry(row)


def _catalog_changes(
    session: Session,
    to_hash: list[_FileStat],
    hashes: dict[str, tuple[str | None, str | None]],
    same_pixels: set[str],
    known: dict[str, Any],
    on_disk: dict[str, _FileStat],
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
    known: dict[str, Any], to_hash: list[_FileStat], hashes: dict[str, tuple[str | None, str | None]]
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


def _differs(row: Any, stat: _FileStat) -> bool:
    return row.size_bytes != stat.size or abs(row.mtime - stat.mtime) > 1e-6


def _restored(row: Any) -> str:
    """The status a file gets back when it reappears: its faces were kept if it had been processed."""
    if row.status != ImageStatus.MISSING:
        return str(row.status)
    return ImageStatus.DONE if row.was_processed else ImageStatus.PENDING


def _new_row(
    stat: _FileStat, digest: str | None, original: int | None, *, skip_reason: str | None = None
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
    stat: _FileStat,
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


def _restore_reappeared(session: Session, known: dict[str, Any], on_disk: dict[str, _FileStat]) -> None:
    """A file marked missing that is back unchanged gets its old state back (faces were kept)."""
    for path, row in known.items():
        if path in on_disk and row.status == ImageStatus.MISSING and not _differs(row, on_disk[path]):
            session.execute(update(Image).where(Image.id == row.id).values(status=_restored(row), skip_reason=None))
