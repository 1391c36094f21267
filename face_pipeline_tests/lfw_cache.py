"""Real dlib embeddings of a folder-per-person dataset, built once and cached (gitignored .cache/).

Tests that need thousands of real faces (lfw-dev) load them from here; on a fresh clone the first such test
builds the cache with the project's own loader and embedder (~4 minutes for lfw-dev on 2 cores).
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import numpy as np

from face_pipeline.vision.dlib_embedder import DlibEmbedder
from face_pipeline.vision.images import ImageRejected, load_rgb

_embedder: DlibEmbedder | None = None


def _init() -> None:
    global _embedder  # one model per pool process
    _embedder = DlibEmbedder()


def _main_face(path: str) -> np.ndarray | None:
    """The photo's largest face: the one the folder names (others are background people)."""
    assert _embedder is not None
    try:
        image = load_rgb(path, max_pixels=80_000_000, max_bytes=200 * 1024 * 1024)
    except ImageRejected:
        return None
    faces = _embedder.detect_and_embed(image)
    if not faces:
        return None
    return max(faces, key=lambda f: f.bbox[2] * f.bbox[3]).embedding


def build_embeddings(dataset: Path, cache: Path, workers: int = 2) -> None:
    """Write `cache` (.npz: vectors (n, 128) float32, identities (n,), paths (n,)) for every photo with a face."""
    paths = sorted(str(p) for p in dataset.glob("*/*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    with multiprocessing.get_context("spawn").Pool(workers, initializer=_init) as pool:
        vectors = pool.map(_main_face, paths, chunksize=16)
    keep = [i for i, v in enumerate(vectors) if v is not None]
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_suffix(".partial.npz")
    np.savez(
        partial,
        vectors=np.stack([vectors[i] for i in keep]).astype(np.float32),
        identities=np.array([Path(paths[i]).parent.name for i in keep]),
        paths=np.array([paths[i] for i in keep]),
    )
    os.replace(partial, cache)  # a build cut short never leaves a half-written cache


def load_or_build(dataset: Path, cache: Path) -> dict[str, np.ndarray]:
    if not cache.is_file():
        build_embeddings(dataset, cache)
    with np.load(cache) as data:
        return {key: data[key] for key in data.files}
