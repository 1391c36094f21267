"""Vector store speed and memory: the embedded Qdrant engine vs qdrant-client local disk mode.

    .venv/bin/python benchmarks/vectors.py [--points 50000] [--dim 512] [--backends edge,client-local]

Each back end runs in its own child process, so that its RSS figures are its own. Figures: upsert time
(batches of 1000), mean top-10 search latency over --queries queries (edge: exact before optimize(), HNSW
after, plus HNSW recall@10 against numpy's exact answer), batched search per query, filtered search
latency over 20 queries (a 1% cluster, and "no person yet" for half the points), fetch_all (scroll
everything), reopen time and the RSS it adds, peak RSS. Prints a table and one JSON line per figure:
{"bench": "vectors", "backend": ..., "points": ..., "dim": ..., "metric": ..., "value": ...}.

qdrant-client local disk mode ("path:") is the fair disk comparison; ":memory:" would flatter it.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from face_pipeline.storage.vectors import VectorStore, open_vector_store

COLLECTION = "bench"
BATCH = 1000
FILTERED_QUERIES = 20
BACKENDS = {"edge": None, "client-local": "path:"}  # qdrant_url for open_vector_store (path: gets a dir)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def make_data(points: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """(n,) ids, (n, dim) float32 vectors around 500 identities, payloads (half without a person)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(500, dim)).astype(np.float32)
    who = rng.integers(0, len(centres), size=points)
    vectors = centres[who] + rng.normal(scale=0.8, size=(points, dim)).astype(np.float32)
    ids = np.arange(1, points + 1, dtype=np.int64)
    payloads = [
        {
            "image_id": i // 3,
            "person_id": f"person_{w}" if i % 2 else None,
            "cluster_id": f"unknown_cluster_{i % 100}",
        }
        for i, w in zip(ids.tolist(), who.tolist(), strict=True)
    ]
    return ids, vectors, payloads


def mean_ms(fn: Callable[[np.ndarray], object], queries: np.ndarray) -> float:
    fn(queries[0])  # warm up caches and thread pools
    started = time.perf_counter()
    for q in queries:
        fn(q)
    return (time.perf_counter() - started) / len(queries) * 1000


def recall_at_10(store: VectorStore, queries: np.ndarray, unit_vectors: np.ndarray, ids: np.ndarray) -> float:
    found = 0
    for q in queries:
        exact = ids[np.argsort(-(unit_vectors @ (q / np.linalg.norm(q))))[:10]]
        found += len(set(exact.tolist()) & {h.face_id for h in store.search(COLLECTION, q, 10)})
    return found / (10 * len(queries))


def run_backend(backend: str, points: int, dim: int, n_queries: int, workdir: Path) -> dict[str, float]:
    """All figures for one back end (run in a fresh process)."""
    url = BACKENDS[backend]
    url = f"path:{workdir / 'client'}" if url == "path:" else url
    ids, vectors, payloads = make_data(points, dim)
    queries = vectors[np.random.default_rng(1).choice(points, n_queries, replace=False)]
    queries = queries + np.random.default_rng(2).normal(scale=0.3, size=queries.shape).astype(np.float32)
    figures: dict[str, float] = {"rss_start_mb": rss_mb()}

    store = open_vector_store(url, workdir / "edge")
    store.ensure_collection(COLLECTION, dim)
    started = time.perf_counter()
    for start in range(0, points, BATCH):
        part = slice(start, start + BATCH)
        store.upsert(COLLECTION, ids[part], vectors[part], payloads[part])
    figures["upsert_s"] = time.perf_counter() - started
    assert store.count(COLLECTION) == points

    search = search_on(store)
    figures["search_ms"] = mean_ms(search, queries)
    if backend == "edge":
        started = time.perf_counter()
        store.optimize(COLLECTION)
        figures["optimize_s"] = time.perf_counter() - started
        figures["search_hnsw_ms"] = mean_ms(search, queries)
        unit_vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        figures["hnsw_recall_at_10"] = recall_at_10(store, queries[:50], unit_vectors, ids)

    started = time.perf_counter()
    store.search_batch(COLLECTION, queries, 10)
    figures["search_batch_ms_per_query"] = (time.perf_counter() - started) / len(queries) * 1000
    # Fewer queries here: qdrant-client local mode filters in Python (~0.5 s per query at 50K).
    few = queries[:FILTERED_QUERIES]
    figures["filtered_cluster_ms"] = mean_ms(
        lambda q: store.search(COLLECTION, q, 10, {"cluster_id": "unknown_cluster_7"}), few
    )
    figures["filtered_no_person_ms"] = mean_ms(lambda q: store.search(COLLECTION, q, 10, {"person_id": None}), few)

    started = time.perf_counter()
    got_ids, got_vectors = store.fetch_all(COLLECTION)
    figures["fetch_all_s"] = time.perf_counter() - started
    assert got_vectors.shape == (points, dim) and (got_ids == ids).all()
    del got_ids, got_vectors

    store.close()
    del store
    gc.collect()
    before = rss_mb()
    started = time.perf_counter()
    store = open_vector_store(url, workdir / "edge")
    store.count(COLLECTION)  # the embedded engine opens shards lazily: make it load
    figures["reopen_s"] = time.perf_counter() - started
    figures["reopen_rss_mb"] = rss_mb() - before
    figures["search_after_reopen_ms"] = mean_ms(search_on(store), queries)
    store.close()
    figures["peak_rss_mb"] = peak_rss_mb()
    return figures


