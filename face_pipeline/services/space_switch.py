"""Switching the active embedding space (the regenerated_embeddings asset), and its collection in step
with SQL. The registry (services/space_registry.py) owns the spaces; this module decides which one the
pipeline should read next and makes its vectors complete before asking the registry to activate it.

A trained projection space has its own vector collection, named after the space, holding every face's
raw vector passed through the checkpoint's head. Raw vectors stay in the raw space's collection whatever
is active (detection writes there, and projections are computed from them).

What `regenerate_embeddings` makes active (`mode`). The rule, in one place (`_choose_target`):

- "auto" (every automatic run: the retrain job the label-growth sensor or the monthly schedule starts, the
  daily job, `faces cluster-dual`): a checkpoint the gate promoted and that was never active (status
  candidate) is activated, so the retrain run that trained it switches to it and reassigns in it. Unless
  the user pinned a space: after `faces reassign` without `--use-trained-model` (the raw-space pin, kept in
  pipeline_state until the next `faces reassign`) or with FACE_MODEL_CHECKPOINT set (that checkpoint is the
  pin), the active space stays. It never brings back a retired checkpoint and never switches to raw.
- "trained" (`faces reassign --use-trained-model`): the checkpoint FACE_MODEL_CHECKPOINT names, else the
  newest promoted one (also one retired earlier). A checkpoint the gate rejected is never activated. Lifts
  the raw-space pin: checkpoints promoted later are activated by the automatic runs again.
- "raw" (`faces reassign` without the flag): the raw model's space; an active projection is retired. Records
  the raw-space pin.

Whatever is active afterwards, when it is a projection its collection is brought in step with SQL: faces
without a vector are projected (new photos), vectors of deleted faces are removed, and a vector that no
longer matches its face's projection (a face id re-used by SQLite) is rewritten. Unchanged vectors are not
written, so running again with the same checkpoint writes nothing.

The switch is the registry's `activate` (one statement: a reader sees the old space or the new one,
never none and never two). The new space's
collection is complete before the switch; the old projection's collection is dropped after it (it can be
rebuilt from the raw vectors at any time).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session

from face_pipeline.domain.assignment import SpaceThresholds
from face_pipeline.errors import InvalidInput
from face_pipeline.faults import crash_point
from face_pipeline.services.face_table import FaceTable, read_faces
from face_pipeline.services.library import Library
from face_pipeline.services.space_registry import (
    GateResult,
    Space,
    SpaceStatus,
    activate,
    active_space,
    checkpoint_file,
    checkpoints_of,
    find_checkpoint,
    raw_space_of,
    register_checkpoint,
    stored_checkpoint_path,
)
from face_pipeline.settings import Settings
from face_pipeline.storage.models import PipelineState, utcnow
from face_pipeline.storage.vectors import VectorStore, VectorStoreError

log = logging.getLogger(__name__)


class SpaceMode(StrEnum):
    AUTO = "auto"  # a newly promoted checkpoint takes over unless a space is pinned; otherwise the active stays
    TRAINED = "trained"  # the pinned (FACE_MODEL_CHECKPOINT) or newest promoted checkpoint; lifts the raw pin
    RAW = "raw"  # the raw model's space, pinned until the next `faces reassign`


PIN_KEY = "space_pin"  # pipeline_state row: the user's last `faces reassign` choice (SpaceMode.RAW / TRAINED)


@dataclass(frozen=True)
class SpacePin:
    """What the user's last `faces reassign` chose, and when."""

    mode: SpaceMode  # RAW pins the raw space; TRAINED lets promoted checkpoints in (no pin)
    at: str  # ISO time, for the messages

    @property
    def pins_raw(self) -> bool:
        return self.mode is SpaceMode.RAW


def read_pin(session: Session) -> SpacePin | None:
    """The user's last explicit choice of space, or None when they never made one."""
    row = session.get(PipelineState, PIN_KEY)
    try:
        return None if row is None else SpacePin(SpaceMode(row.value["mode"]), str(row.value.get("at", "")))
    except (KeyError, ValueError, TypeError):
        return None  # unreadable: as if never set


