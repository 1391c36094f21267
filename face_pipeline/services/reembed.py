"""Move a library to another face model (`faces reembed --model buffalo_s`) without losing users' decisions.

Three steps, each safe to interrupt:

1. Staging (`stage_library`): every photo of the library (status done) is detected and embedded again by the
   new model through detection's worker pool (`processed_photos`), into tables of its own
   (reembed_staged_images: the resume point; reembed_staged_faces: boxes, landmarks, scores), a staging
   vector collection keyed by staged-face id, and a staging thumbnail folder. One transaction per batch, so
   Ctrl-C loses at most the batch in flight and a rerun resumes. Nothing live is touched: the old space keeps
   serving backfill, clustering and labelling. A photo whose content changed since it was staged is staged
   again; photos that arrive meanwhile are staged before the switch.
2. The switch (`reembed_library`, once everything is staged), one SQL transaction: each photo's staged faces
   are matched to its faces by box overlap (`match_faces`). A matched face keeps its row and id, so its name,
   user_confirmed flag, "not this person" rejections, merges and audit history carry over; it takes the new
   box, landmarks, score, quality and space. Automatic assignments are cleared to singletons (the next
   cluster-dual recomputes them in the new space). A staged face without a match becomes a new face; a face
   without one is removed with an audit event, and those carrying a user decision are listed (report, CSV).
   Vectors go into the new space's collection under the final face ids before the commit; the new raw space
   becomes active and the old one, with the projections trained on it, retired in the same transaction.
3. Clean-up (`finish_switched_runs`): thumbnails moved into place, the CSV written, staging rows, collection
   and folder removed, the retired spaces' collections dropped. A crash after the commit leaves the run
   marked switched, and the next `faces reembed` finishes it first.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import delete, exists, func, insert, select, update
from sqlalchemy.orm import Session

from face_pipeline.domain.face_matching import match_faces
from face_pipeline.domain.naming import noise_cluster_id
from face_pipeline.errors import Conflict, InvalidInput, UserFacingError
from face_pipeline.services.detection import (
    DetectReport,
    Progress,
    face_columns,
    insert_faces,
    processed_photos,
    remove_faces,
)
from face_pipeline.services.library import Library
from face_pipeline.services.space_registry import checkpoints_of, library_raw_space, lock_spaces, replace_raw_space
from face_pipeline.services.thumbnail_store import thumbnail_path, write_thumbnail
from face_pipeline.settings import Settings
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
from face_pipeline.storage.vectors import VectorStore, VectorStoreError
from face_pipeline.vision.embedders import create_embedder, describe_embedder
from face_pipeline.vision.model_packs import DLIB_SPACE_NAME, INSIGHTFACE_SPACE_PREFIX, ModelChoice
from face_pipeline.vision.types import EmbeddingSpaceInfo, FaceEmbedder
from face_pipeline.vision.worker import PhotoResult

log = logging.getLogger(__name__)

MODELS = (ModelChoice.BUFFALO_S, ModelChoice.BUFFALO_L, ModelChoice.DLIB, ModelChoice.INSIGHTFACE)
REEMBED_DIR = "reembed"  # under FACE_DATA_DIR: staged thumbnails and the lists of decisions not carried
_SWITCH_ATTEMPTS = 5  # photos arriving between the last staging pass and the switch: stage them, try again
_PAGE = 4096  # vectors per fetch/upsert when filling the new collection


class SameModel(UserFacingError):
    """The library is already in the space the requested model produces."""


class _MoreToStage(Exception):
    """Photos arrived (or changed) since the last staging pass; the switch rolled back to stage them."""


@dataclass(frozen=True)
class LostDecision:
    """A user's decision on a face that the new model did not find again: it could not be carried over."""

    face_id: int
    image_id: int
    photo: str
    person_name: str | None  # the name the user gave the face
    person_id: str | None
    not_this_person: list[str]  # names the user ruled out for it
    reason: str


