"""Scale-out on Celery (issue 16): the daily job over N lfw-dev photos on one Celery worker, then on two, and
the same photos through the in-process executor; prints the wall times, the two-worker speed-up and the
Celery path's overhead per step (time from the run sending a step to a worker starting it, and the run's
wall time beyond in-process divided by its steps).

Needs RabbitMQ (FACE_CELERY_BROKER, default amqp://guest:guest@127.0.0.1:5672//) and PostgreSQL
(FACE_TEST_POSTGRES_URL, default postgresql://postgres@127.0.0.1:5432/postgres); makes throwaway databases.

    .venv/bin/python benchmarks/scaleout.py [--photos 1000] [--partition-size 100]

Each worker runs one step at a time with FACE_WORKERS=1 (one detection process): on 2 cores two workers
share the machine with the run's own process, RabbitMQ and PostgreSQL, so expect well under 2x.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from statistics import median
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dagster as dg  # noqa: E402

from benchmarks.common import default_dataset, emit  # noqa: E402
from face_pipeline_tests.celery_workers import broker_problem, start_worker, wait_ready  # noqa: E402
from face_pipeline_tests.conftest import POSTGRES_ADMIN_URL, throwaway_database  # noqa: E402

BENCH = "scaleout"


def copy_photos(source: Path, target: Path, count: int) -> int:
    copied = 0
    for person in sorted(p for p in source.iterdir() if p.is_dir()):
        for photo in sorted(person.glob("*.jpg")):
            if copied >= count:
                return copied
            (target / person.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(photo, target / person.name / photo.name)
            copied += 1
    return copied


def step_latencies(instance: dg.DagsterInstance, run_id: str) -> list[float]:
    """Seconds from 'Submitting celery task' to the worker's 'Executing steps', per step."""
    sent: dict[str, float] = {}
    taken: dict[str, float] = {}
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        event = record.dagster_event
        if event is None or event.step_key is None:
            continue
        if (event.message or "").startswith("Submitting celery task"):
            sent[event.step_key] = record.timestamp
        elif "in celery worker" in (event.message or ""):
            taken.setdefault(event.step_key, record.timestamp)
    return [taken[key] - sent[key] for key in sent if key in taken]


def run_on_workers(
    root: Path, photos: Path, workers: int, partition_size: int, broker: str, queue: str
) -> dict[str, Any]:
    """One daily run on `workers` fresh workers (their own databases). One queue for the whole benchmark:
    Dagster keeps the job (and its executor's queue) it reconstructed first in this process."""
    from face_pipeline.defs.celery_executor import daily_job
    from face_pipeline.defs.runner import dagster_home
    from face_pipeline.settings import load_settings

    with ExitStack() as stack:
        faces_url = stack.enter_context(throwaway_database(POSTGRES_ADMIN_URL, "fp_bench_faces"))
        dagster_url = stack.enter_context(throwaway_database(POSTGRES_ADMIN_URL, "fp_bench_dagster"))
        os.environ.update(
            FACE_PHOTOS_DIR=str(photos),
            FACE_DATA_DIR=str(root / f"data{workers}"),
            FACE_DATABASE_URL=faces_url,
            FACE_EXECUTOR="celery",
            FACE_CELERY_BROKER=broker,
            FACE_CELERY_QUEUE=queue,
            FACE_PARTITION_SIZE=str(partition_size),
            FACE_PARTITION_BY="batch",
            FACE_WORKERS="1",
            DAGSTER_PG_URL=dagster_url,
            DAGSTER_HOME=str(root / f"dagster{workers}"),
        )
        dagster_home(load_settings())
        logs = [root / f"w{workers}_{n}.log" for n in range(workers)]
        started = [start_worker(f"w{n}_{queue}", queue, os.environ, log) for n, log in enumerate(logs)]
        try:
            wait_ready(started)
            with dg.DagsterInstance.get() as instance:
                t0 = time.perf_counter()
                result = dg.execute_job(dg.reconstructable(daily_job), instance=instance, raise_on_error=False)
                wall = time.perf_counter() - t0
                if not result.success:
                    sys.exit(f"the celery run failed; worker logs in {root}")
                steps = len(result.get_step_success_events())
                latencies = step_latencies(instance, result.run_id)
                detect = [e for e in result.get_step_success_events() if "detect_partition[" in (e.step_key or "")]
        finally:
            for worker in started:
                worker.stop()
    return {"wall_s": wall, "steps": steps, "partitions": len(detect), "latencies": latencies}


