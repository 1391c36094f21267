"""Invariants the pipeline promises, as queries: each returns what is wrong, naming the first offending ids.

The Dagster asset checks (defs/checks.py) call these; so can a test or a script.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import String, cast, func, literal, or_, select
from sqlalchemy.orm import Session

from face_pipeline.domain.metrics import pipeline_failures
from face_pipeline.domain.naming import LIKE_ESCAPE, NOISE_PREFIX, PERSON_PREFIX, ClusterKind, like_pattern
from face_pipeline.services.space_registry import active_space
from face_pipeline.storage.db import Database
from face_pipeline.storage.models import FaceAssignmentEvent, FaceInstance
from face_pipeline.storage.vectors import VectorStore

SHOWN = 20  # offending ids named per problem


@dataclass
class Finding:
    """passed, a sentence saying why, and the offending ids by problem (first SHOWN of each)."""

    passed: bool
    description: str
    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[int]] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)


def counted(n: int, problem: str) -> str:
    """'3 faces without a vector', '1 face without a vector' from the problem's name."""
    first, _, rest = problem.partition("_")
    first = first[:-1] if n == 1 and first.endswith("s") else first
    return f"{n} {first} {rest.replace('_', ' ')}".rstrip()


def _problems(found: dict[str, tuple[int, list[int]]], ok: str, what: str) -> Finding:
    counts = {name: n for name, (n, _) in found.items()}
    examples = {name: ids for name, (n, ids) in found.items() if n}
    if not examples:
        return Finding(True, ok, counts)
    parts = [f"{counted(counts[name], name)} (e.g. face ids {ids})" for name, ids in examples.items()]
    return Finding(False, f"{what}: " + "; ".join(parts), counts, examples)


def _count_and_first(session: Session, condition: Any) -> tuple[int, list[int]]:
    total = session.scalar(select(func.count()).select_from(FaceInstance).where(condition)) or 0
    ids = session.scalars(select(FaceInstance.id).where(condition).order_by(FaceInstance.id).limit(SHOWN)).all()
    return int(total), list(ids)


def cluster_id_problems(db: Database) -> Finding:
    """Every face has one cluster id, and it agrees with person_id: person_{uuid} iff a person is set;
    a singleton's id names its own face."""
    face = FaceInstance
    person_cluster = literal(PERSON_PREFIX) + face.person_id
    with db.session() as session:
        found = {
            "faces_without_cluster": _count_and_first(session, face.cluster_id.is_(None)),
            "named_faces_outside_their_person_cluster": _count_and_first(
                session,
                face.person_id.is_not(None) & face.cluster_id.is_not(None) & (face.cluster_id != person_cluster),
            ),
            "unnamed_faces_in_a_person_cluster": _count_and_first(
                session, face.person_id.is_(None) & face.cluster_id.like(like_pattern(ClusterKind.PERSON), LIKE_ESCAPE)
            ),
            "singletons_named_after_another_face": _count_and_first(
                session,
                face.cluster_id.like(like_pattern(ClusterKind.NOISE), LIKE_ESCAPE)
                & (face.cluster_id != literal(NOISE_PREFIX) + cast(face.id, String)),
            ),
        }
        faces = session.scalar(select(func.count()).select_from(face)) or 0
    finding = _problems(
        found,
        f"all {faces} faces have exactly one cluster id that agrees with their person",
        "cluster ids out of step with person ids",
    )
    finding.facts["faces"] = int(faces)
    return finding


def user_label_overrides(db: Database) -> Finding:
    """No automatic run changed a face a user confirmed: no audit event from a source other than 'user'
    after the face's latest user event, and the face still says it was assigned by the user."""
    event, face = FaceAssignmentEvent, FaceInstance
    last_user = (
        select(event.face_id, func.max(event.id).label("last_id"))
        .where(event.source == "user", event.face_id.is_not(None))
        .group_by(event.face_id)
        .subquery()
    )
    overridden = (
        select(event.face_id)
        .join(face, face.id == event.face_id)
        .outerjoin(last_user, last_user.c.face_id == event.face_id)
        .where(
            face.user_confirmed.is_(True),
            event.source != "user",
            or_(last_user.c.last_id.is_(None), event.id > last_user.c.last_id),
        )
        .distinct()
    )
    with db.session() as session:
        found = {
            "confirmed_faces_changed_by_an_automatic_run": _count_and_first(session, face.id.in_(overridden)),
            "confirmed_faces_not_marked_as_user_assigned": _count_and_first(
                session, face.user_confirmed.is_(True) & (func.coalesce(face.assignment_source, "") != "user")
            ),
        }
        confirmed = session.scalar(select(func.count()).where(face.user_confirmed.is_(True))) or 0
    finding = _problems(
        found, f"no automatic run changed any of the {confirmed} user-confirmed faces", "user decisions overridden"
    )
    finding.facts["confirmed_faces"] = int(confirmed)
    return finding


