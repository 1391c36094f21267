"""Fault probe: kill real `face-pipeline` processes (SIGKILL at crash points, or at a random moment) again and
again, run the command again, and count what was lost, duplicated, reverted or stuck.

    python benchmarks/fault_probe.py [--repeats 3] [--people 6 --photos-each 6]

Prints one row per fault kind (text and one JSON line each): tries, killed, recovered, and the four counts
that must stay 0. Checks after each recovery: the faces of every photo equal an uninterrupted run's (lost /
duplicated), user decisions identical to before (reverted), the rerun finished by itself within 300 s and no
run is left STARTED with a pool slot (stuck), and `faces doctor` finds SQL and vectors in step after the daily
run's cluster-dual.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

from face_pipeline_tests.photo_corpus import copy_people
from face_pipeline_tests.test_crash_safety import _cli, _decisions, _env, _faces_by_photo, label_five_people

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "lfw-mini"


@dataclass
class Row:
    fault: str
    tries: int = 0
    killed: int = 0
    recovered: int = 0
    lost_or_duplicated: int = 0
    reverted: int = 0
    stuck: int = 0
    drift_left: int = 0


def _killed_at_random(env: dict[str, str], args: list[str], rng: random.Random) -> bool:
    process = subprocess.Popen(
        [sys.executable, "-m", "face_pipeline.cli", "faces", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(rng.uniform(3.0, 9.0))  # start-up takes ~3 s: most kills land in the work itself
    if process.poll() is not None:
        return False
    process.send_signal(signal.SIGKILL)
    process.wait()
    return True


def _stuck_or_failed(result: subprocess.CompletedProcess[str] | None) -> bool:
    return result is None or result.returncode != 0


def _rerun(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str] | None:
    try:
        return _cli(env, *args)
    except subprocess.TimeoutExpired:
        return None


def _labelled_library(root: Path, photos: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = _env(root, photos)
    _cli(env, "backfill")
    label_five_people(env, monkeypatch)
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--people", type=int, default=6)
    parser.add_argument("--photos-each", type=int, default=6)
    parser.add_argument("--dataset", type=Path, default=SHARED)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    monkeypatch = pytest.MonkeyPatch()
    rows: dict[str, Row] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        photos = root / "photos"
        copy_people(args.dataset, photos, people=args.people, photos_each=args.photos_each)
        reference = _env(root / "reference", photos)
        _cli(reference, "backfill")
        expected = _faces_by_photo(reference, monkeypatch)

        # Ingest: a fresh library each time, killed once, then the plain command.
        backfill_faults = [f"detect_before_commit:{n}" for n in (1, 2, 3)]
        backfill_faults += [f"detect_batch_committed:{n}" for n in (1, 2)]
        for attempt in range(args.repeats):
            for fault in [*backfill_faults, "random"]:
                row = rows.setdefault(f"backfill / {fault.split(':')[0]}", Row(f"backfill / {fault.split(':')[0]}"))
                env = _env(root / f"ingest-{attempt}-{fault.replace(':', '-')}", photos)
                row.tries += 1
                if fault == "random":
                    row.killed += _killed_at_random(env, ["backfill"], rng)
                else:
                    row.killed += _cli(env, "backfill", crash_at=fault).returncode == -signal.SIGKILL
                rerun = _rerun(env, "backfill")
                row.stuck += _stuck_or_failed(rerun)
                row.recovered += not _stuck_or_failed(rerun)
                row.lost_or_duplicated += _faces_by_photo(env, monkeypatch) != expected
                daily = _rerun(env, "cluster-dual")
                row.drift_left += _stuck_or_failed(daily) or _cli(env, "doctor").returncode != 0

        # Grouping, reassigning and training on one labelled library: decisions must come through every kill.
        env = _labelled_library(root / "labelled", photos, monkeypatch)
        before = _decisions(env, monkeypatch)
        later_faults = [
            ("cluster-dual", "cluster_before_payloads", ["cluster-dual"]),
            ("cluster-dual", "assign_before_payloads", ["cluster-dual"]),
            ("cluster-dual", "random", ["cluster-dual"]),
            ("reassign", "assign_before_payloads", ["reassign"]),
            ("train-matching", "train_checkpoint_saved", ["train-matching", "--epochs", "2"]),
            ("train-matching", "random", ["train-matching", "--epochs", "2"]),
        ]
        for _ in range(args.repeats):
            for command, fault, argv in later_faults:
                row = rows.setdefault(f"{command} / {fault}", Row(f"{command} / {fault}"))
                row.tries += 1
                if fault == "random":
                    row.killed += _killed_at_random(env, argv, rng)
                else:
                    row.killed += _cli(env, *argv, crash_at=fault).returncode == -signal.SIGKILL
                rerun = _rerun(env, *argv)
                row.stuck += _stuck_or_failed(rerun)
                row.recovered += not _stuck_or_failed(rerun)
                row.reverted += _decisions(env, monkeypatch) != before
                daily = _rerun(env, "cluster-dual")
                row.drift_left += _stuck_or_failed(daily) or _cli(env, "doctor").returncode != 0
                row.lost_or_duplicated += _faces_by_photo(env, monkeypatch) != expected

    totals = Counter[str]()
    print(f"{'fault':42s} tries killed recovered lost/dup reverted stuck drift")
    for row in rows.values():
        print(
            f"{row.fault:42s} {row.tries:5d} {row.killed:6d} {row.recovered:9d} {row.lost_or_duplicated:8d} "
            f"{row.reverted:8d} {row.stuck:5d} {row.drift_left:5d}"
        )
        totals.update({k: v for k, v in asdict(row).items() if isinstance(v, int)})
    for row in rows.values():
        print(json.dumps({"benchmark": "fault_probe", **asdict(row)}))
    print(json.dumps({"benchmark": "fault_probe", "fault": "all", **totals}))


if __name__ == "__main__":
    main()
