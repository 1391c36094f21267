"""Faces in no group (`unknown_noise_{face_id}`), paged and sorted by their best guess: the nearest named person
and the score, or "new person" when nobody scores at the floor (services/suggestions.score_floor).

A person stands for themself by their prototypes in the active space (built by each clustering run) or, for
someone named since the last run, by the centroid of up to _OWN_FACES of their confirmed faces. Scoring
20,000 faces needs their vectors; a `GuessCache` (one per server) keeps them and the scores, and recomputes
only what changed: vectors of faces that newly stand alone, scores when the people's prototypes change.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from face_pipeline.domain.naming import LIKE_ESCAPE, ClusterKind, like_pattern
from face_pipeline.services.browse import FaceRecord, Page, _best_first, _face_records, _faces_query
from face_pipeline.services.library import Library
from face_pipeline.services.space_registry import active_space
from face_pipeline.services.suggestions import score_floor
from face_pipeline.storage.models import FaceInstance, Person, PersonPrototype, PersonStatus
from face_pipeline.storage.vectors import VectorStore, VectorStoreError

_OWN_FACES = 16


@dataclass(frozen=True)
class Guess:
    person_id: str
    person_name: str
    score: float


@dataclass(frozen=True)
class Singleton:
    face: FaceRecord
    guess: Guess | None  # None: "new person" (nobody scores at the floor)
    best_score: float | None  # the nearest person's score even when under the floor


@dataclass(frozen=True)
class SingletonPage:
    page: Page[Singleton]
    floor: float | None
    space: str | None


@dataclass
class _Layer:
    """Best person and score of each cached face against one set of people, and the key of that set."""

    key: tuple[object, ...] = ()
    person: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=object))
    score: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.float32))


@dataclass
class GuessCache:
    """Vectors and best scores of the faces standing alone, for one server; thread-safe. Two layers of scores:
    against the prototypes (change once per clustering run) and against the people named since (small)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    space: str | None = None
    ids: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))  # sorted
    vectors: np.ndarray = field(default_factory=lambda: np.empty((0, 0), dtype=np.float32))
    layers: dict[str, _Layer] = field(default_factory=dict)

    def reset(self, space: str | None) -> None:
        self.space = space
        self.ids = np.empty(0, dtype=np.int64)
        self.vectors = np.empty((0, 0), dtype=np.float32)
        self.layers = {}


def _pool_condition() -> tuple[ColumnElement[bool], ...]:
    return (
        FaceInstance.person_id.is_(None),
        FaceInstance.ignored.is_(False),
        FaceInstance.cluster_id.like(like_pattern(ClusterKind.NOISE), escape=LIKE_ESCAPE),
    )


def list_singletons(library: Library, cache: GuessCache, *, limit: int = 24, offset: int = 0) -> SingletonPage:
    """A page of the faces in no group, the best-guessed first (by score), then the rest best quality first."""
    floor = score_floor(library.settings, library.db)
    with library.db.session() as session:
        space = active_space(session)
        pool = np.array(
            session.scalars(select(FaceInstance.id).where(*_pool_condition()).order_by(*_best_first())).all(),
            dtype=np.int64,
        )
        people = _people(session, space.name if space else None, space.dim if space else 0)
    persons, scores = _scores(library, cache, space.name if space else None, pool, people)
    # Stable sort: equal scores (and faces without any score) keep the best-quality-first order.
    order = np.argsort(-np.nan_to_num(scores, nan=-2.0), kind="stable")
    picked = order[offset : offset + limit]
    with library.db.session() as session:
        records = {
            r.face_id: r
            for r in _face_records(session, _faces_query().where(FaceInstance.id.in_(pool[picked].tolist())))
        }
        wanted = {p for p in persons[picked].tolist() if p is not None}
        names = dict(session.execute(select(Person.id, Person.name).where(Person.id.in_(wanted))).tuples().all())
    items = []
    for row in picked.tolist():
        record = records.get(int(pool[row]))
        if record is None:
            continue
        score = None if np.isnan(scores[row]) else round(float(scores[row]), 6)
        person = persons[row]
        good = score is not None and person in names and (floor is None or score >= floor)
        guess = Guess(person, names[person], score) if good and score is not None else None
        items.append(Singleton(record, guess, score))
    return SingletonPage(Page(items, int(pool.size), limit, offset), floor, space.name if space else None)


People = dict[str, tuple[tuple[object, ...], Callable[[Session], list[tuple[str, Any]]]]]


