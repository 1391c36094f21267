"""InsightFace back end: SCRFD detector + ArcFace recognizer through InsightFace's own code, onnxruntime,
CUDA first when onnxruntime-gpu offers it.

The pack (vision/model_packs.py) names the two .onnx files; they are loaded one by one with
`insightface.model_zoo.get_model`, so nothing ever reaches InsightFace's downloader. Faces are aligned with
`face_align.norm_crop` on SCRFD's 5 keypoints and embedded by `ArcFaceONNX` ((x - 127.5) / 127.5 input).
"""

from __future__ import annotations

import logging
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from face_pipeline.vision.images import check_rgb_array
from face_pipeline.vision.model_packs import INSIGHTFACE_SPACE_PREFIX, InsightFacePack
from face_pipeline.vision.quality import face_quality
from face_pipeline.vision.types import DetectedFace, EmbeddingSpaceInfo, ModelUnavailable

logger = logging.getLogger(__name__)
# insightface 2.1's norm_crop calls scikit-image's deprecated SimilarityTransform.estimate: one line per face.
warnings.filterwarnings("ignore", message=".*`estimate` is deprecated", category=FutureWarning)

Device = Literal["auto", "cpu", "cuda"]
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

# FaceAnalysis' own detection cut; settings.min_detection_score shifts it (see Settings).
BASE_DETECTION_THRESHOLD = 0.5
SCRFD_STRIDE = 32  # SCRFD's input sides must be multiples of its largest stride


def choose_providers(device: Device) -> tuple[list[str], int]:
    """onnxruntime providers and InsightFace ctx_id (-1 = CPU) for a device setting."""
    import onnxruntime

    cuda_available = CUDA in onnxruntime.get_available_providers()
    if device != "cpu" and cuda_available:
        return [CUDA, CPU], 0
    if device == "cuda":
        logger.warning(
            "FACE_DEVICE=cuda but onnxruntime offers no CUDAExecutionProvider (install onnxruntime-gpu "
            "in place of onnxruntime); running InsightFace on CPU"
        )
    return [CPU], -1


