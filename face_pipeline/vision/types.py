"""Records that cross the vision boundary: what a face model found in one photo."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from face_pipeline.errors import UserFacingError


@dataclass(frozen=True)
class EmbeddingSpaceInfo:
    """A raw model's vector space. `name` is also the vector-store collection name."""

    name: str  # e.g. "dlib_resnet_v1" or "insightface_buffalo_l"
    model_name: str
    dim: int
    # Its decision thresholds live with the domain: domain.assignment.thresholds_for_space(name).


@dataclass(frozen=True)
class DetectedFace:
    """One face in one photo, in the coordinates of the EXIF-oriented full-size image."""

    bbox: tuple[int, int, int, int]  # x, y, width, height
    landmarks: list[tuple[float, float]]  # 5 points
    detection_score: float
    quality: float  # 0..1, higher is better (size and sharpness)
    embedding: np.ndarray = field(repr=False)  # float32, shape (dim,), L2-normalised


class FaceEmbedder(Protocol):
    """Detects and embeds the faces of one RGB photo."""

    @property
    def space(self) -> EmbeddingSpaceInfo: ...

    def detect_and_embed(self, image: np.ndarray) -> list[DetectedFace]:
        """`image`: H x W x 3 uint8 RGB, already EXIF-oriented."""
        ...


class ModelUnavailable(UserFacingError, RuntimeError):
    """A face model's files are missing or cannot be loaded."""
