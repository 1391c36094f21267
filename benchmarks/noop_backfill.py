"""`faces backfill` over an unchanged library: what a pipeline command with nothing to do costs, Dagster run
record included, each call a fresh process.

    python benchmarks/noop_backfill.py                      # lfw-mini, 5 calls
    python benchmarks/noop_backfill.py --compare a9fb8fb    # another commit too, side by side, same library

Ingests the photo folder once (buffalo_s), then times --calls backfills that find nothing new, per checkout
(the other commit from a temporary git worktree, against the same data and Dagster instance). Prints median
and max wall seconds and the median CPU seconds (user + sys of the child), each also as a JSON line.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import checkouts, default_dataset, emit  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_backfills(code: Path, env: dict[str, str], calls: int) -> tuple[list[float], list[float]]:
    wall, cpu = [], []
    for _ in range(calls):
        cpu_before, started = _children_cpu(), time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "face_pipeline.cli", "faces", "backfill"],
            env={**env, "PYTHONPATH": str(code)},
            cwd=code,
            capture_output=True,
            text=True,
        )
        wall.append(time.perf_counter() - started)
        cpu.append(_children_cpu() - cpu_before)
        if done.returncode != 0 or " 0 new" not in done.stdout:
            sys.exit(f"{code}: backfill did not find the library unchanged: {done.stdout}{done.stderr}")
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, default=None, help="default: ../shared/datasets/lfw-mini")
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--compare", metavar="REV", help="also time this commit (a temporary git worktree)")
    args = parser.parse_args()
    photos = (args.photos or default_dataset("lfw-mini")).resolve()
    with tempfile.TemporaryDirectory(prefix="noop-backfill-") as tmp:
        root = Path(tmp)
        env = {
            **os.environ,
            "FACE_PHOTOS_DIR": str(photos),
            "FACE_DATA_DIR": str(root / "data"),
            "DAGSTER_HOME": str(root / "dagster"),
            "FACE_EMBEDDER": "buffalo_s",
        }
        subprocess.run(
            [sys.executable, "-m", "face_pipeline.cli", "faces", "backfill"], env=env, check=True, capture_output=True
        )
        with checkouts(args.compare, root) as sides:
            for rev, code in sides.items():
                wall, cpu = time_backfills(code, env, args.calls)
                median, worst, cpu_median = statistics.median(wall), max(wall), statistics.median(cpu)
                print(
                    f"{rev[:10]:12s} no-op backfill: median {median:.2f} s, max {worst:.2f} s wall; "
                    f"median {cpu_median:.2f} s CPU ({len(wall)} calls, {photos.name})"
                )
                emit(
                    "noop_backfill",
                    code=rev,
                    photos=photos.name,
                    calls=len(wall),
                    median_s=round(median, 3),
                    max_s=round(worst, 3),
                    median_cpu_s=round(cpu_median, 3),
                )


if __name__ == "__main__":
    main()
