"""Refuse to write where the disk is (nearly) full, with one clear line, before anything is half-written.

The embedded vector engine maps its files into memory and grows them as it writes; on a full disk the
kernel answers a write to a mapped page that cannot be backed with SIGBUS, which kills the process with no
message (and it happened again on every open until space was freed). SQLite fails with "disk I/O error".
Checking the free space first turns both into a message a user can act on.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from face_pipeline.errors import UserFacingError

MB = 1 << 20
# The embedded engine opens its write-ahead log and grows segments in steps of a few MB; measured: a
# collection of 137 faces takes 5.8 MB on disk, so 64 MB leaves room for a batch and the engine's own growth.
STORE_HEADROOM_BYTES = 64 * MB


class DiskFull(UserFacingError, OSError):
    """Too little free space to write safely; nothing was written."""


def free_bytes(path: Path) -> int:
    """Free bytes for an unprivileged writer on the disk holding path (or its nearest existing parent)."""
    probe = Path(path).resolve()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def require_free_space(path: Path, needed_bytes: int, what: str) -> None:
    free = free_bytes(path)
    if free < needed_bytes:
        raise DiskFull(
            f"the disk holding {path} is full ({free // MB} MB free, {what} needs at least {needed_bytes // MB} MB): "
            "free some space and run the command again; nothing was written"
        )
