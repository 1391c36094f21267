"""The photo catalog: which files exist, which are new, changed, moved, duplicated or gone.

A file is unchanged when its size and mtime match the catalog; otherwise its content hash decides:
same hash at a vanished path = a move (faces and labels follow the file), same hash as a present
image = a duplicate (recorded, not detected twice), anything else = pending detection.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from face_pipeline.errors import UserFacingError
from face_pipeline.storage.db import Database
from face_pipeline.storage.models import Image, ImageStatus, utcnow

log = logging.getLogger(__name__)

PHOTO_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
_HASH_CHUNK = 1 << 20


class PhotosDirNotFound(UserFacingError, FileNotFoundError):
    pass


@dataclass
class ScanReport:
    files_seen: int = 0
    new: int = 0
    changed: int = 0
    moved: int = 0
    duplicates: int = 0
    missing: int = 0
    unchanged: int = 0
    seconds: float = 0.0
    examples: dict[str, list[str]] = field(default_factory=dict)

    def as_metadata(self) -> dict[str, float | int]:
        return {k: v for k, v in vars(self).items() if isinstance(v, int | float)}


@dataclass(frozen=True)
class _FileStat:
    path: str
    size: int
    mtime: float


def iter_photos(root: Path) -> Iterator[_FileStat]:
    """Every photo file under root (recursive, any extension case), skipping hidden folders."""
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            log.warning("cannot list %s: %s", folder, exc.strerror or exc)
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
            elif entry.is_file() and os.path.splitext(entry.name)[1].lower() in PHOTO_EXTENSIONS:
                info = entry.stat()
                yield _FileStat(os.path.abspath(entry.path), info.st_size, info.st_mtime)


def file_sha256(path: str) -> str | None:
    """Hex digest, or None when the file cannot be read (it is then catalogued and skipped later)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(_HASH_CHUNK):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def scan_photos(db: Database, photos_dir: Path) -> ScanReport:
    """Bring the catalog in line with the folder; idempotent (a second scan reports all unchanged)."""
    if not photos_dir.is_dir():
        raise PhotosDirNotFound(f"photos folder not found: {photos_dir} (set FACE_PHOTOS_DIR)")
    started = time.perf_counter()
    report = ScanReport()
    on_disk = {stat.path: stat for stat in iter_photos(photos_dir.resolve())}
    report.files_seen = len(on_disk)

    with db.session() as session:
        rows = session.execute(
            select(
                Image.id,
                Image.path,
                Image.size_bytes,
                Image.mtime,
                Image.content_hash,
                Image.status,
                Image.processed_at,
            )
        ).all()
        known = {row.path: row for row in rows}
        under_root = str(photos_dir.resolve()) + os.sep
        vanished = {p: r for p, r in known.items() if p not in on_disk and p.startswith(under_root)}
        to_hash = [s for p, s in on_disk.items() if p not in known or _differs(known[p], s)]
        hashes = hash_files([s.path for s in to_hash])

        present_by_hash = {r.content_hash: r.id for p, r in known.items() if p in on_disk and r.content_hash}
        vanished_by_hash = {r.content_hash: r for r in vanished.values() if r.content_hash}
        # A library moved to a new root: rows outside it whose file is gone are moves too (checked lazily).
        elsewhere_by_hash = {
            r.content_hash: r for p, r in known.items() if r.content_hash and not p.startswith(under_root)
        }
        inserts: list[dict[str, Any]] = []
        for stat in to_hash:
            digest = hashes[stat.path]
            row = known.get(stat.path)
            if row is not None:
                _update_changed(session, row, stat, digest, report)
            elif digest and (moved := _moved_from(digest, vanished_by_hash, elsewhere_by_hash)) is not None:
                vanished.pop(moved.path, None)
                session.execute(
                    update(Image)
                    .where(Image.id == moved.id)
                    .values(path=stat.path, size_bytes=stat.size, mtime=stat.mtime, status=_restored(moved))
                )
                report.moved += 1
                report.examples.setdefault("moved", []).append(stat.path)
            else:
                original = present_by_hash.get(digest) if digest else None
                inserts.append(_new_row(stat, digest, original))
                if original is None:
                    report.new += 1
                    if digest:
                        present_by_hash[digest] = -1  # a later copy in this same scan is a duplicate
                else:
                    report.duplicates += 1
        _resolve_same_scan_duplicates(session, inserts)
        if inserts:
            session.execute(insert(Image), inserts)
        _mark_missing(session, vanished, report)
        _restore_reappeared(session, known, on_disk)
    report.unchanged = report.files_seen - report.new - report.changed - report.moved - report.duplicates
    report.seconds = time.perf_counter() - started
    log.info(
        "catalog: %d files, %d new, %d changed, %d moved, %d duplicates, %d missing (%.1f s)",
        report.files_seen,
        report.new,
        report.changed,
        report.moved,
        report.duplicates,
        report.missing,
        report.seconds,
    )
    return report


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


