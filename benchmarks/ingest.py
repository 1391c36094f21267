"""Ingest speed per face model: detect+embed the first N photos of a folder-per-person set, then a no-op re-scan.

    python benchmarks/ingest.py [--photos 1000] [--models buffalo_s,dlib] [--dataset DIR] [--workers 0]

Each model runs in a fresh process on the same photos (so one model's memory does not count against the
other), through the pipeline's own catalog and detection services, with a fresh library. Prints photos/s,
faces/s, peak RSS (the largest process: the parent or one worker) and seconds for a no-op re-scan, each also
as a JSON line. Goals on 2 cores: buffalo_s >= 40 photos/s at <= 600 MB peak RSS (dlib's ceiling is ~20).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import default_dataset, emit, peak_rss_mb  # noqa: E402


def run_one(model: str, photos_limit: int, dataset: Path, workers: int) -> dict[str, object]:
    """Ingest in this process with one model; returns the figures."""
    from face_pipeline.services.catalog import scan_photos
    from face_pipeline.services.detection import detect_pending_faces
    from face_pipeline.services.library import Library
    from face_pipeline.settings import load_settings

    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "photos"
        for source in sorted(dataset.glob("*/*"))[:photos_limit]:
            (photos / source.parent.name).mkdir(parents=True, exist_ok=True)
            os.symlink(source, photos / source.parent.name / source.name)
        settings = load_settings(photos_dir=photos, data_dir=Path(tmp) / "data", workers=workers, embedder=model)
        context = Library.from_settings(settings)

        started = time.perf_counter()
        scan_photos(context.db, photos)
        scan_seconds = time.perf_counter() - started
        with context.vectors() as vectors:
            report = detect_pending_faces(settings, context.db, vectors)

        started = time.perf_counter()
        rescan = scan_photos(context.db, photos)
        with context.vectors() as vectors:
            noop = detect_pending_faces(settings, context.db, vectors)
        noop_seconds = time.perf_counter() - started
        assert rescan.new == 0 and noop.photos == 0
    return {
        "model": model,
        "space": report.space,
        "photos": report.photos,
        "photos_with_faces": report.photos_with_faces,
        "faces": report.faces,
        "workers": settings.worker_count,
        "seconds": round(report.seconds, 2),
        "photos_per_s": round(report.photos / report.seconds, 2),
        "faces_per_s": round(report.faces / report.seconds, 2),
        "peak_rss_mb": round(peak_rss_mb()),
        "scan_seconds": round(scan_seconds, 3),
        "noop_rescan_seconds": round(noop_seconds, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=1000)
    parser.add_argument("--dataset", type=Path, default=None)
    parser.add_argument("--workers", type=int, default=0, help="0 = one per core")
    parser.add_argument("--models", default="buffalo_s,dlib", help="comma-separated FACE_EMBEDDER values")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one model, print its JSON
    args = parser.parse_args()
    dataset = args.dataset or default_dataset("lfw-dev")
    if args.one:
        print(json.dumps(run_one(args.one, args.photos, dataset, args.workers)))
        return
    for model in args.models.split(","):
        command = [sys.executable, __file__, "--one", model, "--photos", str(args.photos), "--dataset", str(dataset)]
        output = subprocess.run(
            [*command, "--workers", str(args.workers)], check=True, capture_output=True, text=True
        ).stdout
        figures = json.loads(output.strip().splitlines()[-1])
        print(
            f"{model}: {figures['photos']} photos ({figures['photos_with_faces']} with a face), {figures['faces']} "
            f"faces in {figures['seconds']} s: {figures['photos_per_s']} photos/s, {figures['faces_per_s']} faces/s; "
            f"peak RSS {figures['peak_rss_mb']} MiB; no-op re-run {figures['noop_rescan_seconds']} s"
        )
        emit("ingest", **figures)


if __name__ == "__main__":
    main()