@dataclass
class ReembedReport:
    source_space: str = ""
    target_space: str = ""
    photos_staged: int = 0  # by this call
    faces_staged: int = 0
    photos_total: int = 0  # the library's photos with status done
    photos_remaining: int = 0  # still to stage (a run with a limit)
    photos_not_redone: int = 0  # file gone, unreadable, changed: their faces could not be carried over
    faces_old: int = 0
    faces_new: int = 0
    matched: int = 0
    added: int = 0
    removed: int = 0
    automatic_cleared: int = 0  # automatic person or cluster assignments reset to singletons
    decisions_carried: int = 0  # faces with a user decision (a name or a rejection) that kept their row
    not_carried: list[LostDecision] = field(default_factory=list)
    switched: bool = False
    csv_path: str | None = None
    message: str = ""
    seconds: float = 0.0

    @property
    def decisions_not_carried(self) -> int:
        return len(self.not_carried)

    def as_metadata(self) -> dict[str, Any]:
        data = {k: v for k, v in dataclasses.asdict(self).items() if k != "not_carried"}
        data["decisions_not_carried"] = self.decisions_not_carried
        data["seconds"] = round(self.seconds, 2)
        return data


@dataclass(frozen=True)
class _Run:
    id: int
    source: str
    target: str
    model: str
    dim: int

    @property
    def staging_collection(self) -> str:
        return f"reembed_staging_{self.id}"

    def staging_dir(self, settings: Settings) -> Path:
        return settings.data_dir / REEMBED_DIR / f"run{self.id}-staging"

    def csv_path(self, settings: Settings) -> Path:
        return settings.data_dir / REEMBED_DIR / f"not-carried-run{self.id}-{self.target}.csv"

    @classmethod
    def of(cls, row: ReembedRun) -> _Run:
        return cls(row.id, row.source_space, row.target_space, row.target_model, row.dim)


# --- which model, which space ------------------------------------------------------------------------------


def parse_model(value: str) -> ModelChoice:
    """The --model value as a ModelChoice; InvalidInput naming the allowed ones otherwise."""
    allowed = ", ".join(MODELS)
    try:
        choice = ModelChoice(value.strip().lower())
    except ValueError:
        choice = None
    if choice not in MODELS:
        raise InvalidInput(f"--model must be one of {allowed}, got {value!r}")
    assert choice is not None
    return choice


def target_space_name(settings: Settings, choice: ModelChoice) -> str:
    """The raw space `choice` embeds into, without loading the model (the embedders name them the same way)."""
    if choice is ModelChoice.DLIB:
        return DLIB_SPACE_NAME
    pack = settings.model_name if choice is ModelChoice.INSIGHTFACE else str(choice)
    return f"{INSIGHTFACE_SPACE_PREFIX}{pack}"


def check_reembed(library: Library, model: str) -> str:
    """The space the library would move to; InvalidInput / SameModel (one line each) when it cannot move.
    Cheap (SQL only): the CLI calls it before a run is recorded."""
    choice = parse_model(model)
    target = target_space_name(library.settings, choice)
    with library.db.session() as session:
        _refuse(session, choice, target)
    return target


def _refuse(session: Session, choice: ModelChoice, target: str) -> str:
    """The library's raw space, unless the move to `target` cannot start."""
    source = library_raw_space(session)
    if source is None:
        raise InvalidInput(f"the library has no faces yet: set FACE_EMBEDDER={choice} and run `faces backfill` instead")
    if source == target and _switched_run(session, target) is None:
        raise SameModel(f"the library is already in {target} (model {choice}): nothing to re-embed")
    return source


def _switched_run(session: Session, target: str) -> ReembedRun | None:
    return session.scalar(
        select(ReembedRun).where(ReembedRun.status == ReembedStatus.SWITCHED, ReembedRun.target_space == target)
    )


# --- the use cases -----------------------------------------------------------------------------------------


def stage_library(
    library: Library,
    vectors: VectorStore,
    model: str,
    *,
    limit: int | None = None,
    progress: Progress | None = None,
    embedder: FaceEmbedder | None = None,
) -> ReembedReport:
    """Stage up to `limit` photos not staged yet with `model`; never switches (see the module doc)."""
    staged = _stage_what_is_left(library, vectors, model, limit, progress, embedder, finish=False)
    return staged if isinstance(staged, ReembedReport) else staged.report


