"""The thresholds and inputs every clustering step of a run shares: the active space and its parameters,
the faces a user marked "ignore", and the active space's vectors in face-table order.

Shared by the supervised half (services/known_people.py) and the unknown-face half (services/clustering.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from face_pipeline.errors import InvalidInput
from face_pipeline.services.face_table import FaceTable
from face_pipeline.services.library import Library
from face_pipeline.services.space_registry import active_space
from face_pipeline.storage.models import FaceInstance
from face_pipeline.storage.vectors import VectorStore


class NoActiveSpace(InvalidInput):
    def __init__(self) -> None:
        super().__init__("no faces yet: run `face-pipeline faces backfill` first")


@dataclass
class SpaceParams:
    """The thresholds in force for one run: settings override the space's own defaults."""

    space: str
    person_threshold: float
    person_margin: float
    cluster_eps: float | None
    cluster_method: str = "hdbscan"
    min_cluster_size: int = 3


def space_params(
    library: Library,
    session: Session,
    person_threshold: float | None = None,
    person_margin: float | None = None,
) -> SpaceParams:
    space = active_space(session)
    if space is None:
        raise NoActiveSpace()
    settings = library.settings
    threshold = _first(person_threshold, settings.person_match_threshold, space.person_threshold)
    if threshold is None:
        raise InvalidInput(f"embedding space {space.name} has no person threshold; set FACE_PERSON_MATCH_THRESHOLD")
    margin = _first(person_margin, settings.person_match_margin, space.person_margin) or 0.0
    eps = _first(settings.unknown_eps, space.cluster_eps)
    grouping = space.thresholds()
    return SpaceParams(
        space.name,
        float(threshold),
        float(margin),
        None if eps is None else float(eps),
        settings.unknown_clustering_method or grouping.cluster_method,
        settings.unknown_min_cluster_size or grouping.min_cluster_size,
    )


def _first(*values: float | None) -> float | None:
    return next((v for v in values if v is not None), None)


def ignored_faces(session: Session, table: FaceTable) -> np.ndarray:
    """(n,) bool: the faces a user marked "ignore"; automatic assignment and clustering pass them by."""
    ids = session.scalars(select(FaceInstance.id).where(FaceInstance.ignored.is_(True))).all()
    return np.isin(table.ids, np.array(ids, dtype=np.int64))


def vectors_for(
    library: Library, vectors: VectorStore, space: str, table: FaceTable, *, keep: bool, rows: np.ndarray | None = None
) -> np.ndarray:
    """The vectors of every face in the table, in table order (the store holds exactly these faces); read
    once per run: the assignment step keeps its read for the clustering step (storage/collection_snapshots.py).

    `rows` (ascending table rows, the last reader only: keep=False): just those faces' vectors, moved to the
    front of the read in place rather than copied out of it; at 50K faces a copy was the run's memory peak
    (~100 MB on top of the read's ~100 MB)."""
    if rows is not None and keep:
        raise ValueError("rows are gathered in place: only the run's last reader (keep=False) may ask for them")
    ids, matrix = library.snapshots.read(vectors, space, table.ids, keep=keep)
    if not np.array_equal(ids, table.ids):
        missing = np.setdiff1d(table.ids, ids)[:10].tolist()
        extra = np.setdiff1d(ids, table.ids)[:10].tolist()
        raise InvalidInput(
            f"vector collection {space} is out of step with SQL (faces without vectors: {missing}, "
            f"vectors without faces: {extra}); re-run the backfill or regenerate embeddings"
        )
    return matrix if rows is None else gather_rows_in_place(matrix, rows)


GATHER_CHUNK = 4096  # rows moved per step: the temporary copy is this many rows


def gather_rows_in_place(matrix: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """matrix[rows] for ascending `rows`, written over the front of `matrix` (which is changed) and returned
    as a view of it. Safe chunk by chunk: row i of the result comes from rows[i] >= i, so no source row is
    overwritten before it is read."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size and (np.any(np.diff(rows) <= 0) or rows[0] < 0 or rows[-1] >= len(matrix)):
        raise ValueError("rows must be ascending, distinct and inside the matrix")
    for start in range(0, rows.size, GATHER_CHUNK):
        part = rows[start : start + GATHER_CHUNK]
        if part[0] != start or part[-1] != start + part.size - 1:  # already in place otherwise
            matrix[start : start + part.size] = matrix[part]
    return matrix[: rows.size]
