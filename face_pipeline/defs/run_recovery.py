"""Runs whose process is gone, and waiting for runs that are alive.

A run killed hard (kill -9, the OOM killer, a crash of the engine) never reports its end: Dagster keeps it
STARTED and keeps the pool slots its steps claimed, so every later run waits for it forever. Each run this
project starts records which process runs it (CLI runs: tags written at launch; runs launched by the daemon
or the UI: the pid in Dagster's "Started process for run" engine event), so a later command can see that
the process is gone, mark the run failed and free its slots.

A run on another machine (shared PostgreSQL run storage) is never judged dead from here: only runs whose
host tag is this machine, or, for runs without one, only when the run storage is local SQLite.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import dagster as dg

from face_pipeline.errors import UserFacingError

PID_TAG = "face_pipeline/pid"
HOST_TAG = "face_pipeline/host"
PROCESS_START_TAG = "face_pipeline/process_start"  # kernel start time of the pid: a reused pid is not the run's
IN_FLIGHT = (dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING)
WAITING = (dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.QUEUED)
POLL_S = 0.5


class RunWaitTimeout(UserFacingError, TimeoutError):
    """Another live run kept a pool this run needs for longer than the wait allowed."""


@dataclass(frozen=True)
class FreedRun:
    run_id: str
    job_name: str
    pid: int

    def line(self) -> str:
        return (
            f"run {self.run_id[:8]} ({self.job_name}) was left running by process {self.pid}, which is gone: "
            "marked failed and its pool slots freed"
        )


def _process_start(pid: int) -> str | None:
    """The kernel's start time of pid (field 22 of /proc/pid/stat), None where there is no /proc."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        pass
    return started is None or _process_start(pid) in (None, started)


def process_tags() -> dict[str, str]:
    """Tags naming this process, for a run it executes in process."""
    pid = os.getpid()
    tags = {PID_TAG: str(pid), HOST_TAG: socket.gethostname()}
    if (started := _process_start(pid)) is not None:
        tags[PROCESS_START_TAG] = started
    return tags


def _launched_pid(instance: dg.DagsterInstance, run: dg.DagsterRun) -> int | None:
    """The pid Dagster's run worker reported when it started (runs launched by the daemon or the UI)."""
    records = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT, limit=20).records
    for record in records:
        event = record.event_log_entry.dagster_event
        metadata = event.engine_event_data.metadata if event and event.engine_event_data else {}
        if "pid" in metadata:
            return int(str(getattr(metadata["pid"], "value", metadata["pid"])))
    return None


def _local_storage(instance: dg.DagsterInstance) -> bool:
    return type(instance.run_storage).__name__.startswith("Sqlite")


def _owner(instance: dg.DagsterInstance, run: dg.DagsterRun) -> tuple[int, str | None] | None:
    """(pid, start time) of the process running this run, when this machine can judge it; else None."""
    tags = run.tags
    if PID_TAG in tags:
        if tags.get(HOST_TAG) != socket.gethostname():
            return None
        return int(tags[PID_TAG]), tags.get(PROCESS_START_TAG)
    if not _local_storage(instance):
        return None
    pid = _launched_pid(instance, run)
    return None if pid is None else (pid, None)


def _runs_in_flight(instance: dg.DagsterInstance) -> Iterable[dg.DagsterRun]:
    return instance.get_runs(filters=dg.RunsFilter(statuses=list(IN_FLIGHT)))


def free_dead_runs(instance: dg.DagsterInstance) -> list[FreedRun]:
    """Mark failed every in-flight run whose process is gone, and free its pool slots; idempotent."""
    freed = []
    for run in _runs_in_flight(instance):
        owner = _owner(instance, run)
        if owner is None or _alive(*owner):
            continue
        message = f"process {owner[0]} running this run is gone (killed or crashed); freed by a later run"
        instance.report_run_failed(run, message)
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        freed.append(FreedRun(run.run_id, run.job_name, owner[0]))
    # A slot whose run is no longer in flight (it ended without freeing it) is freed too.
    not_ended = instance.get_runs(filters=dg.RunsFilter(statuses=[*IN_FLIGHT, *WAITING]))
    in_flight = {run.run_id for run in not_ended}
    for run_id in instance.event_log_storage.get_concurrency_run_ids() - in_flight:
        instance.event_log_storage.free_concurrency_slots_for_run(run_id)
    return freed


def _blockers(instance: dg.DagsterInstance) -> list[tuple[str, dg.DagsterRun]]:
    """(pool, run) for every pool whose slots are all held by other runs."""
    storage, found = instance.event_log_storage, []
    for pool in sorted(storage.get_concurrency_keys()):
        info = storage.get_concurrency_info(pool)
        if info.slot_count and len(info.claimed_slots) >= info.slot_count:
            for slot in info.claimed_slots[:1]:
                run = instance.get_run_by_id(slot.run_id)
                if run is not None:
                    found.append((pool, run))
    return found


def describe(run: dg.DagsterRun) -> str:
    who = run.tags.get("launched_by") or run.tags.get("dagster/schedule_name") or run.tags.get("dagster/sensor_name")
    pid = run.tags.get(PID_TAG)
    return f"run {run.run_id[:8]} ({run.job_name}{', ' + who if who else ''}{', pid ' + pid if pid else ''})"


def wait_for_pools(
    instance: dg.DagsterInstance,
    timeout_s: float,
    say: Callable[[str], None],
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Free dead runs, then wait (interruptible, saying for whom) while live runs hold every slot of a pool.

    Raises RunWaitTimeout after timeout_s. A run that claims a slot after this returns is waited for by
    Dagster itself, as before."""
    for freed in free_dead_runs(instance):
        say(freed.line())
    deadline, announced = clock() + timeout_s, set()
    while blockers := _blockers(instance):
        for pool, run in blockers:
            if (pool, run.run_id) not in announced:
                announced.add((pool, run.run_id))
                say(
                    f"waiting for {describe(run)} to release the {pool} pool (Ctrl-C to stop; gives up after "
                    f"{timeout_s:.0f} s, FACE_RUN_WAIT_SECONDS)"
                )
        if clock() >= deadline:
            pool, run = blockers[0]
            raise RunWaitTimeout(
                f"gave up after {timeout_s:.0f} s waiting for {describe(run)} to release the {pool} pool; "
                "try again when it ends, or raise FACE_RUN_WAIT_SECONDS"
            )
        time.sleep(POLL_S)
        for freed in free_dead_runs(instance):
            say(freed.line())