def reembed_library(
    library: Library,
    vectors: VectorStore,
    model: str,
    *,
    limit: int | None = None,
    progress: Progress | None = None,
    embedder: FaceEmbedder | None = None,
) -> ReembedReport:
    """Stage what is left (at most `limit` photos), then, when every photo is staged, switch and clean up."""
    staged = _stage_what_is_left(library, vectors, model, limit, progress, embedder, finish=True)
    if isinstance(staged, ReembedReport):
        return staged
    if staged.report.photos_remaining:
        return staged.report
    run, embedder, report, started = staged.run, staged.embedder, staged.report, staged.started
    facts = describe_embedder(embedder)
    for _ in range(_SWITCH_ATTEMPTS):
        try:
            _switch(library, vectors, run, facts, report)
            break
        except _MoreToStage:
            _stage(library, vectors, run, embedder, None, progress, report)
    else:
        raise Conflict("photos keep arriving faster than they are staged; run `faces reembed` again later")
    finished = _finish(library, vectors, run.id)
    finished.photos_staged, finished.faces_staged = report.photos_staged, report.faces_staged
    finished.seconds = time.perf_counter() - started
    log.info("re-embedded the library: %s", finished.message)
    return finished


@dataclass
class _Staged:
    """A run staged as far as it goes now; `report` says so (its message is set)."""

    run: _Run
    embedder: FaceEmbedder
    report: ReembedReport
    started: float


def _stage_what_is_left(
    library: Library,
    vectors: VectorStore,
    model: str,
    limit: int | None,
    progress: Progress | None,
    embedder: FaceEmbedder | None,
    *,
    finish: bool,
) -> ReembedReport | _Staged:
    """Open (or resume) the move to `model` and stage photos; a report instead when the move cannot start or a
    committed switch was just finished (see `_prepare`)."""
    started = time.perf_counter()
    prepared = _prepare(library, vectors, model, embedder, finish=finish)
    if isinstance(prepared, ReembedReport):
        return prepared
    run, embedder = prepared
    report = ReembedReport(source_space=run.source, target_space=run.target)
    _stage(library, vectors, run, embedder, limit, progress, report)
    report.message = _staging_message(report, model)
    report.seconds = time.perf_counter() - started
    return _Staged(run, embedder, report, started)


def finish_switched_runs(library: Library, vectors: VectorStore) -> list[ReembedReport]:
    """Clean up after switches that committed but did not finish (a crash after the commit)."""
    with library.db.session() as session:
        ids = session.scalars(select(ReembedRun.id).where(ReembedRun.status == ReembedStatus.SWITCHED)).all()
    return [_finish(library, vectors, run_id) for run_id in ids]


def _prepare(
    library: Library, vectors: VectorStore, model: str, embedder: FaceEmbedder | None, *, finish: bool
) -> ReembedReport | tuple[_Run, FaceEmbedder]:
    """Refuse a move that cannot start, else the run to stage into and its model. A switch to `model`'s space
    that committed but was not cleaned up (a crash) is finished when `finish`, else left to the switch step;
    either way its report comes back instead."""
    choice = parse_model(model)
    target = target_space_name(library.settings, choice)
    finished = {r.target_space: r for r in finish_switched_runs(library, vectors)} if finish else {}
    with library.db.session() as session:
        source = library_raw_space(session)
        pending = _switched_run(session, target)
        if source == target and pending is not None:
            report = _report_from_json(dict(pending.report or {}))
            report.message = f"the switch to {target} committed earlier; its clean-up comes with the switch step"
            return report
    if target in finished and source == target:
        report = finished[target]
        report.message = "finished the switch an earlier run had committed: " + report.message
        return report
    with library.db.session() as session:
        source = _refuse(session, choice, target)
    embedder = embedder or create_embedder(library.settings, choice)
    space = embedder.space
    if space.name == source:  # a pack whose space name differs from the guess (FACE_MODEL_NAME)
        raise SameModel(f"the library is already in {space.name} (model {choice}): nothing to re-embed")
    return _open_run(library, vectors, source, space, choice), embedder