def search_on(store: VectorStore) -> Callable[[np.ndarray], object]:
    return lambda q: store.search(COLLECTION, q, 10)


ROWS = [
    ("upsert_s", "upsert, batches of 1000 (s)"),
    ("search_ms", "top-10 search (ms; edge: exact, before optimize)"),
    ("optimize_s", "optimize(): HNSW build (s)"),
    ("search_hnsw_ms", "top-10 search after optimize (ms)"),
    ("hnsw_recall_at_10", "HNSW recall@10 vs exact"),
    ("search_batch_ms_per_query", "search_batch, per query (ms)"),
    ("filtered_cluster_ms", "filtered: cluster_id = 1 of 100, 20 queries (ms)"),
    ("filtered_no_person_ms", "filtered: person_id None (half), 20 q. (ms)"),
    ("fetch_all_s", "fetch_all / scroll everything (s)"),
    ("reopen_s", "reopen (s)"),
    ("reopen_rss_mb", "reopen RSS increase (MB)"),
    ("search_after_reopen_ms", "top-10 search after reopen (ms)"),
    ("peak_rss_mb", "peak RSS (MB)"),
]


def print_table(results: dict[str, dict[str, float]], points: int, dim: int) -> None:
    names = list(results)
    print(f"\nvector store, {points:,} x {dim} float32 points")
    print(f"{'figure':<50}" + "".join(f"{n:>16}" for n in names))
    for key, label in ROWS:
        cells = [results[n].get(key) for n in names]
        print(f"{label:<50}" + "".join(f"{'-' if c is None else f'{c:.3g}':>16}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--child", help=argparse.SUPPRESS)  # run one back end and print its JSON
    args = parser.parse_args()

    if args.child:
        with tempfile.TemporaryDirectory(prefix="bench_vectors_") as tmp:
            figures = run_backend(args.child, args.points, args.dim, args.queries, Path(tmp))
        print(json.dumps(figures))
        return

    results: dict[str, dict[str, float]] = {}
    for backend in args.backends.split(","):
        if backend not in BACKENDS:
            parser.error(f"unknown back end {backend!r}; choose from {', '.join(BACKENDS)}")
        command = [sys.executable, __file__, "--child", backend]
        command += ["--points", str(args.points), "--dim", str(args.dim), "--queries", str(args.queries)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"{backend} run failed:\n{done.stderr}")
        results[backend] = json.loads(done.stdout.strip().splitlines()[-1])
        for metric, value in results[backend].items():
            line = {"bench": "vectors", "backend": backend, "points": args.points, "dim": args.dim}
            print(json.dumps({**line, "metric": metric, "value": round(value, 4)}), flush=True)
    print_table(results, args.points, args.dim)


if __name__ == "__main__":
    main()
