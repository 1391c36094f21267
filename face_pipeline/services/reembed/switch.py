"""Step 2 of a move: the one-transaction switch. Staged faces matched to the live ones by box overlap keep their
ids and decisions; the new raw space becomes active."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from face_pipeline.domain.face_matching import match_faces
from face_pipeline.domain.naming import noise_cluster_id
from face_pipeline.errors import Conflict
from face_pipeline.services.detection import (
    insert_faces,
    remove_faces,
)
from face_pipeline.services.library import Library
from face_pipeline.services.reembed.records import LostDecision, MoreToStage, ReembedReport, Run, report_json
from face_pipeline.services.reembed.staging import unstaged
from face_pipeline.services.space_registry import library_raw_space, lock_spaces, replace_raw_space
from face_pipeline.storage.models import (
    AssignmentSource,
    FaceAssignmentEvent,
    FaceInstance,
    FaceRejection,
    Image,
    ImageStatus,
    Person,
    PersonPrototype,
    ReembedRun,
    ReembedStagedFace,
    ReembedStagedImage,
    ReembedStatus,
    utcnow,
)
from face_pipeline.storage.vectors import VectorStore
from face_pipeline.vision.types import EmbeddingSpaceInfo

_PAGE = 4096  # vectors per fetch/upsert when filling the new collection


@dataclass
class _Snapshot:
    """What the switch reads, in one transaction."""

    faces: list[Any]  # id, image_id, box, person_id, cluster_id, assignment_source, user_confirmed, status, path
    staged: list[Any]  # staged faces of photos staged at their current content: id, image_id, box, ...
    redone: dict[int, Any]  # image id -> its staging row (photos detected again, skip_reason None)
    failed: dict[int, str]  # image id -> why it could not be detected again
    rejections: dict[int, list[str]]  # face id -> person ids it is not
    names: dict[str, str]  # person id -> name


def _lock(session: Session, run: Run) -> None:
    """First statement of the switch, a write: SQLite's writer lock (everything read next is current and stays
    so), on PostgreSQL the space rows detection batches lock too (see detection._hold_space)."""
    lock_spaces(session, [run.source, run.target])
    row = session.get(ReembedRun, run.id, with_for_update=True)
    if row is None or row.status != ReembedStatus.STAGING:
        raise Conflict(f"the move to {run.target} was finished or abandoned by another run meanwhile")
    if library_raw_space(session) != run.source:
        raise Conflict(f"the library is no longer in {run.source}; run `faces reembed` again")


def _read_snapshot(session: Session, run: Run) -> _Snapshot:
    face, image = FaceInstance, Image
    faces = session.execute(
        select(
            face.id,
            face.image_id,
            face.bbox_x,
            face.bbox_y,
            face.bbox_w,
            face.bbox_h,
            face.person_id,
            face.cluster_id,
            face.assignment_source,
            face.confidence,
            face.user_confirmed,
            image.status,
            image.path,
        )
        .join(image, image.id == face.image_id)
        .order_by(face.id)
        .with_for_update()  # PostgreSQL: a label given now waits for the switch instead of being overwritten
    ).all()
    staged_image = ReembedStagedImage
    current = (  # staged at the photo's present content, and the photo is still part of the library
        (staged_image.run_id == run.id)
        & (image.status == ImageStatus.DONE)
        & staged_image.content_hash.is_not_distinct_from(image.content_hash)
    )
    images = session.execute(
        select(staged_image.image_id, staged_image.width, staged_image.height, staged_image.skip_reason)
        .join(image, image.id == staged_image.image_id)
        .where(current)
    ).all()
    redone, failed = {}, {}
    for row in images:
        if row.skip_reason is None:
            redone[row.image_id] = row
        else:
            failed[row.image_id] = f"could not be detected again: {row.skip_reason}"
    sf = ReembedStagedFace
    staged = session.execute(
        select(
            sf.id, sf.image_id, sf.bbox_x, sf.bbox_y, sf.bbox_w, sf.bbox_h, sf.landmarks, sf.detection_score, sf.quality
        )
        .join(staged_image, staged_image.image_id == sf.image_id)
        .join(image, image.id == sf.image_id)
        .where(current, sf.run_id == run.id, staged_image.skip_reason.is_(None))
        .order_by(sf.id)
    ).all()
    rejections: dict[int, list[str]] = {}
    for face_id, person_id in session.execute(select(FaceRejection.face_id, FaceRejection.person_id)):
        rejections.setdefault(face_id, []).append(person_id)
    names = dict(session.execute(select(Person.id, Person.name)).tuples().all())
    return _Snapshot(list(faces), list(staged), redone, failed, rejections, names)


def _boxes(rows: Sequence[Any]) -> np.ndarray:
    return np.array([(r.bbox_x, r.bbox_y, r.bbox_w, r.bbox_h) for r in rows], dtype=np.float64).reshape(-1, 4)


def switch_library(
    library: Library, vectors: VectorStore, run: Run, facts: dict[str, Any], report: ReembedReport
) -> None:
    """The one transaction that moves the library (see the module doc); MoreToStage when photos are unstaged."""
    with library.db.session() as session:
        _lock(session, run)
        if session.scalar(select(func.count()).where(unstaged(run.id))):
            raise MoreToStage()
        snapshot = _read_snapshot(session, run)
        candidates = [f for f in snapshot.faces if f.image_id in snapshot.redone]
        old_rows, new_rows = match_faces(
            np.array([f.image_id for f in candidates], dtype=np.int64),
            _boxes(candidates),
            np.array([s.image_id for s in snapshot.staged], dtype=np.int64),
            _boxes(snapshot.staged),
        )
        matched = [candidates[i] for i in old_rows.tolist()]
        kept_ids = {f.id for f in matched}
        gone = [f for f in snapshot.faces if f.id not in kept_ids]
        final_ids = np.zeros(len(snapshot.staged), dtype=np.int64)
        final_ids[new_rows] = [f.id for f in matched]
        cleared = _update_matched(session, run, matched, [snapshot.staged[i] for i in new_rows.tolist()])
        fresh = np.setdiff1d(np.arange(len(snapshot.staged)), new_rows)
        final_ids[fresh] = _insert_new(session, run, [snapshot.staged[i] for i in fresh.tolist()])
        lost = _remove_unmatched(session, snapshot, gone)
        session.execute(
            update(ReembedStagedFace),
            [{"id": s.id, "face_id": int(f)} for s, f in zip(snapshot.staged, final_ids.tolist(), strict=True)],
        )
        _update_images(session, run, snapshot)
        _fill_collection(session, vectors, run, snapshot.staged, final_ids)
        _activate(session, run, facts)
        report.faces_old, report.faces_new = len(snapshot.faces), len(snapshot.staged)
        report.matched, report.added, report.removed = len(matched), int(fresh.size), len(gone)
        report.automatic_cleared = cleared
        report.decisions_carried = sum(f.user_confirmed or f.id in snapshot.rejections for f in matched)
        report.not_carried = lost
        report.photos_not_redone = len(
            set(snapshot.failed) | {f.image_id for f in gone if f.image_id not in snapshot.redone}
        )
        report.switched = True
        row = session.get(ReembedRun, run.id)
        assert row is not None
        row.status, row.switched_at = ReembedStatus.SWITCHED, utcnow()
        row.report = {**report_json(report), "removed_face_ids": [f.id for f in gone]}


def _update_matched(session: Session, run: Run, faces: list[Any], staged: list[Any]) -> int:
    """The matched faces take the new model's detection; automatic assignments are cleared. Returns how many
    faces lost an automatic person or cluster."""
    if not faces:
        return 0
    now = utcnow()
    updates, events = [], []
    for face, new in zip(faces, staged, strict=True):
        keep = face.user_confirmed
        cluster = face.cluster_id if keep else noise_cluster_id(face.id)
        person = face.person_id if keep else None
        updates.append(
            {
                "id": face.id,
                "bbox_x": new.bbox_x,
                "bbox_y": new.bbox_y,
                "bbox_w": new.bbox_w,
                "bbox_h": new.bbox_h,
                "landmarks": new.landmarks,
                "detection_score": new.detection_score,
                "quality": new.quality,
                "embedding_space": run.target,
                "person_id": person,
                "cluster_id": cluster,
                "assignment_source": face.assignment_source if keep else AssignmentSource.NOISE,
                "confidence": face.confidence if keep else None,
                "updated_at": now,
            }
        )
        if (person, cluster) != (face.person_id, face.cluster_id):
            events.append(
                {
                    "face_id": face.id,
                    "action": "reembed",
                    "source": "system",
                    "old_person_id": face.person_id,
                    "new_person_id": None,
                    "old_cluster_id": face.cluster_id,
                    "new_cluster_id": cluster,
                    "details": {"from_space": run.source, "to_space": run.target},
                    "created_at": now,
                }
            )
    session.execute(update(FaceInstance), updates)
    if events:
        session.execute(insert(FaceAssignmentEvent), events)
    return len(events)


def _insert_new(session: Session, run: Run, staged: list[Any]) -> np.ndarray:
    """New faces for what the new model found that no old face covers (singletons, as detection makes them).
    Inserted before the unmatched faces are deleted, so SQLite never hands a removed face's id to a new one."""
    now = utcnow()
    rows: list[dict[str, object]] = [
        {
            "image_id": s.image_id,
            "bbox_x": s.bbox_x,
            "bbox_y": s.bbox_y,
            "bbox_w": s.bbox_w,
            "bbox_h": s.bbox_h,
            "landmarks": s.landmarks,
            "detection_score": s.detection_score,
            "quality": s.quality,
            "embedding_space": run.target,
            "user_confirmed": False,
            "created_at": now,
            "updated_at": now,
        }
        for s in staged
    ]
    return insert_faces(session, rows)


