"""Scale-out on Celery (issue 16), against real services: RabbitMQ (FACE_CELERY_BROKER), PostgreSQL (the faces
and Dagster's run storage, throwaway databases) and two Celery worker processes started here with the
documented command. The daily job with FACE_EXECUTOR=celery gives the same faces, groups and export as the
in-process run; a worker SIGKILLed in the middle of a detection partition leaves no photo without its faces
and no face twice, and the vector store holds exactly one vector per face.

Skipped only when no broker answers (CI starts RabbitMQ in .ci/run).
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from sqlalchemy import func, select

from face_pipeline.definitions import defs as definitions
from face_pipeline.defs.celery_executor import daily_job, retrain_job
from face_pipeline.defs.jobs import DAILY
from face_pipeline.defs.runner import dagster_home
from face_pipeline.services.export import faces_frame
from face_pipeline.services.vector_staging import staged_count
from face_pipeline.settings import load_settings
from face_pipeline.storage.db import Database
from face_pipeline.storage.models import FaceInstance, Image, ImageStatus
from face_pipeline.storage.scaleout_models import PhotoPartitionMember, StagedVector
from face_pipeline.storage.vectors import open_vector_store
from face_pipeline_tests.celery_workers import Worker, broker_problem, start_worker, wait_ready
from face_pipeline_tests.conftest import throwaway_database
from face_pipeline_tests.photo_corpus import copy_people

BROKER = "amqp://guest:guest@127.0.0.1:5672//"
SPACE = "insightface_buffalo_s"


@dataclass
class Cluster:
    """A library on PostgreSQL, Dagster's run storage on PostgreSQL, and two workers serving its queue."""

    root: Path
    env: dict[str, str]
    workers: list[Worker]

    @property
    def photos(self) -> Path:
        return Path(self.env["FACE_PHOTOS_DIR"])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, postgres_server: str) -> Iterator[Cluster]:
    broker = BROKER
    if problem := broker_problem(broker):
        pytest.skip(f"no RabbitMQ broker at {broker} ({problem}); .ci/run starts it")
    root = tmp_path_factory.mktemp("scaleout")
    queue = f"face_pipeline_test_{uuid.uuid4().hex[:10]}"  # other sessions may share this broker
    with (
        throwaway_database(postgres_server, "fp_celery_faces") as faces_url,
        throwaway_database(postgres_server, "fp_celery_dagster") as dagster_url,
        pytest.MonkeyPatch.context() as patch,
    ):
        env = {
            "FACE_PHOTOS_DIR": str(root / "photos"),
            "FACE_DATA_DIR": str(root / "data"),
            "FACE_DATABASE_URL": faces_url,
            "FACE_MODEL_DIR": str(root / "no-buffalo_l"),  # auto picks buffalo_s
            "FACE_EMBEDDER": "auto",
            "FACE_EXECUTOR": "celery",
            "FACE_CELERY_BROKER": broker,
            "FACE_CELERY_QUEUE": queue,
            "FACE_PARTITION_SIZE": "6",
            "FACE_DETECT_BATCH_SIZE": "1",  # a commit per photo: a kill lands between photos of a partition
            "FACE_WORKERS": "1",
            "DAGSTER_PG_URL": dagster_url,
            "DAGSTER_HOME": str(root / "dagster_home"),
        }
        for key, value in env.items():
            patch.setenv(key, value)
        dagster_home(load_settings())  # installs dagster-postgres.yaml there
        import os

        workers = [start_worker(f"w{n}_{queue}", queue, os.environ, root / f"w{n}.log") for n in (1, 2)]
        try:
            wait_ready(workers)
            yield Cluster(root, env, workers)
        finally:
            for worker in workers:
                worker.stop()


