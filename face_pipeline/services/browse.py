"""Read-side use cases for reviewing a library: clusters, their faces, people, suggestions, thumbnails.

SQL is the truth for who belongs where; the vector store is opened only to rank suggestions, and only for
the length of one call (the embedded store is single-process: a pipeline run may be holding it).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

import numpy as np
from sqlalchemy import ColumnElement, Select, and_, case, exists, func, select
from sqlalchemy.orm import Session

from face_pipeline.domain.naming import (
    LIKE_ESCAPE,
    ClusterKind,
    kind_by_prefix,
    like_pattern,
    parse_cluster_id,
    person_id_of,
)
from face_pipeline.errors import NotFound
from face_pipeline.services.labels import find_person
from face_pipeline.services.library import Library
from face_pipeline.services.space_registry import active_space
from face_pipeline.services.thumbnail_store import thumbnail_path, write_thumbnail
from face_pipeline.services.vector_cache import MAX_CACHED_POOL, FaceVectors
from face_pipeline.settings import Settings
from face_pipeline.storage.db import Database
from face_pipeline.storage.models import FaceInstance, FaceRejection, Image, Person, PersonPrototype, PersonStatus
from face_pipeline.storage.vectors import VectorStore, VectorStoreError
from face_pipeline.vision.images import ImageRejected, load_rgb
from face_pipeline.vision.thumbnails import face_thumbnail

# Face ids are 32-bit on PostgreSQL; larger ids cannot exist, and SQLite raises OverflowError past 64 bits.
MAX_FACE_ID = 2**31 - 1
# Below this many unassigned faces, suggestions score every one of them exactly (vectors fetched by id),
# which also sidesteps vector payloads that lag behind SQL; above it, the store's filtered search ranks.
EXACT_SUGGESTION_POOL = 2_000
_QUERY_FACES = 64  # at most this many of a person's faces stand in for prototypes that are not built yet


# The kinds of cluster id (domain/naming.py owns them); the API's `type` filter takes them by this name.
ClusterType = ClusterKind


class ThumbnailUnavailable(NotFound):
    """The face exists but its thumbnail is gone and its photo can no longer be read."""

    def __init__(self, face_id: int, reason: str) -> None:
        super().__init__("thumbnail", face_id)
        self.args = (f"no thumbnail for face {face_id}: {reason}",)


T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


@dataclass(frozen=True)
class FaceRecord:
    face_id: int
    image_id: int
    bbox: tuple[int, int, int, int]  # x, y, w, h in the oriented photo's pixels
    quality: float | None
    detection_score: float
    person_id: str | None
    cluster_id: str | None
    assignment_source: str | None
    confidence: float | None
    user_confirmed: bool
    photo_width: int | None = None  # the oriented photo's size, for drawing the box over it
    photo_height: int | None = None
    ignored: bool = False


@dataclass(frozen=True)
class ClusterSummary:
    cluster_id: str
    type: ClusterType
    size: int
    cover_face_id: int | None  # the highest-quality face
    person_id: str | None = None
    person_name: str | None = None


@dataclass(frozen=True)
class ClusterDetail:
    summary: ClusterSummary
    faces: Page[FaceRecord]


@dataclass(frozen=True)
class PersonSummary:
    person_id: str
    name: str
    face_count: int
    confirmed_count: int
    cover_face_id: int | None
    created_at: datetime


@dataclass(frozen=True)
class Suggestion:
    face: FaceRecord
    score: float  # best cosine similarity to the person's prototypes (or confirmed faces)


@dataclass
class Suggestions:
    person_id: str
    person_name: str
    space: str | None
    items: list[Suggestion] = field(default_factory=list)
    total: int = 0  # candidates scoring at least min_score (all of them when scored exactly, else those searched)
    min_score: float | None = None


# --- clusters ------------------------------------------------------------------------------------------


def cluster_type_of(cluster_id: str) -> ClusterType:
    try:
        kind, _ = parse_cluster_id(cluster_id)
    except ValueError:  # an odd id in old data: classify it by prefix, as the SQL filters do
        return kind_by_prefix(cluster_id) or ClusterKind.UNKNOWN
    return kind


def _type_filter(kind: ClusterType | None) -> ColumnElement[bool]:
    """Clusters of this kind (any, when None); ignored faces are in none of them."""
    column = FaceInstance.cluster_id
    shown = FaceInstance.ignored.is_(False)
    if kind is None:
        return and_(column.is_not(None), shown)
    return and_(column.like(like_pattern(kind), escape=LIKE_ESCAPE), shown)


def list_clusters(
    db: Database, *, kind: ClusterType | None = None, limit: int = 50, offset: int = 0
) -> Page[ClusterSummary]:
    """Clusters largest first (then by id), with a cover face and, for person clusters, the name."""
    condition = _type_filter(kind)
    size = func.count().label("size")
    with db.session() as session:
        total = session.scalar(select(func.count(func.distinct(FaceInstance.cluster_id))).where(condition)) or 0
        rows = session.execute(
            select(FaceInstance.cluster_id, size)
            .where(condition)
            .group_by(FaceInstance.cluster_id)
            .order_by(size.desc(), func.length(FaceInstance.cluster_id), FaceInstance.cluster_id)  # _2 before _10
            .limit(limit)
            .offset(offset)
        ).all()
        items = _summaries(session, [(r.cluster_id, r.size) for r in rows])
    return Page(items, total, limit, offset)


def cluster_detail(db: Database, cluster_id: str, *, limit: int = 100, offset: int = 0) -> ClusterDetail:
    """A cluster's faces, best quality first; NotFound when no face carries this cluster id."""
    with db.session() as session:
        size = session.scalar(select(func.count()).where(FaceInstance.cluster_id == cluster_id)) or 0
        if size == 0:
            raise NotFound("cluster", cluster_id)
        (summary,) = _summaries(session, [(cluster_id, size)])
        page = _face_records(
            session,
            _faces_query()
            .where(FaceInstance.cluster_id == cluster_id)
            .order_by(*_best_first())
            .limit(limit)
            .offset(offset),
        )
    return ClusterDetail(summary, Page(page, size, limit, offset))


