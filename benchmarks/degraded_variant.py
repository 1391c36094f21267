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
face_pipeline_tests/lfw_cache.py, which builds it) to .cache/<variant>-<MODEL>-minface<N>.npz, detected with
FACE_MIN_FACE_SIZE=N (--min-face-size, default 16): at the default 36 px SCRFD's boxes of these ~31 px faces
are dropped and only 251 of lfw-dev's 5,029 degraded photos keep a face (with 16: every photo; box sides
24-39 px, median 31).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
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
        from face_pipeline_tests.lfw_cache import cache_path, load_or_build

        data = load_or_build(out, REPO / ".cache", args.embed, min_face_size=args.min_face_size, workers=args.workers)
        counts["photos_with_face"] = len(data["vectors"])
        cache = cache_path(REPO / ".cache", out, args.embed, min_face_size=args.min_face_size)
        print(f"{cache}: a face in {counts['photos_with_face']} of {counts['photos']} photos")
        figures.update(model=args.embed, min_face_size=args.min_face_size)
    print(json.dumps({**figures, "quality": args.quality, **counts}), file=sys.stdout, flush=True)


if __name__ == "__main__":
    main()
