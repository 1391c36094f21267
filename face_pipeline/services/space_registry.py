"""The embedding-space registry: the one owner of the `embedding_spaces` table.

A space is a raw face model's output (kind RAW) or a trained head applied to one (kind PROJECTION). This
module registers spaces, says which one is active, activates and retires them, keeps their thresholds,
their checkpoint files' paths and the promotion gate's result, and answers "the last promoted checkpoint".
Everything else asks it; nothing else writes the table. Callers get `Space`, a detached typed view.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import case, func, or_, select, update
from sqlalchemy.orm import Session

from face_pipeline.domain.assignment import SpaceThresholds, thresholds_for_space
from face_pipeline.domain.metrics import PipelineFigures, jsonable
from face_pipeline.errors import InvalidInput, UserFacingError
from face_pipeline.settings import Settings
from face_pipeline.storage.db import Database
from face_pipeline.storage.models import EmbeddingSpaceRow, FaceInstance, SpaceKind, SpaceStatus, utcnow
from face_pipeline.vision.model_packs import ModelChoice, choice_for_space
from face_pipeline.vision.types import EmbeddingSpaceInfo, FaceEmbedder

log = logging.getLogger(__name__)

__all__ = ["GateResult", "Space", "SpaceKind", "SpaceStatus"]


class EmbeddingSpaceMismatch(UserFacingError, RuntimeError):
    """The library's faces were embedded by another model than the one configured now."""


# --- typed views ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GateVerdict:
    promote: bool
    reason: str


@dataclass(frozen=True)
class GateResult:
    """What the promotion gate decided for a checkpoint: overall, and each of its two gates.

    Stored in the row's metrics (and the checkpoint's JSON) under the keys `as_metrics` writes.
    """

    promote: bool
    reason: str
    verification: GateVerdict
    pipeline: GateVerdict
    raw_figures: PipelineFigures | None = None  # the held-out pipeline in the raw space
    projected_figures: PipelineFigures | None = None  # ... and in the projected one

    def as_metrics(self) -> dict[str, Any]:
        return {
            "promote": self.promote,
            "promote_reason": self.reason,
            "verification_gate": {"promote": self.verification.promote, "reason": self.verification.reason},
            "pipeline_gate": {
                "promote": self.pipeline.promote,
                "reason": self.pipeline.reason,
                # NaN (nothing to count) as null: PostgreSQL's JSON has no NaN
                "raw": None if self.raw_figures is None else jsonable(self.raw_figures.as_dict()),
                "projected": None if self.projected_figures is None else jsonable(self.projected_figures.as_dict()),
            },
        }

    @classmethod
    def from_metrics(cls, metrics: dict[str, Any] | None) -> GateResult | None:
        """The gate result kept in `metrics`; None when there is none (a raw space)."""
        if not metrics or "promote" not in metrics:
            return None
        verification = metrics.get("verification_gate") or {}
        pipeline = metrics.get("pipeline_gate") or {}
        return cls(
            promote=metrics["promote"] is True,
            reason=str(metrics.get("promote_reason") or ""),
            verification=GateVerdict(verification.get("promote") is True, str(verification.get("reason") or "")),
            pipeline=GateVerdict(pipeline.get("promote") is True, str(pipeline.get("reason") or "")),
            raw_figures=_figures(pipeline.get("raw")),
            projected_figures=_figures(pipeline.get("projected")),
        )


def _figures(data: dict[str, Any] | None) -> PipelineFigures | None:
    if not data:
        return None
    nan = float("nan")  # stored as null: nothing to count
    names = PipelineFigures.__dataclass_fields__
    values: dict[str, Any] = {k: (nan if data.get(k) is None else data[k]) for k in names}
    return PipelineFigures(**values)