def get_face(db: Database, face_id: int) -> FaceRecord:
    if not 0 < face_id <= MAX_FACE_ID:
        raise NotFound("face", face_id)
    with db.session() as session:
        records = _face_records(session, _faces_query().where(FaceInstance.id == face_id))
    if not records:
        raise NotFound("face", face_id)
    return records[0]


def list_ignored(db: Database, *, limit: int = 50, offset: int = 0) -> Page[FaceRecord]:
    """Faces a user marked "ignore", the most recently marked first."""
    with db.session() as session:
        total = session.scalar(select(func.count()).where(FaceInstance.ignored.is_(True))) or 0
        query = (
            _faces_query()
            .where(FaceInstance.ignored.is_(True))
            .order_by(FaceInstance.updated_at.desc(), FaceInstance.id)
            .limit(limit)
            .offset(offset)
        )
        return Page(_face_records(session, query), total, limit, offset)


def ping(db: Database) -> None:
    """Raise (sqlalchemy.exc.SQLAlchemyError) unless the database answers."""
    with db.session() as session:
        session.execute(select(1))


def _summaries(session: Session, clusters: Sequence[tuple[str, int]]) -> list[ClusterSummary]:
    ids = [cluster_id for cluster_id, _ in clusters]
    covers = _covers(session, FaceInstance.cluster_id, ids)
    person_ids = {c: person for c in ids if (person := person_id_of(c)) is not None}
    rows = session.execute(select(Person.id, Person.name).where(Person.id.in_(list(person_ids.values()))))
    names: dict[str, str] = {row.id: row.name for row in rows}
    return [
        ClusterSummary(
            cluster_id=cluster_id,
            type=cluster_type_of(cluster_id),
            size=size,
            cover_face_id=covers.get(cluster_id),
            person_id=person_ids.get(cluster_id),
            person_name=names.get(person_ids.get(cluster_id, "")),
        )
        for cluster_id, size in clusters
    ]


