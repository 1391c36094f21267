"""Pick the face model from the settings, and describe it for run metadata."""

from __future__ import annotations

import logging
from typing import Any

from face_pipeline.settings import Settings
from face_pipeline.vision.dlib_embedder import DlibEmbedder
from face_pipeline.vision.insightface_embedder import (
    InsightFaceEmbedder,
    check_model_files,
    missing_model_files,
    model_folder,
)
from face_pipeline.vision.types import FaceEmbedder, ModelUnavailable

logger = logging.getLogger(__name__)


def create_embedder(settings: Settings) -> FaceEmbedder:
    """The embedder FACE_EMBEDDER asks for.

    - `dlib`: dlib ResNet, always available offline.
    - `insightface`: the InsightFace pack in <FACE_MODEL_DIR or ~/.insightface>/models/<FACE_MODEL_NAME>;
      ModelUnavailable if its files are missing or cannot be loaded (never downloads).
    - `auto`: InsightFace when it loads, else dlib with one warning line saying why.

    InsightFace is loaded here (not on the first photo) so that `auto` can fall back and a broken
    pack fails at start. dlib stays lazy: it cannot be missing, and worker processes load their own.
    """
    if settings.embedder == "dlib":
        return _dlib(settings)
    folder = model_folder(settings.model_dir, settings.model_name)
    if settings.embedder == "insightface":
        check_model_files(folder, settings.model_name)
        return _insightface(settings)
    if missing_model_files(folder, settings.model_name):
        logger.warning(
            "InsightFace %s not found in %s; using dlib ResNet (128-d, offline)", settings.model_name, folder
        )
        return _dlib(settings)
    try:
        return _insightface(settings)
    except ModelUnavailable as exc:
        logger.warning("InsightFace %s unusable (%s); using dlib ResNet (128-d, offline)", settings.model_name, exc)
        return _dlib(settings)


def available_providers() -> list[str]:
    """onnxruntime's execution providers on this machine (CUDAExecutionProvider means a usable GPU)."""
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def describe_embedder(embedder: FaceEmbedder) -> dict[str, Any]:
    """Flat, JSON-ready facts about an embedder for run metadata and `faces stats`."""
    space = embedder.space
    facts: dict[str, Any] = {
        "space": space.name,
        "model": space.model_name,
        "dim": space.dim,
        "device": getattr(embedder, "device", "unknown"),
    }
    if isinstance(embedder, InsightFaceEmbedder):
        facts["backend"] = "insightface"
        facts["providers"] = embedder.providers
        facts["model_folder"] = str(embedder.folder)
    elif isinstance(embedder, DlibEmbedder):
        facts["backend"] = "dlib"
        facts["providers"] = ["dlib-cpu"]
    else:
        facts["backend"] = type(embedder).__name__
    return facts


describe = describe_embedder


def _dlib(settings: Settings) -> DlibEmbedder:
    return DlibEmbedder(
        detect_max_side=settings.detect_max_side,
        min_face_size=settings.min_face_size,
        min_detection_score=settings.min_detection_score,
    )


def _insightface(settings: Settings) -> InsightFaceEmbedder:
    embedder = InsightFaceEmbedder(
        model_dir=settings.model_dir,
        model_name=settings.model_name,
        device=settings.device,
        min_face_size=settings.min_face_size,
        min_detection_score=settings.min_detection_score,
    )
    embedder.load()
    return embedder
