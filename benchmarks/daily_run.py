"""A full `daily_backfill_and_cluster` run, as the schedule starts it, on a photo folder; per-asset seconds.

    python benchmarks/daily_run.py [--photos ../shared/datasets/lfw-dev] [--data-dir DIR]

Runs the job in process (with its checks) against a throwaway Dagster instance and a fresh library, then
prints each step's duration from the run's own events, and one JSON line per step.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import default_dataset, emit, peak_rss_mb  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, default=None)
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args()
    photos = (args.photos or default_dataset("lfw-dev")).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["FACE_PHOTOS_DIR"] = str(photos)
        os.environ["FACE_DATA_DIR"] = str(args.data_dir or Path(tmp) / "data")
        os.environ.setdefault("FACE_EMBEDDER", "dlib")
        import dagster as dg

        from face_pipeline.definitions import defs

        started = time.perf_counter()
        with dg.instance_for_test(temp_dir=tmp) as instance:
            job = defs().resolve_job_def("daily_backfill_and_cluster")
            result = job.execute_in_process(instance=instance, raise_on_error=False)
            stats = instance.get_run_step_stats(result.run_id)
        total = time.perf_counter() - started
    print(f"daily_backfill_and_cluster on {photos}: {'success' if result.success else 'FAILED'} in {total:.1f} s")
    for step in sorted(stats, key=lambda s: s.start_time or 0):
        seconds = (step.end_time or 0) - (step.start_time or 0)
        print(f"  {step.step_key:<32} {step.status.value if step.status else '?':<8} {seconds:7.2f} s")
        emit("daily_run_step", step=step.step_key, seconds=round(seconds, 2), status=str(step.status))
    emit("daily_run", photos_dir=str(photos), success=result.success, seconds=round(total, 1),
         peak_rss_mb=round(peak_rss_mb()))  # fmt: skip


if __name__ == "__main__":
    main()
