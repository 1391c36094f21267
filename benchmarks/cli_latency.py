"""Wall time of everyday CLI commands, each call a fresh process, as a user at a terminal meets them.

    python benchmarks/cli_latency.py                       # this checkout, 20 calls of each command
    python benchmarks/cli_latency.py --compare 34f8a7d     # the same commands at another commit too, side by side

Builds a small library once (lfw-mini, 4 people x 6 photos, buffalo_s, then cluster-dual), then times rounds
of real edits on one face (`faces label-face`, `unassign`, `label-face`, `reject`: each call changes something),
`faces stats` and a one-line error (`label-face` of an unknown face); --calls is the number of rounds.
With --compare the other commit runs from a temporary git worktree against the same library (its schema
must be the same). Prints median and max per command, each also as a JSON line.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import default_dataset, emit, git_commit  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def build_library(root: Path) -> tuple[dict[str, str], int]:
    """Environment of a small clustered library, and a face in it."""
    from sqlalchemy import select

    from face_pipeline.services.library import Library
    from face_pipeline.settings import load_settings
    from face_pipeline.storage.models import FaceInstance

    photos = root / "photos"
    people = [p for p in sorted(default_dataset("lfw-mini").iterdir()) if len(list(p.glob("*.jpg"))) >= 6][:4]
    for person in people:
        shutil.copytree(person, photos / person.name, ignore=shutil.ignore_patterns("*_0007.jpg", "*_0008.jpg"))
    env = {**os.environ, "FACE_DATA_DIR": str(root / "data"), "FACE_PHOTOS_DIR": str(photos)}
    env["FACE_EMBEDDER"] = "buffalo_s"
    for command in (["faces", "backfill"], ["faces", "cluster-dual"]):
        subprocess.run([sys.executable, "-m", "face_pipeline.cli", *command], env=env, check=True, capture_output=True)
    library = Library.from_settings(load_settings(data_dir=root / "data", photos_dir=photos))
    with library.db.session() as session:
        face_id = session.scalars(select(FaceInstance.id).order_by(FaceInstance.id)).first()
    library.close()
    assert face_id is not None, "the library has no face"
    return env, int(face_id)


def cycle(face_id: int) -> list[tuple[str, list[str]]]:
    """One round of real edits on one face (each call changes something), then a read and a mistake."""
    face = str(face_id)
    return [
        ("label-face", ["faces", "label-face", face, "Alice"]),
        ("unassign", ["faces", "unassign", face]),
        ("label-face", ["faces", "label-face", face, "Alice"]),
        ("reject", ["faces", "reject", face]),
        ("stats", ["faces", "stats"]),
        ("one-line error", ["faces", "label-face", "99999999", "Nobody"]),
    ]


def time_rounds(code: Path, env: dict[str, str], face_id: int, rounds: int) -> dict[str, list[float]]:
    run_env = {**env, "PYTHONPATH": str(code)}
    seconds: dict[str, list[float]] = {}
    for _ in range(rounds):
        for name, argv in cycle(face_id):
            started = time.perf_counter()
            command = [sys.executable, "-m", "face_pipeline.cli", *argv]
            subprocess.run(command, env=run_env, cwd=code, capture_output=True)
            seconds.setdefault(name, []).append(time.perf_counter() - started)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--compare", metavar="REV", help="also time this commit (a temporary git worktree)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cli-latency-") as tmp:
        root = Path(tmp)
        env, face_id = build_library(root / "library")
        checkouts = {git_commit(): REPO}
        if args.compare:
            worktree = root / "compare"
            git = ["git", "-C", str(REPO), "worktree"]
            subprocess.run([*git, "add", "--detach", str(worktree), args.compare], check=True, capture_output=True)
            checkouts = {args.compare: worktree, **checkouts}
        try:
            measured = {rev: time_rounds(code, env, face_id, args.calls) for rev, code in checkouts.items()}
            print(f"{'command':18s}" + "".join(f"{rev[:10] + ' median/max s':>28s}" for rev in checkouts))
            for name in measured[next(iter(checkouts))]:
                cells = []
                for rev in checkouts:
                    seconds = measured[rev][name]
                    median, worst = statistics.median(seconds), max(seconds)
                    cells.append(f"{median:>19.2f} / {worst:5.2f}")
                    emit("cli_latency", command=name, code=rev, calls=len(seconds), median_s=round(median, 3),
                         max_s=round(worst, 3))
                print(f"{name:18s}" + "".join(cells))
        finally:
            if args.compare:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(root / "compare")])


if __name__ == "__main__":
    main()
