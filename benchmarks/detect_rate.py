"""Detection rate and speed of the face embedder over a folder-per-person dataset.

    .venv/bin/python benchmarks/detect_rate.py [--dataset ../shared/datasets/lfw-mini] [--workers 2]

Prints photos, photos with at least one face, the rate, photos/s (wall) and ms per photo (inside the
workers, so it excludes process start and model loading, which photos/s includes), then one JSON line
starting {"bench": ...}.
The embedder follows the FACE_* settings (FACE_EMBEDDER, FACE_MIN_FACE_SIZE, ...) unless --embedder.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from pathlib import Path

from face_pipeline.settings import Settings, load_settings
from face_pipeline.vision.embedders import create_embedder, describe_embedder
from face_pipeline.vision.images import ImageRejected, load_rgb
from face_pipeline.vision.model_packs import ModelChoice
from face_pipeline.vision.types import FaceEmbedder

REPO = Path(__file__).resolve().parents[1]
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}

_embedder: FaceEmbedder | None = None
_settings: Settings | None = None


def _init_worker(settings: Settings) -> None:
    global _embedder, _settings  # one embedder per worker process, built once
    _settings = settings
    _embedder = create_embedder(settings)


def _detect(path: Path) -> tuple[int, float, str | None]:
    """(faces found, seconds spent, rejection reason) for one photo, in a worker."""
    assert _embedder is not None and _settings is not None, "worker not initialised"
    started = time.perf_counter()
    try:
        image = load_rgb(path, max_pixels=_settings.max_image_pixels, max_bytes=_settings.max_file_bytes)
    except ImageRejected as exc:
        return 0, time.perf_counter() - started, exc.reason
    faces = _embedder.detect_and_embed(image)
    return len(faces), time.perf_counter() - started, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=REPO.parent / "shared" / "datasets" / "lfw-dev")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="only the first N photos (sorted)")
    parser.add_argument("--embedder", choices=[c.value for c in ModelChoice], default=None)
    args = parser.parse_args()

    overrides = {"embedder": args.embedder} if args.embedder else {}
    settings = load_settings(**overrides)
    photos = sorted(p for p in args.dataset.rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES)[: args.limit]
    if not photos:
        raise SystemExit(f"no photos under {args.dataset}")
    model = describe_embedder(create_embedder(settings))

    started = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with context.Pool(args.workers, initializer=_init_worker, initargs=(settings,)) as pool:
        results = pool.map(_detect, photos, chunksize=4)
        pool.close()
        pool.join()
    wall = time.perf_counter() - started

    with_face = sum(1 for faces, _, _ in results if faces)
    faces = sum(faces for faces, _, _ in results)
    rejected = sum(1 for _, _, reason in results if reason)
    ms_per_photo = 1000 * sum(seconds for _, seconds, _ in results) / len(results)
    figures = {
        "bench": "detect_rate",
        "dataset": args.dataset.name,
        "space": model["space"],
        "device": model["device"],
        "workers": args.workers,
        "photos": len(photos),
        "photos_with_face": with_face,
        "rate": round(with_face / len(photos), 4),
        "faces": faces,
        "rejected": rejected,
        "wall_s": round(wall, 2),
        "photos_per_s": round(len(photos) / wall, 2),
        "ms_per_photo_in_worker": round(ms_per_photo, 1),
        "min_face_size": settings.min_face_size,
        "min_detection_score": settings.min_detection_score,
        "detect_size": settings.detect_size,
    }
    print(f"dataset      {args.dataset} ({model['space']} on {model['device']}, {args.workers} workers)")
    print(f"photos       {len(photos)}  (rejected {rejected})")
    print(f"with a face  {with_face}  rate {with_face / len(photos):.1%}  ({faces} faces)")
    print(f"speed        {len(photos) / wall:.2f} photos/s wall, {ms_per_photo:.0f} ms per photo in a worker")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
