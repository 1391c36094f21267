"""Crash harness: real `face-pipeline` processes killed with SIGKILL at chosen points (FACE_TEST_CRASH_AT,
face_pipeline/faults.py), then the next command must finish on its own, and afterwards: no photo without its
faces, no face twice, SQL == vectors (payloads included), every user decision as it was, no run left STARTED.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from sqlalchemy import select

from face_pipeline.faults import CRASH_ENV
from face_pipeline.services.labels import label_face, reject_face
from face_pipeline.services.library import Library
from face_pipeline.settings import load_settings
from face_pipeline.storage.models import FaceInstance, FaceRejection, Image, ImageStatus, Person
from face_pipeline_tests.photo_corpus import copy_people

KILLED = -signal.SIGKILL
COMMAND_TIMEOUT_S = 300  # a command that hangs on a dead run fails the test instead of hanging CI


def _env(root: Path, photos: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACE_") and k != "DAGSTER_HOME"}
    env.update(
        FACE_PHOTOS_DIR=str(photos),
        FACE_DATA_DIR=str(root / "data"),
        DAGSTER_HOME=str(root / "dagster_home"),
        FACE_MODEL_DIR=str(root / "no_models"),  # no buffalo_l: the default buffalo_s
        FACE_DETECT_BATCH_SIZE="8",  # several batches, so a kill can land between them
        FACE_WORKERS="1",
    )
    return env


def _cli(env: dict[str, str], *args: str, crash_at: str | None = None) -> subprocess.CompletedProcess[str]:
    run_env = dict(env)
    if crash_at:
        run_env[CRASH_ENV] = crash_at
    return subprocess.run(
        [sys.executable, "-m", "face_pipeline.cli", "faces", *args],
        env=run_env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
    )


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def _killed(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == KILLED, f"expected SIGKILL, got {result.returncode}: {result.stderr[-2000:]}"


def _library(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Library:
    for key in ("FACE_PHOTOS_DIR", "FACE_DATA_DIR", "FACE_MODEL_DIR"):
        monkeypatch.setenv(key, env[key])
    return Library.from_settings(load_settings())


def _faces_by_photo(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, list[tuple[int, ...]]]:
    library = _library(env, monkeypatch)
    with library.db.session() as session:
        rows = session.execute(
            select(Image.path, FaceInstance.bbox_x, FaceInstance.bbox_y, FaceInstance.bbox_w, FaceInstance.bbox_h)
            .join(FaceInstance, FaceInstance.image_id == Image.id)
            .order_by(Image.path)
        ).all()
        statuses = set(session.scalars(select(Image.status)).all())
    library.close()
    assert statuses == {ImageStatus.DONE}, statuses
    found: dict[str, list[tuple[int, ...]]] = {}
    for path, *box in rows:
        found.setdefault(Path(path).name, []).append(tuple(box))
    return {name: sorted(boxes) for name, boxes in found.items()}


def _decisions(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    library = _library(env, monkeypatch)
    with library.db.session() as session:
        confirmed = session.execute(
            select(FaceInstance.id, Person.name)
            .join(Person, Person.id == FaceInstance.person_id)
            .where(FaceInstance.user_confirmed.is_(True))
        ).all()
        rejected = session.execute(select(FaceRejection.face_id, FaceRejection.person_id)).all()
    library.close()
    return {"confirmed": sorted(map(tuple, confirmed)), "rejected": sorted(map(tuple, rejected))}


def _no_run_left_running(env: dict[str, str]) -> None:
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        running = instance.get_runs(
            filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING])
        )
        claimed = instance.event_log_storage.get_concurrency_run_ids()
    assert not running and not claimed, (running, claimed)


def label_five_people(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Name 5 faces of each of the first 5 people (by folder) and rule one face of the 6th out for the first."""
    library = _library(env, monkeypatch)
    with library.db.session() as session:
        faces = session.execute(
            select(FaceInstance.id, Image.path).join(Image, Image.id == FaceInstance.image_id).order_by(FaceInstance.id)
        ).all()
    by_person: dict[str, list[int]] = {}
    for face_id, path in faces:
        by_person.setdefault(Path(path).parent.name, []).append(face_id)
    people = sorted(by_person)
    for person in people[:5]:
        for face_id in by_person[person][:5]:
            label_face(library, face_id, person.replace("_", " "))
    reject_face(library, by_person[people[5]][0], people[0].replace("_", " "))
    library.close()


@pytest.fixture
def photos(tmp_path: Path, lfw_mini: Path) -> Path:
    folder = tmp_path / "photos"
    copy_people(lfw_mini, folder, people=6, photos_each=6)
    return folder


@pytest.mark.slow
def test_backfill_killed_between_vector_write_and_commit_and_after_a_batch_then_finishes(
    tmp_path: Path, photos: Path, monkeypatch: pytest.MonkeyPatch
):
    reference = _env(tmp_path / "reference", photos)
    _ok(_cli(reference, "backfill"))
    expected = _faces_by_photo(reference, monkeypatch)

    env = _env(tmp_path / "crashed", photos)
    _killed(_cli(env, "backfill", crash_at="detect_before_commit:2"))  # second batch: vectors written, no commit
    second = _cli(env, "backfill", crash_at="detect_batch_committed:2")
    _killed(second)
    assert "which is gone: marked failed and its pool slots freed" in second.stderr
    finished = _ok(_cli(env, "backfill"))
    assert "which is gone" in finished

    assert _faces_by_photo(env, monkeypatch) == expected  # no photo without its faces, no face twice
    doctor = _cli(env, "doctor")
    if doctor.returncode != 0:  # orphan vectors of the uncommitted batch: the daily run's first step heals them
        assert "without a face" in doctor.stdout, doctor.stdout
    _ok(_cli(env, "cluster-dual"))
    assert "in step" in _ok(_cli(env, "doctor"))
    _no_run_left_running(env)


@pytest.mark.slow
def test_cluster_dual_reassign_and_training_killed_keep_every_decision(
    tmp_path: Path, photos: Path, monkeypatch: pytest.MonkeyPatch
):
    env = _env(tmp_path, photos)
    _ok(_cli(env, "backfill"))
    label_five_people(env, monkeypatch)
    before = _decisions(env, monkeypatch)
    assert len(before["confirmed"]) == 25 and len(before["rejected"]) == 1  # type: ignore[arg-type]

    _killed(_cli(env, "cluster-dual", crash_at="cluster_before_payloads"))
    _killed(_cli(env, "reassign", crash_at="assign_before_payloads"))
    _killed(_cli(env, "train-matching", "--epochs", "2", crash_at="train_checkpoint_saved"))
    retrained = _ok(_cli(env, "train-matching", "--epochs", "2"))
    assert "which is gone" in retrained and "promote" in retrained
    _ok(_cli(env, "cluster-dual"))

    assert _decisions(env, monkeypatch) == before
    assert "in step" in _ok(_cli(env, "doctor"))
    _no_run_left_running(env)
