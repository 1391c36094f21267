"""When a clustering run may touch only the new faces, and which faces those are.

The daily run of a large library meets a few thousand new faces among a million known ones. Under the link
rule (DBSCAN with groups of 2, the ArcFace spaces' default) yesterday's groups plus the new faces' links
are what re-grouping everything gives (`domain.clustering.extend_clusters`), and supervised assignment of
a face depends only on its own vector and the prototypes. So a run is incremental when nothing else that
decides an old face's place changed since the last run:

- the grouping rule is the link rule, and the same rule as the kept index's (storage/cluster_index.py);
- the kept index is the one the last clustering run wrote (its run token is the one in SQL), in the space
  now active (a space switch, a run under another rule, a crash before the save: full);
- the assignment inputs are the same: confirmed labels, prototypes, threshold and margin (a fingerprint);
- the index has not grown by more than FACE_CLUSTER_REBUILD_GROWTH since it was built.

Which faces a run touches (everything else keeps its assignment and its group):
- assignment: faces the last run had not seen (the kept index lists them; a face whose id was reused after a
  delete is caught by its created_at), faces that re-entered the unknown pool since the last clustering run
  (a user's unassign or reject, an un-ignore), and every face with a rejection;
- clustering: the faces of the unknown pool that are not live rows of the kept index; an index row whose
  face left the pool (named, deleted, ignored) is MISSING, and a row whose face id was given to a newer face
  (SQLite reuses the highest id after a delete) is dead too.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from face_pipeline.domain.assignment import Prototypes
from face_pipeline.domain.naming import NOISE, NOISE_PREFIX, UNKNOWN_PREFIX
from face_pipeline.services.face_table import FaceTable
from face_pipeline.settings import Settings
from face_pipeline.storage.cluster_index import ClusterIndexStore, KeptIndex
from face_pipeline.storage.models import FaceInstance, PipelineState, utcnow

log = logging.getLogger(__name__)

ASSIGNMENT_STATE_KEY = "supervised_assignment_state"  # {"space", "fingerprint", "max_face_id"} of the last run
CLUSTERING_STATE_KEY = "unknown_clustering_state"  # {"space", "run_token", "rule"} of the last run
PROTOTYPES_STATE_KEY = "person_prototypes_state"  # {"space", "labels", "count", "max_id"} of the last build
N_NEIGHBORS = 15  # the k of the full run's k-NN graph (UnknownFaceClusterer's default)


class RunMode:
    FULL = "full"
    INCREMENTAL = "incremental"


@dataclass(frozen=True)
class GroupingRule:
    method: str
    eps: float | None
    min_cluster_size: int

    @property
    def is_link_rule(self) -> bool:
        """DBSCAN with pairs allowed (min_samples 2): groups are the connected sets of faces within eps."""
        return self.method == "dbscan" and self.min_cluster_size == 2 and self.eps is not None

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, "eps": self.eps, "min_cluster_size": self.min_cluster_size}

    def describe(self) -> str:
        return f"{self.method} (eps {self.eps}, groups of {self.min_cluster_size}+)"


@dataclass(frozen=True)
class RunPlan:
    mode: str
    reason: str
    kept: KeptIndex | None = None  # header only; the clustering step loads the index itself

    @property
    def incremental(self) -> bool:
        return self.mode == RunMode.INCREMENTAL


def index_store(settings: Settings) -> ClusterIndexStore:
    return ClusterIndexStore(settings.cluster_index_dir)


def assignment_fingerprint(
    space: str, threshold: float, margin: float, prototypes: Prototypes | None, table: FaceTable
) -> str:
    """A digest of everything that decides an old face's supervised assignment: the confirmed labels, the
    prototypes built from them, the threshold and margin (rejections are handled per face)."""
    digest = hashlib.sha256(f"{space}\x00{threshold!r}\x00{margin!r}\x00".encode())
    confirmed = table.confirmed & (table.person_ids != None)  # noqa: E711
    digest.update(table.ids[confirmed].astype(np.int64).tobytes())
    digest.update("\x00".join(map(str, table.person_ids[confirmed].tolist())).encode())
    if prototypes is not None:
        digest.update("\x00".join(map(str, prototypes.person_ids.tolist())).encode())
        digest.update("\x00".join(map(str, prototypes.kinds.tolist())).encode())
        digest.update(np.ascontiguousarray(prototypes.owner, dtype=np.int64).tobytes())
        digest.update(np.ascontiguousarray(prototypes.face_counts, dtype=np.int64).tobytes())
        digest.update(np.ascontiguousarray(prototypes.vectors, dtype=np.float32).tobytes())
    return digest.hexdigest()


def labels_digest(face_ids: np.ndarray, person_ids: np.ndarray) -> str:
    """A digest of the confirmed (face, person) pairs, face ids ascending."""
    digest = hashlib.sha256(np.ascontiguousarray(face_ids, dtype=np.int64).tobytes())
    digest.update("\x00".join(map(str, person_ids.tolist())).encode())
    return digest.hexdigest()


def prototype_state(session: Session, space: str) -> dict[str, Any] | None:
    state = _state(session, PROTOTYPES_STATE_KEY)
    return state if state is not None and state.get("space") == space else None


def record_prototypes(session: Session, state: dict[str, Any]) -> None:
    _set_state(session, PROTOTYPES_STATE_KEY, state)


def _state(session: Session, key: str) -> dict[str, Any] | None:
    row = session.get(PipelineState, key)
    return dict(row.value) if row is not None else None


def _set_state(session: Session, key: str, value: dict[str, Any]) -> None:
    row = session.get(PipelineState, key)
    if row is None:
        session.add(PipelineState(key=key, value=value))
    else:
        row.value = value


def record_assignment(session: Session, space: str, fingerprint: str, table: FaceTable) -> None:
    """Note what this assignment run saw: its inputs' fingerprint and the newest face it matched."""
    newest = int(table.ids.max()) if len(table) else 0
    _set_state(session, ASSIGNMENT_STATE_KEY, {"space": space, "fingerprint": fingerprint, "max_face_id": newest})


