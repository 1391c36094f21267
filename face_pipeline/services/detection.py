"""Detect and embed the faces of pending photos: SQL rows, vectors in the raw space's collection.

Work goes in batches; each batch is one transaction, so an interrupted run loses at most the batch in
flight and the next run picks up the photos still pending. Re-running with nothing pending is a no-op.

`processed_photos` (the worker pool, results in batches) is shared with `faces reembed` (services/reembed.py),
which runs the library's photos through another model into a staging area.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from face_pipeline.domain.naming import noise_cluster_id
from face_pipeline.services.space_registry import (
    EmbeddingSpaceMismatch,
    embedder_for_library,
    library_raw_space,
    lock_spaces,
    register_raw_space,
)
from face_pipeline.services.thumbnail_store import write_thumbnail
from face_pipeline.settings import Settings
from face_pipeline.storage.db import Database
from face_pipeline.storage.models import (
    AssignmentSource,
    FaceAssignmentEvent,
    FaceInstance,
    Image,
    ImageStatus,
    utcnow,
)
from face_pipeline.storage.vectors import VectorStore
from face_pipeline.vision.embedders import describe_embedder, model_choice_of
from face_pipeline.vision.types import FaceEmbedder
from face_pipeline.vision.worker import PhotoResult, PhotoWorker, init_pool_worker, process_in_pool

log = logging.getLogger(__name__)

Progress = Callable[["DetectReport", int], None]  # (report so far, photos to do in total)
Task = tuple[int, str]  # (image id, photo path)
_IN_PROCESS_BELOW = 16  # fewer photos than this are not worth starting worker processes for
_IN_CHUNK = 5000  # ids per IN (...) list: SQLite allows 32766 bound parameters per statement


@dataclass
class DetectReport:
    photos: int = 0
    photos_with_faces: int = 0
    faces: int = 0
    skipped: int = 0
    replaced_faces: int = 0
    seconds: float = 0.0
    space: str = ""
    skip_reasons: dict[str, str] = field(default_factory=dict)  # photo path -> reason (the first 20)

    @property
    def photos_per_second(self) -> float:
        return self.photos / self.seconds if self.seconds else 0.0

    def as_metadata(self) -> dict[str, float | int | str]:
        data: dict[str, float | int | str] = {k: v for k, v in vars(self).items() if isinstance(v, int | float | str)}
        data["photos_per_second"] = round(self.photos_per_second, 2)
        return data

    def count(self, batch: list[PhotoResult], paths: Mapping[int, str] | None = None) -> None:
        """Add a stored batch's photos, faces and skips; `paths` (image id -> path) names skipped photos."""
        for result in batch:
            self.photos += 1
            self.faces += len(result.faces)
            self.photos_with_faces += bool(result.faces)
            if result.skip_reason is not None:
                self.skipped += 1
                if len(self.skip_reasons) < 20:
                    where = (paths or {}).get(result.image_id, f"image {result.image_id}")
                    self.skip_reasons[where] = result.skip_reason

    def progress_line(self, total: int) -> str:
        return (
            f"{self.photos}/{total} photos, {self.faces} faces, {self.skipped} skipped, "
            f"{self.photos_per_second:.1f} photos/s"
        )


def pending_photos(db: Database, limit: int | None) -> list[tuple[int, str]]:
    query = select(Image.id, Image.path).where(Image.status == ImageStatus.PENDING).order_by(Image.id)
    if limit is not None:
        query = query.limit(limit)
    with db.session() as session:
        return [(row.id, row.path) for row in session.execute(query)]


