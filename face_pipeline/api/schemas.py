"""Request and response bodies: a family per entity (Create / Update / Public), plus error bodies.

Request bodies refuse unknown fields (a typo such as {"nmae": ...} is a 422, not a silently ignored key)
and validate names with the labelling service's own rule, so the HTTP and CLI front ends agree.
Responses never carry file paths: faces point to their photo by image id and to their thumbnail by URL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict, StringConstraints, model_validator

from face_pipeline.domain.naming import PERSON_PREFIX, PERSON_REF_PATTERN, person_cluster_id
from face_pipeline.errors import InvalidInput
from face_pipeline.services.browse import (
    MAX_FACE_ID,
    ClusterDetail,
    ClusterSummary,
    ClusterType,
    FaceRecord,
    Page,
    PersonSummary,
    Suggestions,
)
from face_pipeline.services.labels import MAX_NAME_LENGTH, LabelResult, clean_name
from face_pipeline.services.singletons import SingletonPage
from face_pipeline.services.stats import LibraryStats
from face_pipeline.services.suggestions import AcceptResult
from face_pipeline.services.undo import Decision

API_PREFIX = "/api/v1"
PERSON_ID_PATTERN = PERSON_REF_PATTERN  # `<uuid hex>` or `person_<uuid hex>` (domain/naming.py)
MAX_LABEL_FACES = 100_000  # a label request names one cluster; this bounds the body, not real clusters


def _checked_name(value: str) -> str:
    try:
        return clean_name(value)
    except InvalidInput as exc:  # pydantic reports ValueErrors as 422s with the field's location
        raise ValueError(str(exc)) from None


Name = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_NAME_LENGTH),
    AfterValidator(_checked_name),
    Field(description="1-200 printable characters; surrounding spaces are trimmed.", examples=["Alice Johnson"]),
]
PersonId = Annotated[
    str,
    StringConstraints(pattern=PERSON_ID_PATTERN),
    Field(description=f"`<uuid hex>` or `{PERSON_PREFIX}<uuid hex>`."),
]
PersonRef = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_NAME_LENGTH),
    AfterValidator(_checked_name),
    Field(
        description=f"A person id (`<uuid hex>` / `{PERSON_PREFIX}<uuid hex>`) or their exact name, if unique "
        "(409 if not)."
    ),
]
FaceId = Annotated[int, Strict(), Field(ge=1, le=MAX_FACE_ID)]


def thumbnail_url(face_id: int | None) -> str | None:
    return None if face_id is None else f"{API_PREFIX}/faces/{face_id}/thumbnail"


class RequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorPublic(BaseModel):
    detail: str


# --- faces ---------------------------------------------------------------------------------------------


class BBox(BaseModel):
    x: int
    y: int
    w: int
    h: int


class FacePublic(BaseModel):
    face_id: int
    image_id: int
    bbox: BBox
    quality: float | None
    detection_score: float
    person_id: str | None
    cluster_id: str | None
    assignment_source: str | None
    confidence: float | None
    user_confirmed: bool
    ignored: bool = False
    thumbnail_url: str
    photo_url: str = Field(description="The whole photo (at most 1280 px a side); draw `bbox` over it.")
    photo_width: int | None = Field(None, description="The photo's full width, the scale of `bbox`.")
    photo_height: int | None = None

    @classmethod
    def of(cls, face: FaceRecord) -> FacePublic:
        x, y, w, h = face.bbox
        return cls(
            face_id=face.face_id,
            image_id=face.image_id,
            bbox=BBox(x=x, y=y, w=w, h=h),
            quality=face.quality,
            detection_score=face.detection_score,
            person_id=face.person_id,
            cluster_id=face.cluster_id,
            assignment_source=face.assignment_source,
            confidence=face.confidence,
            user_confirmed=face.user_confirmed,
            ignored=face.ignored,
            thumbnail_url=thumbnail_url(face.face_id) or "",
            photo_url=f"{API_PREFIX}/photos/{face.image_id}",
            photo_width=face.photo_width,
            photo_height=face.photo_height,
        )


class FacesPublic(BaseModel):
    items: list[FacePublic]
    total: int
    limit: int
    offset: int

    @classmethod
    def of(cls, page: Page[FaceRecord]) -> FacesPublic:
        return cls(items=[FacePublic.of(f) for f in page.items], total=page.total, limit=page.limit, offset=page.offset)


class FaceAssign(RequestBody):
    """Exactly one of `person_id` (an existing person) or `name` (found or created by name)."""

    person_id: PersonId | None = None
    name: Name | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> FaceAssign:
        if (self.person_id is None) == (self.name is None):
            raise ValueError("give exactly one of person_id or name")
        return self


class FaceReject(RequestBody):
    """The person the face is not; omitted: the person it is assigned to now."""

    person_id: PersonId | None = None


# --- clusters ------------------------------------------------------------------------------------------


class ClusterPublic(BaseModel):
    cluster_id: str
    type: ClusterType
    size: int
    cover_face_id: int | None
    cover_thumbnail_url: str | None
    person_id: str | None
    person_name: str | None

    @classmethod
    def of(cls, cluster: ClusterSummary) -> ClusterPublic:
        return cls(
            cluster_id=cluster.cluster_id,
            type=cluster.type,
            size=cluster.size,
            cover_face_id=cluster.cover_face_id,
            cover_thumbnail_url=thumbnail_url(cluster.cover_face_id),
            person_id=cluster.person_id,
            person_name=cluster.person_name,
        )


class ClustersPublic(BaseModel):
    items: list[ClusterPublic]
    total: int
    limit: int
    offset: int

    @classmethod
    def of(cls, page: Page[ClusterSummary]) -> ClustersPublic:
        return cls(
            items=[ClusterPublic.of(c) for c in page.items], total=page.total, limit=page.limit, offset=page.offset
        )


class ClusterDetailPublic(ClusterPublic):
    faces: FacesPublic

    @classmethod
    def of_detail(cls, detail: ClusterDetail) -> ClusterDetailPublic:
        return cls(**ClusterPublic.of(detail.summary).model_dump(), faces=FacesPublic.of(detail.faces))


class ClusterLabel(RequestBody):
    name: Name
    face_ids: Annotated[list[FaceId], Field(max_length=MAX_LABEL_FACES)] | None = Field(
        None, description="The faces the client showed; if the cluster holds others now, 409 and nothing changes."
    )


class LabelResultPublic(BaseModel):
    person_id: str
    person_name: str
    created_person: bool
    faces_labelled: int
    skipped_confirmed: list[int] = Field(description="Faces a user confirmed as someone else: left alone.")
    skipped_rejected: list[int] = Field(description="Faces a user said are not this person: left alone.")

    @classmethod
    def of(cls, result: LabelResult) -> LabelResultPublic:
        return cls(
            person_id=result.person_id,
            person_name=result.person_name,
            created_person=result.created_person,
            faces_labelled=result.faces_labelled,
            skipped_confirmed=result.skipped_confirmed,
            skipped_rejected=result.skipped_rejected,
        )


# --- persons -------------------------------------------------------------------------------------------


class PersonCreate(RequestBody):
    name: Name


class PersonUpdate(RequestBody):
    name: Name


class PersonMerge(RequestBody):
    into: PersonRef


class PersonPublic(BaseModel):
    person_id: str
    cluster_id: str
    name: str
    face_count: int
    confirmed_count: int
    cover_face_id: int | None
    cover_thumbnail_url: str | None
    created_at: datetime

    @classmethod
    def of(cls, person: PersonSummary) -> PersonPublic:
        return cls(
            person_id=person.person_id,
            cluster_id=person_cluster_id(person.person_id),
            name=person.name,
            face_count=person.face_count,
            confirmed_count=person.confirmed_count,
            cover_face_id=person.cover_face_id,
            cover_thumbnail_url=thumbnail_url(person.cover_face_id),
            created_at=_aware(person.created_at),
        )


def _aware(moment: datetime) -> datetime:
    # Stored in UTC; SQLite hands it back without a zone, and RFC 3339 date-times need one.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class PersonsPublic(BaseModel):
    items: list[PersonPublic]
    total: int
    limit: int
    offset: int

    @classmethod
    def of(cls, page: Page[PersonSummary]) -> PersonsPublic:
        return cls(
            items=[PersonPublic.of(p) for p in page.items], total=page.total, limit=page.limit, offset=page.offset
        )


class MergePublic(BaseModel):
    person: PersonPublic = Field(description="The person the faces now belong to.")
    faces_moved: int


class SuggestionPublic(BaseModel):
    face: FacePublic
    score: float = Field(description="Cosine similarity to the person's closest prototype or face.")


class SuggestionsPublic(BaseModel):
    person_id: str
    person_name: str
    space: str | None
    floor: float | None = Field(description="The space's threshold: nothing scoring under it is offered.")
    min_score: float | None = Field(description="The cut applied: max(floor, the min_score asked for).")
    total: int = Field(description="Faces at or above the cut (those searched, in a very large library).")
    limit: int
    offset: int
    items: list[SuggestionPublic]

    @classmethod
    def of(cls, suggestions: Suggestions, floor: float | None, limit: int, offset: int) -> SuggestionsPublic:
        return cls(
            person_id=suggestions.person_id,
            person_name=suggestions.person_name,
            space=suggestions.space,
            floor=floor,
            min_score=suggestions.min_score,
            total=suggestions.total,
            limit=limit,
            offset=offset,
            items=[SuggestionPublic(face=FacePublic.of(s.face), score=s.score) for s in suggestions.items],
        )


FaceIds = Annotated[list[FaceId], Field(min_length=1, max_length=10_000)]


class SuggestionsAccept(RequestBody):
    """Yes to the faces shown that score at least `min_score` now."""

    face_ids: Annotated[list[FaceId], Field(min_length=1, max_length=500)]
    min_score: float = Field(ge=-1.0, le=1.0)


class AcceptPublic(BaseModel):
    person_id: str
    person_name: str
    accepted: list[int]
    skipped: list[int] = Field(description="No longer a suggestion at that score: named, ruled out or ignored.")

    @classmethod
    def of(cls, result: AcceptResult) -> AcceptPublic:
        return cls(
            person_id=result.person_id, person_name=result.person_name, accepted=result.accepted, skipped=result.skipped
        )


class PersonSplit(RequestBody):
    """Move these faces of the person to the person called `name` (created when new)."""

    face_ids: FaceIds
    name: Name


class SomeoneElse(RequestBody):
    """The person the face really is: by `person_id` or `name`; neither: just "not this person"."""

    person_id: PersonId | None = None
    name: Name | None = None

    @model_validator(mode="after")
    def _at_most_one(self) -> SomeoneElse:
        if self.person_id is not None and self.name is not None:
            raise ValueError("give person_id or name, not both")
        return self


class ClusterIgnore(RequestBody):
    face_ids: Annotated[list[FaceId], Field(max_length=MAX_LABEL_FACES)] | None = Field(
        None, description="The faces the client showed; if the cluster holds others now, 409 and nothing changes."
    )


class IgnoredPublic(BaseModel):
    faces: list[int] = Field(description="The faces whose mark changed.")


class GuessPublic(BaseModel):
    person_id: str
    person_name: str
    score: float


class SingletonPublic(BaseModel):
    face: FacePublic
    guess: GuessPublic | None = Field(description="The nearest named person at or above the floor; null: new person.")
    best_score: float | None = Field(description="The nearest person's score, even under the floor.")


class SingletonsPublic(BaseModel):
    items: list[SingletonPublic]
    total: int
    limit: int
    offset: int
    floor: float | None
    space: str | None

    @classmethod
    def of(cls, result: SingletonPage) -> SingletonsPublic:
        page = result.page
        return cls(
            items=[
                SingletonPublic(
                    face=FacePublic.of(s.face),
                    guess=None
                    if s.guess is None
                    else GuessPublic(person_id=s.guess.person_id, person_name=s.guess.person_name, score=s.guess.score),
                    best_score=s.best_score,
                )
                for s in page.items
            ],
            total=page.total,
            limit=page.limit,
            offset=page.offset,
            floor=result.floor,
            space=result.space,
        )


# --- decisions -----------------------------------------------------------------------------------------


class DecisionPublic(BaseModel):
    decision_id: int
    kind: str
    summary: str
    faces: int
    created_at: datetime
    undone: bool

    @classmethod
    def of(cls, decision: Decision) -> DecisionPublic:
        return cls(
            decision_id=decision.id,
            kind=decision.kind,
            summary=decision.summary,
            faces=decision.faces,
            created_at=_aware(decision.created_at),
            undone=decision.undone,
        )


class DecisionsPublic(BaseModel):
    items: list[DecisionPublic]


class UndoRequest(RequestBody):
    decision_id: int | None = Field(
        None, ge=1, le=MAX_FACE_ID, description="The decision the page offers to undo; 409 if a newer one exists."
    )


class UndoPublic(BaseModel):
    undone: DecisionPublic
    faces_restored: int


# --- library -------------------------------------------------------------------------------------------


class SkippedPhoto(BaseModel):
    photo: str = Field(description="Path relative to the photos folder (its name, if outside it).")
    reason: str


class StatsPublic(BaseModel):
    photos_by_status: dict[str, int]
    faces: int
    faces_confirmed: int
    people: int
    clusters: dict[str, int]
    faces_by_cluster_type: dict[str, int]
    active_space: str | None
    person_threshold: float | None
    person_margin: float | None
    face_model: dict[str, Any] = Field(
        default_factory=dict, description="The library's face model: model, space, dim, providers, device, licence."
    )
    skipped: list[SkippedPhoto]

    @classmethod
    def of(cls, stats: LibraryStats, photos_dir: Path) -> StatsPublic:
        data: dict[str, Any] = stats.as_dict()
        data.pop("skip_reasons")
        data["face_model"] = {k: v for k, v in stats.face_model.items() if k != "model_source"}  # no server paths
        skipped = [
            SkippedPhoto(photo=_relative(path, photos_dir), reason=reason) for path, reason in stats.skip_reasons
        ]
        return cls(**data, skipped=skipped)


def _relative(path: str, root: Path) -> str:
    # Absolute paths stay on the server: they reveal the machine's layout and help no reviewer.
    try:
        return Path(path).relative_to(root.resolve()).as_posix()
    except ValueError:
        return Path(path).name


class HealthPublic(BaseModel):
    status: str
    database: str
