"""Real Celery worker processes for the scale-out test and benchmark: started with the documented command,
each in its own session so that the whole worker (main process and pool child) can be killed at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def broker_problem(url: str) -> str | None:
    """Why the broker cannot be used (None when it answers)."""
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=3) as connection:
            connection.ensure_connection(max_retries=1)
    except Exception as exc:  # any failure to connect means no broker here
        return f"{type(exc).__name__}: {exc}"
    return None


@dataclass
class Worker:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        """SIGKILL the worker and its pool child, as a machine dying would."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


def start_worker(name: str, queue: str, env: Mapping[str, str], log: Path) -> Worker:
    """`celery -A face_pipeline.defs.celery_worker worker -Q <queue> --concurrency 1` (README, Scaling out)."""
    command = [
        sys.executable, "-m", "celery", "-A", "face_pipeline.defs.celery_worker", "worker",
        "-Q", queue, "--concurrency", "1", "--prefetch-multiplier", "1", "-n", f"{name}@%h",
        "--without-gossip", "--without-mingle", "--loglevel", "INFO",
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=REPO, env=dict(env), stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
    return Worker(name, process, log)


def wait_ready(workers: list[Worker], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    for worker in workers:
        while b" ready." not in worker.log.read_bytes():
            if worker.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker {worker.name} did not start:\n{worker.log.read_text()[-3000:]}")
            time.sleep(0.2)
