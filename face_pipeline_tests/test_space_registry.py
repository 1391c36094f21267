"""The embedding-space registry (services/space_registry.py): typed spaces and gate results, one active space,
and the promotion check reading the gate's held-out figures (not a flag).

A real SQLite database with the real schema; no faces or photos are needed: the registry only keeps rows.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from face_pipeline.domain.assignment import SpaceThresholds
from face_pipeline.domain.metrics import PipelineFigures
from face_pipeline.services.integrity import promotion_evidence
from face_pipeline.services.space_registry import (
    GateResult,
    GateVerdict,
    SpaceKind,
    SpaceStatus,
    activate,
    active_space,
    checkpoints_of,
    get_space,
    last_promoted_checkpoint,
    register_checkpoint,
    register_raw_space,
    set_thresholds,
)
from face_pipeline.storage.db import Database
from face_pipeline.vision.types import EmbeddingSpaceInfo

RAW = "insightface_buffalo_s_arcface_512"
PROJECTED = SpaceThresholds(threshold=0.5, margin=0.03, cluster_eps=0.4)


def figures(precision: float, recall: float, strangers: float = 0.0, purity: float = 0.99) -> PipelineFigures:
    return PipelineFigures(precision, recall, strangers, purity, grouped=0.8, n_queries=200, n_strangers=50)


def gate(raw: PipelineFigures, projected: PipelineFigures, *, promote: bool = True) -> GateResult:
    return GateResult(
        promote=promote,
        reason="as the test says",
        verification=GateVerdict(True, "TAR up"),
        pipeline=GateVerdict(promote, "as the test says"),
        raw_figures=raw,
        projected_figures=projected,
    )


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'registry.db'}")
    with database.session() as session:
        register_raw_space(session, EmbeddingSpaceInfo(RAW, "buffalo_s", 512))
    return database


def add_checkpoint(db: Database, name: str, result: GateResult, label_count: int = 40) -> None:
    with db.session() as session:
        register_checkpoint(
            session,
            name=name,
            base_space=RAW,
            model_name="buffalo_s",
            dim=128,
            checkpoint_path=f"checkpoints/{name}.pt",
            gate=result,
            thresholds=PROJECTED,
            label_count=label_count,
        )


def test_the_first_raw_space_is_active_and_typed(db: Database):
    with db.session() as session:
        space = active_space(session)
    assert space is not None and space.name == RAW
    assert space.kind is SpaceKind.RAW and space.status is SpaceStatus.ACTIVE
    assert space.thresholds().threshold == pytest.approx(0.45)  # the ArcFace defaults
    assert space.gate is None and not space.is_projection


def test_gate_results_round_trip_through_the_row_with_nan_as_null(db: Database):
    raw, projected = figures(0.99, 0.80), figures(0.99, 0.86, purity=math.nan)
    add_checkpoint(db, "p1", gate(raw, projected))
    with db.session() as session:
        space = get_space(session, "p1")
    assert space is not None and space.gate is not None
    assert space.kind is SpaceKind.PROJECTION and space.status is SpaceStatus.CANDIDATE
    assert space.gate.promote and space.gate.pipeline == GateVerdict(True, "as the test says")
    assert space.gate.raw_figures == raw
    assert space.gate.projected_figures is not None and math.isnan(space.gate.projected_figures.purity)
    assert space.thresholds().threshold == PROJECTED.threshold and space.raw_name == RAW


def test_a_rejected_checkpoint_is_registered_rejected_and_activation_keeps_one_active(db: Database):
    add_checkpoint(db, "rejected", gate(figures(0.99, 0.8), figures(0.99, 0.8), promote=False))
    add_checkpoint(db, "promoted", gate(figures(0.99, 0.8), figures(0.99, 0.9)), label_count=55)
    with db.session() as session:
        assert [s.name for s in checkpoints_of(session, RAW)] == ["promoted", "rejected"]  # newest first
        assert get_space(session, "rejected").status is SpaceStatus.REJECTED  # type: ignore[union-attr]
    assert last_promoted_checkpoint(db) is None  # promoted by the gate, never active yet
    assert activate(db, "promoted") == RAW
    with db.session() as session:
        assert active_space(session).name == "promoted"  # type: ignore[union-attr]
        assert get_space(session, RAW).status is SpaceStatus.RETIRED  # type: ignore[union-attr]
    promoted = last_promoted_checkpoint(db)
    assert promoted is not None and (promoted.space, promoted.label_count) == ("promoted", 55)


def test_promotion_check_reads_the_gate_figures_not_the_flag(db: Database):
    """A row that says promote: true while its own held-out figures show recall falling must fail the check
    (before, the check re-read the flag written with the row's status, so no real run could fail it)."""
    add_checkpoint(db, "worse", gate(figures(0.99, 0.85), figures(0.99, 0.70), promote=True))
    activate(db, "worse")
    finding = promotion_evidence(db)
    assert not finding.passed and "recall gain below" in finding.description
    add_checkpoint(db, "better", gate(figures(0.99, 0.85), figures(0.995, 0.90), promote=True))
    activate(db, "better")
    finding = promotion_evidence(db)
    assert finding.passed and "0.850 -> 0.900" in finding.description


def test_promotion_check_fails_a_projection_without_gate_figures(db: Database):
    add_checkpoint(db, "bare", GateResult(True, "old row", GateVerdict(True, ""), GateVerdict(True, "")))
    activate(db, "bare")
    finding = promotion_evidence(db)
    assert not finding.passed and "no promotion-gate figures" in finding.description


def test_thresholds_are_set_through_the_registry(db: Database):
    with db.session() as session:
        set_thresholds(session, RAW, PROJECTED)
    with db.session() as session:
        space = active_space(session)
    assert space is not None and space.thresholds().threshold == PROJECTED.threshold
    assert space.thresholds().cluster_method == "dbscan"  # the grouping stays the model's own
