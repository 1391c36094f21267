"""The `face-pipeline` console command hands everyday edits to a warm server (face_pipeline/warm_cli.py).

Real processes throughout: a real library (buffalo_s over lfw-mini photos), the real server started as the
console command starts it, real Unix sockets, real signals. Each test keeps its server in its own folder and
stops it at the end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from face_pipeline import warm_cli
from face_pipeline.cli import app
from face_pipeline.services.library import Library
from face_pipeline.services.space_registry import active_space
from face_pipeline.settings import load_settings
from face_pipeline.storage.models import FaceInstance, Person
from face_pipeline_tests.photo_corpus import copy_people

LAUNCHER = [sys.executable, "-m", "face_pipeline.warm_cli"]  # what the `face-pipeline` script runs
SERVER_START_SECONDS = 60  # the server imports the CLI first: seconds on a busy 2-core machine


@pytest.fixture(scope="module")
def library_env(tmp_path_factory: pytest.TempPathFactory, lfw_mini: Path) -> dict[str, str]:
    """The environment of a small real library (2 people x 2 photos, detected and clustered)."""
    root = tmp_path_factory.mktemp("warm-library")
    photos = root / "photos"
    copy_people(lfw_mini, photos, people=2, photos_each=2)
    env = {
        **os.environ,
        "FACE_PHOTOS_DIR": str(photos),
        "FACE_DATA_DIR": str(root / "data"),
        "DAGSTER_HOME": str(root / "dagster_home"),
        "FACE_MODEL_DIR": str(root / "insightface"),  # no buffalo_l: buffalo_s
    }
    env.pop("FACE_EMBEDDER", None)
    with pytest.MonkeyPatch.context() as patch:
        for key in ("FACE_PHOTOS_DIR", "FACE_DATA_DIR", "DAGSTER_HOME", "FACE_MODEL_DIR"):
            patch.setenv(key, env[key])
        patch.delenv("FACE_EMBEDDER", raising=False)
        for command in (["faces", "backfill"], ["faces", "cluster-dual"]):
            result = CliRunner().invoke(app, command)
            assert result.exit_code == 0, result.output
    return env


@pytest.fixture
def warm_env(library_env: dict[str, str]) -> Iterator[dict[str, str]]:
    # A short folder: a Unix socket's path holds at most 107 bytes, and pytest's tmp_path can be longer.
    warm_dir = Path(tempfile.mkdtemp(prefix="fpw-", dir="/tmp"))
    yield {**library_env, "FACE_CLI_WARM_DIR": str(warm_dir), "FACE_CLI_WARM": "1"}
    for pid_file in warm_dir.glob("*/*.pid"):
        with contextlib.suppress(ValueError, ProcessLookupError):
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
    shutil.rmtree(warm_dir, ignore_errors=True)


def face_ids(env: dict[str, str]) -> list[int]:
    library = Library.from_settings(load_settings(data_dir=Path(env["FACE_DATA_DIR"])))
    try:
        with library.db.session() as session:
            return [int(i) for i in session.scalars(select(FaceInstance.id).order_by(FaceInstance.id))]
    finally:
        library.close()


def payload_of(env: dict[str, str], face_id: int) -> dict[str, object]:
    """The face's payload in the active space's collection (waits while a command holds the store)."""
    library = Library.from_settings(load_settings(data_dir=Path(env["FACE_DATA_DIR"])))
    try:
        with library.db.session() as session:
            space = active_space(session)
            assert space is not None
            name = space.name
        with library.vectors() as store:
            return store.fetch_payloads(name)[face_id]
    finally:
        library.close()


def person_of(env: dict[str, str], face_id: int) -> str | None:
    library = Library.from_settings(load_settings(data_dir=Path(env["FACE_DATA_DIR"])))
    try:
        with library.db.session() as session:
            person_id = session.get(FaceInstance, face_id).person_id
            return None if person_id is None else session.get(Person, person_id).name
    finally:
        library.close()


def run(env: dict[str, str], *argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LAUNCHER, *argv], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def wait_for_server(env: dict[str, str]) -> Path:
    path = warm_cli.socket_path(env)
    deadline = time.monotonic() + SERVER_START_SECONDS
    while not path.with_suffix(".pid").exists():
        assert time.monotonic() < deadline, f"no warm server at {path} after {SERVER_START_SECONDS} s"
        time.sleep(0.1)
    return path


def test_edits_are_served_warm_with_the_cold_results(warm_env: dict[str, str], tmp_path: Path, capfd):
    first = run(warm_env, "faces", "stats")  # cold: no server yet; it starts one
    assert first.returncode == 0 and "faces: " in first.stdout, first.stderr
    path = wait_for_server(warm_env)
    face = face_ids(warm_env)[0]

    # In this very process, so that "served warm" is observed, not inferred: run_warm returns the exit status
    # only when the server ran the command; the child writes to this process's own stdout/stderr.
    with pytest.MonkeyPatch.context() as patch:
        for key, value in warm_env.items():
            patch.setenv(key, value)
        assert warm_cli.run_warm(["faces", "label-face", str(face), "Warm Alice"], path) == 0
        out = capfd.readouterr()
        assert "Warm Alice" in out.out, out
        assert warm_cli.run_warm(["faces", "label-face", "99999999", "Nobody"], path) == 2
        out = capfd.readouterr()
        assert out.err.strip().startswith("error: ") and out.err.strip().count("\n") == 0, out
        assert "99999999" in out.err
    assert person_of(warm_env, face) == "Warm Alice"  # the edit is in the library
    # ... and its payload mirroring reached the vector store before the reply (the store is free again).
    with Library.from_settings(load_settings(data_dir=Path(warm_env["FACE_DATA_DIR"]))).db.session() as session:
        person_id = session.get(FaceInstance, face).person_id
    assert payload_of(warm_env, face)["person_id"] == person_id

    # The caller's working directory and environment, not the server's: a relative path lands where the
    # caller stands; a bad setting is reported as a cold run reports it.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    exported = run(warm_env, "faces", "export", "--output", "mine.csv", cwd=elsewhere)
    assert exported.returncode == 0, exported.stderr
    assert "Warm Alice" in (elsewhere / "mine.csv").read_text()
    warm_bad = run({**warm_env, "FACE_DEVICE": "tpu"}, "faces", "stats")
    cold_bad = run({**warm_env, "FACE_DEVICE": "tpu", "FACE_CLI_WARM": "0"}, "faces", "stats")
    assert (warm_bad.returncode, warm_bad.stderr, warm_bad.stdout) == (2, cold_bad.stderr, cold_bad.stdout)
    assert "FACE_DEVICE='tpu'" in warm_bad.stderr


def test_a_code_change_sends_the_call_back_cold_and_stops_the_server(warm_env: dict[str, str]):
    run(warm_env, "faces", "stats")
    path = wait_for_server(warm_env)
    server = int(path.with_suffix(".pid").read_text())
    newest = max(p.stat().st_mtime_ns for p in Path(warm_cli.__file__).parent.rglob("*.py"))
    marker = Path(warm_cli.__file__).parent / "__init__.py"  # the content stays; only its time moves
    os.utime(marker, ns=(newest + 1_000_000_000, newest + 1_000_000_000))

    with pytest.MonkeyPatch.context() as patch:
        for key, value in warm_env.items():
            patch.setenv(key, value)
        assert warm_cli.run_warm(["faces", "stats"], path) is None  # not run: the caller runs it cold
    deadline = time.monotonic() + 10
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not path.exists()
    with pytest.raises(ProcessLookupError):
        for _ in range(100):  # the server exits right after its answer
            os.kill(server, 0)
            time.sleep(0.05)
    again = run(warm_env, "faces", "stats")  # cold, and starts a fresh server
    assert again.returncode == 0, again.stderr
    assert wait_for_server(warm_env).exists()


def children_of(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_ctrl_c_reaches_the_command_the_server_runs(warm_env: dict[str, str], tmp_path: Path):
    run(warm_env, "faces", "stats")
    server = int(wait_for_server(warm_env).with_suffix(".pid").read_text())
    # An export into a named pipe nobody reads waits in open(): a command still running when Ctrl-C comes.
    fifo = tmp_path / "nobody-reads.csv"
    os.mkfifo(fifo)
    caller = subprocess.Popen(
        [*LAUNCHER, "faces", "export", "--output", str(fifo)],
        env=warm_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not children_of(server) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert children_of(server), "the command is not running in the warm server's child"
        time.sleep(0.5)  # it reaches its read of stdin
        assert caller.poll() is None, caller.communicate()
        caller.send_signal(signal.SIGINT)
        _out, err = caller.communicate(timeout=30)
    finally:
        if caller.poll() is None:
            caller.kill()
    assert caller.returncode == 130, err
    assert "interrupted" in err


def test_idle_server_exits_and_off_switch_stays_cold(warm_env: dict[str, str]):
    idle = {**warm_env, "FACE_CLI_WARM_IDLE_SECONDS": "1"}
    run(idle, "faces", "stats")
    path = wait_for_server(idle)
    deadline = time.monotonic() + 20
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not path.exists() and not path.with_suffix(".pid").exists()

    off = {**warm_env, "FACE_CLI_WARM": "0"}
    assert run(off, "faces", "stats").returncode == 0
    time.sleep(1.0)
    assert not path.with_suffix(".pid").exists()  # FACE_CLI_WARM=0 started no server
    assert not warm_cli.runs_warm(["faces", "cluster-dual"])  # the other pipeline commands start cold


def test_a_socket_folder_others_can_write_is_never_used(warm_env: dict[str, str]):
    path = warm_cli.socket_path(warm_env)
    path.parent.mkdir(parents=True)
    path.parent.chmod(0o777)
    result = run(warm_env, "faces", "stats")
    assert result.returncode == 0, result.stderr  # runs cold
    time.sleep(2.0)
    assert not path.exists()  # and no server listens there
    assert warm_cli.run_warm(["faces", "stats"], path) is None


def test_the_launcher_imports_only_the_standard_library():
    probe = (
        "import sys; import face_pipeline.warm_cli; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'numpy', 'sqlalchemy', 'typer', 'pydantic', 'click'}))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]", done.stdout  # what runs before every call stays ~30 ms


def test_a_backfill_with_nothing_to_do_runs_warm_as_the_named_job(warm_env: dict[str, str], capfd):
    import dagster as dg

    run(warm_env, "faces", "stats")
    path = wait_for_server(warm_env)
    server = int(path.with_suffix(".pid").read_text())
    with pytest.MonkeyPatch.context() as patch:
        for key, value in warm_env.items():
            patch.setenv(key, value)
        assert warm_cli.run_warm(["faces", "backfill"], path) == 0  # served warm
    out = capfd.readouterr()
    assert "0 new" in out.out and "detected: 0 faces" in out.out, out
    with dg.DagsterInstance.from_config(warm_env["DAGSTER_HOME"]) as instance:
        latest = instance.get_runs(limit=1)[0]
    assert latest.job_name == "ingest" and latest.status == dg.DagsterRunStatus.SUCCESS
    assert latest.tags["launched_by"] == "face-pipeline CLI"
    # The run names the process that ran it (dead-run recovery reads it): the server's child, not the server.
    assert int(latest.tags["face_pipeline/pid"]) not in (server, os.getpid())