def _best_first() -> tuple[Any, ...]:
    return (func.coalesce(FaceInstance.quality, -1.0).desc(), FaceInstance.id)


def _covers(session: Session, group: Any, keys: Sequence[str]) -> dict[str, int]:
    """The highest-quality face of each group key (a cluster id or a person id), in one query."""
    if not keys:
        return {}
    rank = func.row_number().over(partition_by=group, order_by=_best_first()).label("rank")
    ranked = select(group.label("key"), FaceInstance.id.label("face_id"), rank).where(group.in_(list(keys))).subquery()
    rows = session.execute(select(ranked.c.key, ranked.c.face_id).where(ranked.c.rank == 1)).all()
    return {row.key: row.face_id for row in rows}


def _faces_query() -> Select[Any]:
    return (
        select(
            FaceInstance.id,
            FaceInstance.image_id,
            FaceInstance.bbox_x,
            FaceInstance.bbox_y,
            FaceInstance.bbox_w,
            FaceInstance.bbox_h,
            FaceInstance.quality,
            FaceInstance.detection_score,
            FaceInstance.person_id,
            FaceInstance.cluster_id,
            FaceInstance.assignment_source,
            FaceInstance.confidence,
            FaceInstance.user_confirmed,
            FaceInstance.ignored,
            Image.width,
            Image.height,
        )
        .select_from(FaceInstance)
        .join(Image, Image.id == FaceInstance.image_id)
    )


def _face_records(session: Session, query: Select[Any]) -> list[FaceRecord]:
    return [
        FaceRecord(
            face_id=r.id,
            image_id=r.image_id,
            bbox=(r.bbox_x, r.bbox_y, r.bbox_w, r.bbox_h),
            quality=r.quality,
            detection_score=r.detection_score,
            person_id=r.person_id,
            cluster_id=r.cluster_id,
            assignment_source=r.assignment_source,
            confidence=r.confidence,
            user_confirmed=bool(r.user_confirmed),
            photo_width=r.width,
            photo_height=r.height,
            ignored=bool(r.ignored),
        )
        for r in session.execute(query)
    ]


# --- people --------------------------------------------------------------------------------------------


def _person_rows(session: Session) -> Select[Any]:
    counts = (
        select(
            FaceInstance.person_id.label("person_id"),
            func.count().label("faces"),
            func.sum(case((FaceInstance.user_confirmed.is_(True), 1), else_=0)).label("confirmed"),
        )
        .where(FaceInstance.person_id.is_not(None))
        .group_by(FaceInstance.person_id)
        .subquery()
    )
    return select(
        Person.id,
        Person.name,
        Person.created_at,
        func.coalesce(counts.c.faces, 0).label("faces"),
        func.coalesce(counts.c.confirmed, 0).label("confirmed"),
    ).outerjoin(counts, counts.c.person_id == Person.id)


def _person_summaries(session: Session, query: Select[Any]) -> list[PersonSummary]:
    rows = session.execute(query).all()
    covers = _covers(session, FaceInstance.person_id, [r.id for r in rows])
    return [PersonSummary(r.id, r.name, int(r.faces), int(r.confirmed), covers.get(r.id), r.created_at) for r in rows]


def list_persons(db: Database, *, limit: int = 100, offset: int = 0, query: str | None = None) -> Page[PersonSummary]:
    """Active (not merged-away) people by name, with how many faces each has and how many a user confirmed;
    `query`: only names containing it (any case)."""
    active = Person.status == PersonStatus.ACTIVE
    if query and query.strip():
        escaped = query.strip().lower().replace(LIKE_ESCAPE, LIKE_ESCAPE * 2).replace("%", r"\%").replace("_", r"\_")
        active = and_(active, func.lower(Person.name).like(f"%{escaped}%", escape=LIKE_ESCAPE))
    with db.session() as session:
        total = session.scalar(select(func.count()).select_from(Person).where(active)) or 0
        ordered = (
            _person_rows(session).where(active).order_by(func.lower(Person.name), Person.id).limit(limit).offset(offset)
        )
        return Page(_person_summaries(session, ordered), total, limit, offset)


