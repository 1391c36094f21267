"""Accuracy of dual-mode clustering on a folder-per-person set played as a growing library (issue 4).

    python benchmarks/accuracy.py                                   # lfw-dev, 3 rounds of 15 clusters
    python benchmarks/accuracy.py --data-dir .cache/eval-lfw-dev    # keep phase A's ingest for the next run
    python benchmarks/accuracy.py --person-threshold 0.94 --eps 0.06  # settings other than the defaults
    python benchmarks/accuracy.py --train --data-dir .cache/eval-lfw-dev  # label -> train -> reassign rounds

The same service as `face-pipeline faces evaluate` (face_pipeline_eval/evaluation.py): phase A ingest, round 0
clustering, R rounds of a simulated user naming the largest unknown clusters and rejecting the faces that
are someone else, phase B arrivals; each stage scored, with plain HDBSCAN and Immich's algorithm on the
same vectors. Prints the markdown table, then one JSON line per row (bench "accuracy").
On 2 shared cores lfw-dev took 11 minutes (detection: 361 s for phase A, 270 s for phase B; everything
else ~20 s); with --data-dir a second run starts from phase A's ingest snapshot (measured: 187 s).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import default_dataset, emit, peak_rss_mb  # noqa: E402
from face_pipeline_eval.evaluation import evaluate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=None, help="default: ../shared/datasets/lfw-dev")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clusters-per-round", type=int, default=15)
    parser.add_argument("--data-dir", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--person-threshold", type=float, default=None, help="FACE_PERSON_MATCH_THRESHOLD")
    parser.add_argument("--person-margin", type=float, default=None, help="FACE_PERSON_MATCH_MARGIN")
    parser.add_argument("--eps", type=float, default=None, help="FACE_UNKNOWN_EPS")
    parser.add_argument("--min-cluster-size", type=int, default=None, help="FACE_UNKNOWN_MIN_CLUSTER_SIZE")
    parser.add_argument(
        "--train", action="store_true", help="train -> reassign after each round (stages: after 1st training, ...)"
    )
    args = parser.parse_args()
    overrides: dict[str, Any] = {
        key: value
        for key, value in (
            ("person_match_threshold", args.person_threshold),
            ("person_match_margin", args.person_margin),
            ("unknown_eps", args.eps),
            ("unknown_min_cluster_size", args.min_cluster_size),
        )
        if value is not None
    }
    started = time.perf_counter()
    report = evaluate(
        args.dataset or default_dataset("lfw-dev"),
        rounds=args.rounds,
        clusters_per_round=args.clusters_per_round,
        data_dir=args.data_dir,
        settings_overrides=overrides,
        train=args.train,
    )
    print(report.markdown())
    print(f"\ningest: {report.ingest}\ntotal {time.perf_counter() - started:.0f} s, peak RSS {peak_rss_mb():.0f} MB\n")
    for row in report.json_rows():
        bench = row.pop("bench")
        extra = {"settings": report.params} if row["method"] == "pipeline" else {}
        emit(bench, **row, **extra)


if __name__ == "__main__":
    main()