def _remove_unmatched(session: Session, snapshot: _Snapshot, gone: list[Any]) -> list[LostDecision]:
    """Delete the faces the new model did not find again; the decisions they carried, listed."""
    if not gone:
        return []
    reasons = [_why_gone(f, snapshot) for f in gone]
    lost = [
        LostDecision(
            face_id=f.id,
            image_id=f.image_id,
            photo=f.path,
            person_name=snapshot.names.get(f.person_id) if f.user_confirmed else None,
            person_id=f.person_id if f.user_confirmed else None,
            not_this_person=sorted(snapshot.names.get(p, p) for p in snapshot.rejections.get(f.id, [])),
            reason=reason,
        )
        for f, reason in zip(gone, reasons, strict=True)
        if f.user_confirmed or f.id in snapshot.rejections
    ]
    remove_faces(session, gone, reasons)
    return lost


def _why_gone(face: Any, snapshot: _Snapshot) -> str:
    if face.image_id in snapshot.redone:
        return "the new model found no face at this place"
    if face.image_id in snapshot.failed:
        return snapshot.failed[face.image_id]
    if face.status == ImageStatus.MISSING:
        return "photo missing: it cannot be detected again"
    if face.status == ImageStatus.PENDING:
        return "photo changed: the next backfill detects it again"
    return f"photo {face.status}"


