"""cluster-dual end to end: read vectors, prototypes, supervised assignment, unknown clustering, write back,
through the real services on a real SQLite database and the real embedded vector store.

    python benchmarks/cluster.py                          # 10K, 50K, 200K synthetic faces and lfw-dev
    python benchmarks/cluster.py --sizes 50000 --no-lfw
    python benchmarks/cluster.py --sizes 50000 --compare e4e16a2 --rounds 3   # old and new side by side

Libraries: `face_pipeline_eval.synthetic.synthetic_faces` (512-d, ArcFace-like: ~0.6-0.75 cosine within a person,
~0.05 between, most people once), or lfw-dev's real dlib vectors (.cache/lfw-dev-dlib.npz). ~5% of the
faces are confirmed by a user for ~100 people (the people with the most faces). Setup writes SQL rows with
bulk inserts and upserts the vectors into the store; it is timed separately and not part of the figures.

Each size runs in two fresh processes: one builds the library, one runs cluster-dual twice (a first run
that names every face, then a steady-state run that changes almost nothing). The second process's
ru_maxrss is the peak RSS of cluster-dual alone, so sizes do not contaminate each other. It imports what
cluster-dual needs before timing (imports_s; rss_before_mb is that process before any face is read), and
also samples RssAnon (peak_anon_mb): ru_maxrss counts the vector store's memory-mapped files and shared
libraries too. scikit-learn is not imported ahead: the ArcFace spaces' grouping (DBSCAN with pairs) no longer
loads it (~130 MB, 1-1.5 s), and where a space's grouping does (HDBSCAN: dlib, lfw-dev) the first run pays it.

Quality: after both runs the driver reads every face's cluster id from the database and scores it against
the true identities (BCubed F, purity; a person's faces form one group, unknown_noise_* faces are alone),
so a faster neighbour search that groups worse shows here.

With --compare REV, REV's own benchmarks/cluster.py (from a temporary git worktree) builds and measures its
library first, then this checkout does the same, in the same invocation and on the same seeded faces (one
JSON line per side and run, "code": REV or "HEAD").
Goal on 2 cores (issue 14): 50K faces <= 6 s and <= 450 MB.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import checkouts, emit, lfw_dev_embeddings, peak_rss_mb  # noqa: E402

SYNTHETIC_SPACE = "arcface_synthetic"  # 'arcface*' spaces take the ArcFace thresholds
LFW_SPACE = "dlib_resnet_v1"
CONFIRMED_SHARE = 0.05
CONFIRMED_PEOPLE = 100
FACES_PER_PHOTO = 1.3  # group photos and portraits: photo ids shared by neighbouring faces


# --- setup (its own process) ---------------------------------------------------------------------------


def _library(kind: str, n: int) -> tuple[np.ndarray, np.ndarray, str]:
    if kind == "lfw":
        data = lfw_dev_embeddings("dlib")
        return data["vectors"].astype(np.float32), np.unique(data["identities"], return_inverse=True)[1], LFW_SPACE
    from face_pipeline_eval.synthetic import synthetic_faces

    vectors, identities = synthetic_faces(n, 512, seed=0)
    return vectors, identities, SYNTHETIC_SPACE


def _confirmed_rows(identities: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rows a user confirmed: ~5% of the faces, spread over the ~100 people with the most faces."""
    people, sizes = np.unique(identities, return_counts=True)
    top = people[np.argsort(-sizes, kind="stable")[:CONFIRMED_PEOPLE]]
    per_person = max(1, int(round(CONFIRMED_SHARE * len(identities) / len(top))))
    rows = [rng.permutation(np.flatnonzero(identities == p))[:per_person] for p in top]
    return np.sort(np.concatenate(rows))