def run_daily_on_celery(on_started: Any = None) -> dg.DagsterRun:
    """The daily job as the daemon would start it (reconstructable: workers rebuild it), from this process.
    `on_started(instance, run_id)` runs beside it while it runs."""
    results: list[Any] = []
    with dg.DagsterInstance.get() as instance:
        before = {run.run_id for run in instance.get_runs()}
        thread = threading.Thread(
            target=lambda: results.append(
                dg.execute_job(dg.reconstructable(daily_job), instance=instance, raise_on_error=False)
            )
        )
        thread.start()
        if on_started is not None:
            run_id = None
            while run_id is None and thread.is_alive():
                run_id = next((r.run_id for r in instance.get_runs(limit=3) if r.run_id not in before), None)
                time.sleep(0.05)
            if run_id is not None:
                on_started(instance, run_id)
        thread.join(300)
        assert not thread.is_alive(), "the celery run did not finish in 300 s"
        run = instance.get_run_by_id(results[0].run_id)
        assert run is not None
        return run


def face_keys(db: Database) -> dict[int, tuple[Any, ...]]:
    """face id -> (photo path, box): what identifies a face across two libraries."""
    return {int(row.face_id): (row.image_path, *row.bbox) for row in faces_frame(db).itertuples()}


def library_outcome(db: Database) -> tuple[dict[Any, tuple[Any, ...]], set[frozenset[Any]]]:
    """Every face by (photo, box) with its export row minus ids, and the groups as sets of faces."""
    frame = faces_frame(db)
    keys = face_keys(db)
    rows = {}
    groups: dict[str, set[Any]] = {}
    for row in frame.itertuples():
        key = keys[int(row.face_id)]
        confidence = None if row.confidence is None or row.confidence != row.confidence else round(row.confidence, 4)
        rows[key] = (row.person_name, row.assignment_source, confidence, str(row.cluster_id).split("_")[0])
        groups.setdefault(str(row.cluster_id), set()).add(key)
    return rows, {frozenset(group) for group in groups.values()}


