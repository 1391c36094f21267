"""`faces backfill` over an unchanged library: what a pipeline command with nothing to do costs, Dagster run
record included, each call a fresh process.

    python benchmarks/noop_backfill.py                      # lfw-mini, 5 calls
    python benchmarks/noop_backfill.py --compare a9fb8fb    # another commit too, side by side, same library
    python benchmarks/noop_backfill.py --synthetic 100000   # a 100K-photo library (see below)

Ingests the photo folder once (buffalo_s), then times --calls backfills that find nothing new, per checkout
(the other commit from a temporary git worktree, against the same data and Dagster instance), the checkouts
taking turns call by call after one untimed call each. Prints median and max wall seconds and the median CPU
seconds (user + sys of the child), each also as a JSON line.

--synthetic N: N distinct small photos (one lfw-mini face shrunk to 48 px, each file made unique by bytes after
the JPEG's end marker) in folders of 100, catalogued by the real scan (services/catalog.scan_photos: hashes
and all) and then marked detected with no face, as if the pipeline had processed them: detecting 100K photos
takes hours on 2 cores, and a no-op backfill never looks at the faces. What it times is the part that grows
with the library: walking the folders, comparing every file's size and mtime with SQL, the run record.
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


def backfill_once(code: Path, env: dict[str, str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one `faces backfill` in a fresh process that must find the library unchanged."""
    cpu_before, started = _children_cpu(), time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "face_pipeline.cli", "faces", "backfill"],
        env={**env, "PYTHONPATH": str(code)},
        cwd=code,
        capture_output=True,
        text=True,
    )
    wall, cpu = time.perf_counter() - started, _children_cpu() - cpu_before
    if done.returncode != 0 or " 0 new" not in done.stdout:
        sys.exit(f"{code}: backfill did not find the library unchanged: {done.stdout}{done.stderr}")
    return wall, cpu


def time_backfills(
    sides: dict[str, Path], env: dict[str, str], calls: int
) -> dict[str, tuple[list[float], list[float]]]:
    """{commit: (wall seconds, CPU seconds)} of `calls` backfills per checkout, taken in turns (one of each,
    then again) so that a change in the machine's load falls on every side alike; one untimed call of each
    first (bytecode compiled, files in the page cache)."""
    times: dict[str, tuple[list[float], list[float]]] = {rev: ([], []) for rev in sides}
    for code in sides.values():
        backfill_once(code, env)
    for _ in range(calls):
        for rev, code in sides.items():
            wall, cpu = backfill_once(code, env)
            times[rev][0].append(wall)
            times[rev][1].append(cpu)
    return times


def synthetic_library(photos: Path, data_dir: Path, n: int) -> None:
    """N unique photos under `photos`, catalogued in the library at `data_dir` and marked processed."""
    import io

    from PIL import Image as PILImage
    from sqlalchemy import update

    from face_pipeline.services.catalog import scan_photos
    from face_pipeline.services.library import Library
    from face_pipeline.settings import load_settings
    from face_pipeline.storage.models import Image, ImageStatus

    face = next(default_dataset("lfw-mini").glob("*/*.jpg"))
    buffer = io.BytesIO()
    PILImage.open(face).convert("RGB").resize((48, 48)).save(buffer, "JPEG", quality=70)
    jpeg = buffer.getvalue()
    for i in range(n):
        folder = photos / f"album_{i // 100:05d}"
        if i % 100 == 0:
            folder.mkdir(parents=True, exist_ok=True)
        (folder / f"photo_{i:07d}.jpg").write_bytes(jpeg + i.to_bytes(4, "big"))  # after EOI: same pixels
    library = Library.from_settings(load_settings(data_dir=data_dir, photos_dir=photos))
    started = time.perf_counter()
    report = scan_photos(library.db, photos)
    with library.db.session() as session:
        session.execute(update(Image).values(status=ImageStatus.DONE, face_count=0))
    library.close()
    print(f"synthetic library: {n} photos catalogued in {time.perf_counter() - started:.1f} s ({report.as_metadata()})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, default=None, help="default: ../shared/datasets/lfw-mini")
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--compare", metavar="REV", help="also time this commit (a temporary git worktree)")
    parser.add_argument("--synthetic", type=int, metavar="N", help="a library of N generated photos instead")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="noop-backfill-", dir=REPO / ".cache") as tmp:
        root = Path(tmp)
        photos = root / "photos" if args.synthetic else (args.photos or default_dataset("lfw-mini")).resolve()
        env = {
            **os.environ,
            "FACE_PHOTOS_DIR": str(photos),
            "FACE_DATA_DIR": str(root / "data"),
            "DAGSTER_HOME": str(root / "dagster"),
            "FACE_EMBEDDER": "buffalo_s",
        }
        if args.synthetic:
            synthetic_library(photos, root / "data", args.synthetic)
        else:
            subprocess.run(
                [sys.executable, "-m", "face_pipeline.cli", "faces", "backfill"],
                env=env,
                check=True,
                capture_output=True,
            )
        label = f"synthetic-{args.synthetic}" if args.synthetic else photos.name
        with checkouts(args.compare, root) as sides:
            for rev, (wall, cpu) in time_backfills(sides, env, args.calls).items():
                median, worst, cpu_median = statistics.median(wall), max(wall), statistics.median(cpu)
                print(
                    f"{rev[:10]:12s} no-op backfill: median {median:.2f} s, max {worst:.2f} s wall; "
                    f"median {cpu_median:.2f} s CPU ({len(wall)} calls, {label})"
                )
                emit(
                    "noop_backfill",
                    code=rev,
                    photos=label,
                    calls=len(wall),
                    median_s=round(median, 3),
                    max_s=round(worst, 3),
                    median_cpu_s=round(cpu_median, 3),
                )


if __name__ == "__main__":
    main()
