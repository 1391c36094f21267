"""Faces in no group (`unknown_noise_{face_id}`), paged and sorted by their best guess: the nearest named person
and the score, or "new person" when nobody scores at the floor (services/suggestions.score_floor).

A person stands for themself by their prototypes in the active space (built by each clustering run) or, for
someone named since the last run, by the centroid of up to _OWN_FACES of their confirmed faces. Scoring
20,000 faces needs their vectors; a `GuessCache` (one per server) keeps the scores over the server's
in-memory face vectors (services/vector_cache.py) and computes only what changed: the faces that newly
stand alone, everyone again when the people's prototypes change. The API fills it at start (`warm`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import ColumnElement, Select, func, select
from sqlalchemy.orm import Session

from face_pipeline.domain.naming import LIKE_ESCAPE, ClusterKind, like_pattern
from face_pipeline.services.browse import FaceRecord, Page, _best_first, _face_records, _faces_query
from face_pipeline.services.library import Library
from face_pipeline.services.space_registry import active_space
from face_pipeline.services.suggestions import score_floor
from face_pipeline.services.vector_cache import FaceVectors
from face_pipeline.storage.models import FaceInstance, Person, PersonPrototype, PersonStatus
from face_pipeline.storage.vectors import VectorStoreError

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
    """Best person and score of each cached face (by row of the FaceVectors) against one set of people, the
    key of that set, and which rows are scored yet."""

    key: tuple[object, ...] = ()
    epoch: int = -1
    person: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=object))
    score: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.float32))
    done: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=bool))

    def fit(self, key: tuple[object, ...], epoch: int, rows: int) -> None:
        """Start over when the people or the rows' numbering changed; grow with the cache."""
        if key != self.key or epoch != self.epoch:
            self.key, self.epoch = key, epoch
            self.person = np.empty(0, dtype=object)
            self.score = np.empty(0, dtype=np.float32)
            self.done = np.empty(0, dtype=bool)
        grow = rows - self.done.size
        if grow > 0:
            self.person = np.concatenate([self.person, np.full(grow, None, dtype=object)])
            self.score = np.concatenate([self.score, np.full(grow, np.nan, dtype=np.float32)])
            self.done = np.concatenate([self.done, np.zeros(grow, dtype=bool)])


@dataclass
class GuessCache:
    """Best guesses of the faces standing alone, for one server: two layers of scores over the server's
    face vectors (services/vector_cache.py), against the prototypes (they change once per clustering run)
    and against the people named since (few). Each face is scored once per layer; guarded by the vectors'
    lock."""

    vectors: FaceVectors = field(default_factory=FaceVectors)
    layers: dict[str, _Layer] = field(default_factory=dict)


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
        pool = _ids(session, select(FaceInstance.id).where(*_pool_condition()).order_by(*_best_first()))
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
    vectors = cache.vectors
    with vectors.lock, library.db.session() as session:
        vectors.use_space(space)
        vectors.refresh(session)
        try:
            rows = vectors.ensure(library, pool)
        except VectorStoreError:
            rows = vectors.rows_of(pool)  # a run holds the store: what is cached still ranks, the rest unscored
        cached = rows >= 0
        for name, (key, load) in people.items():
            layer = cache.layers.setdefault(name, _Layer())
            layer.fit(key, vectors.epoch, vectors.size)
            todo = np.unique(rows[cached])
            todo = todo[~layer.done[todo]]
            if todo.size:
                try:
                    query = _query_matrix(library, vectors, load(session))
                except VectorStoreError:
                    continue  # a newcomer's faces are not cached and a run holds the store: unscored for now
                layer.person[todo], layer.score[todo] = _best(vectors.vectors[todo], query)
                layer.done[todo] = True
        for name in people:
            layer = cache.layers[name]
            at = np.where(cached, rows, 0)
            scored = cached & layer.done[at]
            better = scored & (np.nan_to_num(layer.score[at], nan=-2.0) > np.nan_to_num(scores, nan=-2.0))
            persons[better] = layer.person[at[better]]
            scores[better] = layer.score[at[better]]
    return persons, scores


def warm(library: Library, cache: GuessCache) -> None:
    """Read the vectors of every face nobody has named (the singletons' and the suggestions' pool) into the
    cache and score the singletons, so that the first page does not wait for it (the API does this once
    in the background at start). Raises VectorStoreLocked when a run holds the store."""
    with library.db.session() as session:
        space = active_space(session)
        if space is None:
            return
        pool = _ids(
            session, select(FaceInstance.id).where(FaceInstance.person_id.is_(None), FaceInstance.ignored.is_(False))
        )
    vectors = cache.vectors
    with vectors.lock:
        vectors.use_space(space.name)
        with library.db.session() as session:
            vectors.refresh(session)
        vectors.ensure(library, pool)
    list_singletons(library, cache, limit=1)


def _ids(session: Session, query: Select[Any]) -> np.ndarray:
    # Through the Core connection: the ORM's row handling costs ~4x as much for tens of thousands of ids.
    return np.array(session.connection().execute(query).scalars().all(), dtype=np.int64)


def _query_matrix(
    library: Library, vectors: FaceVectors, queries: list[tuple[str, Any]]
) -> tuple[np.ndarray, np.ndarray]:
    """(owners, matrix) of the people's query vectors; a person given by face ids stands for the normalised
    mean of those faces' vectors (the ones the store has)."""
    owners: list[str] = []
    matrix: list[np.ndarray] = []
    for person_id, query in queries:
        if isinstance(query, list):
            rows = vectors.ensure(library, np.array(query, dtype=np.int64)) if query else np.empty(0, dtype=np.int64)
            rows = rows[rows >= 0]
            if not rows.size:
                continue
            centre = vectors.vectors[rows].mean(axis=0)
            query = centre / max(float(np.linalg.norm(centre)), 1e-12)
        owners.append(person_id)
        matrix.append(np.asarray(query, dtype=np.float32))
    return np.array(owners, dtype=object), np.stack(matrix) if matrix else np.empty((0, 0), dtype=np.float32)


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
