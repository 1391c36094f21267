"""The review page's requests on a large synthetic library: 2,000 unknown groups, 20,000 faces on their own and
200 named people, in a real SQLite database and the real embedded vector store.

    python benchmarks/review_page.py                       # 2,000 groups, 20,000 singletons
    python benchmarks/review_page.py --groups 500 --singletons 5000
    python benchmarks/review_page.py --compare ba3a755     # that commit's server too, on the same library
    python benchmarks/review_page.py --library /tmp/lib    # keep (or reuse) the built library there

Vectors come from `face_pipeline_eval.synthetic.synthetic_faces` (512-d, ArcFace-like); SQL rows are bulk
inserted and the people's prototypes built by the real `compute_person_centroids` (setup, timed apart).
Each request the page makes is sent in process (FastAPI's TestClient: routing, the service, SQL, JSON): once
first (`first_ms`), then `--repeats` times (median and worst of those); server-side milliseconds.

Two server starts are timed, each a new application (empty caches):
- "cold": the server's start-up warm-up switched off, so each first call pays for what it reads (the
  suggestions' and singletons' first call read ~30,000 vectors out of the store and score them);
- "warmed": as `faces serve` runs it: a background thread reads those vectors and scores the singletons at
  start; the benchmark waits for it (its duration is printed: a page opened sooner waits for the rest of
  it), then times the same requests.
Goal: every page <= 300 ms. One JSON line per request and server start. With --compare REV the same requests
run against REV's code (a temporary git worktree, its own process) on the same library built by that code
(same seed; each side's own schema); a commit without the warm-up is timed "cold" only.
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import emit, git_commit, worktree  # noqa: E402

SPACE = "arcface_synthetic"  # 'arcface*' spaces take the ArcFace thresholds
PEOPLE = 200
FACES_PER_PERSON = 10
GOAL_MS = 300.0


def build(data_dir: Path, groups: int, singletons: int, seed: int = 0) -> dict[str, Any]:
    from sqlalchemy import insert

    from face_pipeline.domain.naming import noise_cluster_id, person_cluster_id, unknown_cluster_id
    from face_pipeline.services.known_people import compute_person_centroids
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
        "first_ms": round(samples[0], 1),
        "median_ms": round(statistics.median(warm), 1),
        "max_ms": round(max(warm), 1),
    }


def serve_and_time(settings: Any, repeats: int, warmed: bool) -> tuple[dict[str, dict[str, Any]], float | None]:
    """Figures per request of one new server, and how long its start-up warm-up took (None: none)."""
    import inspect

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    from face_pipeline.api.app import create_app

    can_warm = "warm_up" in inspect.signature(create_app).parameters
    if warmed and not can_warm:
        raise SystemExit("this code has no start-up warm-up")
    started = time.perf_counter()
    app = create_app(settings, warm_up=warmed) if can_warm else create_app(settings)
    figures: dict[str, dict[str, Any]] = {}
    with TestClient(app, base_url="http://127.0.0.1") as client:
        warm_s = None
        if warmed:
            app.state.warmed.wait()
            warm_s = time.perf_counter() - started
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
        for name, path in requests.items():
            figures[name] = timed(client, path, repeats)
    return figures, warm_s


def library_settings(data_dir: Path) -> Any:
    from face_pipeline.settings import load_settings

    return load_settings(photos_dir=data_dir / "photos", data_dir=data_dir, database_url=None, qdrant_url=None)


def measure(code: str, settings: Any, repeats: int, phases: list[str]) -> list[dict[str, Any]]:
    """One figure dict per (server start, request), as JSON lines also go."""
    rows = []
    for phase in phases:
        figures, warm_s = serve_and_time(settings, repeats, warmed=phase == "warmed")
        for name, figure in figures.items():
            warm = {} if warm_s is None else {"warm_up_s": round(warm_s, 2)}
            rows.append({"code": code, "server": phase, "request": name, **figure, **warm})
    return rows


def compare_rows(rev: str, args: argparse.Namespace, scratch: Path) -> list[dict[str, Any]]:
    """The same requests at another commit: a temporary worktree, this script run as a subprocess that imports
    that tree's code and builds the same library (same seed) with it, so each side has its own schema."""
    with worktree(rev, scratch / "compare") as code:
        done = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--code", str(code)]
            + ["--library", str(scratch / "compare-library"), "--repeats", str(args.repeats)]
            + ["--groups", str(args.groups), "--singletons", str(args.singletons), "--label", rev, "--json-only"],
            capture_output=True,
            text=True,
        )
    if done.returncode != 0:
        raise SystemExit(f"the run at {rev} failed:\n{done.stderr[-3000:]}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=2000)
    parser.add_argument("--singletons", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compare", metavar="REV", help="also time this commit's server on the same library")
    parser.add_argument("--library", type=Path, help="build the library here (reused when it exists)")
    parser.add_argument("--code", type=Path, help=argparse.SUPPRESS)  # --compare: the worktree to import from
    parser.add_argument("--label", default="this tree", help=argparse.SUPPRESS)
    parser.add_argument("--json-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.code is not None:  # a compare run: that tree's face_pipeline, the library as built
        sys.path.insert(0, str(args.code.resolve()))
        from face_pipeline.api import app as app_module

        if not (args.library / "face_pipeline.db").is_file():  # built by that code: its own schema
            args.library.mkdir(parents=True)
            build(args.library, args.groups, args.singletons)

        phases = ["cold", "warmed"] if "warm_up" in inspect.signature(app_module.create_app).parameters else ["cold"]
        for row in measure(args.label, library_settings(args.library), args.repeats, phases):
            print(json.dumps(row), flush=True)
        return
    with tempfile.TemporaryDirectory(prefix="review-bench-") as tmp:
        library_dir = args.library or Path(tmp) / "library"
        size = {"groups": args.groups, "singletons": args.singletons, "people": PEOPLE}
        if (library_dir / "face_pipeline.db").is_file():
            print(f"library: reusing {library_dir}", flush=True)
        else:
            library_dir.mkdir(parents=True, exist_ok=True)
            started = time.perf_counter()
            built = build(library_dir, args.groups, args.singletons)
            built.pop("settings")
            size = built
            print(f"library: {built} built in {time.perf_counter() - started:.1f} s", flush=True)
        rows = measure(f"{git_commit()}+tree", library_settings(library_dir), args.repeats, ["cold", "warmed"])
        if args.compare:
            rows = compare_rows(args.compare, args, Path(tmp)) + rows
        report(rows, size)


def report(rows: list[dict[str, Any]], size: dict[str, Any]) -> None:
    starts = list(dict.fromkeys((r["code"], r["server"]) for r in rows))
    for code, server in starts:
        mine = [r for r in rows if (r["code"], r["server"]) == (code, server)]
        warm = f", warm-up {mine[0]['warm_up_s']:.1f} s before the first request" if "warm_up_s" in mine[0] else ""
        print(f"\n{code}, server {server}{warm}:")
        for r in mine:
            print(
                f"  {r['request']:24s} first {r['first_ms']:8.1f} ms   median {r['median_ms']:7.1f} ms"
                f"   max {r['max_ms']:7.1f} ms"
            )
            emit("review_page", **size, **r, goal_ms=GOAL_MS)
        worst = max(max(r["first_ms"], r["median_ms"]) for r in mine)
        print(f"  worst first call or median: {worst:.1f} ms (goal <= {GOAL_MS:.0f} ms)")


if __name__ == "__main__":
    main()