@dataclass(frozen=True)
class Space:
    """One registered embedding space, detached from the session."""

    name: str  # also the vector-store collection's name
    kind: SpaceKind
    status: SpaceStatus
    model_name: str
    dim: int
    base_space: str | None  # a projection's raw space
    checkpoint_path: str | None  # as stored: relative to FACE_DATA_DIR when inside it
    person_threshold: float | None
    person_margin: float | None
    cluster_eps: float | None
    label_count: int | None
    gate: GateResult | None
    model_facts: dict[str, Any] = field(default_factory=dict)  # a raw space's model, providers, licence, ...
    created_at: datetime | None = None
    activated_at: datetime | None = None

    @classmethod
    def of(cls, row: EmbeddingSpaceRow) -> Space:
        metrics = dict(row.metrics or {})
        return cls(
            name=row.name,
            kind=SpaceKind(row.kind),
            status=SpaceStatus(row.status),
            model_name=row.model_name,
            dim=row.dim,
            base_space=row.base_space,
            checkpoint_path=row.checkpoint_path,
            person_threshold=row.person_threshold,
            person_margin=row.person_margin,
            cluster_eps=row.cluster_eps,
            label_count=row.label_count,
            gate=GateResult.from_metrics(metrics),
            model_facts=dict(metrics.get("model") or {}),
            created_at=row.created_at,
            activated_at=row.activated_at,
        )

    @property
    def is_projection(self) -> bool:
        return self.kind is SpaceKind.PROJECTION

    @property
    def raw_name(self) -> str:
        """The raw model space under this one (itself when raw)."""
        return self.base_space or self.name if self.is_projection else self.name

    def thresholds(self) -> SpaceThresholds:
        """The space's own thresholds, grouped the way its raw model's defaults say (a projection groups faces
        like its base space)."""
        try:
            defaults = thresholds_for_space(self.raw_name)
        except ValueError:  # a raw model with no defaults of its own: the row's figures are all there is
            defaults = SpaceThresholds(threshold=0.0, margin=0.0, cluster_eps=1.0)
        return SpaceThresholds(
            threshold=defaults.threshold if self.person_threshold is None else self.person_threshold,
            margin=defaults.margin if self.person_margin is None else self.person_margin,
            cluster_eps=defaults.cluster_eps if self.cluster_eps is None else self.cluster_eps,
            cluster_method=defaults.cluster_method,
            min_cluster_size=defaults.min_cluster_size,
        )


# --- reading --------------------------------------------------------------------------------------------


def _row(session: Session, name: str) -> EmbeddingSpaceRow | None:
    return session.scalar(select(EmbeddingSpaceRow).where(EmbeddingSpaceRow.name == name))


def get_space(session: Session, name: str) -> Space | None:
    row = _row(session, name)
    return None if row is None else Space.of(row)


def active_space(session: Session) -> Space | None:
    row = session.scalar(select(EmbeddingSpaceRow).where(EmbeddingSpaceRow.status == SpaceStatus.ACTIVE))
    return None if row is None else Space.of(row)


def raw_space_of(session: Session, space: Space) -> Space:
    """The raw model's space under `space` (itself when raw)."""
    if not space.is_projection:
        return space
    base = get_space(session, space.raw_name)
    if base is None:
        raise InvalidInput(f"embedding space {space.name} names base space {space.base_space!r}, which is unknown")
    return base


def library_raw_space(session: Session) -> str | None:
    """The raw model space the library's faces are in (the active one, or the base of an active projection)."""
    space = active_space(session)
    if space is not None:
        return space.raw_name
    return session.scalar(select(FaceInstance.embedding_space).limit(1))


def checkpoints_of(session: Session, base: str) -> list[Space]:
    """Every trained projection of raw space `base`, newest first."""
    rows = session.scalars(
        select(EmbeddingSpaceRow)
        .where(EmbeddingSpaceRow.kind == SpaceKind.PROJECTION, EmbeddingSpaceRow.base_space == base)
        .order_by(EmbeddingSpaceRow.created_at.desc(), EmbeddingSpaceRow.id.desc())
    ).all()
    return [Space.of(r) for r in rows]


def latest_checkpoint(session: Session) -> Space | None:
    """The newest trained projection, whatever became of it."""
    row = session.scalars(
        select(EmbeddingSpaceRow)
        .where(EmbeddingSpaceRow.kind == SpaceKind.PROJECTION)
        .order_by(EmbeddingSpaceRow.created_at.desc(), EmbeddingSpaceRow.id.desc())
        .limit(1)
    ).first()
    return None if row is None else Space.of(row)


@dataclass(frozen=True)
class PromotedCheckpoint:
    space: str
    label_count: int


def last_promoted_checkpoint(db: Database) -> PromotedCheckpoint | None:
    """The trained projection most recently made active (it may be retired since), with its label count."""
    with db.session() as session:
        row = session.execute(
            select(EmbeddingSpaceRow.name, EmbeddingSpaceRow.label_count)
            .where(
                EmbeddingSpaceRow.kind == SpaceKind.PROJECTION,
                EmbeddingSpaceRow.status.in_([SpaceStatus.ACTIVE, SpaceStatus.RETIRED]),
            )
            .order_by(func.coalesce(EmbeddingSpaceRow.activated_at, EmbeddingSpaceRow.created_at).desc())
            .limit(1)
        ).first()
    return None if row is None else PromotedCheckpoint(row.name, int(row.label_count or 0))