def test_daily_job_on_two_celery_workers_matches_the_in_process_run(
    cluster: Cluster, tmp_path: Path, lfw_mini: Path, monkeypatch: pytest.MonkeyPatch
):
    copy_people(lfw_mini, cluster.photos, people=3, photos_each=3)  # 3 folders of 3 photos: 3 partitions
    run = run_daily_on_celery()
    assert run.status == dg.DagsterRunStatus.SUCCESS
    with dg.DagsterInstance.get() as instance:
        records = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)
        ran_on = {
            e.dagster_event.step_key: e.dagster_event.event_specific_data.metadata["Celery worker"].value  # type: ignore[union-attr]
            for e in records
            if e.dagster_event is not None and "in celery worker" in (e.dagster_event.message or "")
        }
    detect_steps = {key: worker for key, worker in ran_on.items() if "detect_partition[" in key}
    assert len(detect_steps) == 3, ran_on  # one step per partition
    assert len(set(ran_on.values())) == 2, ran_on  # both workers took steps

    celery_db = Database(cluster.env["FACE_DATABASE_URL"])
    with celery_db.session() as session:
        assert session.scalar(select(func.count()).where(Image.status != ImageStatus.DONE)) == 0
    assert staged_count(celery_db) == 0  # everything moved into the store
    celery_outcome = library_outcome(celery_db)

    # The same photos through the in-process executor, SQLite, its own data folder.
    monkeypatch.setenv("FACE_EXECUTOR", "in_process")
    monkeypatch.setenv("FACE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("FACE_DATABASE_URL", f"sqlite:///{tmp_path / 'faces.db'}")
    monkeypatch.delenv("DAGSTER_PG_URL")
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        assert definitions().resolve_job_def(DAILY).execute_in_process(instance=instance).success
    local_db = Database(f"sqlite:///{tmp_path / 'faces.db'}")
    rows, groups = library_outcome(local_db)
    assert len(rows) >= 9
    assert celery_outcome[0] == rows  # same faces, boxes, names, sources, confidences
    assert celery_outcome[1] == groups  # same groups
    local_db.dispose()
    celery_db.dispose()


def test_a_worker_killed_mid_detection_loses_and_duplicates_nothing(cluster: Cluster, lfw_mini: Path):
    # 2 folders of 6 photos of people the first test did not use (the same file twice is a duplicate): 2 partitions
    people = sorted(p for p in lfw_mini.iterdir() if len(list(p.glob("*.jpg"))) >= 6)[3:5]
    for person in people:
        (cluster.photos / "arrivals" / person.name).mkdir(parents=True)
        for photo in sorted(person.glob("*.jpg"))[:6]:
            shutil.copy(photo, cluster.photos / "arrivals" / person.name / photo.name)
    db = Database(cluster.env["FACE_DATABASE_URL"])
    killed: dict[str, Any] = {}

    def kill_mid_partition(instance: dg.DagsterInstance, run_id: str) -> None:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not killed:
            for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
                event = record.dagster_event
                if event is None or "detect_partition[" not in (event.step_key or ""):
                    continue
                if "in celery worker" not in (event.message or ""):
                    continue
                partition = event.step_key.split("[")[1].rstrip("]")  # type: ignore[union-attr]
                done = partition_done(db, partition)
                if done >= 1:
                    worker = event.event_specific_data.metadata["Celery worker"].value  # type: ignore[union-attr]
                    victim = next(w for w in cluster.workers if worker.startswith(w.name + "@"))
                    victim.kill()
                    killed.update(partition=partition, done_at_kill=done, worker=victim.name)
                    return
            time.sleep(0.02)

    run = run_daily_on_celery(on_started=kill_mid_partition)
    assert killed, "no detection step was caught mid-partition"
    assert killed["done_at_kill"] < 6, killed  # the partition was not finished when its worker died
    assert run.status == dg.DagsterRunStatus.SUCCESS, killed
    with dg.DagsterInstance.get() as instance:  # the killed step ran again, on the other worker
        takers = [
            e.dagster_event.event_specific_data.metadata["Celery worker"].value  # type: ignore[union-attr]
            for e in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)
            if e.dagster_event is not None
            and e.dagster_event.step_key == f"detected_faces.detect_partition[{killed['partition']}]"
            and "in celery worker" in (e.dagster_event.message or "")
        ]
    assert len(takers) == 2 and not takers[-1].startswith(killed["worker"] + "@"), (takers, killed)

    with db.session() as session:
        not_done = session.scalars(select(Image.path).where(Image.status != ImageStatus.DONE)).all()
        per_photo = session.execute(
            select(Image.path, Image.face_count, func.count(FaceInstance.id))
            .outerjoin(FaceInstance, FaceInstance.image_id == Image.id)
            .group_by(Image.id)
        ).all()
        boxes = session.execute(
            select(FaceInstance.image_id, FaceInstance.bbox_x, FaceInstance.bbox_y, FaceInstance.bbox_w)
        ).all()
        face_ids = set(session.scalars(select(FaceInstance.id)))
    assert not_done == []
    assert all(count >= 1 and count == stored for _, stored, count in per_photo), per_photo  # no photo without
    assert len(boxes) == len(set(boxes))  # and no face twice
    with db.session() as session:  # left staged: only the killed batch's, never committed (dropped later)
        staged = set(session.scalars(select(StagedVector.face_id)))
    assert not staged & face_ids and len(staged) <= 4, staged
    settings = load_settings()
    store = open_vector_store(None, settings.vectors_dir)
    try:
        ids, _ = store.fetch_all(SPACE)
    finally:
        store.close()
    assert sorted(ids.tolist()) == sorted(face_ids)  # exactly one vector per face, no orphan point
    db.dispose()


