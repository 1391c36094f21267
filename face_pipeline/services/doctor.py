"""`faces doctor`: find, and with repair=True fix, drift between SQL and the vector store, SQL being the truth.

Drift comes from crashes between the two writes: a kill after the vector write and before the SQL commit
leaves vectors without a face (orphans); a kill after the SQL commit and before a payload update leaves a
stale person/cluster payload; a store restored from an older backup lacks vectors. Repairs:
- orphans are deleted, stale payloads rewritten from SQL (the vector itself is kept);
- a face without its raw vector cannot be recomputed from the store: its photo is queued for detection
  again (`faces backfill`), and the user's decisions move to the re-detected face at the same place;
- a face missing from an active trained projection's collection is projected again (as cluster-dual does).

Everything runs under the space's registry lock, the lock detection holds while it writes a batch, so a
batch in flight is never mistaken for drift.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from face_pipeline.services.integrity import (
    CollectionDrift,
    Finding,
    cluster_id_problems,
    collection_drift,
    counted,
    sql_faces,
    user_label_overrides,
)
from face_pipeline.services.library import Library
from face_pipeline.services.space_registry import active_space, lock_spaces, raw_space_of
from face_pipeline.storage.models import FaceInstance, Image, ImageStatus
from face_pipeline.storage.vectors import VectorStore

log = logging.getLogger(__name__)


@dataclass
class DoctorReport:
    drifts: list[CollectionDrift] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return all(d.clean for d in self.drifts) and all(f.passed for f in self.findings)

    def lines(self) -> list[str]:
        out = [] if self.drifts else ["no faces yet: nothing to check"]
        for drift in self.drifts:
            head = f"{drift.collection}: {drift.faces} faces in SQL, {drift.points} vectors"
            problems = [
                f"{counted(n, name)} (e.g. face ids {', '.join(map(str, ids))})"
                for name, (n, ids) in drift.problems().items()
                if n
            ]
            out.append(head + (": " + "; ".join(problems) if problems else ": in step"))
        out += [("ok: " if f.passed else "problem: ") + f.description for f in self.findings]
        return out + self.repairs


def _collections(session: Session) -> list[tuple[str, bool]]:
    """(collection, compare payloads) for the library: the raw space's, and the active projection's if any.
    The raw collection's payloads stand still while a projection is active (refreshed on switching back)."""
    active = active_space(session)
    if active is None:
        return []
    if not active.is_projection:
        return [(active.name, True)]
    return [(raw_space_of(session, active).name, False), (active.name, True)]


def diagnose(library: Library, vectors: VectorStore, *, repair: bool = False, requeue: bool = True) -> DoctorReport:
    """Compare every collection with SQL and check the cluster and decision invariants; `repair`: fix the
    drift found; `requeue`: also queue photos whose faces lost their raw vector (automatic runs do not)."""
    report = DoctorReport()
    with library.db.session() as session:
        collections = _collections(session)
        if not collections:
            return report
        lock_spaces(session, [name for name, _ in collections])  # held to the end: detection waits
        for name, payloads in collections:
            drift = collection_drift(session, vectors, name, payloads=payloads)
            report.drifts.append(drift)
            if repair and not drift.clean:
                report.repairs += _repair(session, vectors, drift, requeue=requeue and name == collections[0][0])
    if repair and requeue and any(d.missing.size for d in report.drifts[1:]):
        report.repairs.append(_reproject(library, vectors))
    report.findings += [cluster_id_problems(library.db), user_label_overrides(library.db)]
    return report


def _repair(session: Session, vectors: VectorStore, drift: CollectionDrift, *, requeue: bool) -> list[str]:
    done = []
    if drift.orphans.size:
        vectors.delete(drift.collection, drift.orphans)
        done.append(f"repaired: deleted {drift.orphans.size} vectors without a face from {drift.collection}")
    if drift.stale.size:
        _, wanted = sql_faces(session)
        ids = drift.stale
        vectors.upsert(drift.collection, ids, vectors.fetch(drift.collection, ids), [wanted[int(i)] for i in ids])
        done.append(f"repaired: rewrote {ids.size} stale payloads in {drift.collection} from SQL")
    if drift.missing.size and requeue:
        done.append(_requeue_photos(session, drift.missing))
    return done


def _requeue_photos(session: Session, face_ids: np.ndarray) -> str:
    """Photos of faces that lost their raw vector go back to detection; photos that are gone cannot."""
    image_ids = set(session.scalars(select(FaceInstance.image_id).where(FaceInstance.id.in_(face_ids.tolist()))).all())
    on_disk = sorted(
        session.scalars(
            select(Image.id).where(Image.id.in_(image_ids), Image.status.in_([ImageStatus.DONE, ImageStatus.PENDING]))
        ).all()
    )
    session.execute(update(Image).where(Image.id.in_(on_disk)).values(status=ImageStatus.PENDING))
    gone = len(image_ids) - len(on_disk)
    line = (
        f"repaired: {counted(face_ids.size, 'faces_without_a_vector')}: {counted(len(on_disk), 'photos')} queued "
        "for detection again (names move to the re-detected faces); run `faces backfill`"
    )
    if gone:
        line += f"; {counted(gone, 'photos')} missing or skipped keep their faces without a vector until they return"
    return line


def _reproject(library: Library, vectors: VectorStore) -> str:
    from face_pipeline.services.space_switch import RegenerateReport, sync_projection  # torch: only when needed

    with library.db.session() as session:
        space = active_space(session)
        assert space is not None and space.is_projection
        raw = raw_space_of(session, space).name
    report = RegenerateReport("doctor")
    sync_projection(library, vectors, space, raw, report)
    return f"repaired: projected {report.projected} faces into {space.name} again"
