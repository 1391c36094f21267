"""Library statistics: photos by status, faces, people, clusters by type."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, select

from face_pipeline.domain.naming import LIKE_ESCAPE, ClusterKind, like_pattern
from face_pipeline.services.learned_matcher_state import stored_verdict
from face_pipeline.services.space_registry import Space, active_space, latest_checkpoint, raw_space_of
from face_pipeline.storage.db import Database
from face_pipeline.storage.models import FaceInstance, Image, ImageStatus, Person, PersonStatus


@dataclass
class LibraryStats:
    photos_by_status: dict[str, int] = field(default_factory=dict)
    faces: int = 0
    faces_confirmed: int = 0
    people: int = 0
    clusters: dict[str, int] = field(default_factory=dict)  # person / unknown / noise / unclustered
    faces_by_cluster_type: dict[str, int] = field(default_factory=dict)
    active_space: str | None = None
    person_threshold: float | None = None
    person_margin: float | None = None
    skip_reasons: list[tuple[str, str]] = field(default_factory=list)
    people_counts: list[tuple[str, int]] = field(default_factory=list)  # largest first
    largest_unknown: list[tuple[str, int]] = field(default_factory=list)
    active_space_kind: str | None = None  # raw | projection
    # The face model behind the library's raw space, as the last detection run saw it (vision.embedders).
    face_model: dict[str, Any] = field(default_factory=dict)
    # The newest trained checkpoint (services/training.py), promoted or not.
    last_training_space: str | None = None
    last_training_at: datetime | None = None
    last_training_status: str | None = None  # candidate | active | retired | rejected
    last_training_promoted: bool | None = None
    last_training_reason: str | None = None
    last_training_label_count: int | None = None
    # The learned matcher's last verdict in the active space (services/learned_matcher.py): use, reason, kind, at
    learned_matcher: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cluster_type() -> Any:
    column = FaceInstance.cluster_id
    return case(
        (column.is_(None), "unclustered"),
        (column.like(like_pattern(ClusterKind.PERSON), escape=LIKE_ESCAPE), str(ClusterKind.PERSON)),
        (column.like(like_pattern(ClusterKind.NOISE), escape=LIKE_ESCAPE), str(ClusterKind.NOISE)),
        else_=str(ClusterKind.UNKNOWN),
    )


def library_stats(db: Database, *, skipped_examples: int = 10, top: int = 10) -> LibraryStats:
    stats = LibraryStats()
    with db.session() as session:
        rows_by_status = session.execute(select(Image.status, func.count()).group_by(Image.status)).all()
        stats.photos_by_status = {str(status): int(count) for status, count in rows_by_status}
        stats.faces = session.scalar(select(func.count()).select_from(FaceInstance)) or 0
        stats.faces_confirmed = session.scalar(select(func.count()).where(FaceInstance.user_confirmed.is_(True))) or 0
        stats.people = session.scalar(select(func.count()).where(Person.status == PersonStatus.ACTIVE)) or 0
        kind = _cluster_type().label("kind")
        rows = session.execute(
            select(kind, func.count(func.distinct(FaceInstance.cluster_id)), func.count()).group_by(kind)
        ).all()
        stats.clusters = {r[0]: r[1] for r in rows if r[0] != "unclustered"}
        stats.faces_by_cluster_type = {r[0]: r[2] for r in rows}
        space = active_space(session)
        if space is not None:
            stats.active_space = space.name
            stats.person_threshold = space.person_threshold
            stats.person_margin = space.person_margin
            stats.active_space_kind = space.kind
            stats.face_model = _face_model(session, space)
            stats.learned_matcher = _learned_matcher(session, space.name)
        _add_last_training(session, stats)
        stats.people_counts = [
            (r[0], r[1])
            for r in session.execute(
                select(Person.name, func.count(FaceInstance.id))
                .join(FaceInstance, FaceInstance.person_id == Person.id)
                .group_by(Person.id, Person.name)
                .order_by(func.count(FaceInstance.id).desc(), Person.name)
                .limit(top)
            )
        ]
        size = func.count().label("size")
        stats.largest_unknown = [
            (r[0], r[1])
            for r in session.execute(
                select(FaceInstance.cluster_id, size)
                .where(FaceInstance.cluster_id.like(like_pattern(ClusterKind.UNKNOWN), escape=LIKE_ESCAPE))
                .group_by(FaceInstance.cluster_id)
                .order_by(size.desc(), FaceInstance.cluster_id)
                .limit(top)
            )
        ]
        stats.skip_reasons = [
            (r.path, r.skip_reason or "")
            for r in session.execute(
                select(Image.path, Image.skip_reason).where(Image.status == ImageStatus.SKIPPED).limit(skipped_examples)
            )
        ]
    return stats


def _face_model(session: Any, space: Space) -> dict[str, Any]:
    raw = raw_space_of(session, space)
    return raw.model_facts or {"space": raw.name, "model": raw.model_name, "dim": raw.dim}


def _learned_matcher(session: Any, space: str) -> dict[str, Any]:
    value = stored_verdict(session, space) or {}
    return {k: value.get(k) for k in ("use", "reason", "kind", "at", "labelled_faces", "seconds")} if value else {}


def _add_last_training(session: Any, stats: LibraryStats) -> None:
    space = latest_checkpoint(session)
    if space is None:
        return
    stats.last_training_space = space.name
    stats.last_training_at = space.created_at
    stats.last_training_status = space.status
    stats.last_training_promoted = None if space.gate is None else space.gate.promote
    stats.last_training_reason = None if space.gate is None else space.gate.reason
    stats.last_training_label_count = space.label_count