def setup(kind: str, n: int, data_dir: Path) -> dict[str, Any]:
    from sqlalchemy import insert

    from face_pipeline.domain.naming import noise_cluster_id, person_cluster_id
    from face_pipeline.services.library import Library
    from face_pipeline.services.space_registry import register_raw_space
    from face_pipeline.settings import load_settings
    from face_pipeline.storage.models import FaceInstance, Image, Person, utcnow
    from face_pipeline.vision.types import EmbeddingSpaceInfo

    started = time.perf_counter()
    vectors, identities, space = _library(kind, n)
    n = len(vectors)
    rng = np.random.default_rng(1)
    image_of_face = np.sort(rng.integers(0, int(n / FACES_PER_PHOTO), size=n))
    confirmed = _confirmed_rows(identities, rng)
    settings = load_settings(photos_dir=data_dir / "photos", data_dir=data_dir, database_url=None, qdrant_url=None)
    context = Library.from_settings(settings)
    made = time.perf_counter()
    now = utcnow()
    person_of_identity = {int(i): f"{int(i):032x}" for i in np.unique(identities[confirmed])}
    face_ids = np.arange(1, n + 1, dtype=np.int64)
    person = np.full(n, None, dtype=object)
    person[confirmed] = [person_of_identity[int(i)] for i in identities[confirmed]]
    cluster = np.array([noise_cluster_id(int(f)) for f in face_ids], dtype=object)
    cluster[confirmed] = [person_cluster_id(p) for p in person[confirmed]]
    with context.db.session() as session:
        register_raw_space(session, EmbeddingSpaceInfo(space, space, vectors.shape[1]))
        session.execute(insert(Person), [{"id": p, "name": f"Person {i}"} for i, p in person_of_identity.items()])
        photos = np.unique(image_of_face)
        session.execute(
            insert(Image),
            [
                {"id": int(i) + 1, "path": f"/bench/{i}.jpg", "size_bytes": 1, "mtime": 0.0, "status": "done"}
                for i in photos
            ],
        )
        is_confirmed = np.zeros(n, dtype=bool)
        is_confirmed[confirmed] = True
        session.execute(
            insert(FaceInstance),
            [
                {
                    "id": int(f),
                    "image_id": int(img) + 1,
                    "bbox_x": 0,
                    "bbox_y": 0,
                    "bbox_w": 100,
                    "bbox_h": 100,
                    "detection_score": 1.0,
                    "embedding_space": space,
                    "person_id": p,
                    "cluster_id": c,
                    "assignment_source": "user" if conf else "noise",
                    "confidence": 1.0 if conf else None,
                    "user_confirmed": bool(conf),
                    "created_at": now,
                    "updated_at": now,
                }
                for f, img, p, c, conf in zip(
                    face_ids.tolist(),
                    image_of_face.tolist(),
                    person.tolist(),
                    cluster.tolist(),
                    is_confirmed.tolist(),
                    strict=True,
                )
            ],
        )
    sql_done = time.perf_counter()
    with context.vectors() as store:
        store.ensure_collection(space, vectors.shape[1])
        for start in range(0, n, 1000):
            part = slice(start, start + 1000)
            payloads = [
                {"image_id": int(img) + 1, "person_id": p, "cluster_id": c}
                for img, p, c in zip(
                    image_of_face[part].tolist(), person[part].tolist(), cluster[part].tolist(), strict=True
                )
            ]
            store.upsert(space, face_ids[part], vectors[part], payloads)
    context.close()
    np.save(data_dir / "bench_identities.npy", identities)  # the truth the driver scores the groups against
    done = time.perf_counter()
    return {
        "faces": n,
        "identities": int(len(np.unique(identities))),
        "confirmed": int(len(confirmed)),
        "people": len(person_of_identity),
        "setup_generate_s": round(made - started, 2),
        "setup_sql_s": round(sql_done - made, 2),
        "setup_vectors_s": round(done - sql_done, 2),
        "setup_peak_rss_mb": round(peak_rss_mb(include_children=False), 1),
    }


# --- measurement (its own process) ---------------------------------------------------------------------


def measure(data_dir: Path) -> dict[str, Any]:
    from face_pipeline.services.cluster_dual import run_cluster_dual
    from face_pipeline.services.library import Library
    from face_pipeline.settings import load_settings

    started = time.perf_counter()
    # What cluster-dual imports on first use (the vector-store back ends, the k-NN search): imported here so
    # that the figures below are the work on the faces, not one-off imports.
    import faiss  # noqa: F401
    import scipy.sparse.csgraph  # noqa: F401

    import face_pipeline.storage.vector_backends  # noqa: F401

    imports_s = time.perf_counter() - started
    settings = load_settings(photos_dir=data_dir / "photos", data_dir=data_dir, database_url=None, qdrant_url=None)
    context = Library.from_settings(settings)
    rss_before = peak_rss_mb(include_children=False)
    sampler = _AnonSampler()
    sampler.start()
    runs = []
    for run in ("first", "again"):
        started = time.perf_counter()
        with context.vectors() as vectors:
            opened = time.perf_counter()
            dual = run_cluster_dual(context, vectors)
            centroids, assign, clusters = dual.centroids, dual.assignments, dual.clusters
        total = time.perf_counter() - started
        runs.append(
            {
                "run": run,
                "seconds": round(total, 2),
                "open_s": round(opened - started, 2),
                "centroids_s": round(centroids.seconds, 2),
                "assign_s": round(assign.seconds, 2),
                "cluster_s": round(clusters.seconds, 2),
                "assigned": assign.assigned,
                "assign_changed": assign.changed,
                "clusters": clusters.clusters,
                "clustered_faces": clusters.clustered_faces,
                "cluster_changed": clusters.changed,
            }
        )
    context.close()
    sampler.stop()
    peak = peak_rss_mb(include_children=False)
    return {
        "runs": runs,
        "imports_s": round(imports_s, 2),
        "rss_before_mb": round(rss_before, 1),
        "peak_rss_mb": round(peak, 1),
        "anon_before_mb": round(sampler.first, 1),
        "peak_anon_mb": round(sampler.peak, 1),
    }


