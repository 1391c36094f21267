"""`faces backfill` over an unchanged library: what a pipeline command with nothing to do costs, Dagster run
record included, each call a fresh process.

    python benchmarks/noop_backfill.py                      # lfw-mini, 5 calls
    python benchmarks/noop_backfill.py --compare a9fb8fb    # another commit too, side by side, same library
    python benchmarks/noop_backfill.py --synthetic 100000   # a 100K-photo library (see below)
    python benchmarks/noop_backfill.py --warm               # also this checkout's `face-pipeline` warm server

Ingests the photo folder once (buffalo_s), then times --calls backfills that find nothing new, per checkout
(the other commit from a temporary git worktree, against the same data and Dagster instance), the checkouts
taking turns call by call after one untimed call each. Prints median and max wall seconds and the median CPU
seconds (user + sys of the child), each also as a JSON line. --warm adds this checkout run as the
`face-pipeline` console command runs it (face_pipeline/warm_cli.py: the untimed first call starts the warm
server, which is then waited for; its calls' CPU figure is the caller's alone, the run being the server's child).

--synthetic N: N distinct small photos (one lfw-mini face shrunk to 48 px, each file made unique by bytes after
the JPEG's end marker) in folders of 100, catalogued by the real scan (services/catalog.scan_photos: hashes
and all) and then marked detected with no face, as if the pipeline had processed them: detecting 100K photos
takes hours on 2 cores, and a no-op backfill never looks at the faces. What it times is the part that grows
with the library: walking the folders, comparing every file's size and mtime with SQL, the run record.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import checkouts, default_dataset, emit  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


COLD = [sys.executable, "-m", "face_pipeline.cli"]
WARM = [sys.executable, "-m", "face_pipeline.warm_cli"]  # what the `face-pipeline` script runs


@dataclass(frozen=True)
class Side:
    code: Path
    launcher: list[str]
    env: dict[str, str] = field(default_factory=dict)


def backfill_once(side: Side, env: dict[str, str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one `faces backfill` in a fresh process that must find the library unchanged."""
    code = side.code
    cpu_before, started = _children_cpu(), time.perf_counter()
    done = subprocess.run(
        [*side.launcher, "faces", "backfill"],
        env={**env, **side.env, "PYTHONPATH": str(code)},
        cwd=code,
        capture_output=True,
        text=True,
    )
    wall, cpu = time.perf_counter() - started, _children_cpu() - cpu_before
    if done.returncode != 0 or " 0 new" not in done.stdout:
        sys.exit(f"{code}: backfill did not find the library unchanged: {done.stdout}{done.stderr}")
    return wall, cpu


def time_backfills(
    sides: dict[str, Side], env: dict[str, str], calls: int
) -> dict[str, tuple[list[float], list[float]]]:
    """{side: (wall seconds, CPU seconds)} of `calls` backfills per side, taken in turns (one of each,
    then again) so that a change in the machine's load falls on every side alike; one untimed call of each
    first (bytecode compiled, files in the page cache, the warm server started)."""
    times: dict[str, tuple[list[float], list[float]]] = {rev: ([], []) for rev in sides}
    for side in sides.values():
        backfill_once(side, env)
        if "FACE_CLI_WARM_DIR" in side.env:
            _wait_for_warm_server(Path(side.env["FACE_CLI_WARM_DIR"]))
    for _ in range(calls):
        for rev, side in sides.items():
            wall, cpu = backfill_once(side, env)
            times[rev][0].append(wall)
            times[rev][1].append(cpu)
    return times


def _wait_for_warm_server(folder: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not list(folder.glob("*/*.pid")):
        if time.monotonic() > deadline:
            sys.exit(f"no warm server under {folder} after {timeout_s:.0f} s")
        time.sleep(0.2)


def _stop_warm_server(folder: Path) -> None:
    for pid_file in folder.glob("*/*.pid"):
        with contextlib.suppress(ValueError, ProcessLookupError):
            os.kill(int(pid_file.read_text()), signal.SIGTERM)


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
    parser.add_argument("--warm", action="store_true", help="also time this checkout through its warm server")
    args = parser.parse_args()
    (REPO / ".cache").mkdir(exist_ok=True)  # absent on a fresh clone before the tests built their caches
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
        warm_dir = Path(tempfile.mkdtemp(prefix="fpw-", dir="/tmp"))  # a socket's path must stay short
        with checkouts(args.compare, root) as checkouts_by_rev:
            sides = {rev: Side(code, COLD) for rev, code in checkouts_by_rev.items()}
            if args.warm:
                rev, code = next(reversed(checkouts_by_rev.items()))
                sides[f"{rev[:7]}-warm"] = Side(code, WARM, {"FACE_CLI_WARM_DIR": str(warm_dir), "FACE_CLI_WARM": "1"})
            try:
                timed = time_backfills(sides, env, args.calls)
            finally:
                _stop_warm_server(warm_dir)
            for rev, (wall, cpu) in timed.items():
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
