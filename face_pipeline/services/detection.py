"""Detect and embed the faces of pending photos: SQL rows, vectors in the raw space's collection.

Work goes in batches; each batch is one transaction, so an interrupted run loses at most the batch in
flight and the next run picks up the photos still pending. Re-running with nothing pending is a no-op.

A photo detected again (its pixels changed) loses its old faces, but not the user's decisions about them:
a name the user confirmed, and each "not this person", move to the new face at the same place (boxes
overlapping by IoU >= CARRY_MIN_IOU). Each photo's pixel hash is stored, so a later edit of only its
metadata is recognised by the scan (services/catalog.py) and costs no detection at all.

`processed_photos` (the worker pool, results in batches) is shared with `faces reembed` (services/reembed.py),
which runs the library's photos through another model into a staging area.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from face_pipeline.domain.naming import noise_cluster_id, person_cluster_id
from face_pipeline.faults import crash_point
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
    FaceRejection,
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
CARRY_MIN_IOU = 0.5  # a new face inherits an old face's decisions when their boxes overlap this much


@dataclass
class DetectReport:
    photos: int = 0
    photos_with_faces: int = 0
    faces: int = 0
    skipped: int = 0
    replaced_faces: int = 0
    carried_decisions: int = 0  # old faces whose user decisions moved to the new face at the same place
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


def pending_photos(db: Database, limit: int | None, image_ids: Sequence[int] | None = None) -> list[tuple[int, str]]:
    """(id, path) of pending photos, oldest first; `image_ids`: only these (a detection partition)."""
    query = select(Image.id, Image.path).where(Image.status == ImageStatus.PENDING).order_by(Image.id)
    if image_ids is not None:
        query = query.where(Image.id.in_(list(image_ids)))
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
    image_ids: Sequence[int] | None = None,
) -> DetectReport:
    """Detect, embed and store the faces of up to `limit` pending photos (`image_ids`: of these only)."""
    started = time.perf_counter()
    tasks = pending_photos(db, limit, image_ids)
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
        pool.close()  # every result read: let the workers finish rather than terminate them
        pool.join()


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
    pixels = {r.image_id: r.pixel_hash for r in batch if r.pixel_hash is not None}
    with db.session() as session:
        _hold_space(session, space)
        decisions = _user_decisions(session, image_ids)
        report.replaced_faces += _drop_previous_faces(session, vectors, space, image_ids)
        rows, embeddings, owners = face_columns(batch)
        now = utcnow()
        for row in rows:
            row.update(embedding_space=space, user_confirmed=False, created_at=now, updated_at=now)
        face_ids = insert_faces(session, rows)
        carried = _carry_decisions(session, decisions, rows, face_ids)
        report.carried_decisions += len(carried)
        if face_ids.size:
            payloads = [
                {
                    "face_id": int(f),
                    "image_id": int(i),
                    "person_id": carried.get(int(f)),
                    "cluster_id": _cluster_of(int(f), carried.get(int(f))),
                }
                for f, i in zip(face_ids, owners, strict=True)
            ]
            vectors.upsert(space, face_ids, np.stack(embeddings), payloads)
        crash_point("detect_before_commit")
        session.execute(update(Image), [_image_update(r, space, pixels.get(r.image_id)) for r in batch])
    crash_point("detect_batch_committed")
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


@dataclass(frozen=True)
class _Decision:
    """What the user decided about a face that is about to be replaced."""

    face_id: int
    image_id: int
    box: tuple[int, int, int, int]  # x, y, w, h
    person_id: str | None  # confirmed by the user as this person
    rejected: tuple[str, ...]  # "not this person", for each of these


def _user_decisions(session: Session, image_ids: list[int]) -> list[_Decision]:
    """The user's decisions about the current faces of these photos (read before they are replaced)."""
    face = FaceInstance
    in_photos = face.image_id.in_(image_ids)
    confirmed = session.execute(
        select(face.id, face.person_id).where(in_photos, face.user_confirmed.is_(True), face.person_id.is_not(None))
    ).all()
    rejections = session.execute(
        select(FaceRejection.face_id, FaceRejection.person_id)
        .join(face, face.id == FaceRejection.face_id)
        .where(in_photos)
    ).all()
    if not confirmed and not rejections:
        return []
    people = {row.id: row.person_id for row in confirmed}
    ruled_out: dict[int, list[str]] = defaultdict(list)
    for row in rejections:
        ruled_out[row.face_id].append(row.person_id)
    ids = sorted(people.keys() | ruled_out.keys())
    boxes = session.execute(
        select(face.id, face.image_id, face.bbox_x, face.bbox_y, face.bbox_w, face.bbox_h).where(face.id.in_(ids))
    ).all()
    return [
        _Decision(r.id, r.image_id, (r.bbox_x, r.bbox_y, r.bbox_w, r.bbox_h), people.get(r.id), tuple(ruled_out[r.id]))
        for r in boxes
    ]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box in a (n x 4) with every box in b (m x 4), boxes as x, y, w, h;
    an n x m float array."""
    a = a.astype(np.float64).reshape(-1, 4)
    b = b.astype(np.float64).reshape(-1, 4)
    left = np.maximum(a[:, None, 0], b[None, :, 0])
    top = np.maximum(a[:, None, 1], b[None, :, 1])
    right = np.minimum(a[:, None, 0] + a[:, None, 2], b[None, :, 0] + b[None, :, 2])
    bottom = np.minimum(a[:, None, 1] + a[:, None, 3], b[None, :, 1] + b[None, :, 3])
    inter = np.clip(right - left, 0, None) * np.clip(bottom - top, 0, None)
    areas_a = a[:, 2] * a[:, 3]
    areas_b = b[:, 2] * b[:, 3]
    union = areas_a[:, None] + areas_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_boxes(old: np.ndarray, new: np.ndarray, min_iou: float = CARRY_MIN_IOU) -> list[tuple[int, int, float]]:
    """One-to-one pairs (old index, new index, IoU) of boxes overlapping at least min_iou, best overlap first."""
    iou = box_iou(old, new)
    pairs: list[tuple[int, int, float]] = []
    if iou.size == 0:
        return pairs
    order = np.argsort(-iou, axis=None, kind="stable")
    used_old: set[int] = set()
    used_new: set[int] = set()
    for i, j in zip(*np.unravel_index(order, iou.shape), strict=True):
        if iou[i, j] < min_iou:
            break
        if int(i) not in used_old and int(j) not in used_new:
            used_old.add(int(i))
            used_new.add(int(j))
            pairs.append((int(i), int(j), float(iou[i, j])))
    return pairs


def _carry_decisions(
    session: Session, decisions: list[_Decision], rows: list[dict[str, object]], face_ids: np.ndarray
) -> dict[int, str | None]:
    """Move each replaced face's decisions to the new face at the same place; returns new face id -> the
    person it was confirmed as (None when only rejections moved). Faces with no match lose them, as before."""
    if not decisions or not face_ids.size:
        return {}
    positions: dict[int, list[int]] = defaultdict(list)
    for position, row in enumerate(rows):
        positions[int(row["image_id"])].append(position)  # type: ignore[call-overload]
    by_photo: dict[int, list[_Decision]] = defaultdict(list)
    for decision in decisions:
        by_photo[decision.image_id].append(decision)
    moves: list[tuple[_Decision, int, float]] = []
    for image_id, olds in by_photo.items():
        found = positions.get(image_id, [])
        boxes = np.array([[rows[p][k] for k in ("bbox_x", "bbox_y", "bbox_w", "bbox_h")] for p in found])
        for i, j, iou in match_boxes(np.array([d.box for d in olds]), boxes):
            moves.append((olds[i], int(face_ids[found[j]]), iou))
    _apply_moves(session, moves)
    return {new_id: old.person_id for old, new_id, _ in moves}


def _apply_moves(session: Session, moves: list[tuple[_Decision, int, float]]) -> None:
    confirmed = [(old, new_id) for old, new_id, _ in moves if old.person_id is not None]
    if confirmed:
        session.execute(
            update(FaceInstance),
            [
                {
                    "id": new_id,
                    "person_id": old.person_id,
                    "cluster_id": person_cluster_id(old.person_id),
                    "assignment_source": AssignmentSource.USER,
                    "confidence": 1.0,
                    "user_confirmed": True,
                }
                for old, new_id in confirmed
            ],
        )
    now = utcnow()
    rejections = [
        {"face_id": new_id, "person_id": person, "created_at": now}
        for old, new_id, _ in moves
        for person in old.rejected
    ]
    if rejections:
        session.execute(insert(FaceRejection), rejections)
    if moves:
        session.execute(
            insert(FaceAssignmentEvent),
            [
                {
                    "face_id": new_id,
                    "action": "decision_carried",
                    "source": "system",
                    "old_person_id": None,
                    "new_person_id": old.person_id,
                    "old_cluster_id": None,
                    "new_cluster_id": _cluster_of(new_id, old.person_id),
                    "details": {
                        "reason": "photo content changed",
                        "from_face_id": old.face_id,
                        "box_iou": round(iou, 3),
                        "rejected_person_ids": list(old.rejected),
                    },
                    "created_at": now,
                }
                for old, new_id, iou in moves
            ],
        )


def _cluster_of(face_id: int, person_id: str | None) -> str:
    return person_cluster_id(person_id) if person_id else noise_cluster_id(face_id)


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


def _image_update(result: PhotoResult, space: str, pixels: str | None) -> dict[str, object]:
    skipped = result.skip_reason is not None
    return {
        "id": result.image_id,
        "pixel_hash": None if skipped else pixels,
        "status": ImageStatus.SKIPPED if skipped else ImageStatus.DONE,
        "skip_reason": result.skip_reason,
        "width": result.width or None,
        "height": result.height or None,
        "face_count": len(result.faces),
        "embedding_space": None if skipped else space,
        "processed_at": utcnow(),
    }
