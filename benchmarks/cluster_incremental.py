"""A big library's daily run: 5,000 new faces join N known ones, against a full re-cluster of the N.

    python benchmarks/cluster_incremental.py                      # N = 50K, 200K, 1M
    python benchmarks/cluster_incremental.py --sizes 50000 200000

Domain code only (no SQL, no vector store): synthetic 512-d ArcFace-like faces
(`face_pipeline_eval.synthetic`), N + 5,000 of them, 5,000 picked at random as the new ones; ~5% of the
known faces of the 100 people with most faces are user-confirmed; grouping by the ArcFace spaces' defaults
(link rule: DBSCAN, eps 0.6, groups of 2+).

Per N, two fresh processes, so each peak RSS is its own (full_peak_rss_mb: from the data in memory on,
the generator's temporaries not counted):
- full: yesterday's run over the N known faces: supervised assignment to the confirmed people's prototypes,
  then `cluster_unknown` of everybody else (full_s; the FAISS k-NN graph inside). Then the inverted file of
  that unknown pool (`FaceIndex.build`, index_build_s) is serialised to a file: the state a daily run
  would keep (this benchmark's stand-in for storage, which does not keep it yet).
- daily: loads the index, yesterday's labels and the prototypes, then times what the new faces need:
  assignment of the 5,000, the k nearest known faces of the unassigned ones (`FaceIndex.search`),
  `extend_clusters`, and adding them to the index (daily_s; load_s apart). It reads no other vector.
Both report BCubed F and purity of the final grouping (known people as groups, then clusters) against the
true identities; "changed" counts the known faces whose group changed.
Goals (issue 14): daily <= 60 s and <= 4 GB at 1M; full re-cluster of 1M <= 10 min.

    python benchmarks/cluster_incremental.py --service --sizes 50000 200000

--service measures the real pipeline instead: SQLite and the embedded vector store, the services the
Dagster assets run (person_centroids, supervised_assignments, unknown_clusters via `run_cluster_dual`). A
library of N + 5,000 synthetic faces is built as benchmarks/cluster.py builds it (5% confirmed), then 5,000
unconfirmed faces are taken out; they arrive later as detection writes new faces (`insert_faces`, vectors
upserted). Each phase is its own process:
- full: the first cluster-dual over the N faces (nothing kept yet: full; it writes every face's group and
  keeps the unknown pool's index), with --refull also a forced full re-cluster (FACE_CLUSTER_MODE=full);
- arrive: the 5,000 faces are written (not timed as part of the run);
- daily: cluster-dual again (FACE_CLUSTER_MODE=auto): incremental, reading only the new faces' vectors.
Peak RSS is each run's own (VmHWM reset once the library is open); BCubed F and purity score the cluster ids
written to SQL against the true identities (after the full run over N faces, after the daily run over all).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import emit, peak_rss_mb  # noqa: E402

NEW_FACES = 5000
EPS, THRESHOLD, MARGIN = 0.6, 0.45, 0.02  # the ArcFace spaces' defaults (domain.assignment)
RULE: dict[str, Any] = {"method": "dbscan", "min_cluster_size": 2, "eps": EPS, "min_links": 1, "min_samples": 2}


def _library(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """vectors (n + 5000, 512), identities, rows of the known faces, rows of the new ones."""
    from face_pipeline_eval.synthetic import synthetic_faces

    vectors, identities = synthetic_faces(n + NEW_FACES, 512, seed=0)
    new = np.sort(np.random.default_rng(1).permutation(len(vectors))[:NEW_FACES])
    return vectors, identities, np.setdiff1d(np.arange(len(vectors)), new), new


def _confirmed(identities: np.ndarray) -> np.ndarray:
    """Known rows a user confirmed: a share of the faces of the 100 people with the most faces."""
    people, sizes = np.unique(identities, return_counts=True)
    top = people[np.argsort(-sizes, kind="stable")[:100]]
    per_person = max(1, round(0.05 * len(identities) / 100))
    rng = np.random.default_rng(2)
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(identities == p))[:per_person] for p in top]))


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith(f"{field}:"))


def _reset_peak_rss() -> float:
    """Current RSS in MiB, after making it the process's peak (Linux: clear_refs 5 resets VmHWM), so that
    the peak read later (VmHWM) is the work's, not the generation's."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    return _status_mb("VmRSS")