def hash_files(paths: list[str]) -> dict[str, str | None]:
    # hashlib releases the GIL on large buffers, so threads overlap disk reads and hashing.
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(paths, pool.map(file_sha256, paths), strict=True))


def _restored(row: Any) -> str:
    """The status a file gets back when it reappears: its faces were kept if it had been processed."""
    if row.status != ImageStatus.MISSING:
        return str(row.status)
    return ImageStatus.DONE if row.processed_at is not None else ImageStatus.PENDING


def _new_row(stat: _FileStat, digest: str | None, original: int | None) -> dict[str, object]:
    now = utcnow()
    row: dict[str, object] = {
        "path": stat.path,
        "content_hash": digest,
        "size_bytes": stat.size,
        "mtime": stat.mtime,
        "status": ImageStatus.PENDING,
        "skip_reason": None,
        "duplicate_of": None,
        "created_at": now,
        "updated_at": now,
    }
    if original is not None:
        row.update(status=ImageStatus.DUPLICATE, duplicate_of=original if original > 0 else None)
    return row


def _resolve_same_scan_duplicates(session: Session, inserts: list[dict[str, Any]]) -> None:
    """Copies found in one scan point at the first copy once it has an id; flag them by reason now."""
    first_path: dict[object, str] = {}
    for row in inserts:
        digest = row["content_hash"]
        if row["status"] == ImageStatus.DUPLICATE:
            row["skip_reason"] = "same content as " + first_path.get(digest, "another catalogued photo")
        elif digest:
            first_path.setdefault(digest, str(row["path"]))


def _update_changed(session: Session, row: Any, stat: _FileStat, digest: str | None, report: ScanReport) -> None:
    values: dict[str, object] = {"size_bytes": stat.size, "mtime": stat.mtime}
    if digest != row.content_hash:
        values.update(content_hash=digest, status=ImageStatus.PENDING, skip_reason=None)
        report.changed += 1
        report.examples.setdefault("changed", []).append(stat.path)
    elif row.status == ImageStatus.MISSING:
        values["status"] = _restored(row)
    session.execute(update(Image).where(Image.id == row.id).values(**values))


def _mark_missing(session: Session, vanished: dict[str, Any], report: ScanReport) -> None:
    ids = [r.id for r in vanished.values() if r.status != ImageStatus.MISSING]
    if ids:
        session.execute(update(Image).where(Image.id.in_(ids)).values(status=ImageStatus.MISSING))
    report.missing = len(ids)


def _restore_reappeared(session: Session, known: dict[str, Any], on_disk: dict[str, _FileStat]) -> None:
    """A file marked missing that is back unchanged gets its old state back (faces were kept)."""
    for path, row in known.items():
        if path in on_disk and row.status == ImageStatus.MISSING and not _differs(row, on_disk[path]):
            session.execute(update(Image).where(Image.id == row.id).values(status=_restored(row)))
