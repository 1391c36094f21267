"""Speed, memory and quality of the dual-mode domain code (clustering and assignment), no storage.

    python benchmarks/cluster_domain.py                 # everything below
    python benchmarks/cluster_domain.py --lfw           # real dlib vectors: every method and both baselines
    python benchmarks/cluster_domain.py --sizes 10000 50000 200000   # synthetic, default method

Real vectors come from .cache/lfw-dev-dlib.npz (vectors, identities), written by the lead's embedding
benchmark; that part is skipped when the file is missing. Synthetic sizes each run in a fresh process that
loads the vectors from a file, so its peak memory (ru_maxrss) is that size's alone; "rss_imports_and_data"
is the process before clustering (sklearn and faiss imports, plus the vectors; torch is no longer loaded).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import lfw_dev_embeddings  # noqa: E402
from face_pipeline.domain.assignment import (  # noqa: E402
    assign_to_known_people,
    build_prototypes,
    thresholds_for_space,
)
from face_pipeline.domain.clustering import cluster_unknown  # noqa: E402
from face_pipeline.domain.metrics import (  # noqa: E402
    assignment_precision,
    false_accepts_per_1000,
    person_recall,
)
from face_pipeline_eval.baselines import immich_baseline, plain_hdbscan_baseline  # noqa: E402
from face_pipeline_eval.cluster_metrics import evaluate_clustering  # noqa: E402
from face_pipeline_eval.synthetic import synthetic_faces  # noqa: E402


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _row(name: str, seconds: float, truth: np.ndarray, labels: np.ndarray) -> str:
    r = evaluate_clustering(truth, labels)
    return (
        f"{name:38s} {seconds:7.2f} s  F {r.bcubed_f1:.3f} (P {r.bcubed_precision:.3f} R {r.bcubed_recall:.3f})"
        f"  pairF {r.pairwise_f1:.3f}  purity {r.purity:.3f}  strangers {r.strangers_in_clusters:.3f}"
        f"  clusters {r.clusters} / {r.identities_multi} ids"
    )


def lfw(with_plain: bool) -> None:
    data = lfw_dev_embeddings("dlib")
    x, truth = data["vectors"].astype(np.float32), data["identities"]
    print(f"lfw-dev dlib: {len(x)} faces, {len(np.unique(truth))} identities")
    eps = thresholds_for_space("dlib_resnet_v1").cluster_eps
    cluster_unknown(x[:100], eps=eps)  # imports and warm-up outside the timings
    runs = [
        (f"hdbscan (default, eps {eps})", lambda: cluster_unknown(x, eps=eps)),
        ("hdbscan eps 0.06", lambda: cluster_unknown(x, eps=0.06)),
        ("hdbscan, no member rule", lambda: cluster_unknown(x, eps=None)),
        ("hdbscan, ivf search forced", lambda: cluster_unknown(x, eps=eps, knn_method="ivf")),
        ("dbscan eps 0.05", lambda: cluster_unknown(x, "dbscan", eps=0.05)),
        ("agglomerative average eps 0.06", lambda: cluster_unknown(x, "agglomerative", eps=0.06)),
        ("baseline immich 0.06", lambda: immich_baseline(x, 0.06)),
    ]
    if with_plain:
        runs.append(("baseline plain hdbscan (raw 128-d)", lambda: plain_hdbscan_baseline(x)))
    for name, run in runs:
        started = time.perf_counter()
        labels = run()
        print(_row(name, time.perf_counter() - started, truth, labels), flush=True)

    dual(x, truth)
    # supervised: people with >= 4 photos are named from half their photos; everything else is queried
    rng = np.random.default_rng(0)
    ids, counts = np.unique(truth, return_counts=True)
    named = ids[counts >= 4]
    labelled = np.zeros(len(x), bool)
    for person in named:  # benchmark setup, a loop over people
        rows = np.flatnonzero(truth == person)
        labelled[rng.permutation(rows)[: len(rows) // 2]] = True
    query = ~labelled
    limits = thresholds_for_space("dlib_resnet_v1")
    for exemplars in (0, 5):
        protos = build_prototypes(x[labelled], truth[labelled], max_exemplars=exemplars)
        started = time.perf_counter()
        result = assign_to_known_people(x[query], np.arange(query.sum()), protos, limits.threshold, limits.margin)
        seconds = time.perf_counter() - started
        predicted = np.where(result.person_index >= 0, protos.person_ids[np.maximum(result.person_index, 0)], -1)
        predicted = predicted.astype(object)
        t = truth[query].astype(object)
        print(
            f"assignment dlib 0.95/0.02, {exemplars} exemplars: {seconds:.2f} s  precision "
            f"{assignment_precision(predicted, t):.4f}  recall {person_recall(predicted, t, named):.3f}  "
            f"false accepts/1000 strangers {false_accepts_per_1000(predicted, t, named):.1f}"
        )


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def dual(x: np.ndarray, truth: np.ndarray) -> None:
    """Both modes as the pipeline runs them: name some people, assign, cluster what is left."""
    limits = thresholds_for_space("dlib_resnet_v1")
    ids, counts = np.unique(truth, return_counts=True)
    for min_photos, share in ((4, 0.5), (10, 0.3), (None, 0.0)):
        rng = np.random.default_rng(0)
        named = ids[counts >= min_photos] if min_photos else ids[:0]
        labelled = np.zeros(len(x), bool)
        for person in named:  # benchmark setup, a loop over people
            rows = np.flatnonzero(truth == person)
            labelled[rng.permutation(rows)[: max(1, int(len(rows) * share))]] = True
        final = np.full(len(x), -1, dtype=np.int64)
        query = np.flatnonzero(~labelled)
        pool, offset = query, 0
        started = time.perf_counter()
        if labelled.any():
            protos = build_prototypes(x[labelled], truth[labelled])
            result = assign_to_known_people(x[query], query, protos, limits.threshold, limits.margin)
            final[labelled] = np.searchsorted(protos.person_ids.astype(truth.dtype), truth[labelled])
            hit = result.person_index >= 0
            final[query[hit]] = result.person_index[hit]
            pool, offset = query[~hit], len(protos.person_ids)
        labels = cluster_unknown(x[pool], eps=limits.cluster_eps)
        final[pool] = np.where(labels >= 0, labels + offset, -1)
        seconds = time.perf_counter() - started
        what = f"{len(named)} people named ({share:.0%} of their photos)" if len(named) else "nobody named"
        print(_row(f"dual mode, {what}", seconds, truth, final), flush=True)


def one_size(n: int, folder: Path) -> dict[str, float]:
    import faiss  # noqa: F401  (import cost kept out of the figures)
    import sklearn.cluster  # noqa: F401

    x = np.load(folder / f"vectors_{n}.npy")
    truth = np.load(folder / f"identities_{n}.npy")
    before = _current_rss_mb()
    started = time.perf_counter()
    labels = cluster_unknown(x, eps=0.5)
    seconds = time.perf_counter() - started
    peak = _rss_mb()
    r = evaluate_clustering(truth, labels)
    named = np.unique(truth)[:: max(1, len(np.unique(truth)) // 500)]  # ~500 named people
    confirmed = np.isin(truth, named) & (np.arange(n) % 3 == 0)
    protos = build_prototypes(x[confirmed], truth[confirmed])
    started = time.perf_counter()
    assign_to_known_people(x, np.arange(n) // 2, protos, 0.45, 0.05)
    assign_seconds = time.perf_counter() - started
    return {
        "n": n,
        "cluster_s": round(seconds, 2),
        "rss_imports_and_data_mb": round(before),
        "rss_peak_mb": round(peak),
        "bcubed_f1": round(r.bcubed_f1, 3),
        "purity": round(r.purity, 3),
        "assign_s": round(assign_seconds, 2),
        "named_people": len(protos.person_ids),
        "prototypes": len(protos.vectors),
    }


def sizes(ns: list[int]) -> None:
    print("synthetic 512-d, hdbscan default (eps 0.5), one process per size:")
    with tempfile.TemporaryDirectory() as tmp:
        for n in ns:
            x, truth = synthetic_faces(n, dim=512, seed=0)
            np.save(Path(tmp) / f"vectors_{n}.npy", x)
            np.save(Path(tmp) / f"identities_{n}.npy", truth)
            del x, truth
            out = subprocess.run(
                [sys.executable, __file__, "--one", str(n), "--folder", tmp], capture_output=True, text=True, check=True
            ).stdout
            print("  " + out.strip().splitlines()[-1], flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lfw", action="store_true", help="real dlib vectors only")
    parser.add_argument("--plain", action="store_true", help="also the plain HDBSCAN baseline (slow)")
    parser.add_argument("--sizes", type=int, nargs="*", help="synthetic sizes only")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_size(args.one, args.folder)))
        return
    if args.lfw or args.sizes is None:
        lfw(with_plain=args.plain or args.sizes is None)
    if args.sizes or not args.lfw:
        sizes(args.sizes or [10_000, 50_000, 200_000])


if __name__ == "__main__":
    main()
