"""Bootstrap names from an organised collection: a folder per person names the faces found in it.

Photos are matched to the library by content hash, so the tree may be the photos folder itself or a
copy elsewhere. A photo with one face names that face; with several, only a clearly dominant face (at
least twice the area of the next) is named, since the others are usually other people.

An import names faces as a group (services/labels.py `name_faces`): it never overturns a decision the user
made about one face, so faces confirmed as someone else or ruled out for that person are left alone (and
counted). Importing the same tree again is therefore harmless after a review.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from face_pipeline.errors import InvalidInput
from face_pipeline.services.catalog import hash_files
from face_pipeline.services.labels import clean_name, name_faces, person_by_name, user_edit
from face_pipeline.services.library import Library
from face_pipeline.services.library_walk import iter_photos
from face_pipeline.storage.models import FaceInstance, Image

DOMINANCE = 2.0  # a face must have this many times the area of the next to be the photo's subject


@dataclass
class ImportReport:
    people: int = 0
    people_created: int = 0
    faces_labelled: int = 0
    photos_seen: int = 0
    not_in_library: int = 0
    no_face: int = 0
    ambiguous: int = 0
    already_confirmed: int = 0  # confirmed as someone else: left alone
    rejected: int = 0  # the user ruled the face out for this person: left alone
    examples: dict[str, list[str]] = field(default_factory=dict)


def import_labels(library: Library, tree: Path) -> ImportReport:
    if not tree.is_dir():
        raise InvalidInput(f"not a folder: {tree}")
    report = ImportReport()
    by_person: dict[str, list[str]] = defaultdict(list)
    for stat in iter_photos(tree.resolve()):
        relative = Path(stat.path).relative_to(tree.resolve())
        if len(relative.parts) >= 2:  # <person>/<photo> (deeper folders belong to the top one)
            by_person[relative.parts[0]].append(stat.path)
    if not by_person:
        raise InvalidInput(f"no person folders with photos under {tree} (expected <person>/<photo>.jpg)")
    hashes = hash_files([p for paths in by_person.values() for p in paths])
    with user_edit(library) as session:
        for folder, paths in sorted(by_person.items()):
            name = clean_name(folder.replace("_", " "))
            faces = [_subject_face(session, hashes[p], p, report) for p in paths]
            chosen = [f for f in faces if f is not None]
            report.photos_seen += len(paths)
            if not chosen:
                continue
            person, created = person_by_name(session, name)
            report.people += 1
            report.people_created += created
            naming = name_faces(
                session, chosen, person.id, explicit=False, action="import_labels", details={"folder": folder}
            )
            report.already_confirmed += len(naming.skipped_confirmed)
            report.rejected += len(naming.skipped_rejected)
            report.faces_labelled += len(naming.named)
    return report


def _subject_face(session: Session, digest: str | None, path: str, report: ImportReport) -> FaceInstance | None:
    image_id = (
        session.scalar(select(Image.id).where(Image.content_hash == digest).order_by(Image.id)) if digest else None
    )
    if image_id is None:
        report.not_in_library += 1
        report.examples.setdefault("not_in_library", []).append(path)
        return None
    faces = session.scalars(select(FaceInstance).where(FaceInstance.image_id == image_id)).all()
    if not faces:
        report.no_face += 1
        return None
    faces = sorted(faces, key=lambda f: f.bbox_w * f.bbox_h, reverse=True)
    if len(faces) > 1 and faces[0].bbox_w * faces[0].bbox_h < DOMINANCE * faces[1].bbox_w * faces[1].bbox_h:
        report.ambiguous += 1
        report.examples.setdefault("ambiguous", []).append(path)
        return None
    return faces[0]