def _update_images(session: Session, run: Run, snapshot: _Snapshot) -> None:
    """Photos detected again take the new space and face count; the others lose the old space, and come back
    pending (a missing file that returns, or one the new model could not read) so the next backfill tries."""
    now = utcnow()
    counts: dict[int, int] = {}
    for staged in snapshot.staged:
        counts[staged.image_id] = counts.get(staged.image_id, 0) + 1
    if snapshot.redone:
        session.execute(
            update(Image),
            [
                {
                    "id": image_id,
                    "width": row.width,
                    "height": row.height,
                    "face_count": counts.get(image_id, 0),
                    "embedding_space": run.target,
                    "processed_at": now,
                }
                for image_id, row in snapshot.redone.items()
            ],
        )
    if snapshot.failed:
        session.execute(
            update(Image),
            [
                {
                    "id": i,
                    "status": ImageStatus.PENDING,
                    "face_count": None,
                    "embedding_space": None,
                    "processed_at": None,
                }
                for i in snapshot.failed
            ],
        )
    not_done = Image.status != ImageStatus.DONE
    session.execute(update(Image).where(not_done, Image.embedding_space.is_not(None)).values(embedding_space=None))
    session.execute(update(Image).where(Image.status == ImageStatus.MISSING).values(processed_at=None))


def _fill_collection(
    session: Session, vectors: VectorStore, run: Run, staged: list[Any], final_ids: np.ndarray
) -> None:
    """The new space's collection, rebuilt from the staged vectors under the final face ids (before the commit;
    nothing reads it until the space is active, and a retried switch rebuilds it)."""
    vectors.drop_collection(run.target)
    vectors.ensure_collection(run.target, run.dim)
    if not staged:
        return
    staged_ids = np.array([s.id for s in staged], dtype=np.int64)
    faces = session.execute(
        select(FaceInstance.id, FaceInstance.image_id, FaceInstance.person_id, FaceInstance.cluster_id).where(
            FaceInstance.embedding_space == run.target
        )
    ).all()
    by_id = {f.id: f for f in faces}
    for start in range(0, staged_ids.size, _PAGE):
        ids = final_ids[start : start + _PAGE]
        matrix = vectors.fetch(run.staging_collection, staged_ids[start : start + _PAGE])
        payloads = [
            {"image_id": by_id[i].image_id, "person_id": by_id[i].person_id, "cluster_id": by_id[i].cluster_id}
            for i in ids.tolist()
        ]
        vectors.upsert(run.target, ids, matrix, payloads)


def _activate(session: Session, run: Run, facts: dict[str, Any]) -> None:
    """The new raw space active, the old one and its projections retired (the registry's
    replace_raw_space); prototypes of other spaces dropped (cluster-dual rebuilds them)."""
    info = EmbeddingSpaceInfo(run.target, str(facts.get("model") or run.model), run.dim)
    replace_raw_space(session, info, model_facts=facts, old=run.source)
    session.execute(delete(PersonPrototype).where(PersonPrototype.embedding_space != run.target))
