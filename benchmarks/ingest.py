"""Ingest speed: detect+embed the first N photos of a folder-per-person set, then a no-op re-scan.

    python benchmarks/ingest.py [--photos 1000] [--dataset ../shared/datasets/lfw-dev] [--workers 0]

Prints photos/s, faces/s and peak RSS for detect+embed, and seconds for a no-op re-scan, each also as a
JSON line. Goal on 2 cores: >= 20 photos/s.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import default_dataset, emit, peak_rss_mb  # noqa: E402
from face_pipeline.services.catalog import scan_photos  # noqa: E402
from face_pipeline.services.context import PipelineContext  # noqa: E402
from face_pipeline.services.detection import detect_pending_faces  # noqa: E402
from face_pipeline.settings import load_settings  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=1000)
    parser.add_argument("--dataset", type=Path, default=None)
    parser.add_argument("--workers", type=int, default=0, help="0 = one per core")
    args = parser.parse_args()
    dataset = args.dataset or default_dataset("lfw-dev")

    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "photos"
        for source in sorted(dataset.glob("*/*"))[: args.photos]:
            (photos / source.parent.name).mkdir(parents=True, exist_ok=True)
            os.symlink(source, photos / source.parent.name / source.name)
        settings = load_settings(photos_dir=photos, data_dir=Path(tmp) / "data", workers=args.workers, embedder="dlib")
        context = PipelineContext.from_settings(settings)

        started = time.perf_counter()
        scan = scan_photos(context.db, photos)
        scan_seconds = time.perf_counter() - started
        with context.vectors() as vectors:
            report = detect_pending_faces(settings, context.db, vectors)
        total = time.perf_counter() - started

        started = time.perf_counter()
        rescan = scan_photos(context.db, photos)
        with context.vectors() as vectors:
            noop = detect_pending_faces(settings, context.db, vectors)
        noop_seconds = time.perf_counter() - started
        assert rescan.new == 0 and noop.photos == 0

    photos_per_s = report.photos / report.seconds
    print(f"photos {report.photos} (scan {scan.files_seen} files in {scan_seconds:.2f} s), faces {report.faces}")
    print(
        f"detect+embed: {report.seconds:.1f} s, {photos_per_s:.1f} photos/s, "
        f"{report.faces / report.seconds:.1f} faces/s"
    )
    print(
        f"whole backfill {total:.1f} s; peak RSS {peak_rss_mb():.0f} MiB (largest process); "
        f"no-op re-run {noop_seconds:.2f} s"
    )
    emit(
        "ingest",
        photos=report.photos,
        faces=report.faces,
        workers=settings.worker_count,
        seconds=round(report.seconds, 2),
        photos_per_s=round(photos_per_s, 2),
        faces_per_s=round(report.faces / report.seconds, 2),
        peak_rss_mb=round(peak_rss_mb()),
        scan_seconds=round(scan_seconds, 3),
    )
    emit("ingest_noop_rescan", photos=report.photos, seconds=round(noop_seconds, 3))


if __name__ == "__main__":
    main()
