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
from face_pipeline.services.stats import LibraryStats

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
    thumbnail_url: str

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
            thumbnail_url=thumbnail_url(face.face_id) or "",
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
    items: list[SuggestionPublic]

    @classmethod
    def of(cls, suggestions: Suggestions) -> SuggestionsPublic:
        return cls(
            person_id=suggestions.person_id,
            person_name=suggestions.person_name,
            space=suggestions.space,
            items=[SuggestionPublic(face=FacePublic.of(s.face), score=s.score) for s in suggestions.items],
        )


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
