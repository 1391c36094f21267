"""/api/v1/photos: a whole photo, for the page to draw face boxes over."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from face_pipeline.api.deps import DatabaseDep, SettingsDep
from face_pipeline.api.errors import NOT_FOUND, Responses
from face_pipeline.services import browse

router = APIRouter(prefix="/photos", tags=["photos"])

JPEG: Responses = {200: {"content": {"image/jpeg": {}}, "description": "The photo, at most 1280 pixels a side."}}
PHOTO_CACHE = "private, max-age=3600"  # a photo can be edited in place; an hour is enough for a session


@router.get("/{image_id}", response_class=Response, responses=JPEG | NOT_FOUND)
def get_photo(
    db: DatabaseDep,
    settings: SettingsDep,
    image_id: Annotated[int, Path(ge=1, le=browse.MAX_FACE_ID, description="A photo id (a face's image_id).")],
) -> Response:
    """The photo with EXIF orientation applied, scaled down; a face's `bbox` over `photo_width` x
    `photo_height` gives its box."""
    return Response(
        browse.photo_jpeg(settings, db, image_id), media_type="image/jpeg", headers={"Cache-Control": PHOTO_CACHE}
    )
