"""Partitioned detection with a Qdrant server (FACE_QDRANT_URL, issue 16): the partition steps write their
vectors to the server themselves; nothing goes through the `staged_vectors` table, and every face has exactly
one vector, also after the job runs again.

A Qdrant server cannot run here (no server binary in the registries this machine reaches), so qdrant-client's
local mode on disk (FACE_QDRANT_URL=path:DIR) stands in for it: the same client and calls as against a server,
in one process. The steps run through the Celery-mode Definitions (FACE_EXECUTOR=celery builds the partitioned
graph) with Dagster's in-process execution; the Celery path itself is test_celery_scaleout.py's.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from sqlalchemy import select

from face_pipeline.definitions import defs as definitions
from face_pipeline.defs.jobs import INGEST
from face_pipeline.services.vector_staging import StagedVectorStore, staged_count
from face_pipeline.settings import load_settings
from face_pipeline.storage.db import Database
from face_pipeline.storage.models import FaceInstance, Image, ImageStatus
from face_pipeline.storage.vectors import open_vector_store
from face_pipeline_tests.photo_corpus import copy_people

SPACE = "insightface_buffalo_s"


def test_partition_steps_write_to_a_qdrant_server_directly(
    tmp_path: Path, lfw_mini: Path, monkeypatch: pytest.MonkeyPatch
):
    copy_people(lfw_mini, tmp_path / "photos", people=2, photos_each=3)  # 2 folders: 2 partitions
    qdrant_url = f"path:{tmp_path / 'qdrant'}"
    for key, value in {
        "FACE_PHOTOS_DIR": str(tmp_path / "photos"),
        "FACE_DATA_DIR": str(tmp_path / "data"),
        "FACE_MODEL_DIR": str(tmp_path / "no-buffalo_l"),  # auto picks buffalo_s
        "FACE_EMBEDDER": "auto",
        "FACE_EXECUTOR": "celery",
        "FACE_QDRANT_URL": qdrant_url,
        "FACE_PARTITION_SIZE": "3",
    }.items():
        monkeypatch.setenv(key, value)

    staged_writes: list[int] = []

    def staged_upsert(self: StagedVectorStore, name: str, face_ids, vectors, payloads) -> None:  # type: ignore[no-untyped-def]
        staged_writes.append(len(face_ids))  # a spy: with a server, staging must not be used at all

    monkeypatch.setattr(StagedVectorStore, "upsert", staged_upsert)

    job = definitions().resolve_job_def(INGEST)
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        first = job.execute_in_process(instance=instance)
        assert first.success
        detect_steps = {
            e.step_key for e in first.all_events if e.is_step_success and "detect_partition[" in (e.step_key or "")
        }
        assert len(detect_steps) == 2, detect_steps  # one step per folder partition
        assert job.execute_in_process(instance=instance).success  # the job again: nothing pending, no writes

    settings = load_settings()
    db = Database(settings.resolved_database_url)
    with db.session() as session:
        assert session.scalar(select(Image.id).where(Image.status != ImageStatus.DONE)) is None
        face_ids = sorted(session.scalars(select(FaceInstance.id)))
    assert len(face_ids) >= 6  # a face in each of the 6 photos
    assert staged_writes == [] and staged_count(db) == 0
    store = open_vector_store(qdrant_url, settings.vectors_dir)
    try:
        ids, vectors = store.fetch_all(SPACE)
    finally:
        store.close()
    assert sorted(ids.tolist()) == face_ids  # exactly one vector per face, written by the partition steps
    assert vectors.shape == (len(face_ids), 512)
    assert not settings.vectors_dir.exists()  # the embedded store was never opened
    db.dispose()