def _open_run(
    library: Library, vectors: VectorStore, source: str, space: EmbeddingSpaceInfo, choice: ModelChoice
) -> _Run:
    """The staging run for source -> space: resumed when one is there; one for another move is abandoned."""
    with library.db.session() as session:
        for row in session.scalars(select(ReembedRun).where(ReembedRun.status == ReembedStatus.STAGING)).all():
            if (row.source_space, row.target_space, row.dim) == (source, space.name, space.dim):
                log.info("resuming the staged move %s -> %s (run %d)", source, space.name, row.id)
                return _Run.of(row)
            log.info("abandoning the staged move %s -> %s (run %d)", row.source_space, row.target_space, row.id)
            _discard_staging(library, vectors, _Run.of(row))
            session.execute(delete(ReembedStagedFace).where(ReembedStagedFace.run_id == row.id))
            session.execute(delete(ReembedStagedImage).where(ReembedStagedImage.run_id == row.id))
            row.status = ReembedStatus.ABANDONED
        row = ReembedRun(source_space=source, target_space=space.name, target_model=str(choice), dim=space.dim)
        session.add(row)
        session.flush()
        run = _Run.of(row)
    _discard_staging(library, vectors, run)  # leftovers of a run whose row a rollback undid
    return run


def _discard_staging(library: Library, vectors: VectorStore, run: _Run) -> None:
    vectors.drop_collection(run.staging_collection)
    shutil.rmtree(run.staging_dir(library.settings), ignore_errors=True)


# --- 1. staging --------------------------------------------------------------------------------------------


def _unstaged(run_id: int) -> Any:
    """Photos of the library that this run has not staged at their current content."""
    staged = exists().where(
        ReembedStagedImage.run_id == run_id,
        ReembedStagedImage.image_id == Image.id,
        ReembedStagedImage.content_hash.is_not_distinct_from(Image.content_hash),
    )
    return (Image.status == ImageStatus.DONE) & ~staged


def _stage(
    library: Library,
    vectors: VectorStore,
    run: _Run,
    embedder: FaceEmbedder,
    limit: int | None,
    progress: Progress | None,
    report: ReembedReport,
) -> None:
    started = time.perf_counter()
    query = select(Image.id, Image.path, Image.content_hash).where(_unstaged(run.id)).order_by(Image.id)
    with library.db.session() as session:
        tasks = session.execute(query.limit(limit) if limit is not None else query).all()
    counts = DetectReport(space=run.target)
    if tasks:
        vectors.ensure_collection(run.staging_collection, run.dim)
        hashes = {t.id: t.content_hash for t in tasks}
        with processed_photos(library.settings, [(t.id, t.path) for t in tasks], embedder) as batches:
            for batch in batches:
                _stage_batch(library, vectors, run, batch, hashes)
                counts.count(batch)
                counts.seconds = time.perf_counter() - started
                if progress:
                    progress(counts, len(tasks))
    report.photos_staged += counts.photos
    report.faces_staged += counts.faces
    with library.db.session() as session:
        report.photos_remaining = session.scalar(select(func.count()).where(_unstaged(run.id))) or 0
        report.photos_total = session.scalar(select(func.count()).where(Image.status == ImageStatus.DONE)) or 0


