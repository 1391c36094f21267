"""Wall time of everyday CLI commands, each call a fresh process, as a user at a terminal meets them.

    python benchmarks/cli_latency.py                       # this checkout, 20 rounds
    python benchmarks/cli_latency.py --compare 34f8a7d     # the same commands at another commit too, side by side
    python benchmarks/cli_latency.py --calls 5             # fewer rounds

Builds a small library once (lfw-mini, 4 people x 6 photos, buffalo_s, then cluster-dual), then times rounds
of real edits: every call changes something (`faces label-face`, `rename-person`, `merge-persons`, `reject`,
`unassign`, `label` of a cluster, `label --from-csv`), then `faces stats`, `faces export` and three one-line
errors (an unknown face, an unknown cluster, a face to reject that does not exist). --calls is the number of
rounds. Each checkout is timed cold (`python -m face_pipeline.cli`, a fresh interpreter importing everything)
and, where it has face_pipeline/warm_cli.py, warm (what the `face-pipeline` console command runs: the first call
cold, the next ones handed to the warm server it starts; see that module). With --compare the other commit runs
from a temporary git worktree against the same library (its schema must be the same; a command it lacks shows
as "fails").

Prints median and max wall seconds per command and the median CPU seconds (user + sys of the child: what the
command costs on an idle core, whatever else the machine runs), each also as a JSON line. Warm, that CPU figure
is the caller's alone: the command itself runs in a child of the warm server, which is not the caller's child.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import contextlib

from benchmarks.common import checkouts, default_dataset, emit  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def build_library(root: Path) -> tuple[dict[str, str], list[int]]:
    """Environment of a small clustered library, and its face ids (lowest first)."""
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
    env["DAGSTER_HOME"] = str(root / "dagster")
    for command in (["faces", "backfill"], ["faces", "cluster-dual"]):
        subprocess.run([sys.executable, "-m", "face_pipeline.cli", *command], env=env, check=True, capture_output=True)
    library = Library.from_settings(load_settings(data_dir=root / "data", photos_dir=photos))
    with library.db.session() as session:
        face_ids = [int(i) for i in session.scalars(select(FaceInstance.id).order_by(FaceInstance.id))]
    library.close()
    assert len(face_ids) >= 4, "the library has fewer than 4 faces"
    return env, face_ids


def cycle(faces: list[int], round_number: int, scratch: Path) -> list[tuple[str, list[str], bool]]:
    """One round: (name, argv, must succeed). Every edit changes something; names are new each round (and per
    checkout: `scratch` is the checkout's own folder) so no two active people share one."""
    f, g, h, k = (str(i) for i in faces[:4])
    r = f"{scratch.name} {round_number}"
    csv_file = scratch / f"names-{r}.csv"
    csv_file.write_text(f"face_id,name\n{f},Dan {r}\n{k},Eve {r}\n")
    return [
        ("label-face", ["faces", "label-face", f, f"Alice {r}"], True),
        ("rename-person", ["faces", "rename-person", f"Alice {r}", f"Alicia {r}"], True),
        ("label-face", ["faces", "label-face", g, f"Bob {r}"], True),
        ("merge-persons", ["faces", "merge-persons", f"Bob {r}", f"Alicia {r}"], True),
        ("reject", ["faces", "reject", g], True),
        ("unassign", ["faces", "unassign", f], True),
        ("label-face", ["faces", "label-face", h, f"Carol {r}"], True),
        ("unassign", ["faces", "unassign", h], True),
        ("label", ["faces", "label", f"unknown_noise_{h}", f"Carol {r}"], True),
        ("label --from-csv", ["faces", "label", "--from-csv", str(csv_file)], True),
        ("stats", ["faces", "stats"], True),
        ("export", ["faces", "export", "--output", str(scratch / "faces.csv")], True),
        ("error: label-face", ["faces", "label-face", "99999999", "Nobody"], False),
        ("error: label", ["faces", "label", "unknown_cluster_99999", "Nobody"], False),
        ("error: reject", ["faces", "reject", "99999999"], False),
    ]


@dataclass
class Timings:
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    failures: int = 0  # calls that should have succeeded and did not (or errors that did not exit 2)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def launchers(code: Path, warm_dir: Path) -> dict[str, tuple[list[str], dict[str, str]]]:
    """{mode: (command prefix, extra environment)}: `cold` as `python -m face_pipeline.cli` (or FACE_CLI_WARM=0)
    runs; `warm` as the `face-pipeline` console command runs, where the code has face_pipeline/warm_cli.py."""
    cold = [sys.executable, "-m", "face_pipeline.cli"]
    if not (code / "face_pipeline" / "warm_cli.py").exists():
        return {"cold": (cold, {})}
    warm = [sys.executable, "-m", "face_pipeline.warm_cli"]
    return {"cold": (cold, {}), "warm": (warm, {"FACE_CLI_WARM_DIR": str(warm_dir)})}


def stop_warm_server(warm_dir: Path) -> None:
    for pid_file in warm_dir.glob("*/*.pid"):
        with contextlib.suppress(ValueError, ProcessLookupError):
            os.kill(int(pid_file.read_text()), signal.SIGTERM)


def time_rounds(
    code: Path, env: dict[str, str], faces: list[int], rounds: int, scratch: Path, launcher: list[str]
) -> dict[str, Timings]:
    run_env = {**env, "PYTHONPATH": str(code)}
    measured: dict[str, Timings] = {}
    for r in range(rounds):
        for name, argv, must_succeed in cycle(faces, r, scratch):
            cpu_before, started = _children_cpu(), time.perf_counter()
            done = subprocess.run(
                [*launcher, *argv],
                env=run_env,
                cwd=code,
                capture_output=True,
                text=True,
            )
            timing = measured.setdefault(name, Timings())
            timing.wall.append(time.perf_counter() - started)
            timing.cpu.append(_children_cpu() - cpu_before)
            ok = done.returncode == 0 if must_succeed else done.returncode == 2 and "Traceback" not in done.stderr
            if not ok:
                timing.failures += 1
                if timing.failures == 1:
                    print(
                        f"{code.name}: {' '.join(argv)}: exit {done.returncode}: "
                        f"{(done.stderr or done.stdout).strip().splitlines()[-1:]}",
                        file=sys.stderr,
                    )
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20, help="rounds (each command's number of calls)")
    parser.add_argument("--compare", metavar="REV", help="also time this commit (a temporary git worktree)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cli-latency-") as tmp:
        root = Path(tmp)
        env, faces = build_library(root / "library")
        with checkouts(args.compare, root) as sides:
            measured = {}
            for rev, code in sides.items():
                warm_dir = root / f"warm-{rev[:8]}"
                for mode, (launcher, extra_env) in launchers(code, warm_dir).items():
                    scratch = root / f"{rev[:8]}-{mode}"
                    scratch.mkdir()
                    try:
                        timed = time_rounds(code, {**env, **extra_env}, faces, args.calls, scratch, launcher)
                    finally:
                        stop_warm_server(warm_dir)
                    measured[rev, mode] = timed
            header = "".join(f"{rev[:8] + ' ' + mode + ' median/max, cpu s':>36s}" for rev, mode in measured)
            print(f"{'command':20s}{header}")
            for name in measured[next(reversed(measured))]:
                cells = []
                for rev, mode in measured:
                    timing = measured[rev, mode][name]
                    median, worst, cpu = (
                        statistics.median(timing.wall),
                        max(timing.wall),
                        statistics.median(timing.cpu),
                    )
                    failed = f"fails {timing.failures}/{len(timing.wall)}" if timing.failures else ""
                    cells.append(f"{failed:>12s}{median:>8.2f} / {worst:5.2f}, {cpu:5.2f}")
                    emit(
                        "cli_latency",
                        command=name,
                        code=rev,
                        mode=mode,
                        calls=len(timing.wall),
                        median_s=round(median, 3),
                        max_s=round(worst, 3),
                        median_cpu_s=round(cpu, 3),
                        failures=timing.failures,
                    )
                print(f"{name:20s}" + "".join(cells))


if __name__ == "__main__":
    main()
