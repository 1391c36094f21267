"""Step 3 of a move: after the switch committed, thumbnails moved into place, the list of decisions not carried
written, staging data and the old collections removed."""

from __future__ import annotations

import csv
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select, update

from face_pipeline.services.library import Library
from face_pipeline.services.reembed.records import LostDecision, ReembedReport, Run, report_from_json
from face_pipeline.services.space_registry import checkpoints_of
from face_pipeline.services.thumbnail_store import thumbnail_path, write_thumbnail
from face_pipeline.settings import Settings
from face_pipeline.storage.models import (
    FaceInstance,
    ReembedRun,
    ReembedStagedFace,
    ReembedStagedImage,
    ReembedStatus,
    utcnow,
)
from face_pipeline.storage.vectors import VectorStore, VectorStoreError

log = logging.getLogger(__name__)


def discard_staging(library: Library, vectors: VectorStore, run: Run) -> None:
    vectors.drop_collection(run.staging_collection)
    shutil.rmtree(run.staging_dir(library.settings), ignore_errors=True)


def finish_run(library: Library, vectors: VectorStore, run_id: int) -> ReembedReport:
    """Everything after the commit, each step idempotent so a rerun after a crash completes it."""
    settings = library.settings
    with library.db.session() as session:
        row = session.get(ReembedRun, run_id)
        assert row is not None
        run, data = Run.of(row), dict(row.report or {})
        moves = session.execute(
            select(ReembedStagedFace.id, ReembedStagedFace.face_id).where(
                ReembedStagedFace.run_id == run_id, ReembedStagedFace.face_id.is_not(None)
            )
        ).all()
        removed = set(data.get("removed_face_ids", [])) - set(session.scalars(select(FaceInstance.id)).all())
        old_collections = [run.source, *(space.name for space in checkpoints_of(session, run.source))]
    report = report_from_json(data)
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
    discard_staging(library, vectors, run)
    report.message = _switch_message(report, left)
    return report


def _move_thumbnails(settings: Settings, run: Run, moves: Sequence[Any]) -> None:
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
