"""Wall time of everyday CLI commands, each call a fresh process, as a user at a terminal meets them.

    python benchmarks/cli_latency.py                       # this checkout, 20 calls of each command
    python benchmarks/cli_latency.py --compare 34f8a7d     # the same commands at another commit too, side by side

Builds a small library once (lfw-mini, 4 people x 6 photos, buffalo_s, then cluster-dual), then times
`faces label-face`, `reject`, `unassign`, `label` (a cluster), `stats` and a one-line error
(`label-face` of an unknown face). With --compare the other commit runs from a temporary git worktree against
the same library (its schema must be the same). Prints median and max per command, each also as a JSON line.
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


def build_library(root: Path) -> tuple[dict[str, str], int, str]:
    """Environment of a small clustered library, a face id and an unknown cluster id in it."""
    from sqlalchemy import select

    from face_pipeline.services.library import Library
    from face_pipeline.settings import load_settings
    from face_pipeline.storage.models import FaceInstance

    photos = root / "photos"
    people = sorted(p for p in default_dataset("lfw-mini").iterdir() if p.is_dir())[:4]
    for person in people:
        shutil.copytree(person, photos / person.name, ignore=shutil.ignore_patterns("*_0007.jpg", "*_0008.jpg"))
    env = {**os.environ, "FACE_DATA_DIR": str(root / "data"), "FACE_PHOTOS_DIR": str(photos)}
    env["FACE_EMBEDDER"] = "buffalo_s"
    for command in (["faces", "backfill"], ["faces", "cluster-dual"]):
        subprocess.run([sys.executable, "-m", "face_pipeline.cli", *command], env=env, check=True, capture_output=True)
    library = Library.from_settings(load_settings(data_dir=root / "data", photos_dir=photos))
    with library.db.session() as session:
        face_id = session.scalars(select(FaceInstance.id).order_by(FaceInstance.id)).first()
        cluster = session.scalars(
            select(FaceInstance.cluster_id).where(FaceInstance.cluster_id.like("unknown\\_cluster\\_%", escape="\\"))
        ).first()
    library.close()
    assert face_id is not None and cluster is not None, "the library has no face or no group"
    return env, int(face_id), str(cluster)


def commands(face_id: int, cluster: str) -> dict[str, list[str]]:
    return {
        "label-face": ["faces", "label-face", str(face_id), "Alice"],
        "reject": ["faces", "reject", str(face_id)],
        "unassign": ["faces", "unassign", str(face_id)],
        "label (cluster)": ["faces", "label", cluster, "Bob"],
        "stats": ["faces", "stats"],
        "one-line error": ["faces", "label-face", "99999999", "Nobody"],
    }


def time_calls(code: Path, env: dict[str, str], argv: list[str], calls: int) -> list[float]:
    run_env = {**env, "PYTHONPATH": str(code)}
    seconds = []
    for _ in range(calls):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "face_pipeline.cli", *argv], env=run_env, cwd=code, capture_output=True)
        seconds.append(time.perf_counter() - started)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--compare", metavar="REV", help="also time this commit (a temporary git worktree)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cli-latency-") as tmp:
        root = Path(tmp)
        env, face_id, cluster = build_library(root / "library")
        checkouts = {git_commit(): REPO}
        if args.compare:
            worktree = root / "compare"
            git = ["git", "-C", str(REPO), "worktree"]
            subprocess.run([*git, "add", "--detach", str(worktree), args.compare], check=True, capture_output=True)
            checkouts = {args.compare: worktree, **checkouts}
        try:
            print(f"{'command':18s}" + "".join(f"{rev[:10] + ' median/max s':>28s}" for rev in checkouts))
            for name, argv in commands(face_id, cluster).items():
                cells = []
                for rev, code in checkouts.items():
                    seconds = time_calls(code, env, argv, args.calls)
                    median, worst = statistics.median(seconds), max(seconds)
                    cells.append(f"{median:>19.2f} / {worst:5.2f}")
                    emit("cli_latency", command=name, code=rev, calls=args.calls, median_s=round(median, 3),
                         max_s=round(worst, 3))
                print(f"{name:18s}" + "".join(cells))
        finally:
            if args.compare:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(root / "compare")])


if __name__ == "__main__":
    main()