@dataclass
class CollectionDrift:
    """How one collection differs from SQL (the source of truth), by face id (sorted arrays)."""

    collection: str
    faces: int
    points: int
    missing: np.ndarray  # face rows without a point
    orphans: np.ndarray  # points without a face row
    stale: np.ndarray  # points whose person/cluster/image payload disagrees with SQL
    payloads_checked: bool

    @property
    def clean(self) -> bool:
        return not (self.missing.size or self.orphans.size or self.stale.size)

    def problems(self) -> dict[str, tuple[int, list[int]]]:
        found = {
            "faces_without_a_vector": self.missing,
            "vectors_without_a_face": self.orphans,
            "vectors_with_a_stale_payload": self.stale,
        }
        return {name: (int(ids.size), ids[:SHOWN].tolist()) for name, ids in found.items()}


def sql_faces(session: Session) -> tuple[np.ndarray, dict[int, dict[str, Any]]]:
    """Face ids (sorted) and the payload SQL says each point must carry."""
    rows = session.execute(
        select(FaceInstance.id, FaceInstance.image_id, FaceInstance.person_id, FaceInstance.cluster_id).order_by(
            FaceInstance.id
        )
    ).all()
    ids = np.fromiter((r.id for r in rows), dtype=np.int64, count=len(rows))
    return ids, {r.id: {"image_id": r.image_id, "person_id": r.person_id, "cluster_id": r.cluster_id} for r in rows}


def collection_drift(session: Session, vectors: VectorStore, collection: str, *, payloads: bool) -> CollectionDrift:
    """Compare a collection with SQL; `payloads`: also compare each point's payload (only where the pipeline
    keeps them current: the active space's collection)."""
    face_ids, wanted = sql_faces(session)
    empty = np.empty(0, np.int64)
    if not vectors.has_collection(collection):
        return CollectionDrift(collection, int(face_ids.size), 0, face_ids, empty, empty, payloads)
    stored = vectors.fetch_payloads(collection)
    points = np.fromiter(sorted(stored), dtype=np.int64, count=len(stored))
    stale = empty
    if payloads:
        keys = ("image_id", "person_id", "cluster_id")
        stale = np.array(
            sorted(f for f, payload in stored.items() if f in wanted and any(payload[k] != wanted[f][k] for k in keys)),
            dtype=np.int64,
        )
    return CollectionDrift(
        collection,
        int(face_ids.size),
        int(points.size),
        np.setdiff1d(face_ids, points),
        np.setdiff1d(points, face_ids),
        stale,
        payloads,
    )


def vector_store_sync(db: Database, vectors: VectorStore) -> Finding:
    """The active space's collection holds exactly one point per face row in SQL, with SQL's payload."""
    with db.session() as session:
        space = active_space(session)
        if space is None:
            return Finding(True, "no active embedding space yet (no faces detected): nothing to compare")
        drift = collection_drift(session, vectors, space.name, payloads=True)
    finding = _problems(
        drift.problems(),
        f"{drift.faces} face rows and {drift.points} points in {space.name}: the same ids and payloads",
        f"collection {space.name} out of step with SQL ({drift.faces} faces, {drift.points} points)",
    )
    finding.facts.update(space=space.name, faces=drift.faces, points=drift.points)
    return finding


def promotion_evidence(db: Database) -> Finding:
    """The active space is the raw model's, or a trained projection whose promotion gate figures show it
    beating the raw space: the held-out figures kept with the checkpoint are checked again here, so a
    projection activated without them (or with figures that do not hold up) fails."""
    with db.session() as session:
        space = active_space(session)
    if space is None:
        return Finding(True, "no active embedding space yet (no faces detected): nothing was promoted")
    facts: dict[str, Any] = {"active_space": space.name, "kind": str(space.kind)}
    if not space.is_projection:
        return Finding(
            True,
            f"the raw model's space {space.name} is active: no trained checkpoint is promoted, nothing to beat",
            facts=facts,
        )
    gate = space.gate
    facts["label_count"] = space.label_count
    if gate is None or gate.raw_figures is None or gate.projected_figures is None:
        why = f"the active projection {space.name} has no promotion-gate figures; retire it or retrain"
        return Finding(False, why, facts=facts)
    failures = pipeline_failures(gate.raw_figures, gate.projected_figures)
    if not gate.verification.promote:
        failures.append(f"its verification gate said no ({gate.verification.reason})")
    facts.update(raw=gate.raw_figures.as_dict(), projected=gate.projected_figures.as_dict(), failures=failures)
    if failures:
        return Finding(
            False,
            f"the active projection {space.name} does not beat the raw space on its held-out figures: "
            + "; ".join(failures),
            facts=facts,
        )
    return Finding(
        True,
        f"the active projection {space.name} beats the raw space on its held-out figures (recall "
        f"{gate.raw_figures.recall:.3f} -> {gate.projected_figures.recall:.3f}, precision "
        f"{gate.raw_figures.precision:.3f} -> {gate.projected_figures.precision:.3f})",
        facts=facts,
    )