class _AnonSampler(threading.Thread):
    """Peak anonymous memory (RssAnon: the process's own data, not the mapped files and libraries that
    ru_maxrss also counts), sampled every 10 ms."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.first = self.peak = _rss_anon_mb()
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(0.01):
            self.peak = max(self.peak, _rss_anon_mb())

    def stop(self) -> None:
        self._stopped.set()
        self.join()
        self.peak = max(self.peak, _rss_anon_mb())


def _rss_anon_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# --- driver --------------------------------------------------------------------------------------------


def _child(script: Path, *args: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{script} {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def grouping_quality(data_dir: Path) -> dict[str, float]:
    """BCubed F and purity of the cluster ids written to the database, against the true identities."""
    from face_pipeline_eval.cluster_metrics import evaluate_clustering

    truth = np.load(data_dir / "bench_identities.npy")
    with sqlite3.connect(data_dir / "face_pipeline.db") as db:
        rows = db.execute("SELECT cluster_id FROM face_instances ORDER BY id").fetchall()
    names = np.array([r[0] for r in rows], dtype=object)
    _, labels = np.unique(names, return_inverse=True)
    labels[np.char.startswith(names.astype(str), "unknown_noise_")] = -1  # alone
    report = evaluate_clustering(truth, labels.astype(np.int64))
    return {
        "bcubed_f": round(report.bcubed_f1, 4),
        "bcubed_p": round(report.bcubed_precision, 4),
        "bcubed_r": round(report.bcubed_recall, 4),
        "purity": round(report.purity, 4),
    }


def run_size(kind: str, n: int, sides: dict[str, Path], rounds: int = 1) -> None:
    """Each side (label -> checkout) builds the library with its own code (its schema may differ; the data
    are seeded, so every side gets the same faces); then, round after round, each side measures a fresh copy
    of its library in a fresh process, the sides taking turns (a busy machine then slows both alike)."""
    label = "lfw-dev" if kind == "lfw" else n
    with tempfile.TemporaryDirectory(prefix="bench-cluster-", dir=REPO / ".cache") as tmp:
        truth = Path(tmp) / "truth"
        _child(Path(__file__), "--setup", kind, str(n), str(truth))
        built = {}
        for code, checkout in sides.items():
            built[code] = _child(checkout / "benchmarks" / "cluster.py", "--setup", kind, str(n), f"{tmp}/built-{code}")
            shutil.copy(truth / "bench_identities.npy", f"{tmp}/built-{code}")
        for round_ in range(1, rounds + 1):
            for code, checkout in sides.items():
                library = Path(tmp) / f"library-{code}"
                shutil.copytree(f"{tmp}/built-{code}", library)
                measured = _child(checkout / "benchmarks" / "cluster.py", "--measure", str(library))
                quality = grouping_quality(library)
                shutil.rmtree(library)
                for run in measured["runs"]:
                    emit(
                        "cluster_dual",
                        code=code,
                        round=round_,
                        library=str(label),
                        **{k: v for k, v in built[code].items() if k != "faces"},
                        faces=built[code]["faces"],
                        **run,
                        peak_rss_mb=measured["peak_rss_mb"],
                        rss_before_mb=measured["rss_before_mb"],
                        peak_anon_mb=measured["peak_anon_mb"],
                        imports_s=measured["imports_s"],
                        anon_before_mb=measured["anon_before_mb"],
                        **quality,
                    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--setup":
        print(json.dumps(setup(sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]))))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--measure":
        print(json.dumps(measure(Path(sys.argv[2]))))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 50_000, 200_000])
    parser.add_argument("--no-lfw", action="store_true", help="skip lfw-dev's real vectors")
    parser.add_argument("--compare", metavar="REV", help="also measure this commit (a temporary git worktree)")
    parser.add_argument("--rounds", type=int, default=1, help="measure each side this many times, taking turns")
    args = parser.parse_args()
    (REPO / ".cache").mkdir(exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="bench-compare-", dir=REPO / ".cache") as root,
        checkouts(args.compare, Path(root)) as sides,
    ):
        if args.compare:  # REV finds the datasets beside its checkout and the lfw-dev embeddings in its .cache
            (Path(root) / "shared").symlink_to(REPO.parent / "shared")
            if not (sides[args.compare] / ".cache").exists():
                (sides[args.compare] / ".cache").symlink_to(REPO / ".cache")
        for n in args.sizes:
            run_size("synthetic", n, sides, args.rounds)
        if not args.no_lfw:
            run_size("lfw", 0, sides, args.rounds)


if __name__ == "__main__":
    main()