# --- registering ----------------------------------------------------------------------------------------


def register_raw_space(
    session: Session,
    info: EmbeddingSpaceInfo,
    *,
    model_facts: dict[str, Any] | None = None,
    thresholds: SpaceThresholds | None = None,
) -> Space:
    """Record the detection model's space; it becomes active when no space is active yet.

    Faces of two raw spaces never share a library: their vectors are not comparable. `model_facts`
    (vision.embedders.describe_embedder: model, providers, licence, ...) are kept for `faces stats`.
    `thresholds` replace the model's defaults for a space registered now (benchmarks on synthetic spaces).
    """
    other = session.execute(
        select(FaceInstance.embedding_space, func.count())
        .where(FaceInstance.embedding_space != info.name)
        .group_by(FaceInstance.embedding_space)
    ).first()
    if other is not None:
        raise EmbeddingSpaceMismatch(
            f"the library's {other[1]} faces were embedded with '{other[0]}', but the configured model gives "
            f"'{info.name}'; leave FACE_EMBEDDER=auto (it keeps the library's model), or move the library "
            f"to the new model with `faces reembed --model {choice_for_space(info.name)}`"
        )
    row = _raw_row(session, info, thresholds)
    if model_facts is not None:
        row.metrics = {**(row.metrics or {}), "model": model_facts}
    if active_space(session) is None:
        row.status, row.activated_at = SpaceStatus.ACTIVE, utcnow()
    session.flush()
    return Space.of(row)


def _raw_row(session: Session, info: EmbeddingSpaceInfo, thresholds: SpaceThresholds | None) -> EmbeddingSpaceRow:
    row = _row(session, info.name)
    if row is None:
        row = EmbeddingSpaceRow(
            name=info.name, kind=SpaceKind.RAW, model_name=info.model_name, dim=info.dim, status=SpaceStatus.CANDIDATE
        )
        session.add(row)
        _set_thresholds(row, thresholds or thresholds_for_space(info.name))
    return row


def _set_thresholds(row: EmbeddingSpaceRow, thresholds: SpaceThresholds) -> None:
    row.person_threshold, row.person_margin = thresholds.threshold, thresholds.margin
    row.cluster_eps = thresholds.cluster_eps


def set_thresholds(session: Session, name: str, thresholds: SpaceThresholds) -> None:
    """Replace a registered space's own thresholds (person threshold, margin, cluster eps)."""
    row = _row(session, name)
    if row is None:
        raise InvalidInput(f"unknown embedding space {name!r}")
    _set_thresholds(row, thresholds)


def register_checkpoint(
    session: Session,
    *,
    name: str,
    base_space: str,
    model_name: str,
    dim: int,
    checkpoint_path: str,
    gate: GateResult,
    thresholds: SpaceThresholds,
    label_count: int | None,
    metrics: dict[str, Any] | None = None,
) -> Space:
    """Record a trained projection: CANDIDATE when the gate promoted it (space_switch activates it), else
    REJECTED (kept with its figures, never activated). `metrics`: the training's figures, kept beside the gate's."""
    row = EmbeddingSpaceRow(
        name=name,
        kind=SpaceKind.PROJECTION,
        model_name=model_name,
        dim=dim,
        base_space=base_space,
        checkpoint_path=checkpoint_path,
        status=SpaceStatus.CANDIDATE if gate.promote else SpaceStatus.REJECTED,
        person_threshold=thresholds.threshold,
        person_margin=thresholds.margin,
        cluster_eps=thresholds.cluster_eps,
        label_count=label_count,
        metrics={**(metrics or {}), **gate.as_metrics()},
    )
    session.add(row)
    session.flush()
    log.info("checkpoint %s registered: %s (%s)", name, row.status, gate.reason)
    return Space.of(row)


def find_checkpoint(session: Session, *, name: str, checkpoint_path: str) -> Space | None:
    """The projection registered under `name` or for the file at `checkpoint_path` (following a moved file)."""
    row = session.scalar(
        select(EmbeddingSpaceRow).where(
            or_(EmbeddingSpaceRow.checkpoint_path == checkpoint_path, EmbeddingSpaceRow.name == name)
        )
    )
    if row is None:
        return None
    if row.checkpoint_path != checkpoint_path:
        row.checkpoint_path = checkpoint_path  # the file moved: follow it
    return Space.of(row)


