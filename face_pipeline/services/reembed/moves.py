"""`faces reembed`: which model and space a library moves to, and the use cases that stage, switch and finish
a move (see the package doc)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from face_pipeline.errors import Conflict, InvalidInput
from face_pipeline.services.detection import (
    Progress,
)
from face_pipeline.services.library import Library
from face_pipeline.services.reembed.cleanup import discard_staging, finish_run
from face_pipeline.services.reembed.records import MoreToStage, ReembedReport, Run, SameModel, report_from_json
from face_pipeline.services.reembed.staging import stage_photos, staging_message
from face_pipeline.services.reembed.switch import switch_library
from face_pipeline.services.space_registry import library_raw_space
from face_pipeline.settings import Settings
from face_pipeline.storage.models import (
    ReembedRun,
    ReembedStagedFace,
    ReembedStagedImage,
    ReembedStatus,
)
from face_pipeline.storage.vectors import VectorStore
from face_pipeline.vision.embedders import create_embedder, describe_embedder
from face_pipeline.vision.model_packs import DLIB_SPACE_NAME, INSIGHTFACE_SPACE_PREFIX, ModelChoice
from face_pipeline.vision.types import EmbeddingSpaceInfo, FaceEmbedder

log = logging.getLogger(__name__)

MODELS = (ModelChoice.BUFFALO_S, ModelChoice.BUFFALO_L, ModelChoice.DLIB, ModelChoice.INSIGHTFACE)
_SWITCH_ATTEMPTS = 5  # photos arriving between the last staging pass and the switch: stage them, try again


# --- which model, which space ------------------------------------------------------------------------------


def parse_model(value: str) -> ModelChoice:
    """The --model value as a ModelChoice; InvalidInput naming the allowed ones otherwise."""
    allowed = ", ".join(MODELS)
    try:
        choice = ModelChoice(value.strip().lower())
    except ValueError:
        choice = None
    if choice not in MODELS:
        raise InvalidInput(f"--model must be one of {allowed}, got {value!r}")
    assert choice is not None
    return choice


def target_space_name(settings: Settings, choice: ModelChoice) -> str:
    """The raw space `choice` embeds into, without loading the model (the embedders name them the same way)."""
    if choice is ModelChoice.DLIB:
        return DLIB_SPACE_NAME
    pack = settings.model_name if choice is ModelChoice.INSIGHTFACE else str(choice)
    return f"{INSIGHTFACE_SPACE_PREFIX}{pack}"


def check_reembed(library: Library, model: str) -> str:
    """The space the library would move to; InvalidInput / SameModel (one line each) when it cannot move.
    Cheap (SQL only): the CLI calls it before a run is recorded."""
    choice = parse_model(model)
    target = target_space_name(library.settings, choice)
    with library.db.session() as session:
        _refuse(session, choice, target)
    return target


def _refuse(session: Session, choice: ModelChoice, target: str) -> str:
    """The library's raw space, unless the move to `target` cannot start."""
    source = library_raw_space(session)
    if source is None:
        raise InvalidInput(f"the library has no faces yet: set FACE_EMBEDDER={choice} and run `faces backfill` instead")
    if source == target and _switched_run(session, target) is None:
        raise SameModel(f"the library is already in {target} (model {choice}): nothing to re-embed")
    return source


def _switched_run(session: Session, target: str) -> ReembedRun | None:
    return session.scalar(
        select(ReembedRun).where(ReembedRun.status == ReembedStatus.SWITCHED, ReembedRun.target_space == target)
    )


# --- the use cases -----------------------------------------------------------------------------------------


def stage_library(
    library: Library,
    vectors: VectorStore,
    model: str,
    *,
    limit: int | None = None,
    progress: Progress | None = None,
    embedder: FaceEmbedder | None = None,
) -> ReembedReport:
    """Stage up to `limit` photos not staged yet with `model`; never switches (see the module doc)."""
    staged = _stage_what_is_left(library, vectors, model, limit, progress, embedder, finish=False)
    return staged if isinstance(staged, ReembedReport) else staged.report


def reembed_library(
    library: Library,
    vectors: VectorStore,
    model: str,
    *,
    limit: int | None = None,
    progress: Progress | None = None,
    embedder: FaceEmbedder | None = None,
) -> ReembedReport:
    """Stage what is left (at most `limit` photos), then, when every photo is staged, switch and clean up."""
    staged = _stage_what_is_left(library, vectors, model, limit, progress, embedder, finish=True)
    if isinstance(staged, ReembedReport):
        return staged
    if staged.report.photos_remaining:
        return staged.report
    run, embedder, report, started = staged.run, staged.embedder, staged.report, staged.started
    facts = describe_embedder(embedder)
    for _ in range(_SWITCH_ATTEMPTS):
        try:
            switch_library(library, vectors, run, facts, report)
            break
        except MoreToStage:
            stage_photos(library, vectors, run, embedder, None, progress, report)
    else:
        raise Conflict("photos keep arriving faster than they are staged; run `faces reembed` again later")
    finished = finish_run(library, vectors, run.id)
    finished.photos_staged, finished.faces_staged = report.photos_staged, report.faces_staged
    finished.seconds = time.perf_counter() - started
    log.info("re-embedded the library: %s", finished.message)
    return finished


