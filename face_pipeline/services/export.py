"""Export every face with its person and cluster, as CSV or Parquet (pandas)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import pandas as pd
from sqlalchemy import select

from face_pipeline.storage.db import Database
from face_pipeline.storage.models import FaceInstance, Image, Person

COLUMNS = ["face_id", "image_path", "bbox", "person_name", "cluster_id", "assignment_source", "confidence"]


def faces_frame(db: Database) -> pd.DataFrame:
    query = (
        select(
            FaceInstance.id.label("face_id"),
            Image.path.label("image_path"),
            FaceInstance.bbox_x,
            FaceInstance.bbox_y,
            FaceInstance.bbox_w,
            FaceInstance.bbox_h,
            Person.name.label("person_name"),
            FaceInstance.cluster_id,
            FaceInstance.assignment_source,
            FaceInstance.user_confirmed,
            FaceInstance.confidence,
        )
        .join(Image, Image.id == FaceInstance.image_id)
        .outerjoin(Person, Person.id == FaceInstance.person_id)
        .order_by(FaceInstance.id)
    )
    with db.session() as session:
        frame = pd.DataFrame(session.execute(query).all())
    if frame.empty:
        return pd.DataFrame(columns=COLUMNS)
    frame["bbox"] = frame[["bbox_x", "bbox_y", "bbox_w", "bbox_h"]].values.tolist()
    frame["person_name"] = frame["person_name"].fillna("")
    frame["assignment_source"] = frame["assignment_source"].where(~frame["user_confirmed"], "user").fillna("noise")
    frame["image_path"] = frame["image_path"].map(lambda p: str(Path(p).resolve()))
    return frame[COLUMNS]


def export_faces(db: Database, fmt: Literal["csv", "parquet"], output: Path) -> int:
    frame = faces_frame(db)
    output.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        frame.assign(bbox=frame["bbox"].map(json.dumps)).to_csv(output, index=False)
    else:
        frame.to_parquet(output, index=False)
    return len(frame)