def test_the_training_step_goes_to_the_gpu_queue_when_one_is_set(cluster: Cluster, monkeypatch: pytest.MonkeyPatch):
    """FACE_CELERY_GPU_QUEUE: the training step is sent to that queue, and only its worker (here a third one,
    started with `-Q <gpu queue>` as on a GPU machine) takes it. This library has too few labels to train, so
    the step ends with the one-line "not enough labels" failure: what is tested is where it ran."""
    import os

    gpu_queue = f"{cluster.env['FACE_CELERY_QUEUE']}_gpu"
    monkeypatch.setenv("FACE_CELERY_GPU_QUEUE", gpu_queue)
    gpu_worker = start_worker(f"gpu_{gpu_queue}", gpu_queue, os.environ, cluster.root / "gpu.log")
    try:
        wait_ready([gpu_worker])
        with dg.DagsterInstance.get() as instance:
            result = dg.execute_job(
                dg.reconstructable(retrain_job),
                instance=instance,
                raise_on_error=False,
                asset_selection=[dg.AssetKey("trained_projection_checkpoint")],
            )
            records = instance.all_logs(result.run_id)
    finally:
        gpu_worker.stop()
    events = [r.dagster_event for r in records if r.dagster_event is not None]
    taken_by = [
        e.event_specific_data.metadata["Celery worker"].value  # type: ignore[union-attr]
        for e in events
        if e.step_key == "trained_projection_checkpoint" and "in celery worker" in (e.message or "")
    ]
    assert len(taken_by) == 1 and taken_by[0].startswith(gpu_worker.name + "@"), taken_by
    routed = [r.user_message for r in records if "FACE_CELERY_GPU_QUEUE" in (r.user_message or "")]
    assert routed and gpu_queue in routed[0], routed
    failures = [e for e in events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert len(failures) == 1 and "not enough labels to train" in str(failures[0].event_specific_data), failures


def partition_done(db: Database, partition: str) -> int:
    with db.session() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(Image)
                .join(PhotoPartitionMember, PhotoPartitionMember.image_id == Image.id)
                .where(PhotoPartitionMember.partition_key == partition, Image.status == ImageStatus.DONE)
            )
            or 0
        )


def _restart_broker() -> None:
    """RabbitMQ's application stopped and started again: every connection to it drops, queues survive."""
    subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True, timeout=60)
    time.sleep(2)
    subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True, timeout=60)


def test_a_broker_restart_mid_run_fails_clearly_or_resumes_and_never_half_writes(cluster: Cluster, lfw_mini: Path):
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is not installed here: the broker cannot be restarted by the test")
    people = sorted(p for p in lfw_mini.iterdir() if len(list(p.glob("*.jpg"))) >= 6)[5:7]
    for person in people:
        (cluster.photos / "late" / person.name).mkdir(parents=True)
        for photo in sorted(person.glob("*.jpg"))[:4]:
            shutil.copy(photo, cluster.photos / "late" / person.name / photo.name)
    db = Database(cluster.env["FACE_DATABASE_URL"])
    restarted: list[str] = []

    def restart_mid_detection(instance: dg.DagsterInstance, run_id: str) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
                event = record.dagster_event
                started = event is not None and "in celery worker" in (event.message or "")
                if started and event is not None and "detect_partition[" in (event.step_key or ""):
                    _restart_broker()
                    restarted.append(str(event.step_key))
                    return
            time.sleep(0.05)

    run = run_daily_on_celery(on_started=restart_mid_detection)
    assert restarted, "no detection step started"
    if run.status != dg.DagsterRunStatus.SUCCESS:  # failed clearly: the next run finishes the work
        rerun = run_daily_on_celery()
        assert rerun.status == dg.DagsterRunStatus.SUCCESS
    with db.session() as session:
        assert session.scalar(select(func.count()).where(Image.status != ImageStatus.DONE)) == 0
        boxes = session.execute(
            select(FaceInstance.image_id, FaceInstance.bbox_x, FaceInstance.bbox_y, FaceInstance.bbox_w)
        ).all()
        face_ids = set(session.scalars(select(FaceInstance.id)))
    assert len(boxes) == len(set(boxes))
    store = open_vector_store(None, load_settings().vectors_dir)
    try:
        ids, _ = store.fetch_all(SPACE)
    finally:
        store.close()
    assert sorted(ids.tolist()) == sorted(face_ids)
    db.dispose()