def detect_pending_faces(
    settings: Settings,
    db: Database,
    vectors: VectorStore,
    *,
    limit: int | None = None,
    embedder: FaceEmbedder | None = None,
    progress: Progress | None = None,
) -> DetectReport:
    """Detect, embed and store the faces of up to `limit` pending photos."""
    started = time.perf_counter()
    tasks = pending_photos(db, limit)
    paths = dict(tasks)
    report = DetectReport()
    if not tasks:
        return report
    embedder = embedder or embedder_for_library(settings, db)
    space = embedder.space
    with db.session() as session:
        register_raw_space(session, space, model_facts=describe_embedder(embedder))
    vectors.ensure_collection(space.name, space.dim)
    report.space = space.name
    with processed_photos(settings, tasks, embedder) as batches:
        for batch in batches:
            _store_batch(settings, db, vectors, space.name, batch, report)
            report.count(batch, paths)
            report.seconds = time.perf_counter() - started
            if progress:
                progress(report, len(tasks))
    report.seconds = time.perf_counter() - started
    log.info(
        "detected %d faces in %d photos (%d skipped) in %.1f s: %.1f photos/s",
        report.faces,
        report.photos,
        report.skipped,
        report.seconds,
        report.photos_per_second,
    )
    return report


@contextmanager
def processed_photos(
    settings: Settings, tasks: list[Task], embedder: FaceEmbedder
) -> Iterator[Iterator[list[PhotoResult]]]:
    """The photos' results in task order, FACE_DETECT_BATCH_SIZE at a time: from this process for a few
    photos (or FACE_WORKERS=1), else from a pool of FACE_WORKERS processes. Leaving the block (also by an
    exception or Ctrl-C) stops the pool; results not yet taken are lost, never half-stored."""
    in_process = settings.worker_count == 1 or len(tasks) < _IN_PROCESS_BELOW
    with _results(settings, tasks, embedder, in_process) as results:
        yield _batched(results, settings.detect_batch_size)