def seen_by_assignment(session: Session, table: FaceTable) -> np.ndarray:
    """The faces of `table` the last assignment run had seen (ids up to the newest it matched): what a
    clustering run keeps as seen, so that a face written between the two steps is matched next time."""
    state = _state(session, ASSIGNMENT_STATE_KEY)
    newest = int(state.get("max_face_id", 0)) if state else 0
    return table.ids[table.ids <= newest].copy()


def record_clustering(session: Session, space: str, rule: GroupingRule) -> str:
    """Note this clustering run in SQL (with its writes) and return its token, which the index it keeps
    carries: an index whose token is not the last run's is stale."""
    token = uuid.uuid4().hex
    _set_state(session, CLUSTERING_STATE_KEY, {"space": space, "run_token": token, "rule": rule.as_dict()})
    return token


def last_assignment_fingerprint(session: Session, space: str) -> str | None:
    state = _state(session, ASSIGNMENT_STATE_KEY)
    return None if state is None or state.get("space") != space else str(state["fingerprint"])


def plan_run(
    session: Session,
    settings: Settings,
    space: str,
    rule: GroupingRule,
    fingerprint: str | None,
    *,
    full: bool = False,
) -> RunPlan:
    """Incremental or full, and why. `fingerprint`: the assignment inputs now (assignment step), or None to
    take the last assignment run's (clustering step)."""
    plan = _plan(session, settings, space, rule, fingerprint, full)
    if not plan.incremental:
        (log.warning if settings.cluster_mode == "incremental" else log.info)("%s: %s", space, plan.reason)
    return plan


def _plan(
    session: Session, settings: Settings, space: str, rule: GroupingRule, fingerprint: str | None, full: bool
) -> RunPlan:
    def full_because(why: str) -> RunPlan:
        return RunPlan(RunMode.FULL, f"full: {why}")

    if full:
        return full_because("asked for (--full)")
    if settings.cluster_mode == "full":
        return full_because("FACE_CLUSTER_MODE=full")
    if not rule.is_link_rule:
        return full_because(f"grouping rule {rule.describe()} is not the link rule (dbscan, groups of 2+)")
    clustering = _state(session, CLUSTERING_STATE_KEY)
    if clustering is None:
        return full_because("no earlier clustering run")
    if clustering.get("space") != space:
        return full_because(f"the embedding space changed since the last run ({clustering.get('space')} -> {space})")
    kept = index_store(settings).load(space, with_index=False)
    if kept is None:
        return full_because("no kept index of the unknown faces")
    if kept.run_token != clustering.get("run_token"):
        return full_because("the kept index is not the last clustering run's")
    if kept.rule != rule.as_dict():
        return full_because(f"the grouping rule changed since the last run (now {rule.describe()})")
    last = last_assignment_fingerprint(session, space)
    if last is None or last != kept.fingerprint or (fingerprint is not None and fingerprint != last):
        return full_because("labels, prototypes or thresholds changed since the last run")
    if kept.growth() > settings.cluster_rebuild_growth:
        return full_because(
            f"the index grew {kept.growth():.0%} since it was built (FACE_CLUSTER_REBUILD_GROWTH "
            f"{settings.cluster_rebuild_growth:.0%})"
        )
    return RunPlan(RunMode.INCREMENTAL, "incremental", kept)


def created_since(session: Session, since: datetime) -> np.ndarray:
    """Ids (sorted) of the faces created after `since`."""
    ids = session.scalars(select(FaceInstance.id).where(FaceInstance.created_at > since)).all()
    return np.sort(np.array(ids, dtype=np.int64))


def live_rows(kept: KeptIndex, pool_ids: np.ndarray, reborn_ids: np.ndarray) -> np.ndarray:
    """(rows,) bool: index rows that stand for a face of the unknown pool now: the face's newest row, the
    face still in the pool (`pool_ids`), and its id not given to a newer face since (`reborn_ids`)."""
    ids = kept.row_face_ids
    newest = np.zeros(len(ids), dtype=bool)
    _, last_from_end = np.unique(ids[::-1], return_index=True)
    newest[len(ids) - 1 - last_from_end] = True
    return newest & np.isin(ids, pool_ids) & ~np.isin(ids, reborn_ids)


def released_faces(kept: KeptIndex, table: FaceTable, pool: np.ndarray, reborn_ids: np.ndarray) -> np.ndarray:
    """(n,) bool over the table: faces of the unknown pool that no live index row stands for (new faces,
    and faces that re-entered the pool since the last clustering run)."""
    live = live_rows(kept, table.ids[pool], reborn_ids)
    in_pool = np.zeros(len(table), dtype=bool)
    in_pool[pool] = True
    return in_pool & ~np.isin(table.ids, kept.row_face_ids[live])


def unknown_numbers(cluster_ids: np.ndarray) -> np.ndarray:
    """(n,) int64: N of each ``unknown_cluster_{N}`` id, NOISE for any other id (noise, person, None)."""
    text = np.asarray(cluster_ids, dtype=object).astype(str)
    grouped = np.strings.startswith(text, UNKNOWN_PREFIX) & ~np.strings.startswith(text, NOISE_PREFIX)
    numbers = np.full(len(text), NOISE, dtype=np.int64)
    if grouped.any():
        numbers[grouped] = np.strings.slice(text[grouped], len(UNKNOWN_PREFIX), None).astype(np.int64)
    return numbers


def now() -> datetime:
    return utcnow()