def _stage_batch(
    library: Library, vectors: VectorStore, run: _Run, batch: list[PhotoResult], hashes: dict[int, str | None]
) -> None:
    """One transaction: the batch's earlier staging (a photo that changed since) goes, the new one comes.
    Vectors and thumbnails are written under the staged ids before the commit: a rollback leaves orphans that
    a reused id overwrites and the clean-up removes, never a staged face without them."""
    image_ids = [r.image_id for r in batch]
    staged, images = ReembedStagedFace, ReembedStagedImage
    with library.db.session() as session:
        session.execute(delete(staged).where(staged.run_id == run.id, staged.image_id.in_(image_ids)))
        session.execute(delete(images).where(images.run_id == run.id, images.image_id.in_(image_ids)))
        rows, embeddings, owners = face_columns(batch)
        for row in rows:
            row["run_id"] = run.id
        staged_ids: list[int] = []
        if rows:
            statement = insert(staged).returning(staged.id, sort_by_parameter_order=True)
            staged_ids = list(session.scalars(statement, rows).all())
            payloads = [{"image_id": i, "person_id": None, "cluster_id": None} for i in owners]
            vectors.upsert(run.staging_collection, np.array(staged_ids, np.int64), np.stack(embeddings), payloads)
        thumbs = [t for r in batch for t in r.thumbnails]
        folder = run.staging_dir(library.settings)
        for staged_id, jpeg in zip(staged_ids, thumbs, strict=True):
            write_thumbnail(folder, staged_id, jpeg)
        now = utcnow()
        session.execute(
            insert(images),
            [
                {
                    "run_id": run.id,
                    "image_id": r.image_id,
                    "content_hash": hashes[r.image_id],
                    "width": r.width or None,
                    "height": r.height or None,
                    "face_count": len(r.faces),
                    "skip_reason": r.skip_reason,
                    "staged_at": now,
                }
                for r in batch
            ],
        )


def _staging_message(report: ReembedReport, model: str) -> str:
    done = report.photos_total - report.photos_remaining
    text = (
        f"staged {report.photos_staged} photos ({report.faces_staged} faces) with {report.target_space}; "
        f"{done} of {report.photos_total} photos staged"
    )
    if report.photos_remaining:
        return text + f", {report.photos_remaining} to go: run `faces reembed --model {model}` again to go on"
    return text + f"; the switch is next (`faces reembed --model {model}` without --limit)"


# --- 2. the switch -----------------------------------------------------------------------------------------


@dataclass
class _Snapshot:
    """What the switch reads, in one transaction."""

    faces: list[Any]  # id, image_id, box, person_id, cluster_id, assignment_source, user_confirmed, status, path
    staged: list[Any]  # staged faces of photos staged at their current content: id, image_id, box, ...
    redone: dict[int, Any]  # image id -> its staging row (photos detected again, skip_reason None)
    failed: dict[int, str]  # image id -> why it could not be detected again
    rejections: dict[int, list[str]]  # face id -> person ids it is not
    names: dict[str, str]  # person id -> name


def _lock(session: Session, run: _Run) -> None:
    """First statement of the switch, a write: SQLite's writer lock (everything read next is current and stays
    so), on PostgreSQL the space rows detection batches lock too (see detection._hold_space)."""
    lock_spaces(session, [run.source, run.target])
    row = session.get(ReembedRun, run.id, with_for_update=True)
    if row is None or row.status != ReembedStatus.STAGING:
        raise Conflict(f"the move to {run.target} was finished or abandoned by another run meanwhile")
    if library_raw_space(session) != run.source:
        raise Conflict(f"the library is no longer in {run.source}; run `faces reembed` again")


def _read_snapshot(session: Session, run: _Run) -> _Snapshot:
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


def _switch(
    library: Library, vectors: VectorStore, run: _Run, facts: dict[str, Any], report: ReembedReport
) -> None:
    """The one transaction that moves the library (see the module doc); _MoreToStage when photos are unstaged."""
    with library.db.session() as session:
        _lock(session, run)
        if session.scalar(select(func.count()).where(_unstaged(run.id))):
            raise _MoreToStage()
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
        row.report = {**_report_json(report), "removed_face_ids": [f.id for f in gone]}


def _update_matched(session: Session, run: _Run, faces: list[Any], staged: list[Any]) -> int:
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


def _insert_new(session: Session, run: _Run, staged: list[Any]) -> np.ndarray:
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


def _update_images(session: Session, run: _Run, snapshot: _Snapshot) -> None:
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
    session: Session, vectors: VectorStore, run: _Run, staged: list[Any], final_ids: np.ndarray
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


def _activate(session: Session, run: _Run, facts: dict[str, Any]) -> None:
    """The new raw space active, the old one and its projections retired (the registry's
    replace_raw_space); prototypes of other spaces dropped (cluster-dual rebuilds them)."""
    info = EmbeddingSpaceInfo(run.target, str(facts.get("model") or run.model), run.dim)
    replace_raw_space(session, info, model_facts=facts, old=run.source)
    session.execute(delete(PersonPrototype).where(PersonPrototype.embedding_space != run.target))


