"""Detection worker: one photo path in, faces (and thumbnails) out. Runs in a pool process.

Kept free of torch/SQL imports so spawned workers start fast. Each process builds its embedder once.
"""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass, field

from face_pipeline.settings import Settings
from face_pipeline.vision.embedders import create_embedder
from face_pipeline.vision.images import ImageRejected, load_rgb, pixel_hash
from face_pipeline.vision.thumbnails import face_thumbnail
from face_pipeline.vision.types import DetectedFace, FaceEmbedder

log = logging.getLogger(__name__)


@dataclass
class PhotoResult:
    image_id: int
    width: int = 0
    height: int = 0
    faces: list[DetectedFace] = field(default_factory=list)
    thumbnails: list[bytes] = field(default_factory=list)
    skip_reason: str | None = None
    pixel_hash: str | None = None  # of the decoded photo: a later file change with the same pixels keeps its faces


class PhotoWorker:
    def __init__(self, settings: Settings, embedder: FaceEmbedder | None = None) -> None:
        self.settings = settings
        self.embedder = embedder or create_embedder(settings)

    def process(self, image_id: int, path: str) -> PhotoResult:
        result = PhotoResult(image_id)
        try:
            image = load_rgb(path, max_pixels=self.settings.max_image_pixels, max_bytes=self.settings.max_file_bytes)
        except ImageRejected as exc:
            result.skip_reason = str(exc)
            return result
        result.height, result.width = image.shape[:2]
        result.pixel_hash = pixel_hash(image)
        try:
            result.faces = self.embedder.detect_and_embed(image)
        except Exception as exc:  # a model failure on one photo must not stop the run
            log.exception("face detection failed on %s", path)
            result.skip_reason = f"face detection failed: {type(exc).__name__}: {exc}"
            return result
        size = self.settings.thumbnail_size
        result.thumbnails = [face_thumbnail(image, face.bbox, size=size) for face in result.faces]
        return result


_worker: PhotoWorker | None = None


def restore_default_signals() -> None:
    """A pool worker must die when its pool terminates it (SIGTERM). A process started with SIGTERM or SIGINT
    ignored (some job runners, `nohup cmd &` for SIGINT) passes the ignoring on to the processes it spawns,
    and Pool.terminate would then wait for such a worker forever."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def init_pool_worker(settings: Settings, threads: int = 0) -> None:
    global _worker  # one embedder per pool process, built once by the pool's initializer
    restore_default_signals()
    logging.basicConfig(level=logging.WARNING)
    _worker = PhotoWorker(settings, create_embedder(settings, threads=threads))


def process_in_pool(task: tuple[int, str]) -> PhotoResult:
    assert _worker is not None, "init_pool_worker was not called"
    return _worker.process(*task)
