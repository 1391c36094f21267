"""The photo's main face: its largest face (by box area), the one a folder-per-person set (LFW) names; other
faces in the photo are background people. The one rule the evaluation and the tests use, for faces in a
library (SQL) and for faces a model just found in a photo.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from sqlalchemy import select

from face_pipeline.storage.db import Database
from face_pipeline.storage.models import FaceInstance
from face_pipeline.storage.models import Image as ImageRow
from face_pipeline.vision.types import DetectedFace


def main_face(faces: Sequence[DetectedFace]) -> DetectedFace:
    """The largest of a photo's detected faces (the first of equals). Raises ValueError for no faces."""
    if not faces:
        raise ValueError("a photo without faces has no main face")
    return max(faces, key=lambda face: face.bbox[2] * face.bbox[3])


def main_face_ids(db: Database) -> dict[int, int]:
    """Image id -> the id of its largest face (ties: the lower face id), for every photo with a face."""
    return {image_id: face_id for face_id, (image_id, _) in _main_faces(db).items()}


def main_face_paths(db: Database) -> dict[int, Path]:
    """Face id -> its photo's path, for each photo's main face only."""
    return {face_id: path for face_id, (_, path) in _main_faces(db).items()}


def main_faces_of_photos(face_ids: Iterable[int], image_ids: Iterable[int], areas: Iterable[float]) -> dict[int, int]:
    """Image id -> its largest face's id; among equal boxes the first given (callers give faces by id)."""
    largest: dict[int, tuple[float, int]] = {}  # image id -> (area, face id)
    for face_id, image_id, area in zip(face_ids, image_ids, areas, strict=True):
        if image_id not in largest or area > largest[image_id][0]:
            largest[image_id] = (area, face_id)
    return {image_id: face_id for image_id, (_, face_id) in largest.items()}


def _main_faces(db: Database) -> dict[int, tuple[int, Path]]:
    with db.session() as session:
        rows = session.execute(
            select(FaceInstance.id, FaceInstance.image_id, FaceInstance.bbox_w, FaceInstance.bbox_h, ImageRow.path)
            .join(ImageRow, ImageRow.id == FaceInstance.image_id)
            .order_by(FaceInstance.id)
        ).all()
    main = main_faces_of_photos((r.id for r in rows), (r.image_id for r in rows), (r.bbox_w * r.bbox_h for r in rows))
    path_of = {r.image_id: r.path for r in rows}
    return {face_id: (image_id, Path(path_of[image_id])) for image_id, face_id in main.items()}
