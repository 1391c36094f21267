"""The simulated user of an evaluation: names the largest unknown clusters and rejects the faces in them
that are someone else, through the same label and reject services as the CLI and the API.

It knows who is who (the ground truth) the way a person looking at the faces would; the pipeline learns it
only through these commands.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sqlalchemy import func, select

from face_pipeline.domain.naming import UNKNOWN_PREFIX
from face_pipeline.services.labels import clean_name, label_cluster, reject_face
from face_pipeline.services.library import Library
from face_pipeline.storage.db import Database
from face_pipeline.storage.models import FaceInstance

MIN_FACES_TO_RECOGNISE = 2  # a cluster whose commonest person shows only once has no one to name


@dataclass
class RoundActions:
    clusters_named: int = 0
    new_people: int = 0
    faces_labelled: int = 0
    faces_rejected: int = 0
    clusters_skipped: int = 0  # largest clusters the user could not put a name to


def display_name(identity: str) -> str:
    """The name a user types for a dataset identity ("George_W_Bush" -> "George W Bush")."""
    return identity.replace("_", " ").strip() or identity


def names_for(identities: Iterable[str]) -> dict[str, str]:
    """identity -> the name the user gives it, one person per identity: people are found by name,
    case-insensitively, so two identities whose display names would clash keep their folder names."""
    typed = {i: clean_name(display_name(i)) for i in sorted(identities)}  # as the label service stores it
    clashes = Counter(name.casefold() for name in typed.values())
    return {i: name if clashes[name.casefold()] == 1 else clean_name(i) for i, name in typed.items()}


def name_largest_clusters(
    library: Library, truth_of_face: Mapping[int, str], name_of: Mapping[str, str], how_many: int
) -> RoundActions:
    """Name up to `how_many` unknown clusters, largest first, after their commonest identity.

    truth_of_face: face id -> identity for the faces the user can recognise (each photo's subject); other
    faces in a cluster (background faces) are treated as "not this person". name_of: identity -> name
    (`names_for`). A name already given joins the same person (the label service reuses people by name).
    """
    actions = RoundActions()
    for cluster_id in _unknown_clusters_by_size(library.db):
        if actions.clusters_named >= how_many:
            break
        members = _members(library.db, cluster_id)
        who = Counter(truth_of_face[f] for f in members if f in truth_of_face).most_common(1)
        if not who or who[0][1] < MIN_FACES_TO_RECOGNISE:
            actions.clusters_skipped += 1
            continue
        identity = who[0][0]
        result = label_cluster(library, cluster_id, name_of[identity], expected_face_ids=members)
        actions.clusters_named += 1
        actions.new_people += int(result.created_person)
        skipped = set(result.skipped_rejected) | set(result.skipped_confirmed)
        wrong = [f for f in members if f not in skipped and truth_of_face.get(f) != identity]
        for face_id in wrong:
            reject_face(library, face_id, result.person_id)
        actions.faces_labelled += result.faces_labelled - len(wrong)
        actions.faces_rejected += len(wrong)
    return actions


def _unknown_clusters_by_size(db: Database) -> list[str]:
    size = func.count().label("size")
    with db.session() as session:
        return list(
            session.scalars(
                select(FaceInstance.cluster_id)
                .where(FaceInstance.cluster_id.like(UNKNOWN_PREFIX.replace("_", "\\_") + "%", escape="\\"))
                .group_by(FaceInstance.cluster_id)
                .order_by(size.desc(), FaceInstance.cluster_id)
            )
        )


def _members(db: Database, cluster_id: str) -> list[int]:
    with db.session() as session:
        return list(
            session.scalars(
                select(FaceInstance.id).where(FaceInstance.cluster_id == cluster_id).order_by(FaceInstance.id)
            )
        )