def _quality(truth: np.ndarray, person: np.ndarray, cluster: np.ndarray) -> dict[str, float]:
    """person: (n,) known person per face or -1; cluster: (n,) group among the rest or -1."""
    from face_pipeline_eval.cluster_metrics import evaluate_clustering

    offset = int(person.max(initial=-1)) + 1
    labels = np.where(person >= 0, person, np.where(cluster >= 0, cluster + offset, -1))
    report = evaluate_clustering(truth, labels)
    return {"bcubed_f": round(report.bcubed_f1, 4), "purity": round(report.purity, 4)}


def full(n: int, folder: Path) -> dict[str, Any]:
    from face_pipeline.domain.assignment import assign_to_known_people, build_prototypes
    from face_pipeline.domain.clustering import cluster_unknown
    from face_pipeline.domain.neighbors import FaceIndex

    vectors, identities, known, new = _library(n)
    x, truth = vectors[known], identities[known]
    confirmed = _confirmed(truth)
    np.save(folder / "new_vectors.npy", vectors[new])
    np.save(folder / "new_identities.npy", identities[new])
    del vectors
    rss_data = _reset_peak_rss()
    started = time.perf_counter()
    prototypes = build_prototypes(x[confirmed], truth[confirmed])
    assigned = assign_to_known_people(x, np.arange(len(x)), prototypes, THRESHOLD, MARGIN).person_index
    assigned[confirmed] = np.searchsorted(prototypes.person_ids, truth[confirmed])
    pool = np.flatnonzero(assigned < 0)
    assign_s = time.perf_counter() - started
    labels = cluster_unknown(x[pool], **RULE)
    full_s = time.perf_counter() - started
    peak_full = _status_mb("VmHWM")
    started = time.perf_counter()
    index = FaceIndex.build(x[pool])
    np.save(folder / "index.npy", index.to_bytes())
    index_s = time.perf_counter() - started
    np.savez(folder / "yesterday.npz", pool=pool, labels=labels, assigned=assigned, truth=truth)
    np.savez(folder / "prototypes.npz", **{k: getattr(prototypes, k) for k in prototypes.__dataclass_fields__})
    cluster = np.full(len(x), -1, dtype=np.int64)
    cluster[pool] = labels
    return {
        "known_faces": len(x),
        "pool": len(pool),
        "full_s": round(full_s, 1),
        "full_assign_s": round(assign_s, 1),
        "index_build_s": round(index_s, 1),
        "full_rss_data_mb": round(rss_data),
        "full_peak_rss_mb": round(peak_full),
        **{f"full_{k}": v for k, v in _quality(truth, assigned, cluster).items()},
    }


def daily(folder: Path) -> dict[str, Any]:
    from face_pipeline.domain.assignment import Prototypes, assign_to_known_people
    from face_pipeline.domain.clustering import extend_clusters
    from face_pipeline.domain.neighbors import FaceIndex

    started = time.perf_counter()
    index = FaceIndex.from_bytes(np.load(folder / "index.npy", mmap_mode="r"))
    with np.load(folder / "yesterday.npz") as day:
        pool, labels, assigned, truth = day["pool"], day["labels"], day["assigned"], day["truth"]
    with np.load(folder / "prototypes.npz", allow_pickle=True) as saved:
        prototypes = Prototypes(**{k: saved[k] for k in saved.files})
    new_x, new_truth = np.load(folder / "new_vectors.npy"), np.load(folder / "new_identities.npy")
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    person = assign_to_known_people(new_x, np.arange(len(new_x)), prototypes, THRESHOLD, MARGIN).person_index
    assign_s = time.perf_counter() - started
    unknown = np.flatnonzero(person < 0)
    found, sims = index.search(new_x[unknown], 15)
    search_s = time.perf_counter() - started - assign_s
    extension = extend_clusters(labels, new_x[unknown], found, sims, EPS)
    extend_s = time.perf_counter() - started - assign_s - search_s
    index.add(new_x[unknown])
    daily_s = time.perf_counter() - started
    peak = peak_rss_mb(include_children=False)

    labels = labels.copy()
    labels[extension.changed_rows] = extension.changed_labels
    cluster = np.full(len(truth), -1, dtype=np.int64)
    cluster[pool] = labels
    new_cluster = np.full(len(new_x), -1, dtype=np.int64)
    new_cluster[unknown] = extension.new_labels
    quality = _quality(np.r_[truth, new_truth], np.r_[assigned, person], np.r_[cluster, new_cluster])
    return {
        "new_faces": len(new_x),
        "new_assigned": int((person >= 0).sum()),
        "new_clustered": int((extension.new_labels >= 0).sum()),
        "changed": len(extension.changed_rows),
        "load_s": round(load_s, 2),
        "daily_s": round(daily_s, 2),
        "assign_s": round(assign_s, 2),
        "search_s": round(search_s, 2),
        "extend_s": round(extend_s, 2),
        "daily_peak_rss_mb": round(peak),
        **{f"daily_{k}": v for k, v in quality.items()},
    }


