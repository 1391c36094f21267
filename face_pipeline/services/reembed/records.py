"""What a move to another face model reports and remembers: the run, its report, the decisions it could not
carry over, and the errors that stop it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from face_pipeline.errors import UserFacingError
from face_pipeline.settings import Settings
from face_pipeline.storage.models import (
    ReembedRun,
)

REEMBED_DIR = "reembed"  # under FACE_DATA_DIR: staged thumbnails and the lists of decisions not carried


class SameModel(UserFacingError):
    """The library is already in the space the requested model produces."""


class MoreToStage(Exception):
    """Photos arrived (or changed) since the last staging pass; the switch rolled back to stage them."""


@dataclass(frozen=True)
class LostDecision:
    """A user's decision on a face that the new model did not find again: it could not be carried over."""

    face_id: int
    image_id: int
    photo: str
    person_name: str | None  # the name the user gave the face
    person_id: str | None
    not_this_person: list[str]  # names the user ruled out for it
    reason: str


@dataclass
class ReembedReport:
    source_space: str = ""
    target_space: str = ""
    photos_staged: int = 0  # by this call
    faces_staged: int = 0
    photos_total: int = 0  # the library's photos with status done
    photos_remaining: int = 0  # still to stage (a run with a limit)
    photos_not_redone: int = 0  # file gone, unreadable, changed: their faces could not be carried over
    faces_old: int = 0
    faces_new: int = 0
    matched: int = 0
    added: int = 0
    removed: int = 0
    automatic_cleared: int = 0  # automatic person or cluster assignments reset to singletons
    decisions_carried: int = 0  # faces with a user decision (a name or a rejection) that kept their row
    not_carried: list[LostDecision] = field(default_factory=list)
    switched: bool = False
    csv_path: str | None = None
    message: str = ""
    seconds: float = 0.0

    @property
    def decisions_not_carried(self) -> int:
        return len(self.not_carried)

    def as_metadata(self) -> dict[str, Any]:
        data = {k: v for k, v in dataclasses.asdict(self).items() if k != "not_carried"}
        data["decisions_not_carried"] = self.decisions_not_carried
        data["seconds"] = round(self.seconds, 2)
        return data


@dataclass(frozen=True)
class Run:
    id: int
    source: str
    target: str
    model: str
    dim: int

    @property
    def staging_collection(self) -> str:
        return f"reembed_staging_{self.id}"

    def staging_dir(self, settings: Settings) -> Path:
        return settings.data_dir / REEMBED_DIR / f"run{self.id}-staging"

    def csv_path(self, settings: Settings) -> Path:
        return settings.data_dir / REEMBED_DIR / f"not-carried-run{self.id}-{self.target}.csv"

    @classmethod
    def of(cls, row: ReembedRun) -> Run:
        return cls(row.id, row.source_space, row.target_space, row.target_model, row.dim)


def report_json(report: ReembedReport) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(report).items() if k not in ("seconds", "message")}


def report_from_json(data: dict[str, Any]) -> ReembedReport:
    names = {f.name for f in dataclasses.fields(ReembedReport)}
    values = {k: v for k, v in data.items() if k in names}
    values["not_carried"] = [LostDecision(**d) for d in data.get("not_carried", [])]
    return ReembedReport(**values)