def _report_json(report: ReembedReport) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(report).items() if k not in ("seconds", "message")}


def _report_from_json(data: dict[str, Any]) -> ReembedReport:
    names = {f.name for f in dataclasses.fields(ReembedReport)}
    values = {k: v for k, v in data.items() if k in names}
    values["not_carried"] = [LostDecision(**d) for d in data.get("not_carried", [])]
    return ReembedReport(**values)


# --- 3. clean-up -------------------------------------------------------------------------------------------


def _finish(library: Library, vectors: VectorStore, run_id: int) -> ReembedReport:
    """Everything after the commit, each step idempotent so a rerun after a crash completes it."""
    settings = library.settings
    with library.db.session() as session:
        row = session.get(ReembedRun, run_id)
        assert row is not None
        run, data = _Run.of(row), dict(row.report or {})
        moves = session.execute(
            select(ReembedStagedFace.id, ReembedStagedFace.face_id).where(
                ReembedStagedFace.run_id == run_id, ReembedStagedFace.face_id.is_not(None)
            )
        ).all()
        removed = set(data.get("removed_face_ids", [])) - set(session.scalars(select(FaceInstance.id)).all())
        old_collections = [run.source, *(space.name for space in checkpoints_of(session, run.source))]
    report = _report_from_json(data)
    for face_id in removed:
        thumbnail_path(settings.thumbnails_dir, face_id).unlink(missing_ok=True)
    _move_thumbnails(settings, run, moves)
    report.csv_path = str(_write_csv(run.csv_path(settings), report.not_carried))
    left = _drop_collections(vectors, old_collections)
    vectors.optimize(run.target)
    with library.db.session() as session:
        session.execute(delete(ReembedStagedFace).where(ReembedStagedFace.run_id == run_id))
        session.execute(delete(ReembedStagedImage).where(ReembedStagedImage.run_id == run_id))
        session.execute(
            update(ReembedRun)
            .where(ReembedRun.id == run_id)
            .values(status=ReembedStatus.FINISHED, finished_at=utcnow(), report={**data, "csv_path": report.csv_path})
        )
    _discard_staging(library, vectors, run)
    report.message = _switch_message(report, left)
    return report


def _move_thumbnails(settings: Settings, run: _Run, moves: Sequence[Any]) -> None:
    """Each staged face's thumbnail to its face id (read + atomic write: the two folders may be on two disks)."""
    folder = run.staging_dir(settings)
    for staged_id, face_id in moves:
        source = thumbnail_path(folder, staged_id)
        try:
            jpeg = source.read_bytes()
        except FileNotFoundError:  # moved by an earlier, interrupted clean-up
            continue
        write_thumbnail(settings.thumbnails_dir, face_id, jpeg)
        source.unlink()


def _write_csv(path: Path, lost: list[LostDecision]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    with partial.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["face_id", "photo", "person_name", "person_id", "not_this_person", "reason"])
        for d in lost:
            writer.writerow(
                [d.face_id, d.photo, d.person_name or "", d.person_id or "", "; ".join(d.not_this_person), d.reason]
            )
    partial.replace(path)
    return path


def _drop_collections(vectors: VectorStore, names: list[str]) -> list[str]:
    """Drop the retired spaces' collections; one another process holds stays (harmless: nothing reads a
    retired space) and is named in the message."""
    left = []
    for name in names:
        try:
            vectors.drop_collection(name)
        except VectorStoreError as exc:
            log.warning("kept the retired collection %s: %s", name, exc)
            left.append(name)
    return left


def _switch_message(report: ReembedReport, left: list[str]) -> str:
    text = (
        f"{report.source_space} -> {report.target_space}: {report.faces_old} faces before, {report.faces_new} "
        f"after; {report.matched} kept their row, {report.added} new, {report.removed} removed; "
        f"{report.decisions_carried} user decisions carried, {report.decisions_not_carried} not carried"
    )
    if left:
        text += f" (retired collections still in use, kept: {', '.join(left)})"
    return text