def _record_pin(session: Session, mode: SpaceMode) -> None:
    value = {"mode": mode.value, "at": f"{utcnow():%Y-%m-%d %H:%M} UTC"}
    row = session.get(PipelineState, PIN_KEY)
    if row is None:
        session.add(PipelineState(key=PIN_KEY, value=value))
    else:
        row.value = value


# Largest change of a stored unit vector still taken as "the same" (the store re-normalises rows, and a
# different thread count may change the last bits of a matrix product).
SAME_VECTOR_TOLERANCE = 1e-4
OPTIMIZE_SHARE = 0.1  # rebuild the search index when at least this share of the collection was written
PAGE = 4096  # faces per read of raw vectors


@dataclass
class RegenerateReport:
    mode: str
    active_space: str | None = None
    previous_space: str | None = None  # the space that was active before, when it changed
    switched: bool = False
    projected: int = 0  # vectors written: new faces, or ones that no longer matched
    removed: int = 0  # vectors of faces that are gone
    unchanged: int = 0
    payloads_refreshed: int = 0  # raw vectors re-written with SQL's person/cluster on a switch back to raw
    dropped_collection: str | None = None
    message: str = ""
    seconds: float = 0.0


# --- choosing the space ---------------------------------------------------------------------------------


def _gate_reason(space: Space) -> str:
    if space.gate is None:
        return "no reason recorded"
    failed = space.gate.verification if not space.gate.verification.promote else space.gate.pipeline
    return failed.reason.removeprefix("kept raw space: ") or space.gate.reason or "no reason recorded"


def _choose_target(
    session: Session, settings: Settings, mode: SpaceMode, active: Space, raw: Space
) -> tuple[Space, str]:
    """The space that should be active after this run, and a sentence saying why."""
    stays = f"{'raw space' if not active.is_projection else active.name} stays active"
    if mode is SpaceMode.RAW:
        return raw, "raw space requested" if active.is_projection else "raw space is active"
    if settings.model_checkpoint:
        if mode is SpaceMode.AUTO:
            return active, f"{stays}: FACE_MODEL_CHECKPOINT is set, spaces switch only on `faces reassign`"
        pinned = _space_for_checkpoint_file(session, settings, raw)
        if pinned.status is SpaceStatus.REJECTED:
            return active, f"{stays}: FACE_MODEL_CHECKPOINT {pinned.name} was rejected: {_gate_reason(pinned)}"
        return pinned, f"FACE_MODEL_CHECKPOINT names {pinned.name}"
    pin = read_pin(session) if mode is SpaceMode.AUTO else None
    if pin is not None and pin.pins_raw:
        return active, (
            f"{stays}: pinned by `faces reassign` ({pin.at}); `faces reassign --use-trained-model` lets trained "
            "checkpoints in again"
        )
    checkpoints = checkpoints_of(session, raw.name)
    if not checkpoints:
        return active, f"{stays}: no checkpoint trained yet (`faces train-matching`)"
    newest = checkpoints[0]
    if mode is SpaceMode.TRAINED:
        promoted = next((c for c in checkpoints if c.status is not SpaceStatus.REJECTED), None)
        if promoted is None:
            return active, f"{stays}: no checkpoint was promoted (newest {newest.name}: {_gate_reason(newest)})"
        return promoted, f"newest promoted checkpoint {promoted.name}"
    if newest.status is SpaceStatus.REJECTED:
        return active, f"{stays}: newest checkpoint {newest.name} was rejected: {_gate_reason(newest)}"
    if newest.status is SpaceStatus.RETIRED:
        return active, (
            f"{stays}: newest checkpoint {newest.name} was retired; `faces reassign --use-trained-model` brings it back"
        )
    if newest.status is SpaceStatus.CANDIDATE:
        return newest, f"newest checkpoint {newest.name} was promoted"
    return active, f"{newest.name} is active"


