"""Photos of a folder-per-person set passed once through a face model, for the model tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from face_pipeline.vision.images import load_rgb
from face_pipeline.vision.types import DetectedFace, FaceEmbedder
from face_pipeline_eval.main_face import main_face

LIMITS = {"max_pixels": 80_000_000, "max_bytes": 200 * 1024 * 1024}


@dataclass(frozen=True)
class EmbeddedPhoto:
    person: str
    path: Path
    faces: list[DetectedFace]

    @property
    def main_face(self) -> DetectedFace:
        """LFW photos centre one person; others can appear smaller in the background."""
        return main_face(self.faces)


def embed_folder(folder: Path, embedder: FaceEmbedder) -> list[EmbeddedPhoto]:
    """Every <person>/<photo>.jpg under `folder`, sorted, with the faces `embedder` finds in it."""
    return [
        EmbeddedPhoto(path.parent.name, path, embedder.detect_and_embed(load_rgb(path, **LIMITS)))
        for path in sorted(folder.glob("*/*.jpg"))
    ]