def lock_spaces(session: Session, names: list[str]) -> None:
    """Take the registry rows of `names` for this transaction (a no-op write: SQLite's writer lock, row locks
    on PostgreSQL), so a library switch to another model and a detection batch never interleave."""
    row = EmbeddingSpaceRow
    session.execute(
        update(row).where(row.name.in_(names)).values(name=row.name).execution_options(synchronize_session=False)
    )


# --- activating -----------------------------------------------------------------------------------------


def activate(db: Database, name: str) -> str | None:
    """Make `name` the only active space in one statement (the old one retired); returns the previously
    active space's name. A reader sees the old space or the new one, never none and never two."""
    with db.session() as session:
        # Row locks on PostgreSQL (a no-op on SQLite, whose writer lock serialises anyway).
        rows = session.execute(
            select(EmbeddingSpaceRow.name, EmbeddingSpaceRow.status)
            .where(or_(EmbeddingSpaceRow.status == SpaceStatus.ACTIVE, EmbeddingSpaceRow.name == name))
            .with_for_update()
        ).all()
        if name not in {r.name for r in rows}:
            raise InvalidInput(f"unknown embedding space {name!r}")
        previous = next((r.name for r in rows if r.status == SpaceStatus.ACTIVE), None)
        if previous == name:
            return previous
        target = EmbeddingSpaceRow.name == name
        session.execute(
            update(EmbeddingSpaceRow)
            .where(or_(EmbeddingSpaceRow.status == SpaceStatus.ACTIVE, target))
            .values(
                status=case((target, SpaceStatus.ACTIVE.value), else_=SpaceStatus.RETIRED.value),
                activated_at=case((target, utcnow()), else_=EmbeddingSpaceRow.activated_at),
            )
            .execution_options(synchronize_session=False)
        )
    log.info("active embedding space: %s (was %s)", name, previous)
    return previous


def replace_raw_space(session: Session, info: EmbeddingSpaceInfo, *, model_facts: dict[str, Any], old: str) -> None:
    """A library moved to another face model (faces reembed): the new raw space active (registered with its
    model's default thresholds if new); the old one and every projection trained on it retired."""
    row = _raw_row(session, info, None)
    row.metrics = {**(row.metrics or {}), "model": model_facts}
    space = EmbeddingSpaceRow
    session.execute(
        update(space)
        .where(
            or_(space.name == old, (space.base_space == old) & (space.status != SpaceStatus.REJECTED)),
            space.name != info.name,
        )
        .values(status=SpaceStatus.RETIRED)
        .execution_options(synchronize_session=False)
    )
    row.status, row.activated_at = SpaceStatus.ACTIVE, utcnow()
    session.flush()


def record_model_facts(session: Session, name: str, model_facts: dict[str, Any]) -> None:
    row = _row(session, name)
    if row is not None:
        row.metrics = {**(row.metrics or {}), "model": model_facts}


# --- checkpoint files -----------------------------------------------------------------------------------


def new_checkpoint_path(settings: Settings, name: str) -> Path:
    """Where the weights of the checkpoint of space `name` go (its JSON beside them)."""
    return settings.checkpoints_dir / f"{name}.pt"


def stored_checkpoint_path(settings: Settings, path: Path) -> str:
    """Relative to FACE_DATA_DIR when inside it, so a moved or copied library still finds its checkpoints."""
    try:
        return Path(path).resolve().relative_to(settings.data_dir.resolve()).as_posix()
    except ValueError:
        return str(Path(path).resolve())


def checkpoint_file(settings: Settings, stored: str) -> Path:
    path = Path(stored)
    return path if path.is_absolute() else settings.data_dir / path


# --- the library's model --------------------------------------------------------------------------------


def embedder_for_library(settings: Settings, db: Database) -> FaceEmbedder:
    """The face model new photos must go through: the library's own, so every vector stays comparable.

    FACE_EMBEDDER=auto on an existing library keeps its model (and says so when a better one is installed);
    an explicit FACE_EMBEDDER naming another model is refused by `register_raw_space` with the command that
    moves the library over (`faces reembed`). A new library gets whatever FACE_EMBEDDER picks.
    """
    from face_pipeline.vision.embedders import create_embedder

    with db.session() as session:
        space = library_raw_space(session)
    if space is None or settings.embedder != ModelChoice.AUTO:
        return create_embedder(settings)
    library_model = choice_for_space(space)
    embedder = create_embedder(settings, library_model)
    if library_model is ModelChoice.DLIB:
        log.info(
            "the library's faces are in %s: FACE_EMBEDDER=auto keeps dlib; `faces reembed --model buffalo_s` "
            "moves the library (and every name on it) to InsightFace",
            space,
        )
    return embedder