class ArcFaceRecognizer:
    """The recognition half of InsightFace: align each face on its 5 keypoints, embed in one batch.

    Wraps `insightface.model_zoo.ArcFaceONNX`, which InsightFace routes any ONNX model to when its
    input is square, at least 112 px and a multiple of 16, with a single output.
    """

    def __init__(self, model: Any) -> None:
        if getattr(model, "taskname", None) != "recognition":
            raise ModelUnavailable(f"{getattr(model, 'model_file', model)} is not a face recognition model")
        self.model = model
        self.input_side = int(model.input_size[0])
        batch = model.input_shape[0]
        # Some exported recognizers fix the batch at 1: then faces go through one at a time.
        self.batched = not isinstance(batch, int) or batch != 1
        self._dim: int | None = None

    @classmethod
    def from_onnx(cls, path: Path, providers: list[str]) -> ArcFaceRecognizer:
        from insightface.model_zoo import get_model

        if not path.is_file():
            raise ModelUnavailable(f"recognition model {path} does not exist")
        # An .onnx path never triggers a download in get_model (download defaults to False).
        model = get_model(str(path), providers=providers)
        if model is None:
            raise ModelUnavailable(f"InsightFace does not recognise {path} as a face model")
        return cls(model)

    @property
    def dim(self) -> int:
        if self._dim is None:
            size = self.model.output_shape[-1]
            if isinstance(size, int) and size > 0:
                self._dim = size
            else:  # a symbolic output size: ask the model
                blank = np.zeros((self.input_side, self.input_side, 3), dtype=np.uint8)
                self._dim = int(np.asarray(self.model.get_feat([blank])).shape[-1])
        return self._dim

    @property
    def providers(self) -> list[str]:
        return list(self.model.session.get_providers())

    def align(self, image: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
        """Face crops as the model sees them: (N, S, S, 3) uint8 RGB, S the model's input side.

        `image`: H x W x 3 uint8 RGB; `keypoints`: (N, 5, 2) float in image pixels, InsightFace's order
        (eye, eye, nose tip, mouth corner, mouth corner, left to right as seen in the photo). Each crop
        is the similarity transform that puts those points on ArcFace's reference positions.
        """
        from insightface.utils.face_align import norm_crop

        side = self.input_side
        crops = np.empty((len(keypoints), side, side, 3), dtype=np.uint8)
        for i, points in enumerate(np.asarray(keypoints, dtype=np.float32)):
            crops[i] = norm_crop(image, landmark=points, image_size=side)
        return crops

    def embed(self, image: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
        """L2-normalised embeddings, (N, dim) float32, of the faces `align` cuts out."""
        return self.embed_crops(self.align(image, keypoints))

    def embed_crops(self, crops: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 RGB aligned crops -> (N, dim) float32, L2-normalised."""
        if len(crops) == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        # InsightFace's get_feat takes BGR (it swaps to RGB while building the blob).
        bgr = [np.ascontiguousarray(crop[:, :, ::-1]) for crop in crops]
        if self.batched:
            vectors = np.asarray(self.model.get_feat(bgr), dtype=np.float32)
        else:
            vectors = np.concatenate([np.asarray(self.model.get_feat(c), dtype=np.float32) for c in bgr])
        vectors = vectors.reshape(len(bgr), -1)
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors


def detection_input_size(width: int, height: int, det_size: int) -> tuple[int, int]:
    """SCRFD's input (w, h) for a photo: the photo itself when it fits in `det_size`, else a copy shrunk to it.

    Sides round up to SCRFD's stride, so a 250 px photo runs at 256 x 256 instead of being blown up to
    640 x 640 (4.5 vs 17 ms on one core); larger photos are shrunk, keeping their shape, and SCRFD maps
    boxes and keypoints back to the photo's own pixels.
    """
    scale = min(1.0, det_size / max(width, height))

    def side(pixels: int) -> int:
        return max(SCRFD_STRIDE, -(-round(pixels * scale) // SCRFD_STRIDE) * SCRFD_STRIDE)

    return side(width), side(height)


@dataclass
class _Loaded:
    detector: Any  # insightface SCRFD
    recognizer: ArcFaceRecognizer
    space: EmbeddingSpaceInfo


class InsightFaceEmbedder:
    """FaceEmbedder on an InsightFace pack (SCRFD + ArcFace). Loads once, on first use, under a lock.

    Parameters: `det_size` is the largest detector input side (larger photos are detected on a shrunk copy);
    faces with a box side under `min_face_size` px are dropped; `threads` caps onnxruntime's threads per
    session (0 = its default, every core), so several worker processes do not fight over the cores.
    """

    def __init__(
        self,
        pack: InsightFacePack,
        *,
        device: Device = "auto",
        det_size: int = 640,
        min_face_size: int = 36,
        min_detection_score: float = 0.0,
        threads: int = 0,
    ) -> None:
        self.pack = pack
        self.device_setting = device
        self.det_size = det_size
        self.min_face_size = min_face_size
        self.det_threshold = BASE_DETECTION_THRESHOLD + min_detection_score
        self.threads = threads
        self._loaded_models: _Loaded | None = None
        self._lock = threading.Lock()

    @property
    def space(self) -> EmbeddingSpaceInfo:
        return self._loaded().space

    @property
    def providers(self) -> list[str]:
        return self._loaded().recognizer.providers

    @property
    def device(self) -> str:
        return "cuda" if CUDA in self.providers else "cpu"

    def load(self) -> None:
        """Load both models now (raises ModelUnavailable if they cannot be used)."""
        self._loaded()

    def with_threads(self, threads: int) -> InsightFaceEmbedder:
        """An unloaded copy with another thread cap (for a worker process)."""
        return InsightFaceEmbedder(
            self.pack,
            device=self.device_setting,
            det_size=self.det_size,
            min_face_size=self.min_face_size,
            min_detection_score=self.det_threshold - BASE_DETECTION_THRESHOLD,
            threads=threads,
        )

    def detect_and_embed(self, image: np.ndarray) -> list[DetectedFace]:
        """Faces of one H x W x 3 uint8 RGB photo, boxes and keypoints in its own pixels."""
        check_rgb_array(image)
        loaded = self._loaded()
        height, width = image.shape[:2]
        detections, keypoints = loaded.detector.detect(
            np.ascontiguousarray(image[:, :, ::-1]),
            input_size=detection_input_size(width, height, self.det_size),
            max_num=0,
            det_thresh=self.det_threshold,
        )
        if len(detections) == 0:
            return []
        if keypoints is None:
            raise ModelUnavailable(f"the detector {self.pack.detector} gives no keypoints to align faces with")
        x1 = np.clip(np.floor(detections[:, 0]), 0, width).astype(int)
        y1 = np.clip(np.floor(detections[:, 1]), 0, height).astype(int)
        x2 = np.clip(np.ceil(detections[:, 2]), 0, width).astype(int)
        y2 = np.clip(np.ceil(detections[:, 3]), 0, height).astype(int)
        keep = np.minimum(x2 - x1, y2 - y1) >= self.min_face_size
        if not keep.any():
            return []
        vectors = loaded.recognizer.embed(image, keypoints[keep])
        faces = []
        for i, vector in zip(np.flatnonzero(keep), vectors, strict=True):
            box = (int(x1[i]), int(y1[i]), int(x2[i] - x1[i]), int(y2[i] - y1[i]))
            faces.append(
                DetectedFace(
                    bbox=box,
                    landmarks=[(float(x), float(y)) for x, y in keypoints[i]],
                    detection_score=float(detections[i, 4]),
                    quality=face_quality(image, box),
                    embedding=vector,
                )
            )
        return faces

    def _loaded(self) -> _Loaded:
        if self._loaded_models is None:
            with self._lock:
                if self._loaded_models is None:
                    self._loaded_models = self._load()
        return self._loaded_models

    def _load(self) -> _Loaded:
        import onnxruntime
        from insightface.model_zoo import get_model

        providers, ctx_id = choose_providers(self.device_setting)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        # w600k_mbf declares a batch of 1 in its output shape but runs any batch; onnxruntime would warn per call.
        options.log_severity_level = 3
        models = []
        for path, task in ((self.pack.detector, "detection"), (self.pack.recognizer, "recognition")):
            if not path.is_file():
                raise ModelUnavailable(f"{self.pack.name}: {task} model {path} does not exist")
            try:
                # An .onnx path never reaches InsightFace's downloader (download defaults to False).
                model = get_model(str(path), providers=providers, sess_options=options)
            except Exception as exc:  # onnxruntime raises its own exception types for bad model files
                raise ModelUnavailable(f"cannot load {task} model {path}: {exc}") from exc
            if getattr(model, "taskname", None) != task:
                raise ModelUnavailable(f"{path} is not a face {task} model")
            models.append(model)
        detector, recognition = models
        detector.prepare(ctx_id=ctx_id, det_thresh=self.det_threshold)
        recognizer = ArcFaceRecognizer(recognition)
        name = f"{INSIGHTFACE_SPACE_PREFIX}{self.pack.name}"
        space = EmbeddingSpaceInfo(name=name, model_name=self.pack.name, dim=recognizer.dim)
        logger.info("loaded InsightFace %s from %s on %s", self.pack.name, self.pack.source, recognizer.providers)
        return _Loaded(detector=detector, recognizer=recognizer, space=space)

    def __getstate__(self) -> dict[str, Any]:
        # onnxruntime sessions and locks do not pickle: a copy in a worker process loads its own.
        state = self.__dict__.copy()
        state["_loaded_models"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