def get_person(db: Database, person_ref: str) -> PersonSummary:
    """One person by id (`<uuid>` / `person_<uuid>`, following merges) or unique name."""
    with db.session() as session:
        person = find_person(session, person_ref)
        (summary,) = _person_summaries(session, _person_rows(session).where(Person.id == person.id))
        return summary


# --- suggestions ---------------------------------------------------------------------------------------


def suggest_faces(
    library: Library,
    person_ref: str,
    *,
    limit: int = 20,
    offset: int = 0,
    min_score: float | None = None,
    exact_below: int = EXACT_SUGGESTION_POOL,
    only: Sequence[int] | None = None,
    cache: FaceVectors | None = None,
) -> Suggestions:
    """Faces nobody has named, most similar to this person first ("is this Alice too?"), from `offset`;
    only those scoring at least `min_score` (services/suggestions.py passes the space's floor), and only
    the faces in `only` when given (scored exactly: "accept these").

    The person is represented by their prototypes in the active space, or by their confirmed (else
    assigned) faces when prototypes were not built yet. A face the user rejected for them never shows.

    With a `cache` (the API server's in-memory vectors) every candidate is scored exactly from memory, up to
    MAX_CACHED_POOL of them; the store is opened only for vectors not cached yet. Raises VectorStoreLocked
    when a pipeline run holds the embedded store and a vector is needed from it.
    """
    with library.db.session() as session:
        person = find_person(session, person_ref)
        space = active_space(session)
        result = Suggestions(person.id, person.name, space.name if space else None, min_score=min_score)
        if space is None:
            return result
        prototypes = [
            np.frombuffer(v, dtype=np.float32)
            for v in session.scalars(
                select(PersonPrototype.vector).where(
                    PersonPrototype.person_id == person.id, PersonPrototype.embedding_space == space.name
                )
            )
        ]
        prototypes = [v for v in prototypes if v.shape == (space.dim,)]
        own_faces = _own_faces(session, person.id) if not prototypes else []
        cached_pool = _cached_pool(session, person.id, only) if cache is not None else None
    if cache is not None and cached_pool is not None and cached_pool.size <= MAX_CACHED_POOL:
        if cached_pool.size == 0 or not (prototypes or own_faces):
            return result
        queries = np.stack(prototypes) if prototypes else np.empty((0, space.dim), dtype=np.float32)
        scored_now = _score_cached(library, cache, space.name, queries, own_faces, cached_pool)
        return _keep_unassigned(library.db, person.id, result, _rank_arrays(scored_now, min_score), limit, offset)
    with library.db.session() as session:
        pool = _unassigned(person.id)
        if only is not None:
            pool = and_(pool, FaceInstance.id.in_(list(only)))
        pool_size = session.scalar(select(func.count()).where(pool)) or 0
        exact = 0 < pool_size <= exact_below or only is not None
        pool_ids = session.scalars(select(FaceInstance.id).where(pool)).all() if exact else []
    if pool_size == 0 or not (prototypes or own_faces):
        return result
    with library.vectors() as store:
        if not store.has_collection(space.name):
            return result
        queries = np.stack(prototypes) if prototypes else store.fetch(space.name, np.array(own_faces, dtype=np.int64))
        scored = _score_exactly(store, space.name, queries, pool_ids) if pool_ids else None
        if scored is None:
            scored = _score_by_search(store, space.name, queries, offset + limit)
    if min_score is not None:
        scored = {face_id: score for face_id, score in scored.items() if score >= min_score}
    ranked = sorted(scored.items(), key=lambda item: (-item[1], item[0]))
    return _keep_unassigned(library.db, person.id, result, ranked, limit, offset)