@dataclass
class _Staged:
    """A run staged as far as it goes now; `report` says so (its message is set)."""

    run: Run
    embedder: FaceEmbedder
    report: ReembedReport
    started: float


def _stage_what_is_left(
    library: Library,
    vectors: VectorStore,
    model: str,
    limit: int | None,
    progress: Progress | None,
    embedder: FaceEmbedder | None,
    *,
    finish: bool,
) -> ReembedReport | _Staged:
    """Open (or resume) the move to `model` and stage photos; a report instead when the move cannot start or a
    committed switch was just finished (see `_prepare`)."""
    started = time.perf_counter()
    prepared = _prepare(library, vectors, model, embedder, finish=finish)
    if isinstance(prepared, ReembedReport):
        return prepared
    run, embedder = prepared
    report = ReembedReport(source_space=run.source, target_space=run.target)
    stage_photos(library, vectors, run, embedder, limit, progress, report)
    report.message = staging_message(report, model)
    report.seconds = time.perf_counter() - started
    return _Staged(run, embedder, report, started)


def finish_switched_runs(library: Library, vectors: VectorStore) -> list[ReembedReport]:
    """Clean up after switches that committed but did not finish (a crash after the commit)."""
    with library.db.session() as session:
        ids = session.scalars(select(ReembedRun.id).where(ReembedRun.status == ReembedStatus.SWITCHED)).all()
    return [finish_run(library, vectors, run_id) for run_id in ids]


def _prepare(
    library: Library, vectors: VectorStore, model: str, embedder: FaceEmbedder | None, *, finish: bool
) -> ReembedReport | tuple[Run, FaceEmbedder]:
    """Refuse a move that cannot start, else the run to stage into and its model. A switch to `model`'s space
    that committed but was not cleaned up (a crash) is finished when `finish`, else left to the switch step;
    either way its report comes back instead."""
    choice = parse_model(model)
    target = target_space_name(library.settings, choice)
    finished = {r.target_space: r for r in finish_switched_runs(library, vectors)} if finish else {}
    with library.db.session() as session:
        source = library_raw_space(session)
        pending = _switched_run(session, target)
        if source == target and pending is not None:
            report = report_from_json(dict(pending.report or {}))
            report.message = f"the switch to {target} committed earlier; its clean-up comes with the switch step"
            return report
    if target in finished and source == target:
        report = finished[target]
        report.message = "finished the switch an earlier run had committed: " + report.message
        return report
    with library.db.session() as session:
        source = _refuse(session, choice, target)
    embedder = embedder or create_embedder(library.settings, choice)
    space = embedder.space
    if space.name == source:  # a pack whose space name differs from the guess (FACE_MODEL_NAME)
        raise SameModel(f"the library is already in {space.name} (model {choice}): nothing to re-embed")
    return _open_run(library, vectors, source, space, choice), embedder


def _open_run(
    library: Library, vectors: VectorStore, source: str, space: EmbeddingSpaceInfo, choice: ModelChoice
) -> Run:
    """The staging run for source -> space: resumed when one is there; one for another move is abandoned."""
    with library.db.session() as session:
        for row in session.scalars(select(ReembedRun).where(ReembedRun.status == ReembedStatus.STAGING)).all():
            if (row.source_space, row.target_space, row.dim) == (source, space.name, space.dim):
                log.info("resuming the staged move %s -> %s (run %d)", source, space.name, row.id)
                return Run.of(row)
            log.info("abandoning the staged move %s -> %s (run %d)", row.source_space, row.target_space, row.id)
            discard_staging(library, vectors, Run.of(row))
            session.execute(delete(ReembedStagedFace).where(ReembedStagedFace.run_id == row.id))
            session.execute(delete(ReembedStagedImage).where(ReembedStagedImage.run_id == row.id))
            row.status = ReembedStatus.ABANDONED
        row = ReembedRun(source_space=source, target_space=space.name, target_model=str(choice), dim=space.dim)
        session.add(row)
        session.flush()
        run = Run.of(row)
    discard_staging(library, vectors, run)  # leftovers of a run whose row a rollback undid
    return run
