"""What a user sees when a pipeline command cannot simply run: another live run holds the pool it needs (it
says which, then gives up after FACE_RUN_WAIT_SECONDS), Ctrl-C (one line, exit 130, no stack trace), a failed
blocking check (its offending face ids and what to run). Real CLI processes on a real Dagster instance."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from face_pipeline.cli.common import INTERRUPTED
from face_pipeline.defs.run_recovery import process_tags
from face_pipeline.services.library import Library
from face_pipeline.settings import load_settings
from face_pipeline_tests.photo_corpus import copy_people
from face_pipeline_tests.test_crash_safety import _cli, _env, _no_run_left_running, _ok

VECTOR_STORE_POOL = "face_vector_store"


@pytest.fixture
def env(tmp_path: Path, lfw_mini: Path) -> dict[str, str]:
    photos = tmp_path / "photos"
    copy_people(lfw_mini, photos, people=2, photos_each=3)
    return _env(tmp_path, photos)


def test_a_command_says_which_live_run_it_waits_for_and_gives_up_in_one_line(env: dict[str, str]):
    _ok(_cli(env, "backfill"))
    holder = str(uuid.uuid4())
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        # A run of a live process (this test's) in the middle of its step: it holds the pool's only slot.
        instance.add_run(
            dg.DagsterRun(
                job_name="cluster_dual",
                run_id=holder,
                status=dg.DagsterRunStatus.STARTED,
                tags={"launched_by": "face-pipeline CLI", **process_tags()},
            )
        )
        instance.event_log_storage.claim_concurrency_slot(VECTOR_STORE_POOL, holder, "unknown_clusters")
        try:
            started = time.monotonic()
            waited = _cli({**env, "FACE_RUN_WAIT_SECONDS": "3"}, "backfill")
            elapsed = time.monotonic() - started
        finally:
            instance.event_log_storage.free_concurrency_slots_for_run(holder)
            instance.report_run_failed(instance.get_run_by_id(holder))  # type: ignore[arg-type]
    assert waited.returncode == 2, waited.stderr
    assert f"waiting for run {holder[:8]} (cluster_dual, face-pipeline CLI, pid {os.getpid()})" in waited.stderr
    last = waited.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: gave up after 3 s waiting for run {holder[:8]}") and "FACE_RUN_WAIT_SECONDS" in last
    assert elapsed < 60
    _ok(_cli(env, "backfill"))  # the pool is free again: no wait, no message
    _no_run_left_running(env)


def test_ctrl_c_is_one_line_and_leaves_no_run_behind(env: dict[str, str], tmp_path: Path):
    err = tmp_path / "stderr.txt"
    with open(err, "w") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "face_pipeline.cli", "faces", "backfill"], env=env, stdout=handle, stderr=handle
        )
        deadline = time.monotonic() + 120
        while "loaded InsightFace" not in err.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) == 130
    text = err.read_text()
    assert "Traceback" not in text and "Stack Trace" not in text, text
    assert text.strip().splitlines()[-1] == INTERRUPTED
    _no_run_left_running(env)
    _ok(_cli(env, "backfill"))


def test_a_failed_blocking_check_names_the_faces_and_the_command_that_repairs_them(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
):
    _ok(_cli(env, "backfill"))
    for key in ("FACE_PHOTOS_DIR", "FACE_DATA_DIR", "FACE_MODEL_DIR"):
        monkeypatch.setenv(key, env[key])
    library = Library.from_settings(load_settings())
    with library.vectors() as vectors:
        space = "insightface_buffalo_s"
        ids, _ = vectors.fetch_all(space)
        lost = int(ids[1])
        vectors.delete(space, np.array([lost]))  # a store restored from an older backup
    library.close()

    failed = _cli(env, "cluster-dual")
    assert failed.returncode == 2
    last = failed.stderr.strip().splitlines()[-1]
    assert "vectors_match_sql failed" in last and f"1 face without a vector (e.g. face ids [{lost}])" in last
    assert "faces doctor" in last

    repaired = _cli(env, "doctor", "--repair")
    assert "1 photo queued for detection again" in repaired.stdout, repaired.stdout
    _ok(_cli(env, "backfill"))
    _ok(_cli(env, "cluster-dual"))
    assert "in step" in _ok(_cli(env, "doctor"))


def test_the_daemon_sensor_frees_a_run_whose_process_died(env: dict[str, str]):
    from face_pipeline.defs.sensors import dead_run_sensor

    _ok(_cli(env, "backfill"))  # installs the instance
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = str(uuid.uuid4())
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        tags = {**process_tags(), "face_pipeline/pid": str(gone.pid)}
        tags.pop("face_pipeline/process_start", None)
        instance.add_run(dg.DagsterRun(job_name="ingest", run_id=dead, status=dg.DagsterRunStatus.STARTED, tags=tags))
        instance.event_log_storage.claim_concurrency_slot(VECTOR_STORE_POOL, dead, "detected_faces")
        result = dead_run_sensor(dg.build_sensor_context(instance=instance))
        run = instance.get_run_by_id(dead)
        assert run is not None and run.status == dg.DagsterRunStatus.FAILURE
        assert dead not in instance.event_log_storage.get_concurrency_run_ids()
        again = dead_run_sensor(dg.build_sensor_context(instance=instance))
    assert isinstance(result, dg.SkipReason) and result.skip_message == "freed 1 dead run(s)"
    assert isinstance(again, dg.SkipReason) and again.skip_message == "no dead runs"


def test_a_backfill_started_with_sigterm_ignored_still_finishes(env: dict[str, str], lfw_mini: Path):
    """Job runners and `nohup ... &` start commands with some signals ignored, and spawned pool workers inherit
    that; a pool's terminate (SIGTERM) then waited for its workers forever. Workers restore the default."""
    copy_people(lfw_mini, Path(env["FACE_PHOTOS_DIR"]) / "more", people=4, photos_each=4)

    def ignore_sigterm() -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    done = subprocess.run(
        [sys.executable, "-m", "face_pipeline.cli", "faces", "backfill"],
        env={**env, "FACE_WORKERS": "2"},
        preexec_fn=ignore_sigterm,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    detected = re.search(r"detected: \d+ faces in (\d+) photos", done.stdout)
    assert detected and int(detected.group(1)) >= 16, done.stdout  # 16+: detection starts a worker pool
