"""Write a degraded copy of a folder-per-person photo set: every photo shrunk and re-encoded as a poor JPEG.

    .venv/bin/python benchmarks/degraded_variant.py [DATASET] [--out FOLDER] [--size 80] [--quality 40]

DATASET defaults to ../shared/datasets/lfw-dev; FOLDER to .cache/<dataset>-<size>px-q<quality> (git-ignored;
never commit a copy of a dataset). Each photo is fitted inside size x size pixels (aspect kept, Lanczos) and
saved as JPEG at `quality` under the same person folder and file stem (.jpg). LFW's 250 x 250 photos become
80 x 80 with the face ~32 px wide, like people in the background of a group photo (issue 12).

Idempotent: a photo whose output already exists is skipped, files are written under a temporary name and
renamed, so a run cut short leaves no half-written photo and the next run finishes the job. Prints one JSON
line {"bench": "degraded_variant", ...} with the counts.

--embed MODEL also writes the embeddings of the variant's main faces (the largest face per photo, as
face_pipeline_tests/lfw_cache.py does) to .cache/<variant>-<MODEL>-minface<N>.npz, detected with
FACE_MIN_FACE_SIZE=N (--min-face-size, default 16): at the default 36 px SCRFD's boxes of these ~31 px faces
are dropped and only 251 of lfw-dev's 5,029 degraded photos keep a face (with 16: every photo; box sides
24-39 px, median 31). The tests' cache builder (lfw_cache.load_or_build on the variant folder) uses the
default settings, hence the separate name.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parents[1]
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


def default_output(dataset: Path, size: int, quality: int) -> Path:
    return REPO / ".cache" / f"{dataset.name}-{size}px-q{quality}"


def degrade_photo(source: Path, target: Path, size: int, quality: int) -> None:
    """`source` fitted inside size x size and saved at `target` as JPEG `quality` (atomically)."""
    with Image.open(source) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGB")
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    partial = target.with_name(target.name + ".partial")
    image.save(partial, format="JPEG", quality=quality)
    os.replace(partial, target)


def write_variant(dataset: Path, out: Path, size: int = 80, quality: int = 40) -> dict[str, int]:
    """Degrade every photo of `dataset` (person folders) into `out`; returns {"photos", "written", "skipped"}."""
    if not dataset.is_dir():
        raise SystemExit(f"dataset not found: {dataset}")
    if out.resolve() == dataset.resolve():
        raise SystemExit("the output folder must differ from the dataset")
    counts = {"photos": 0, "written": 0, "skipped": 0}
    for person in sorted(p for p in dataset.iterdir() if p.is_dir()):
        photos = sorted(p for p in person.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
        if not photos:
            continue
        (out / person.name).mkdir(parents=True, exist_ok=True)
        for photo in photos:
            counts["photos"] += 1
            target = out / person.name / (photo.stem + ".jpg")
            if target.is_file():
                counts["skipped"] += 1
                continue
            degrade_photo(photo, target, size, quality)
            counts["written"] += 1
    return counts


_embedder = None


def _init_embedder(model: str, min_face_size: int) -> None:
    global _embedder  # one model per pool process
    from face_pipeline.settings import Settings
    from face_pipeline.vision.embedders import create_embedder
    from face_pipeline.vision.worker import restore_default_signals

    restore_default_signals()
    _embedder = create_embedder(Settings.model_construct(min_face_size=min_face_size), model, threads=1)


def _main_face(path: str) -> object:
    from face_pipeline.vision.images import load_rgb
    from face_pipeline_eval.main_face import main_face

    assert _embedder is not None
    faces = _embedder.detect_and_embed(load_rgb(path, max_pixels=80_000_000, max_bytes=200 * 1024 * 1024))
    return main_face(faces).embedding if faces else None


def embedding_cache(variant: Path, model: str, min_face_size: int) -> Path:
    return REPO / ".cache" / f"{variant.name}-{model}-minface{min_face_size}.npz"


def write_embeddings(variant: Path, model: str, min_face_size: int, workers: int = 2) -> Path:
    """The main face of every photo of `variant` embedded by `model` (vectors, identities, paths, photos),
    written atomically to `embedding_cache(...)`; kept when it exists."""
    import multiprocessing

    import numpy as np

    cache = embedding_cache(variant, model, min_face_size)
    if cache.is_file():
        return cache
    paths = sorted(str(p) for p in variant.glob("*/*") if p.suffix.lower() in PHOTO_SUFFIXES)
    with multiprocessing.get_context("spawn").Pool(workers, _init_embedder, (model, min_face_size)) as pool:
        vectors = pool.map(_main_face, paths, chunksize=16)
    keep = [i for i, v in enumerate(vectors) if v is not None]
    partial = cache.with_suffix(".partial.npz")
    np.savez(
        partial,
        vectors=np.stack([vectors[i] for i in keep]).astype(np.float32),
        identities=np.array([Path(paths[i]).parent.name for i in keep]),
        paths=np.array([paths[i] for i in keep]),
        photos=np.int64(len(paths)),
    )
    os.replace(partial, cache)
    return cache


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", nargs="?", type=Path, default=REPO.parent / "shared" / "datasets" / "lfw-dev")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default .cache/<name>-<size>px-q<q>)")
    parser.add_argument("--size", type=int, default=80, help="longest side in pixels (default 80)")
    parser.add_argument("--quality", type=int, default=40, help="JPEG quality 1-95 (default 40)")
    parser.add_argument("--embed", default=None, help="also embed the variant with this model (e.g. buffalo_s)")
    parser.add_argument("--min-face-size", type=int, default=16, help="FACE_MIN_FACE_SIZE for --embed (16)")
    parser.add_argument("--workers", type=int, default=2, help="processes for --embed (2)")
    args = parser.parse_args(argv)
    if args.size < 8 or not 1 <= args.quality <= 95:
        parser.error(f"--size must be >= 8 and --quality in 1..95, got {args.size} and {args.quality}")
    out = args.out or default_output(args.dataset, args.size, args.quality)
    counts = write_variant(args.dataset, out, args.size, args.quality)
    print(f"{out}: {counts['photos']} photos ({counts['written']} written, {counts['skipped']} already there)")
    figures = {"bench": "degraded_variant", "dataset": str(args.dataset), "out": str(out), "size": args.size}
    if args.embed:
        import numpy as np

        cache = write_embeddings(out, args.embed, args.min_face_size, args.workers)
        with np.load(cache) as data:
            counts["photos_with_face"] = len(data["vectors"])
        print(f"{cache}: a face in {counts['photos_with_face']} of {counts['photos']} photos")
        figures.update(model=args.embed, min_face_size=args.min_face_size)
    print(json.dumps({**figures, "quality": args.quality, **counts}), file=sys.stdout, flush=True)


if __name__ == "__main__":
    main()