@contextmanager
def _results(
    settings: Settings, tasks: list[Task], embedder: FaceEmbedder, in_process: bool
) -> Iterator[Iterable[PhotoResult]]:
    """Results in task order: in this process, or from a pool whose workers each build their own model."""
    if in_process:
        worker = PhotoWorker(settings, embedder)
        yield (worker.process(image_id, path) for image_id, path in tasks)
        return
    # spawn, not fork: the parent may hold threads (Dagster, BLAS) that fork would copy half-way.
    spawn = multiprocessing.get_context("spawn")
    workers = min(settings.worker_count, len(tasks))
    # Workers use the model the parent resolved (no second "which model" line per worker) and share the
    # cores: onnxruntime would otherwise start a thread per core in every worker.
    choice = model_choice_of(embedder)
    if choice is not None:
        settings = settings.model_copy(update={"embedder": choice.value})
    threads = max(1, settings.worker_count // workers)
    with spawn.Pool(workers, initializer=init_pool_worker, initargs=(settings, threads)) as pool:
        yield pool.imap(process_in_pool, tasks, chunksize=4)


def _batched(results: Iterable[PhotoResult], size: int) -> Iterator[list[PhotoResult]]:
    batch: list[PhotoResult] = []
    for result in results:
        batch.append(result)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _store_batch(
    settings: Settings,
    db: Database,
    vectors: VectorStore,
    space: str,
    batch: list[PhotoResult],
    report: DetectReport,
) -> None:
    image_ids = [r.image_id for r in batch]
    with db.session() as session:
        _hold_space(session, space)
        report.replaced_faces += _drop_previous_faces(session, vectors, space, image_ids)
        rows, embeddings, owners = face_columns(batch)
        now = utcnow()
        for row in rows:
            row.update(embedding_space=space, user_confirmed=False, created_at=now, updated_at=now)
        face_ids = insert_faces(session, rows)
        if face_ids.size:
            payloads = [
                {
                    "face_id": int(f),
                    "image_id": int(i),
                    "person_id": None,
                    "cluster_id": noise_cluster_id(int(f)),
                }
                for f, i in zip(face_ids, owners, strict=True)
            ]
            vectors.upsert(space, face_ids, np.stack(embeddings), payloads)
        session.execute(update(Image), [_image_update(r, space) for r in batch])
    # Thumbnails after the commit: a crash before it leaves none for faces that do not exist.
    thumbs = (t for r in batch for t in r.thumbnails)
    for face_id, jpeg in zip(face_ids.tolist(), thumbs, strict=True):
        write_thumbnail(settings.thumbnails_dir, face_id, jpeg)


def _hold_space(session: Session, space: str) -> None:
    """Lock the space's registry row for this batch, then check the library is still in that space.

    A `faces reembed` switch that committed since this run began moved the library to another model; its
    faces must not be joined by this model's. The no-op update takes SQLite's writer lock (or the row lock
    on PostgreSQL, which the switch also takes) before the check, so the two cannot interleave.
    """
    lock_spaces(session, [space])
    current = library_raw_space(session)
    if current is not None and current != space:
        raise EmbeddingSpaceMismatch(
            f"the library moved to {current} while this run detected faces with {space}; run `faces backfill` again"
        )


def _drop_previous_faces(session: Session, vectors: VectorStore, space: str, image_ids: list[int]) -> int:
    """A photo whose content changed is detected afresh; its old faces go (the audit log keeps them)."""
    old = session.execute(
        select(FaceInstance.id, FaceInstance.person_id, FaceInstance.cluster_id).where(
            FaceInstance.image_id.in_(image_ids)
        )
    ).all()
    if not old:
        return 0
    ids = remove_faces(session, old, ["photo content changed"] * len(old))
    if vectors.has_collection(space):
        vectors.delete(space, ids)
    return len(old)


def remove_faces(session: Session, faces: Sequence[Any], reasons: Sequence[str]) -> np.ndarray:
    """Delete faces (rows with id, person_id, cluster_id), one `face_removed` audit event each saying why.
    Their rejections go with them (ON DELETE CASCADE). Returns the ids."""
    now = utcnow()
    session.execute(
        insert(FaceAssignmentEvent),
        [
            {
                "face_id": None,
                "action": "face_removed",
                "source": "system",
                "old_person_id": row.person_id,
                "old_cluster_id": row.cluster_id,
                "details": {"face_id": row.id, "reason": reason},
                "created_at": now,
            }
            for row, reason in zip(faces, reasons, strict=True)
        ],
    )
    ids = np.array([row.id for row in faces], dtype=np.int64)
    for start in range(0, ids.size, _IN_CHUNK):
        session.execute(delete(FaceInstance).where(FaceInstance.id.in_(ids[start : start + _IN_CHUNK].tolist())))
    return ids


def face_columns(batch: list[PhotoResult]) -> tuple[list[dict[str, object]], list[np.ndarray], list[int]]:
    """What the model found, as rows (image_id, box, landmarks, score, quality), their embeddings, and the
    image id of each; the caller adds its own columns."""
    rows: list[dict[str, object]] = []
    embeddings: list[np.ndarray] = []
    owners: list[int] = []
    for result in batch:
        for face in result.faces:
            x, y, w, h = face.bbox
            rows.append(
                {
                    "image_id": result.image_id,
                    "bbox_x": x,
                    "bbox_y": y,
                    "bbox_w": w,
                    "bbox_h": h,
                    "landmarks": [[round(px, 2), round(py, 2)] for px, py in face.landmarks],
                    "detection_score": float(face.detection_score),
                    "quality": float(face.quality),
                }
            )
            embeddings.append(face.embedding)
            owners.append(result.image_id)
    return rows, embeddings, owners


def insert_faces(session: Session, rows: list[dict[str, object]]) -> np.ndarray:
    """Insert face rows (every column but the cluster's); each starts as its own singleton cluster."""
    if not rows:
        return np.empty(0, dtype=np.int64)
    # One round trip for the whole batch; ids come back in the order of the rows.
    statement = insert(FaceInstance).returning(FaceInstance.id, sort_by_parameter_order=True)
    face_ids = np.array(session.scalars(statement, rows).all(), dtype=np.int64)
    # Every face has exactly one cluster id from birth: a singleton until clustering groups it.
    session.execute(
        update(FaceInstance),
        [
            {"id": f, "cluster_id": noise_cluster_id(f), "assignment_source": AssignmentSource.NOISE}
            for f in face_ids.tolist()
        ],
    )
    return face_ids


def _image_update(result: PhotoResult, space: str) -> dict[str, object]:
    skipped = result.skip_reason is not None
    return {
        "id": result.image_id,
        "status": ImageStatus.SKIPPED if skipped else ImageStatus.DONE,
        "skip_reason": result.skip_reason,
        "width": result.width or None,
        "height": result.height or None,
        "face_count": len(result.faces),
        "embedding_space": None if skipped else space,
        "processed_at": utcnow(),
    }
