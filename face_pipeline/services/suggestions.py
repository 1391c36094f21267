"""Suggestions for a person ("could these be Alice?"): ranked by score, never below the space's floor, and
the decisions on them ("yes", "no", "yes to all of these above X").

The floor is the score automatic assignment needs (FACE_PERSON_MATCH_THRESHOLD, else the active space's own
threshold, `Space.thresholds()`): a face scoring under it is no better a guess than a stranger, so it is not
offered. "Yes" and "no" are the labels service's own assign_face / reject_face, the ones the CLI's
`faces label-face` / `faces reject` call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import select

from face_pipeline.errors import InvalidInput
from face_pipeline.services import browse, labels
from face_pipeline.services.library import Library
from face_pipeline.services.space_registry import active_space
from face_pipeline.services.vector_cache import FaceVectors
from face_pipeline.settings import Settings
from face_pipeline.storage.db import Database
from face_pipeline.storage.models import FaceInstance

MAX_ACCEPT = 500  # "yes to all" acts on the faces a reviewer saw: a page's worth, not the library


def score_floor(settings: Settings, db: Database) -> float | None:
    """The lowest score worth offering: the threshold automatic assignment uses in the active space (the
    setting overrides the space's own, as in clustering.space_params). None when there is no space yet."""
    if settings.person_match_threshold is not None:
        return float(settings.person_match_threshold)
    with db.session() as session:
        space = active_space(session)
    return None if space is None else float(space.thresholds().threshold)


def suggestions_for(
    library: Library,
    person_ref: str,
    *,
    limit: int = 24,
    offset: int = 0,
    min_score: float | None = None,
    cache: FaceVectors | None = None,
) -> tuple[browse.Suggestions, float | None]:
    """A page of the faces that may be this person, best first, all at or above max(floor, min_score);
    returns them and the floor. `cache`: a server's in-memory vectors (browse.suggest_faces)."""
    floor = score_floor(library.settings, library.db)
    cut = floor if min_score is None else max(min_score, floor if floor is not None else -1.0)
    found = browse.suggest_faces(library, person_ref, limit=limit, offset=offset, min_score=cut, cache=cache)
    return found, floor


@dataclass
class AcceptResult:
    person_id: str
    person_name: str
    accepted: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)  # no longer a suggestion at that score (named, ruled out)


def accept_suggestions(
    library: Library,
    person_ref: str,
    face_ids: Sequence[int],
    min_score: float,
    *,
    cache: FaceVectors | None = None,
) -> AcceptResult:
    """ "Yes to all of these above `min_score`": each face the reviewer was shown is scored again now and
    confirmed as the person only if it is still unnamed, not ruled out and scores at least
    max(min_score, floor)."""
    wanted = sorted(set(face_ids))
    if not wanted:
        raise InvalidInput("face_ids is empty: send the faces shown on the page")
    if len(wanted) > MAX_ACCEPT:
        raise InvalidInput(f"{len(wanted)} faces at once; at most {MAX_ACCEPT} can be accepted in one request")
    floor = score_floor(library.settings, library.db)
    shown = min_score - 1e-6  # the page shows scores rounded to 6 places: a face shown at the cut is at it
    cut = shown if floor is None else max(shown, floor)
    now = browse.suggest_faces(library, person_ref, limit=len(wanted), min_score=cut, only=wanted, cache=cache)
    result = AcceptResult(now.person_id, now.person_name)
    still = sorted(s.face.face_id for s in now.items)
    result.skipped = sorted(set(wanted) - set(still))
    with labels.user_edit(library) as session:
        faces = session.execute(
            select(FaceInstance.id, FaceInstance.person_id, FaceInstance.user_confirmed, FaceInstance.cluster_id)
            .where(FaceInstance.id.in_(still), FaceInstance.person_id.is_(None))
            .order_by(FaceInstance.id)
        ).all()
        labels.name_faces(session, faces, now.person_id, explicit=True, action="accept_suggestion")
    result.accepted = [f.id for f in faces]
    result.skipped = sorted(set(wanted) - set(result.accepted))
    return result