def _cached_pool(session: Session, person_id: str, only: Sequence[int] | None) -> np.ndarray:
    """The ids `_unassigned(person_id)` selects (and in `only`), read the cheap way: the unnamed faces
    through the Core connection (the ORM's row handling costs ~4x), minus the person's few rejections."""
    query = select(FaceInstance.id).where(FaceInstance.person_id.is_(None), FaceInstance.ignored.is_(False))
    if only is not None:
        query = query.where(FaceInstance.id.in_(list(only)))
    ids = np.array(session.connection().execute(query).scalars().all(), dtype=np.int64)
    rejected = session.scalars(select(FaceRejection.face_id).where(FaceRejection.person_id == person_id)).all()
    return ids[~np.isin(ids, np.array(rejected, dtype=np.int64))] if rejected else ids


def _score_cached(
    library: Library, cache: FaceVectors, space: str, queries: np.ndarray, own_faces: list[int], pool: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(face ids, best cosine against the queries, or the person's own faces when there are none) of the
    pool faces with a vector, from the cache."""
    none = np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    with cache.lock:
        cache.use_space(space)
        with library.db.session() as session:
            cache.refresh(session)
        if not queries.size:
            own = cache.ensure(library, np.array(own_faces, dtype=np.int64))
            if not (own >= 0).any():
                return none
            queries = cache.vectors[own[own >= 0]]
        rows = cache.ensure(library, pool)
        known = rows >= 0
        if not known.any():
            return none
        rows = rows[known]
        matrix = queries.T.astype(np.float32)
        if cache.size <= 2 * rows.size:  # scoring every cached face beats copying the pool's rows out
            best = (cache.vectors @ matrix).max(axis=1)[rows]
        else:
            best = (cache.vectors[rows] @ matrix).max(axis=1)
    return pool[known], best


def _rank_arrays(scored: tuple[np.ndarray, np.ndarray], min_score: float | None) -> list[tuple[int, float]]:
    """(face id, score) best first, ties by id: what `sorted` of the pairs gives, the cheap way."""
    ids, scores = scored
    if min_score is not None:
        keep = scores.astype(np.float64) >= min_score
        ids, scores = ids[keep], scores[keep]
    order = np.lexsort((ids, -scores.astype(np.float64)))
    return list(zip(ids[order].tolist(), scores[order].tolist(), strict=True))


def _unassigned(person_id: str) -> ColumnElement[bool]:
    rejected = exists().where(FaceRejection.face_id == FaceInstance.id, FaceRejection.person_id == person_id)
    return and_(FaceInstance.person_id.is_(None), FaceInstance.ignored.is_(False), ~rejected)


def _own_faces(session: Session, person_id: str) -> list[int]:
    """Up to _QUERY_FACES of the person's faces, confirmed ones first, best quality first."""
    return list(
        session.scalars(
            select(FaceInstance.id)
            .where(FaceInstance.person_id == person_id)
            .order_by(FaceInstance.user_confirmed.desc(), *_best_first())
            .limit(_QUERY_FACES)
        )
    )


def _score_exactly(
    store: VectorStore, space: str, queries: np.ndarray, pool_ids: Sequence[int]
) -> dict[int, float] | None:
    """Best cosine of every pool face against the queries; None when some vector is missing (use search)."""
    ids = np.array(pool_ids, dtype=np.int64)
    try:
        vectors = store.fetch(space, ids)
    except VectorStoreError:
        return None
    best = (vectors @ queries.T.astype(np.float32)).max(axis=1)
    return dict(zip(ids.tolist(), best.tolist(), strict=True))


def _score_by_search(store: VectorStore, space: str, queries: np.ndarray, limit: int) -> dict[int, float]:
    # Over-fetch: SQL has the last word, and payloads may still show faces a user has just named.
    hits = store.search_batch(space, queries, limit * 4 + 32, filter_payload={"person_id": None})
    scored: dict[int, float] = {}
    for hit in (h for per_query in hits for h in per_query):
        scored[hit.face_id] = max(hit.score, scored.get(hit.face_id, -2.0))
    return scored


def _keep_unassigned(
    db: Database, person_id: str, result: Suggestions, ranked: list[tuple[int, float]], limit: int, offset: int
) -> Suggestions:
    # Keep 4x the page: SQL drops faces named since the vectors' payloads were written (limit >= 1).
    window = ranked[offset : offset + limit * 4]
    with db.session() as session:
        records = {
            r.face_id: r
            for r in _face_records(
                session, _faces_query().where(FaceInstance.id.in_([f for f, _ in window]), _unassigned(person_id))
            )
        }
    result.items.extend(Suggestion(records[f], round(s, 6)) for f, s in window if f in records)
    del result.items[limit:]
    result.total = len(ranked) - (len(window) - sum(1 for f, _ in window if f in records))
    return result


# --- thumbnails ----------------------------------------------------------------------------------------


def face_thumbnail_jpeg(settings: Settings, db: Database, face_id: int) -> bytes:
    """The face's JPEG thumbnail; rebuilt from the photo (and cached) when the file written at detection is
    gone. Only faces SQL knows get one: the path is derived from the id, never taken from a client."""
    if not 0 < face_id <= MAX_FACE_ID:
        raise NotFound("face", face_id)
    with db.session() as session:
        row = session.execute(
            select(Image.path, FaceInstance.bbox_x, FaceInstance.bbox_y, FaceInstance.bbox_w, FaceInstance.bbox_h)
            .join(Image, Image.id == FaceInstance.image_id)
            .where(FaceInstance.id == face_id)
        ).first()
    if row is None:
        raise NotFound("face", face_id)
    path = thumbnail_path(settings.thumbnails_dir, face_id)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    try:
        image = load_rgb(row.path, max_pixels=settings.max_image_pixels, max_bytes=settings.max_file_bytes)
    except ImageRejected as exc:
        raise ThumbnailUnavailable(face_id, exc.reason) from exc
    jpeg = face_thumbnail(image, (row.bbox_x, row.bbox_y, row.bbox_w, row.bbox_h), size=settings.thumbnail_size)
    write_thumbnail(settings.thumbnails_dir, face_id, jpeg)
    return jpeg


# --- photos --------------------------------------------------------------------------------------------

PHOTO_MAX_SIDE = 1280  # the page shows the photo around a face; a full-resolution original is not needed


class PhotoUnavailable(NotFound):
    """The photo is in the library but its file can no longer be read."""

    def __init__(self, image_id: int, reason: str) -> None:
        super().__init__("photo", image_id)
        self.args = (f"photo {image_id} cannot be shown: {reason}",)


def photo_jpeg(settings: Settings, db: Database, image_id: int, *, max_side: int = PHOTO_MAX_SIDE) -> bytes:
    """The whole photo (EXIF orientation applied) as a JPEG at most `max_side` pixels wide and high, for the
    page to draw face boxes over. Only photos SQL knows are read: the path comes from the row, never a client."""
    if not 0 < image_id <= MAX_FACE_ID:
        raise NotFound("photo", image_id)
    with db.session() as session:
        path = session.scalar(select(Image.path).where(Image.id == image_id))
    if path is None:
        raise NotFound("photo", image_id)
    try:
        pixels = load_rgb(path, max_pixels=settings.max_image_pixels, max_bytes=settings.max_file_bytes)
    except ImageRejected as exc:
        raise PhotoUnavailable(image_id, exc.reason) from exc
    from PIL import Image as PILImage  # Pillow is loaded by load_rgb already

    picture = PILImage.fromarray(pixels)
    picture.thumbnail((max_side, max_side))
    out = io.BytesIO()
    picture.save(out, format="JPEG", quality=85)
    return out.getvalue()
