"""Learning from labels: train a projection head on the users' labels, gate it, register the checkpoint.

`read_training_set` takes every face a user named (and every face a user rejected for someone) with its raw
vector; `train_checkpoint` trains `domain.projection.train_projection` on them, which measures the head
against the raw space on people it never trained on and says whether to promote it. Either way the
checkpoint is kept (weights + JSON metadata under FACE_DATA_DIR/checkpoints) and registered as an
`embedding_spaces` row: status `candidate` when promoted (services/space_switch.py makes it active),
`rejected` with its figures otherwise. Too few labels raise `TooFewLabels` and leave nothing behind.

A checkpoint is promoted only when both gates pass: the head's own (pair TAR at a fixed FAR, nearest-prototype
accuracy, `domain.projection.promotion_decision`) and the pipeline's (`domain.promotion_gate.pipeline_gate`):
on held-out people, at the thresholds the projected space would run at, it must find more faces of named
people without naming more strangers or making the unknown groups less pure. Those thresholds are
calibrated on a seeded sample of the library's unnamed faces (`LIBRARY_SAMPLE`): the projected space may name
and link the same share of them as the raw space does (`match_thresholds_on_library`); a library with fewer
than `MIN_LIBRARY_FACES` unnamed faces matches the held-out faces' error rates instead.

`train_and_reassign_stage` is one label -> train -> reassign round for the evaluation.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import select

from face_pipeline.domain.assignment import SpaceThresholds
from face_pipeline.domain.metrics import PipelineFigures
from face_pipeline.domain.projection import (
    NotEnoughLabels,
    TrainingParams,
    TrainingResult,
    train_projection,
)
from face_pipeline.domain.projection_head import project, resolve_device
from face_pipeline.domain.promotion_gate import (
    PipelineVerdict,
    match_thresholds_on_library,
    pipeline_gate,
)
from face_pipeline.domain.verification import UNLABELLED, l2_normalise
from face_pipeline.errors import InvalidInput
from face_pipeline.faults import crash_point
from face_pipeline.services.cluster_dual import ClusterDualReport, run_cluster_dual
from face_pipeline.services.label_growth import MIN_FACES_PER_PERSON, MIN_TRAINING_PEOPLE, LabelCounts, count_labels
from face_pipeline.services.library import Library
from face_pipeline.services.run_params import NoActiveSpace
from face_pipeline.services.space_registry import (
    GateResult,
    GateVerdict,
    active_space,
    new_checkpoint_path,
    raw_space_of,
    register_checkpoint,
    stored_checkpoint_path,
)
from face_pipeline.services.space_switch import SpaceMode
from face_pipeline.settings import Settings
from face_pipeline.storage.checkpoints import save_checkpoint
from face_pipeline.storage.db import Database
from face_pipeline.storage.models import FaceInstance, FaceRejection
from face_pipeline.storage.vectors import VectorStore, VectorStoreError

log = logging.getLogger(__name__)

LIBRARY_SAMPLE = 10_000  # unnamed faces the projected space's thresholds are calibrated on (seeded sample)
MIN_LIBRARY_FACES = 50  # fewer unnamed faces: thresholds are matched on the held-out labelled faces instead
_CONFIRMED = FaceInstance.user_confirmed.is_(True) & FaceInstance.person_id.is_not(None)


class TooFewLabels(InvalidInput, NotEnoughLabels):
    """Not enough people have enough labelled faces; nothing was trained or written."""


# --- what training reads -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingSet:
    """Labelled faces (plus faces rejected for someone) with their raw vectors, in face id order."""

    base_space: str  # the raw model's space the head reads
    model_name: str
    base_thresholds: SpaceThresholds
    face_ids: np.ndarray  # (n,) int64, ascending
    vectors: np.ndarray  # (n, d) float32, raw
    labels: np.ndarray  # (n,) int64: index into person_ids, UNLABELLED for faces only rejected
    person_ids: np.ndarray  # (P,) object
    rejections: np.ndarray  # (m, 2) int64 rows (face row, person label): "this face is not that person"
    # (s, d) float32 raw vectors of up to LIBRARY_SAMPLE faces nobody named: what the thresholds are calibrated on
    library_sample: np.ndarray = field(default_factory=lambda: np.empty((0, 0), np.float32))

    @property
    def label_count(self) -> int:
        return int((self.labels != UNLABELLED).sum())


def _too_few(exc: NotEnoughLabels) -> TooFewLabels:
    return TooFewLabels(
        f"not enough labels to train: {exc}; name more faces (`faces label`, or the review page) and train again"
    )


def require_enough_labels(db: Database) -> LabelCounts:
    """The label counts when they are enough to train (LabelCounts.enough_to_train, the one rule the
    sensor and the schedule use too); TooFewLabels (SQL only, cheap) otherwise."""
    counts = count_labels(db)
    if not counts.enough_to_train:
        raise TooFewLabels(
            f"not enough labels to train: need at least {MIN_TRAINING_PEOPLE} people with {MIN_FACES_PER_PERSON}+ "
            f"labelled faces each; have {counts.trainable_people} people with {MIN_FACES_PER_PERSON}+ faces; "
            "name more faces (`faces label`, or the review page) and train again"
        )
    return counts


def read_training_set(library: Library, vectors: VectorStore) -> TrainingSet:
    """Every user-confirmed face and every rejected face, with raw vectors. Raises TooFewLabels before
    reading any vector when fewer than 5 people have 5+ labelled faces (the design note's minimum)."""
    require_enough_labels(library.db)
    with library.db.session() as session:
        active = active_space(session)
        if active is None:
            raise NoActiveSpace()
        base = raw_space_of(session, active)
        labelled = session.execute(select(FaceInstance.id, FaceInstance.person_id).where(_CONFIRMED)).all()
        rejected = session.execute(select(FaceRejection.face_id, FaceRejection.person_id)).all()
        unnamed_ids = session.scalars(select(FaceInstance.id).where(~_CONFIRMED)).all()
    labelled_ids = np.array([r.id for r in labelled], dtype=np.int64)
    person_ids, labelled_labels = _labels_by_first_face(labelled_ids, [r.person_id for r in labelled])

    # A rejection is usable only against a person who has labelled faces (the person needs a label index).
    label_of = {pid: i for i, pid in enumerate(person_ids.tolist())}
    rejections = [(r.face_id, label_of[r.person_id]) for r in rejected if r.person_id in label_of]
    rejected_ids = np.array([f for f, _ in rejections], dtype=np.int64)
    rejected_people = np.array([p for _, p in rejections], dtype=np.int64)
    only_rejected = np.setdiff1d(rejected_ids, labelled_ids)
    face_ids = np.concatenate([labelled_ids, only_rejected])
    labels = np.concatenate([labelled_labels, np.full(only_rejected.size, UNLABELLED, np.int64)])
    order = np.argsort(face_ids)
    face_ids, labels = face_ids[order], labels[order]
    rejection_rows = np.stack([np.searchsorted(face_ids, rejected_ids), rejected_people], axis=1).astype(np.int64)
    unnamed = np.setdiff1d(np.array(unnamed_ids, dtype=np.int64), face_ids)
    if unnamed.size > LIBRARY_SAMPLE:
        unnamed = np.sort(np.random.default_rng(0).choice(unnamed, LIBRARY_SAMPLE, replace=False))
    try:
        raw = vectors.fetch(base.name, face_ids)
        sample = vectors.fetch(base.name, unnamed) if unnamed.size else np.empty((0, raw.shape[1]), np.float32)
    except VectorStoreError as exc:
        raise InvalidInput(f"raw vectors of some faces are missing ({exc}); re-run `faces backfill`") from None
    return TrainingSet(
        base_space=base.name,
        model_name=base.model_name,
        base_thresholds=base.thresholds(),
        face_ids=face_ids,
        vectors=raw.astype(np.float32, copy=False),
        labels=labels,
        person_ids=person_ids,
        rejections=rejection_rows,
        library_sample=sample.astype(np.float32, copy=False),
    )


def _labels_by_first_face(face_ids: np.ndarray, people: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(person ids, (n,) label of each face), people numbered by their first labelled face, not by their random
    uuid: the identity split then depends on the labels alone, so the same labels train the same head."""
    person_ids, inverse = np.unique(np.array(people, dtype=object), return_inverse=True)
    first = np.full(person_ids.size, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, inverse, face_ids)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return person_ids[order], rank[inverse].astype(np.int64)


def training_params(
    settings: Settings,
    *,
    epochs: int | None = None,
    margin: float | None = None,
    learning_rate: float | None = None,
    batch_size: int | None = None,
    device: str | None = None,
) -> TrainingParams:
    """FACE_TRAINING_EPOCHS, FACE_TRIPLET_MARGIN, FACE_LEARNING_RATE, FACE_BATCH_SIZE, FACE_DEVICE, each
    overridable (CLI options, Dagster run config)."""
    try:
        return TrainingParams(
            epochs=epochs or settings.training_epochs,
            margin=margin if margin is not None else settings.triplet_margin,
            learning_rate=learning_rate or settings.learning_rate,
            batch_size=batch_size or settings.batch_size,
            device=device or settings.device,  # type: ignore[arg-type]
        )
    except ValueError as exc:  # e.g. FACE_BATCH_SIZE below one batch of 2 people x 4 faces
        raise InvalidInput(f"{exc} (FACE_TRAINING_EPOCHS, FACE_TRIPLET_MARGIN, FACE_BATCH_SIZE, ...)") from None


# --- the pipeline gate and the projected space's thresholds ---------------------------------------------


def gate_on_pipeline(data: TrainingSet, result: TrainingResult, *, min_cluster_size: int | None) -> PipelineVerdict:
    """Play the pipeline on the faces training held out (`result.split`) in both spaces, each at its own
    thresholds (`domain.promotion_gate`)."""
    raw = l2_normalise(data.vectors)
    projected = project(data.vectors, result.state_dict, device="cpu")
    matched = None
    if data.library_sample.shape[0] >= MIN_LIBRARY_FACES:
        named = data.labels != UNLABELLED
        matched = match_thresholds_on_library(
            l2_normalise(data.library_sample),
            project(data.library_sample, result.state_dict, device="cpu"),
            raw[named],
            projected[named],
            data.labels[named],
            data.base_thresholds,
        )
    return pipeline_gate(
        raw,
        projected,
        data.labels,
        result.split,
        data.base_thresholds,
        min_cluster_size=min_cluster_size,
        matched=matched,
    )


# --- training and registering ---------------------------------------------------------------------------


@dataclass
class TrainingReport:
    space: str
    base_space: str
    status: str  # candidate (promoted, not active yet) | rejected
    promote: bool
    reason: str
    checkpoint: str  # weights; the JSON metadata sits beside it
    thresholds: SpaceThresholds  # of the projected space
    raw_thresholds: SpaceThresholds
    figures: dict[str, tuple[float, float]]  # validation figure -> (raw, projected)
    losses: list[float]  # mean triplet loss per epoch, 1..n
    val_tar: list[float]  # validation TAR@FAR per epoch, 0 (untrained) ..n
    best_epoch: int
    seconds: float
    device: str
    label_count: int
    counts: dict[str, int] = field(default_factory=dict)
    threshold_facts: dict[str, Any] = field(default_factory=dict)
    pipeline: dict[str, PipelineFigures] = field(default_factory=dict)  # held-out pipeline figures, raw / projected
    epochs_requested: int = 0  # TrainingParams.epochs; fewer ran when validation stopped gaining
    patience: int = 0  # epochs without a validation gain before stopping

    @property
    def epochs_run(self) -> int:
        return len(self.losses)

    def stopping(self) -> str:
        """How training ended, in words: "stopped at epoch 5 of 20: no validation gain after epoch 0"."""
        untrained = self.best_epoch == 0
        if self.epochs_run < self.epochs_requested:
            return (
                f"stopped at epoch {self.epochs_run} of {self.epochs_requested}: no validation gain after epoch "
                f"{self.best_epoch} ({'the untrained head; ' if untrained else ''}patience {self.patience} epochs)"
            )
        best = f"epoch {self.best_epoch}" + (" (the untrained head)" if untrained else "")
        return f"ran all {self.epochs_run} epochs; best validation TAR at {best}"


def new_space_name(base_space: str) -> str:
    """`<base>.proj-<UTC time>-<6 hex>`: sorts by time, unique, a valid collection and file name."""
    return f"{base_space}.proj-{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


def train_checkpoint(library: Library, data: TrainingSet, params: TrainingParams | None = None) -> TrainingReport:
    """Train, gate, choose the projected space's thresholds, save the checkpoint, register the row."""
    params = params or training_params(library.settings)
    try:
        resolve_device(params.device)
    except (RuntimeError, ValueError) as exc:  # e.g. FACE_DEVICE=cuda on a machine without a GPU
        raise InvalidInput(str(exc)) from None
    try:
        result = train_projection(data.vectors, data.labels, data.rejections, params)
    except NotEnoughLabels as exc:
        raise _too_few(exc) from None
    verdict = gate_on_pipeline(data, result, min_cluster_size=library.settings.unknown_min_cluster_size)
    gate = GateResult(
        promote=result.promote and verdict.promote,
        reason=_overall_reason(result, verdict),
        verification=GateVerdict(result.promote, result.promote_reason),
        pipeline=GateVerdict(verdict.promote, verdict.reason),
        raw_figures=verdict.raw_figures,
        projected_figures=verdict.projected_figures,
    )
    name = new_space_name(data.base_space)
    path = new_checkpoint_path(library.settings, name)
    thresholds = {
        **verdict.threshold_facts,
        "raw": asdict(data.base_thresholds),
        "projected": asdict(verdict.projected),
    }
    # Files first, row second: a crash leaves an unused file, never a row that points at nothing.
    save_checkpoint(
        path,
        result.state_dict,
        {
            "base_space": data.base_space,
            **result.summary(),
            "space": name,
            "model_name": data.model_name,
            "label_count": data.label_count,
            **gate.as_metrics(),
            "thresholds": thresholds,
        },
    )
    crash_point("train_checkpoint_saved")
    with library.db.session() as session:
        space = register_checkpoint(
            session,
            name=name,
            base_space=data.base_space,
            model_name=data.model_name,
            dim=result.spec.out_dim,
            checkpoint_path=stored_checkpoint_path(library.settings, path),
            gate=gate,
            thresholds=verdict.projected,
            label_count=data.label_count,
            metrics={**result.summary(), "thresholds": thresholds, "label_count": data.label_count},
        )
    return TrainingReport(
        space=name,
        base_space=data.base_space,
        status=str(space.status),
        promote=gate.promote,
        reason=gate.reason,
        checkpoint=str(path),
        thresholds=verdict.projected,
        raw_thresholds=data.base_thresholds,
        figures=_figures(result, verdict),
        losses=[r.train_loss for r in result.history[1:]],
        val_tar=[r.val_tar for r in result.history],
        best_epoch=result.best_epoch,
        seconds=result.seconds,
        device=result.device,
        label_count=data.label_count,
        counts=dict(result.counts),
        threshold_facts=verdict.threshold_facts,
        pipeline={"raw": verdict.raw_figures, "projected": verdict.projected_figures},
        epochs_requested=params.epochs,
        patience=params.patience,
    )


def _overall_reason(result: TrainingResult, verdict: PipelineVerdict) -> str:
    if not result.promote:
        return result.promote_reason
    if not verdict.promote:
        return verdict.reason
    return f"{result.promote_reason}; {verdict.reason}"


def _figures(result: TrainingResult, verdict: PipelineVerdict) -> dict[str, tuple[float, float]]:
    raw, projected = result.raw, result.projected
    before, after = verdict.raw_figures, verdict.projected_figures
    return {
        f"TAR@FAR={raw.verification.far:g}": (raw.verification.tar, projected.verification.tar),
        "unseen-people TAR": (raw.verification_unseen.tar, projected.verification_unseen.tar),
        "prototype accuracy": (raw.identification.accuracy, projected.identification.accuracy),
        f"open-set rate@{raw.identification.open_set_far:g}": (
            raw.identification.open_set_rate,
            projected.identification.open_set_rate,
        ),
        "pipeline precision": (before.precision, after.precision),
        "pipeline recall": (before.recall, after.recall),
        "strangers named /1000": (before.false_accepts_per_1000, after.false_accepts_per_1000),
        "unknown group purity": (before.purity, after.purity),
    }


# --- one evaluation round -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageReport:
    """One label -> train -> reassign round (the labelling is the caller's)."""

    training: TrainingReport
    cluster_dual: ClusterDualReport


def train_and_reassign_stage(
    library: Library,
    *,
    epochs: int | None = None,
    margin: float | None = None,
    learning_rate: float | None = None,
    person_threshold: float | None = None,
    use_trained_model: bool = True,
) -> StageReport:
    """Train on the current labels, then run the cluster-dual sequence in the newest promoted checkpoint's
    space (if any; the raw space stays active otherwise), exactly as `faces train-matching` followed by
    `faces reassign [--use-trained-model]`, without Dagster.

    Raises TooFewLabels (nothing changed) below 5 people x 5 labelled faces.
    """
    params = training_params(library.settings, epochs=epochs, margin=margin, learning_rate=learning_rate)
    space_mode = SpaceMode.TRAINED if use_trained_model else SpaceMode.RAW
    with library.vectors() as vectors:
        training = train_checkpoint(library, read_training_set(library, vectors), params)
        dual = run_cluster_dual(library, vectors, space_mode=space_mode, person_threshold=person_threshold)
    return StageReport(training, dual)
