"""Real embeddings of a folder-per-person dataset, one cache per face model (gitignored .cache/).

Tests that need thousands of real faces (lfw-dev) load them from here; on a fresh clone the first such test
builds the cache with the project's own loader and embedder, in a pool of processes. Measured on 2 cores
for lfw-dev (5,029 photos): buffalo_s (SCRFD-500M + MobileFaceNet) ~1.5 minutes (a face in all 5,029); dlib
4-7 minutes (5,004 faces), so its tests take every third person (1,842 faces, about a third of the time).

The suite starts those builds in the background as soon as it knows a collected test needs them
(conftest.pytest_collection_modifyitems runs `python -m face_pipeline_tests.lfw_cache DATASET CACHE_DIR
MODEL[:STRIDE] ...` at the lowest CPU priority), so they use what the earlier tests leave of 2 cores instead of
stopping the suite for minutes. A lock file beside each cache lets one process build it while any other that
needs it waits (`load_or_build`).
"""

from __future__ import annotations

import argparse
import fcntl
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from face_pipeline.settings import Settings
from face_pipeline.vision.embedders import create_embedder
from face_pipeline.vision.images import ImageRejected, load_rgb
from face_pipeline.vision.model_packs import ModelChoice
from face_pipeline.vision.types import FaceEmbedder
from face_pipeline.vision.worker import restore_default_signals
from face_pipeline_eval.main_face import main_face

_embedder: FaceEmbedder | None = None
PROGRESS_EVERY = 500  # photos between two progress lines while a cache is built


def _progress(line: str) -> None:
    """A line on the terminal while a cache builds (minutes); the tests' fixtures lift pytest's capture for it
    (conftest.output_shown)."""
    print(f"\n[building test cache] {line}", file=sys.stderr, flush=True)


def cache_path(
    cache_dir: Path,
    dataset: Path,
    choice: ModelChoice | str,
    identity_stride: int = 1,
    min_face_size: int | None = None,
) -> Path:
    """<cache_dir>/<dataset>-<model>[-every<N>][-minface<S>].npz, e.g. .cache/lfw-dev-buffalo_s.npz."""
    subset = f"-every{identity_stride}" if identity_stride > 1 else ""
    smallest = f"-minface{min_face_size}" if min_face_size is not None else ""
    return cache_dir / f"{dataset.name}-{ModelChoice(choice)}{subset}{smallest}.npz"


def _init(choice: str, threads: int, min_face_size: int | None) -> None:
    global _embedder  # one model per pool process
    restore_default_signals()
    # Settings' defaults, not the environment: the cache must not depend on a developer's FACE_* variables.
    settings = (
        Settings.model_construct() if min_face_size is None else Settings.model_construct(min_face_size=min_face_size)
    )
    _embedder = create_embedder(settings, choice, threads=threads)


def _main_face(path: str) -> np.ndarray | None:
    """The photo's largest face: the one the folder names (others are background people)."""
    assert _embedder is not None
    try:
        image = load_rgb(path, max_pixels=80_000_000, max_bytes=200 * 1024 * 1024)
    except ImageRejected:
        return None
    faces = _embedder.detect_and_embed(image)
    return main_face(faces).embedding if faces else None


def build_embeddings(
    dataset: Path,
    cache: Path,
    choice: ModelChoice | str,
    workers: int = 2,
    identity_stride: int = 1,
    min_face_size: int | None = None,
) -> None:
    """Write `cache` (.npz: vectors (n, dim) float32, identities (n,), paths (n,)) for every photo with a face,
    embedded by the model `choice` names (a FACE_EMBEDDER value other than auto); `identity_stride` N keeps
    every N-th person (sorted by name) with all their photos; `min_face_size`: FACE_MIN_FACE_SIZE for small
    faces (default: the setting's default)."""
    choice = ModelChoice(choice)
    if choice is ModelChoice.AUTO:
        raise ValueError("a cache is for one named model: pass buffalo_s, dlib, ..., not auto")
    people = sorted(p.name for p in dataset.iterdir() if p.is_dir())[::identity_stride]
    paths = sorted(
        str(p)
        for person in people
        for p in (dataset / person).iterdir()
        if p.suffix.lower() in (".jpg", ".jpeg", ".png")
    )
    context = multiprocessing.get_context("spawn")
    started = time.monotonic()
    vectors: list[np.ndarray | None] = []
    with context.Pool(workers, initializer=_init, initargs=(choice.value, 1, min_face_size)) as pool:
        for vector in pool.imap(_main_face, paths, chunksize=16):
            vectors.append(vector)
            if len(vectors) % PROGRESS_EVERY == 0 or len(vectors) == len(paths):
                seconds = time.monotonic() - started
                _progress(f"{cache.name}: {len(vectors)}/{len(paths)} photos embedded ({seconds:.0f} s)")
        pool.close()
        pool.join()
    keep = [i for i, v in enumerate(vectors) if v is not None]
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_suffix(".partial.npz")
    np.savez(
        partial,
        vectors=np.stack([vectors[i] for i in keep]).astype(np.float32),
        identities=np.array([Path(paths[i]).parent.name for i in keep]),
        paths=np.array([paths[i] for i in keep]),
        photos=np.int64(len(paths)),
    )
    os.replace(partial, cache)  # a build cut short never leaves a half-written cache


def load_or_build(
    dataset: Path,
    cache_dir: Path,
    choice: ModelChoice | str,
    identity_stride: int = 1,
    min_face_size: int | None = None,
    workers: int = 2,
) -> dict[str, np.ndarray]:
    """The cached embeddings of `dataset` by model `choice`, built first when the cache is missing (by this
    process, or by another one that is building it already: then this one waits for it)."""
    cache = cache_path(cache_dir, dataset, choice, identity_stride, min_face_size)
    if not cache.is_file():
        with _building(cache):
            if not cache.is_file():
                build_embeddings(dataset, cache, choice, workers, identity_stride, min_face_size)
    with np.load(cache) as data:
        return {key: data[key] for key in data.files}


@contextmanager
def _building(cache: Path) -> Iterator[None]:
    """Hold `cache`'s build lock (an flock on <cache>.lock, released if the holder dies)."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    with open(cache.with_suffix(".lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _progress(f"{cache.name}: waiting for the process building it (log: {cache.parent / BUILD_LOG})")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


BUILD_LOG = "test-cache-build.log"  # the background builder's output, in the cache folder


def main(argv: list[str] | None = None) -> None:
    """Build the missing caches named on the command line, one after the other (see the module docstring)."""
    parser = argparse.ArgumentParser(description="Build test embedding caches (at the lowest CPU priority).")
    parser.add_argument("dataset", type=Path)
    parser.add_argument("cache_dir", type=Path)
    parser.add_argument("models", nargs="+", metavar="MODEL[:STRIDE]", help="e.g. buffalo_s dlib:3")
    args = parser.parse_args(argv)
    os.nice(19)  # the pool's processes inherit it: the tests running meanwhile come first
    for spec in args.models:
        model, _, stride = spec.partition(":")
        load_or_build(args.dataset, args.cache_dir, model, identity_stride=int(stride or 1))


if __name__ == "__main__":
    main()
