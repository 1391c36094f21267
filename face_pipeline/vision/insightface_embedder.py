"""InsightFace back end: SCRFD detector + ArcFace recognizer (buffalo_l), onnxruntime, GPU when present.

Never downloads: the model folder `<model_dir or ~/.insightface>/models/<model_name>` must already hold
the .onnx files (FaceAnalysis would otherwise try GitHub). The recognizer is its own class,
`ArcFaceRecognizer` (5-keypoint alignment + one batched ONNX run), so that part of the InsightFace code
path is tested with a small exported model; SCRFD detection needs the real buffalo_l files and is
exercised only where they are installed.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from face_pipeline.vision.images import check_rgb_array
from face_pipeline.vision.quality import face_quality
from face_pipeline.vision.types import DetectedFace, EmbeddingSpaceInfo, ModelUnavailable

logger = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "cuda"]
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

# The detector and recognizer of each InsightFace model pack; other names need any .onnx file.
KNOWN_PACKS: dict[str, tuple[str, ...]] = {
    "buffalo_l": ("det_10g.onnx", "w600k_r50.onnx"),
    "buffalo_m": ("det_2.5g.onnx", "w600k_r50.onnx"),
    "buffalo_s": ("det_500m.onnx", "w600k_mbf.onnx"),
    "buffalo_sc": ("det_500m.onnx", "w600k_mbf.onnx"),
    "antelopev2": ("scrfd_10g_bnkps.onnx", "glintr100.onnx"),
}

# FaceAnalysis' own detection cut; settings.min_detection_score shifts it (see Settings).
BASE_DETECTION_THRESHOLD = 0.5


def model_root(model_dir: Path | None) -> Path:
    """InsightFace's root folder: `model_dir`, or ~/.insightface as InsightFace itself defaults to."""
    return (model_dir if model_dir is not None else Path("~/.insightface")).expanduser()


def model_folder(model_dir: Path | None, model_name: str) -> Path:
    """Where the model pack's .onnx files must be: <root>/models/<model_name>."""
    return model_root(model_dir) / "models" / model_name


def missing_model_files(folder: Path, model_name: str) -> list[str]:
    """What is missing for `model_name` in `folder`; empty when the pack looks complete."""
    if not folder.is_dir():
        return [f"no folder {folder}"]
    present = {p.name for p in folder.glob("*.onnx")}
    if not present:
        return ["no .onnx files"]
    return [name for name in KNOWN_PACKS.get(model_name, ()) if name not in present]


def check_model_files(folder: Path, model_name: str) -> None:
    """Raise ModelUnavailable with an actionable message when the pack is not installed."""
    missing = missing_model_files(folder, model_name)
    if missing:
        raise ModelUnavailable(
            f"{model_name} model files not found in {folder}: missing {', '.join(missing)} "
            f"(unzip {model_name}.zip from the InsightFace releases there, or set FACE_EMBEDDER=dlib)"
        )


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


@dataclass
class _Loaded:
    detector: Any  # insightface SCRFD
    recognizer: ArcFaceRecognizer
    space: EmbeddingSpaceInfo


class InsightFaceEmbedder:
    """FaceEmbedder on an InsightFace model pack (SCRFD + ArcFace). Loads once, on first use, under a lock.

    Raises ModelUnavailable at construction when the pack's files are not installed, so no code path
    ever reaches InsightFace's downloader.
    """

    def __init__(
        self,
        *,
        model_dir: Path | None = None,
        model_name: str = "buffalo_l",
        device: Device = "auto",
        det_size: tuple[int, int] = (640, 640),
        min_face_size: int = 36,
        min_detection_score: float = 0.0,
    ) -> None:
        self.model_dir = model_dir
        self.model_name = model_name
        self.device_setting = device
        self.det_size = det_size
        self.min_face_size = min_face_size
        self.det_threshold = BASE_DETECTION_THRESHOLD + min_detection_score
        self.folder = model_folder(model_dir, model_name)
        check_model_files(self.folder, model_name)
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

    def detect_and_embed(self, image: np.ndarray) -> list[DetectedFace]:
        """Faces of one H x W x 3 uint8 RGB photo. SCRFD resizes to `det_size` itself, so no pre-shrink."""
        check_rgb_array(image)
        loaded = self._loaded()
        height, width = image.shape[:2]
        detections, keypoints = loaded.detector.detect(np.ascontiguousarray(image[:, :, ::-1]), max_num=0)
        if len(detections) == 0:
            return []
        if keypoints is None:
            raise ModelUnavailable(f"the detector in {self.folder} gives no keypoints to align faces with")
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
        from insightface.app import FaceAnalysis

        check_model_files(self.folder, self.model_name)
        providers, ctx_id = choose_providers(self.device_setting)
        try:
            # name= the folder itself: FaceAnalysis then uses it as is and never calls its downloader.
            app = FaceAnalysis(
                name=str(self.folder),
                root=str(model_root(self.model_dir)),
                allowed_modules=["detection", "recognition"],
                providers=providers,
            )
            app.prepare(ctx_id=ctx_id, det_thresh=self.det_threshold, det_size=self.det_size)
        except AssertionError as exc:  # FaceAnalysis asserts that a detection model was found
            raise ModelUnavailable(f"no face detection model (SCRFD) among the .onnx in {self.folder}") from exc
        except Exception as exc:  # onnxruntime raises its own exception types for bad model files
            raise ModelUnavailable(f"cannot load InsightFace models from {self.folder}: {exc}") from exc
        if "recognition" not in app.models:
            raise ModelUnavailable(f"no face recognition model (ArcFace) among the .onnx in {self.folder}")
        recognizer = ArcFaceRecognizer(app.models["recognition"])
        space = EmbeddingSpaceInfo(
            name=f"insightface_{self.model_name}",
            model_name=self.model_name,
            dim=recognizer.dim,
        )
        logger.info("loaded InsightFace %s from %s on %s", self.model_name, self.folder, recognizer.providers)
        return _Loaded(detector=app.det_model, recognizer=recognizer, space=space)

    def __getstate__(self) -> dict[str, Any]:
        # onnxruntime sessions and locks do not pickle: a copy in a worker process loads its own.
        state = self.__dict__.copy()
        state["_loaded_models"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