def run_in_process(root: Path, photos: Path) -> float:
    from face_pipeline.definitions import defs
    from face_pipeline.defs.jobs import DAILY

    os.environ.update(
        FACE_EXECUTOR="in_process", FACE_DATA_DIR=str(root / "data_local"), FACE_PHOTOS_DIR=str(photos),
        FACE_DATABASE_URL=f"sqlite:///{root / 'local.db'}", FACE_WORKERS="1",
    )  # fmt: skip
    os.environ.pop("DAGSTER_PG_URL", None)
    (root / "dagster_local").mkdir()
    with dg.instance_for_test(temp_dir=str(root / "dagster_local")) as instance:
        t0 = time.perf_counter()
        assert defs().resolve_job_def(DAILY).execute_in_process(instance=instance).success
        return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=1000)
    parser.add_argument("--partition-size", type=int, default=100)
    parser.add_argument("--dataset", type=Path, default=None, help="default: ../shared/datasets/lfw-dev")
    args = parser.parse_args()
    broker = os.environ.get("FACE_CELERY_BROKER", "amqp://guest:guest@127.0.0.1:5672//")
    if problem := broker_problem(broker):
        sys.exit(f"no broker at {broker}: {problem}")
    os.environ.setdefault("FACE_MODEL_DIR", "/nonexistent-buffalo_l")  # auto: buffalo_s
    root = Path(tempfile.mkdtemp(prefix="fp_scaleout_"))
    photos = root / "photos"
    count = copy_photos(args.dataset or default_dataset("lfw-dev"), photos, args.photos)
    print(f"{count} lfw-dev photos, partitions of {args.partition_size}, {os.cpu_count()} cores")

    queue = f"face_pipeline_bench_{uuid.uuid4().hex[:8]}"  # other sessions may share the broker
    local = run_in_process(root, photos)
    print(f"in process (SQLite, one Python):  {local:7.1f} s  {count / local:5.1f} photos/s")
    emit(BENCH, figure="in_process_wall_s", photos=count, value=round(local, 2))
    runs = {}
    for workers in (1, 2):
        runs[workers] = run = run_on_workers(root, photos, workers, args.partition_size, broker, queue)
        print(
            f"celery, {workers} worker(s):          {run['wall_s']:7.1f} s  {count / run['wall_s']:5.1f} photos/s  "
            f"({run['steps']} steps, {run['partitions']} detection partitions)"
        )
        emit(BENCH, figure=f"celery_{workers}_workers_wall_s", photos=count, steps=run["steps"],
             partitions=run["partitions"], value=round(run["wall_s"], 2))  # fmt: skip
    ratio = runs[1]["wall_s"] / runs[2]["wall_s"]
    print(f"two workers vs one: {ratio:.2f}x faster")
    emit(BENCH, figure="two_vs_one_worker_speedup", photos=count, value=round(ratio, 3))
    one = runs[1]
    queue_wait = median(one["latencies"]) if one["latencies"] else float("nan")
    overhead = (one["wall_s"] - local) / one["steps"]
    print(f"celery per step: {queue_wait:.2f} s median from send to a worker starting it; "
          f"{overhead:.2f} s of wall time per step beyond in process (one worker)")  # fmt: skip
    emit(BENCH, figure="celery_step_queue_latency_median_s", value=round(queue_wait, 3))
    emit(BENCH, figure="celery_overhead_per_step_s", steps=one["steps"], value=round(overhead, 3))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
