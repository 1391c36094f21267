"""The review page's requests on a large synthetic library: 2,000 unknown groups, 20,000 faces on their own and
200 named people, in a real SQLite database and the real embedded vector store.

    python benchmarks/review_page.py                       # 2,000 groups, 20,000 singletons
    python benchmarks/review_page.py --groups 500 --singletons 5000

Vectors come from `face_pipeline_eval.synthetic.synthetic_faces` (512-d, ArcFace-like); SQL rows are bulk
inserted and the people's prototypes built by the real `compute_person_centroids` (setup, timed apart).
Each request the page makes is sent in process (FastAPI's TestClient: routing, the service, SQL, JSON): once
cold (the first call, e.g. the singletons' vectors and best guesses being cached), then `--repeats` times;
the figures are server-side milliseconds (median and worst of the warm calls). Goal: every page <= 300 ms.
One JSON line per request.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import emit  # noqa: E402

SPACE = "arcface_synthetic"  # 'arcface*' spaces take the ArcFace thresholds
PEOPLE = 200
FACES_PER_PERSON = 10
GOAL_MS = 300.0


def build(data_dir: Path, groups: int, singletons: int, seed: int = 0) -> dict[str, Any]:
    from sqlalchemy import insert

    from face_pipeline.domain.naming import noise_cluster_id, person_cluster_id, unknown_cluster_id
    from face_pipeline.services.clustering import compute_person_centroids
    from face_pipeline.services.library import Library
    from face_pipeline.services.space_registry import register_raw_space
    from face_pipeline.settings import load_settings
    from face_pipeline.storage.models import FaceInstance, Image, Person, utcnow
    from face_pipeline.vision.types import EmbeddingSpaceInfo
    from face_pipeline_eval.synthetic import synthetic_faces

    rng = np.random.default_rng(seed)
    sizes = rng.integers(3, 10, size=groups)
    n_named = PEOPLE * FACES_PER_PERSON
    n = n_named + int(sizes.sum()) + singletons
    vectors, _ = synthetic_faces(n, 512, seed=seed, shuffle=False)
    face_ids = np.arange(1, n + 1, dtype=np.int64)
    person_ids = [f"{i + 1:032x}" for i in range(PEOPLE)]
    person = np.full(n, None, dtype=object)
    person[:n_named] = np.repeat(person_ids, FACES_PER_PERSON)
    cluster = np.empty(n, dtype=object)
    cluster[:n_named] = [person_cluster_id(p) for p in person[:n_named]]
    grouped = np.repeat(np.arange(1, groups + 1), sizes)
    cluster[n_named : n_named + grouped.size] = [unknown_cluster_id(int(g)) for g in grouped]
    cluster[n_named + grouped.size :] = [noise_cluster_id(int(f)) for f in face_ids[n_named + grouped.size :]]
    settings = load_settings(photos_dir=data_dir / "photos", data_dir=data_dir, database_url=None, qdrant_url=None)
    library = Library.from_settings(settings)
    now = utcnow()
    with library.db.session() as session:
        register_raw_space(session, EmbeddingSpaceInfo(SPACE, SPACE, 512))
        session.execute(insert(Person), [{"id": p, "name": f"Person {i:04d}"} for i, p in enumerate(person_ids)])
        session.execute(
            insert(Image),
            [
                {
                    "id": int(f),
                    "path": f"/bench/{f}.jpg",
                    "size_bytes": 1,
                    "mtime": 0.0,
                    "status": "done",
                    "width": 400,
                    "height": 400,
                }
                for f in face_ids
            ],
        )
        session.execute(
            insert(FaceInstance),
            [
                {
                    "id": int(f),
                    "image_id": int(f),
                    "bbox_x": 100,
                    "bbox_y": 100,
                    "bbox_w": 120,
                    "bbox_h": 150,
                    "detection_score": 0.9,
                    "quality": float(q),
                    "embedding_space": SPACE,
                    "person_id": p,
                    "cluster_id": c,
                    "assignment_source": "user"
                    if p
                    else ("unsupervised" if c.startswith("unknown_cluster") else "noise"),
                    "confidence": 1.0 if p else None,
                    "user_confirmed": p is not None,
                    "created_at": now,
                    "updated_at": now,
                }
                for f, p, c, q in zip(
                    face_ids.tolist(), person.tolist(), cluster.tolist(), rng.random(n).tolist(), strict=True
                )
            ],
        )
    with library.vectors() as store:
        store.ensure_collection(SPACE, 512)
        for start in range(0, n, 2000):
            part = slice(start, start + 2000)
            payloads = [
                {"image_id": int(f), "person_id": p, "cluster_id": c}
                for f, p, c in zip(face_ids[part].tolist(), person[part].tolist(), cluster[part].tolist(), strict=True)
            ]
            store.upsert(SPACE, face_ids[part], vectors[part], payloads)
        compute_person_centroids(library, store)
    library.close()
    return {"faces": n, "groups": groups, "singletons": singletons, "people": PEOPLE, "settings": settings}


def timed(client: Any, path: str, repeats: int) -> dict[str, Any]:
    samples = []
    status = 0
    for _ in range(repeats + 1):
        started = time.perf_counter()
        response = client.get(path)
        samples.append((time.perf_counter() - started) * 1000)
        status = response.status_code
        assert status == 200, (path, status, response.text[:300])
    warm = samples[1:]
    return {
        "cold_ms": round(samples[0], 1),
        "median_ms": round(statistics.median(warm), 1),
        "max_ms": round(max(warm), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=2000)
    parser.add_argument("--singletons", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    from face_pipeline.api.app import create_app

    with tempfile.TemporaryDirectory(prefix="review-bench-") as tmp:
        started = time.perf_counter()
        library = build(Path(tmp), args.groups, args.singletons)
        settings = library.pop("settings")
        print(f"library: {library} built in {time.perf_counter() - started:.1f} s", flush=True)
        with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
            person = client.get("/api/v1/persons", params={"limit": 1}).json()["items"][0]
            cluster = client.get("/api/v1/faces/clusters", params={"type": "unknown", "limit": 1}).json()["items"][0]
            requests = {
                "page_html": "/",
                "groups_first_page": "/api/v1/faces/clusters?type=unknown&limit=20&offset=0",
                "groups_page_50": "/api/v1/faces/clusters?type=unknown&limit=20&offset=1000",
                "group_faces": f"/api/v1/faces/clusters/{cluster['cluster_id']}?limit=500",
                "singletons_first_page": "/api/v1/faces/singletons?limit=24&offset=0",
                "singletons_page_500": "/api/v1/faces/singletons?limit=24&offset=12000",
                "people_first_page": "/api/v1/persons?limit=50",
                "people_search": "/api/v1/persons?limit=50&q=son%2001",
                "person_faces": f"/api/v1/faces/clusters/{person['cluster_id']}?limit=48",
                "suggestions": f"/api/v1/persons/{person['person_id']}/suggestions?limit=24",
                "ignored": "/api/v1/faces/ignored?limit=24",
                "decisions": "/api/v1/decisions?limit=10",
                "stats": "/api/v1/faces/stats",
            }
            worst = 0.0
            for name, path in requests.items():
                figures = timed(client, path, args.repeats)
                worst = max(worst, figures["median_ms"])
                cold, median, most = figures["cold_ms"], figures["median_ms"], figures["max_ms"]
                print(f"{name:24s} cold {cold:8.1f} ms   warm median {median:7.1f} ms   max {most:7.1f} ms")
                emit("review_page", request=name, **library, **figures, goal_ms=GOAL_MS)
            print(f"worst warm median: {worst:.1f} ms (goal <= {GOAL_MS:.0f} ms)")


if __name__ == "__main__":
    main()
