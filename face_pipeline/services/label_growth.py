"""How many labels users gave, and whether they grew enough since the last training to train again.

Read by the `face_labels` observation (its data version); `retrain_decision` is the one rule the
label-growth sensor and the monthly retrain schedule both apply (each with its own thresholds): growth is
measured from the last promoted checkpoint, the last checkpoint trained at all (a rejected one too: its
labels were tried) and the last request, whichever saw the most labels. A "label"
is a face a user confirmed as a person; rejections ("not this person") are
counted beside them but do not make a retrain worth it on their own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from sqlalchemy import select

from face_pipeline.services.space_registry import PromotedCheckpoint, last_promoted_checkpoint, latest_checkpoint
from face_pipeline.settings import Settings
from face_pipeline.storage.db import Database
from face_pipeline.storage.models import FaceInstance, FaceRejection


@cache
def training_minimum() -> tuple[int, int]:
    """(people, labelled faces per person) training needs (5 x 5), as training itself enforces it. Read from
    TrainingParams on first use: its module imports torch, which the daemon's sensors and the CLI's
    pipeline commands need not load to count labels."""
    from face_pipeline.domain.projection import TrainingParams

    params = TrainingParams()
    return params.min_people, params.min_faces_per_person


def __getattr__(name: str) -> Any:  # MIN_TRAINING_PEOPLE / MIN_FACES_PER_PERSON, read lazily (see above)
    if name == "MIN_TRAINING_PEOPLE":
        return training_minimum()[0]
    if name == "MIN_FACES_PER_PERSON":
        return training_minimum()[1]
    raise AttributeError(name)


@dataclass(frozen=True)
class LabelCounts:
    labelled_faces: int  # user-confirmed faces that name a person
    rejections: int
    people: int  # people with at least one labelled face
    trainable_people: int  # people with at least MIN_FACES_PER_PERSON labelled faces
    fingerprint: str  # changes whenever any (face, person) label or rejection changes

    @property
    def enough_to_train(self) -> bool:
        return self.trainable_people >= training_minimum()[0]

    def shortfall(self) -> str:
        people, faces = training_minimum()
        return (
            f"{self.trainable_people} people have >= {faces} labelled faces; training needs "
            f"{people} ({self.labelled_faces} labelled faces of {self.people} people so far)"
        )


def count_labels(db: Database) -> LabelCounts:
    confirmed = FaceInstance.user_confirmed.is_(True) & FaceInstance.person_id.is_not(None)
    digest = hashlib.sha256()
    per_person: dict[str, int] = {}
    with db.session() as session:
        for face_id, person_id in session.execute(
            select(FaceInstance.id, FaceInstance.person_id).where(confirmed).order_by(FaceInstance.id)
        ):
            digest.update(f"{face_id}:{person_id};".encode())
            per_person[person_id] = per_person.get(person_id, 0) + 1
        digest.update(b"|")
        rejections = 0
        for face_id, person_id in session.execute(
            select(FaceRejection.face_id, FaceRejection.person_id).order_by(
                FaceRejection.face_id, FaceRejection.person_id
            )
        ):
            digest.update(f"{face_id}:{person_id};".encode())
            rejections += 1
    return LabelCounts(
        labelled_faces=sum(per_person.values()),
        rejections=rejections,
        people=len(per_person),
        trainable_people=sum(1 for n in per_person.values() if n >= training_minimum()[1]),
        fingerprint=digest.hexdigest()[:16],
    )


@dataclass(frozen=True)
class RetrainDecision:
    retrain: bool
    reason: str
    label_count: int
    baseline: int  # labels at the last promotion, training or request (0: never trained)


TRAINING_DISABLED = "FACE_TRAINING_ENABLED is false: automatic retraining is off (set it to true to enable)"
SETTINGS_THRESHOLDS = "FACE_RETRAIN_MIN_NEW_LABELS / FACE_RETRAIN_MIN_GROWTH"


def retrain_decision(
    open_db: Callable[[], Database],
    settings: Settings,
    *,
    last_requested: int | None,
    min_new_labels: int,
    min_growth: float,
    thresholds: str = SETTINGS_THRESHOLDS,
) -> RetrainDecision:
    """Retrain now? No while FACE_TRAINING_ENABLED is false (the database is not even opened) or below the
    training minimum; otherwise `decide_retrain` on the current labels against the last promoted checkpoint and the
    last request. `thresholds` says where min_new_labels / min_growth come from, for the reason."""
    if not settings.training_enabled:
        return RetrainDecision(False, TRAINING_DISABLED, 0, 0)
    db = open_db()
    with db.session() as session:
        newest = latest_checkpoint(session)
    return decide_retrain(
        count_labels(db),
        promoted=last_promoted_checkpoint(db),
        last_trained=None if newest is None else PromotedCheckpoint(newest.name, int(newest.label_count or 0)),
        last_requested=last_requested,
        min_new_labels=min_new_labels,
        min_growth=min_growth,
        thresholds=thresholds,
    )


def decide_retrain(
    counts: LabelCounts,
    *,
    promoted: PromotedCheckpoint | None,
    last_requested: int | None,
    min_new_labels: int,
    min_growth: float,
    last_trained: PromotedCheckpoint | None = None,
    thresholds: str = SETTINGS_THRESHOLDS,
) -> RetrainDecision:
    """Retrain when both hold: at least `min_new_labels` new labels and `min_growth` (a fraction) more than
    the baseline. The baseline is the largest label count of the promoted checkpoint, the newest checkpoint
    trained (`last_trained`, promoted or rejected) and the last request, so labels a checkpoint was already
    trained on (or a run was already asked for) never start another retrain."""
    current = counts.labelled_faces
    if not counts.enough_to_train:
        return RetrainDecision(False, "too few labels to train: " + counts.shortfall(), current, 0)
    promoted_count = promoted.label_count if promoted else 0
    trained_count = last_trained.label_count if last_trained else 0
    baseline = max(promoted_count, trained_count, last_requested or 0)
    new = current - baseline
    growth = new / baseline if baseline else float("inf")
    if promoted and promoted_count == baseline:
        since = f"the promoted checkpoint {promoted.space} ({promoted_count} labels)"
    elif last_trained and trained_count == baseline:
        since = f"the last trained checkpoint {last_trained.space} ({trained_count} labels)"
    elif last_requested is not None:
        since = f"the last retrain request ({baseline} labels)"
    else:
        since = "the start"
    enough = new >= max(min_new_labels, 1) and growth >= min_growth
    verdict = "retrain" if enough else "not enough to retrain"
    reason = (
        f"{new} new labels since {since}: {verdict} (needs >= {min_new_labels} new and >= {min_growth:.0%} growth, "
        f"{thresholds})"
    )
    return RetrainDecision(enough, reason, current, baseline)