def _child(*args: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- the real pipeline (--service) ------------------------------------------------------------------------


def service_setup(n: int, folder: Path) -> dict[str, Any]:
    """benchmarks/cluster.py's library of n + 5,000 faces, less 5,000 unconfirmed ones kept for later."""
    from sqlalchemy import delete, select

    from benchmarks.cluster import SYNTHETIC_SPACE, setup
    from face_pipeline.storage.models import FaceInstance

    built = setup("synthetic", n + NEW_FACES, folder)
    context = _open(folder)
    with context.db.session() as session:
        rows = session.execute(
            select(FaceInstance.id, FaceInstance.image_id).where(FaceInstance.user_confirmed.is_(False))
        ).all()
        ids = np.array([r.id for r in rows], dtype=np.int64)
        images = np.array([r.image_id for r in rows], dtype=np.int64)
        picked = np.sort(np.random.default_rng(3).permutation(len(ids))[:NEW_FACES])
        later, later_images = ids[picked], images[picked]
        for start in range(0, NEW_FACES, 1000):
            chunk = later[start : start + 1000].tolist()
            session.execute(delete(FaceInstance).where(FaceInstance.id.in_(chunk)))
    with context.vectors() as store:
        vectors = store.fetch(SYNTHETIC_SPACE, later)
        store.delete(SYNTHETIC_SPACE, later)
    context.close()
    identities = np.load(folder / "bench_identities.npy")  # by face id - 1
    np.savez(folder / "later.npz", vectors=vectors, images=later_images, identities=identities[later - 1])
    everyone = np.arange(1, len(identities) + 1)
    kept = np.setdiff1d(everyone, later)
    np.save(folder / "truth.npy", np.c_[kept, identities[kept - 1]])
    return {
        "faces": n,
        "confirmed": built["confirmed"],
        "setup_s": sum(v for k, v in built.items() if k.endswith("_s")),
    }


def _open(folder: Path, **settings: Any) -> Any:
    from face_pipeline.services.library import Library
    from face_pipeline.settings import load_settings

    return Library.from_settings(
        load_settings(photos_dir=folder / "photos", data_dir=folder, database_url=None, qdrant_url=None, **settings)
    )


def _timed_cluster_dual(folder: Path, mode: str) -> dict[str, Any]:
    """One cluster-dual run through the services, in this (fresh) process; figures of that run alone."""
    import faiss  # noqa: F401  (imports a run pays once, outside the figures)
    import scipy.sparse.csgraph  # noqa: F401

    import face_pipeline.storage.vector_backends  # noqa: F401
    from face_pipeline.services.cluster_dual import run_cluster_dual

    context = _open(folder, cluster_mode=mode)
    rss_before = _reset_peak_rss()
    started = time.perf_counter()
    with context.vectors() as vectors:
        dual = run_cluster_dual(context, vectors)
    seconds = time.perf_counter() - started
    context.close()
    return {
        "seconds": round(seconds, 2),
        "centroids_s": round(dual.centroids.seconds, 2),
        "assign_s": round(dual.assignments.seconds, 2),
        "cluster_s": round(dual.clusters.seconds, 2),
        "assign": dual.assignments.reason,
        "cluster": dual.clusters.reason,
        "candidates": dual.assignments.candidates,
        "assigned": dual.assignments.assigned,
        "cluster_changed": dual.clusters.changed,
        "rss_before_mb": round(rss_before),
        "peak_rss_mb": round(_status_mb("VmHWM")),
    }


def service_arrive(folder: Path) -> dict[str, Any]:
    """The 5,000 faces arrive as detection writes them: rows with a singleton cluster each, then vectors."""
    from benchmarks.cluster import SYNTHETIC_SPACE
    from face_pipeline.services.detection import insert_faces

    later = np.load(folder / "later.npz")
    context = _open(folder)
    started = time.perf_counter()
    with context.db.session() as session:
        rows: list[dict[str, object]] = [
            {
                "image_id": int(i),
                "bbox_x": 0,
                "bbox_y": 0,
                "bbox_w": 100,
                "bbox_h": 100,
                "detection_score": 1.0,
                "quality": 1.0,
                "embedding_space": SYNTHETIC_SPACE,
            }  # fmt: skip
            for i in later["images"].tolist()
        ]
        face_ids = insert_faces(session, rows)
    with context.vectors() as store:
        payloads = [{"image_id": int(i), "person_id": None, "cluster_id": f"unknown_noise_{f}"}
                    for i, f in zip(later["images"].tolist(), face_ids.tolist(), strict=True)]  # fmt: skip
        store.upsert(SYNTHETIC_SPACE, face_ids, later["vectors"], payloads)
    context.close()
    truth = np.load(folder / "truth.npy")
    np.save(folder / "truth.npy", np.r_[truth, np.c_[face_ids, later["identities"]]])
    return {"arrive_s": round(time.perf_counter() - started, 2)}


def _written_quality(folder: Path) -> dict[str, float]:
    """BCubed F and purity of the cluster ids in SQL against the true identities (noise: alone)."""
    import sqlite3

    from face_pipeline_eval.cluster_metrics import evaluate_clustering

    truth = np.load(folder / "truth.npy")
    with sqlite3.connect(folder / "face_pipeline.db") as db:
        rows = db.execute("SELECT id, cluster_id FROM face_instances ORDER BY id").fetchall()
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    names = np.array([r[1] for r in rows], dtype=object)
    order = np.argsort(truth[:, 0])
    identity = truth[order, 1][np.searchsorted(truth[order, 0], ids)]
    labels = np.unique(names, return_inverse=True)[1].astype(np.int64)
    labels[np.char.startswith(names.astype(str), "unknown_noise_")] = -1
    report = evaluate_clustering(identity, labels)
    return {"bcubed_f": round(report.bcubed_f1, 4), "purity": round(report.purity, 4)}


def service_size(n: int, refull: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-incremental-service-", dir=REPO / ".cache") as tmp:
        folder = Path(tmp)
        built = _child("--service-setup", str(n), tmp)
        first = _child("--service-run", "auto", tmp)
        figures: dict[str, Any] = {"library": n, **built}
        figures.update({f"full_{k}": v for k, v in first.items()})
        figures.update({f"full_{k}": v for k, v in _written_quality(folder).items()})
        if refull:
            again = _child("--service-run", "full", tmp)
            figures.update({f"refull_{k}": v for k, v in again.items()})
        figures.update(_child("--service-arrive", tmp))
        daily_run = _child("--service-run", "auto", tmp)
        figures.update({f"daily_{k}": v for k, v in daily_run.items()})
        figures.update({f"daily_{k}": v for k, v in _written_quality(folder).items()})
    print(
        f"{n:>9,} faces  full {figures['full_seconds']:7.1f} s {figures['full_peak_rss_mb']:6,} MB  "
        f"F {figures['full_bcubed_f']:.3f} | daily {figures['daily_seconds']:6.1f} s "
        f"{figures['daily_peak_rss_mb']:6,} MB  F {figures['daily_bcubed_f']:.3f}  ({figures['daily_cluster']})",
        flush=True,
    )
    emit("cluster_incremental_service", **figures)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("--full", "--daily"):
        folder = Path(sys.argv[-1])
        result = full(int(sys.argv[2]), folder) if sys.argv[1] == "--full" else daily(folder)
        print(json.dumps(result))
        return
    if len(sys.argv) > 1 and sys.argv[1].startswith("--service-"):
        phase, folder = sys.argv[1], Path(sys.argv[-1])
        if phase == "--service-setup":
            print(json.dumps(service_setup(int(sys.argv[2]), folder)))
        elif phase == "--service-run":
            print(json.dumps(_timed_cluster_dual(folder, sys.argv[2])))
        else:
            print(json.dumps(service_arrive(folder)))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[50_000, 200_000, 1_000_000])
    parser.add_argument("--service", action="store_true", help="the real services, SQLite and vector store")
    parser.add_argument("--refull", action="store_true", help="--service: also time a forced full re-cluster")
    args = parser.parse_args()
    (REPO / ".cache").mkdir(exist_ok=True)
    for n in args.sizes:
        if args.service:
            service_size(n, args.refull)
            continue
        with tempfile.TemporaryDirectory(prefix="bench-incremental-", dir=REPO / ".cache") as tmp:
            yesterday = _child("--full", str(n), tmp)
            today = _child("--daily", tmp)
        emit("cluster_incremental", library=n, **yesterday, **today)


if __name__ == "__main__":
    main()