def _people(session: Session, space: str | None, dim: int) -> People:
    """Who can be guessed, as layers: each a key that changes whenever its people do, and a loader of the
    (person id, vector or face ids) that stand for them. "prototypes": people a clustering run built
    prototypes for; "newcomers": people named since, by up to _OWN_FACES of their confirmed faces."""
    if space is None:
        return {}
    active = select(Person.id).where(Person.status == PersonStatus.ACTIVE)
    in_space = (PersonPrototype.embedding_space == space, PersonPrototype.person_id.in_(active))
    count, last = session.execute(select(func.count(), func.max(PersonPrototype.id)).where(*in_space)).one()

    def prototypes(session: Session) -> list[tuple[str, Any]]:
        rows = session.execute(
            select(PersonPrototype.person_id, PersonPrototype.vector).where(*in_space).order_by(PersonPrototype.id)
        ).all()
        return [(p, v) for p, raw in rows if (v := np.frombuffer(raw, dtype=np.float32)).shape == (dim,)]

    with_prototypes = select(PersonPrototype.person_id).where(*in_space)
    newcomers = tuple(
        sorted(
            (str(p), int(n), int(m))
            for p, n, m in session.execute(
                select(FaceInstance.person_id, func.count(), func.max(FaceInstance.id))
                .where(
                    FaceInstance.user_confirmed.is_(True),
                    FaceInstance.person_id.in_(active),
                    FaceInstance.person_id.not_in(with_prototypes),
                )
                .group_by(FaceInstance.person_id)
            ).tuples()
        )
    )

    def own_faces(session: Session) -> list[tuple[str, Any]]:
        found = []
        for person_id, _, _ in newcomers:
            faces = session.scalars(
                select(FaceInstance.id)
                .where(FaceInstance.person_id == person_id, FaceInstance.user_confirmed.is_(True))
                .order_by(FaceInstance.id.desc())
                .limit(_OWN_FACES)
            ).all()
            found.append((person_id, list(faces)))
        return found

    return {"prototypes": ((space, count, last), prototypes), "newcomers": (newcomers, own_faces)}


def _scores(
    library: Library, cache: GuessCache, space: str | None, pool: np.ndarray, people: People
) -> tuple[np.ndarray, np.ndarray]:
    """(best person, best score) for each pool face, NaN where unknown (no space, no people, store busy)."""
    persons = np.full(pool.size, None, dtype=object)
    scores = np.full(pool.size, np.nan, dtype=np.float32)
    if space is None or pool.size == 0:
        return persons, scores
    with cache.lock:
        if cache.space != space:
            cache.reset(space)
        missing = np.setdiff1d(pool, cache.ids, assume_unique=True)
        stale = [name for name, (key, _) in people.items() if name not in cache.layers or cache.layers[name].key != key]
        try:
            if missing.size or stale:
                with library.vectors() as store, library.db.session() as session:
                    if missing.size:
                        _add_vectors(cache, missing, store.fetch(space, missing))
                    for name, (key, load) in people.items():
                        query = _query_matrix(store, space, load(session)) if name in stale or missing.size else None
                        if name in stale and query is not None:
                            person, score = _best(cache.vectors, query)
                            cache.layers[name] = _Layer(key, person, score)
                        elif missing.size and query is not None:
                            _score_new(cache.layers[name], cache.ids, cache.vectors, missing, query)
        except VectorStoreError:
            pass  # a run holds the store: what is cached still ranks; faces new since show as unscored
        if cache.ids.size:
            rows = np.minimum(np.searchsorted(cache.ids, pool), cache.ids.size - 1)
            known = cache.ids[rows] == pool
            for layer in cache.layers.values():
                better = known & (np.nan_to_num(layer.score[rows], nan=-2.0) > np.nan_to_num(scores, nan=-2.0))
                persons[better] = layer.person[rows[better]]
                scores[better] = layer.score[rows[better]]
    return persons, scores


def _add_vectors(cache: GuessCache, ids: np.ndarray, vectors: np.ndarray) -> None:
    all_ids = np.concatenate([cache.ids, ids])
    order = np.argsort(all_ids, kind="stable")
    stacked = vectors if cache.vectors.size == 0 else np.concatenate([cache.vectors, vectors])
    cache.ids, cache.vectors = all_ids[order], stacked[order]
    for layer in cache.layers.values():
        layer.person = np.concatenate([layer.person, np.full(ids.size, None, dtype=object)])[order]
        layer.score = np.concatenate([layer.score, np.full(ids.size, np.nan, dtype=np.float32)])[order]


def _query_matrix(store: VectorStore, space: str, queries: list[tuple[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    owners: list[str] = []
    vectors: list[np.ndarray] = []
    for person_id, query in queries:
        if isinstance(query, list):
            if not query:
                continue
            own = store.fetch(space, np.array(query, dtype=np.int64))
            centre = own.mean(axis=0)
            query = centre / max(float(np.linalg.norm(centre)), 1e-12)
        owners.append(person_id)
        vectors.append(np.asarray(query, dtype=np.float32))
    return np.array(owners, dtype=object), np.stack(vectors) if vectors else np.empty((0, 0), dtype=np.float32)


def _best(vectors: np.ndarray, query: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    owners, matrix = query
    if matrix.size == 0 or vectors.size == 0:
        return np.full(len(vectors), None, dtype=object), np.full(len(vectors), np.nan, dtype=np.float32)
    best = np.full(len(vectors), -np.inf, dtype=np.float32)
    who = np.zeros(len(vectors), dtype=np.int64)
    for start in range(0, len(vectors), 4096):  # bounded memory: 4096 x queries scores at a time
        block = vectors[start : start + 4096] @ matrix.T
        who[start : start + 4096] = block.argmax(axis=1)
        best[start : start + 4096] = block.max(axis=1)
    return owners[who], best


def _score_new(
    layer: _Layer, ids: np.ndarray, vectors: np.ndarray, new: np.ndarray, query: tuple[np.ndarray, np.ndarray]
) -> None:
    rows = np.searchsorted(ids, new)
    layer.person[rows], layer.score[rows] = _best(vectors[rows], query)