def _space_for_checkpoint_file(session: Session, settings: Settings, raw: Space) -> Space:
    """The space of FACE_MODEL_CHECKPOINT's file, registered from its JSON metadata if this library does not
    know it yet (e.g. a checkpoint copied from another library of the same raw model)."""
    path = Path(str(settings.model_checkpoint)).expanduser()
    meta_path = path.with_suffix(".json")
    if not path.is_file() or not meta_path.is_file():
        raise InvalidInput(f"FACE_MODEL_CHECKPOINT={path}: needs the weights and {meta_path.name} beside them")
    metadata = json.loads(meta_path.read_text(encoding="utf-8"))
    stored = stored_checkpoint_path(settings, path)
    name = str(metadata.get("space") or path.stem)
    space = find_checkpoint(session, name=name, checkpoint_path=stored)
    if space is None:
        space = _register_foreign_checkpoint(session, metadata, name, stored, raw, path)
    if space.base_space != raw.name:
        raise InvalidInput(
            f"FACE_MODEL_CHECKPOINT={path} reads {space.base_space!r} vectors; this library's faces are {raw.name!r}"
        )
    return space


_KEPT_METRICS = ("thresholds", "raw", "projected", "history", "counts")


def _register_foreign_checkpoint(
    session: Session, metadata: dict, name: str, stored: str, raw: Space, path: Path
) -> Space:
    projected = (metadata.get("thresholds") or {}).get("projected") or {}
    gate = GateResult.from_metrics(metadata)
    if (
        gate is None
        or metadata.get("base_space") != raw.name
        or not {"threshold", "margin", "cluster_eps"} <= projected.keys()
    ):
        raise InvalidInput(
            f"FACE_MODEL_CHECKPOINT={path} is not a checkpoint of this library's {raw.name!r} space "
            f"(base space {metadata.get('base_space')!r}) or lacks its thresholds; train one: `faces train-matching`"
        )
    return register_checkpoint(
        session,
        name=name,
        base_space=raw.name,
        model_name=str(metadata.get("model_name") or raw.name),
        dim=int(metadata["out_dim"]),
        checkpoint_path=stored,
        gate=gate,
        thresholds=SpaceThresholds(
            threshold=float(projected["threshold"]),
            margin=float(projected["margin"]),
            cluster_eps=float(projected["cluster_eps"]),
        ),
        label_count=metadata.get("label_count"),
        metrics={k: metadata.get(k) for k in _KEPT_METRICS},
    )


# --- the collections ------------------------------------------------------------------------------------


def _payloads(table: FaceTable, rows: np.ndarray) -> list[dict[str, object]]:
    return [
        {"image_id": int(i), "person_id": p, "cluster_id": c}
        for i, p, c in zip(
            table.image_ids[rows].tolist(),
            table.person_ids[rows].tolist(),
            table.cluster_ids[rows].tolist(),
            strict=True,
        )
    ]


