"""Detection partitions: pending photos grouped so that each group is detected as one step, on any worker.

A partition is a folder's new photos (FACE_PARTITION_BY=folder, the default) or a run of photos in the order
the scan catalogued them (batch), cut to at most FACE_PARTITION_SIZE photos. Its key, `photos_<first image
id>`, never changes. A photo belongs to one partition for good; when it is pending again (its pixels changed)
that partition runs again, for that photo alone. `plan_partitions` gives new photos partitions and names
every partition that has pending photos: a run detects exactly those, and a retried step re-reads which of
its photos are still pending, so no photo is detected twice.
"""

from __future__ import annotations

import posixpath
import zlib
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

from sqlalchemy import insert, select, text

from face_pipeline.storage.db import Database
from face_pipeline.storage.models import Image, ImageStatus, utcnow
from face_pipeline.storage.scaleout_models import PhotoPartition, PhotoPartitionMember

GroupBy = Literal["folder", "batch"]
_IN_CHUNK = 5000  # ids per IN (...) list (SQLite allows 32766 bound parameters)


@dataclass
class PartitionPlan:
    """What a run detects: partitions with pending photos (`keys`), of which `new` were made now."""

    keys: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    photos: int = 0  # pending photos in those partitions

    def as_metadata(self) -> dict[str, int | str]:
        return {"partitions": len(self.keys), "new_partitions": len(self.new), "pending_photos": self.photos}


def partition_key(first_image_id: int) -> str:
    """A partition's key: letters, digits and underscores (a Dagster mapping key)."""
    return f"photos_{first_image_id}"


def _chunks(ids: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(ids), size):
        yield list(ids[start : start + size])


def group_photos(photos: Sequence[tuple[int, str]], *, size: int, by: GroupBy) -> list[tuple[str | None, list[int]]]:
    """(folder or None, image ids) groups of at most `size` photos, in image id order within each group."""
    if by == "batch":
        ordered = sorted(image_id for image_id, _ in photos)
        return [(None, chunk) for chunk in _chunks(ordered, size)]
    by_folder: dict[str, list[int]] = defaultdict(list)
    for image_id, path in sorted(photos):
        by_folder[posixpath.dirname(path.replace("\\", "/"))].append(image_id)
    return [(folder, chunk) for folder, ids in sorted(by_folder.items()) for chunk in _chunks(ids, size)]


def plan_partitions(db: Database, *, size: int, by: GroupBy = "folder", limit: int | None = None) -> PartitionPlan:
    """Give the pending photos without a partition one (at most `limit` of them, oldest first), and list
    every partition holding pending photos."""
    query = select(Image.id, Image.path).where(Image.status == ImageStatus.PENDING).order_by(Image.id)
    plan = PartitionPlan()
    with db.session() as session:
        pending = [(row.id, row.path) for row in session.execute(query)]
        owner: dict[int, str] = {}
        for chunk in _chunks([image_id for image_id, _ in pending], _IN_CHUNK):
            rows = session.execute(
                select(PhotoPartitionMember.image_id, PhotoPartitionMember.partition_key).where(
                    PhotoPartitionMember.image_id.in_(chunk)
                )
            )
            owner.update({row.image_id: row.partition_key for row in rows})
        fresh = [photo for photo in pending if photo[0] not in owner]
        if limit is not None:
            fresh = fresh[:limit]
        now = utcnow()
        for folder, ids in group_photos(fresh, size=size, by=by):
            key = partition_key(ids[0])
            session.add(PhotoPartition(key=key, grouped_by=by, folder=folder, photos=len(ids), created_at=now))
            session.flush()
            session.execute(insert(PhotoPartitionMember), [{"image_id": i, "partition_key": key} for i in ids])
            owner.update(dict.fromkeys(ids, key))
            plan.new.append(key)
    counts: dict[str, int] = defaultdict(int)
    for key in owner.values():
        counts[key] += 1
    plan.keys = sorted(counts, key=lambda k: int(k.rsplit("_", 1)[1]))
    plan.photos = sum(counts.values())
    return plan


def pending_in_partition(db: Database, key: str) -> list[int]:
    """Image ids of the partition's photos still pending (a retried step finds only what is left)."""
    query = (
        select(Image.id)
        .join(PhotoPartitionMember, PhotoPartitionMember.image_id == Image.id)
        .where(PhotoPartitionMember.partition_key == key, Image.status == ImageStatus.PENDING)
        .order_by(Image.id)
    )
    with db.session() as session:
        return list(session.scalars(query))


@contextmanager
def partition_lock(db: Database, key: str) -> Iterator[None]:
    """Hold the partition against a second execution of its step (Celery may deliver a task again while
    the first delivery still runs, e.g. after a broker restart): on PostgreSQL a session advisory lock,
    which the server frees when the holder's connection ends, killed or not. The second waits, then finds
    nothing pending. SQLite (one machine) takes no lock."""
    engine = db.engine
    if engine.dialect.name != "postgresql":
        yield
        return
    lock_id = zlib.crc32(f"face_pipeline.partition.{key}".encode()) - 2**31  # a signed 32-bit key
    with engine.connect() as connection:
        connection.execute(text("SELECT pg_advisory_lock(:id)"), {"id": lock_id})
        connection.commit()
        try:
            yield
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": lock_id})
            connection.commit()
