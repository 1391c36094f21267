"""Face thumbnails on disk, one JPEG per face id, written once at detection time."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def thumbnail_path(thumbnails_dir: Path, face_id: int) -> Path:
    # A thousand faces per folder keeps directories small at 200K+ faces.
    return thumbnails_dir / f"{face_id // 1000:05d}" / f"{face_id}.jpg"


def write_thumbnail(thumbnails_dir: Path, face_id: int, jpeg: bytes) -> Path:
    path = thumbnail_path(thumbnails_dir, face_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as handle:
        handle.write(jpeg)
    os.replace(tmp, path)  # readers never see a half-written file
    return path
