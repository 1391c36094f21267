"""Walking the photos folder: every photo file with its size and mtime, and every photo-like path that cannot
be used, with a reason a person can act on (symbolic-link loops, broken links, links to folders, folders it may
not list, names that are not UTF-8, formats Pillow cannot decode here). Never raises for one path.

The walk is the part of a scan that grows with the library (a no-op backfill of 100K photos is mostly this):
an ordinary photo file costs one stat; everything unusual goes through `_classify`.
"""

from __future__ import annotations

import errno
import os
import stat as stat_mode
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from PIL import features

from face_pipeline.errors import UserFacingError
from face_pipeline.vision.images import unreadable_reason

_AVIF = frozenset({".avif"}) if features.check("avif") else frozenset()
PHOTO_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}) | _AVIF
# Image formats a library holds that Pillow cannot decode here: recorded as "unsupported format", not ignored.
UNSUPPORTED_EXTENSIONS = (
    frozenset({".heic", ".heif", ".avif", ".jxl", ".jp2", ".j2k", ".svg", ".psd", ".xcf"})
    | frozenset({".dng", ".cr2", ".cr3", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".orf", ".rw2", ".raf", ".pef"})
    | frozenset({".srw", ".x3f", ".3fr", ".erf", ".kdc", ".mrw", ".raw", ".rwl", ".iiq"})
) - PHOTO_EXTENSIONS
BAD_NAME = "file name is not valid UTF-8 (shown with \\x escapes); rename the file to include it"


class PhotosDirUnreadable(UserFacingError, PermissionError):
    pass


class PhotoFile(NamedTuple):  # a tuple: one per photo, 100K+ per scan
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
    photos: list[PhotoFile] = field(default_factory=list)
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
    as_stat = tuple.__new__  # builds a PhotoFile without NamedTuple's Python-level __new__ (~0.1 s per 100K)
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
                        photos.append(as_stat(PhotoFile, (entry.path, info.st_size, info.st_mtime)))
                        continue
                    if ext not in UNSUPPORTED_EXTENSIONS and ext not in PHOTO_EXTENSIONS:
                        continue  # not a photo
                _classify(entry, stack, walk)
            except OSError as exc:  # a failure no rule foresaw: this path is recorded, the scan goes on
                walk.unusable.append(UnusablePath(storable_path(entry.path), unreadable_reason(name, exc)))
    return walk


def iter_photos(root: Path) -> Iterator[PhotoFile]:
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
        walk.photos.append(PhotoFile(path, info.st_size, info.st_mtime))


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
