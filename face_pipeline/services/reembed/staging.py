"""Step 1 of a move: every photo detected and embedded again by the new model into a staging area, a batch per
transaction, resumable."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from sqlalchemy import delete, exists, func, insert, select

from face_pipeline.services.detection import (
    DetectReport,
    Progress,
    face_columns,
    processed_photos,
)
from face_pipeline.services.library import Library
from face_pipeline.services.reembed.records import ReembedReport, Run
from face_pipeline.services.thumbnail_store import write_thumbnail
from face_pipeline.storage.models import (
    Image,
    ImageStatus,
    ReembedStagedFace,
    ReembedStagedImage,
    utcnow,
)
from face_pipeline.storage.vectors import VectorStore
from face_pipeline.vision.types import FaceEmbedder
from face_pipeline.vision.worker import PhotoResult


def unstaged(run_id: int) -> Any:
    """Photos of the library that this run has not staged at their current content."""
    staged = exists().where(
        ReembedStagedImage.run_id == run_id,
        ReembedStagedImage.image_id == Image.id,
        ReembedStagedImage.content_hash.is_not_distinct_from(Image.content_hash),
    )
    return (Image.status == ImageStatus.DONE) & ~staged


def stage_photos(
    library: Library,
    vectors: VectorStore,
    run: Run,
    embedder: FaceEmbedder,
    limit: int | None,
    progress: Progress | None,
    report: ReembedReport,
) -> None:
    started = time.perf_counter()
    query = select(Image.id, Image.path, Image.content_hash).where(unstaged(run.id)).order_by(Image.id)
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
        report.photos_remaining = session.scalar(select(func.count()).where(unstaged(run.id))) or 0
        report.photos_total = session.scalar(select(func.count()).where(Image.status == ImageStatus.DONE)) or 0


def _stage_batch(
    library: Library, vectors: VectorStore, run: Run, batch: list[PhotoResult], hashes: dict[int, str | None]
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


def staging_message(report: ReembedReport, model: str) -> str:
    done = report.photos_total - report.photos_remaining
    text = (
        f"staged {report.photos_staged} photos ({report.faces_staged} faces) with {report.target_space}; "
        f"{done} of {report.photos_total} photos staged"
    )
    if report.photos_remaining:
        return text + f", {report.photos_remaining} to go: run `faces reembed --model {model}` again to go on"
    return text + f"; the switch is next (`faces reembed --model {model}` without --limit)"