def _raw_pages(vectors: VectorStore, raw: str, table: FaceTable) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(table rows, their raw vectors) a page at a time: the raw collection (512-d for ArcFace) is never
    held whole."""
    for start in range(0, len(table), PAGE):
        rows = np.arange(start, min(start + PAGE, len(table)))
        try:
            yield rows, vectors.fetch(raw, table.ids[rows])
        except VectorStoreError as exc:
            raise InvalidInput(f"faces without a raw vector in {raw} ({exc}); re-run `faces backfill`") from None


def sync_projection(library: Library, vectors: VectorStore, space: Space, raw: str, report: RegenerateReport) -> None:
    """Bring the projection's collection in step with SQL, writing only what differs."""
    if space.checkpoint_path is None:
        raise InvalidInput(f"embedding space {space.name} has no checkpoint file")
    try:
        from face_pipeline.domain.projection_head import project  # torch: only when a projection is applied
        from face_pipeline.storage.checkpoints import load_checkpoint

        head, _ = load_checkpoint(checkpoint_file(library.settings, space.checkpoint_path))
    except FileNotFoundError as exc:
        raise InvalidInput(f"checkpoint of {space.name} is missing: {exc}") from None
    with library.db.session() as session:
        table = read_faces(session)
    fresh = not vectors.has_collection(space.name)
    vectors.ensure_collection(space.name, head.spec.out_dim)
    # The projected vectors are small (128-d by default): one read of what the collection holds.
    stored_ids, stored = (np.empty(0, np.int64), None) if fresh else vectors.fetch_all(space.name)
    written = 0
    for rows, raw_page in _raw_pages(vectors, raw, table):
        ids = table.ids[rows]
        projected = project(raw_page, head, device=library.settings.device)
        write = np.ones(rows.size, dtype=bool)
        if stored is not None and stored_ids.size:
            where = np.minimum(np.searchsorted(stored_ids, ids), stored_ids.size - 1)
            present = stored_ids[where] == ids
            drift = np.abs(stored[where[present]] - projected[present]).max(axis=1, initial=0.0)
            write[np.flatnonzero(present)] = drift > SAME_VECTOR_TOLERANCE
        if write.any():
            vectors.upsert(space.name, ids[write], projected[write], _payloads(table, rows[write]))
            written += int(write.sum())
            crash_point("projection_page_written")
    gone = np.setdiff1d(stored_ids, table.ids)
    if gone.size:
        vectors.delete(space.name, gone)
    if fresh or written > OPTIMIZE_SHARE * max(len(table), 1):
        vectors.optimize(space.name)
    report.projected, report.removed, report.unchanged = written, int(gone.size), len(table) - written


def refresh_raw_payloads(library: Library, vectors: VectorStore, raw: str) -> int:
    """Rewrite the raw collection's person/cluster payloads from SQL: while a projection was active only
    its collection's payloads followed the assignments. Vectors are written back unchanged."""
    with library.db.session() as session:
        table = read_faces(session)
    for rows, raw_page in _raw_pages(vectors, raw, table):
        vectors.upsert(raw, table.ids[rows], raw_page, _payloads(table, rows))
    return len(table)


# --- the use case ---------------------------------------------------------------------------------------


def regenerate_embeddings(
    library: Library, vectors: VectorStore, *, mode: SpaceMode | str = SpaceMode.AUTO
) -> RegenerateReport:
    """Choose the active space (see the module doc), fill its collection, switch atomically, report."""
    try:
        mode = SpaceMode(mode)
    except ValueError:
        raise InvalidInput(f"mode must be one of {', '.join(SpaceMode)}, got {mode!r}") from None
    started = time.perf_counter()
    report = RegenerateReport(mode.value)
    with library.db.session() as session:
        active = active_space(session)
        if active is None:
            report.message = "no faces yet: nothing to regenerate"
            return report
        raw = raw_space_of(session, active)
        target, why = _choose_target(session, library.settings, mode, active, raw)

    if target.is_projection:
        sync_projection(library, vectors, target, raw.name, report)
    elif active.is_projection:  # back to raw: its payloads stood still while the projection was active
        report.payloads_refreshed = refresh_raw_payloads(library, vectors, raw.name)
    if target.name != active.name:
        report.previous_space = activate(library.db, target.name)
        crash_point("space_switched")
        report.switched = True
        if active.is_projection:
            vectors.drop_collection(active.name)
            report.dropped_collection = active.name
    if mode is not SpaceMode.AUTO:  # the user's explicit choice, honoured by the automatic runs that follow
        with library.db.session() as session:
            _record_pin(session, mode)
    report.active_space = target.name
    report.message = _message(report, why)
    report.seconds = time.perf_counter() - started
    log.info("regenerated embeddings: %s", report.message)
    return report


def _message(report: RegenerateReport, why: str) -> str:
    head = f"switched to {report.active_space} ({why}; was {report.previous_space})" if report.switched else why
    if report.mode == SpaceMode.RAW:
        head += "; raw space pinned: automatic runs keep it until the next `faces reassign`"
    if report.projected or report.removed or report.unchanged:
        head += f"; {report.projected} vectors projected, {report.removed} removed, {report.unchanged} unchanged"
    return head
